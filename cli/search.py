"""`vidmem search INDEX "a sentence"` (or `--audio query.wav`): ranked videos, and ranked moments inside them.

Text: EMCL ranks every indexed video (`train@emcl`'s model on the index's clip features and the sentence's
CLIP text features, the retrieval task's own similarity); MRNet (`train@mrnet`) then ranks moments inside the
top videos. Speech: the spoken-query grounding model (`train@mrnet_speech`, log-mel frames) scores moments in
every video, and a video ranks by its best moment (EMCL reads text only).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cli.index import IndexedFeatures, batch_paths, display_name, open_index
from cli.project import Project, with_data
from vidmem.common import UserError

log = logging.getLogger("vidmem.cli")


def encoder_root(index: Path, project: Project, catalog) -> Path:
    """A root whose data/checkpoints/encoders/clip/best.pt is the CLIP checkpoint the index was built with
    (`build_extractor` reads it there), refusing a different one: the index's features would not match."""
    from vidmem.common import file_hash

    ckpt = project.clip_checkpoint()
    if catalog.encoder.get("clip_checkpoint_sha256") not in (None, file_hash(ckpt)):
        raise UserError(
            f"{index}: built with another CLIP checkpoint than {ckpt}; rebuild it with "
            f"`vidmem index FOLDER --out {index}`"
        )
    root = index / "encoder"
    link = batch_paths(index, "x").clip_checkpoint.relative_to(index / "batches" / "x")
    target = root / link
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(ckpt.resolve())
    return root


def text_features(project: Project, root: Path, params: dict, sentence: str) -> dict[str, np.ndarray]:
    """The sentence's CLIP text features, as extract@text stores them (sentence vector, tokens, n_tokens)."""
    from models.encoders.extract import build_extractor

    extractor, _ = build_extractor("text", params, root)
    return extractor.compute_many([sentence])[0]


def speech_features(extractor, wav: Path) -> np.ndarray:
    """Log-mel frames of a spoken query, as extract@audio computes them, from any audio file ffmpeg reads: a
    mono 16-bit WAV at another rate goes through SynthVid's own resampler (how the training queries were
    made), anything else through ffmpeg to a 16-bit mono WAV at the model's rate."""
    import subprocess
    import tempfile
    import wave

    from models.encoders.audio import AudioError
    from vidmem.synth.speech import read_wav, resample, write_wav
    from vidmem.video import FFMPEG, stderr_tail

    if not wav.is_file():
        raise UserError(f"--audio {wav}: no such file")
    rate = extractor.cfg.sample_rate
    with tempfile.TemporaryDirectory() as tmp:
        path = wav
        try:
            samples, sr = read_wav(wav)
            if sr != rate:
                path = Path(tmp) / "query.wav"
                write_wav(path, resample(samples, sr, rate), rate)
        except (ValueError, wave.Error, EOFError, OSError):
            path = Path(tmp) / "query.wav"
            proc = subprocess.run(
                [
                    FFMPEG,
                    "-nostdin",
                    "-hide_banner",
                    "-v",
                    "error",
                    "-i",
                    f"file:{wav}",
                    "-vn",
                    "-ac",
                    "1",
                    "-ar",
                    str(rate),
                    "-c:a",
                    "pcm_s16le",
                    "-f",
                    "wav",
                    str(path),
                ],
                capture_output=True,
            )
            if proc.returncode != 0:
                raise UserError(f"--audio {wav}: ffmpeg cannot read it: {stderr_tail(proc.stderr)}") from None
        try:
            return extractor.compute(path)["mel"].astype(np.float32)
        except AudioError as e:
            raise UserError(f"--audio {wav}: {e.reason}") from None


def rank_videos(project: Project, index: Path, catalog, sentence: str, text: dict[str, np.ndarray]) -> list:
    """[(video id, EMCL similarity)] for every indexed video, best first."""
    from models.retrieval.data import Split, StoredFrames, StoredTexts
    from vidmem.manifest import Manifest

    task, ckpt = project.task("emcl")
    c = task.config
    if c.towers != "features":
        raise UserError(
            f"{project.checkpoint('emcl')[1]}: trained end to end (towers: {c.towers}); vidmem search "
            f"ranks with models on the stored CLIP features (towers: features)"
        )
    feats = IndexedFeatures(index, catalog, "clip")
    vids = [v for v in catalog.videos if v in feats]
    frames: dict[str, np.ndarray] = {}
    by_store: dict[int, tuple[Any, list[str]]] = {}
    for v in vids:
        store = feats.store_of(v)
        by_store.setdefault(id(store), (store, []))[1].append(v)
    for store, group in by_store.values():
        frames.update(StoredFrames(store, group, c.max_frames).feats)
    n = int(min(int(text["n_tokens"][0]), c.max_words))
    texts = StoredTexts.from_arrays(
        {sentence: np.asarray(text["tokens"][0, : c.max_words], np.float32)},
        {sentence: np.asarray(text["sentence"][0], np.float32)},
        {sentence: n},
    )
    task = with_data(
        task, manifest=Manifest(), loaded={"query": (texts, StoredFrames.from_arrays(frames, c.max_frames))}
    )
    model = task.restore(ckpt)
    # one row (the query) against every indexed video; the task's split table is filled in directly
    task._splits["query"] = Split(["query"], [sentence], [0], vids, [[0]] + [[] for _ in vids[1:]])
    sim = task.similarity(model, "query")[0]
    order = np.argsort(-sim, kind="stable")
    return [(vids[i], float(sim[i])) for i in order]


