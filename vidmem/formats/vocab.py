"""The word vocabulary of the caption heads, in PDVC's convention — minus its unknown-word collision.

Tokenisation: lower-case, every punctuation character becomes a space, split on whitespace, keep the first
`max_words` words. The file is `{"word_to_ix": {word: i}, "ix_to_word": {"i": word}}` with words numbered
1..V and 0 reserved for BOS/EOS/padding, so embeddings and logits have V+1 rows. PDVC maps unknown words to V,
the index of its last real word; here `<unk>` is a word of its own (the last index), shared with no word.
Words seen fewer than `min_count` times in the train captions become `<unk>`.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vidmem.common import UserError

UNK = "<unk>"
PAD = 0  # also BOS / EOS
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def tokenize(sentence: str, max_words: int | None = None) -> list[str]:
    words = sentence.lower().translate(_PUNCT).split()
    return words if max_words is None else words[:max_words]


def build_vocab(sentences: Iterable[str], max_words: int = 30, min_count: int = 1) -> dict[str, dict]:
    """Words ordered by count (most frequent first), ties alphabetically; `<unk>` last."""
    counts = Counter(w for s in sentences for w in tokenize(s, max_words))
    counts.pop(UNK, None)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    words.append(UNK)
    word_to_ix = {w: i for i, w in enumerate(words, 1)}
    return {"word_to_ix": word_to_ix, "ix_to_word": {str(i): w for w, i in word_to_ix.items()}}


def encode(sentence: str, vocab: dict[str, dict], max_words: int = 30) -> list[int]:
    """Word indices of a sentence (no BOS/EOS: the caption head adds index 0 around it)."""
    w2i = vocab["word_to_ix"]
    unk = w2i[UNK]
    return [w2i.get(w, unk) for w in tokenize(sentence, max_words)]


def decode(indices: Iterable[int], vocab: dict[str, dict]) -> str:
    """Words of indices up to the first 0 (EOS)."""
    i2w = vocab["ix_to_word"]
    words = []
    for i in indices:
        if int(i) == PAD:
            break
        words.append(i2w[str(int(i))])
    return " ".join(words)


@dataclass
class Vocab:
    """The manifest's word vocabulary: words 1..V, 0 = BOS/EOS/padding, an `<unk>` entry for the rest."""

    word_to_ix: dict[str, int]
    ix_to_word: dict[int, str]

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: str = "vocab.json") -> Vocab:
        if not isinstance(obj, Mapping) or "word_to_ix" not in obj or "ix_to_word" not in obj:
            raise UserError(f"{where}: expected an object with 'word_to_ix' and 'ix_to_word'")
        try:
            w2i = {str(w): int(i) for w, i in obj["word_to_ix"].items()}
            i2w = {int(i): str(w) for i, w in obj["ix_to_word"].items()}
        except (TypeError, ValueError, AttributeError):
            raise UserError(
                f"{where}: 'word_to_ix' must map words to integers and 'ix_to_word' integers to words"
            ) from None
        if UNK not in w2i:
            raise UserError(f"{where}: no '{UNK}' entry in word_to_ix")
        bad = sorted(i for i in w2i.values() if i < 1)
        if bad:
            raise UserError(f"{where}: word indices start at 1 (0 is BOS/EOS), found {bad[0]}")
        return cls(w2i, i2w)

    @property
    def size(self) -> int:
        """V: the largest word index (the caption head predicts V + 1 classes)."""
        return max(max(self.word_to_ix.values()), max(self.ix_to_word, default=0))

    def encode(self, sentence: str, max_words: int) -> list[int]:
        unk = self.word_to_ix[UNK]
        return [self.word_to_ix.get(w, unk) for w in tokenize(sentence, max_words)]

    def decode(self, ids: Sequence[int]) -> str:
        words = []
        for i in ids:
            i = int(i)
            if i == 0:
                break
            words.append(self.ix_to_word.get(i, UNK))
        return " ".join(words)
