"""Sampling of SynthVid scenes: shapes on a background and a timeline of events, as plain frozen data.

A `VideoSpec` fully determines the rendered frames and the annotation text of one video; it is sampled from a
numpy Generator seeded by (params seed, short/long, video index), so a video does not depend on the pool that
renders it or on the other videos. Events of one object never overlap in time (an object does one thing at a
time); events of different objects do. Event kinds are chosen by a small state machine over the object's pose
(position, size, colour, visibility), so every event is feasible and stays inside the frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from vidmem.common import UserError
from vidmem.synth.config import SPLITS, SynthConfig
from vidmem.synth.palette import BACKGROUNDS, contrasts
from vidmem.synth.shapes import EXTENT, spins_visibly

# Geometry, as fractions of the frame's short side (S) or of the axis an event moves along.
SIZES = {"small": 0.065, "medium": 0.09, "large": 0.12}  # initial radius / S
R_MIN, R_MAX = 0.04, 0.24  # radius / S after shrinking / growing
SCALE = (1.5, 1.9)  # grow / shrink factor
MOVE_MIN, MOVE_MAX = 0.2, 0.6  # displacement / frame width (left, right) or height (up, down)
BOUNCE_HEIGHT = (0.12, 0.2)  # bounce amplitude / frame height
SPIN_RATE = (0.2, 0.35)  # turns per second
MARGIN = 2.0  # px kept free at the frame edges
EDGE_TIME = 0.5  # s kept free at the start and end of a video, so every event boundary is visible
BUSY_MAX = 0.85  # at most this fraction of a short video is taken by one object's events
TIME_STEP = 0.1  # event boundaries are multiples of this (exact in every text format)
BACKGROUND_STYLES = ("plain", "vgrad", "hgrad", "vignette")
# Relative chance of each feasible kind; 'still' and visibility changes are rarer than motion.
KIND_WEIGHT = {"still": 0.4, "appear": 0.7, "disappear": 0.5}


@dataclass(frozen=True)
class Pose:
    """An object's appearance at the boundary of an event (pixels, radians, colour name, visible or not)."""

    x: float
    y: float
    radius: float
    angle: float
    colour: str
    visible: bool


@dataclass(frozen=True)
class Event:
    obj: int
    kind: str
    start: float
    end: float
    before: Pose
    after: Pose
    bounces: int = 0
    height: float = 0.0  # bounce amplitude, px
    turns: float = 0.0  # spin: signed number of turns (counter-clockwise positive)

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class SceneObject:
    shape: str
    size: str
    initial: Pose


@dataclass(frozen=True)
class Distractor:
    """A small low-contrast dot drifting across the frame (wrapping at the edges): motion, but no event."""

    x: float
    y: float
    vx: float
    vy: float
    radius: float
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class VideoSpec:
    video_id: str
    split: str
    long: bool
    index: int
    seed: int
    width: int
    height: int
    fps: int
    n_frames: int
    background: str
    style: str
    shade: float  # strength of the gradient / vignette, 0-255 units
    noise: float  # std of the per-frame luminance noise, 0-255 units
    distractors: tuple[Distractor, ...]
    objects: tuple[SceneObject, ...]
    events: tuple[Event, ...]  # sorted by (start, obj)

    @property
    def duration(self) -> float:
        return self.n_frames / self.fps

    def object_events(self, obj: int) -> list[Event]:
        return [e for e in self.events if e.obj == obj]


def video_rng(seed: int, long: bool, index: int, stream: int) -> np.random.Generator:
    """Independent random stream per (video, purpose): 0 scene, 1 pixels (noise), 2 text, 3 speech voices,
    4 pseudo-labelled segment text, 5 pseudo-labelled summaries."""
    return np.random.default_rng(np.random.SeedSequence([seed, int(long), index, stream]))


def video_ids(cfg: SynthConfig) -> list[tuple[str, str, bool, int]]:
    """(video_id, split, long, index) for every video, in a fixed order: short then long, train/val/test."""
    out = []
    for long, counts, fmt in ((False, cfg.short.count, "syn_s{:05d}"), (True, cfg.long.count, "syn_l{:04d}")):
        i = 0
        for split in SPLITS:
            for _ in range(counts[split]):
                out.append((fmt.format(i), split, long, i))
                i += 1
    return out


