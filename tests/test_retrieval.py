"""The retrieval family: the EM module, pooling, block-size invariant scoring, store reading, the task through
`fit` (loss falls), predictions re-scored by metrics.retrieval, and the end-to-end option on a tiny CLIP."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from metrics.retrieval import retrieval_metrics
from models.retrieval.config import RetrievalConfig
from models.retrieval.data import Split, StoredFrames, StoredTexts, uniform_frames
from models.retrieval.em import EMSubspace
from models.retrieval.model import RetrievalModel
from models.retrieval.task import make_task
from vidmem.manifest import Caption, Manifest, Video
from vidmem.paths import Paths
from vidmem.store import ArraySpec, FeatureStore, ShardedWriter
from vidmem.training import fit, load_checkpoint


# ---------------------------------------------------------------------------------------------- EM module
def reference_em(x: np.ndarray, mu0: np.ndarray, iters: int, lamd: float, eps: float = 1e-6):
    """EMCL's Emcl.__call__ written out in numpy (float64)."""
    mu = np.repeat(mu0, x.shape[0], axis=0)
    for _ in range(iters):
        z = x.T @ mu / lamd
        z = np.exp(z - z.max(axis=1, keepdims=True))
        z = z / z.sum(axis=1, keepdims=True)
        z = z / (eps + z.sum(axis=0, keepdims=True))
        mu = x @ z
        mu = mu / (eps + np.linalg.norm(mu, axis=0, keepdims=True))
    return mu, z


def test_em_shapes_and_matches_the_reference():
    torch.manual_seed(0)
    em = EMSubspace(dim=6, bases=4, iters=3, lamd=0.5, beta=2.0, init="normal").double()
    x = torch.randn(10, 6, dtype=torch.float64)
    mu, z = em.fit(x)
    assert mu.shape == (10, 4) and z.shape == (6, 4)
    ref_mu, ref_z = reference_em(x.numpy(), em.mu.numpy(), 3, 0.5)
    np.testing.assert_allclose(mu.numpy(), ref_mu, atol=1e-12)
    np.testing.assert_allclose(z.numpy(), ref_z, atol=1e-12)
    em.eval()
    out = em(x)
    assert out.shape == x.shape
    np.testing.assert_allclose(out.numpy(), x.numpy() + 2.0 * ref_mu @ ref_z.T, atol=1e-12)
    # the reconstruction is linear in X once EM has settled: μ Zᵀ = X A
    a = em.reconstruction_operator(x, mu, z)
    np.testing.assert_allclose((x @ a).numpy(), (mu @ z.t()).numpy(), atol=1e-12)


def test_em_sign_init_is_the_codes_plus_minus_one():
    em = EMSubspace(dim=4, bases=8, init="sign")
    assert torch.allclose(em.mu.abs(), torch.ones(1, 8), atol=1e-5)


def test_em_iterations_carry_no_gradient_and_the_reconstruction_is_detached():
    em = EMSubspace(dim=5, bases=3, iters=4, beta=3.0)
    x = torch.randn(7, 5, requires_grad=True)
    mu, z = em.fit(x)
    assert not mu.requires_grad and not z.requires_grad
    w = torch.randn(7, 5)
    (em(x) * w).sum().backward()
    assert torch.equal(x.grad, w)  # d(x + β·rec)/dx = identity: gradients flow through the identity path only
    x.grad = None
    (em.apply_frozen(x) * w).sum().backward()
    assert torch.equal(x.grad, w)


def test_em_momentum_update_only_in_training():
    torch.manual_seed(1)
    em = EMSubspace(dim=6, bases=4, iters=2, momentum=0.9, init="normal")
    x = torch.randn(9, 6)
    mu0 = em.mu.clone()
    mu_new, z = em.fit(x)
    a = em.reconstruction_operator(x, mu_new, z)
    em.train()
    em(x)
    assert torch.allclose(em.mu, 0.9 * mu0 + 0.1 * mu_new.mean(0, keepdim=True), atol=1e-7)
    assert int(em.updates) == 1
    assert torch.allclose(em.frozen_operator(), a, atol=1e-6)  # bias-corrected: one update gives A itself
    state = em.mu.clone(), em.operator.clone()
    em.eval()
    em(torch.randn(9, 6))
    assert torch.equal(em.mu, state[0]) and torch.equal(em.operator, state[1]) and int(em.updates) == 1


