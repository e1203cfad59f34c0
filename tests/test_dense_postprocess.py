"""Post-processing (PDVC §2.4): boxes to seconds, joint re-ranking, counter-based selection, format."""

from __future__ import annotations

import pytest
import torch

from models.dense.postprocess import postprocess, results_json, select_events


def test_rerank_keeps_top_count_by_joint_score_sorted_by_time():
    boxes = torch.tensor([[0.8, 0.2], [0.2, 0.2], [0.5, 0.2], [0.05, 0.3]])  # (centre, length)
    scores = torch.tensor([0.9, 0.6, 0.7, 0.5])
    sentences = ["a b", "a b c", "a", "x y"]
    sentence_scores = torch.tensor([-8.0, -0.9, -0.5, -0.4])
    out = select_events(boxes, scores, sentences, sentence_scores, count=2, duration=20.0, ec_alpha=1.0)
    # joint = score + caption log-prob / words²: 0.9 − 2, 0.6 − 0.1, 0.7 − 0.5, 0.5 − 0.1
    joint = [0.9 - 8 / 4, 0.6 - 0.9 / 9, 0.7 - 0.5 / 1, 0.5 - 0.4 / 4]
    assert [e["joint_score"] for e in out] == pytest.approx([joint[3], joint[1]], abs=1e-4)
    assert [e["query_id"] for e in out] == [3, 1]  # kept: 1 and 3, then ordered by start time
    assert out[0]["timestamp"] == pytest.approx([0.0, 4.0])  # [−0.1, 0.2] clipped to [0, 1] × 20 s
    assert out[1]["timestamp"] == pytest.approx([2.0, 6.0])
    assert set(out[0]) >= {"timestamp", "sentence", "proposal_score", "sentence_score", "pred_event_count"}


def test_counter_zero_keeps_one_and_no_rerank_keeps_all_by_score():
    boxes = torch.tensor([[0.3, 0.2], [0.6, 0.2]])
    out = select_events(
        boxes, torch.tensor([0.2, 0.8]), ["a", "b"], torch.tensor([-1.0, -5.0]), count=0, duration=10.0
    )
    assert len(out) == 1 and out[0]["query_id"] == 0
    out = select_events(
        boxes,
        torch.tensor([0.2, 0.8]),
        ["a", "b"],
        torch.tensor([-1.0, -5.0]),
        count=1,
        duration=10.0,
        rerank=False,
    )
    assert [e["query_id"] for e in out] == [1, 0]


def test_batch_postprocess_decodes_and_scores_only_words():
    words = torch.tensor([[[3, 4, 0], [5, 0, 0]]])
    logps = torch.tensor([[[-0.5, -0.25, -9.0], [-1.0, -7.0, -7.0]]])
    vocab = {3: "red", 4: "circle", 5: "square"}

    def decode(ids):
        out = []
        for i in ids:
            if i == 0:
                break
            out.append(vocab[i])
        return " ".join(out)

    res = postprocess(
        torch.tensor([[2.0, -1.0]]),
        torch.tensor([[[0.5, 0.5], [0.2, 0.1]]]),
        torch.tensor([[0.0, 0.0, 5.0]]),
        words,
        logps,
        torch.tensor([8.0]),
        ["vid"],
        decode,
    )
    entries = res["vid"]
    assert [e["sentence"] for e in entries] == ["square", "red circle"]  # count 2, sorted by start
    assert [e["sentence_score"] for e in entries] == pytest.approx([-1.0, -0.75])
    assert entries[1]["proposal_score"] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    doc = results_json(res)
    assert doc["version"] == "VERSION 1.0" and doc["results"] is res and "external_data" in doc
