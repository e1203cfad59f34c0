"""Spoken grounding queries: espeak-ng speech, resampled to 16 kHz mono 16-bit PCM WAV.

espeak-ng writes 22.05 kHz; a polyphase resampler (scipy, exact rational ratio) brings it to the target rate
deterministically, so the same text and voice give the same WAV bytes on every run.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from vidmem.common import UserError, atomic_path


def espeak_binary() -> str:
    path = shutil.which("espeak-ng")
    if not path:
        raise UserError("espeak-ng not found on PATH; run `make install` (it installs Debian's espeak-ng)")
    return path


def check_voices(voices: tuple[str, ...] | list[str]) -> None:
    """Fail early, naming the param, if espeak-ng does not know a voice."""
    exe = espeak_binary()
    for v in voices:
        r = subprocess.run([exe, "-v", v, "-q", "a"], capture_output=True, text=True)
        if r.returncode != 0:
            raise UserError(
                f"params.yaml: synth.speech.voices: espeak-ng does not know voice '{v}' "
                f"(list them with `espeak-ng --voices=en`; variants as en+f3)"
            )


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(int16 samples, rate) of a mono 16-bit PCM WAV."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(
                f"{path}: expected mono 16-bit PCM, got {w.getnchannels()} ch {8 * w.getsampwidth()} bit"
            )
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy(), w.getframerate()


def write_wav(path: str | os.PathLike, samples: np.ndarray, rate: int) -> None:
    with atomic_path(path, suffix=".wav") as tmp:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(samples.astype("<i2").tobytes())


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """int16 → int16 at another rate (polyphase FIR, deterministic)."""
    if rate_in == rate_out:
        return samples.astype(np.int16)
    g = math.gcd(rate_in, rate_out)
    y = resample_poly(samples.astype(np.float64), rate_out // g, rate_in // g)
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


def speak(text: str, voice: str, path: str | os.PathLike, rate: int = 16000) -> float:
    """Speak `text` with espeak-ng voice `voice` into a mono 16-bit WAV at `rate`; returns its seconds."""
    exe = espeak_binary()
    with tempfile.TemporaryDirectory(prefix="vidmem-espeak-") as tmp:
        raw = Path(tmp) / "speech.wav"
        r = subprocess.run([exe, "-v", voice, "-w", str(raw), text], capture_output=True, text=True)
        if r.returncode != 0 or not raw.is_file():
            raise RuntimeError(f"espeak-ng failed for voice '{voice}' on {text!r}: {r.stderr.strip()[-300:]}")
        samples, rate_in = read_wav(raw)
    out = resample(samples, rate_in, rate)
    write_wav(path, out, rate)
    return len(out) / rate