def sample_video(cfg: SynthConfig, video_id: str, split: str, long: bool, index: int) -> VideoSpec:
    rng = video_rng(cfg.seed, long, index, 0)
    fps = cfg.video.fps
    w, h = cfg.video.size
    if rng.random() < cfg.video.portrait_prob:
        w, h = h, w
    lo, hi = cfg.long.duration if long else cfg.short.duration
    n_frames = max(1, int(round(_quantise(rng.uniform(lo, hi), 0.5) * fps)))
    duration = n_frames / fps

    lo_obj, hi_obj = cfg.scene.objects
    if long:  # a long video needs several actors for its segments to differ
        lo_obj = min(max(lo_obj, 2), hi_obj)
    n_obj = int(rng.integers(lo_obj, hi_obj + 1))
    background = _pick_background(cfg, rng, n_obj)
    usable = [c for c in cfg.scene.colours if contrasts(c, background)]
    colours = [str(c) for c in rng.choice(usable, size=n_obj, replace=False)]
    shapes = [str(s) for s in rng.choice(list(cfg.scene.shapes), size=n_obj, replace=False)]
    sizes = [str(s) for s in rng.choice(list(SIZES), size=n_obj)]

    slots = _schedule_long(cfg, rng, n_obj, duration) if long else _schedule_short(cfg, rng, n_obj, duration)
    busy = {o for o, _, _ in slots}
    hidden = [o in busy and "appear" in cfg.events.kinds and rng.random() < cfg.scene.hidden_prob
              for o in range(n_obj)]
    objects = _place(rng, shapes, sizes, colours, hidden, w, h)
    events = _assign_kinds(cfg, rng, objects, slots, usable, w, h)

    style = str(rng.choice(BACKGROUND_STYLES))
    shade = float(rng.uniform(10.0, 30.0)) if style != "plain" else 0.0
    noise = float(rng.uniform(*cfg.scene.noise)) if rng.random() < cfg.scene.noise_prob else 0.0
    n_dis = int(rng.integers(cfg.scene.distractors[0], cfg.scene.distractors[1] + 1))
    distractors = tuple(_distractor(rng, background, w, h) for _ in range(n_dis))
    return VideoSpec(
        video_id=video_id, split=split, long=long, index=index, seed=cfg.seed, width=w, height=h, fps=fps,
        n_frames=n_frames, background=background, style=style, shade=shade, noise=noise,
        distractors=distractors, objects=tuple(objects), events=tuple(events),
    )


# ---------------------------------------------------------------------------------------------------- layout
def _quantise(t: float, step: float = TIME_STEP) -> float:
    return round(round(t / step) * step, 6)


def _pick_background(cfg: SynthConfig, rng: np.random.Generator, n_obj: int) -> str:
    """A background with enough contrasting colours for the objects plus one colour-change target."""
    for need in (n_obj + 1, n_obj):
        ok = [b for b in cfg.scene.backgrounds if sum(contrasts(c, b) for c in cfg.scene.colours) >= need]
        if ok:
            return str(rng.choice(ok))
    raise UserError(
        f"params.yaml: synth.scene: no background in {list(cfg.scene.backgrounds)} contrasts with {n_obj} "
        f"of the colours {list(cfg.scene.colours)}; add colours or backgrounds"
    )


def _place(rng, shapes, sizes, colours, hidden, w, h) -> list[SceneObject]:
    """Initial positions, spread apart when the frame allows it."""
    short = min(w, h)
    objects: list[SceneObject] = []
    for shape, size, colour, hid in zip(shapes, sizes, colours, hidden, strict=True):
        r = SIZES[size] * short
        ext = EXTENT[shape] * r + MARGIN
        best, best_gap = None, -math.inf
        for _ in range(60):
            x, y = rng.uniform(ext, w - ext), rng.uniform(ext, h - ext)
            gap = min(
                (math.hypot(x - o.initial.x, y - o.initial.y) - ext - EXTENT[o.shape] * o.initial.radius
                 for o in objects),
                default=math.inf,
            )
            if gap > best_gap:
                best, best_gap = (x, y), gap
            if gap > 6:
                break
        x, y = best
        objects.append(SceneObject(shape, size, Pose(x, y, r, 0.0, colour, not hid)))
    return objects


