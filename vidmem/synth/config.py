"""Typed view of `params.synth`, validated once so that a bad value stops with one line naming the key.

Everything SynthVid produces is a pure function of this config: two equal configs give byte-identical files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vidmem.common import UserError
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


@dataclass(frozen=True)
class VideoConfig:
    size: tuple[int, int] = (320, 240)  # landscape (width, height); portrait videos swap them
    portrait_prob: float = 0.2
    fps: int = 8
    crf: int = 23
    preset: str = "veryfast"


@dataclass(frozen=True)
class ShortConfig:
    count: dict[str, int] = field(default_factory=lambda: {"train": 100, "val": 20, "test": 20})
    duration: tuple[float, float] = (20.0, 40.0)
    events: tuple[int, int] = (2, 6)


@dataclass(frozen=True)
class LongConfig:
    count: dict[str, int] = field(default_factory=lambda: {"train": 4, "val": 1, "test": 1})
    duration: tuple[float, float] = (180.0, 360.0)
    gap: tuple[float, float] = (1.0, 12.0)
    clip_sec: float = 4.0
    segment_sec: float = 60.0


@dataclass(frozen=True)
class SceneConfig:
    shapes: tuple[str, ...] = tuple(SHAPES)
    colours: tuple[str, ...] = tuple(COLOURS)
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    objects: tuple[int, int] = (1, 3)
    hidden_prob: float = 0.15
    noise_prob: float = 0.35
    noise: tuple[float, float] = (1.0, 3.0)
    distractors: tuple[int, int] = (0, 4)


@dataclass(frozen=True)
class EventConfig:
    kinds: tuple[str, ...] = EVENT_KINDS
    duration: tuple[float, float] = (3.0, 12.0)


@dataclass(frozen=True)
class TextConfig:
    captions_per_video: int = 5
    qa_per_video: int = 4
    heldout_prob: float = 0.3


@dataclass(frozen=True)
class SpeechConfig:
    voices: tuple[str, ...] = ("en-us", "en-gb", "en+f3", "en+m3")
    sample_rate: int = 16000


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    out: str = "data/raw/synth"
    workers: int = 2
    video: VideoConfig = field(default_factory=VideoConfig)
    short: ShortConfig = field(default_factory=ShortConfig)
    long: LongConfig = field(default_factory=LongConfig)
    scene: SceneConfig = field(default_factory=SceneConfig)
    events: EventConfig = field(default_factory=EventConfig)
    text: TextConfig = field(default_factory=TextConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> SynthConfig:
        """Build from the `synth` params group; missing keys take the defaults above."""
        r = _Reader(p, "synth")
        cfg = cls(
            seed=r.int("seed", 0, lo=0),
            out=r.str("out", cls.out),
            workers=r.int("workers", 2, lo=0),
            video=_video(r.sub("video")),
            short=_short(r.sub("short")),
            long=_long(r.sub("long")),
            scene=_scene(r.sub("scene")),
            events=_events(r.sub("events")),
            text=_text(r.sub("text")),
            speech=_speech(r.sub("speech")),
        )
        r.done()
        cfg._check()
        return cfg

    def _check(self) -> None:
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


# ---------------------------------------------------------------------------------------------------- parsing
class _Reader:
    """Reads one mapping of params, naming the full dotted key in every error, and rejects unknown keys."""

    def __init__(self, node: Any, where: str):
        if node is None:
            node = {}
        if not isinstance(node, dict):
            raise UserError(f"params.yaml: {where} must be a mapping, got {type(node).__name__}")
        self.node, self.where, self.used = node, where, set()

    def _get(self, key: str, default: Any) -> Any:
        self.used.add(key)
        return self.node.get(key, default)

    def _key(self, key: str) -> str:
        return f"params.yaml: {self.where}.{key}"

    def sub(self, key: str) -> _Reader:
        return _Reader(self._get(key, {}), f"{self.where}.{key}")

    def int(self, key: str, default: int, lo: int | None = None) -> int:
        v = self._get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise UserError(f"{self._key(key)} must be an integer, got {v!r}")
        if lo is not None and v < lo:
            raise UserError(f"{self._key(key)} must be >= {lo}, got {v}")
        return v

    def float(self, key: str, default: float, lo: float = 0.0, hi: float | None = None) -> float:
        v = self._get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise UserError(f"{self._key(key)} must be a number, got {v!r}")
        if v < lo or (hi is not None and v > hi):
            raise UserError(f"{self._key(key)} must be in [{lo}, {hi if hi is not None else 'inf'}], got {v}")
        return float(v)

    def str(self, key: str, default: str) -> str:
        v = self._get(key, default)
        if not isinstance(v, str) or not v:
            raise UserError(f"{self._key(key)} must be a non-empty string, got {v!r}")
        return v

    def range(self, key: str, default: tuple, integer: bool = False, lo: float = 0.0) -> tuple:
        """A [min, max] pair with lo <= min <= max."""
        v = self._get(key, list(default))
        kind = int if integer else (int, float)
        if (
            not isinstance(v, list | tuple) or len(v) != 2
            or any(isinstance(x, bool) or not isinstance(x, kind) for x in v)
        ):
            what = "integers" if integer else "numbers"
            raise UserError(f"{self._key(key)} must be a [min, max] pair of {what}, got {v!r}")
        a, b = v
        if not (lo <= a <= b):
            raise UserError(f"{self._key(key)} must satisfy {lo} <= min <= max, got {list(v)}")
        return (int(a), int(b)) if integer else (float(a), float(b))

    def names(self, key: str, default: tuple[str, ...], allowed: tuple[str, ...] | dict) -> tuple[str, ...]:
        v = self._get(key, list(default))
        if not isinstance(v, list | tuple) or not v or not all(isinstance(x, str) for x in v):
            raise UserError(f"{self._key(key)} must be a non-empty list of names, got {v!r}")
        for x in v:
            if x not in allowed:
                raise UserError(f"{self._key(key)}: unknown name '{x}' (known: {', '.join(allowed)})")
        if len(set(v)) != len(v):
            raise UserError(f"{self._key(key)} lists a name twice: {v!r}")
        return tuple(v)

    def counts(self, key: str, default: dict[str, int]) -> dict[str, int]:
        v = self._get(key, dict(default))
        if not isinstance(v, dict):
            raise UserError(f"{self._key(key)} must map each split (train/val/test) to a count, got {v!r}")
        out = {}
        for split in SPLITS:
            n = v.get(split, 0)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise UserError(f"{self._key(key)}.{split} must be a non-negative integer, got {n!r}")
            out[split] = n
        extra = set(v) - set(SPLITS)
        if extra:
            raise UserError(f"{self._key(key)}: unknown split(s) {sorted(extra)} (use train, val, test)")
        return out

    def done(self) -> None:
        extra = set(self.node) - self.used
        if extra:
            raise UserError(f"params.yaml: {self.where}: unknown key(s) {sorted(extra)}")


def _video(r: _Reader) -> VideoConfig:
    d = VideoConfig()
    size = r._get("size", list(d.size))
    if (
        not isinstance(size, list | tuple) or len(size) != 2
        or any(isinstance(x, bool) or not isinstance(x, int) or x <= 0 for x in size)
    ):
        raise UserError(f"params.yaml: synth.video.size must be [width, height] in pixels, got {size!r}")
    size = (int(size[0]), int(size[1]))
    if size[0] % 2 or size[1] % 2:
        raise UserError(f"params.yaml: synth.video.size must be even (yuv420p), got {list(size)}")
    cfg = VideoConfig(
        size=size,
        portrait_prob=r.float("portrait_prob", d.portrait_prob, hi=1.0),
        fps=r.int("fps", d.fps, lo=1),
        crf=r.int("crf", d.crf, lo=0),
        preset=r.str("preset", d.preset),
    )
    if cfg.preset not in X264_PRESETS:
        raise UserError(f"params.yaml: synth.video.preset: '{cfg.preset}' is not a libx264 preset "
                        f"({', '.join(X264_PRESETS)})")
    r.done()
    return cfg


def _short(r: _Reader) -> ShortConfig:
    d = ShortConfig()
    cfg = ShortConfig(
        count=r.counts("count", d.count),
        duration=r.range("duration", d.duration, lo=1.0),
        events=r.range("events", d.events, integer=True, lo=1),
    )
    r.done()
    return cfg


def _long(r: _Reader) -> LongConfig:
    d = LongConfig()
    cfg = LongConfig(
        count=r.counts("count", d.count),
        duration=r.range("duration", d.duration, lo=1.0),
        gap=r.range("gap", d.gap),
        clip_sec=r.float("clip_sec", d.clip_sec),
        segment_sec=r.float("segment_sec", d.segment_sec),
    )
    r.done()
    return cfg


def _scene(r: _Reader) -> SceneConfig:
    d = SceneConfig()
    cfg = SceneConfig(
        shapes=r.names("shapes", d.shapes, SHAPES),
        colours=r.names("colours", d.colours, COLOURS),
        backgrounds=r.names("backgrounds", d.backgrounds, BACKGROUNDS),
        objects=r.range("objects", d.objects, integer=True, lo=1),
        hidden_prob=r.float("hidden_prob", d.hidden_prob, hi=1.0),
        noise_prob=r.float("noise_prob", d.noise_prob, hi=1.0),
        noise=r.range("noise", d.noise),
        distractors=r.range("distractors", d.distractors, integer=True),
    )
    r.done()
    return cfg


def _events(r: _Reader) -> EventConfig:
    d = EventConfig()
    cfg = EventConfig(
        kinds=r.names("kinds", d.kinds, EVENT_KINDS),
        duration=r.range("duration", d.duration, lo=1.0),
    )
    r.done()
    return cfg


def _text(r: _Reader) -> TextConfig:
    d = TextConfig()
    cfg = TextConfig(
        captions_per_video=r.int("captions_per_video", d.captions_per_video, lo=1),
        qa_per_video=r.int("qa_per_video", d.qa_per_video, lo=0),
        heldout_prob=r.float("heldout_prob", d.heldout_prob, hi=1.0),
    )
    r.done()
    return cfg


def _speech(r: _Reader) -> SpeechConfig:
    d = SpeechConfig()
    voices = r._get("voices", list(d.voices))
    ok = isinstance(voices, list | tuple) and voices and all(isinstance(v, str) and v for v in voices)
    if not ok:
        raise UserError(
            f"params.yaml: synth.speech.voices must be a non-empty list of espeak-ng voices, got {voices!r}"
        )
    cfg = SpeechConfig(voices=tuple(voices), sample_rate=r.int("sample_rate", d.sample_rate, lo=8000))
    r.done()
    return cfg
