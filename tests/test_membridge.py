"""MemBridge: the attention mask, bridge tokens from the memory, each pre-training loss on hand-made batches,
beam search, QA accuracy, and the four tasks end to end on an in-memory toy dataset."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metrics.qa import qa_metrics
from models.membridge.config import MemBridgeConfig
from models.membridge.data import Words, distinct_video_batches
from models.membridge.model import (BOS, EOS, MASK, PAD, SPECIAL, MemBridgeModel, fusion_mask, hard_negatives,
                                    mlm_positions)
from models.membridge.task import Loaded, make_task
from models.retrieval.data import StoredFrames, StoredTexts
from vidmem.manifest import QA, Caption, Manifest, Video
from vidmem.paths import Paths

E = 16  # stored CLIP width of the toy inputs


def tiny(bridge: bool = True, **kw) -> MemBridgeConfig:
    base = dict(width=16, heads=2, ffn=32, layers=2, text_layers=1, memory_slots=8, bridges=3, max_frames=4,
                max_words=6, dropout=0.0, vtm_dropout=0.0, bridge=bridge)
    base.update(kw)
    return MemBridgeConfig(**base)


def toy_model(bridge: bool = True, answers: int = 0, **kw) -> MemBridgeModel:
    torch.manual_seed(0)
    return MemBridgeModel(tiny(bridge, **kw), E, SPECIAL + 10, answers).eval()


def toy_batch(b: int = 3, frames: int = 4, words: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, frames, E, generator=g)
    mask = torch.ones(b, frames)
    mask[0, -1] = 0
    lens = torch.tensor([words + 2] + [words + 1] * (b - 1))
    ids = torch.full((b, words + 2), PAD)
    for i, n in enumerate(lens.tolist()):
        ids[i, 0] = BOS
        ids[i, 1: n - 1] = torch.randint(SPECIAL, SPECIAL + 10, (n - 2,), generator=g)
        ids[i, n - 1] = EOS
    return x, mask, ids, lens


# ------------------------------------------------------------------------------------------------------ mask
def test_mask_who_sees_whom():
    f, k, t = 3, 2, 4
    frame_mask = torch.tensor([[1.0, 1.0, 0.0]])
    allow = fusion_mask(frame_mask, torch.tensor([3]), t, k)[0]
    v, br, tx = list(range(0, f + 1)), list(range(f + 1, f + 1 + k)), list(range(f + 1 + k, f + 1 + k + t))
    real_v, real_t = [0, 1, 3], tx[:3]                       # frame 2 and text 3 are padding
    for i in v:
        assert allow[i, real_v].all() and allow[i, br].all() and not allow[i, tx].any()
    for i in tx:
        assert allow[i, real_t].all() and allow[i, br].all() and not allow[i, v].any()
    for i in br:
        assert allow[i, real_v].all() and allow[i, br].all() and allow[i, real_t].all()
    assert not allow[:, 2].any() or allow[:, 2].nonzero().flatten().tolist() == [2]   # padding: itself only
    assert allow[:, tx[3]].nonzero().flatten().tolist() == [tx[3]]

    causal = fusion_mask(frame_mask, torch.tensor([4]), t, k, prefix=torch.tensor([2]), causal=True)[0]
    assert causal[tx][:, tx].equal(torch.tril(torch.ones(t, t, dtype=torch.bool)))
    for i in br:                                            # bridges see the prefix only
        assert causal[i, tx[:2]].all() and not causal[i, tx[2:]].any()

    base = fusion_mask(frame_mask, torch.tensor([4]), t, k, prefix=torch.tensor([2]), causal=True,
                       bridge=False)[0]
    assert base.shape == (f + 1 + t, f + 1 + t)             # no bridge positions
    bt = list(range(f + 1, f + 1 + t))
    for i in range(f + 1):                                  # baseline: video sees video + the text prefix
        assert base[i, [0, 1, 3]].all() and base[i, bt[:2]].all() and not base[i, bt[2:]].any()
    for i in bt:
        assert base[i, [0, 1, 3]].all()                     # text sees the video


def test_video_tokens_see_the_text_only_through_the_bridges():
    x, mask, ids, lens = toy_batch(2)
    other = ids.clone()
    other[:, 1:3] = torch.tensor([SPECIAL + 7, SPECIAL + 8])
    m = toy_model(bridge=True)
    f = x.shape[1] + 1
    # bridges cut off from the text (they see no text, and their query is the text encoder's BOS output,
    # the same for any sentence): the video outputs cannot change with the text
    none = torch.zeros_like(lens)
    a, b = m.fuse(x, mask, ids, lens, prefix=none), m.fuse(x, mask, other, lens, prefix=none)
    assert torch.allclose(a.hidden[:, :f], b.hidden[:, :f], atol=1e-6)
    assert not torch.allclose(a.text, b.text)
    # through the bridges they do
    a, b = m.fuse(x, mask, ids, lens), m.fuse(x, mask, other, lens)
    assert not torch.allclose(a.hidden[:, :f], b.hidden[:, :f], atol=1e-4)
    # no gradient from the video outputs to the word embeddings when the bridges see no text
    m.zero_grad()
    m.fuse(x, mask, ids, lens, prefix=none).hidden[:, :f].sum().backward()
    assert m.text.embed.weight.grad is None or m.text.embed.weight.grad.abs().max() == 0


# --------------------------------------------------------------------------------------------------- bridges
def test_bridges_read_the_memory_and_gradients_reach_the_slots():
    m = toy_model(bridge=True)
    q = torch.randn(5, E + 16)
    bridges, attn = m.bridge(q)
    assert bridges.shape == (5, 3, 16) and attn.shape == (5, 3, 8)
    assert torch.allclose(attn.sum(-1), torch.ones(5, 3))
    assert torch.allclose(bridges, attn @ m.bridge.memory)
    assert not torch.allclose(bridges[:, 0], bridges[:, 1])   # K separate projections

    x, mask, ids, lens = toy_batch(3)
    m.train()
    m.zero_grad()
    dual = torch.eye(3)
    loss, _ = m.vtm_loss(x, mask, ids, lens, dual, torch.eye(3, dtype=torch.bool), 0.1,
                         torch.Generator().manual_seed(0))
    loss.backward()
    assert m.bridge.memory.grad is not None and m.bridge.memory.grad.abs().sum() > 0
    assert m.bridge.query.grad.abs().sum() > 0
    # the query is detached: a loss on the bridges alone sends nothing into the text encoder
    m.zero_grad()
    words = m.text(ids)
    query = torch.cat([x.mean(1), words[:, 0]], -1).detach()
    m.bridge(query)[0].sum().backward()
    assert m.text.embed.weight.grad is None


def test_baseline_has_no_memory():
    m = toy_model(bridge=False)
    assert m.bridge is None and not any("memory" in n for n, _ in m.named_parameters())
    x, mask, ids, lens = toy_batch(2)
    fused = m.fuse(x, mask, ids, lens)
    assert fused.hidden.shape[1] == x.shape[1] + 1 + ids.shape[1]


# ---------------------------------------------------------------------------------------------------- losses
def test_hard_negatives_skip_the_same_video_and_follow_the_similarities():
    dual = torch.tensor([[0.9, 0.8, 0.1, 0.0], [0.8, 0.9, 0.0, 0.1],
                         [0.0, 0.1, 0.9, 0.7], [0.3, 0.0, 0.8, 0.9]])
    videos = torch.tensor([0, 0, 1, 2])                 # texts 0 and 1 describe the same video
    same = videos[:, None] == videos[None, :]
    nv, nt = hard_negatives(dual, same, 1e-3, torch.Generator().manual_seed(0))
    assert nv.tolist() == [2, 3, 3, 2]                  # the most similar other video, never its own
    assert nt.tolist() == [3, 2, 3, 2]                  # per pair's video: the most similar other-video text
    with pytest.raises(ValueError, match="two distinct videos"):
        hard_negatives(dual[:2, :2], torch.ones(2, 2, dtype=torch.bool), 0.1)


def test_vtm_loss_is_the_two_way_cross_entropy_of_positives_and_drawn_negatives():
    m = toy_model(bridge=True)
    x, mask, ids, lens = toy_batch(3)
    dual, same = torch.rand(3, 3), torch.eye(3, dtype=torch.bool)
    loss, acc = m.vtm_loss(x, mask, ids, lens, dual, same, 0.1, torch.Generator().manual_seed(3))
    nv, nt = hard_negatives(dual, same, 0.1, torch.Generator().manual_seed(3))
    logits = []
    pairs = [(i, i) for i in range(3)] + [(int(nv[i]), i) for i in range(3)]
    pairs += [(i, int(nt[i])) for i in range(3)]
    for v, t in pairs:
        fused = m.fuse(x[v:v + 1], mask[v:v + 1], ids[t:t + 1], lens[t:t + 1])
        logits.append(m.match_logits(fused, lens[t:t + 1]))
    target = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0])
    manual = torch.nn.functional.cross_entropy(torch.cat(logits), target)
    assert torch.allclose(loss, manual, atol=1e-5)
    assert 0 <= float(acc) <= 1


def test_mlm_masks_words_only_and_cannot_read_the_masked_word():
    ids = torch.tensor([[BOS] + [SPECIAL + i for i in range(40)] + [EOS], [BOS, SPECIAL, EOS] + [PAD] * 39])
    lens = torch.tensor([42, 3])
    masked = mlm_positions(ids, lens, 0.15, torch.Generator().manual_seed(0))
    assert not masked[:, 0].any() and not masked[0, 41] and not masked[1, 2:].any()
    assert masked[1, 1]                                  # a one-word sentence still masks its word
    assert 2 <= int(masked[0].sum()) <= 14

    m = toy_model(bridge=True, max_words=8)
    x, mask, ids, lens = toy_batch(2, words=6)
    g = lambda: torch.Generator().manual_seed(5)         # noqa: E731
    loss, _ = m.mlm_loss(x, mask, ids, lens, 0.3, g())
    pos = mlm_positions(ids, lens, 0.3, g())
    fused = m.fuse(x, mask, ids, lens, masked=pos)
    manual = torch.nn.functional.cross_entropy(m.lm_logits(fused.text[pos]), ids[pos])
    assert torch.allclose(loss, manual, atol=1e-6)
    changed = ids.clone()
    changed[pos] = SPECIAL + (changed[pos] - SPECIAL + 1) % 10   # other words under the mask
    assert torch.allclose(m.fuse(x, mask, changed, lens, masked=pos).text, fused.text, atol=1e-6)
    assert MASK not in ids[pos].tolist()


@pytest.mark.parametrize("bridge", [True, False])
def test_prefix_lm_predicts_from_the_past_only(bridge):
    m = toy_model(bridge=bridge)
    x, mask, ids, lens = toy_batch(2, words=5)
    prefix = torch.tensor([3, 2])
    loss, _ = m.plm_loss(x, mask, ids, lens, prefix=prefix)
    fused = m.fuse(x, mask, ids, lens, prefix=prefix, causal=True)
    logits, target = [], []
    for i in range(2):
        for j in range(int(prefix[i]) - 1, int(lens[i]) - 1):
            logits.append(m.lm_logits(fused.text[i, j]))
            target.append(ids[i, j + 1])
    manual = torch.nn.functional.cross_entropy(torch.stack(logits), torch.stack(target))
    assert torch.allclose(loss, manual, atol=1e-6)
    # the output at position j never depends on later words (nor, via bridges or video, on the non-prefix)
    later = ids.clone()
    later[0, 4:6] = torch.tensor([SPECIAL + 9, SPECIAL + 8])
    again = m.fuse(x, mask, later, lens, prefix=prefix, causal=True)
    assert torch.allclose(again.text[0, :4], fused.text[0, :4], atol=1e-6)
    assert not torch.allclose(again.text[0, 4:6], fused.text[0, 4:6])


# -------------------------------------------------------------------------------------------------- decoding
class _TableLM(MemBridgeModel):
    """Next-word probabilities from a table keyed by the prefix: greedy and beam search disagree on it."""

    TABLE = {(BOS,): {SPECIAL: 0.6, SPECIAL + 1: 0.4},
             (BOS, SPECIAL): {SPECIAL + 2: 0.4, SPECIAL + 3: 0.3, EOS: 0.3},
             (BOS, SPECIAL + 1): {EOS: 0.9, SPECIAL + 2: 0.1}}

    def _next_logp(self, frames, frame_mask, seqs):
        out = torch.full((seqs.shape[0], SPECIAL + 4), -math.inf)
        for i, s in enumerate(seqs.tolist()):
            for w, p in self.TABLE.get(tuple(s), {EOS: 1.0}).items():
                out[i, w] = math.log(p)
        return out


def test_beam_search_finds_what_greedy_misses():
    torch.manual_seed(0)
    m = _TableLM(tiny(max_words=4), E, SPECIAL + 4).eval()
    x, mask = torch.zeros(2, 1, E), torch.ones(2, 1)
    assert m.greedy(x, mask) == [[SPECIAL, SPECIAL + 2]] * 2            # 0.6 · 0.4 · 1 = 0.24
    assert m.beam_search(x, mask, beam=2, alpha=0.0) == [[SPECIAL + 1]] * 2   # 0.4 · 0.9 = 0.36
    assert m.beam_search(x, mask, beam=1, alpha=0.0) == [[SPECIAL, SPECIAL + 2]] * 2


def test_beam_search_on_a_tiny_model_is_bounded_and_repeatable():
    m = toy_model(bridge=True, max_words=5)
    x, mask, _, _ = toy_batch(3)
    a = m.beam_search(x, mask, beam=3)
    assert a == m.beam_search(x, mask, beam=3) and len(a) == 3
    assert all(len(s) <= 5 and all(w >= SPECIAL for w in s) for s in a)
    g = m.greedy(x, mask)
    assert all(len(s) <= 5 and all(w >= SPECIAL for w in s) for s in g)


# ------------------------------------------------------------------------------------------------- QA metric
def test_qa_accuracy_overall_and_per_type():
    truth = {"q1": "red", "q2": "two", "q3": "star", "q4": "blue"}
    pred = {"q1": "red", "q2": "one", "q3": "star", "q4": "red"}
    m = qa_metrics(pred, truth, {"q1": "what", "q2": "how", "q3": "what", "q4": "what"})
    assert m["accuracy"] == 50.0 and m["questions"] == 4
    assert m["per_type"] == {"how": {"accuracy": 0.0, "questions": 1},
                             "what": {"accuracy": pytest.approx(200 / 3), "questions": 3}}
    assert "per_type" not in qa_metrics(pred, truth)
    with pytest.raises(ValueError, match="no prediction"):
        qa_metrics({"q1": "red"}, truth)


# ----------------------------------------------------------------------------------------------------- tasks
COLOURS = ["red", "blue", "green", "yellow"]
SHAPES = ["circle", "square"]


def toy_data(seed: int = 0):
    """Videos whose frame features encode (colour, shape); captions and questions say them."""
    rng = np.random.default_rng(seed)
    proto = {(c, s): rng.normal(size=E) for c in COLOURS for s in SHAPES}
    videos, captions, qa, frames, sent, tokens, n = [], [], [], {}, {}, {}, {}
    for split, count in (("train", 16), ("val", 6), ("test", 6)):
        for k in range(count):
            vid = f"{split}{k}"
            c, s = COLOURS[k % 4], SHAPES[(k // 4) % 2]
            videos.append(Video(vid, split, 10.0, f"{vid}.mp4"))
            frames[vid] = proto[(c, s)] + 0.1 * rng.normal(size=(3, E))
            for j, text in enumerate((f"a {c} {s}", f"the {s} is {c}")):
                captions.append(Caption(f"{vid}/{j}", vid, split, text))
                sent[text] = proto[(c, s)] + 0.3 * rng.normal(size=E)
                tokens[text], n[text] = np.zeros((1, 4), np.float32), 1
            qa.append(QA(f"{vid}/q", vid, split, f"what colour is the {s}?", c))
    words = sorted({w for cap in captions for w in cap.sentence.split()}) + ["<unk>"]
    vocab = {"word_to_ix": {w: i for i, w in enumerate(words, 1)},
             "ix_to_word": {str(i): w for i, w in enumerate(words, 1)}}
    manifest = Manifest(videos=videos, captions=captions, qa=qa, vocab=vocab)
    loaded = Loaded(StoredFrames.from_arrays(frames, 4), StoredTexts.from_arrays(tokens, sent, n))
    return manifest, loaded


def toy_task(name: str, tmp_path, baseline: str | None = None, **group):
    manifest, loaded = toy_data()
    defaults = dict(width=16, heads=2, ffn=32, layers=2, memory_slots=8, bridges=2, max_frames=4, max_words=6,
                    batch_size=8, epochs=2, lr=3e-3, seed=0)
    layers = [(defaults, "families.membridge"), (group, f"train.{name}")]
    return make_task(name, layers, Paths.at(tmp_path), baseline=baseline, manifest=manifest, loaded=loaded,
                     answers={c: i for i, c in enumerate(COLOURS)})


def test_distinct_video_batches_cover_every_caption_once():
    by_video = [[0, 1, 2], [3], [4, 5], [6, 7]]
    batches = distinct_video_batches(by_video, 3, np.random.default_rng(0), [2, 0, 3, 1])
    flat = [i for b in batches for i in b]
    owner = {i: v for v, rows in enumerate(by_video) for i in rows}
    assert all(len({owner[i] for i in b}) == len(b) >= 2 for b in batches)
    assert [len(b) for b in batches] == [4, 3]          # round 0: the lone 4th caption joins the batch
    left = sorted(set(range(8)) - set(flat))             # round 2 holds one caption of video 0: no negative
    assert len(flat) == len(set(flat)) == 7 and len(left) == 1 and owner[left[0]] == 0


def test_words_cover_captions_and_questions():
    manifest, _ = toy_data()
    w = Words.from_manifest(manifest)
    ids = w.encode("what colour is the red circle", 10)
    assert ids[0] == BOS and ids[-1] == EOS and w.unk not in ids
    assert w.decode(ids) == "what colour is the red circle"


def test_tasks_train_predict_and_score(tmp_path):
    from vidmem.training import EpochContext, fit

    pre = toy_task("pre", tmp_path, task="pretrain")
    assert pre.steps_per_epoch() == len(pre.batches(EpochContext(0, 0)))
    res = fit(pre, tmp_path / "pre", progress=False)
    assert all(math.isfinite(r["val/loss"]) for r in res.history)
    scores = pre.evaluate(pre.predict(res.model, "test"), "test")
    assert {"vtm", "mlm", "plm", "vtm_acc", "mlm_acc", "plm_acc"} <= set(scores)
    init = str(tmp_path / "pre" / "best.pt")

    ret = toy_task("ret", tmp_path, task="retrieval", init=init, rerank_top=3)
    model = fit(ret, tmp_path / "ret", progress=False).model
    pred = ret.predict(model, "test")
    sim = pred["sim"]
    assert sim.shape == (12, 6)
    top = np.sort(sim, axis=1)[:, -3:]
    assert (top > 1.0).all()                          # each text's candidates sit above every other video
    assert (np.sort(sim, axis=1)[:, :-6 + 3] <= 1.0).sum() >= 0
    out = ret.write_predictions(pred, tmp_path / "p" / "ret")
    assert out.is_file() and (tmp_path / "p" / "ret.rows.json").is_file()
    row = ret.evaluate(pred, "test")
    assert row["t2v"]["queries"] == 12 and row["chance_R1"] == pytest.approx(100 / 6)

    qa = toy_task("qa", tmp_path, task="qa", init=init, epochs=15, lr=5e-3)
    model = fit(qa, tmp_path / "qa", progress=False).model
    answers = qa.predict(model, "test")
    assert set(answers) == {f"test{k}/q" for k in range(6)} and set(answers.values()) <= set(COLOURS)
    acc = qa.evaluate(answers, "test")["accuracy"]
    floor = toy_task("top", tmp_path, baseline="top_answer", task="qa")
    top = qa.evaluate(floor.predict(None, "test"), "test")
    assert acc > top["accuracy"]                       # the colour is in the frames: above the top answer

    cap = toy_task("cap", tmp_path, task="caption", init=init, beam_size=2)
    model = fit(cap, tmp_path / "cap", progress=False).model
    pred = cap.predict(model, "test")
    assert set(pred["beam"]) == set(pred["greedy"]) == {f"test{k}" for k in range(6)}
    cap.write_predictions(pred, tmp_path / "p" / "cap")
    rows = __import__("json").loads((tmp_path / "p" / "cap.json").read_text())
    assert set(rows[0]) == {"video_id", "caption"}


def test_chance_and_dual_floors(tmp_path):
    chance = toy_task("chance", tmp_path, baseline="chance")
    row = chance.evaluate(chance.predict(None, "test"), "test")
    assert row["t2v"]["R1"] == pytest.approx(100 / 6) and row["expected"]
    dual = toy_task("dual", tmp_path, baseline="dual")
    row = dual.evaluate(dual.predict(None, "test"), "test")
    assert row["t2v"]["R1"] > 100 / 6                   # sentence vectors sit near their video's frames


def test_unknown_baseline_is_a_one_line_error(tmp_path):
    from vidmem.common import UserError

    with pytest.raises(UserError, match="baselines.x.kind"):
        toy_task("x", tmp_path, baseline="nope")
