"""Caption scores: hand-worked BLEU / ROUGE-L / CIDEr-D, pycocoevalcap parity, and the METEOR guard.

One METEOR JVM (about 5 s to start) is shared by every test here and in test_metrics_dense.py.
"""
from __future__ import annotations

import math
import os
import signal
import time

import pytest

from metrics.captions import (
    CaptionEvalError,
    Meteor,
    MeteorError,
    clean_caption,
    ptb_tokenize,
    score_captions,
    score_captions_per_key,
    shared_meteor,
)
from vidmem.common import UserError


@pytest.fixture(scope="module")
def meteor() -> Meteor:
    return shared_meteor()


# -------------------------------------------------------------------------------------------------- tokenizer
def test_ptb_tokenize_lowercases_drops_punctuation_and_keeps_alignment():
    got = ptb_tokenize(['A man, in a "red" hat.', "", "two\nlines", "  ", "Wait -- it's (big)...",
                        "last one!"])
    # pycocoevalcap drops `` '' , . -- ... ! but not the lower-cased bracket tokens -lrb- / -rrb-
    assert got == ["a man in a red hat", "", "two lines", "", "wait it 's -lrb- big -rrb-", "last one"]


def test_ptb_tokenize_equals_pycocoevalcap_tokenizer():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    caps = {1: ["A woman slices an onion; then she smiles."], 2: ["Two dogs' tails wag!", "Is it 3:30?"],
            3: ["He said \"go\" -- and left..."]}
    official = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in caps.items()})
    flat = [c for v in caps.values() for c in v]
    ours = iter(ptb_tokenize(flat))
    assert {k: [next(ours) for _ in v] for k, v in caps.items()} == official


def test_ptb_tokenize_without_java_is_a_clear_error():
    with pytest.raises(CaptionEvalError, match="Java runtime .* not found"):
        ptb_tokenize(["a caption"], java="/nonexistent/java")


# ---------------------------------------------------------------------------------------------------- by hand
def test_bleu_and_rouge_worked_by_hand(meteor):
    # hyp "the cat sat on mat" (5 words) vs ref "the cat sat on the mat" (6 words), one key.
    # clipped n-gram precisions: 1-grams 5/5; 2-grams {the cat, cat sat, sat on} of 4 = 3/4;
    # 3-grams {the cat sat, cat sat on} of 3 = 2/3; 4-grams {the cat sat on} of 2 = 1/2.
    # brevity penalty: c=5 < r=6 -> exp(1 - 6/5) = exp(-0.2).
    bp = math.exp(-0.2)
    expected = {
        "Bleu_1": bp * 1.0,
        "Bleu_2": bp * (1.0 * 3 / 4) ** (1 / 2),
        "Bleu_3": bp * (1.0 * 3 / 4 * 2 / 3) ** (1 / 3),
        "Bleu_4": bp * (1.0 * 3 / 4 * 2 / 3 * 1 / 2) ** (1 / 4),
    }
    # ROUGE-L: LCS = "the cat sat on mat" = 5; P = 5/5, R = 5/6; F = (1+b^2) P R / (R + b^2 P), b = 1.2
    p, r, b2 = 1.0, 5 / 6, 1.2**2
    expected["ROUGE_L"] = (1 + b2) * p * r / (r + b2 * p)
    got = score_captions({"k": ["The cat sat on the mat."]}, {"k": "the cat sat on mat"},
                         metrics=("Bleu", "ROUGE_L"), meteor=meteor)
    assert got == pytest.approx(expected, rel=1e-7)
    assert got["ROUGE_L"] == pytest.approx(0.894428152, rel=1e-8)


