"""Open-ended video QA over a closed answer set (MSRVTT-QA, ClipBERT's protocol): accuracy, in percent, of
exact answer matches, overall and per question type when the questions carry one.

A question whose true answer is outside the closed set still counts (it can only be wrong), as ClipBERT
counts it. `python -m metrics.qa predictions.json qa.jsonl` scores a saved prediction file
(`[{"question_id", "answer"}]`) against the manifest's QA table (`qa_id`, `answer`) for the ids it holds.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any


def qa_metrics(predictions: Mapping[str, str], truth: Mapping[str, str],
               types: Mapping[str, str] | None = None) -> dict[str, Any]:
    """{accuracy, questions[, per_type: {type: {accuracy, questions}}]} of `predictions` {question id: answer}
    against `truth` {question id: answer}; every true question needs a prediction."""
    if not truth:
        raise ValueError("qa_metrics: no questions to score")
    missing = [q for q in truth if q not in predictions]
    if missing:
        raise ValueError(f"qa_metrics: no prediction for {len(missing)} question(s), e.g. {missing[0]!r}")
    right = {q: predictions[q] == a for q, a in truth.items()}
    out: dict[str, Any] = {"accuracy": 100.0 * sum(right.values()) / len(right), "questions": len(right)}
    if types:
        groups: dict[str, list[bool]] = {}
        for q, ok in right.items():
            groups.setdefault(str(types.get(q, "unknown")), []).append(ok)
        out["per_type"] = {t: {"accuracy": 100.0 * sum(v) / len(v), "questions": len(v)}
                           for t, v in sorted(groups.items())}
    return out


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m metrics.qa predictions.json qa.jsonl")
    preds = {str(p["question_id"]): str(p["answer"]) for p in json.loads(open(argv[0]).read())}
    rows = [json.loads(line) for line in open(argv[1]) if line.strip()]
    truth = {r["qa_id"]: r["answer"] for r in rows if r["qa_id"] in preds}
    types = {r["qa_id"]: r["answer_type"] for r in rows if r["qa_id"] in preds and "answer_type" in r}
    print(json.dumps(qa_metrics(preds, truth, types or None), indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
