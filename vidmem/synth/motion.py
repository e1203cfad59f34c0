"""Where every object is and how it looks at any time t, from its events.

Between events an object keeps the pose its last event ended in; during an event it is interpolated: linear
motion, geometric size change, constant-rate spin, |sin| bounces, linear colour blend, fade + scale for
appear/disappear. The renderer draws these looks; tests use them to know where to measure.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np

from vidmem.synth.palette import COLOURS
from vidmem.synth.scene import Event, Pose, VideoSpec


@dataclass(frozen=True)
class Look:
    """What is drawn for one object in one frame."""

    x: float
    y: float
    radius: float
    angle: float
    rgb: tuple[float, float, float]
    alpha: float


def _rgb(name: str) -> np.ndarray:
    return np.asarray(COLOURS[name], dtype=np.float64)


def _static(p: Pose) -> Look:
    return Look(p.x, p.y, p.radius, p.angle, tuple(_rgb(p.colour)), 1.0 if p.visible else 0.0)


def interpolate(ev: Event, t: float) -> Look:
    """The object's look at time t inside event `ev` (progress 0 at the start, 1 at the end)."""
    a, b = ev.before, ev.after
    p = min(1.0, max(0.0, (t - ev.start) / ev.duration))
    x, y, r, angle = a.x, a.y, a.radius, a.angle
    rgb = _rgb(a.colour)
    alpha = 1.0 if a.visible else 0.0
    k = ev.kind
    if k.startswith("move_"):
        x, y = a.x + (b.x - a.x) * p, a.y + (b.y - a.y) * p
    elif k in ("grow", "shrink"):
        r = a.radius * (b.radius / a.radius) ** p
    elif k == "spin":
        angle = a.angle + 2 * math.pi * ev.turns * p
    elif k == "bounce":
        y = a.y - ev.height * abs(math.sin(math.pi * ev.bounces * p))
    elif k == "recolour":
        rgb = rgb + (_rgb(b.colour) - rgb) * p
    elif k == "appear":
        alpha, r = p, a.radius * (0.4 + 0.6 * p)
    elif k == "disappear":
        alpha, r = 1.0 - p, a.radius * (1.0 - 0.6 * p)
    return Look(x, y, r, angle, tuple(float(c) for c in rgb), alpha)


class Timeline:
    """Looks of every object at any time: a binary search over each object's (disjoint) events."""

    def __init__(self, spec: VideoSpec):
        self.spec = spec
        self.events = [spec.object_events(i) for i in range(len(spec.objects))]
        self.starts = [[e.start for e in evs] for evs in self.events]

    def look(self, obj: int, t: float) -> Look:
        i = bisect.bisect_right(self.starts[obj], t) - 1
        if i < 0:
            return _static(self.spec.objects[obj].initial)
        ev = self.events[obj][i]
        return interpolate(ev, t) if t < ev.end else _static(ev.after)
