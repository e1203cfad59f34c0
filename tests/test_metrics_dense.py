"""Dense-captioning evaluation: tIoU, P/R/F1, the junk reference, per-video scoring and SODA_c, worked by
hand; plus a seeded case checked against numbers produced by the official densevid_eval3 + SODA code.
"""
from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest

from metrics.captions import shared_meteor
from metrics.dense import (
    JUNK_REFERENCE,
    evaluate_dense,
    main,
    parse_references,
    read_predictions,
    results_document,
    soda_dp,
    soda_prf,
    tiou,
    tiou_matrix,
    write_predictions,
)
from vidmem.common import UserError

CAPTION_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


@pytest.fixture(scope="module")
def meteor():
    return shared_meteor()


def ref(*events: tuple[float, float, str]) -> dict:
    return {"duration": 100.0, "timestamps": [[s, e] for s, e, _ in events],
            "sentences": [t for _, _, t in events]}


def pred(*events: tuple[float, float, str]) -> list[dict]:
    return [{"timestamp": [s, e], "sentence": t} for s, e, t in events]


# ------------------------------------------------------------------------------------------------------- tIoU
def test_tiou_values():
    assert tiou([0, 10], [5, 15]) == pytest.approx(5 / 15)  # intersection 5, union 15
    assert tiou([0, 2], [5, 6]) == 0.0  # disjoint: min(hull 6, lengths 2+1) = 3, intersection 0
    # the 1e-8 in the denominator: an exact half overlap stays just below 0.5, identical just below 1
    assert tiou([0, 10], [0, 5]) == 5 / (10 + 1e-8) < 0.5
    assert tiou([3, 7], [3, 7]) < 1.0
    a = [(0, 10), (2, 3), (50, 60)]
    b = [(5, 15), (0, 1), (0, 100), (55, 56)]
    from metrics.dense import Segment

    m = tiou_matrix([Segment(s, e, "") for s, e in a], [Segment(s, e, "") for s, e in b])
    assert m.tolist() == [[tiou(x, y) for y in b] for x in a]  # bit-identical to the scalar version


# ------------------------------------------------------------------------------------------------- P / R / F1
def test_precision_recall_two_videos_two_reference_files():
    refs = [
        {"v1": ref((0, 10, "a"), (10, 20, "b"), (20, 30, "c")), "v2": ref((0, 4, "d"))},
        {"v1": ref((0, 30, "e")), "v2": ref((2, 6, "f"))},
    ]
    preds = {"v1": pred((0, 10, "x"), (10, 20, "y"), (0, 30, "z")), "v2": pred((0, 5, "w"))}
    # v1 tIoU (pred x event): file 1 -> p0 [1,0,0], p1 [0,1,0], p2 [1/3,1/3,1/3];
    #                         file 2 -> p0 1/3, p1 1/3, p2 1
    # v2: file 1 [0,5] vs [0,4] = 4/5; file 2 [0,5] vs [2,6] = 3/6 (just below 0.5)
    # detection uses tIoU > t; best P and best R over the files, each on its own:
    #   t=0.3: v1 P=R=1 (file 1);           v2 P=R=1       -> P 1,   R 1
    #   t=0.5: v1 P=2/3 (file 1), R=1 (f 2); v2 P=R=1       -> P 5/6, R 1
    #   t=0.7: same as 0.5                                   -> P 5/6, R 1
    #   t=0.9: v1 P=2/3, R=1;                v2 0.8 < 0.9: 0 -> P 1/3, R 1/2
    got = evaluate_dense(preds, refs, captions=False, soda=False)
    want_p = {"0.3": 1.0, "0.5": 5 / 6, "0.7": 5 / 6, "0.9": 1 / 3}
    want_r = {"0.3": 1.0, "0.5": 1.0, "0.7": 1.0, "0.9": 0.5}
    for t in want_p:
        assert got["per_tiou"][t]["Precision"] == pytest.approx(want_p[t])
        assert got["per_tiou"][t]["Recall"] == pytest.approx(want_r[t])
    assert got["per_tiou"]["0.5"]["F1"] == pytest.approx(2 * (5 / 6) / (5 / 6 + 1))
    p, r = (1 + 5 / 6 + 5 / 6 + 1 / 3) / 4, (1 + 1 + 1 + 0.5) / 4  # 0.75, 0.875
    assert (got["Precision"], got["Recall"]) == pytest.approx((p, r))
    assert got["F1"] == pytest.approx(2 * p * r / (p + r))  # F1 of the averages, 0.8077
    assert "METEOR" not in got and "SODA_c" not in got
    single = evaluate_dense(preds, refs[0], captions=False, soda=False)  # one reference file, not in a list
    assert single["per_tiou"]["0.9"]["Recall"] == pytest.approx(1 / 3)  # v1 2/3, v2 0


