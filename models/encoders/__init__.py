"""Frame, video and text encoders: an open_clip wrapper and a LaViLa-style TimeSformer."""
from .clip import TINY_MODEL, ClipConfig, ClipEncoder, build_clip, checkpoint_hash, state_dict_hash
from .frames import LAVILA_MEAN, LAVILA_STD, OPENAI_MEAN, OPENAI_STD, FrameTransform
from .timesformer import (
    TimeSformer,
    TimeSformerConfig,
    VideoEncoder,
    inflate_from_clip,
    load_lavila_checkpoint,
    resize_temporal_embed,
)

__all__ = [
    "TINY_MODEL", "ClipConfig", "ClipEncoder", "build_clip", "checkpoint_hash", "state_dict_hash",
    "LAVILA_MEAN", "LAVILA_STD", "OPENAI_MEAN", "OPENAI_STD", "FrameTransform",
    "TimeSformer", "TimeSformerConfig", "VideoEncoder", "inflate_from_clip", "load_lavila_checkpoint",
    "resize_temporal_embed",
]