# ---------------------------------------------------------------------------------------------- pooling, scoring
def small_model(**kw) -> RetrievalModel:
    torch.manual_seed(0)
    cfg = RetrievalConfig(**{"text_head_layers": 0, "em_bases": 4, "em_iters": 3, **kw})
    return RetrievalModel(cfg, text_width=8, dim=8).double()


def test_text_conditioned_pooling_masks_after_the_softmax():
    m = small_model(pooling="text", temp=3.0)
    text = torch.randn(2, 8, dtype=torch.float64)
    frames = torch.randn(3, 4, 8, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float64)
    frames = frames * mask[..., None]
    pooled = m.pool(text, frames, mask)
    w = torch.softmax(torch.einsum("d,fd->f", text[0], frames[1]) / 3.0, 0) * mask[1]
    assert torch.allclose(pooled[0, 1], (w[:, None] * frames[1]).sum(0))
    mean = small_model(pooling="mean").pool(text, frames, mask)
    assert torch.allclose(mean[1, 1], frames[1, :2].mean(0))


def trained_em_model() -> RetrievalModel:
    m = small_model(pooling="text", em=True)
    m.train()
    for _ in range(3):  # a few training-mode EM passes give the running operator some content
        m.pair_scores(torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 4, 8, dtype=torch.float64),
                      torch.ones(5, 4, dtype=torch.float64), "train")
    return m.eval()


def test_scores_do_not_depend_on_the_evaluation_block_size():
    m = trained_em_model()
    assert m.em.frozen_operator().abs().sum() > 0
    g = torch.Generator().manual_seed(3)
    text = torch.randn(11, 8, generator=g, dtype=torch.float64)
    frames = torch.randn(9, 4, 8, generator=g, dtype=torch.float64)
    mask = torch.ones(9, 4, dtype=torch.float64)
    mask[2, 3:] = 0
    full = m.similarity(text, frames, mask, block=64).numpy()
    truth = np.arange(11) % 9
    for block in (1, 2, 3, 5, 32):
        sim = m.similarity(text, frames, mask, block=block).numpy()
        np.testing.assert_allclose(sim, full, atol=1e-12, rtol=0)
        assert retrieval_metrics(sim, truth) == retrieval_metrics(full, truth)
    # one pair's score is that pair's alone
    one = m.similarity(text[4:5], frames[6:7], mask[6:7], block=1).numpy()
    np.testing.assert_allclose(one[0, 0], full[4, 6], atol=1e-12)
    # the seed's block-wise EM does depend on the block size (why we do not use it)
    b3, b32 = (m.similarity(text, frames, mask, block=b, em_mode="block").numpy() for b in (3, 32))
    assert np.abs(b3 - b32).max() > 1e-6


def test_uniform_frames_by_timestamps():
    t = np.arange(30) / 3.0
    idx = uniform_frames(t, 4)
    assert idx.tolist() == [0, 10, 19, 29] or np.allclose(t[idx], [0, 29 / 9, 58 / 9, 29 / 3], atol=1 / 3)
    assert uniform_frames(t[:3], 12).tolist() == [0, 1, 2]


# ---------------------------------------------------------------------------------------------- stores
def write_store(path, ids, arrays: dict[str, np.ndarray], lengths) -> None:
    specs = {k: ArraySpec(tuple(v.shape[1:]), str(v.dtype)) for k, v in arrays.items()}
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    w = ShardedWriter(path, ids, lengths, specs, {"encoder": "test"}, rows_per_chunk=4, chunks_per_shard=2)
    w.prepare()

    def rows(requests):
        return [{k: v[offsets[i] + a: offsets[i] + b] for k, v in arrays.items()} for i, a, b in requests]

    w.fill(range(w.n_shards), rows)
    w.finish()