# --------------------------------------------------------------------------------------------------- captions
GUITAR = "a man plays a guitar"
SONG = "a woman sings a song loudly"


def test_junk_reference_for_unmatched_predictions(meteor):
    refs = [{"v": ref((0, 10, GUITAR), (10, 20, SONG))}]
    exact = pred((0, 10, GUITAR), (10, 20, SONG))
    clean = evaluate_dense({"v": exact}, refs, meteor=meteor)
    # every threshold: two identical pairs -> BLEU 1, METEOR 1, ROUGE-L 1; CIDEr-D: "a" is in both pairs'
    # references (idf log(2/2) = 0), every other n-gram has idf log 2, all cosines 1 -> 10
    assert {k: clean[k] for k in CAPTION_KEYS} == pytest.approx(
        {"Bleu_1": 1, "Bleu_2": 1, "Bleu_3": 1, "Bleu_4": 1, "METEOR": 1, "ROUGE_L": 1, "CIDEr": 10},
        rel=1e-6)

    junk = evaluate_dense({"v": exact + pred((50, 60, "a dog runs"))}, refs, meteor=meteor)
    # the third prediction overlaps nothing, so it is scored against the junk reference "abc123!@#" (1 token):
    # BLEU: 1-grams 11 of 5+6+3 = 14 hit, reference length 5+6+1 = 12 < 14 -> no brevity penalty;
    #       2-grams 9 of 4+5+2 = 11; 3-grams 7 of 3+4+1 = 8; 4-grams 5 of 2+3+0 = 5
    # ROUGE-L: mean of 1, 1, 0; CIDEr-D: 3 pairs, cosines 1, 1, 0 -> 10 * 2/3
    want = {"Bleu_1": 11 / 14, "Bleu_2": (11 / 14 * 9 / 11) ** 0.5,
            "Bleu_3": (11 / 14 * 9 / 11 * 7 / 8) ** (1 / 3),
            "Bleu_4": (11 / 14 * 9 / 11 * 7 / 8 * 5 / 5) ** 0.25, "ROUGE_L": 2 / 3, "CIDEr": 20 / 3}
    assert {k: junk[k] for k in want} == pytest.approx(want, rel=1e-6)
    assert all(junk[k] < clean[k] for k in CAPTION_KEYS)  # METEOR too
    assert (junk["Precision"], junk["Recall"]) == pytest.approx((2 / 3, 1.0))
    # the unmatched prediction beyond max_proposals is not seen at all
    capped = evaluate_dense({"v": exact + pred((50, 60, "a dog runs"))}, refs, max_proposals=2, meteor=meteor)
    assert {k: capped[k] for k in CAPTION_KEYS} == pytest.approx({k: clean[k] for k in CAPTION_KEYS})
    assert JUNK_REFERENCE == "abc123!@#"


def test_meteor_2021_uses_a_seeded_random_junk_string_per_unmatched_prediction(meteor):
    """evaluate2021 differs from evaluate2018 only in the junk reference: a random string of 10-20 lowercase
    letters per unmatched prediction. Groups without junk pairs score the same in both."""
    refs = [{"v": ref((0, 10, GUITAR), (10, 20, SONG))}]
    exact = pred((0, 10, GUITAR), (10, 20, SONG))
    clean = evaluate_dense({"v": exact}, refs, meteor=meteor, tious=[0.5])
    assert clean["METEOR_2021"] == clean["METEOR"] == pytest.approx(1.0)
    odd = pred((50, 60, "a dog runs quickly"))
    got = evaluate_dense({"v": exact + odd}, refs, meteor=meteor, tious=[0.5], junk_seed=7)
    # by hand: the one junk pair of the only (threshold, video) group gets the first draw of Random(7)
    rng = random.Random(7)
    junk = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(10, 20)))
    assert 10 <= len(junk) <= 20 and junk.isalpha() and junk.islower()
    pairs = [(GUITAR, [GUITAR]), (SONG, [SONG]), ("a dog runs quickly", [junk])]
    want_2021 = meteor.score_groups([pairs])[0][0]
    pairs_2018 = [(GUITAR, [GUITAR]), (SONG, [SONG]), ("a dog runs quickly", [JUNK_REFERENCE])]
    want_2018 = meteor.score_groups([pairs_2018])[0][0]
    assert got["METEOR_2021"] == pytest.approx(want_2021)
    assert got["METEOR"] == pytest.approx(want_2018)
    assert got["METEOR_2021"] < clean["METEOR_2021"]
    # METEOR's own normalisation splits "abc123!@#" into several tokens (a longer reference, lower recall), the
    # random string stays one token: 2021 scores higher here, as the published 2018/2021 pairs do
    assert got["METEOR_2021"] > got["METEOR"]
    # reproducible for a seed
    again = evaluate_dense({"v": exact + odd}, refs, meteor=meteor, tious=[0.5], junk_seed=7)
    assert again["METEOR_2021"] == got["METEOR_2021"]