def _distractor(rng, background: str, w: int, h: int) -> Distractor:
    base = np.asarray(BACKGROUNDS[background], dtype=np.float64)
    delta = 35.0 if base.mean() < 128 else -35.0
    rgb = tuple(int(v) for v in np.clip(base + delta, 0, 255).round())
    speed, angle = rng.uniform(5.0, 20.0), rng.uniform(0, 2 * math.pi)
    return Distractor(
        x=float(rng.uniform(0, w)), y=float(rng.uniform(0, h)), vx=speed * math.cos(angle),
        vy=speed * math.sin(angle), radius=float(rng.uniform(2.0, 4.0)), rgb=rgb,
    )


# ---------------------------------------------------------------------------------------------------- timing
def _schedule_short(cfg: SynthConfig, rng, n_obj: int, duration: float) -> list[tuple[int, float, float]]:
    """(obj, start, end) slots: 2-6 events spread over the objects, overlapping across objects."""
    n_ev = int(rng.integers(cfg.short.events[0], cfg.short.events[1] + 1))
    owners = list(rng.permutation(n_obj))[: min(n_obj, n_ev)]
    owners += [int(o) for o in rng.integers(0, n_obj, size=n_ev - len(owners))]
    per_obj = {o: owners.count(o) for o in sorted(set(int(o) for o in owners))}
    dmin, dmax = cfg.events.duration
    span = duration - 2 * EDGE_TIME
    busy = BUSY_MAX * span  # the rest is rest, so that consecutive events of one object are told apart
    best: list[tuple[int, float, float]] = []
    for attempt in range(10):
        slots = []
        for o, k in per_obj.items():
            while k * dmin > busy:
                k -= 1
            if k == 0:
                continue
            d = rng.uniform(dmin, dmax, size=k)
            if d.sum() > busy:  # shrink towards the minimum duration until the events fit
                excess = d - dmin
                d = dmin + excess * (busy - k * dmin) / max(excess.sum(), 1e-9)
            gaps = rng.dirichlet(np.ones(k + 1)) * (span - d.sum())
            t = EDGE_TIME
            for i in range(k):
                t += gaps[i]
                slots.append((o, t, t + d[i]))
                t += d[i]
        slots = _snap(slots, duration)
        best = slots
        if len(per_obj) < 2 or _overlaps_across(slots):
            break
    return best


def _schedule_long(cfg: SynthConfig, rng, n_obj: int, duration: float) -> list[tuple[int, float, float]]:
    """Each object alternates rest (cfg.long.gap) and events until the end of the video."""
    dmin, dmax = cfg.events.duration
    slots = []
    for o in range(n_obj):
        t = EDGE_TIME + rng.uniform(*cfg.long.gap)
        while t + dmin <= duration - EDGE_TIME:
            d = min(rng.uniform(dmin, dmax), duration - EDGE_TIME - t)
            slots.append((o, t, t + d))
            t += d + rng.uniform(*cfg.long.gap)
    return _snap(slots, duration)


def _snap(slots, duration: float) -> list[tuple[int, float, float]]:
    """Round boundaries to TIME_STEP, keeping each object's events disjoint and inside the video."""
    out = []
    last_end: dict[int, float] = {}
    for o, s, e in sorted(slots, key=lambda x: (x[1], x[0])):
        s = max(_quantise(s), last_end.get(o, 0.0))
        e = min(_quantise(e), math.floor(duration / TIME_STEP) * TIME_STEP)
        if e - s >= TIME_STEP * 10:
            out.append((o, s, round(e, 6)))
            last_end[o] = e
    return out


def _overlaps_across(slots) -> bool:
    return any(
        a[0] != b[0] and a[1] < b[2] and b[1] < a[2] for i, a in enumerate(slots) for b in slots[i + 1:]
    )