def test_stored_frames_and_texts_read_the_right_rows(tmp_path):
    rng = np.random.default_rng(0)
    lengths = [7, 3, 20]
    feats = rng.standard_normal((sum(lengths), 4)).astype(np.float16)
    times = np.concatenate([np.arange(n) / 3.0 for n in lengths]).astype(np.float32)
    write_store(tmp_path / "clip.zarr", ["a", "b", "c"], {"feats": feats, "times": times}, lengths)
    frames = StoredFrames(FeatureStore(tmp_path / "clip.zarr"), ["c", "a", "b", "a"], 5)
    np.testing.assert_array_equal(frames.feats["b"], feats[7:10].astype(np.float32))
    np.testing.assert_array_equal(frames.feats["c"], feats[10:][uniform_frames(times[10:], 5)].astype(np.float32))
    v = frames.batch(["b", "c"])
    assert v.feats.shape == (2, 5, 4) and v.mask[0].tolist() == [1, 1, 1, 0, 0] and v.mask[1].sum() == 5

    sents = ["z last", "a first", "m mid"]
    tok = rng.standard_normal((3, 6, 4)).astype(np.float16)
    write_store(tmp_path / "text.zarr", sents, {"sentence": rng.standard_normal((3, 4)).astype(np.float16),
                                                "tokens": tok, "n_tokens": np.array([2, 6, 4], np.int32)},
                [1, 1, 1])
    texts = StoredTexts(FeatureStore(tmp_path / "text.zarr"), ["m mid", "z last", "m mid"], max_words=5)
    assert texts.n == {"m mid": 4, "z last": 2}
    np.testing.assert_array_equal(texts.tokens["m mid"], tok[2, :5].astype(np.float32))


# ---------------------------------------------------------------------------------------------- the task
def toy_data(n_videos: int = 12, dim: int = 16, frames: int = 6, captions: int = 2, seed: int = 0):
    """Videos whose frames are a concept vector plus noise; captions a noisy, rotated view of the concept."""
    rng = np.random.default_rng(seed)
    rot = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    split_of = {i: ("train" if i < n_videos - 4 else "val" if i < n_videos - 2 else "test") for i in range(n_videos)}
    manifest = Manifest(videos=[Video(f"v{i}", f"v{i}.mp4", 10.0) for i in range(n_videos)])
    tokens, sentence, n_tok, feats = {}, {}, {}, {}
    for i in range(n_videos):
        c = rng.standard_normal(dim) * 3
        feats[f"v{i}"] = c + rng.standard_normal((frames, dim))
        for k in range(captions if split_of[i] == "train" else 1):
            s = f"caption {k} of video {i}"
            manifest.captions.append(Caption(f"c{i}.{k}", f"v{i}", split_of[i], s))
            sentence[s] = rot @ c + 0.5 * rng.standard_normal(dim)
            tokens[s] = rng.standard_normal((5, dim))
            n_tok[s] = 4
    data = (StoredTexts.from_arrays(tokens, sentence, n_tok), StoredFrames.from_arrays(feats, frames))
    return manifest, {s: data for s in ("train", "val", "test")}


