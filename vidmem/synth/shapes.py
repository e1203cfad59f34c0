"""Shape geometry and anti-aliased coverage masks, vectorised over the pixels of a bounding box.

Every shape is a signed distance field (negative inside) in pixels; coverage = clip(0.5 - sdf, 0, 1) gives
one pixel of anti-aliasing at the edge. `radius` is the shape's nominal size: the shapes are scaled so that
their areas are similar, and a spin is visible for every shape except the rotation-symmetric circle and ring.
"""
from __future__ import annotations

import math

import numpy as np


def _regular(n: int, r: float, phase: float = math.pi / 2) -> np.ndarray:
    a = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(a), np.sin(a)], axis=1) * r


def _star(points: int = 5, outer: float = 1.45, inner: float = 0.6) -> np.ndarray:
    a = math.pi / 2 + math.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([np.cos(a) * r, np.sin(a) * r], axis=1)


def _cross(arm: float = 0.38, reach: float = 1.1) -> np.ndarray:
    a, b = arm, reach
    return np.array(
        [[a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a],
         [-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a]]
    )


# Unit polygons (radius 1; y points up, as in the paper's figures: the renderer flips it for image rows).
POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]]) * 0.85,
    "triangle": _regular(3, 1.45),
    "star": _star(),
    "diamond": np.array([[0.0, 1.35], [-0.95, 0.0], [0.0, -1.35], [0.95, 0.0]]),
    "cross": _cross(),
    "hexagon": _regular(6, 1.05, phase=0.0),
}
ROUND = ("circle", "ring")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "diamond", "cross", "hexagon")
RING_INNER = 0.55  # inner radius of a ring, as a fraction of its outer radius

# Extent of each unit shape (max distance of a point from the centre), for bounding boxes and layout.
EXTENT: dict[str, float] = {s: float(np.linalg.norm(p, axis=1).max()) for s, p in POLYGONS.items()}
EXTENT.update({"circle": 1.0, "ring": 1.0})


def spins_visibly(shape: str) -> bool:
    return shape not in ROUND


def _polygon_sdf(px: np.ndarray, py: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Signed distance from pixel centres (px, py: (h, w)) to a closed polygon (n, 2); negative inside.

    One pass per edge over 2-D arrays: far fewer temporaries than broadcasting over (h, w, n).
    """
    n = len(verts)
    d2 = None
    inside = np.zeros(px.shape, dtype=bool)
    for i in range(n):
        ax, ay = verts[i]
        bx, by = verts[(i + 1) % n]
        ex, ey = bx - ax, by - ay
        wx, wy = px - ax, py - ay
        t = np.clip((wx * ex + wy * ey) * (1.0 / (ex * ex + ey * ey)), 0.0, 1.0)
        dx, dy = wx - ex * t, wy - ey * t
        dd = dx * dx + dy * dy
        d2 = dd if d2 is None else np.minimum(d2, dd)
        if ay != by:  # even-odd rule: flip for every edge a ray towards +x crosses
            inside ^= ((ay <= py) != (by <= py)) & (px < ax + (py - ay) * (ex / ey))
    dist = np.sqrt(d2)
    return np.where(inside, -dist, dist)


def coverage(
    shape: str, cx: float, cy: float, radius: float, angle: float, width: int, height: int
) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Anti-aliased coverage of a shape centred at (cx, cy) px, rotated by `angle` (radians, anticlockwise).

    Returns ((y0, y1, x0, x1), coverage (y1-y0, x1-x0) float32), clipped to the frame, or None if off-frame.
    """
    ext = EXTENT[shape] * radius + 1.5
    x0, x1 = max(0, int(math.floor(cx - ext))), min(width, int(math.ceil(cx + ext)) + 1)
    y0, y1 = max(0, int(math.floor(cy - ext))), min(height, int(math.ceil(cy + ext)) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    xs = np.arange(x0, x1, dtype=np.float64) + 0.5 - cx
    ys = cy - (np.arange(y0, y1, dtype=np.float64) + 0.5)  # y up
    px, py = np.meshgrid(xs, ys)
    if shape == "circle":
        sdf = np.hypot(px, py) - radius
    elif shape == "ring":
        mid = radius * (1 + RING_INNER) / 2
        sdf = np.abs(np.hypot(px, py) - mid) - radius * (1 - RING_INNER) / 2
    else:
        c, s = math.cos(angle), math.sin(angle)
        verts = POLYGONS[shape] * radius @ np.array([[c, s], [-s, c]])
        sdf = _polygon_sdf(px, py, verts)
    cov = np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32)
    return (y0, y1, x0, x1), cov
