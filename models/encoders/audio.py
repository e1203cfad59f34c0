"""Log-mel frames of spoken queries (SLMR), for the audio store (`extract@audio`).

torchaudio has no build for our torch pin, so: the stdlib `wave` reader (16-bit / 32-bit PCM, any channel
count, mixed to mono), `torch.stft` (Hann window, centred) and a Slaney-style triangular mel filterbank on the
HTK mel scale computed here. No model, no checkpoint: the trainable audio encoder lives in the grounding family.
"""
from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vidmem.params import bounded


@dataclass
class AudioConfig:
    """The `extract.audio` params group."""

    sample_rate: int = bounded(16000, lo=1)   # SynthVid / ActivityNet-Speech WAVs are 16 kHz
    n_fft: int = bounded(400, lo=8)          # 25 ms
    hop: int = bounded(160, lo=1)            # 10 ms per frame
    n_mels: int = bounded(40, lo=1)
    fmin: float = bounded(0.0, lo=0)
    fmax: float = bounded(8000.0, lo=1)


class AudioError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def read_wav(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 samples in [−1, 1]; AudioError (with a reason for the ledger) on anything unusable."""
    try:
        with wave.open(str(path), "rb") as w:
            sr, ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError, OSError) as e:
        raise AudioError(f"unreadable WAV: {e}") from None
    if sr != sample_rate:
        raise AudioError(f"sample rate {sr} Hz, expected {sample_rate}")
    if width not in (2, 4):
        raise AudioError(f"{8 * width}-bit samples; expected 16- or 32-bit PCM")
    x = np.frombuffer(raw, dtype="<i2" if width == 2 else "<i4").astype(np.float32) / (2 ** (8 * width - 1))
    if len(x) < ch or len(x) % ch:
        raise AudioError("no complete samples" if len(x) < ch else "truncated sample data")
    return x.reshape(-1, ch).mean(1)


def n_frames(n_samples: int, hop: int) -> int:
    """Frames of a centred STFT."""
    return 1 + n_samples // hop


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, fmin: float, fmax: float) -> torch.Tensor:
    """[n_mels, n_fft//2 + 1] triangular filters equally spaced on the HTK mel scale, area-normalised."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)              # noqa: E731
    hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)               # noqa: E731
    edges = hz(np.linspace(mel(fmin), mel(min(fmax, sample_rate / 2)), n_mels + 2))
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    fb = np.clip(np.minimum(up, down), 0, None) * (2.0 / (hi - lo))
    return torch.from_numpy(fb.astype(np.float32))


class LogMel:
    def __init__(self, cfg: AudioConfig):
        self.cfg = cfg
        self.fb = mel_filterbank(cfg.n_mels, cfg.n_fft, cfg.sample_rate, cfg.fmin, cfg.fmax)
        self.window = torch.hann_window(cfg.n_fft)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """[n_frames(len), n_mels] float32 log(mel power + 1e-6)."""
        x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
        if len(x) < self.cfg.n_fft // 2 + 1:                          # reflect padding needs this much
            x = torch.nn.functional.pad(x, (0, self.cfg.n_fft // 2 + 1 - len(x)))
        spec = torch.stft(x, self.cfg.n_fft, self.cfg.hop, window=self.window, center=True, return_complex=True)
        power = spec.abs() ** 2                                        # [freq, frames]
        out = torch.log(self.fb @ power + 1e-6).T.numpy()
        return out[: n_frames(len(samples), self.cfg.hop)]


class AudioExtractor:
    """One row per STFT frame of each query's WAV, keyed by query id."""

    kind = "audio"

    def __init__(self, cfg: AudioConfig):
        self.cfg = cfg
        self.logmel = LogMel(cfg)

    def arrays(self) -> dict:
        from vidmem.store import ArraySpec
        return {"mel": ArraySpec((self.cfg.n_mels,), "float16")}

    def rows_of(self, path: Path) -> int:
        """Frames of a WAV (reads and checks it: AudioError on a broken file)."""
        return n_frames(len(read_wav(path, self.cfg.sample_rate)), self.cfg.hop)

    def compute(self, path: Path, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]:
        mel = self.logmel(read_wav(path, self.cfg.sample_rate))
        return {"mel": mel[lo:hi].astype(np.float16)}
