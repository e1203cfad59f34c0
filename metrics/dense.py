"""Dense video captioning evaluation: densevid_eval (2018) captions and localisation, plus SODA_c.

Matches the evaluators behind published ActivityNet Captions / YouCook2 numbers (PDVC's `densevid_eval3`):

- tIoU is intersection / min(hull, len_a + len_b) with 1e-8 added to the denominator, so an overlap of
  exactly 0.5 scores 0.49999… and does not pass a 0.5 threshold.
- Captions at each tIoU t: every prediction is paired with every ground-truth event of every reference
  file with tIoU >= t; a prediction matching none is paired with the junk reference `abc123!@#`
  (`evaluate2018`). `METEOR_2021` is the same METEOR with `evaluate2021`'s junk instead: a random string of
  10–20 lowercase letters per unmatched prediction (drawn here from a seeded generator, `junk_seed`, so it is
  reproducible; the official script leaves it unseeded, and papers quote either value). Each video
  is scored on its own pairs (so CIDEr-D's IDF is per video), a ground-truth video without predictions
  scores 0, scores are averaged over ground-truth videos, then over thresholds.
- Precision / recall at t use tIoU > t: per video and reference file, recall = ground-truth events hit /
  events and precision = predictions hitting something / predictions; the best of the reference files
  (separately for P and R), mean over ground-truth videos, then over thresholds; F1 = 2PR/(P+R) of the
  means.
- SODA_c (fujiso/SODA @9cb3e2c as PDVC calls it): per reference file and video, predictions and events are
  sorted by start, the score of a (gt, prediction) pair is tIoU x METEOR (METEOR computed with the ground
  truth as hypothesis and the prediction as reference, as SODA's argument order does), and an
  order-preserving dynamic program finds the best total S; P = S/#pred, R = S/#gt, F = 2PR/(P+R). Only
  videos that have predictions are averaged (as SODA does). `SODA_c` is PDVC's: mean F per reference file,
  averaged over the files. `SODA_c_best_ref` is SODA's own multi-reference mode (`-mr`): per video the
  reference file with the best F, with the events left in file order as that mode leaves them.
- Non-ASCII characters become spaces before PTB tokenisation; at most `max_proposals` predictions per video
  are kept, in submission order (applied to SODA too; the challenge caps submissions at 1000 anyway).

Deviations, all on inputs the official code crashes on or mishandles: a video whose prediction list is
empty scores P = 0 (densevid reuses a stale loop variable there), SODA scores it 0; a reference file with
no predicted video contributes SODA 0 instead of NaN. Every METEOR score of one evaluation goes through two
JVM round trips and every caption is tokenised in one Java call, so ~200 videos take seconds.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import string
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from metrics.captions import BLEU_KEYS, Meteor, ptb_tokenize, score_corpora, shared_meteor
from vidmem.common import UserError, read_json, run_stage, write_json

log = logging.getLogger(__name__)

JUNK_REFERENCE = "abc123!@#"
DEFAULT_TIOUS = (0.3, 0.5, 0.7, 0.9)
RESULT_VERSION = "VERSION 1.0"
CAPTION_METRICS = (*BLEU_KEYS, "METEOR", "ROUGE_L", "CIDEr")


@dataclass(frozen=True)
class Segment:
    """One event (ground truth) or one prediction: seconds and its caption."""

    start: float
    end: float
    sentence: str


# ----------------------------------------------------------------------------------------------------- basics
def remove_nonascii(text: str) -> str:
    """densevid_eval's normalisation: every non-ASCII character becomes a space."""
    return "".join(c if ord(c) < 128 else " " for c in text)


