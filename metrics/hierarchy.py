"""Hierarchical caption scores (Video ReCap): CIDEr, ROUGE-L, METEOR per level, plus ReCap's `rougeLsum`.

Each level (clip / segment / video) is one corpus of (one reference, one prediction) per key, scored with the
project's pycocoevalcap path (`metrics.captions`: PTB tokenisation, CIDEr-D with IDF from that level's
references, METEOR 1.5, ROUGE-L as the mean per-key F, β = 1.2). Video ReCap's own evaluator (nlg-eval) skips
PTB and splits on whitespace; its ROUGE is not pycocoevalcap's ROUGE-L but HF `evaluate`'s `rougeLsum`
(Google `rouge_score`, no stemmer, β = 1 F-measure, mean over keys). We report that number too, computed
with `rouge_score` directly (the bootstrap aggregator's mid value of a mean is the mean; we take the mean
without resampling so the score does not depend on a random draw).

Which number compares to the paper: CIDEr and METEOR (the same scorers; tokenisation differs only in
punctuation handling), and `rougeLsum` for the paper's "ROUGE-L" column. All are fractions (×100 for the
paper's tables).
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from metrics.captions import score_captions
from vidmem.common import UserError

LEVELS = ("clip", "segment", "video")
COCO_METRICS = ("METEOR", "ROUGE_L", "CIDEr")


def rouge_lsum(refs: Mapping[Hashable, str], preds: Mapping[Hashable, str]) -> float:
    """Mean `rougeLsum` F1 (rouge_score, no stemmer) of one prediction against one reference per key.

    rougeLsum splits each text into "sentences" at newlines only (HF evaluate passes the strings as given,
    so a one-line caption is one sentence and rougeLsum equals rougeL); tokens are rouge_score's
    (lower-cased, non-alphanumerics replaced by spaces).
    """
    from rouge_score import rouge_scorer

    if set(refs) != set(preds):
        raise UserError("rougeLsum: predictions and references differ in keys")
    if not refs:
        raise UserError("rougeLsum: cannot score an empty set of captions")
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=False)
    total = sum(scorer.score(refs[k], preds[k])["rougeLsum"].fmeasure for k in refs)
    return total / len(refs)


def score_level(refs: Mapping[Hashable, str], preds: Mapping[Hashable, str], *, tokenize: bool = True,
                level: str = "captions") -> dict[str, Any]:
    """{CIDEr, METEOR, ROUGE_L, rougeLsum, n} of one level (one reference per key)."""
    missing = [k for k in refs if k not in preds]
    if missing:
        raise UserError(f"{level}: no prediction for {missing[:5]}")
    preds = {k: preds[k] for k in refs}
    coco = score_captions({k: [r] for k, r in refs.items()}, preds, COCO_METRICS, tokenize=tokenize,
                          source=level)
    return {"CIDEr": coco["CIDEr"], "METEOR": coco["METEOR"], "ROUGE_L": coco["ROUGE_L"],
            "rougeLsum": rouge_lsum(refs, preds), "n": len(refs)}


def score_hierarchy(levels: Mapping[str, tuple[Mapping[Hashable, str], Mapping[Hashable, str]]],
                    **kwargs) -> dict[str, dict[str, Any]]:
    """{level: scores} for each given level's (refs, preds); levels outside clip/segment/video are errors."""
    unknown = [lv for lv in levels if lv not in LEVELS]
    if unknown:
        raise UserError(f"hierarchy levels must be among {list(LEVELS)}, got {unknown}")
    return {lv: score_level(r, p, level=lv, **kwargs) for lv, (r, p) in levels.items()}


def flatten(scores: Mapping[str, Mapping[str, Any]], keys: Sequence[str] = ("CIDEr", "METEOR", "ROUGE_L",
                                                                          "rougeLsum")) -> dict[str, float]:
    """{'<level>/<metric>': value}: one flat row per model for metrics JSON."""
    return {f"{lv}/{k}": float(s[k]) for lv, s in scores.items() for k in keys if k in s}
