"""A small vidmem project in a temp folder: params.yaml, a manifest, 3-fps "compressed" videos (one garbage,
one failed in compression) and a CLIP checkpoint — what the feature and training stages read."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import yaml

from tests.media import garbage, lavfi_video
from vidmem.manifest import Event, Manifest, Video
from vidmem.paths import Paths

DURATIONS = {"vid_a": 5.0, "vid_b": 9.0, "vid_c": 2.4, "vid_d": 13.0}


def make_project(root: Path, batch_size: int = 4, rows_per_chunk: int = 8, extra_video_seconds: float = 0) -> Path:
    """params.yaml, a manifest, 3-fps compressed videos (one garbage, one failed in compression), clip.pt."""
    from models.encoders.clip import ClipConfig, build_clip

    root.mkdir(parents=True, exist_ok=True)
    durations = dict(DURATIONS)
    if extra_video_seconds:
        durations["vid_long"] = extra_video_seconds
    params = {
        "compress": {"fps": 3, "short_side": 224},
        "clip": {"model": "vidmem-tiny", "pretrained": "none", "seed": 0},
        "extract": {"batch_size": batch_size, "rows_per_chunk": rows_per_chunk, "chunks_per_shard": 2, "threads": 0,
                    "lavila": {"window": 4.0, "frames": 4, "checkpoint": "none", "dense_tokens": False},
                    "text": {"max_tokens": 16}},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    comp = root / "data" / "compressed"
    videos = []
    for i, (vid, dur) in enumerate(durations.items()):
        # landscape and portrait, like compress outputs
        w, h = (298, 224) if i % 2 == 0 else (224, 298)
        lavfi_video(comp / f"{vid}.mp4", w, h, fps=3, duration=dur, source="testsrc2" if i % 2 else "testsrc")
        videos.append(Video(vid, f"raw/{vid}.mp4", dur))
    garbage(comp / "vid_bad.mp4")
    videos += [Video("vid_bad", "raw/vid_bad.mp4", 4.0), Video("vid_gone", "raw/vid_gone.mp4", 4.0)]
    (comp / "ledger.jsonl").write_text(json.dumps({"key": "vid_gone", "status": "failed",
                                                   "reason": "moov atom not found"}) + "\n")
    events = [Event("vid_a", "train", 0.5, 3.0, "a red circle moves left"),
              Event("vid_b", "train", 1.0, 8.0, "the blue square grows"),
              Event("vid_b", "test", 1.0, 8.0, "a red circle moves left")]  # duplicate text: stored once
    Manifest(videos=videos, events=events).write(root / "data" / "manifest")
    encoder = build_clip(ClipConfig())
    Paths(root).clip_checkpoint.parent.mkdir(parents=True)
    torch.save({"state_dict": encoder.model.state_dict(), "epoch": 0}, Paths(root).clip_checkpoint)
    return root


def digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}