def moments(
    project: Project,
    key: str,
    index: Path,
    catalog,
    vids: list[str],
    query_key: str,
    query_row: tuple[np.ndarray, ...],
) -> dict[str, list[list[float]]]:
    """Per video its ranked [start, end, score] moments for one query (the grounding task's predict)."""
    from models.grounding.data import QueryFeatures, QueryItem, VideoItem, prepare_clips

    task, ckpt = project.task(key)
    feats = IndexedFeatures(index, catalog, "clip")
    items = []
    for v in vids:
        dur = float(catalog.videos[v]["duration"])
        items.append(
            VideoItem(
                v,
                dur,
                prepare_clips(feats.get(v), task.config.pre_clips),
                [QueryItem(v, 0, query_key, 0.0, dur, key=query_key)],
            )
        )
    task = with_data(task, splits={"query": items}, queries=QueryFeatures({query_key: query_row}))
    model = task.restore(ckpt)
    return {row["vid"]: row["pred_relevant_windows"] for row in task.predict(model, "query")}


def run(args) -> int:
    if (args.sentence is None) == (args.audio is None):
        raise UserError(
            'give a sentence or --audio query.wav (one of them): vidmem search INDEX "a sentence"'
        )
    index = Path(args.index)
    catalog = open_index(index)
    if not catalog.videos:
        raise UserError(
            f"{index}: the index has no videos; add some with `vidmem index FOLDER --out {index}`"
        )
    project = Project.open(args.project, overrides=vars(args))
    keys = ("emcl", "mrnet") if args.audio is None else ("mrnet_speech",)
    for key in keys:
        project.require(key)
    for key in keys:
        project.task(key)  # loads and checks it (kept for the run)
    params = project.extract_params(project.clip_checkpoint())
    if args.audio is None:
        root = encoder_root(index, project, catalog)
        text = text_features(project, root, params, args.sentence)
        ranked = rank_videos(project, index, catalog, args.sentence, text)[: args.top]
        found = moments(
            project,
            "mrnet",
            index,
            catalog,
            [v for v, _ in ranked],
            args.sentence,
            (
                np.asarray(text["sentence"][0], np.float32),
                np.asarray(text["tokens"][0], np.float32),
                int(text["n_tokens"][0]),
            ),
        )
        query: dict[str, Any] = {"text": args.sentence}
        ranker = "emcl"
    else:
        from models.encoders.extract import build_extractor

        wav = Path(args.audio)
        extractor, _ = build_extractor("audio", params, project.root)
        mel = speech_features(extractor, wav)
        found = moments(project, "mrnet_speech", index, catalog, list(catalog.videos), "query", (mel,))
        ranked = sorted(
            ((v, float(w[0][2]) if w else float("-inf")) for v, w in found.items()), key=lambda x: -x[1]
        )[: args.top]
        query = {"audio": str(wav)}
        ranker = "mrnet_speech (best moment)"
    rows = [
        {
            "rank": i + 1,
            "video_id": v,
            "path": catalog.videos[v]["input"]["path"],
            "duration": catalog.videos[v]["duration"],
            "score": s,
            "moments": [{"start": a, "end": b, "score": c} for a, b, c in found.get(v, [])[: args.moments]],
        }
        for i, (v, s) in enumerate(ranked)
    ]
    doc = {
        "query": query,
        "index": str(index),
        "videos_ranked_by": ranker,
        "moments_by": "mrnet" if args.audio is None else "mrnet_speech",
        "results": rows,
    }
    print(json.dumps(doc, indent=2) if args.json else table(doc, catalog))
    return 0


def table(doc: dict[str, Any], catalog) -> str:
    q = doc["query"].get("text") or doc["query"].get("audio")
    lines = [
        f"query: {q}   ({len(catalog.videos)} videos; ranked by {doc['videos_ranked_by']}, "
        f"moments by {doc['moments_by']})",
        f"{'#':>3}  {'score':>7}  video / moments",
    ]
    for r in doc["results"]:
        lines.append(
            f"{r['rank']:>3}  {r['score']:>7.3f}  {display_name(catalog.videos[r['video_id']])}"
            f"  ({r['duration']:.1f} s)"
        )
        for m in r["moments"]:
            lines.append(f"{'':>14}{m['start']:8.1f} – {m['end']:7.1f} s   {m['score']:.3f}")
    return "\n".join(lines)
