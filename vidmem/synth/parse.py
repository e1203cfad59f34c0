"""What a SynthVid event sentence says: (colour, shape, action), read back through the grammar.

An event caption or grounding query names one object by its colour and shape noun and one action by a verb
phrase ("The red disc is spinning.", "the moment a blue square turns green."). Paraphrases of one event map to
one `Meaning`, so a measurement can ask whether two different sentences describe the same thing — e.g. whether
a sentence retrieved from the memory bank describes an event of the window that retrieved it — and an oracle
can be built that reads only colour and shape. Every phrasing of the grammar is known, held-out ones included;
a sentence the grammar did not write (real data) parses to None.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from vidmem.synth.grammar import NOUNS, VERBS
from vidmem.synth.palette import COLOURS


class Meaning(NamedTuple):
    colour: str   # the object's colour when the event starts
    shape: str    # canonical shape name
    action: str   # event kind; a colour change names its target: "recolour:green"

    @property
    def subject(self) -> tuple[str, str]:
        return self.colour, self.shape


def _alternation(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


@lru_cache(maxsize=1)
def _tables() -> tuple[re.Pattern, dict[str, str], list[tuple[re.Pattern, str]]]:
    nouns = {n: shape for shape, (train, held) in NOUNS.items() for n in train + held}
    colour = _alternation(COLOURS)
    subject = re.compile(rf"\b(?:the|a|an) ({colour}) ({_alternation(nouns)})\b(.*)$")
    verbs: list[tuple[re.Pattern, str]] = []
    for kind, (train, held) in VERBS.items():
        for form in {f for pair in train + held for f in pair}:
            body = re.escape(form).replace(re.escape("{c}"), f"(?P<c>{colour})")
            verbs.append((re.compile(rf"^(?:is |can be seen )?{body}$"), kind))
    verbs.sort(key=lambda p: len(p[0].pattern), reverse=True)  # longest phrase first
    return subject, nouns, verbs


def parse(sentence: str) -> Meaning | None:
    """The (colour, shape, action) of an event sentence, or None when the grammar did not write it."""
    subject, nouns, verbs = _tables()
    m = subject.search(sentence.strip().lower())
    if m is None:
        return None
    rest = m.group(3).strip().rstrip(".").strip()
    for pattern, kind in verbs:
        v = pattern.match(rest)
        if v is not None:
            action = f"{kind}:{v.group('c')}" if "c" in pattern.groupindex else kind
            return Meaning(m.group(1), nouns[m.group(2)], action)
    return None