def test_cider_d_worked_by_hand():
    # Two keys; A has two references. Document frequency counts keys whose references hold the n-gram:
    # "ball" is in A's and B's references -> df 2 -> idf log(2/2) = 0; every other n-gram (also the unseen
    # "cube", whose df is floored at 1) gets idf log(2/1) = L.
    # A: hyp "red ball" -> 1-gram vector {red: L, ball: 0}, 2-gram {red ball: L}.
    #    vs "red ball": cos 1 (1-grams), 1 (2-grams);  vs "red box" {red: L, box: L}: 1-gram cos
    #    L*L / (L * L*sqrt2) = 1/sqrt2, 2-gram 0. Equal bigram counts -> no length penalty;
    #    3-/4-grams empty -> 0.
    #    score = 10 * mean_n(sum over refs) / #refs = 10 * ((2 + 1/sqrt2) / 4) / 2
    # B: hyp "blue cube" {blue: L, cube: L} vs "blue ball" {blue: L, ball: 0}: 1-gram cos 1/sqrt2, rest 0
    #    score = 10 * (1/sqrt2) / 4
    a = 10 * ((2 + 1 / math.sqrt(2)) / 4) / 2
    b = 10 * (1 / math.sqrt(2)) / 4
    got = score_captions_per_key({"A": ["red ball", "red box"], "B": ["blue ball"]},
                                 {"A": "red ball", "B": "blue cube"}, metrics=("CIDEr",))
    assert got.per_key["CIDEr"] == pytest.approx({"A": a, "B": b}, rel=1e-9)
    assert got.corpus["CIDEr"] == pytest.approx((a + b) / 2, rel=1e-9)


def test_identical_and_disjoint_captions(meteor):
    refs = {"a": ["a man plays a red guitar"], "b": ["two dogs run across the wet field"]}
    same = score_captions(refs, {"a": "a man plays a red guitar", "b": "two dogs run across the wet field"},
                          meteor=meteor)
    # every n-gram matches; CIDEr: no n-gram is shared between the two keys, so all idf = log 2 > 0 and
    # every cosine is 1 -> 10 * mean over n of 1 = 10
    assert same == pytest.approx({"Bleu_1": 1, "Bleu_2": 1, "Bleu_3": 1, "Bleu_4": 1, "METEOR": 1,
                                  "ROUGE_L": 1, "CIDEr": 10}, rel=1e-6)
    other = score_captions(refs, {"a": "snow falls quietly", "b": "an old car rusts"}, meteor=meteor)
    assert other["METEOR"] == 0 and other["ROUGE_L"] == 0 and other["CIDEr"] == 0
    assert all(other[f"Bleu_{n}"] < 1e-8 for n in range(1, 5))


PARITY_GTS = {1: ["a man is slicing an onion", "someone cuts an onion"], 2: ["a dog runs on the beach"],
              3: ["two women are talking in a kitchen", "women chat while cooking"],
              4: ["a boy jumps into a pool"]}
PARITY_RES = {1: ["a man cuts a tomato"], 2: ["a dog is running on sand"], 3: ["two women talk"],
              4: ["a child dives into the water"]}
# what pycocoevalcap 1.2's own scorers return for PARITY_* (its Meteor class: aggregate, per key)
PARITY_COCO = {"Bleu_1": 0.4999999999500001, "Bleu_2": 0.3061862178153651, "Bleu_3": 1.984251314731511e-06,
               "Bleu_4": 5.590169943021589e-09, "METEOR": 0.23041444809939102, "ROUGE_L": 0.3910483198364228,
               "CIDEr": 1.031370295934288}
PARITY_COCO_METEOR_PER_KEY = [0.24127473585739795, 0.27067947514598445, 0.27939741983579053,
                              0.1497979616651489]


def test_scores_equal_pycocoevalcap_recorded(meteor):
    got = score_captions_per_key(PARITY_GTS, PARITY_RES, tokenize=False, meteor=meteor)
    assert got.corpus == pytest.approx(PARITY_COCO, rel=1e-12)
    assert list(got.per_key["METEOR"].values()) == pytest.approx(PARITY_COCO_METEOR_PER_KEY, rel=1e-12)


