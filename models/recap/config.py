"""Video ReCap's model keys (`families.recap` + `train.recap_*`): SynthVid sizes, paper values beside them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vidmem.common import UserError
from vidmem.params import bounded

LEVELS = ("clip", "segment", "video")


@dataclass
class RecapConfig:
    """One model of the family. `level` says which caption it writes (`unified`: ReCap-U, all three)."""

    level: Literal["clip", "segment", "video", "unified"] = "clip"
    use_text: bool = True               # segment/video: read the lower level's generated captions (False: flat)
    lower_input: Literal["generated", "reference"] = "generated"   # reference: read the manifest's reference
                                        # captions of the level below instead, in training and scoring (oracle)
    pseudo_labels: bool = True          # train on the pseudo-labelled train text too (hierarchy_pseudo.jsonl;
                                        # paper: +5.1 segment / +1.3 video CIDEr); never scored
    clip_features: Literal["lavila", "clip"] = "lavila"   # clip level: the window's TimeSformer CLS row, or its
                                        # CLIP frame features (paper: 785 TSF-B tokens of the window)
    lavila_dim: int = bounded(192, lo=1)          # lavila.zarr width (paper: 768 CLS)
    clip_dim: int = bounded(128, lo=1)            # clip.zarr width
    hidden: int = bounded(128, lo=8)              # paper 768 (Q-Former and GPT-2 width)
    heads: int = bounded(4, lo=1)                 # paper 12
    mapper_layers: int = bounded(1, lo=1)         # paper: 12-layer BERT-shaped Q-Former, cross-attn every 2nd
    decoder_layers: int = bounded(2, lo=1)        # paper: GPT-2 base, 12 layers
    ffn_mult: int = bounded(4, lo=1)
    dropout: float = bounded(0.1, lo=0, hi=1)
    video_queries: int = bounded(8, lo=1)         # paper: clip 256, segment 32, video 256
    text_queries: int = bounded(8, lo=1)          # paper 256
    segment_feats: int = bounded(16, lo=1)        # segment: window features sampled uniformly (paper 80)
    video_feats: int = bounded(32, lo=1)          # video: at most K window features, 0/1 mask (paper 256)
    max_text_tokens: int = bounded(160, lo=1)     # lower-level captions fed to the text mapper (paper 512)
    clip_words: int = bounded(16, lo=1)           # target words per level (paper: 77 / 77 / 120 GPT-2 tokens)
    segment_words: int = bounded(40, lo=1)
    video_words: int = bounded(48, lo=1)
    unified_samples: int = bounded(256, lo=1)     # ReCap-U: samples drawn per level per epoch (paper 100000)
    gate_lr_scale: float = bounded(1.0, lo=0)     # the tanh gates' lr multiplier, no weight decay (paper 1)
    beam_size: int = bounded(1, lo=1)             # 1: greedy (the paper's decoding)
    clip_sec: float = bounded(4.0, lo=0.1)        # clip window (paper 4 s)
    segment_sec: float = bounded(30.0, lo=0.1)    # segment window (paper 180 s; SynthVid's long videos: 30 s)
    decoder_checkpoint: str = "none"              # a local GPT-2-style checkpoint folder (Hugging Face layout,
                                                  # models/recap/gpt2.py; paper: gpt2), never downloaded
    folds: int = bounded(2, lo=2)                 # cross-fitting: the train videos dealt into this many folds
    fold: int = bounded(-1, lo=-1)                # ≥ 0: a fold model, trained on every train video outside this
                                                  # fold; it writes the train-split captions of the fold's videos

    def check(self, where: str) -> None:
        if self.hidden % self.heads:
            raise UserError(f"params.yaml {where}.hidden: {self.hidden} is not divisible by heads {self.heads}")
        if self.fold >= self.folds:
            raise UserError(f"params.yaml {where}.fold: {self.fold} is not below folds ({self.folds})")
        if self.fold >= 0 and self.level == "unified":
            raise UserError(f"params.yaml {where}.fold: a fold model writes one level's captions, not 'unified'")
        if self.segment_sec < self.clip_sec:
            raise UserError(f"params.yaml {where}.segment_sec: must be at least clip_sec ({self.clip_sec})")

    @property
    def positions(self) -> int:
        """Decoder positions the longest input or target needs (BOS / EOS included)."""
        return max(self.max_text_tokens, self.clip_words, self.segment_words, self.video_words) + 2

    @property
    def levels(self) -> tuple[str, ...]:
        return LEVELS if self.level == "unified" else (self.level,)

    def max_words(self, level: str) -> int:
        return {"clip": self.clip_words, "segment": self.segment_words, "video": self.video_words}[level]
