"""finetune_window's pieces: the SynthVid sentence parser, window frame picking, the encoder's start, the
oracle and chance, the memory's precision@k — by hand — and the encoder learning what a frame mean cannot
see (the order of frames). The stage itself runs through DVC in test_pipeline.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metrics.bank import action_key, coverage, meaning_key, subject_key, window_precision
from models.encoders.tuning import multi_positive_infonce
from models.window.model import WindowEncoder
from models.window.task import _hit_at_5, colour_shape_oracle, rank_hits, window_frames
from vidmem.synth.grammar import CAPTION, NOUNS, QUERY, VERBS, capitalise
from vidmem.synth.parse import Meaning, parse


# ---------------------------------------------------------------------------------------------------- parser
def test_every_phrasing_of_the_grammar_parses_back():
    n = 0
    for kind, (train, held) in VERBS.items():
        for v3, ing in train + held:
            for shape, (nouns, held_nouns) in NOUNS.items():
                for noun in nouns + held_nouns:
                    for art in ("the", "a"):
                        s = f"{art} purple {noun}"
                        target = "green" if "{c}" in v3 else None
                        v, g = v3.replace("{c}", target or ""), ing.replace("{c}", target or "")
                        want = Meaning("purple", shape, f"{kind}:green" if target else kind)
                        for t in CAPTION[0] + CAPTION[1] + QUERY[0] + QUERY[1]:
                            sentence = t.format(S=capitalise(s), s=s, v=v, ing=g)
                            assert parse(sentence) == want, sentence
                            n += 1
    assert n > 5000


def test_paraphrases_share_a_meaning_and_other_text_does_not_parse():
    assert parse("The red disc is spinning.") == parse("the moment a red circle rotates.") == \
        Meaning("red", "circle", "spin")
    assert parse("Then the blue box turns yellow.") == Meaning("blue", "square", "recolour:yellow")
    assert parse("Then the blue box turns yellow.") != parse("Then the blue box turns red.")
    assert parse("a man is playing the guitar.") is None
    assert parse("the red circle and the blue square") is None  # no action
    assert meaning_key("A man plays.") == meaning_key("a MAN plays") == ("words", "a", "man", "plays")


# ---------------------------------------------------------------------------------------------------- windows
def test_window_frames_by_hand():
    times = np.arange(30) / 3.0  # 3 fps, 10 s
    # centre 5.0, 4 s, 4 frames: window [3, 7], midpoints 3.5 4.5 5.5 6.5 s; the frame shown then is the last
    # one at or before it: 10 (3.33 s), 13, 16, 19
    assert window_frames(times, np.array([5.0]), 4.0, 4).tolist() == [[10, 13, 16, 19]]
    # centre 0.5: the window moves inside the video, [0, 4]: midpoints 0.5 1.5 2.5 3.5 -> 1, 4, 7, 10
    assert window_frames(times, np.array([0.5]), 4.0, 4).tolist() == [[1, 4, 7, 10]]
    # near the end (video end = 29/3 + 1/3 = 10): [6, 10] -> 6.5 7.5 8.5 9.5 -> 19, 22, 25, 28 (9.5*3 = 28.5)
    assert window_frames(times, np.array([9.9]), 4.0, 4).tolist() == [[19, 22, 25, 28]]
    # a video shorter than the window: the whole video; one frame: always frame 0
    assert window_frames(times[:3], np.array([0.5]), 4.0, 3).tolist() == [[0, 1, 2]]
    assert window_frames(np.array([0.0]), np.array([3.0]), 4.0, 2).tolist() == [[0, 0]]


def test_untrained_encoder_is_exactly_the_frame_mean():
    torch.manual_seed(0)
    x = torch.randn(5, 6, 16)
    enc = WindowEncoder(16, 6, width=32, layers=2, heads=4).eval()
    want = F.normalize(F.normalize(x, dim=-1).mean(1), dim=-1)
    assert torch.equal(enc(x), want)
    with pytest.raises(ValueError, match="6 frames"):
        enc(x[:, :4])


def test_encoder_learns_the_order_a_frame_mean_cannot_see():
    """Frames show an object at positions 0..5 in order ("moves right") or reversed ("moves left"): the two
    windows have the same frame mean, so the frame mean ranks the two sentences alike; the encoder learns the
    direction from the text loss alone."""
    torch.manual_seed(0)
    pos = F.normalize(torch.randn(6, 16), dim=-1)  # one frame vector per position
    right, left = pos, pos.flip(0)
    txt = F.normalize(torch.randn(2, 16), dim=-1)  # "moves right", "moves left"
    x = torch.stack([right, left] * 8)
    target = torch.tensor([0, 1] * 8)
    pos_matrix = F.one_hot(target, 2).float()
    enc = WindowEncoder(16, 6, width=32, layers=2, heads=4, dropout=0.0)
    assert torch.allclose(enc(right[None]), enc(left[None]), atol=1e-6)
    opt = torch.optim.AdamW(enc.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = multi_positive_infonce(enc(x), txt, pos_matrix, enc.logit_scale.exp())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    enc.eval()
    sims = enc(torch.stack([right, left])) @ txt.t()
    assert sims.argmax(1).tolist() == [0, 1]
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------------------------------------------- scores
def test_rank_hits_and_chance_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.0, 0.2, 0.3, 0.4, 0.5],
                           [0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.0]])
    # query 0: valid {6}: rank 2 -> R@1 miss, R@5 hit; query 1: valid {6}: last -> both miss
    assert rank_hits(scores, [{6}, {6}]) == (0.0, 0.5)
    assert rank_hits(scores, [{0}, {1, 6}]) == (1.0, 1.0)
    assert _hit_at_5(7, 1) == pytest.approx(5 / 7)
    assert _hit_at_5(7, 2) == pytest.approx(1 - math.comb(5, 5) / math.comb(7, 5))
    assert _hit_at_5(4, 0) == 0.0 and _hit_at_5(4, 1) == 1.0


def test_colour_shape_oracle_by_hand():
    sentences = ["The red circle spins.", "The red disc grows.", "A red circle moves left.",
                 "The blue square spins.", "a man sings."]
    # query 0 is sentence 0; valid {0}: the oracle ties the three red circles, 1 of 3 valid -> R@1 1/3, R@5 1
    # (3 candidates <= 5); a sentence it cannot read is never in a tie. Query 1, the blue square, valid {3, 0}:
    # tie {3} -> R@1 1
    r1, r5 = colour_shape_oracle([sentences[0], sentences[3]], [{0}, {3, 0}], sentences)
    assert r1 == pytest.approx((1 / 3 + 1) / 2)
    # an unreadable query ties every sentence: valid {4} of 5 -> R@1 1/5, R@5 1
    assert colour_shape_oracle([sentences[4]], [{4}], sentences) == pytest.approx((1 / 5, 1.0))
    assert r5 == pytest.approx(1.0)


def test_window_precision_and_coverage_by_hand():
    bank = ["The red circle spins.", "a red disc is spinning.", "The blue square grows.", "A green star falls."]
    events = [(0.0, 4.0, "Then the red circle rotates."), (6.0, 9.0, "The blue box expands.")]
    windows = [(1.0, 3.0), (5.0, 7.0), (9.5, 10.0)]
    retrieved = [[0, 2, 1], [1, 2, 3], [3, 2, 1]]
    out = window_precision(retrieved, windows, [events] * 3, bank, ks=(1, 2))
    # window 0 overlaps the red-circle spin: hits {0, 1}; window 1 the blue-square growth: {2}; window 2 none
    assert out["retrieved"]["p@1"] == pytest.approx((1 + 0 + 0) / 3)
    assert out["retrieved"]["p@2"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert out["random"]["p@1"] == out["random"]["p@2"] == pytest.approx((2 / 4 + 1 / 4 + 0) / 3)
    assert out["windows"] == 3
    # partial credit: "The blue square spins." names window 1's object but not what it does; "A green star
    # rotates." says what happens in window 0, of another object
    more = bank + ["The blue square spins.", "A green star rotates."]
    top = [[5, 0], [4, 2], [4, 5]]
    full = window_precision(top, windows, [events] * 3, more, ks=(1, 2))
    sub = window_precision(top, windows, [events] * 3, more, ks=(1, 2), key=subject_key)
    act = window_precision(top, windows, [events] * 3, more, ks=(1, 2), key=action_key)
    assert full["retrieved"]["p@1"] == 0 and full["retrieved"]["p@2"] == pytest.approx((1 / 2 + 1 / 2) / 3)
    assert sub["retrieved"]["p@1"] == pytest.approx(1 / 3)
    assert sub["retrieved"]["p@2"] == pytest.approx((1 / 2 + 1) / 3)
    assert act["retrieved"]["p@1"] == pytest.approx(1 / 3)
    assert act["retrieved"]["p@2"] == pytest.approx((1 + 1 / 2) / 3)
    # random, of 6: red circles (0, 1) for window 0 and blue squares (2, 4) for window 1; spins (0, 1, 4, 5)
    # for window 0 and the growth (2) for window 1
    assert sub["random"]["p@1"] == pytest.approx((2 / 6 + 2 / 6 + 0) / 3)
    assert act["random"]["p@1"] == pytest.approx((4 / 6 + 1 / 6 + 0) / 3)
    assert coverage(bank, ["The red disc spins.", "The pink ring bounces.", "A blue box grows."]) == \
        pytest.approx(2 / 3)


def test_linear_probe_reads_what_a_vector_holds_and_nothing_else():
    from models.window.task import linear_probe

    rng = np.random.default_rng(0)
    labels = ["red", "green", "blue"]
    y, yv = [labels[i % 3] for i in range(90)], [labels[i % 3] for i in range(30)]
    onehot = lambda ys: np.eye(3)[[labels.index(a) for a in ys]]  # noqa: E731
    held = linear_probe(np.c_[onehot(y), rng.standard_normal((90, 5))], y,
                        np.c_[onehot(yv), rng.standard_normal((30, 5))], yv)
    assert held == {"accuracy": 1.0, "majority": pytest.approx(1 / 3), "classes": 3}
    blind = linear_probe(rng.standard_normal((90, 8)), y, rng.standard_normal((30, 8)), yv)
    assert blind["accuracy"] < 0.6  # noise features: near the majority class, far from 1
