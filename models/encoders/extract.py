"""Feature extraction into the feature store: CLIP per frame, a TimeSformer per window, CLIP text per sentence.

Each extractor plans the store (item ids and row counts: frames, windows, or 1 per sentence) and computes a
requested range of an item's rows. Videos are decoded in bounded batches with a prefetch thread. Batches are
aligned to the item's start (rows [k·B, (k+1)·B)), and a range computes the aligned batches that cover it, so a
row's value is identical whichever process computes it, whatever range it was asked for, and whatever else is
in its shard — the store's resume and torchrun guarantees rest on that.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.encoders.audio import AudioConfig, AudioError, AudioExtractor
from models.encoders.clip import ClipConfig, build_clip, checkpoint_hash
from models.encoders.timesformer import VideoEncoder
from vidmem.common import UserError, file_hash, inputs_key, release_free_heap, write_json, write_jsonl
from vidmem.decode import DecodeError, batched, decode_groups, frame_times, open_video, prefetch, video_end, window_frames
from vidmem.dist import init_from_env
from vidmem.ledger import Ledger
from vidmem.manifest import Manifest
from vidmem.params import bounded, read
from vidmem.paths import Paths
from vidmem.store import ArraySpec, ShardedWriter
from vidmem.video import CompressConfig

log = logging.getLogger(__name__)

KINDS = ("clip", "lavila", "text", "audio")
# The code a store's values come from (dvc.yaml's extract deps cover it: tests/test_recipe.py checks). Its hash
# is in the store's attrs and so in its plan: changed extraction code recomputes the store instead of resuming
# an old one as up to date.
CODE = ("models/encoders", "vidmem/store.py", "vidmem/decode.py")
PROJECT = Path(__file__).resolve().parents[2]


@dataclass
class LavilaConfig:
    window: float = bounded(4.0, lo=0.01)  # s per TimeSformer window
    frames: int = bounded(4, lo=1)  # frames per window, at sub-window midpoints of real timestamps
    checkpoint: str = "none"  # a LaViLa dual-encoder .pth, or none: inflate the tuned CLIP image tower
    dense_tokens: bool = False  # also store every patch token


@dataclass
class TextConfig:
    max_tokens: int = bounded(32, lo=1)  # token features kept per sentence


@dataclass
class ExtractConfig:
    """The `extract` params group."""

    batch_size: int = bounded(32, lo=1)
    rows_per_chunk: int = bounded(256, lo=1)
    chunks_per_shard: int = bounded(4, lo=1)
    threads: int = bounded(0, lo=0)
    lavila: LavilaConfig = field(default_factory=LavilaConfig)
    text: TextConfig = field(default_factory=TextConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)


@dataclass
class Plan:
    """What goes into a store: items with their row counts, plus every input that could not be used."""

    ids: list[str]
    lengths: list[int]
    paths: list[Path]
    failed: dict[str, str]


def fingerprint(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def plan_videos(manifest: Manifest, compressed: Path, compress_ledger: dict[str, dict[str, Any]],
                rows_of: Any, undecodable: dict[str, dict[str, Any]] | None = None) -> Plan:
    """Open every manifest video's compressed file; `rows_of(vr)` gives its row count.

    Videos that failed compression, do not open, or failed to decode in an earlier pass (`undecodable`, keyed
    to the file's size and mtime) are listed in `failed` with the reason, never stored.
    """
    ids, lengths, paths, failed = [], [], [], {}
    undecodable = undecodable or {}
    for v in manifest.videos:
        row = compress_ledger.get(v.video_id)
        if row is not None and row.get("status") != "done":
            failed[v.video_id] = f"compress failed: {row.get('reason', 'unknown')}"
            continue
        rel = f"data/compressed/{v.video_id}.mp4"
        path = compressed / f"{v.video_id}.mp4"
        bad = undecodable.get(v.video_id)
        if bad is not None and path.exists() and bad.get("fingerprint") == fingerprint(path):
            failed[v.video_id] = bad["reason"]
            continue
        try:
            vr = open_video(path)
            n = int(rows_of(vr))
        except DecodeError as e:
            failed[v.video_id] = f"{rel}: {e.reason}"
            continue
        ids.append(v.video_id)
        lengths.append(n)
        paths.append(path)
    return Plan(ids, lengths, paths, failed)


def aligned_batches(lo: int, hi: int, size: int) -> tuple[list[tuple[int, int]], int]:
    """Item-aligned batches [k·size, (k+1)·size) covering rows [lo, hi), and the offset of `lo` in the first."""
    first = (lo // size) * size
    return [(a, a + size) for a in range(first, hi, size)], lo - first


# Batches between heap trims: after every batch the trims cost 25 % of the tiny encoder's throughput (freed
# pages fault back in), after every 16th ~2 %, and they still bound an hour-long video's resident memory.
TRIM_EVERY = 16


@torch.inference_mode()
def _forward_batches(fn, batches: Iterator[np.ndarray]) -> np.ndarray:
    outs = []
    for i, b in enumerate(prefetch(batches), 1):
        outs.append(fn(b))
        if i % TRIM_EVERY == 0:
            release_free_heap()  # flat memory over long videos (vidmem.common.release_free_heap)
    return np.concatenate(outs) if outs else np.zeros((0,))


class ClipFrameExtractor:
    """CLIP image embedding of every frame, with its timestamp."""

    kind = "clip"

    def __init__(self, encoder, batch_size: int):
        self.encoder = encoder
        self.batch_size = batch_size

    def arrays(self) -> dict[str, ArraySpec]:
        return {"feats": ArraySpec((self.encoder.embed_dim,), "float16"), "times": ArraySpec((), "float32")}

    @staticmethod
    def rows_of(vr) -> int:
        return len(vr)

    def _encode(self, frames: np.ndarray) -> np.ndarray:
        x = self.encoder.preprocess(torch.from_numpy(frames))
        return self.encoder.encode_image(x).float().numpy()

    def compute(self, path: Path, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]:
        """Frames [lo, hi) of the video (all by default)."""
        vr = open_video(path)
        n = len(vr)
        hi = n if hi is None else hi
        times = frame_times(vr)
        spans, skip = aligned_batches(lo, hi, self.batch_size)
        batches = decode_groups(vr, [np.arange(a, min(b, n)) for a, b in spans])
        feats = _forward_batches(self._encode, batches)[skip : skip + hi - lo]
        return {"feats": feats.astype(np.float16), "times": times[lo:hi].astype(np.float32)}


class WindowExtractor:
    """TimeSformer CLS per window of `frames` frames sampled from real timestamps (LaViLa-style)."""

    kind = "lavila"

    def __init__(self, encoder, batch_size: int, window: float, frames: int, dense_tokens: bool = False):
        """`batch_size` counts frames through the tower, as for CLIP: batch_size // frames windows per forward.

        Counted in windows, one forward held `frames`× the activations of a CLIP batch, and a video shorter
        than one batch (15 windows for a minute) peaked far lower than a long one: memory looked as if it grew
        with the video's length.
        """
        self.encoder = encoder
        self.batch_size = max(1, batch_size // frames)  # windows per forward
        self.window = window
        self.frames = frames
        self.dense_tokens = dense_tokens

    def arrays(self) -> dict[str, ArraySpec]:
        width = self.encoder.visual.cfg.width
        out = {"feats": ArraySpec((width,), "float16"), "times": ArraySpec((), "float32")}
        if self.dense_tokens:
            n_tok = self.frames * self.encoder.visual.cfg.patches_per_frame  # patch tokens; CLS is `feats`
            out["tokens"] = ArraySpec((n_tok, width), "float16")
        return out

    def rows_of(self, vr) -> int:
        times = frame_times(vr)
        starts, _ = window_frames(times, video_end(vr), self.window, self.frames)
        return len(starts)

    def _encode(self, clips: np.ndarray) -> np.ndarray:
        x = self.encoder.preprocess(torch.from_numpy(clips))
        if self.dense_tokens:
            return self.encoder.visual.forward_features(x).float().numpy()  # [B, 1 + T*P, W], CLS first
        return self.encoder(x).float().numpy()

    def compute(self, path: Path, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]:
        """Windows [lo, hi) of the video (all by default)."""
        vr = open_video(path)
        times = frame_times(vr)
        starts, idx = window_frames(times, video_end(vr), self.window, self.frames)
        n = len(starts)
        hi = n if hi is None else hi
        spans, skip = aligned_batches(lo, hi, self.batch_size)

        def clips() -> Iterator[np.ndarray]:
            groups = [idx[a : min(b, n)] for a, b in spans]
            for g, flat in zip(groups, decode_groups(vr, groups)):
                yield flat.reshape(len(g), self.frames, *flat.shape[1:])

        out = _forward_batches(self._encode, clips())[skip : skip + hi - lo]
        starts = starts[lo:hi]
        result = {"times": starts.astype(np.float32)}
        if self.dense_tokens:
            result["feats"] = out[:, 0].astype(np.float16)
            result["tokens"] = out[:, 1:].astype(np.float16)
        else:
            result["feats"] = out.astype(np.float16)
        return result


class TextExtractor:
    """CLIP text tower: the projected sentence vector and the per-token features of every sentence."""

    kind = "text"

    def __init__(self, encoder, batch_size: int, max_tokens: int):
        self.encoder = encoder
        self.batch_size = batch_size
        self.max_tokens = min(max_tokens, encoder.context_length)

    def arrays(self) -> dict[str, ArraySpec]:
        return {
            "sentence": ArraySpec((self.encoder.embed_dim,), "float16"),
            "tokens": ArraySpec((self.max_tokens, self.encoder.text_width), "float16"),
            "n_tokens": ArraySpec((), "int32"),
        }

    @torch.inference_mode()
    def compute_many(self, texts: list[str]) -> list[dict[str, np.ndarray]]:
        out = []
        for a, b in batched(len(texts), self.batch_size):
            tokens = self.encoder.tokenize(texts[a:b])
            feats, eot = self.encoder.text_tokens(tokens)
            sent = self.encoder.encode_text(tokens).float().numpy()
            n = np.minimum(eot.numpy() + 1, self.max_tokens)
            tok = feats[:, : self.max_tokens].float().numpy()
            for i in range(b - a):
                t = tok[i].copy()
                t[n[i]:] = 0.0  # positions after EOT are padding
                out.append({"sentence": sent[i : i + 1].astype(np.float16),
                            "tokens": t[None].astype(np.float16),
                            "n_tokens": np.asarray([n[i]], dtype=np.int32)})
        return out


def manifest_texts(manifest: Manifest) -> list[str]:
    """Every distinct sentence the families encode, in a stable order (first appearance by table)."""
    seen: dict[str, None] = {}
    for rows, attr in ((manifest.events, "sentence"), (manifest.queries, "sentence"),
                        (manifest.captions, "sentence"), (manifest.hierarchy, "text"), (manifest.qa, "question")):
        for r in rows:
            seen.setdefault(getattr(r, attr), None)
    return list(seen)


def plan_audio(manifest: Manifest, root: Path, extractor: AudioExtractor) -> Plan:
    """Every query WAV once (keyed by query id); a missing or broken WAV goes to `failed` with its reason."""
    ids, lengths, paths, failed = [], [], [], {}
    seen: set[str] = set()
    for q in manifest.queries:
        if not q.audio or q.query_id in seen:
            continue
        seen.add(q.query_id)
        path = Path(q.audio) if Path(q.audio).is_absolute() else root / q.audio
        if not path.is_file():
            failed[q.query_id] = f"{q.audio}: no such file"
            continue
        try:
            n = extractor.rows_of(path)
        except AudioError as e:
            failed[q.query_id] = f"{q.audio}: {e.reason}"
            continue
        ids.append(q.query_id)
        lengths.append(n)
        paths.append(path)
    return Plan(ids, lengths, paths, failed)


# ---------------------------------------------------------------------------------------------------- stage
def build_extractor(kind: str, params: dict[str, Any], root: Path = Path(".")) -> tuple[Any, dict[str, Any]]:
    p = read(ExtractConfig, params.get("extract"), "extract")
    paths = Paths(Path(root))
    if kind == "audio":  # log-mel frames: no encoder, no checkpoint
        a = p.audio
        return AudioExtractor(a), {"kind": kind, "encoder": "log-mel", "sample_rate": a.sample_rate,
                                   "n_fft": a.n_fft, "hop": a.hop, "n_mels": a.n_mels, "fmin": a.fmin,
                                   "fmax": a.fmax, "code_sha256": inputs_key(CODE, root=PROJECT)}
    ckpt_path = paths.clip_checkpoint
    if not ckpt_path.is_file():
        raise UserError(f"{ckpt_path}: not found; run `dvc repro finetune_clip` first")
    clip_cfg = read(ClipConfig, params.get("clip"), "clip")
    clip = build_clip(dataclasses.replace(clip_cfg, pretrained=str(ckpt_path)))
    attrs: dict[str, Any] = {"kind": kind, "encoder": clip.cfg.model,
                             "checkpoint": str(Paths().clip_checkpoint),
                             "checkpoint_sha256": checkpoint_hash(ckpt_path), "batch_size": p.batch_size,
                             "code_sha256": inputs_key(CODE, root=PROJECT)}
    if kind == "clip":
        return ClipFrameExtractor(clip, p.batch_size), attrs
    if kind == "text":
        return TextExtractor(clip, p.batch_size, p.text.max_tokens), attrs
    lp = p.lavila
    if lp.checkpoint.lower() != "none":
        if not Path(lp.checkpoint).is_file():
            raise UserError(f"params.yaml extract.lavila.checkpoint: '{lp.checkpoint}' not found")
        encoder = VideoEncoder.from_lavila(lp.checkpoint, num_frames=lp.frames)
        attrs.update(encoder="lavila-timesformer", checkpoint=lp.checkpoint,
                     checkpoint_sha256=file_hash(lp.checkpoint))
    else:
        encoder = VideoEncoder.from_clip(clip, num_frames=lp.frames)
        attrs.update(encoder=f"timesformer-inflated:{clip.cfg.model}")
    encoder.eval()
    attrs.update(window=lp.window, frames=lp.frames)
    return WindowExtractor(encoder, p.batch_size, lp.window, lp.frames, lp.dense_tokens), attrs


class _Replan(Exception):
    """A planned video failed to decode mid-way; it is recorded and the store is planned again without it."""


def extract_store(kind: str, params: dict[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    """Fill `data/features/<kind>.zarr` (this rank's shards; rank 0 also plans and finishes). Returns a summary.

    A video that opens but fails to decode part-way is recorded in `<kind>.undecodable.jsonl` beside the store
    and the extraction is planned again without it (one process), or stops asking for a rerun (torchrun).
    """
    d = init_from_env()
    while True:
        try:
            return _extract_once(kind, params, root, d)
        except _Replan as e:
            if d.world > 1:
                d.close()
                raise UserError(f"{e}; recorded as undecodable: rerun the stage to extract without it") from None
            log.warning("%s; planning again without it", e)


def _extract_once(kind: str, params: dict[str, Any], root: Path, d) -> dict[str, Any]:
    p = read(ExtractConfig, params.get("extract"), "extract")
    paths = Paths(Path(root))
    if p.threads:
        torch.set_num_threads(p.threads)
    torch.manual_seed(0)
    manifest = Manifest.read(paths.manifest)
    extractor, attrs = build_extractor(kind, params, root)
    out = paths.store(kind)

    if kind == "text":
        texts = manifest_texts(manifest)
        ids, lengths, failed = texts, [1] * len(texts), {}

        def compute_rows(requests: list[tuple[int, int, int]]) -> list[dict]:
            return extractor.compute_many([texts[i] for i, _, _ in requests])  # one row per sentence
    elif kind == "audio":
        plan = plan_audio(manifest, Path(root), extractor)
        ids, lengths, failed = plan.ids, plan.lengths, plan.failed

        def compute_rows(requests: list[tuple[int, int, int]]) -> list[dict]:
            outs = []
            for i, lo, hi in requests:
                try:
                    outs.append(extractor.compute(plan.paths[i], lo, hi))
                except AudioError as e:  # it read at planning time: changed under us
                    raise UserError(f"{plan.paths[i]}: {e.reason} (changed since planning; rerun)") from None
            return outs
    else:
        ledger_path = paths.compress_ledger
        compress_ledger = Ledger(ledger_path).rows() if ledger_path.exists() else {}
        bad = Ledger(paths.features / f"{kind}.undecodable.jsonl")
        plan = plan_videos(manifest, paths.compressed, compress_ledger, extractor.rows_of, bad.rows())
        ids, lengths, failed = plan.ids, plan.lengths, plan.failed
        attrs["fps"] = float(read(CompressConfig, params.get("compress"), "compress").fps)

        def compute_rows(requests: list[tuple[int, int, int]]) -> list[dict]:
            outs = []
            for i, lo, hi in requests:
                try:
                    outs.append(extractor.compute(plan.paths[i], lo, hi))
                except DecodeError as e:
                    reason = f"data/compressed/{ids[i]}.mp4: failed to decode part-way: {e.reason}"
                    bad.record(ids[i], "failed", reason=reason, fingerprint=fingerprint(plan.paths[i]))
                    raise _Replan(reason) from None
            return outs

    writer = ShardedWriter(out, ids, lengths, extractor.arrays(), attrs,
                           rows_per_chunk=p.rows_per_chunk, chunks_per_shard=p.chunks_per_shard)
    if d.main:
        writer.prepare()
        log.info("%s: %d items, %d rows, %d shards, %d rank(s)", out, len(ids), writer.n_rows, writer.n_shards,
                 d.world)
    d.barrier()
    writer.fill(writer.shards_for_rank(d.rank, d.world), compute_rows, rank=d.rank)
    d.barrier()
    if d.main:
        writer.finish()
        if kind != "text":  # every video / query WAV: done or failed with its reason
            rows = [{"key": vid, "status": "done", "rows": n} for vid, n in zip(ids, lengths)]
            rows += [{"key": vid, "status": "failed", "reason": why} for vid, why in failed.items()]
            write_jsonl(out / "ledger.jsonl", rows)
        for vid, why in failed.items():
            log.warning("%s: not extracted: %s", vid, why)
    summary = {"items": len(ids), "rows": writer.n_rows, "failed": len(failed),
               "arrays": {k: [list(v.trailing), v.dtype] for k, v in extractor.arrays().items()}}
    if d.main:
        write_json(paths.metric(f"features_{kind}"), summary)
    d.close()
    return summary
