"""extract@audio: log-mel frames of every query WAV into a store with the common contract (offsets, ids,
attrs, ledger), a broken WAV listed (not fatal), kill -9 and resume byte-identical; the mel filterbank."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from models.encoders.audio import AudioConfig, LogMel, mel_filterbank, n_frames, read_wav
from tests.project import digest
from vidmem.manifest import Manifest, Query, Video
from vidmem.store import FeatureStore

REPO = Path(__file__).resolve().parents[1]


def write_wav(path: Path, seconds: float, freq: float, sr: int = 16000) -> None:
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(x.tobytes())


def make_audio_project(root: Path, n: int = 6, broken: bool = True) -> Path:
    audio = root / "data" / "raw" / "audio"
    audio.mkdir(parents=True)
    queries = []
    for k in range(n):
        write_wav(audio / f"v0_{k}.wav", 0.5 + 0.1 * k, 300 + 100 * k)
        queries.append(Query(f"src:train/v0/{k}", "v0", "train", 0.0, 1.0, f"sentence {k}",
                             audio=f"data/raw/audio/v0_{k}.wav"))
    if broken:
        (audio / "bad.wav").write_bytes(b"RIFF\x00\x00not a wav at all")
        queries.append(Query("src:train/v0/99", "v0", "train", 0.0, 1.0, "broken", audio="data/raw/audio/bad.wav"))
        queries.append(Query("src:train/v0/98", "v0", "train", 0.0, 1.0, "gone", audio="data/raw/audio/gone.wav"))
    Manifest(videos=[Video("v0", "x.mp4", 10.0)], queries=queries).write(root / "data" / "manifest")
    (root / "params.yaml").write_text(yaml.safe_dump({"extract": {"rows_per_chunk": 16, "chunks_per_shard": 1,
                                                                  "audio": {"n_mels": 8}}}))
    return root


def run(root: Path) -> dict:
    from models.encoders.extract import extract_store
    from vidmem.common import load_params

    return extract_store("audio", load_params(root / "params.yaml"), root)


def test_store_contract_values_and_broken_wav_listed(tmp_path):
    root = make_audio_project(tmp_path / "p")
    summary = run(root)
    assert summary["items"] == 6 and summary["failed"] == 2
    store_path = root / "data" / "features" / "audio.zarr"
    store = FeatureStore(store_path)
    ledger = {r["key"]: r for r in map(json.loads, (store_path / "ledger.jsonl").read_text().splitlines())}
    assert ledger["src:train/v0/99"]["status"] == "failed" and "unreadable WAV" in ledger["src:train/v0/99"]["reason"]
    assert ledger["src:train/v0/98"]["status"] == "failed" and "no such file" in ledger["src:train/v0/98"]["reason"]
    assert sum(r["status"] == "done" for r in ledger.values()) == 6
    mel = store.get("src:train/v0/2", "mel")
    samples = read_wav(root / "data/raw/audio/v0_2.wav", 16000)
    assert mel.shape == (n_frames(len(samples), 160), 8) == (1 + 11200 // 160, 8)
    expect = LogMel(AudioConfig(n_mels=8))(samples).astype(np.float16)
    assert np.array_equal(mel, expect)


def test_kill_and_resume_is_byte_identical(tmp_path):
    ref = make_audio_project(tmp_path / "ref")
    run(ref)
    root = make_audio_project(tmp_path / "killed")
    # a real kill -9 after the third WAV's rows are computed (shards before it are on disk)
    code = ("import os, signal, sys; sys.path.insert(0, %r)\n"
            "from models.encoders import audio\n"
            "orig = audio.AudioExtractor.compute; calls = [0]\n"
            "def compute(self, *a, **k):\n"
            "    calls[0] += 1\n"
            "    if calls[0] == 12: os.kill(os.getpid(), signal.SIGKILL)\n"
            "    return orig(self, *a, **k)\n"
            "audio.AudioExtractor.compute = compute\n"
            "from models.encoders.extract import extract_store\n"
            "from vidmem.common import load_params\n"
            "extract_store('audio', load_params('params.yaml'), __import__('pathlib').Path('.'))\n") % str(REPO)
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    store = root / "data" / "features" / "audio.zarr"
    assert list(store.glob("progress*")), "nothing was written before the kill"
    run(root)
    assert digest(store) == digest(ref / "data" / "features" / "audio.zarr")


def test_mel_filterbank_shape_and_peaks():
    fb = mel_filterbank(10, 400, 16000, 0.0, 8000.0)
    assert fb.shape == (10, 201) and (fb >= 0).all()
    peaks = fb.argmax(1)
    assert (peaks[1:] > peaks[:-1]).all()            # filters climb in frequency
    # a 1 kHz tone puts most energy in the filter whose band holds 1 kHz
    t = np.arange(16000) / 16000
    m = LogMel(AudioConfig(n_mels=10))(np.sin(2 * np.pi * 1000 * t).astype(np.float32))
    assert m.shape == (101, 10)
    band = int(np.argmax(m[50]))
    assert fb[band, 1000 * 400 // 16000] > 0
