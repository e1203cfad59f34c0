"""Rendering of a `VideoSpec` into frames, streamed frame by frame into an H.264 file.

Objects are drawn in index order over a shaded background, with drifting distractor dots and optional
per-frame luminance noise. Coverage masks are anti-aliased and cached while an object is still, so a frame
costs little more than a copy of the background.
"""
from __future__ import annotations

import os

import numpy as np

from vidmem.common import atomic_path
from vidmem.synth.config import VideoConfig
from vidmem.synth.encode import H264Writer
from vidmem.synth.motion import Look, Timeline
from vidmem.synth.palette import BACKGROUNDS
from vidmem.synth.scene import VideoSpec, video_rng
from vidmem.synth.shapes import coverage

GRAIN_PLANES, GRAIN_PAD = 8, 16  # luminance noise: planes in the bank, and the largest random shift (px)


def background(spec: VideoSpec) -> np.ndarray:
    """(h, w, 3) float32: the base colour shaded by a vertical/horizontal gradient or a vignette."""
    h, w = spec.height, spec.width
    base = np.asarray(BACKGROUNDS[spec.background], dtype=np.float32)
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
    if spec.style == "vgrad":
        shade = np.broadcast_to(ys[:, None], (h, w))
    elif spec.style == "hgrad":
        shade = np.broadcast_to(xs[None, :], (h, w))
    elif spec.style == "vignette":
        shade = 0.5 - 2.0 * (ys[:, None] ** 2 + xs[None, :] ** 2)
    else:
        shade = np.zeros((h, w), dtype=np.float32)
    sign = 1.0 if base.mean() < 128 else -1.0
    img = base[None, None, :] + sign * np.float32(spec.shade) * shade[..., None]
    return np.clip(img, 0, 255).astype(np.float32)


class FrameRenderer:
    """Frames of one video, in order (the noise stream is consumed frame by frame)."""

    def __init__(self, spec: VideoSpec):
        self.spec = spec
        self.timeline = Timeline(spec)
        self.bg = background(spec)
        self.noise_rng = video_rng(spec.seed, spec.long, spec.index, 1)
        self.grain = None
        if spec.noise > 0:  # a bank of noise planes, drawn from at a random shift per frame (cheap per frame)
            shape = (GRAIN_PLANES, spec.height + GRAIN_PAD, spec.width + GRAIN_PAD, 1)
            self.grain = self.noise_rng.standard_normal(shape, dtype=np.float32) * np.float32(spec.noise)
        self._cache: dict[int, tuple[tuple, object]] = {}

    def _draw(self, img: np.ndarray, key: int, shape: str, look: Look) -> None:
        if look.alpha <= 0.0:
            return
        geom = (shape, look.x, look.y, look.radius, look.angle)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == geom:
            cov = hit[1]
        else:
            cov = coverage(shape, look.x, look.y, look.radius, look.angle, self.spec.width, self.spec.height)
            self._cache[key] = (geom, cov)
        if cov is None:
            return
        (y0, y1, x0, x1), m = cov
        a = m[..., None] * np.float32(look.alpha)
        region = img[y0:y1, x0:x1]
        region += a * (np.asarray(look.rgb, dtype=np.float32) - region)

    def frame(self, i: int) -> np.ndarray:
        spec = self.spec
        t = i / spec.fps
        img = self.bg.copy()
        for k, d in enumerate(spec.distractors):
            x, y = (d.x + d.vx * t) % spec.width, (d.y + d.vy * t) % spec.height
            self._draw(img, -1 - k, "circle", Look(x, y, d.radius, 0.0, d.rgb, 1.0))
        for k, obj in enumerate(spec.objects):
            self._draw(img, k, obj.shape, self.timeline.look(k, t))
        if self.grain is not None:
            k, dy, dx = (int(v) for v in self.noise_rng.integers((GRAIN_PLANES, GRAIN_PAD, GRAIN_PAD)))
            img += self.grain[k, dy: dy + spec.height, dx: dx + spec.width]
        img += 0.5
        np.clip(img, 0, 255, out=img)
        return img.astype(np.uint8)


def render_video(spec: VideoSpec, path: str | os.PathLike, video: VideoConfig) -> int:
    """Render and encode one video; returns the number of frames written."""
    renderer = FrameRenderer(spec)
    with atomic_path(path, suffix=".mp4") as tmp:
        with H264Writer(tmp, spec.width, spec.height, spec.fps, video.crf, video.preset) as out:
            for i in range(spec.n_frames):
                out.write(renderer.frame(i))
    return spec.n_frames