# ---------------------------------------------------------------------------------------------------- kinds
def _assign_kinds(
    cfg: SynthConfig, rng, objects: list[SceneObject], slots, usable: list[str], w: int, h: int
) -> list[Event]:
    """Walk the slots in time order, choosing for each a kind that is feasible from the object's pose."""
    pose = {i: o.initial for i, o in enumerate(objects)}
    ongoing: list[Event] = []
    events: list[Event] = []
    short = min(w, h)
    for o, s, e in slots:
        ongoing = [x for x in ongoing if x.end > s]
        taken = {pose[j].colour for j in pose if j != o}
        taken |= {c for x in ongoing if x.obj != o for c in (x.before.colour, x.after.colour)}
        targets = [c for c in usable if c not in taken and c != pose[o].colour]
        ev = _sample_event(cfg, rng, objects[o].shape, o, pose[o], s, e, targets, w, h, short)
        if ev is None:
            continue
        events.append(ev)
        ongoing.append(ev)
        pose[o] = ev.after
    return sorted(events, key=lambda x: (x.start, x.obj))


def _feasible(cfg, shape: str, p: Pose, targets, w: int, h: int, short: float) -> dict[str, float]:
    kinds = cfg.events.kinds
    if not p.visible:
        return {"appear": 1.0} if "appear" in kinds else {}
    ext = EXTENT[shape] * p.radius
    room = {
        "move_left": p.x - ext - MARGIN,
        "move_right": w - MARGIN - ext - p.x,
        "move_up": p.y - ext - MARGIN,
        "move_down": h - MARGIN - ext - p.y,
    }
    ok: dict[str, float] = {}
    for k in kinds:
        if k in room:
            need = MOVE_MIN * (w if k in ("move_left", "move_right") else h)
            feasible = room[k] >= need
        elif k == "grow":
            r2 = p.radius * SCALE[0]
            e2 = EXTENT[shape] * r2 + MARGIN
            feasible = r2 <= R_MAX * short and e2 <= p.x <= w - e2 and e2 <= p.y <= h - e2
        elif k == "shrink":
            feasible = p.radius / SCALE[0] >= R_MIN * short
        elif k == "spin":
            feasible = spins_visibly(shape)
        elif k == "bounce":
            feasible = room["move_up"] >= BOUNCE_HEIGHT[0] * h
        elif k == "recolour":
            feasible = bool(targets)
        elif k == "appear":
            feasible = False
        else:  # disappear, still
            feasible = True
        if feasible:
            ok[k] = KIND_WEIGHT.get(k, 1.0)
    return ok


def _sample_event(cfg, rng, shape, o, p: Pose, s, e, targets, w, h, short) -> Event | None:
    ok = _feasible(cfg, shape, p, targets, w, h, short)
    if not ok:
        return None
    names = list(ok)
    weights = np.array([ok[k] for k in names])
    kind = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    ext = EXTENT[shape] * p.radius
    after, bounces, height, turns = p, 0, 0.0, 0.0
    if kind.startswith("move_"):
        horizontal = kind in ("move_left", "move_right")
        axis = w if horizontal else h
        room = {"move_left": p.x - ext, "move_right": w - ext - p.x,
                "move_up": p.y - ext, "move_down": h - ext - p.y}[kind] - MARGIN
        d = rng.uniform(MOVE_MIN * axis, min(room, MOVE_MAX * axis))
        sign = -1.0 if kind in ("move_left", "move_up") else 1.0
        after = replace(p, x=p.x + sign * d) if horizontal else replace(p, y=p.y + sign * d)
    elif kind == "grow":
        limit = min(R_MAX * short, (min(p.x, w - p.x, p.y, h - p.y) - MARGIN) / EXTENT[shape])
        after = replace(p, radius=min(p.radius * rng.uniform(*SCALE), limit))
    elif kind == "shrink":
        after = replace(p, radius=max(p.radius / rng.uniform(*SCALE), R_MIN * short))
    elif kind == "spin":
        turns = max(1.0, (e - s) * rng.uniform(*SPIN_RATE)) * (1 if rng.random() < 0.5 else -1)
        turns = round(float(turns), 6)
        after = replace(p, angle=(p.angle + 2 * math.pi * turns) % (2 * math.pi))
    elif kind == "bounce":
        bounces = max(2, int(round((e - s) / rng.uniform(0.8, 1.2))))
        height = min(rng.uniform(*BOUNCE_HEIGHT) * h, p.y - ext - MARGIN)
    elif kind == "recolour":
        after = replace(p, colour=str(rng.choice(targets)))
    elif kind == "appear":
        after = replace(p, visible=True)
    elif kind == "disappear":
        after = replace(p, visible=False)
    return Event(o, kind, s, e, p, after, bounces, float(height), turns)