@pytest.mark.parametrize("model", ["meanp", "emcl"])
def test_task_trains_through_fit_and_its_loss_falls(tmp_path, model):
    manifest, loaded = toy_data()
    over = {"meanp": {"pooling": "mean"}, "emcl": {"pooling": "text", "em": True, "em_bases": 4}}[model]
    layers = [({"epochs": 6, "batch_size": 4, "lr": 3e-3, "seed": 1, "max_frames": 6, "em_iters": 3, "select_by": "t2v_r1",
                "text_head_layers": 1, "heads": 2}, "families.retrieval"), (over, f"train.{model}")]
    task = make_task(model, layers, Paths(tmp_path), manifest=manifest, loaded=loaded)
    result = fit(task, tmp_path / "ck", device="cpu", progress=False)
    losses = [h["train/loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert all(h["score"] >= -1 and "val/t2v_R1" in h for h in result.history)
    model_ = task.restore(load_checkpoint(tmp_path / "ck" / "best.pt"))
    if model == "emcl":
        assert int(model_.em.updates) > 0  # the running operator and momentum state travel in the checkpoint
    pred = task.predict(model_, "test")
    assert pred["sim"].shape == (2, 2) and [r["video_id"] for r in pred["rows"]] == pred["cols"]
    npy = task.write_predictions(pred, tmp_path / "pred" / model)
    rows = json.loads((tmp_path / "pred" / f"{model}.rows.json").read_text())
    cols = json.loads((tmp_path / "pred" / f"{model}.cols.json").read_text())
    col = {v: j for j, v in enumerate(cols)}
    again = retrieval_metrics(np.load(npy), [col[r["video_id"]] for r in rows])
    scores = task.evaluate(pred, "test")
    assert again["t2v"] == scores["t2v"] and again["v2t"] == scores["v2t"] and scores["chance_R1"] == 50.0


def test_multi_caption_split_and_chance_row(tmp_path):
    manifest, _ = toy_data()
    for k in range(2):  # a second and third caption for one test video
        manifest.captions.append(Caption(f"extra{k}", "v10", "test", f"extra {k}"))
    s = Split.from_manifest(manifest, "test")
    assert s.videos == ["v10", "v11"] and s.text_video == [0, 1, 0, 0] and s.by_video == [[0, 2, 3], [1]]
    chance = make_task("retrieval_chance", [({}, "families.retrieval")], Paths(tmp_path), baseline="chance",
                       manifest=manifest)
    m = chance.evaluate(chance.predict(None, "test"), "test")
    assert m["t2v"]["R1"] == 50.0 and m["t2v"]["queries"] == 4 and m["v2t"]["queries"] == 2
    assert m["t2v"]["MeanR"] == 1.5


def test_clip_towers_end_to_end_on_a_decoded_tiny_video(tmp_path):
    """towers: clip on the vidmem-tiny CLIP (random init): frames decoded from a tiny video made here, the
    towers at lr × coef_lr, a step changes the tower weights."""
    from tests.media import lavfi_video

    paths = Paths(tmp_path)
    paths.compressed.mkdir(parents=True)
    manifest = Manifest()
    for i in range(4):
        lavfi_video(paths.compressed_video(f"v{i}"), 64, 48, fps=3, duration=2.0 + i,
                    source="testsrc2" if i % 2 else "smptebars")
        manifest.videos.append(Video(f"v{i}", f"v{i}.mp4", 2.0 + i))
        split = "train" if i < 3 else "val"
        manifest.captions.append(Caption(f"c{i}", f"v{i}", split, f"video number {i} with colour bars"))
    layers = [({"towers": "clip", "clip_weights": "none", "epochs": 1, "batch_size": 3, "lr": 1e-3,
                "coef_lr": 0.1, "max_frames": 3, "max_words": 16, "text_head_layers": 1, "heads": 2,
                "pooling": "text", "em": True, "em_bases": 4, "em_iters": 2}, "families.retrieval")]
    manifest.write(paths.manifest)
    paths.compress_ledger.write_text("")
    task = make_task("e2e", layers, paths)
    model = task.build()
    groups = task.param_groups(model)
    tower = [g for g in groups if g["lr_scale"] != 1.0]
    assert tower and all(math.isclose(g["lr"], 1e-4) for g in tower)
    before = {k: v.clone() for k, v in model.towers.model.state_dict().items()}
    result = fit(task, tmp_path / "ck", device="cpu", progress=False)
    after = result.model.towers.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert math.isfinite(result.history[0]["train/loss"])
    sim = task.similarity(result.model, "val")
    assert sim.shape == (1, 1)