@pytest.mark.slow
def test_scores_equal_pycocoevalcap_live(meteor):
    """The same check against pycocoevalcap's scorers run now (its Meteor starts a second JVM)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor as CocoMeteor
    from pycocoevalcap.rouge.rouge import Rouge

    coco = CocoMeteor()
    try:
        expected = {"METEOR": coco.compute_score(PARITY_GTS, PARITY_RES)[0]}
    finally:
        coco.meteor_p.kill()
        coco.meteor_p.wait()
    bleu = Bleu(4).compute_score(PARITY_GTS, PARITY_RES, verbose=0)[0]
    expected.update(dict(zip(["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"], bleu)))
    expected["ROUGE_L"] = Rouge().compute_score(PARITY_GTS, PARITY_RES)[0]
    expected["CIDEr"] = Cider().compute_score(PARITY_GTS, PARITY_RES)[0]
    got = score_captions(PARITY_GTS, PARITY_RES, tokenize=False, meteor=meteor)
    assert got == pytest.approx(expected, rel=1e-12)


def test_per_key_scores(meteor):
    got = score_captions_per_key({"x": ["a cat sleeps"], "y": ["a bird sings loudly"]},
                                 {"x": ["a cat sleeps"], "y": "snow falls quietly"}, meteor=meteor)
    assert got.per_key["METEOR"]["x"] == 1.0 and got.per_key["METEOR"]["y"] == 0.0
    assert got.per_key["ROUGE_L"] == {"x": 1.0, "y": 0.0}
    assert set(got.per_key) == set(got.corpus)


def test_bad_input_is_a_user_error():
    with pytest.raises(UserError, match="no prediction for"):
        score_captions({"a": ["x"], "b": ["y"]}, {"a": "x"}, metrics=("ROUGE_L",))
    with pytest.raises(UserError, match="key 'a': references must be a non-empty list"):
        score_captions({"a": []}, {"a": "x"}, metrics=("ROUGE_L",))
    with pytest.raises(UserError, match="exactly one predicted caption"):
        score_captions({"a": ["x"]}, {"a": ["x", "y"]}, metrics=("ROUGE_L",))
    with pytest.raises(ValueError, match="SPICE"):
        score_captions({"a": ["x"]}, {"a": "x"}, metrics=("SPICE",))


# ----------------------------------------------------------------------------------------------- METEOR guard
def test_clean_caption_removes_protocol_breakers():
    assert clean_caption("a man\nplays ||| the\r\nguitar\u2028 ") == "a man plays the guitar"


def test_meteor_scores_newlines_and_separators(meteor):
    agg, per = meteor.score([("a man plays\nthe guitar |||", ["a man ||| plays the\r\nguitar"]),
                             ("the dog|||runs", ["the dog runs"])])
    assert per == [1.0, 1.0] and agg == 1.0


def test_meteor_batches_many_groups_in_two_round_trips(meteor):
    groups = [[("a red ball", ["a red ball"])], [("a red ball", ["a blue box"]), ("a dog", ["a dog"])], []]
    out = meteor.score_groups(groups)
    assert out[0] == (1.0, [1.0])
    assert out[1][1][1] == 1.0 and 0 < out[1][1][0] < 1 and out[1][1][0] < out[1][0] < 1.0
    assert out[2] == (0.0, [])


def test_meteor_restarts_a_killed_jvm(meteor):
    meteor.score([("warm up", ["warm up"])])
    pid, starts = meteor.pid, meteor.starts
    os.kill(pid, signal.SIGKILL)
    assert meteor.score([("a cat", ["a cat"])]) == (1.0, [1.0])
    assert meteor.pid != pid and meteor.starts == starts + 1


def test_meteor_hung_jvm_times_out_and_restarts(meteor, monkeypatch):
    meteor.score([("warm up", ["warm up"])])
    pid = meteor.pid
    monkeypatch.setattr(meteor, "timeout_s", 2.0)
    os.kill(pid, signal.SIGSTOP)  # the JVM stops answering without dying
    try:
        t0 = time.monotonic()
        assert meteor.score([("a cat", ["a cat"])]) == (1.0, [1.0])
        assert time.monotonic() - t0 < 2.0 + meteor.start_timeout_s
        assert meteor.pid != pid
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_meteor_that_cannot_run_raises_a_clear_error(tmp_path):
    broken = Meteor(jar=tmp_path / "missing-meteor.jar", start_timeout_s=60)
    t0 = time.monotonic()
    with pytest.raises(MeteorError, match="failed twice.*exited with status"):
        broken.score([("a", ["a"])])
    assert time.monotonic() - t0 < 30 and broken.starts == 2
    with pytest.raises(MeteorError, match="cannot start the METEOR JVM"):
        Meteor(java="/nonexistent/java").score([("a", ["a"])])
