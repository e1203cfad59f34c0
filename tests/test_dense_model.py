"""PDVC/CM2 model: sampling vs the MSDA kernel, padded batch = single videos, T < W, training steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kernels.msda import ms_deform_attn_1d
from models.dense import (
    DenseCaptionDataset,
    DenseCaptioner,
    DenseConfig,
    InMemoryFeatures,
    VideoAnnotation,
    collate,
)
from models.dense.attention import direction_bias
from models.dense.losses import SetCriterion, count_bin_rates
from models.dense.sampling import sample_points_1d
from models.dense.train import run_model
from vidmem.bank import TextBank
from vidmem.common import UserError
from vidmem.formats.vocab import Vocab
from vidmem.params import read

WORDS = ["<unk>", "a", "red", "circle", "moves", "left", "square", "grows"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


VOCAB = Vocab.from_json(
    {
        "word_to_ix": {w: i + 1 for i, w in enumerate(WORDS)},
        "ix_to_word": {str(i + 1): w for i, w in enumerate(WORDS)},
    }
)


def tiny_cfg(**kw) -> DenseConfig:
    base = {
        "feature_dim": 16,
        "hidden": 32,
        "heads": 2,
        "enc_layers": 1,
        "dec_layers": 2,
        "ffn_dim": 32,
        "norm_groups": 4,
        "num_queries": 5,
        "max_eseq_length": 4,
        "max_words": 6,
        "word_dim": 16,
        "rnn_size": 32,
        "att_hid": 16,
        "window": 4,
        "soft_k": 3,
        "bank_dim": 16,
        "duration_unit_s": 0.5,
    }
    base.update(kw)
    return DenseConfig(**base)


def tiny_dataset(lengths=(7, 12, 3), seed=0) -> DenseCaptionDataset:
    rng = np.random.default_rng(seed)
    feats, times, videos = {}, {}, []
    sentences = ["a red circle moves left", "a square grows", "a purple circle moves"]  # "purple" → <unk>
    for i, t in enumerate(lengths):
        vid = f"v{i}"
        feats[vid] = rng.standard_normal((t, 16)).astype(np.float16)
        times[vid] = (np.arange(t, dtype=np.float32) + 0.5) / 3
        d = t / 3
        videos.append(
            VideoAnnotation(vid, d, [(0.0, d / 2), (d / 3, d)], [sentences[i % 3], sentences[(i + 1) % 3]])
        )
    return DenseCaptionDataset(videos, InMemoryFeatures(feats, times), VOCAB, max_words=6)


def tiny_bank(ds: DenseCaptionDataset) -> TextBank:
    g = torch.Generator().manual_seed(3)
    ids = [v.video_id for v in ds.videos for _ in v.sentences] + ["elsewhere"] * 6
    return TextBank(torch.randn(len(ids), 16, generator=g), ids)


# --------------------------------------------------------------------------------------------------- sampling
def test_sampled_values_weighted_reproduce_the_kernel():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([9, 5, 3, 2])
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
    n, lq, m, d, p = 2, 4, 3, 5, 3
    value = torch.randn(n, int(lengths.sum()), m, d, generator=g, dtype=torch.float64)
    loc = torch.rand(n, lq, m, 4, p, generator=g, dtype=torch.float64) * 1.4 - 0.2  # some outside [0, 1]
    w = torch.rand(n, lq, m, 4, p, generator=g, dtype=torch.float64)
    samples = sample_points_1d(value, lengths, starts, loc)  # [N, Lq, M, L, P, D]
    summed = (samples * w[..., None]).sum((3, 4)).reshape(n, lq, m * d)
    assert torch.allclose(summed, ms_deform_attn_1d(value, lengths, starts, loc, w), atol=1e-12)
    # zero padding: far outside the sequence reads exactly 0; at a frame centre, exactly that frame
    far = torch.full((1, 1, m, 4, p), 1.7, dtype=torch.float64)
    assert sample_points_1d(value[:1], lengths, starts, far).abs().max() == 0
    centre = torch.full((1, 1, m, 4, 1), 0.5 / 9, dtype=torch.float64)
    assert torch.allclose(sample_points_1d(value[:1], lengths, starts, centre)[0, 0, :, 0, 0], value[0, 0])


def test_direction_bias_and_head_initialisation():
    b = direction_bias(8, 1, 2)
    assert b[:, 0, 0].tolist() == pytest.approx([1, 1, 0, -1, -1, -1, 0, 1], abs=1e-6)
    assert b[:, 0, 1].tolist() == pytest.approx([2, 2, 0, -2, -2, -2, 0, 2], abs=1e-6)
    model = DenseCaptioner(tiny_cfg(), VOCAB.size)
    assert model.class_head[1].bias.item() == pytest.approx(-math.log(99))
    assert model.box_head[0].layers[-1].bias.tolist() == [0.0, -2.0]
    assert model.box_head[1].layers[-1].bias.tolist() == [0.0, 0.0]
    offsets = model.caption_head.sampler.sampling_offsets.bias.view(1, 4, 4)
    assert torch.allclose(offsets.mean(-1), torch.zeros(1, 4))  # centred on the event


def test_retrieval_switch_adds_only_the_text_path():
    pdvc = DenseCaptioner(tiny_cfg(retrieval=False), VOCAB.size)
    cm2 = DenseCaptioner(tiny_cfg(retrieval=True), VOCAB.size)
    pk, ck = set(pdvc.state_dict()), set(cm2.state_dict())
    assert pk < ck
    extra = ck - pk
    assert all(k.startswith("text_proj.") or ".text_attn." in k for k in extra)
    assert {k.split(".")[2] for k in extra if ".text_attn." in k} == {"0", "1"}  # in every decoder layer
    assert not any(".text_attn." in k for k in pk)


# --------------------------------------------------------------------------------------------------- batching
def _per_video(model, items, bank):
    batch = collate(items)
    out = run_model(model, batch, bank, training=False)
    last = out.last
    words, logps = model.caption_head.generate(last.hs, last.reference, out.memory)
    return out, words, logps


@pytest.mark.parametrize("retrieval", [False, True])
def test_padded_batch_gives_each_video_its_own_outputs(retrieval):
    torch.manual_seed(0)
    ds = tiny_dataset()
    bank = tiny_bank(ds) if retrieval else None
    model = DenseCaptioner(tiny_cfg(retrieval=retrieval), VOCAB.size).eval()
    items = [ds[i] for i in range(3)]
    with torch.no_grad():
        out, words, logps = _per_video(model, items, bank)
        for b, item in enumerate(items):
            one, w1, lp1 = _per_video(model, [item], bank)
            for name in ("hs", "logits", "boxes", "count_logits"):
                got, want = getattr(out.layers[-1], name)[b], getattr(one.layers[-1], name)[0]
                assert torch.allclose(got, want, atol=1e-5), name
                assert torch.allclose(
                    getattr(out.layers[0], name)[b], getattr(one.layers[0], name)[0], atol=1e-5
                )
            n = w1.shape[-1]
            assert torch.equal(words[b, :, :n], w1[0]) and not words[b, :, n:].any()
            assert torch.allclose(logps[b, :, :n], lp1[0], atol=1e-5)


def test_video_shorter_than_window_count_trains_without_nan():
    ds = tiny_dataset(lengths=(2, 3))
    cfg = tiny_cfg(retrieval=True, window=8)
    model = DenseCaptioner(cfg, VOCAB.size)
    crit = SetCriterion(cfg, count_bin_rates(ds.event_counts(), cfg.max_eseq_length))
    batch = collate([ds[0], ds[1]])
    loss, terms = crit(model, run_model(model, batch, tiny_bank(ds), training=True), batch)
    assert math.isfinite(loss.item()) and all(math.isfinite(v) for v in terms.values())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --------------------------------------------------------------------------------------------------- learning
def test_training_steps_overfit_a_fixed_batch():
    torch.manual_seed(0)
    ds = tiny_dataset()
    cfg = tiny_cfg(retrieval=True, dropout=0.0, caption_dropout=0.0, text_dropout=0.0)
    bank = tiny_bank(ds)
    model = DenseCaptioner(cfg, VOCAB.size)
    crit = SetCriterion(cfg, count_bin_rates(ds.event_counts(), cfg.max_eseq_length))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = collate([ds[i] for i in range(3)])
    history = []
    for _ in range(30):
        loss, terms = crit(model, run_model(model, batch, bank, training=True), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(terms)
    first, last = history[0], history[-1]
    assert last["loss"] < 0.5 * first["loss"]
    for term in ("loss_ce", "loss_giou", "loss_caption", "loss_counter"):
        assert last[term] < first[term], term


# ---------------------------------------------------------------------------------------------------- config
def test_config_from_params():
    cfg = read(DenseConfig, {"hidden": 128, "duration_unit_s": "1e-1", "retrieval": True, "num_queries": 12},
               "train.cm2")
    assert (cfg.hidden, cfg.duration_unit_s, cfg.retrieval, cfg.num_queries) == (128, 0.1, True, 12)
    assert (
        DenseConfig().cls_loss_coef == 2
        and DenseConfig().giou_loss_coef == 4
        and DenseConfig().bbox_loss_coef == 0
    )
    with pytest.raises(UserError, match=r"params.yaml train.cm2.hiden: unknown key \(did you mean 'hidden'\?\)"):
        read(DenseConfig, {"hiden": 128}, "train.cm2")
    with pytest.raises(UserError, match="train.cm2.hidden: expected an integer"):
        read(DenseConfig, {"hidden": "big"}, "train.cm2")
    with pytest.raises(UserError, match="train.cm2: hidden .100. must be divisible by heads"):
        read(DenseConfig, {"hidden": 100, "heads": 8, "norm_groups": 4}, "train.cm2")


@pytest.mark.gpu
def test_cuda_kernels_give_the_cpu_outputs():
    ds = tiny_dataset()
    bank = tiny_bank(ds)
    model = DenseCaptioner(tiny_cfg(retrieval=True), VOCAB.size).eval()
    batch = collate([ds[i] for i in range(3)])
    with torch.no_grad():
        cpu = run_model(model, batch, bank, training=False).last
        gpu = run_model(model.cuda(), batch.to("cuda"), bank.to("cuda"), training=False).last
    for name in ("hs", "logits", "boxes", "count_logits"):
        assert torch.allclose(getattr(gpu, name).cpu(), getattr(cpu, name), atol=1e-4), name
    cfg = model.cfg
    crit = SetCriterion(cfg, count_bin_rates(ds.event_counts(), cfg.max_eseq_length))
    model.train()
    loss, _ = crit(model, run_model(model, batch.to("cuda"), bank, training=True), batch.to("cuda"))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
