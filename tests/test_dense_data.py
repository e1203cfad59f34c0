"""Dense-captioning data: vocabulary, targets from the manifest, padding masks, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.dense.data import (
    DenseCaptionDataset,
    InMemoryFeatures,
    VideoAnnotation,
    Vocab,
    collate,
    resample_nearest,
)
from vidmem.common import UserError
from vidmem.formats.vocab import build_vocab
from vidmem.manifest import Event, Manifest, Video

SENTENCES = ["A red circle moves left.", "The square grows", "a red square spins"]


def _features(lengths: dict[str, int]) -> InMemoryFeatures:
    rng = np.random.default_rng(0)
    return InMemoryFeatures(
        {v: rng.standard_normal((t, 4)).astype(np.float16) for v, t in lengths.items()},
        {v: np.arange(t, dtype=np.float32) / 2 for v, t in lengths.items()},
    )


def test_vocab_from_the_manifest_format():
    vocab = Vocab.from_json(build_vocab(SENTENCES))
    ids = vocab.encode("A red triangle, moves!", max_words=30)
    assert vocab.decode(ids) == "a red <unk> moves"
    assert vocab.decode(ids + [0, 5]) == "a red <unk> moves"
    assert len(vocab.encode("a " * 40, max_words=30)) == 30
    assert vocab.size == len(vocab.word_to_ix)
    with pytest.raises(UserError, match="<unk>"):
        Vocab.from_json({"word_to_ix": {"a": 1}, "ix_to_word": {"1": "a"}})
    with pytest.raises(UserError, match="word_to_ix"):
        Vocab.from_json({"words": []})


def test_items_and_padded_batches():
    vocab = Vocab.from_json(build_vocab(SENTENCES))
    videos = [
        VideoAnnotation("a", 4.0, [(1.0, 3.0), (0.0, 5.0)], SENTENCES[:2]),
        VideoAnnotation("b", 2.0, [], []),
    ]
    ds = DenseCaptionDataset(videos, _features({"a": 6, "b": 3}), vocab, max_words=3)
    item = ds[0]
    assert torch.allclose(
        item["boxes"], torch.tensor([[0.5, 0.5], [0.5, 1.0]])
    )  # end clipped to the duration
    assert item["n_words"].tolist() == [3, 3]  # truncated to max_words
    assert item["tokens"].shape == (2, 5) and item["tokens"][:, 0].tolist() == [0, 0]
    assert item["tokens"][0, 4].item() == 0 and vocab.decode(item["tokens"][0, 1:].tolist()) == "a red circle"
    batch = collate([ds[0], ds[1]])
    assert batch.feats.shape == (2, 6, 4) and batch.lengths.tolist() == [6, 3]
    assert batch.valid.tolist() == [[True] * 6, [True] * 3 + [False] * 3]
    assert batch.feats[1, 3:].abs().sum() == 0 and batch.feats.dtype == torch.float32
    assert batch.boxes[1].shape == (0, 2) and batch.durations.tolist() == [4.0, 2.0]


def test_resampling_to_a_fixed_length():
    x = np.arange(5)
    assert resample_nearest(x, 9).tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert resample_nearest(x, 3).tolist() == [0, 2, 4]
    ds = DenseCaptionDataset(
        [VideoAnnotation("a", 3.0, [], [])],
        _features({"a": 5}),
        Vocab.from_json(build_vocab(SENTENCES)),
        resample_len=8,
    )
    assert ds[0]["feats"].shape == (8, 4)


def _manifest() -> Manifest:
    m = Manifest()
    m.videos = [Video("a", "a.mp4", 10.0), Video("b", "b.mp4", 8.0), Video("c", "c.mp4", 6.0)]
    m.events = [
        Event("a", "train", 5.0, 9.0, SENTENCES[0]),
        Event("a", "train", 1.0, 4.0, SENTENCES[1]),
        Event("b", "val", 0.0, 2.0, SENTENCES[2], annotator=0),
        Event("b", "val", 3.0, 7.0, SENTENCES[0], annotator=1),
        Event("c", "val", 1.0, 2.0, SENTENCES[1], annotator=1),  # only a second reference: not a target
    ]
    m.vocab = build_vocab(SENTENCES)
    return m


def test_from_manifest_uses_the_first_annotator_sorted_by_time():
    m = _manifest()
    train = DenseCaptionDataset.from_manifest(m, "train", _features({"a": 20, "b": 16, "c": 12}))
    assert [v.video_id for v in train.videos] == ["a"]
    assert train.videos[0].events == [(1.0, 4.0), (5.0, 9.0)] and train.videos[0].duration == 10.0
    val = DenseCaptionDataset.from_manifest(m, "val", _features({"a": 20, "b": 16, "c": 12}))
    assert [(v.video_id, v.events) for v in val.videos] == [("b", [(0.0, 2.0)])]
    assert train.event_counts() == [2]
    every = DenseCaptionDataset.from_manifest(m, "val", _features({"b": 16, "c": 12}), annotator=None)
    assert [(v.video_id, v.events) for v in every.videos] == [("b", [(0.0, 2.0)]), ("c", [(1.0, 2.0)])]


def test_missing_features_and_bad_events_are_one_line_errors(caplog):
    m = _manifest()
    with pytest.raises(UserError, match="no frame features, e.g. 'a'"):
        DenseCaptionDataset.from_manifest(m, "train", _features({"b": 4}))
    ds = DenseCaptionDataset.from_manifest(m, "train", _features({"b": 4}), on_missing="skip")
    assert len(ds) == 0 and "video a has no frame features" in caplog.text
    m.videos[0].duration = None
    with pytest.raises(UserError, match="video 'a'.*no duration"):
        DenseCaptionDataset.from_manifest(m, "train", _features({"a": 4}))
    vocab = Vocab.from_json(build_vocab(SENTENCES))
    with pytest.raises(UserError, match="video 'x' event 1: timestamp \\[3.0, 2.0\\]"):
        DenseCaptionDataset(
            [VideoAnnotation("x", 5.0, [(0.0, 1.0), (3.0, 2.0)], ["a", "b"])], _features({"x": 3}), vocab
        )
    bad = InMemoryFeatures({"x": np.full((3, 4), np.nan, np.float16)}, {"x": np.zeros(3, np.float32)})
    with pytest.raises(UserError, match="NaN"):
        DenseCaptionDataset([VideoAnnotation("x", 5.0, [], [])], bad, vocab)[0]
