"""Grounding JSON in the MMN layout and its spoken (ActivityNet Speech, MRNet) and TACoS variants → queries.

MMN (`MCG-NJU/MMN: dataset/*`), Charades-STA and ActivityNet, times in seconds:
    {"3MSZA": {"duration": 30.96, "timestamps": [[24.3, 30.4], ...], "sentences": ["person turn a ...", ...]}}
ActivityNet Speech (MRNet `*_audio_new.json`) adds one 16 kHz WAV name per sentence, found in the source's
`audio` folder, and the Charades / TACoS versions add a per-video `speaker`:
    {..., "audios": ["uqiMw7tQ1Cc_val_2_1.wav", ...], "speaker": "cmu_us_ksp_arctic-wav-arctic_b0030"}
TACoS (video ids carry the file extension), times in frames, converted to seconds with the video's fps:
    {"s30-d52.avi": {"num_frames": 7346, "fps": 29.4, "timestamps": [[141, 354], ...], "sentences": [...]}}
"""

from __future__ import annotations

from vidmem.common import UserError
from vidmem.formats import checks
from vidmem.formats.base import Bad, Parsed, Source
from vidmem.formats.readers import load_json
from vidmem.manifest import Query


def parse_mmn(src: Source) -> Parsed:
    return _parse(src, frames=False, need_audio=False)


def parse_activitynet_speech(src: Source) -> Parsed:
    return _parse(src, frames=False, need_audio=True)


def parse_tacos(src: Source) -> Parsed:
    return _parse(src, frames=True, need_audio=False)


def _parse(src: Source, *, frames: bool, need_audio: bool) -> Parsed:
    out = Parsed(src)
    if not isinstance(src.split, str):
        raise UserError(f"params.yaml: ingest source '{src.name}': split must be one of train/val/test")
    path = src.path("file")
    file = src.display(path)
    audio_dir = src.optional("audio")
    data = load_json(path)
    for vid, item in checks.video_entries(out, data, file, checks.event_rows):
        try:
            checks.mapping(item, f"video '{vid}'")
            checks.no_duplicate_keys(item)
            if frames:
                fps = checks.number(checks.key(item, "fps"), "fps")
                if fps <= 0:
                    raise Bad("fps", f"fps must be > 0, got {fps:g}")
                duration = checks.duration(checks.key(item, "num_frames"), "num_frames") / fps
            else:
                fps = 1.0
                duration = checks.duration(checks.key(item, "duration"))
            stamps = checks.seq(checks.key(item, "timestamps"), "timestamps")
            sentences = checks.seq(checks.key(item, "sentences"), "sentences")
            if len(stamps) != len(sentences):
                raise Bad("sentences", f"{len(sentences)} sentences for {len(stamps)} timestamps")
            audios: list | None = None
            if need_audio or ("audios" in item and audio_dir is not None):
                audios = checks.seq(checks.key(item, "audios"), "audios")
                if len(audios) != len(sentences):
                    raise Bad("audios", f"{len(audios)} audios for {len(sentences)} sentences")
            speaker = checks.text(item["speaker"], "speaker") if item.get("speaker") is not None else None
        except Bad as bad:
            out.problem(file, f"video '{vid}'", bad, checks.event_rows(item))
            continue
        out.video(vid, duration)
        unit = "frame" if frames else "s"
        for i, (stamp, sentence) in enumerate(zip(stamps, sentences, strict=True)):
            entry = f"video '{vid}' sentence {i}"
            try:
                first, last = checks.pair(stamp, f"timestamps[{i}]")
                first = checks.number(first, f"timestamps[{i}] start ({unit})") / fps
                last = checks.number(last, f"timestamps[{i}] end ({unit})") / fps
                start, end = checks.span(first, last, duration, src.time_tolerance, f"timestamps[{i}]")
                text = checks.text(sentence, f"sentences[{i}]")
                audio = None
                if audios is not None:
                    assert audio_dir is not None
                    audio = str(audio_dir / checks.ident(audios[i], f"audios[{i}]"))
            except Bad as bad:
                out.problem(file, entry, bad)
                continue
            query = Query(f"{src.name}/{vid}/{i}", vid, src.split, start, end, text, audio, speaker, file)
            out.add(query, file, entry)
    return out