def test_videos_without_predictions_score_zero_and_cider_idf_is_per_video(meteor):
    refs = [{"v1": ref((0, 10, GUITAR), (10, 20, SONG)), "v2": ref((0, 10, "a dog runs")),
             "v3": ref((5, 9, "a cat sleeps on a sofa"))}]
    preds = {"v1": pred((0, 10, GUITAR), (10, 20, SONG)), "v3": pred((5, 9, "a cat sleeps on a sofa"))}
    got = evaluate_dense(preds, refs, meteor=meteor)
    # v1 perfect (CIDEr 10, see above); v2 no prediction -> 0; v3 perfect, but its only pair makes its own
    # corpus: one reference holding every n-gram -> idf log(1/1) = 0 -> CIDEr 0. Means over the 3 GT videos.
    for t in ("0.3", "0.5", "0.7", "0.9"):
        assert got["per_tiou"][t]["METEOR"] == pytest.approx(2 / 3)
        assert got["per_tiou"][t]["Bleu_4"] == pytest.approx(2 / 3, rel=1e-6)
        assert got["per_tiou"][t]["CIDEr"] == pytest.approx(10 / 3)
        assert got["per_tiou"][t]["Recall"] == pytest.approx(2 / 3)
    assert (got["n_videos"], got["n_videos_predicted"], got["n_predictions"]) == (3, 2, 3)
    # SODA (as the official code) averages only the videos that have predictions
    assert got["SODA_c"] == pytest.approx(1.0)


