"""CLIP tuning pieces (multi-positive InfoNCE, span collection) and the memory bank store."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models.encoders.tuning import collect_spans, multi_positive_infonce
from vidmem.bank import bank_entries, read_bank, write_bank
from vidmem.common import UserError
from vidmem.manifest import Caption, Event, Manifest, Query
from vidmem.store import ArraySpec, FeatureStore, ShardedWriter


def test_multi_positive_infonce_by_hand():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [math.sqrt(0.5), math.sqrt(0.5)]])
    pos = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # image 0 has two positives
    scale = torch.tensor(2.0)
    # logits = 2 * img @ txt.T: row 0 = [2, 0, s], row 1 = [0, 2, s] with s = 2*sqrt(.5)
    s = 2 * math.sqrt(0.5)
    lse0 = math.log(math.exp(2) + 1 + math.exp(s))
    loss_i = (-(0.5 * (2 - lse0) + 0.5 * (s - lse0)) + -(2 - lse0)) / 2
    # text → image: columns [2, 0], [0, 2], [s, s]; each text's positives are uniform over its images
    lse_t = math.log(math.exp(2) + 1)
    loss_t = (-(2 - lse_t) - (2 - lse_t) - (s - math.log(2 * math.exp(s)))) / 3
    got = multi_positive_infonce(img, txt, pos, scale)
    assert got.item() == pytest.approx((loss_i + loss_t) / 2, rel=1e-6)


def test_collect_spans_dedupes_same_span_from_several_files(tmp_path):
    comp = tmp_path / "compressed"
    comp.mkdir()
    (comp / "v1.mp4").write_bytes(b"x")  # existence is all collect_spans checks
    m = Manifest(
        events=[Event("v1", "train", 1.0, 3.0, "a red circle moves left"),
                Event("v2", "train", 1.0, 3.0, "video v2 failed compression")],
        queries=[Query("q0", "v1", "train", 1.0, 3.0, "a red circle moves left"),  # same span, same text
                 Query("q1", "v1", "train", 1.0, 3.0, "the red circle slides left")],
        captions=[Caption("c0", "v1", "train", "a red circle on a black background")],
    )
    videos = collect_spans(m, "train", comp, ("events", "queries", "captions"))
    assert [v.video_id for v in videos] == ["v1"]
    spans = videos[0].spans
    assert [s.text for s in spans] == ["a red circle moves left", "the red circle slides left",
                                       "a red circle on a black background"]
    assert spans[2].end == math.inf
    assert videos[0].valid_at(2.0) == {s.text for s in spans}
    assert videos[0].valid_at(5.0) == {"a red circle on a black background"}


def _text_store(path: Path, texts: list[str], dim: int = 4) -> FeatureStore:
    w = ShardedWriter(path, texts, [1] * len(texts), {"sentence": ArraySpec((dim,), "float16")}, {"kind": "text"},
                      rows_per_chunk=2, chunks_per_shard=2)
    w.prepare()
    w.fill(range(w.n_shards), lambda reqs: [{"sentence": np.full((1, dim), i, np.float16)} for i, _, _ in reqs])
    w.finish()
    return FeatureStore(path)


def test_bank_store_round_trip(tmp_path):
    m = Manifest(events=[Event("v1", "train", 0, 1, "a"), Event("v1", "train", 1, 2, "b"),
                         Event("v1", "train", 2, 3, "a"),  # same sentence, same video: one entry
                         Event("v2", "train", 0, 1, "a"), Event("v3", "test", 0, 1, "c")])
    entries = bank_entries(m, "train")
    assert entries == [("v1", "a"), ("v1", "b"), ("v2", "a")]
    text = _text_store(tmp_path / "text.zarr", ["a", "b", "c"])
    assert write_bank(tmp_path / "bank.zarr", entries, text) == 3
    vectors, vids, sents = read_bank(tmp_path / "bank.zarr")
    assert vids == ["v1", "v1", "v2"] and sents == ["a", "b", "a"]
    np.testing.assert_array_equal(vectors[:, 0], [0, 1, 0])
    with pytest.raises(UserError, match="no text features"):
        write_bank(tmp_path / "bank2.zarr", [("v9", "unseen")], text)


def test_sentence_vectors_are_unit_and_a_missing_sentence_is_one_error(tmp_path):
    from vidmem.bank import sentence_vectors

    store = _text_store(tmp_path / "text.zarr", ["a", "b"], dim=4)  # rows filled with 0 and 1
    got = sentence_vectors(store, ["b", "a", "b"])
    assert list(got) == ["a", "b"] and got["b"].dtype == np.float32
    assert np.allclose(got["b"], np.full(4, 0.5)) and np.array_equal(got["a"], np.zeros(4))
    with pytest.raises(UserError, match=r"text\.zarr: 1 sentences have no text features \(e\.g\. 'c'\); rerun"):
        sentence_vectors(store, ["a", "c"])
