"""A resumed training run's checkpoints must be the uninterrupted run's bytes, not only its values: DVC
hashes bytes, so a `last.pt` that differs after a kill and rerun makes `dvc.lock` differ from a clean run's
and reruns every stage that reads the checkpoint folder. (The values are equal: test_recipe.py,
test_dense_train.py, test_kill_resume.py.)
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.test_recipe import ToyConfig, ToyTask
from vidmem.paths import Paths
from vidmem.training import RecipeConfig, fit, load_checkpoint


class Killed(Exception):
    pass


def toy(tmp_path: Path, die_at: int | None = None) -> ToyTask:
    class Task(ToyTask):
        def batches(self, ctx):
            if ctx.epoch == die_at:  # the previous epoch's last.pt is written
                raise Killed
            return ctx.shuffled_batches(self.config.samples, self.recipe.batch_size)

    recipe = RecipeConfig(epochs=3, batch_size=8, lr=1e-2, seed=5, schedule="cosine", warmup_steps=2)
    return Task("toy", recipe, ToyConfig(), Paths(tmp_path))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.usefixtures("one_torch_thread")
def test_resumed_last_checkpoint_is_byte_identical(tmp_path):
    fit(toy(tmp_path), tmp_path / "full", device="cpu", progress=False)
    with pytest.raises(Killed):
        fit(toy(tmp_path, die_at=1), tmp_path / "resumed", device="cpu", progress=False)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    fit(toy(tmp_path), tmp_path / "resumed", device="cpu", progress=False)
    assert sha(tmp_path / "resumed" / "best.pt") == sha(tmp_path / "full" / "best.pt")
    assert sha(tmp_path / "resumed" / "last.pt") == sha(tmp_path / "full" / "last.pt")