def tiou(a: Sequence[float], b: Sequence[float]) -> float:
    """densevid_eval's temporal IoU of [start, end] intervals (see the module docstring)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = min(max(a[1], b[1]) - min(a[0], b[0]), (a[1] - a[0]) + (b[1] - b[0]))
    return inter / (union + 1e-8)


def tiou_matrix(a: Sequence[Segment], b: Sequence[Segment]) -> np.ndarray:
    """tIoU of every pair (len(a), len(b)), the same float64 arithmetic as `tiou`."""
    sa = np.array([s.start for s in a], dtype=np.float64)[:, None]
    ea = np.array([s.end for s in a], dtype=np.float64)[:, None]
    sb = np.array([s.start for s in b], dtype=np.float64)[None, :]
    eb = np.array([s.end for s in b], dtype=np.float64)[None, :]
    inter = np.maximum(0.0, np.minimum(ea, eb) - np.maximum(sa, sb))
    union = np.minimum(np.maximum(ea, eb) - np.minimum(sa, sb), (ea - sa) + (eb - sb))
    return (inter / (union + 1e-8)).reshape(len(a), len(b))


def soda_dp(scores: np.ndarray) -> float:
    """Best total score of an order-preserving one-to-one matching of rows to columns.

    dp[i, j] = max(dp[i-1, j], dp[i, j-1], dp[i-1, j-1] + scores[i, j]); scores are >= 0, so each row
    is a running maximum of the previous row's two candidates.
    """
    scores = np.asarray(scores, dtype=np.float64)
    m, n = scores.shape
    if m == 0 or n == 0:
        return 0.0
    prev = np.zeros(n + 1)
    for i in range(m):
        cand = np.maximum(prev[1:], prev[:-1] + scores[i])
        prev = np.concatenate(([0.0], np.maximum.accumulate(cand)))
    return float(prev[-1])


def soda_prf(iou: np.ndarray, meteor: np.ndarray) -> tuple[float, float, float]:
    """SODA_c of one video against one reference: (P, R, F) from (gt x pred) tIoU and METEOR matrices."""
    n_gt, n_pred = iou.shape
    if n_gt == 0 or n_pred == 0:
        return 0.0, 0.0, 0.0
    s = soda_dp(iou * meteor)
    p, r = s / n_pred, s / n_gt
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


# ---------------------------------------------------------------------------------------------------- formats
def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _interval(value: Any, where: str, field: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_is_number(v) for v in value):
        raise UserError(f"{where}: field '{field}': expected [start, end] in seconds (two finite numbers), "
                        f"got {value!r}")
    return float(value[0]), float(value[1])


def parse_predictions(obj: Any, source: str = "predictions") -> dict[str, list[Segment]]:
    """Validate an ActivityNet dense-captioning result (the whole document or its `results` dict)."""
    if not isinstance(obj, Mapping):
        raise UserError(f"{source}: expected an object with 'results' {{video id: [predictions]}}")
    if any(k in obj for k in ("results", "version", "external_data")):  # the whole document
        if "results" not in obj:
            raise UserError(f"{source}: expected an object with 'results' {{video id: [predictions]}}")
        obj = obj["results"]
        if not isinstance(obj, Mapping):
            raise UserError(f"{source}: field 'results': expected an object mapping video ids to predictions")
    out: dict[str, list[Segment]] = {}
    for vid, entries in obj.items():
        if not isinstance(entries, list):
            raise UserError(f"{source}: video {vid!r}: expected a list of predictions, "
                            f"got {type(entries).__name__}")
        segs = []
        for i, e in enumerate(entries):
            where = f"{source}: video {vid!r}: entry {i}"
            if not isinstance(e, Mapping):
                raise UserError(f"{where}: expected an object with 'timestamp' and 'sentence'")
            if "timestamp" not in e:
                raise UserError(f"{where}: missing field 'timestamp'")
            if not isinstance(e.get("sentence"), str):
                raise UserError(f"{where}: field 'sentence': expected a string, got {e.get('sentence')!r}")
            segs.append(Segment(*_interval(e["timestamp"], where, "timestamp"), e["sentence"]))
        out[str(vid)] = segs
    return out


def parse_references(obj: Any, source: str = "references") -> dict[str, list[Segment]]:
    """Validate one ActivityNet Captions reference dict {vid: {duration, timestamps, sentences}}."""
    if not isinstance(obj, Mapping) or not obj:
        raise UserError(f"{source}: expected a non-empty object {{video id: {{timestamps, sentences}}}}")
    out: dict[str, list[Segment]] = {}
    for vid, v in obj.items():
        where = f"{source}: video {vid!r}"
        if not isinstance(v, Mapping):
            raise UserError(f"{where}: expected an object with 'timestamps' and 'sentences'")
        ts, ss = v.get("timestamps"), v.get("sentences")
        if not isinstance(ts, list) or not ts:
            raise UserError(f"{where}: field 'timestamps': expected a non-empty list of [start, end]")
        if not isinstance(ss, list) or len(ss) != len(ts):
            raise UserError(f"{where}: field 'sentences': expected a list as long as 'timestamps' "
                            f"({len(ts)})")
        if "duration" in v and not _is_number(v["duration"]):
            raise UserError(f"{where}: field 'duration': expected a number of seconds, got {v['duration']!r}")
        segs = []
        for i, (t, s) in enumerate(zip(ts, ss)):
            if not isinstance(s, str):
                raise UserError(f"{where}: field 'sentences' entry {i}: expected a string, got {s!r}")
            segs.append(Segment(*_interval(t, f"{where}: event {i}", "timestamps"), s))
        out[str(vid)] = segs
    return out


def results_document(results: Mapping[str, Sequence[Mapping[str, Any]]], *, version: str = RESULT_VERSION,
                     external_data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The public ActivityNet dense-captioning result object around {vid: [{timestamp, sentence, ...}]}."""
    parse_predictions(dict(results), "results")  # refuse to write what we could not read back
    return {
        "version": version,
        "results": {vid: [dict(e) for e in entries] for vid, entries in results.items()},
        "external_data": dict(external_data) if external_data is not None else {"used": False, "details": ""},
    }


