"""Video ReCap family: gated cross-attention identity at init, sampling rules, video-level masks, decoding,
training through `fit`, the caption stages' file format (through ingest's parser) and resume after a kill."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from models.recap.config import RecapConfig
from models.recap.data import (
    captions_inside,
    collate,
    key_of,
    masked_sample,
    read_hcap,
    uniform_indices,
    windows,
)
from models.recap.model import ReCap
from models.recap.task import RecapData, RecapTask, RecapTrivial, generate_captions
from vidmem.common import UserError
from vidmem.formats.vocab import Vocab, build_vocab
from vidmem.paths import Paths
from vidmem.training import RecipeConfig, fit


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = {"hidden": 32, "heads": 2, "video_queries": 4, "text_queries": 4, "segment_feats": 4, "video_feats": 6, "lavila_dim": 8,
            "clip_dim": 8, "dropout": 0.0, "clip_sec": 4.0, "segment_sec": 12.0, "max_text_tokens": 40}
COLOURS = ["red", "blue", "green"]
MOVES = ["moves left", "grows", "spins"]


def tiny_data(n_train: int = 6, n_val: int = 2, n_test: int = 2, seed: int = 0) -> RecapData:
    """Videos of 24 s: 6 clips of 4 s, 2 segments of 12 s, 1 summary. Each clip's feature encodes its event."""
    rng = np.random.default_rng(seed)
    videos, refs, lavila, clip = {}, [], {}, {}
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    for i, split in enumerate(splits):
        vid = f"v{i:02d}"
        colour = COLOURS[i % 3]
        moves = [MOVES[(i + k) % 3] for k in range(6)]
        videos[vid] = (split, 24.0)
        feats = np.zeros((6, 8), np.float32)
        for k, m in enumerate(moves):
            feats[k, MOVES.index(m)] = 1.0
            feats[k, 3 + COLOURS.index(colour)] = 1.0
            feats[k, 6:] = rng.normal(0, 0.1, 2)
            refs.append(("clip", vid, split, 4.0 * k, 4.0 * k + 4, f"the {colour} circle {m}"))
        for j in range(2):
            refs.append(("segment", vid, split, 12.0 * j, 12.0 * j + 12,
                         f"the {colour} circle {moves[3 * j]} and then {moves[3 * j + 2]}."))
        refs.append(("video", vid, split, 0.0, 24.0, f"the {colour} circle mostly {moves[0]}."))
        lavila[vid] = (feats, np.arange(6) * 4.0)
        clip[vid] = (np.repeat(feats, 3, 0), np.arange(18) * 4.0 / 3)
    vocab = Vocab.from_json(build_vocab([r[5] for r in refs if r[2] == "train"], max_words=60))
    return RecapData(videos, refs, lavila, vocab, clip)


def tiny_task(tmp_path: Path, level: str, data: RecapData | None = None, generated=None, epochs: int = 2,
              **cfg) -> RecapTask:
    recipe = RecipeConfig(epochs=epochs, batch_size=8, lr=3e-3, seed=0)
    return RecapTask(f"t_{level}", recipe, RecapConfig(level=level, **{**TINY, **cfg}), Paths.at(tmp_path), None,
                     data=data or tiny_data(), generated=generated)


# ---------------------------------------------------------------------------------------------------- model
def test_gated_blocks_are_the_identity_at_init():
    torch.manual_seed(0)
    cfg = RecapConfig(**TINY)
    model = ReCap(cfg, vocab_size=20).eval()
    ids = torch.randint(1, 21, (3, 7))
    plain = model.decoder(ids, None)                      # the decoder without any gated block
    for vl in (torch.randn(3, 4, 32), torch.randn(3, 9, 32) * 10):
        assert torch.allclose(model.decoder(ids, vl), plain, atol=0, rtol=0)
    for block in model.decoder.gated:
        x = torch.randn(2, 5, 32)
        assert torch.equal(block(x, torch.randn(2, 3, 32)), x)
        assert block.attn_gate.item() == 0.0 and block.ffn_gate.item() == 0.0
    # once a gate opens, the visual tokens change the output
    with torch.no_grad():
        model.decoder.gated[0].attn_gate.fill_(0.5)
    assert not torch.allclose(model.decoder(ids, torch.randn(3, 4, 32)), plain)


