"""The data layout, named once: every stage (and the own-video commands) takes a `Paths` instead of spelling
out `data/...` itself, so a different root (a test's temporary project, a user's index folder) is one argument.

    data/raw/            inputs as given (SynthVid renders into data/raw/synth)
    data/manifest/       the canonical manifest (ingest)
    data/compressed/     3-fps working copies of the videos + their ledger (compress)
    data/features/       zarr feature stores, one per kind (extract@<kind>)
    data/bank.zarr       CM2's text memory (bank)
    data/checkpoints/    <family>/<model>/{last,best}.pt per trained model (train@<name>; finetune_clip:
                         encoders/clip)
    data/captions/       generated captions per level (the recursive caption extraction)
    data/predictions/    test-split predictions in the public result formats (evaluate@<name>)
    metrics/             small JSON metrics, git-tracked
    dvclive/             training curves, one folder per model
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path = Path(".")

    @classmethod
    def at(cls, root: str | os.PathLike = ".") -> Paths:
        return cls(Path(root))

    # -------------------------------------------------------------------------------------------- folders
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def raw(self) -> Path:
        return self.data / "raw"

    @property
    def manifest(self) -> Path:
        return self.data / "manifest"

    @property
    def compressed(self) -> Path:
        return self.data / "compressed"

    @property
    def features(self) -> Path:
        return self.data / "features"

    @property
    def bank(self) -> Path:
        return self.data / "bank.zarr"

    @property
    def checkpoints(self) -> Path:
        return self.data / "checkpoints"

    @property
    def captions(self) -> Path:
        return self.data / "captions"

    @property
    def predictions(self) -> Path:
        return self.data / "predictions"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def dvclive(self) -> Path:
        return self.root / "dvclive"

    # -------------------------------------------------------------------------------------------- files
    def store(self, kind: str) -> Path:
        """A feature store: clip, lavila, text, audio."""
        return self.features / f"{kind}.zarr"

    def compressed_video(self, video_id: str) -> Path:
        return self.compressed / f"{video_id}.mp4"

    @property
    def compress_ledger(self) -> Path:
        return self.compressed / "ledger.jsonl"

    def model_dir(self, family: str, name: str) -> Path:
        """`data/checkpoints/<family>/<name>/`: one trained model's last.pt and best.pt (a family's models share a
        parent folder, so its evaluate stage can depend on all of them at once)."""
        return self.checkpoints / family / name

    def checkpoint(self, family: str, name: str, which: str = "best") -> Path:
        """`data/checkpoints/<family>/<name>/<which>.pt` (which: best | last)."""
        return self.model_dir(family, name) / f"{which}.pt"

    @property
    def clip_checkpoint(self) -> Path:
        """The tuned CLIP towers every feature store is computed with (finetune_clip's best.pt)."""
        return self.checkpoint("encoders", "clip")

    def metric(self, name: str) -> Path:
        return self.metrics / f"{name}.json"

    def curves(self, name: str) -> Path:
        return self.dvclive / name
