"""Validation-time frame preprocessing on batched uint8 tensors: resize short side → center crop → normalise.

decord hands us uint8 frames; going through PIL one frame at a time would cost more than the encoder on
2 cores, so this works on whole batches with torch. Resizing rounds back to uint8 levels the way PIL does,
so the result follows open_clip's PIL val transform closely (antialiased bicubic uses PIL's kernel).

The normalisation constants must follow the weights: CLIP weights use CLIP's, a LaViLa checkpoint uses
LaViLa's own (its red mean differs from CLIP's, a typo kept for the released weights).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# LaViLa normalises frames on the 0-255 scale with these values.
LAVILA_MEAN_255 = (108.3272985, 116.7460125, 104.09373615)
LAVILA_STD_255 = (68.5005327, 66.6321579, 70.32316305)
LAVILA_MEAN = tuple(v / 255.0 for v in LAVILA_MEAN_255)
LAVILA_STD = tuple(v / 255.0 for v in LAVILA_STD_255)

INTERPOLATIONS = ("bilinear", "bicubic")
RESIZE_MODES = ("shortest", "squash")


def channels_first(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 frames [B,H,W,3] (decord's layout) or [B,3,H,W] → a uint8 tensor [B,3,H,W].

    A trailing dimension of 3 means channels last; otherwise dimension 1 must be the 3 channels.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if x.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 (0-255), got {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"frames must be [B,H,W,3] or [B,3,H,W], got shape {tuple(x.shape)}")
    if x.shape[-1] == 3:
        return x.permute(0, 3, 1, 2)
    if x.shape[1] == 3:
        return x
    raise ValueError(f"frames must have 3 colour channels first or last, got shape {tuple(x.shape)}")


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Short side → `size`, long side scaled and truncated (torchvision's `Resize(int)` rule)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


@dataclass(frozen=True)
class FrameTransform:
    """The val transform of an image/video encoder, applied to a batch of uint8 frames."""

    size: int
    mean: tuple[float, float, float] = OPENAI_MEAN  # on the 0-1 scale
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    antialias: bool = True
    resize_mode: str = "shortest"  # shortest: keep aspect, then center crop | squash: resize to size×size

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")

    def __call__(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 [B,H,W,3] or [B,3,H,W] → float32 [B,3,size,size], normalised, on the input's device."""
        x = channels_first(frames)
        _, _, h, w = x.shape
        if self.resize_mode == "squash":
            nh, nw = self.size, self.size
        else:
            nh, nw = resized_size(h, w, self.size)
        x = x.float()
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode=self.interpolation, align_corners=False,
                              antialias=self.antialias)
            x = x.round_().clamp_(0, 255)  # back on uint8 levels, as PIL / torchvision's uint8 path
        top = int(round((nh - self.size) / 2.0))
        left = int(round((nw - self.size) / 2.0))
        x = x[:, :, top:top + self.size, left:left + self.size]
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) * 255.0
        return ((x - mean) / std).contiguous()
