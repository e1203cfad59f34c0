"""metrics/hierarchy.py on hand-worked values (one reference per key, as Video ReCap scores)."""
import math

import pytest

from metrics.hierarchy import flatten, rouge_lsum, score_hierarchy, score_level
from vidmem.common import UserError


def test_rouge_lsum_hand_worked():
    # LCS("a b c d", "a b d") = 3: P = 1, R = 3/4, F1 = 2PR/(P+R) = 6/7
    assert rouge_lsum({"k": "a b c d"}, {"k": "a b d"}) == pytest.approx(6 / 7)
    # rouge_score lower-cases and drops punctuation; the mean over keys (1 and 0)
    assert rouge_lsum({"a": "The red Circle.", "b": "x y"}, {"a": "the red circle", "b": "z"}) == pytest.approx(0.5)


def test_level_scores_hand_worked():
    refs = {"v1": "a b c d", "v2": "e f g h"}
    # key v1 exact: every n-gram has df 1 of N 2 → idf log 2 on both sides, cosine 1 for n = 1..4, no length
    # penalty → CIDEr-D 10; v2 shares nothing → 0; corpus = mean = 5
    s = score_level(refs, {"v1": "a b c d", "v2": "x y z w"}, tokenize=False)
    assert s["CIDEr"] == pytest.approx(5.0)
    assert s["n"] == 2
    # ROUGE-L (pycocoevalcap, beta 1.2) of "a b c d" vs "a b d": ((1 + b²) P R) / (R + b² P), P = 1, R = .75
    s = score_level({"v1": "a b c d"}, {"v1": "a b d"}, tokenize=False)
    b2 = 1.2 ** 2
    assert s["ROUGE_L"] == pytest.approx((1 + b2) * 0.75 / (0.75 + b2))
    assert s["rougeLsum"] == pytest.approx(6 / 7)
    # one key: every n-gram's idf is log(1/1) = 0, so CIDEr-D is 0 whatever the prediction
    assert s["CIDEr"] == 0.0
    assert 0.0 < s["METEOR"] < 1.0


def test_hierarchy_levels_and_flatten():
    refs = {"v1": "the red circle moves left", "v2": "the blue square grows"}
    out = score_hierarchy({"clip": (refs, dict(refs)), "video": (refs, {"v1": "nothing", "v2": "nothing"})},
                          tokenize=False)
    assert out["clip"]["CIDEr"] == pytest.approx(10.0)
    assert out["clip"]["rougeLsum"] == pytest.approx(1.0)
    assert out["clip"]["METEOR"] > 0.9
    assert out["video"]["CIDEr"] == 0.0 and out["video"]["rougeLsum"] == 0.0
    row = flatten(out)
    assert set(row) == {f"{lv}/{k}" for lv in ("clip", "video") for k in ("CIDEr", "METEOR", "ROUGE_L", "rougeLsum")}
    assert all(math.isfinite(v) for v in row.values())


def test_errors():
    with pytest.raises(UserError, match="no prediction"):
        score_level({"a": "x"}, {}, tokenize=False)
    with pytest.raises(UserError, match="levels"):
        score_hierarchy({"scene": ({"a": "x"}, {"a": "x"})})