def test_greedy_and_beam_decoding_agree_at_beam_1():
    torch.manual_seed(0)
    model = ReCap(RecapConfig(**TINY), vocab_size=12).eval()
    vl = torch.randn(2, 4, 32)
    g = model.greedy(vl, 5)
    assert g == model.beam(vl, 5, 1)
    assert all(len(x) <= 6 and 0 not in x for x in g)
    b = model.beam(vl, 5, 3)
    assert len(b) == 2


# ---------------------------------------------------------------------------------------------------- sampling
def test_uniform_sampling_rule():
    assert uniform_indices(45, 4) == [9, 18, 27, 36]          # int(k·N/(n+1)), k = 1..n
    assert uniform_indices(3, 5) == [0, 1, 1, 2, 2]           # repeats when N < n
    assert uniform_indices(0, 3) == []


def test_video_level_masking_sampling():
    f = np.arange(10, dtype=np.float32)[:, None].repeat(2, 1)
    x, m = masked_sample(f, 4)                                # more than K: K uniform, all real
    assert x[:, 0].tolist() == [2, 4, 6, 8] and m.all()
    x, m = masked_sample(f[:3], 5)                            # fewer: zero-padded, mask marks the real rows
    assert m.tolist() == [True, True, True, False, False]
    assert x[:3, 0].tolist() == [0, 1, 2] and not x[3:].any()


def test_windows_and_captions_inside():
    assert windows(10.0, 4.0) == [(0.0, 4.0), (4.0, 8.0), (8.0, 10.0)]
    caps = [(8.0, 12.0, "c"), (0.0, 4.0, "a"), (4.0, 8.0, "b"), (12.0, 16.0, "d")]
    assert captions_inside(caps, 0.0, 12.0) == ["a", "b", "c"]


def test_level_samples_follow_the_rules(tmp_path):
    gen = {"clip": {"train": {"v00": [(0.0, 4.0, "red one"), (4.0, 8.0, "red two"), (12.0, 16.0, "red three")]}}}
    task = tiny_task(tmp_path, "segment", generated=gen)
    s = task.sample("segment", "v00", 0.0, 12.0, "the red circle grows", gen["clip"]["train"]["v00"])
    assert s.feats.shape == (4, 8) and s.feat_mask.all()    # segment_feats rows from the 3 windows inside
    assert task.data.vocab.decode(s.text) == "red <unk> red <unk>"   # clip captions inside, joined
    v = tiny_task(tmp_path, "video").sample("video", "v00", 0.0, 24.0, "x")
    assert v.feats.shape == (6, 8) and v.feat_mask.all()      # 6 windows, K = 6
    v = tiny_task(tmp_path, "video", video_feats=10).sample("video", "v00", 0.0, 24.0, "x")
    assert v.feat_mask.tolist() == [True] * 6 + [False] * 4
    flat = tiny_task(tmp_path, "video", use_text=False).sample("video", "v00", 0.0, 24.0, "x", [(0, 12, "a")])
    assert flat.text == []
    b = collate([v, v], use_text=True)
    assert b.feat_mask.shape == (2, 10) and b.text_mask[:, 0].all()


def test_reference_lower_input_reads_the_manifests_captions(tmp_path):
    """The oracle ablation: the segment level reads the reference clip captions, not what was generated."""
    gen = {"clip": {sp: {f"v{i:02d}": [(0.0, 4.0, "wrong")] for i in range(10)} for sp in ("train", "val", "test")}}
    task = tiny_task(tmp_path, "segment", generated=gen)
    oracle = tiny_task(tmp_path, "segment", generated=gen, lower_input="reference")
    first = oracle.samples("segment", "train")[0]
    clips = [t for v, s, e, t in task.data.refs("clip", "train") if v == first.video_id and s < first.end]
    assert task.data.vocab.decode(first.text) == " ".join(clips)
    assert task.data.vocab.decode(task.samples("segment", "train")[0].text) == "<unk>"


# ---------------------------------------------------------------------------------------------------- training
def test_clip_level_trains_through_fit_and_loss_falls(tmp_path):
    task = tiny_task(tmp_path, "clip", epochs=8)
    res = fit(task, tmp_path / "ck", progress=False)
    losses = [r["train/loss"] for r in res.history]
    assert losses[-1] < 0.6 * losses[0]
    assert (tmp_path / "ck" / "best.pt").is_file()


