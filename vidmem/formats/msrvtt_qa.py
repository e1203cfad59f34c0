"""MSRVTT-QA in the ClipBERT layout → `QA` rows, plus the closed answer set.

`{train,val,test}.jsonl`, one question per line:
    {"answer": "couch", "question": "what are three people sitting on?", "video_id": "video6513",
     "answer_type": "what"}
`train_ans2label.json`: the closed answer set, {answer: label index}. A train question whose answer lies
outside the set cannot be learned and is a bad entry; val/test questions keep such answers (they count as
wrong, as in ClipBERT's evaluation).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from vidmem.common import UserError
from vidmem.formats import checks
from vidmem.formats.base import Bad, Parsed, Source
from vidmem.formats.readers import load_json, read_jsonl
from vidmem.manifest import QA


def read_answers(src: Source) -> dict[str, int]:
    path = src.path("answers")
    file = src.display(path)
    data = load_json(path)
    if not isinstance(data, Mapping) or not data:
        raise UserError(f"{file}: expected a non-empty JSON object {{answer: label index}}")
    if getattr(data, "duplicates", None):
        raise UserError(f"{file}: answer '{data.duplicates[0][0]}' appears more than once")
    labels: dict[int, str] = {}
    for answer, label in data.items():
        if not isinstance(label, int) or isinstance(label, bool) or label < 0:
            raise UserError(f"{file}: answer '{answer}': label must be an index >= 0, got {label!r}")
        if label in labels:
            raise UserError(f"{file}: answers '{labels[label]}' and '{answer}' share the label {label}")
        labels[label] = answer
    return dict(data)


def parse_msrvtt_qa(src: Source) -> Parsed:
    out = Parsed(src)
    if not isinstance(src.split, str):
        raise UserError(f"params.yaml: ingest source '{src.name}': split must be one of train/val/test")
    answers = read_answers(src)
    answers_file = src.display(src.path("answers"))
    out.answers = answers
    path = src.path("file")
    file = src.display(path)
    for k, (lineno, item) in enumerate(read_jsonl(path)):
        entry = f"line {lineno}"
        try:
            if isinstance(item, json.JSONDecodeError):
                raise Bad("line", f"not valid JSON: {item.msg} at column {item.colno}")
            checks.mapping(item, "line")
            checks.no_duplicate_keys(item)
            vid = checks.ident(checks.key(item, "video_id"), "video_id")
            entry = f"line {lineno} (video '{vid}')"
            question = checks.text(checks.key(item, "question"), "question")
            answer = checks.key(item, "answer")
            answer = checks.text(str(answer) if isinstance(answer, int) else answer, "answer")
            if src.split == "train" and answer not in answers:
                raise Bad("answer", f"answer '{answer}' is not in the closed answer set {answers_file}")
        except Bad as bad:
            out.problem(file, entry, bad)
            continue
        out.video(vid)
        out.add(QA(f"{src.name}/{k}", vid, src.split, question, answer, file), file, entry)
    return out