def test_non_ascii_becomes_space(meteor):
    got = evaluate_dense({"v": pred((0, 10, "a man plays a guitar café"))},
                         [{"v": ref((0, 10, "a man plays a guitar caf"))}], soda=False, meteor=meteor)
    assert got["METEOR"] == 1.0 and got["Bleu_4"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------------- SODA_c
def test_soda_dp_order_preserving_differs_from_greedy():
    s = np.array([[0.1, 0.0, 0.9],
                  [0.8, 0.0, 0.0],
                  [0.0, 0.7, 0.0]])  # rows: events by start, columns: predictions by start
    # greedy takes 0.9 (event 0 -> prediction 2) and then no later prediction is left: 0.9;
    # an unordered assignment would take 0.9 + 0.8 + 0.7 = 2.4 (crossing);
    # order-preserving: event 1 -> pred 0 (0.8) then event 2 -> pred 1 (0.7) = 1.5
    assert soda_dp(s) == pytest.approx(1.5)
    p, r, f = soda_prf(np.ones((3, 3)), s)  # injected IoU x METEOR factors for the unit test only
    assert (p, r, f) == pytest.approx((0.5, 0.5, 0.5))
    assert soda_prf(np.ones((2, 0)), np.ones((2, 0))) == (0.0, 0.0, 0.0)


def _brute_force(s: np.ndarray) -> float:
    m, n = s.shape
    best = 0.0
    for k in range(1, min(m, n) + 1):
        for rows in itertools.combinations(range(m), k):
            for cols in itertools.combinations(range(n), k):
                best = max(best, sum(s[i, j] for i, j in zip(rows, cols)))
    return best


def test_soda_dp_equals_brute_force():
    rng = np.random.default_rng(0)
    for m, n in [(1, 1), (1, 4), (3, 2), (4, 4), (5, 3), (2, 6)]:
        s = rng.random((m, n)) * (rng.random((m, n)) > 0.4)
        assert soda_dp(s) == pytest.approx(_brute_force(s))


def test_soda_c_is_one_for_perfect_predictions(meteor):
    events = [(30, 45, "the dog catches a red ball"), (0, 12, "a man throws a ball"),
              (12, 30, "the dog runs")]
    refs = [{"v": ref(*events)}]
    preds = {"v": pred(*reversed(events))}  # any order: both sides are sorted by start
    got = evaluate_dense(preds, refs, meteor=meteor)
    assert got["SODA_c"] == pytest.approx(1.0, abs=1e-6)
    # SODA's own -mr mode leaves the events in file order (30-45, 0-12, 12-30) while predictions are sorted
    # (0-12, 12-30, 30-45): the best order-preserving matching keeps 2 of 3 -> P = R = F = 2/3
    assert got["SODA_c_best_ref"] == pytest.approx(2 / 3, abs=1e-6)
    in_order = evaluate_dense(preds, [{"v": ref(*sorted(events))}], captions=False, meteor=meteor)
    assert in_order["SODA_c_best_ref"] == pytest.approx(1.0, abs=1e-6)


def test_soda_mean_over_reference_files_vs_best_reference(meteor):
    events = [(0, 10, GUITAR), (10, 20, SONG)]
    refs = [{"v": ref(*events)}, {"v": ref((0, 10, "snow falls quietly"), (10, 20, "an old car rusts"))}]
    got = evaluate_dense({"v": pred(*events)}, refs, meteor=meteor)
    # file 1: S = 2 pairs x (IoU ~1 x METEOR 1) -> F = 1; file 2: METEOR 0 for every pair -> F = 0
    assert got["SODA_c"] == pytest.approx(0.5, abs=1e-6)  # PDVC: mean of the files
    assert got["SODA_c_best_ref"] == pytest.approx(1.0, abs=1e-6)  # SODA -mr: best file per video
    assert [r["f1"] for r in got["soda"]["per_reference"]] == pytest.approx([1.0, 0.0], abs=1e-6)


# -------------------------------------------------------------------------------------------- official parity
WORDS = ("a the man woman dog cat runs plays guitar ball red blue jumps into water slowly quickly "
         "person kitchen cuts onion shows camera talks").split()


def synthetic_case(seed: int = 7, n_videos: int = 12) -> tuple[list[dict], dict]:
    """Seeded references (2 files) and predictions; only rng.random(), whose stream Python keeps stable."""
    rng = random.Random(seed)

    def pick(seq):
        return seq[int(rng.random() * len(seq))]

    def sentence():
        s = " ".join(pick(WORDS) for _ in range(3 + int(rng.random() * 8)))
        r = rng.random()
        if r < 0.2:
            return s.capitalize() + "."
        return s + ", then " + pick(WORDS) + " café!" if r < 0.3 else s

    def interval(dur):
        s = round(rng.random() * (dur - 5), 2)
        return [s, round(s + 1 + rng.random() * (dur - s - 1), 2)]

    refs, preds = [{}, {}], {}
    for v in range(n_videos):
        vid = f"v_{v:03d}"
        dur = round(20 + rng.random() * 100, 2)
        for f in range(2):
            if v % 5 == f:
                continue
            ts = [interval(dur) for _ in range(1 + int(rng.random() * 5))]
            refs[f][vid] = {"duration": dur, "timestamps": ts, "sentences": [sentence() for _ in ts]}
        if v % 6 == 4:
            continue
        src = refs[0].get(vid) or refs[1][vid]
        out = []
        for (s, e), text in zip(src["timestamps"], src["sentences"]):
            if rng.random() < 0.7:
                out.append({"timestamp": [round(max(0.0, s + 6 * rng.random() - 3), 2),
                                          round(e + 6 * rng.random() - 3, 2)],
                            "sentence": text if rng.random() < 0.4 else sentence()})
        extra = (not out) + int(rng.random() * 3)  # at least one: the official code fails on an empty list
        out += [{"timestamp": interval(dur), "sentence": sentence()} for _ in range(extra)]
        preds[vid] = sorted(out, key=lambda _: rng.random())
    return refs, preds


# densevid_eval3/evaluate2018.py (PDVC @0b025c8) and SODA @9cb3e2c via PDVC's eval_soda, on synthetic_case()
OFFICIAL = {
    "Bleu_1": 0.15365591850415808, "Bleu_2": 0.10433485793166881, "Bleu_3": 0.1039455929406561,
    "Bleu_4": 0.10680200895340436, "METEOR": 0.09891435888231906, "ROUGE_L": 0.1380973047418299,
    "CIDEr": 0.9569055470384145, "Recall": 0.39166666666666666, "Precision": 0.41006944444444443,
    "SODA_c": 0.12164297012848412,
    "SODA_c_best_ref": 0.15266794012904963,  # SODA's own `-mr` mode
}
OFFICIAL_PER_TIOU = {
    "METEOR": [0.1035832191088789, 0.10434835903543209, 0.15240359567272024, 0.035322261712245014],
    "CIDEr": [1.0453632678154305, 1.1403161128353363, 1.4333408790715116, 0.20860192843137967],
    "Precision": [0.625, 0.5111111111111112, 0.37638888888888894, 0.12777777777777777],
}


def test_matches_official_evaluators_on_a_seeded_case(meteor, tmp_path):
    refs, preds = synthetic_case()
    paths = []
    for i, r in enumerate(refs):
        paths.append(tmp_path / f"val_{i + 1}.json")
        paths[-1].write_text(json.dumps(r))
    sub = tmp_path / "results.json"
    write_predictions(sub, preds)
    got = evaluate_dense(sub, paths, meteor=meteor)
    assert {k: got[k] for k in OFFICIAL} == pytest.approx(OFFICIAL, rel=1e-9)
    for k, values in OFFICIAL_PER_TIOU.items():
        per_tiou = [got["per_tiou"][t][k] for t in ("0.3", "0.5", "0.7", "0.9")]
        assert per_tiou == pytest.approx(values, rel=1e-9)
    assert got["n_videos"] == 12 and got["n_videos_predicted"] == 10


# ------------------------------------------------------------------------------------------------------ files
def test_write_and_read_predictions(tmp_path):
    results = {"v1": pred((0.5, 3, "a dog runs")), "v2": []}
    results["v1"][0]["proposal_score"] = 0.9
    path = tmp_path / "out" / "results.json"
    write_predictions(path, results)
    doc = json.loads(path.read_text())
    assert doc == {"version": "VERSION 1.0", "results": results,
                   "external_data": {"used": False, "details": ""}}
    assert read_predictions(path) == results


@pytest.mark.parametrize("doc, message", [
    ({"version": "VERSION 1.0"}, r"expected an object with 'results'"),
    ({"results": []}, r"field 'results': expected an object"),
    ({"results": {"v1": {"timestamp": [0, 1]}}}, r"video 'v1': expected a list of predictions"),
    ({"results": {"v1": [{"sentence": "x"}]}}, r"video 'v1': entry 0: missing field 'timestamp'"),
    ({"results": {"v1": [{"timestamp": [0, 1], "sentence": "x"}, {"timestamp": [2], "sentence": "y"}]}},
     r"video 'v1': entry 1: field 'timestamp': expected \[start, end\]"),
    ({"results": {"v1": [{"timestamp": [0, "1"], "sentence": "x"}]}}, r"entry 0: field 'timestamp'"),
    ({"results": {"v1": [{"timestamp": [0, 1], "sentence": None}]}}, r"entry 0: field 'sentence'"),
])
def test_malformed_prediction_file_is_a_clear_error(tmp_path, doc, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=message) as e:
        read_predictions(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_not_json_and_bad_references_are_clear_errors(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"results": {')
    with pytest.raises(UserError, match="broken.json: malformed JSON"):
        read_predictions(path)
    with pytest.raises(UserError, match=r"val_1.json: video 'v': field 'sentences': expected a list as long"):
        parse_references({"v": {"timestamps": [[0, 1], [1, 2]], "sentences": ["x"]}}, "val_1.json")
    with pytest.raises(UserError, match=r"val_1.json: video 'v': field 'timestamps': expected a non-empty"):
        parse_references({"v": {"timestamps": [], "sentences": []}}, "val_1.json")
    with pytest.raises(UserError, match=r"video 'v': event 0: field 'timestamps'"):
        parse_references({"v": {"timestamps": [[0, math.nan]], "sentences": ["x"]}}, "val_1.json")
    with pytest.raises(UserError):
        results_document({"v": [{"timestamp": [0, 1]}]})  # refuses to write what it cannot read back


def test_command_line(tmp_path, meteor):
    (tmp_path / "val_1.json").write_text(json.dumps({"v": ref((0, 10, GUITAR))}))
    write_predictions(tmp_path / "results.json", {"v": pred((0, 10, GUITAR))})
    main([str(tmp_path / "results.json"), str(tmp_path / "val_1.json"), "--tious", "0.5", "-o",
          str(tmp_path / "scores.json")])
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["tious"] == [0.5] and scores["METEOR"] == 1.0 and scores["Recall"] == 1.0