def write_predictions(path: str | os.PathLike, results: Mapping[str, Sequence[Mapping[str, Any]]], *,
                      version: str = RESULT_VERSION, external_data: Mapping[str, Any] | None = None) -> None:
    """Write predictions as a public result JSON file (atomically)."""
    write_json(path, results_document(results, version=version, external_data=external_data))


def read_predictions(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """Read a result JSON file back: the validated `results` dict (entries as written)."""
    doc = read_json(path)
    parse_predictions(doc, str(path))
    return doc["results"] if "results" in doc else doc


def _load(obj: Any) -> Any:
    """A path is read as JSON; anything else is already the parsed object."""
    return read_json(obj) if isinstance(obj, (str, os.PathLike)) else obj


# ------------------------------------------------------------------------------------------------- evaluation
def _detection(iou_by_ref: list[np.ndarray | None], n_pred: int, threshold: float) -> tuple[float, float]:
    """Best precision and best recall over the reference files that hold the video."""
    best_p = best_r = 0.0
    for iou in iou_by_ref:
        if iou is None:
            continue
        hit = iou > threshold  # (pred, gt)
        if n_pred:
            best_p = max(best_p, float(hit.any(axis=1).sum()) / n_pred)
        best_r = max(best_r, float(hit.any(axis=0).sum()) / iou.shape[1])
    return best_p, best_r


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def evaluate_dense(predictions: Any, references: Sequence[Any], tious: Sequence[float] = DEFAULT_TIOUS,
                   max_proposals: int = 1000, *, captions: bool = True, soda: bool = True,
                   meteor: Meteor | None = None, junk_seed: int = 0) -> dict[str, Any]:
    """Evaluate dense-captioning predictions against one or more reference files.

    `predictions`: the result document, its `results` dict, or a path to the JSON file. `references`: one
    entry per reference file (ActivityNet Captions dict or path), e.g. val_1 and val_2. Returns fractions
    (not percentages): threshold-averaged BLEU-1..4 / METEOR / ROUGE_L / CIDEr (CIDEr-D), Precision,
    Recall, F1, SODA_c and SODA_c_best_ref, METEOR_2021 (with `evaluate2021`'s random junk references,
    drawn from `random.Random(junk_seed)`), plus `per_tiou` and `soda` details and counts.
    """
    if not tious:
        raise UserError("dense evaluation: give at least one tIoU threshold")
    if isinstance(references, (Mapping, str, os.PathLike)):  # a single reference file
        references = [references]
    if not references:
        raise UserError("dense evaluation: give at least one reference file")
    pred_source = str(predictions) if isinstance(predictions, (str, os.PathLike)) else "predictions"
    preds = parse_predictions(_load(predictions), pred_source)
    refs = []
    for i, r in enumerate(references):
        src = str(r) if isinstance(r, (str, os.PathLike)) else f"references[{i}]"
        refs.append(parse_references(_load(r), src))
    preds = {vid: segs[:max_proposals] for vid, segs in preds.items()}
    gt_vids = sorted({vid for ref in refs for vid in ref})
    gt_set = set(gt_vids)
    unknown = [vid for vid in preds if vid not in gt_set]
    if unknown:
        log.warning("%d predicted videos are not in the references and are ignored (e.g. %s)",
                    len(unknown), unknown[0])
    missing = [vid for vid in gt_vids if vid not in preds]
    if missing:
        log.warning("%d of %d ground-truth videos have no predictions (they score 0)", len(missing),
                    len(gt_vids))
    no_pred: list[Segment] = []

    # tIoU of every prediction with every event, per reference file (None: the file lacks the video)
    ious = {vid: [tiou_matrix(preds.get(vid, no_pred), ref[vid]) if vid in ref else None for ref in refs]
            for vid in gt_vids}

    result: dict[str, Any] = {}
    per_tiou: dict[str, dict[str, float]] = {f"{t:g}": {} for t in tious}

    tokens: dict[str, str] = {}
    need_text = captions or soda
    if need_text:
        raw = {remove_nonascii(s.sentence) for vid in gt_vids for s in preds.get(vid, no_pred)}
        raw |= {remove_nonascii(s.sentence) for ref in refs for segs in ref.values() for s in segs}
        raw.add(JUNK_REFERENCE)
        raw_list = sorted(raw)
        tokens = dict(zip(raw_list, ptb_tokenize(raw_list)))

    def tok(text: str) -> str:
        return tokens[remove_nonascii(text)]

    meteor_groups: list[list[tuple[str, list[str]]]] = []
    # evaluate2021: the groups that hold a junk pair, again with a random lowercase junk string per pair
    # (the PTB tokenizer leaves such a string unchanged); groups without junk score as in 2018
    junk_rng = random.Random(junk_seed)
    groups_2021: list[tuple[int, list[tuple[str, list[str]]]]] = []

    def junk_2021() -> str:
        return "".join(junk_rng.choice(string.ascii_lowercase) for _ in range(junk_rng.randint(10, 20)))

    # captions: the pairs of every (threshold, video)
    corpora: list[tuple[float, str, dict[int, list[str]], dict[int, str]]] = []
    if captions:
        for t in tious:
            for vid in tqdm(gt_vids, desc=f"caption pairs @{t:g}", disable=None, leave=False):
                gts: dict[int, list[str]] = {}
                res: dict[int, str] = {}
                junk: set[int] = set()
                for p_idx, p in enumerate(preds.get(vid, no_pred)):
                    matched = False
                    for ref, iou in zip(refs, ious[vid]):
                        if iou is None:
                            continue
                        for g_idx in np.flatnonzero(iou[p_idx] >= t):
                            gts[len(gts)] = [tok(ref[vid][g_idx].sentence)]
                            res[len(res)] = tok(p.sentence)
                            matched = True
                    if not matched:
                        junk.add(len(gts))
                        gts[len(gts)] = [tokens[JUNK_REFERENCE]]
                        res[len(res)] = tok(p.sentence)
                if res:
                    corpora.append((t, vid, gts, res))
                    meteor_groups.append([(res[k], gts[k]) for k in res])
                    if junk:
                        groups_2021.append((len(corpora) - 1,
                                            [(res[k], [junk_2021()] if k in junk else gts[k]) for k in res]))

    # SODA: (gt, pred) pairs with positive tIoU need a METEOR score (gt as hypothesis, as SODA computes it)
    soda_cases: list[tuple[int, str, np.ndarray, list[tuple[int, int]], int]] = []
    soda_items: list[tuple[str, list[str]]] = []
    if soda:
        for f, ref in enumerate(refs):
            for vid in sorted(ref):
                if vid not in preds:
                    continue
                p_sorted = sorted(preds[vid], key=lambda s: s.start)
                iou = tiou_matrix(ref[vid], p_sorted)  # events in file order; rows are sorted later
                cells = [(int(i), int(j)) for i, j in zip(*np.nonzero(iou > 0))]
                soda_cases.append((f, vid, iou, cells, len(soda_items)))
                soda_items.extend((tok(ref[vid][i].sentence), [tok(p_sorted[j].sentence)]) for i, j in cells)

    n_caption_groups = len(meteor_groups)
    if soda_items:
        step = 500
        meteor_groups.extend(soda_items[i:i + step] for i in range(0, len(soda_items), step))
    n_before_2021 = len(meteor_groups)
    meteor_groups.extend(g for _, g in groups_2021)
    meteor_out: list[tuple[float, list[float]]] = []
    if meteor_groups:
        n_pairs = sum(len(g) for g in meteor_groups)
        log.info("METEOR: %d groups, %d pairs", len(meteor_groups), n_pairs)
        meteor_out = (meteor or shared_meteor()).score_groups(meteor_groups)

    # caption metrics per (threshold, video), averaged over ground-truth videos, then thresholds
    if captions:
        scored = score_corpora([(g, r) for _, _, g, r in corpora], ("Bleu", "ROUGE_L", "CIDEr"),
                               source="dense captions")
        meteor_2021 = [agg for agg, _ in meteor_out[:n_caption_groups]]
        for (c, _), (agg, _) in zip(groups_2021, meteor_out[n_before_2021:]):
            meteor_2021[c] = agg
        by_case = {}
        for (t, vid, _, _), sc, (agg, _), m21 in zip(corpora, scored, meteor_out[:n_caption_groups],
                                                     meteor_2021):
            by_case[(t, vid)] = {**sc.corpus, "METEOR": agg, "METEOR_2021": m21}
        for t in tious:
            for name in (*CAPTION_METRICS, "METEOR_2021"):
                per_tiou[f"{t:g}"][name] = float(np.mean(
                    [by_case[(t, vid)][name] if (t, vid) in by_case else 0.0 for vid in gt_vids]))
        for name in (*CAPTION_METRICS, "METEOR_2021"):
            result[name] = float(np.mean([per_tiou[f"{t:g}"][name] for t in tious]))

    # localisation
    for t in tious:
        pr = [_detection(ious[vid], len(preds.get(vid, no_pred)), t) for vid in gt_vids]
        p = float(np.mean([x[0] for x in pr]))
        r = float(np.mean([x[1] for x in pr]))
        per_tiou[f"{t:g}"].update(Precision=p, Recall=r, F1=_f1(p, r))
    result["Precision"] = float(np.mean([per_tiou[f"{t:g}"]["Precision"] for t in tious]))
    result["Recall"] = float(np.mean([per_tiou[f"{t:g}"]["Recall"] for t in tious]))
    result["F1"] = _f1(result["Precision"], result["Recall"])

    if soda:
        seg = [s for _, scores in meteor_out[n_caption_groups:n_before_2021] for s in scores]
        per_ref: list[dict[str, list[float]]] = [{"p": [], "r": [], "f": []} for _ in refs]
        per_video: dict[str, list[tuple[float, float, float]]] = {}
        for f, vid, iou, cells, offset in soda_cases:
            met = np.zeros_like(iou)
            for k, (i, j) in enumerate(cells):
                met[i, j] = seg[offset + k]
            order = sorted(range(len(refs[f][vid])), key=lambda i: refs[f][vid][i].start)
            prf = soda_prf(iou[order], met[order])  # PDVC: events sorted by start
            for key, v in zip("prf", prf):
                per_ref[f][key].append(v)
            per_video.setdefault(vid, []).append(soda_prf(iou, met))  # SODA -mr: events in file order
        ref_means = []
        for f, d in enumerate(per_ref):
            if not d["f"]:
                log.warning("SODA: no predicted video in reference file %d; it scores 0", f)
            ref_means.append({"precision": float(np.mean(d["p"])) if d["p"] else 0.0,
                              "recall": float(np.mean(d["r"])) if d["r"] else 0.0,
                              "f1": float(np.mean(d["f"])) if d["f"] else 0.0,
                              "n_videos": len(d["f"])})
        best = [max(v, key=lambda x: x[2]) for v in per_video.values()]
        best_ref = {"precision": float(np.mean([b[0] for b in best])) if best else 0.0,
                    "recall": float(np.mean([b[1] for b in best])) if best else 0.0,
                    "f1": float(np.mean([b[2] for b in best])) if best else 0.0,
                    "n_videos": len(best)}
        result["SODA_c"] = float(np.mean([m["f1"] for m in ref_means]))
        result["SODA_c_best_ref"] = best_ref["f1"]
        result["soda"] = {
            "precision": float(np.mean([m["precision"] for m in ref_means])),
            "recall": float(np.mean([m["recall"] for m in ref_means])),
            "f1": result["SODA_c"],
            "per_reference": ref_means,
            "best_ref": best_ref,
        }
    result["per_tiou"] = per_tiou
    result["tious"] = [float(t) for t in tious]
    result["n_videos"] = len(gt_vids)
    result["n_videos_predicted"] = len(gt_vids) - len(missing)
    result["n_predictions"] = sum(len(preds[vid]) for vid in gt_vids if vid in preds)
    return result


# -------------------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> None:
    """`python -m metrics.dense RESULT.json REF.json [REF.json ...]`: print (or write) the scores as JSON."""
    ap = argparse.ArgumentParser(prog="python -m metrics.dense", description=__doc__.split("\n")[0])
    ap.add_argument("submission", type=Path, help="result JSON in the ActivityNet dense-captioning format")
    ap.add_argument("references", type=Path, nargs="+", help="reference files (e.g. val_1.json val_2.json)")
    ap.add_argument("--tious", type=float, nargs="+", default=list(DEFAULT_TIOUS))
    ap.add_argument("--max-proposals", type=int, default=1000)
    ap.add_argument("--no-captions", action="store_true", help="localisation (and SODA) only")
    ap.add_argument("--no-soda", action="store_true")
    ap.add_argument("-o", "--output", type=Path, help="write the scores here instead of stdout")
    args = ap.parse_args(argv)
    scores = evaluate_dense(args.submission, args.references, args.tious, args.max_proposals,
                            captions=not args.no_captions, soda=not args.no_soda)
    if args.output:
        write_json(args.output, scores)
    else:
        json.dump(scores, sys.stdout, indent=2)
        sys.stdout.write("\n")


if __name__ == "__main__":
    run_stage(main)
