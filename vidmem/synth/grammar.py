"""The SynthVid text grammar: what is seen, said with synonyms and paraphrases.

Every choice point has training phrasings and, for some, held-out phrasings. A `Phraser` for the test split
takes a held-out phrasing with probability `heldout_prob` wherever one exists; train and val phrasers never
do. `heldout_markers()` lists a distinctive fragment of every held-out phrasing, so a test can check that none
reaches the training text. The vocabulary stays compact (about two hundred words) but not trivial.
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

# (third person singular, -ing form). '{c}' is the target colour of a colour change.
Verb = tuple[str, str]

VERBS: dict[str, tuple[list[Verb], list[Verb]]] = {
    "move_left": (
        [("moves to the left", "moving to the left"), ("moves left", "moving left"),
         ("slides to the left", "sliding to the left"), ("goes left", "going left")],
        [("travels leftward", "travelling leftward"),
         ("drifts towards the left edge", "drifting towards the left edge")],
    ),
    "move_right": (
        [("moves to the right", "moving to the right"), ("moves right", "moving right"),
         ("slides to the right", "sliding to the right"), ("goes right", "going right")],
        [("travels rightward", "travelling rightward"),
         ("drifts towards the right edge", "drifting towards the right edge")],
    ),
    "move_up": (
        [("moves up", "moving up"), ("rises", "rising"), ("moves upward", "moving upward"),
         ("goes up", "going up")],
        [("climbs towards the top", "climbing towards the top"), ("ascends", "ascending")],
    ),
    "move_down": (
        [("moves down", "moving down"), ("falls", "falling"), ("moves downward", "moving downward"),
         ("goes down", "going down")],
        [("sinks towards the bottom", "sinking towards the bottom"), ("descends", "descending")],
    ),
    "grow": (
        [("grows", "growing"), ("gets bigger", "getting bigger"), ("expands", "expanding"),
         ("becomes larger", "becoming larger")],
        [("increases in size", "increasing in size"), ("swells", "swelling")],
    ),
    "shrink": (
        [("shrinks", "shrinking"), ("gets smaller", "getting smaller"),
         ("becomes smaller", "becoming smaller"), ("contracts", "contracting")],
        [("decreases in size", "decreasing in size"), ("dwindles", "dwindling")],
    ),
    "spin": (
        [("spins", "spinning"), ("rotates", "rotating"), ("spins around", "spinning around"),
         ("turns around", "turning around")],
        [("twirls", "twirling"), ("whirls around", "whirling around")],
    ),
    "bounce": (
        [("bounces", "bouncing"), ("bounces up and down", "bouncing up and down"), ("hops", "hopping")],
        [("jumps up and down", "jumping up and down"), ("bobs up and down", "bobbing up and down")],
    ),
    "recolour": (
        [("turns {c}", "turning {c}"), ("changes colour to {c}", "changing colour to {c}"),
         ("becomes {c}", "becoming {c}"), ("changes to {c}", "changing to {c}")],
        [("switches its colour to {c}", "switching its colour to {c}"),
         ("shifts to a shade of {c}", "shifting to a shade of {c}")],
    ),
    "appear": (
        [("appears", "appearing"), ("shows up", "showing up"), ("fades in", "fading in")],
        [("comes into view", "coming into view"), ("materialises", "materialising")],
    ),
    "disappear": (
        [("disappears", "disappearing"), ("fades away", "fading away"), ("vanishes", "vanishing")],
        [("goes out of view", "going out of view"), ("fades from sight", "fading from sight")],
    ),
    "still": (
        [("stays still", "staying still"), ("remains still", "remaining still"),
         ("stays in place", "staying in place")],
        [("rests motionless", "resting motionless"), ("holds its position", "holding its position")],
    ),
}

# Shape nouns: the canonical name is used most of the time (it is also the QA answer).
NOUNS: dict[str, tuple[list[str], list[str]]] = {
    "circle": (["circle", "disc"], ["round disk"]),
    "square": (["square", "box"], []),
    "triangle": (["triangle"], ["three-sided shape"]),
    "star": (["star"], ["five-pointed star"]),
    "ring": (["ring", "hoop"], ["donut"]),
    "diamond": (["diamond", "rhombus"], ["lozenge"]),
    "cross": (["cross", "plus sign"], ["plus symbol"]),
    "hexagon": (["hexagon"], ["six-sided shape"]),
}
CANONICAL_NOUN_PROB = 0.7

# Coarse activity of an event kind, for segment-free summaries of a whole long video.
ACTIVITY = {
    "move_left": "moves around", "move_right": "moves around", "move_up": "moves around",
    "move_down": "moves around", "grow": "changes size", "shrink": "changes size", "spin": "spins",
    "bounce": "bounces", "recolour": "changes colour", "appear": "appears and disappears",
    "disappear": "appears and disappears", "still": "stays still",
}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
DIRECTION = {"move_left": "left", "move_right": "right", "move_up": "up", "move_down": "down"}
# One-word QA answers for "what does the X do?".
ACTION_ANSWER = {
    "move_left": "moves", "move_right": "moves", "move_up": "moves", "move_down": "moves", "grow": "grows",
    "shrink": "shrinks", "spin": "spins", "bounce": "bounces", "recolour": "changes", "appear": "appears",
    "disappear": "disappears",
}

# Sentence templates: {S}/{s} capitalised/lower-case subject, {v} third person verb phrase, {ing} -ing form.
CAPTION = (["{S} {v}.", "{S} is {ing}.", "Then {s} {v}.", "Next, {s} {v}."],
           ["{S} can be seen {ing}.", "We watch as {s} {v}."])
QUERY = (["{s} {v}.", "{s} is {ing}.", "the moment {s} {v}."],
         ["the part where {s} {v}.", "find when {s} is {ing}."])
BACKDROP = (["background", "backdrop"], ["canvas"])
VIDEO_CAPTION = (
    ["{objects} on a {bg} {backdrop}", "{event}", "{event} and {event2}", "{event} on a {bg} {backdrop}",
     "{count} shapes on a {bg} {backdrop}"],
    ["a clip showing {objects} on a {bg} {backdrop}", "in this clip {event}"],
)
CLIP_TWO = (["{e1} while {e2}", "{e1} and {e2}"], ["{e1}, and at the same time {e2}"])
CLIP_NONE = (["nothing moves", "the shapes stay still", "all the shapes are still"],
             ["everything is at rest"])
CLIP_EMPTY = (["no shape is visible", "the screen is empty"], ["nothing is in view"])
SEGMENT_PREFIX = (["", "In this segment, "], ["During this stretch, "])
SEGMENT_NONE = (["The shapes stay still.", "Nothing moves."], ["Everything is at rest."])
SUMMARY_OPEN = (
    ["A video of {count} {shapes} on a {bg} {backdrop}: {objects}.", "{Objects} on a {bg} {backdrop}."],
    ["This video shows {objects} on a {bg} {backdrop}."],
)
SUMMARY_OBJECT = (["{S} mostly {a}.", "{S} {a} most of the time."], ["For the most part, {s} {a}."])
QUESTIONS: dict[str, tuple[list[str], list[str]]] = {
    "count": (["how many shapes are there?", "how many shapes are in the video?"],
              ["what is the number of shapes?"]),
    "colour": (["what colour is the {shape}?", "what is the colour of the {shape}?"],
               ["which colour does the {shape} have?"]),
    "colour_start": (["what colour is the {shape} at the start?"],
                     ["which colour does the {shape} have at first?"]),
    "new_colour": (["what colour does the {shape} turn?", "what colour does the {shape} become?"],
                   ["which colour does the {shape} end up with?"]),
    "shape": (["what shape is {colour}?", "which shape is {colour}?"],
              ["what kind of shape has the colour {colour}?"]),
    "direction": (["where does the {ref} move?", "which way does the {ref} move?"],
                  ["in which direction does the {ref} travel?"]),
    "action": (["what does the {ref} do?"], ["what happens to the {ref}?"]),
}
ANSWER_TYPE = {"count": "how", "direction": "where"}  # MSRVTT-QA answer types; every other question is 'what'


def _fragments(template: str) -> list[str]:
    """The fixed wording of a template (placeholders removed), as markers of where a text came from."""
    parts = re.split(r"\{[^}]*\}", template)
    return [p.strip(" ,.:?").lower() for p in parts if re.search(r"[a-z]{3}", p)]


def heldout_markers() -> list[str]:
    """A distinctive fragment of every held-out phrasing; none of them may occur in train or val text."""
    out: list[str] = []
    for _, held in VERBS.values():
        for v3, ing in held:
            out += _fragments(v3) + _fragments(ing)
    for _, held in NOUNS.values():
        out += held
    for group in (CAPTION, QUERY, BACKDROP, VIDEO_CAPTION, CLIP_TWO, CLIP_NONE, CLIP_EMPTY, SEGMENT_PREFIX,
                  SEGMENT_NONE, SUMMARY_OPEN, SUMMARY_OBJECT, *QUESTIONS.values()):
        for t in group[1]:
            out += _fragments(t)
    return sorted({m for m in out if m})


def contains_marker(text: str, markers: list[str]) -> str | None:
    low = " " + re.sub(r"[^a-z\- ]+", " ", text.lower()) + " "
    low = re.sub(r"\s+", " ", low)
    for m in markers:
        if f" {m} " in low:
            return m
    return None


def answer_space(colours, shapes, max_objects: int) -> list[str]:
    """The closed QA answer set: every answer any question can have."""
    words = set(colours) | set(shapes) | set(DIRECTION.values()) | set(ACTION_ANSWER.values())
    words |= set(NUMBERS[1: max_objects + 1])
    return sorted(words)


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:-[a-z]+)*", text.lower())


def vocabulary(texts) -> Counter:
    c: Counter = Counter()
    for t in texts:
        c.update(tokens(t))
    return c


class Phraser:
    """Random phrasing, held-out choices only with probability `heldout_prob` (test split)."""

    def __init__(self, rng: np.random.Generator, heldout_prob: float = 0.0):
        self.rng = rng
        self.heldout_prob = heldout_prob

    def pick(self, options: tuple[list, list] | list):
        train, held = options if isinstance(options, tuple) else (options, [])
        pool = held if held and self.heldout_prob > 0 and self.rng.random() < self.heldout_prob else train
        return pool[int(self.rng.integers(len(pool)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    # ------------------------------------------------------------------ words
    def noun(self, shape: str) -> str:
        train, held = NOUNS[shape]
        if held and self.heldout_prob > 0 and self.rng.random() < self.heldout_prob:
            return held[int(self.rng.integers(len(held)))]
        if len(train) == 1 or self.rng.random() < CANONICAL_NOUN_PROB:
            return train[0]
        return train[1 + int(self.rng.integers(len(train) - 1))]

    def subject(self, colour: str, shape: str, definite: bool = True) -> str:
        noun = self.noun(shape)
        art = "the" if definite else ("an" if colour[0] in "aeiou" else "a")
        return f"{art} {colour} {noun}"

    def verb(self, kind: str, target: str | None = None) -> Verb:
        v3, ing = self.pick(VERBS[kind])
        return v3.replace("{c}", target or ""), ing.replace("{c}", target or "")

    def count(self, n: int) -> str:
        return NUMBERS[n] if n < len(NUMBERS) else str(n)


def capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


def join_list(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
