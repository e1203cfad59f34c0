"""Hyper-parameters of the dense video captioners (PDVC, and CM2 = PDVC + cross-modal retrieval).

One dataclass holds every model knob so a checkpoint's `params` reproduce the model exactly. Defaults are the
published ActivityNet Captions values (PDVC `cfgs/anet_*_pdvc.yml`, CM2 `cfgs/anet_clip_cm2.yml`); the
CPU-sized values used on SynthVid live in params.yaml (`families.dense`, `train.pdvc`, `train.cm2`) and reach
us through the shared params reader (`vidmem.params`). How the model is optimised (lr, batch, epochs, the step
schedule, clipping, seed) is the shared recipe's (`vidmem.training.RecipeConfig`); the papers' values are:
Adam, lr 5e-5, weight decay 1e-4, batch 1, 30 epochs, x0.5 at epochs 8, 11, ..., 26, grad clip 100, seed 777.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vidmem.common import UserError


@dataclass
class DenseConfig:
    # ------------------------------------------------------------------ input
    feature_dim: int = 768  # CLIP ViT-L/14 projected frame embeddings (CM2); ViT-B/32 gives 512
    resample_len: int = 0  # 0: native frame count (CM2); PDVC resizes to 100 (ANet) / 200 (YC2) by nearest
    # ------------------------------------------------------------------ deformable transformer (§2.1-2.2)
    hidden: int = 512
    heads: int = 8
    enc_layers: int = 2
    dec_layers: int = 2
    ffn_dim: int = 512
    dropout: float = 0.1
    levels: int = 4  # lengths T, ceil(T/2), ceil(T/4), ceil(T/8)
    enc_points: int = 4
    dec_points: int = 4
    norm_groups: int = 32  # GroupNorm groups of the multi-scale base encoder
    num_queries: int = 10  # ANet 10, YC2 100
    # Duration embedding: a thermometer vector of hidden/2 slots, slot i on when duration > i * unit.
    # PDVC uses 1 s slots over 256 slots (hidden 512), i.e. it saturates at 256 s; the unit keeps the
    # design usable for other lengths: seconds-long SynthVid clips want ~0.25-1 s, hour-long videos minutes.
    duration_unit_s: float = 1.0
    # ------------------------------------------------------------------ event counter
    max_eseq_length: int = 10  # counter bins - 1 (PDVC ANet 10, YC2 20; CM2 20)
    # ------------------------------------------------------------------ LSTM-DSA caption head (§2.2)
    max_words: int = 30
    word_dim: int = 512
    rnn_size: int = 512
    rnn_layers: int = 1
    att_hid: int = 512
    caption_dropout: float = 0.5
    cap_heads: int = 1
    cap_levels: int = 4
    cap_points: int = 4
    # ------------------------------------------------------------------ losses (§2.3): 2 / 4 / 0 / 0.5 / 2
    cls_loss_coef: float = 2.0
    giou_loss_coef: float = 4.0
    bbox_loss_coef: float = 0.0
    count_loss_coef: float = 0.5
    caption_loss_coef: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    counter_sigma: float = 2.0  # near-miss mask exp(-(k-n)^2 / (2 sigma^2)) ...
    counter_beta: float = 1.0  # ... raised to beta on negatives
    aux_loss: bool = True  # the same losses on every decoder layer
    # ------------------------------------------------------------------ Hungarian matching costs
    cost_class: float = 2.0
    cost_giou: float = 4.0
    cost_bbox: float = 0.0
    cost_alpha: float = 0.25
    cost_gamma: float = 2.0
    # ------------------------------------------------------------------ inference (§2.4)
    ec_alpha: float = 1.0  # caption-score weight in the re-ranking (PDVC-standard and CM2 use 1.0)
    rerank: bool = True  # joint re-ranking + counter-based selection (PDVC does it when count_loss_coef > 0)
    # ------------------------------------------------------------------ CM2 retrieval (§1.2-1.3)
    retrieval: bool = False  # False: PDVC; True: CM2
    window: int = 20  # temporal anchors W (ANet 20, YC2 50)
    soft_k: int = 100  # bank hits averaged per window (ANet 100, YC2 80)
    # what queries the bank per window: the mean of its frame vectors (CM2) or of the window encoder's vectors
    # centred on its frames (`finetune_window`, data/features/window.zarr). `oracle` is a diagnostic upper
    # bound, never a result: nothing is retrieved, each window gets the text vectors of the ground-truth
    # events overlapping it (its own video's annotator-0 sentences, test included; text.zarr), time-weighted
    retrieval_query: Literal["frames", "window", "oracle"] = "frames"
    bank_dim: int = 768  # CLIP text embedding size of the memory bank
    text_dropout: float = 0.5  # dropout inside the 2-layer down-projection
    # ------------------------------------------------------------------ checks
    def check(self, where: str = "train") -> None:
        """Cross-field checks (vidmem.params calls this after reading a group)."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise UserError(f"params.yaml {where}: {msg}")

        need(
            self.hidden % self.heads == 0, f"hidden ({self.hidden}) must be divisible by heads ({self.heads})"
        )
        need(self.hidden % 2 == 0, f"hidden ({self.hidden}) must be even (sine + duration halves)")
        need(self.hidden % self.cap_heads == 0, f"hidden ({self.hidden}) must be divisible by cap_heads")
        need(
            self.hidden % self.norm_groups == 0,
            f"hidden ({self.hidden}) must be divisible by norm_groups ({self.norm_groups})",
        )
        need(1 <= self.cap_levels <= self.levels, f"cap_levels must be in 1..levels ({self.levels})")
        for name in (
            "feature_dim",
            "hidden",
            "heads",
            "enc_layers",
            "dec_layers",
            "ffn_dim",
            "levels",
            "enc_points",
            "dec_points",
            "num_queries",
            "max_eseq_length",
            "max_words",
            "word_dim",
            "rnn_size",
            "rnn_layers",
            "att_hid",
            "cap_heads",
            "cap_points",
            "window",
            "soft_k",
            "bank_dim",
        ):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(self.resample_len >= 0, "resample_len must be >= 0")
        need(self.duration_unit_s > 0, "duration_unit_s must be > 0")
        need(
            0 <= self.dropout < 1 and 0 <= self.caption_dropout < 1 and 0 <= self.text_dropout < 1,
            "dropout probabilities must be in [0, 1)",
        )
