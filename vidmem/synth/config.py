"""Typed view of `params.synth`, validated once so that a bad value stops with one line naming the key.

Everything SynthVid produces is a pure function of this config: two equal configs give byte-identical files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vidmem.common import UserError
from vidmem.params import bounded
from vidmem.synth.palette import BACKGROUNDS, COLOURS
from vidmem.synth.shapes import SHAPES

SPLITS = ("train", "val", "test")
X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
)
EVENT_KINDS = (
    "move_left", "move_right", "move_up", "move_down", "grow", "shrink",
    "spin", "bounce", "recolour", "appear", "disappear", "still",
)


def _range(where: str, key: str, pair: tuple) -> None:
    if pair[0] > pair[1]:
        raise UserError(f"params.yaml {where}.{key}: must be a [min, max] pair with min <= max, got {list(pair)}")


def _names(where: str, key: str, names: tuple[str, ...], allowed) -> None:
    if not names:
        raise UserError(f"params.yaml {where}.{key}: must be a non-empty list of names")
    for x in names:
        if x not in allowed:
            raise UserError(f"params.yaml {where}.{key}: unknown name '{x}' (known: {', '.join(allowed)})")
    if len(set(names)) != len(names):
        raise UserError(f"params.yaml {where}.{key}: lists a name twice: {list(names)}")


def _counts(where: str, key: str, counts: dict[str, int]) -> dict[str, int]:
    extra = set(counts) - set(SPLITS)
    if extra:
        raise UserError(f"params.yaml {where}.{key}: unknown split(s) {sorted(extra)} (use train, val, test)")
    for split, n in counts.items():
        if n < 0:
            raise UserError(f"params.yaml {where}.{key}.{split}: must be a non-negative integer, got {n}")
    return {split: counts.get(split, 0) for split in SPLITS}


@dataclass(frozen=True)
class VideoConfig:
    size: tuple[int, int] = bounded((320, 240), lo=1)  # landscape (width, height); portrait videos swap them
    portrait_prob: float = bounded(0.2, lo=0, hi=1)
    fps: int = bounded(8, lo=1)
    crf: int = bounded(23, lo=0)
    preset: Literal[X264_PRESETS] = "veryfast"  # libx264 speed preset

    def check(self, where: str) -> None:
        if self.size[0] % 2 or self.size[1] % 2:
            raise UserError(f"params.yaml {where}.size: must be even (yuv420p), got {list(self.size)}")


@dataclass(frozen=True)
class ShortConfig:
    count: dict[str, int] = field(default_factory=lambda: {"train": 100, "val": 20, "test": 20})
    duration: tuple[float, float] = bounded((20.0, 40.0), lo=1.0)
    events: tuple[int, int] = bounded((2, 6), lo=1)

    def check(self, where: str) -> None:
        object.__setattr__(self, "count", _counts(where, "count", self.count))
        _range(where, "duration", self.duration)
        _range(where, "events", self.events)


@dataclass(frozen=True)
class LongConfig:
    count: dict[str, int] = field(default_factory=lambda: {"train": 40, "val": 8, "test": 10})
    duration: tuple[float, float] = bounded((60.0, 120.0), lo=1.0)
    gap: tuple[float, float] = bounded((1.0, 12.0), lo=0)
    clip_sec: float = bounded(4.0, lo=0)
    segment_sec: float = bounded(30.0, lo=0)
    pseudo_grids: int = bounded(5, lo=0)   # train videos: n more segment grids, shifted by k·segment_sec/(n+1)
    pseudo_summaries: bool = True          # train videos: summaries of every run of >= 2 segments (not all)

    def check(self, where: str) -> None:
        object.__setattr__(self, "count", _counts(where, "count", self.count))
        _range(where, "duration", self.duration)
        _range(where, "gap", self.gap)

    @property
    def pseudo_shifts(self) -> tuple[float, ...]:
        """Where the pseudo-labelled grids start: k·segment_sec/(n+1), k = 1..n (never the manual grid's 0)."""
        n = self.pseudo_grids
        return tuple(round(k * self.segment_sec / (n + 1), 3) for k in range(1, n + 1))


@dataclass(frozen=True)
class SceneConfig:
    shapes: tuple[str, ...] = tuple(SHAPES)
    colours: tuple[str, ...] = tuple(COLOURS)
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    objects: tuple[int, int] = bounded((1, 3), lo=1)
    hidden_prob: float = bounded(0.15, lo=0, hi=1)
    noise_prob: float = bounded(0.35, lo=0, hi=1)
    noise: tuple[float, float] = bounded((1.0, 3.0), lo=0)
    distractors: tuple[int, int] = bounded((0, 4), lo=0)

    def check(self, where: str) -> None:
        _names(where, "shapes", self.shapes, SHAPES)
        _names(where, "colours", self.colours, COLOURS)
        _names(where, "backgrounds", self.backgrounds, BACKGROUNDS)
        for key in ("objects", "noise", "distractors"):
            _range(where, key, getattr(self, key))


@dataclass(frozen=True)
class EventConfig:
    kinds: tuple[str, ...] = EVENT_KINDS
    duration: tuple[float, float] = bounded((3.0, 12.0), lo=1.0)

    def check(self, where: str) -> None:
        _names(where, "kinds", self.kinds, EVENT_KINDS)
        _range(where, "duration", self.duration)


@dataclass(frozen=True)
class TextConfig:
    captions_per_video: int = bounded(5, lo=1)
    qa_per_video: int = bounded(4, lo=0)
    heldout_prob: float = bounded(0.3, lo=0, hi=1)


@dataclass(frozen=True)
class SpeechConfig:
    voices: tuple[str, ...] = ("en-us", "en-gb", "en+f3", "en+m3")
    sample_rate: int = bounded(16000, lo=8000)

    def check(self, where: str) -> None:
        if not self.voices or not all(self.voices):
            raise UserError(f"params.yaml {where}.voices: must be a non-empty list of espeak-ng voices")


@dataclass(frozen=True)
class SynthConfig:
    seed: int = bounded(0, lo=0)
    out: str = "data/raw/synth"
    workers: int = bounded(2, lo=0)
    video: VideoConfig = field(default_factory=VideoConfig)
    short: ShortConfig = field(default_factory=ShortConfig)
    long: LongConfig = field(default_factory=LongConfig)
    scene: SceneConfig = field(default_factory=SceneConfig)
    events: EventConfig = field(default_factory=EventConfig)
    text: TextConfig = field(default_factory=TextConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)

    def check(self, where: str = "synth") -> None:
        w, h = self.video.size
        short_side = min(w, h)
        if short_side < 48:
            raise UserError(f"params.yaml: synth.video.size {w}x{h} is too small (short side must be >= 48)")
        lo, hi = self.events.duration
        if self.short.duration[0] < lo + 1:
            raise UserError(
                f"params.yaml: synth.short.duration starts at {self.short.duration[0]} s, shorter than one "
                f"event (synth.events.duration {lo}..{hi} s) plus 1 s"
            )
        if self.long.clip_sec <= 0 or self.long.segment_sec < self.long.clip_sec:
            raise UserError("params.yaml: synth.long needs 0 < clip_sec <= segment_sec")
        if len(self.scene.colours) < self.scene.objects[1] + 1:
            raise UserError(
                f"params.yaml: synth.scene.colours lists {len(self.scene.colours)} colours; at least "
                f"objects max + 1 = {self.scene.objects[1] + 1} are needed (colours are unique per video)"
            )
        if len(self.scene.shapes) < self.scene.objects[1]:
            raise UserError(
                f"params.yaml: synth.scene.shapes lists {len(self.scene.shapes)} shapes; at least objects "
                f"max = {self.scene.objects[1]} are needed (shapes are unique per video)"
            )
