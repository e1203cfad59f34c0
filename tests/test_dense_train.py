"""Training loop: resume after a kill is bit-identical on CPU; selection hook; public result format."""

from __future__ import annotations

import json

import pytest
import torch
from test_dense_model import tiny_bank, tiny_cfg, tiny_dataset

from models.dense.train import load_model, predict, train


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Killed(Exception):
    pass


def _kill_after(epoch_to_die: int):
    def log(metrics, epoch):
        if epoch == epoch_to_die:
            raise Killed

    return log


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    ds, val = tiny_dataset(), tiny_dataset(lengths=(5, 9), seed=1)
    cfg = tiny_cfg(retrieval=True, batch_size=2, epochs=3)
    bank = tiny_bank(ds)
    seen: list[int] = []
    full = train(cfg, ds, val, tmp_path / "full", bank=bank, log=lambda m, e: seen.append(e), device="cpu")
    assert seen == [0, 1, 2] and (tmp_path / "full" / "best.pt").exists()

    with pytest.raises(Killed):
        train(cfg, ds, val, tmp_path / "resumed", bank=bank, log=_kill_after(0), device="cpu")
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["epoch"] == 1
    resumed = train(cfg, ds, val, tmp_path / "resumed", bank=bank, device="cpu")

    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for (ka, va), (kb, vb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        assert all(torch.equal(va[n], vb[n]) for n in va)
    assert full.history == resumed.history and full.best_epoch == resumed.best_epoch
    assert set(a["history"][-1]) >= {"train/loss", "val/loss", "val/loss_caption", "lr", "score"}


def test_selection_hook_and_changed_params_start_over(tmp_path, caplog):
    ds = tiny_dataset()
    cfg = tiny_cfg(epochs=2)
    scores = iter([0.7, 0.2])
    res = train(cfg, ds, None, tmp_path, score_fn=lambda model, epoch: next(scores), device="cpu")
    assert res.best_epoch == 0 and res.best_score == 0.7
    assert torch.load(res.best, weights_only=False)["epoch"] == 0

    res = train(tiny_cfg(epochs=2, lr=2e-3), ds, None, tmp_path, device="cpu")
    assert "other params" in caplog.text and [h["epoch"] for h in res.history] == [0, 1]


def test_predictions_are_activitynet_results(tmp_path):
    ds = tiny_dataset()
    cfg = tiny_cfg(retrieval=True, epochs=1)
    bank = tiny_bank(ds)
    res = train(cfg, ds, None, tmp_path, bank=bank, device="cpu")
    model = load_model(res.best)
    out = predict(model, ds, bank, batch_size=2)
    json.dumps(out)  # serialisable as is
    assert out["version"] == "VERSION 1.0" and set(out["results"]) == {"v0", "v1", "v2"}
    for v in ds.videos:
        entries = out["results"][v.video_id]
        assert 1 <= len(entries) <= cfg.num_queries
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
