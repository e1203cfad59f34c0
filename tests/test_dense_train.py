"""Dense captioning on the shared recipe: resume after a kill is bit-identical on CPU; selection; result format."""

from __future__ import annotations

import json

import pytest
import torch
from test_dense_model import tiny_bank, tiny_cfg, tiny_dataset

from models.dense.task import DenseTask
from models.dense.train import predict
from vidmem.paths import Paths
from vidmem.training import RecipeConfig, fit, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Killed(Exception):
    pass


def tiny_task(tmp_path, retrieval=False, val=True, die_after=None, **recipe) -> DenseTask:
    """A dense task over in-memory splits; die_after=e raises Killed once epoch e's checkpoint is written."""
    ds = tiny_dataset()
    splits = {"train": ds, "val": tiny_dataset(lengths=(5, 9), seed=1) if val else tiny_dataset(lengths=())}
    r = RecipeConfig(**{"optimizer": "adam", "lr": 1e-3, "epochs": 2, "batch_size": 3, "seed": 7,
                        "schedule": "step", "lr_decay_start": 1, "lr_decay_every": 1, **recipe})

    class Task(DenseTask):
        def batches(self, ctx):
            if die_after is not None and ctx.epoch == die_after:
                raise Killed
            return super().batches(ctx)

    return Task("cm2" if retrieval else "pdvc", r, tiny_cfg(retrieval=retrieval), Paths(tmp_path),
                datasets=splits, bank=tiny_bank(ds) if retrieval else None)


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    full = fit(tiny_task(tmp_path, retrieval=True, batch_size=2, epochs=3), tmp_path / "full", device="cpu")
    assert [h["epoch"] for h in full.history] == [1, 2, 3] and (tmp_path / "full" / "best.pt").exists()

    with pytest.raises(Killed):
        fit(tiny_task(tmp_path, retrieval=True, batch_size=2, epochs=3, die_after=1), tmp_path / "resumed",
            device="cpu")
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    resumed = fit(tiny_task(tmp_path, retrieval=True, batch_size=2, epochs=3), tmp_path / "resumed", device="cpu")

    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for (ka, va), (kb, vb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        assert all(torch.equal(va[n], vb[n]) for n in va)
    assert full.history == resumed.history and full.best_epoch == resumed.best_epoch
    assert set(a["history"][-1]) >= {"train/loss", "val/loss", "val/loss_caption", "lr", "score"}
    assert [h["lr"] for h in full.history] == [1e-3, 5e-4, 2.5e-4]  # the step schedule, x0.5 from epoch 1


def test_best_is_the_best_val_loss_and_changed_params_start_over(tmp_path, caplog):
    res = fit(tiny_task(tmp_path, epochs=3), tmp_path / "m", device="cpu")
    losses = [h["val/loss"] for h in res.history]
    assert res.best_epoch == 1 + losses.index(min(losses)) and res.best_score == -min(losses)
    assert load_checkpoint(tmp_path / "m" / "best.pt")["epoch"] == res.best_epoch

    res = fit(tiny_task(tmp_path, epochs=2, lr=2e-3), tmp_path / "m", device="cpu")
    assert "starting over" in caplog.text and [h["epoch"] for h in res.history] == [1, 2]


def test_more_epochs_extend_a_step_schedule_run(tmp_path):
    fit(tiny_task(tmp_path, epochs=1), tmp_path / "m", device="cpu")
    res = fit(tiny_task(tmp_path, epochs=2), tmp_path / "m", device="cpu")
    assert len(res.history) == 2  # resumed: the step schedule does not depend on the epoch budget
    fresh = fit(tiny_task(tmp_path, epochs=2), tmp_path / "fresh", device="cpu")
    assert res.history == fresh.history


def test_predictions_are_activitynet_results(tmp_path):
    task = tiny_task(tmp_path, retrieval=True, epochs=1)
    fit(task, tmp_path / "m", device="cpu")
    model = task.restore(load_checkpoint(tmp_path / "m" / "best.pt"))
    ds, bank = task.dataset("train"), task.bank
    out = predict(model, ds, bank, batch_size=2)
    json.dumps(out)  # serialisable as is
    assert out["version"] == "VERSION 1.0" and set(out["results"]) == {"v0", "v1", "v2"}
    for v in ds.videos:
        entries = out["results"][v.video_id]
        assert 1 <= len(entries) <= task.config.num_queries
        assert len(entries) == max(1, entries[0]["pred_event_count"])
        assert [e["timestamp"] for e in entries] == sorted(e["timestamp"] for e in entries)
        for e in entries:
            s, t = e["timestamp"]
            assert 0 <= s <= t <= v.duration + 1e-6
            assert isinstance(e["sentence"], str) and 0 < e["proposal_score"] < 1
    again = predict(model, ds, bank, batch_size=3)  # batch size does not change the results
    for vid, entries in out["results"].items():
        for e, f in zip(entries, again["results"][vid]):
            assert e["sentence"] == f["sentence"] and e["timestamp"] == pytest.approx(
                f["timestamp"], abs=1e-5
            )


def test_missing_test_videos_are_counted_and_scored_zero(tmp_path):
    """A test video without features (failed compression) has no predictions: it is named in the metrics and
    scores 0, as densevid scores a reference video without predictions."""
    from vidmem.manifest import Event, Manifest, Video
    from models.dense.task import DenseTrivial

    events = [Event(v, "test", 0.0, 4.0, "a red circle moves left") for v in ("a", "b")]
    events.append(Event("t", "train", 0.0, 4.0, "a red circle moves left"))
    videos = [Video(v, f"{v}.mp4", 8.0) for v in ("a", "b", "t")]
    Manifest(videos=videos, events=events).write(
        Paths(tmp_path).manifest)
    task = DenseTrivial("dense_trivial", RecipeConfig(), tiny_cfg(), Paths(tmp_path))
    both = task.predict(None, "test")
    only_a = {"a": both["a"]}
    full, part = task.evaluate(both, "test"), task.evaluate(only_a, "test")
    assert (full["n_videos_missing"], part["n_videos_missing"], part["videos_missing"]) == (0, 1, ["b"])
    assert part["n_videos"] == full["n_videos"] == 2
    assert part["METEOR"] == pytest.approx(full["METEOR"] / 2) and part["Recall"] == pytest.approx(full["Recall"] / 2)