def test_gates_have_their_own_lr_and_no_weight_decay(tmp_path):
    """A decoder trained from scratch leaves tanh gates that start at 0 almost shut at the base lr (the
    committed SynthVid run: |attn gate| < 0.07 after 12 epochs); gate_lr_scale opens them."""
    opened = {}
    for scale in (1.0, 30.0):
        task = tiny_task(tmp_path / str(scale), "clip", epochs=3, gate_lr_scale=scale)
        groups = task.param_groups(task.build())
        gates = [g for g in groups if g.get("lr_scale") == scale and g["weight_decay"] == 0.0]
        assert len(gates) == 1 and len(gates[0]["params"]) == 2 * TINY.get("decoder_layers", 2)
        assert sum(len(g["params"]) for g in groups) == len(list(task.build().parameters()))
        fit(task, tmp_path / str(scale) / "ck", progress=False)
        sd = torch.load(tmp_path / str(scale) / "ck" / "last.pt", weights_only=False)["state_dict"]
        opened[scale] = max(abs(float(v)) for k, v in sd.items() if k.endswith("attn_gate"))
    assert opened[30.0] > 5 * opened[1.0]


def test_unified_alternates_levels(tmp_path):
    data = tiny_data()
    gen = {lv: {sp: {v: [(s, e, t) for l2, v2, sp2, s, e, t in data.references if l2 == lv and v2 == v]
                     for v in data.split_videos(sp)} for sp in ("train", "val", "test")} for lv in ("clip", "segment")}
    task = tiny_task(tmp_path, "unified", data=data, generated=gen, epochs=1, unified_samples=16)
    from vidmem.training import EpochContext
    batches = task.batches(EpochContext(0, 0))
    assert [b[0][0] for b in batches[:6]] == ["clip", "segment", "video"] * 2
    assert len(batches) == 3 * -(-task.config.unified_samples // 8)
    assert len(batches) == task.steps_per_epoch()
    fit(task, tmp_path / "u", progress=False)
    preds = task.predict(task.restore(torch.load(tmp_path / "u" / "best.pt", weights_only=False)), "test")
    assert set(preds) == {"clip", "segment", "video"}


def test_trivial_baseline_predicts_the_top_train_caption(tmp_path):
    recipe = RecipeConfig()
    task = RecapTrivial("triv", recipe, RecapConfig(**TINY), Paths.at(tmp_path), data=tiny_data())
    preds = task.predict(None, "test")
    assert set(preds) == {"clip", "segment", "video"}
    assert len(set(preds["video"].values())) == 1


def test_pseudo_labels_are_training_text_only(tmp_path):
    """hierarchy_pseudo rows join the train samples (with pseudo_labels, within the fold model's videos) and
    nothing else: not the val / test references, not the trivial baseline's top caption."""
    data = tiny_data()
    pseudo = [("segment", v, "train", 6.0, 18.0, "the shifted circle spins.") for v in data.split_videos("train")]
    data.pseudo = pseudo + [("segment", "v06", "val", 6.0, 18.0, "a val pseudo row is never read.")]
    with_p = tiny_task(tmp_path, "segment", data=data, use_text=False)
    keys = [s.key for s in with_p.samples("segment", "train")]
    manual = [key_of(v, s, e) for v, s, e, _ in data.refs("segment", "train")]
    assert sorted(keys) == sorted(manual + [key_of(v, 6.0, 18.0) for _, v, *_ in pseudo])
    assert [s.key for s in tiny_task(tmp_path, "segment", data=data, use_text=False, pseudo_labels=False)
            .samples("segment", "train")] == manual
    assert [s.key for s in with_p.samples("segment", "val")] == [key_of(v, s, e) for v, s, e, _ in
                                                                 data.refs("segment", "val")]
    fold = data.folds(2)
    f0 = {s.key for s in tiny_task(tmp_path, "segment", data=data, use_text=False, fold=0).samples("segment", "train")}
    assert f0 == {k for k in keys if fold[k.split("@")[0]] != 0}
    data.pseudo = [("segment", v, "train", 6.0, 18.0, "the same pseudo row everywhere.") for v in fold] * 5
    triv = RecapTrivial("triv", RecipeConfig(), RecapConfig(**TINY), Paths.at(tmp_path), data=data)
    assert "pseudo" not in next(iter(triv.predict(None, "test")["segment"].values()))


# ---------------------------------------------------------------------------------------------------- captions@
def test_caption_files_round_trip_through_ingest(tmp_path):
    data = tiny_data()
    task = tiny_task(tmp_path, "clip", data=data)
    model = task.build()
    caps = Paths.at(tmp_path).captions
    out = caps / "clip"
    generate_captions(task, model, "clip", out, None)
    clips = read_hcap(out, "clip", "test")
    assert sorted(clips) == ["v08", "v09"] and [c[:2] for c in clips["v08"]] == [(4.0 * k, 4.0 * k + 4) for k in range(6)]
    # the segment level reads them, and writes its own in the same layout
    seg = tiny_task(tmp_path, "segment", data=data)
    generate_captions(seg, seg.build(), "segment", caps / "segment", None)
    with open(caps / "segment" / "segments_test.pkl", "rb") as f:
        segs = pickle.load(f)
    assert len(segs) == 4 and len(segs[0]["captions_pred"]) == 3
    vid = tiny_task(tmp_path, "video", data=data)
    generate_captions(vid, vid.build(), "video", caps / "video", None)
    summaries = json.loads((caps / "video" / "videos_test.json").read_text())
    assert [s["vid"] for s in summaries] == ["v08", "v09"] and len(summaries[0]["segment_descriptions_pred"]) == 2
    read = json.loads((caps / "video" / "read.json").read_text())
    assert read["splits"]["test"]["lower_sha256"]
    # ingest's parser reads all three files back, times included
    rows = ingest_rows(caps, "test")
    by_level = {lv: [r for r in rows if r.level == lv] for lv in ("clip", "segment", "video")}
    assert len(by_level["clip"]) == 12 and len(by_level["segment"]) == 4 and len(by_level["video"]) == 2
    assert {(r.video_id, r.start, r.end, r.text) for r in by_level["clip"]} == \
        {(v, s, e, c) for v, cs in clips.items() for s, e, c in cs}


def ingest_rows(root: Path, split: str):
    """The HierarchyText rows `ingest` makes of the caption stages' files (through the ego4d_hcap parser)."""
    from vidmem.formats.ego4d_hcap import parse_ego4d_hcap
    from vidmem.formats.registry import make_sources

    (root / "videos").mkdir(exist_ok=True)
    src = {"format": "ego4d_hcap", "split": split, "videos": "videos",
           "clips": f"clip/clips_{split}.pkl", "segments": f"segment/segments_{split}.pkl",
           "summaries": f"video/videos_{split}.json"}
    parsed = parse_ego4d_hcap(make_sources({"root": str(root), "sources": [src]})[0])
    assert not parsed.problems
    return [it.row for it in parsed.items]


def test_caption_stage_resumes_after_a_kill(tmp_path, monkeypatch):
    data = tiny_data()
    task = tiny_task(tmp_path, "clip", data=data)
    model = task.build()
    out = tmp_path / "cap"
    calls = []
    real = RecapTask.caption_videos

    def dying(self, model, level, vids, lower):
        if len(calls) == 1:
            raise KeyboardInterrupt  # killed while captioning the second chunk
        calls.append(vids)
        return real(self, model, level, vids, lower)

    monkeypatch.setattr(RecapTask, "caption_videos", dying)
    with pytest.raises(KeyboardInterrupt):
        generate_captions(task, model, "clip", out, None, chunk=3)
    assert len(list((out / "parts").glob("*.json"))) == 3
    monkeypatch.setattr(RecapTask, "caption_videos", real)
    counts = generate_captions(task, model, "clip", out, None, chunk=3)
    assert counts["resumed"] == 3 and counts["generated"] == len(data.videos) - 3
    first = (out / "clips_train.pkl").read_bytes()
    fresh = tmp_path / "fresh"
    generate_captions(task, model, "clip", fresh, None)
    assert (fresh / "clips_train.pkl").read_bytes() == first   # the resumed output is the uninterrupted one


# ---------------------------------------------------------------------------------------------------- cross-fitting
def test_cross_fit_folds_partition_the_train_videos():
    from models.recap.data import cross_fit_folds

    fold = cross_fit_folds(["v3", "v0", "v2", "v1", "v4"], 2)
    assert fold == {"v0": 0, "v1": 1, "v2": 0, "v3": 1, "v4": 0}       # sorted ids dealt in turn
    assert cross_fit_folds(list(reversed(sorted(fold))), 2) == fold     # independent of the input order
    with pytest.raises(UserError, match="fold: 2 is not below folds"):
        RecapConfig(level="clip", fold=2, folds=2).check("train.x")


def test_a_fold_model_trains_without_its_fold(tmp_path):
    data = tiny_data()
    fold = data.folds(2)
    assert sorted(fold) == data.split_videos("train") and sorted(set(fold.values())) == [0, 1]
    full = {s.video_id for s in tiny_task(tmp_path, "clip", data=data).samples("clip", "train")}
    assert full == set(fold)
    for k in (0, 1):
        task = tiny_task(tmp_path, "clip", data=data, fold=k)
        seen = {s.video_id for s in task.samples("clip", "train")}
        assert seen == {v for v, f in fold.items() if f != k}
        assert {s.video_id for s in task.samples("clip", "val")} == set(data.split_videos("val"))   # val whole


def test_cross_fitted_train_captions_come_from_the_fold_models(tmp_path, monkeypatch):
    """A train video of fold i is captioned by fold model i, every val/test video by the level's model; the
    parts' keys name the writer, so swapping a fold model redoes exactly its fold's videos."""
    data = tiny_data()
    main = tiny_task(tmp_path, "clip", data=data)
    folds = [tiny_task(tmp_path, "clip", data=data, fold=k) for k in (0, 1)]
    models = [t.build() for t in [main, *folds]]
    names = {id(m): n for m, n in zip(models, ("main", "f0", "f1"))}

    def labelled(self, model, level, vids, lower):   # each model writes its name: who captioned what
        return {v: [(s, e, names[id(model)]) for s, e in self.grid(level, v)] for v in vids}

    monkeypatch.setattr(RecapTask, "caption_videos", labelled)
    out = tmp_path / "cap"
    writers = [(folds[0], models[1], None), (folds[1], models[2], None)]
    counts = generate_captions(main, models[0], "clip", out, None, fold_models=writers)
    fold = data.folds(2)
    train = read_hcap(out, "clip", "train")
    assert {v: caps[0][2] for v, caps in train.items()} == {v: f"f{k}" for v, k in fold.items()}
    for split in ("val", "test"):
        assert {c[2] for caps in read_hcap(out, "clip", split).values() for c in caps} == {"main"}
    read = json.loads((out / "read.json").read_text())
    assert [r["videos"] for r in read["cross_fit"]] == [3, 3] and counts["generated"] == len(data.videos)
    # other fold-1 weights (another checkpoint file): only fold 1's train videos are captioned again
    (tmp_path / "f1.pt").write_bytes(b"other weights")
    again = generate_captions(main, models[0], "clip", out, None,
                              fold_models=[writers[0], (folds[1], models[2], tmp_path / "f1.pt")])
    assert again["generated"] == 3 and again["resumed"] == len(data.videos) - 3


def test_caption_stage_checks_its_fold_models(tmp_path, monkeypatch):
    import stages.captions as captions

    monkeypatch.chdir(tmp_path)
    params = {"families": {"recap": dict(TINY)},
              "train": {"c": {"family": "recap", "level": "clip"},
                        "c_f0": {"family": "recap", "level": "clip", "fold": 1},
                        "s_f0": {"family": "recap", "level": "segment", "fold": 0}},
              "captions": {"cross_fit": {"clip": ["c_f0"], "segment": ["nope"]}}}
    main = tiny_task(tmp_path, "clip")
    with pytest.raises(UserError, match=r"cross_fit.clip\[0\]: train.c_f0 must be a clip-level model .* fold: 0"):
        captions.fold_writers(params, "clip", main, Paths.at(tmp_path))
    with pytest.raises(UserError, match="cross_fit.segment: 'nope' is not a train"):
        captions.fold_writers(params, "segment", main, Paths.at(tmp_path))
    assert captions.fold_writers(params, "video", main, Paths.at(tmp_path)) == []


def test_caption_stage_scores_each_split_against_the_references(tmp_path, monkeypatch):
    data = tiny_data()
    task = tiny_task(tmp_path, "clip", data=data)
    truth = {(v, s, e): t for lv, v, sp, s, e, t in data.references if lv == "clip"}

    def perfect_on_train(self, model, level, vids, lower):
        return {v: [(s, e, truth[v, s, e] if data.videos[v][0] == "train" else "a square vanishes")
                    for s, e in self.grid(level, v)] for v in vids}

    monkeypatch.setattr(RecapTask, "caption_videos", perfect_on_train)
    got = generate_captions(task, task.build(), "clip", tmp_path / "cap", None, score=True)
    assert got["train_scored"] == 36 and got["test_scored"] == 12
    assert got["train_CIDEr"] > 1.0 and got["val_CIDEr"] == got["test_CIDEr"] == 0.0
