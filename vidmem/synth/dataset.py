"""SynthVid end to end: sample every video, write its text, render videos and speech, write the annotations.

The output directory is built under a temporary sibling and swapped in only when complete, so an interrupted
run leaves no half dataset. Rendering runs in a process pool; every job is a pure function of its own spec, so
the bytes do not depend on the pool size or on the order jobs finish in.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vidmem.common import atomic_dir
from vidmem.synth.annotate import VideoText, annotate
from vidmem.synth.config import SPLITS, SynthConfig
from vidmem.synth.grammar import answer_space, vocabulary
from vidmem.synth.render import render_video
from vidmem.synth.scene import VideoSpec, sample_video, video_ids
from vidmem.synth.speech import check_voices, speak
from vidmem.synth.writers import audio_name, write_annotations

log = logging.getLogger("vidmem.synth")


@dataclass
class Dataset:
    cfg: SynthConfig
    items: list[tuple[VideoSpec, VideoText]]

    @property
    def answers(self) -> list[str]:
        return answer_space(self.cfg.scene.colours, self.cfg.scene.shapes, self.cfg.scene.objects[1])


def build(cfg: SynthConfig) -> Dataset:
    """Scenes and text of every video (fast: nothing is rendered)."""
    items = []
    for vid, split, long, index in video_ids(cfg):
        spec = sample_video(cfg, vid, split, long, index)
        items.append((spec, annotate(cfg, spec)))
    return Dataset(cfg, items)


# ---------------------------------------------------------------------------------------------------- jobs
def _render_job(spec: VideoSpec, path: str, cfg: SynthConfig) -> float:
    render_video(spec, path, cfg.video)
    return spec.duration


def _speech_job(jobs: list[tuple[str, str, str]], rate: int) -> float:
    return sum(speak(text, voice, path, rate) for text, voice, path in jobs)


def _jobs(ds: Dataset, root: Path) -> list[tuple[float, Any, tuple]]:
    """(cost estimate, function, args); the pool starts the costliest first."""
    jobs = []
    for spec, text in ds.items:
        video = str(root / "videos" / f"{spec.video_id}.mp4")
        jobs.append((spec.duration, _render_job, (spec, video, ds.cfg)))
        if text.queries:
            speech = [
                (q, voice, str(root / "audio" / audio_name(spec.video_id, spec.split, k)))
                for k, (q, voice) in enumerate(zip(text.queries, text.voices, strict=True))
            ]
            jobs.append((0.5 * len(speech), _speech_job, (speech, ds.cfg.speech.sample_rate)))
    jobs.sort(key=lambda j: -j[0])
    return jobs


def _run(jobs: list[tuple[float, Any, tuple]], workers: int) -> None:
    if workers <= 1:
        for _, fn, args in tqdm(jobs, desc="synth", unit="job", mininterval=2.0):
            fn(*args)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fn, *args) for _, fn, args in jobs]
        with tqdm(total=len(futures), desc="synth", unit="job", mininterval=2.0) as bar:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=5.0, return_when=FIRST_EXCEPTION)
                bar.update(len(done))
                for f in done:
                    if f.exception() is not None:
                        for p in pending:
                            p.cancel()
                        raise f.exception()


# ---------------------------------------------------------------------------------------------------- entry
def generate(
    cfg: SynthConfig, out: str | os.PathLike | None = None, workers: int | None = None
) -> dict[str, Any]:
    """Write the whole dataset to `out` (default cfg.out) atomically; returns the metrics."""
    out = Path(out if out is not None else cfg.out)
    workers = cfg.workers if workers is None else workers
    workers = workers or os.cpu_count() or 1
    ds = build(cfg)
    if any(t.queries for _, t in ds.items):
        check_voices(cfg.speech.voices)
    with atomic_dir(out) as tmp:
        (tmp / "videos").mkdir()
        (tmp / "audio").mkdir()
        jobs = _jobs(ds, tmp)
        log.info("synth: %d videos (%.0f s of video), %d jobs on %d worker(s) -> %s",
                 len(ds.items), sum(s.duration for s, _ in ds.items), len(jobs), workers, out)
        _run(jobs, workers)
        write_annotations(tmp, ds.items, ds.answers)
    return metrics(ds)


def metrics(ds: Dataset) -> dict[str, Any]:
    """Counts per split for `dvc metrics diff`."""
    out: dict[str, Any] = {}
    for split in SPLITS:
        items = [(s, t) for s, t in ds.items if s.split == split]
        short = [(s, t) for s, t in items if not s.long]
        long = [(s, t) for s, t in items if s.long]
        out[split] = {
            "videos_short": len(short),
            "videos_long": len(long),
            "seconds": round(sum(s.duration for s, _ in items), 3),
            "events": sum(len(s.events) for s, _ in short),
            "queries": sum(len(t.queries) for _, t in short),
            "audio": sum(len(t.queries) for _, t in short),
            "captions": sum(len(t.retrieval) for _, t in short),
            "qa": sum(len(t.qa) for _, t in short),
            "clip_captions": sum(len(t.clips) for _, t in long),
            "segment_descriptions": sum(len(t.segments) for _, t in long),
            "segment_descriptions_pseudo": sum(len(t.segments_pseudo) for _, t in long),
            "summaries_pseudo": sum(len(t.summaries_pseudo) for _, t in long),
            "summaries": sum(1 for _, t in long if t.summary),
        }
    train_text = [x for s, t in ds.items if s.split == "train" for x in t.all_text()]
    out["total_seconds"] = round(sum(s.duration for s, _ in ds.items), 3)
    out["vocab_size"] = len(vocabulary(x for _, t in ds.items for x in t.all_text()))
    out["vocab_size_train"] = len(vocabulary(train_text))
    out["answers"] = len(ds.answers)
    return out
