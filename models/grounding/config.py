"""The grounding family's model keys (`families.grounding` + `train.<name>`): SynthVid-sized defaults.

Paper-scale values (MRNet configs, `xian-sh/MRNet: configs/*.yaml`) are in params.yaml beside each default.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vidmem.params import bounded


@dataclass
class GroundingConfig:
    query: Literal["text", "speech"] = "text"      # text.zarr sentence + tokens | audio.zarr log-mel frames
    feature_dim: int = bounded(128, lo=1)           # clip.zarr width
    text_dim: int = bounded(128, lo=1)              # text.zarr width
    n_mels: int = bounded(40, lo=1)                 # audio.zarr width (speech queries)
    speech_checkpoint: str = "none"                 # a local audio-encoder state_dict to start from (never downloaded)
    pre_clips: int = bounded(32, lo=1)              # clips after avgfeats (ANet 256, Charades 128, TACoS 512)
    num_clips: int = bounded(16, lo=2)              # N of the 2-D map (ANet/Charades 64, TACoS 128)
    pooling_counts: tuple[int, ...] = (15,)         # SparseMaxPool (N=64: 15,8,8; N=128: 15,8,8,8)
    hidden: int = bounded(64, lo=1)                 # model width (paper 256; featpool 512)
    heads: int = bounded(4, lo=1)                   # paper 8
    layers: int = bounded(1, lo=0)                  # retention layers (Charades 4, TACoS 1, ANet 2)
    ffn_dim: int = bounded(128, lo=1)               # paper 1024
    dropout: float = bounded(0.1, lo=0, hi=0.9)     # encoder dropout (paper 0.1)
    proj_dropout: float = bounded(0.1, lo=0, hi=0.9)  # input projections (paper 0.5)
    mask_mode: Literal["no", "ret", "sparse", "both"] = "both"   # MMN baseline: no
    softmax: bool = True                            # ANet/TACoS true, Charades false
    att_mode: Literal["all", "v"] = "all"           # ANet/TACoS all, Charades v
    gamma: float = bounded(0.98, lo=0, hi=1)        # decay (ANet/Charades 0.98, TACoS 0.999)
    per_head_decay: bool = False                    # RetNet's gamma_h = 1 - 2^(-5-h) instead of one gamma
    xpos: bool = True                               # xPos rotary on video Q/K
    xpos_scale_base: float = bounded(512.0, lo=1)
    sparse_weight: float = bounded(10.0, lo=0)      # L1 weight on the sparse mask (ANet/Charades 10, TACoS 20)
    conv_hidden: int = bounded(64, lo=1)            # proposal conv (paper 512)
    kernel: int = bounded(5, lo=1)                  # ANet 9, Charades 17, TACoS 5
    conv_layers: int = bounded(2, lo=1)             # ANet 4, Charades 2, TACoS 3
    min_iou: float = bounded(0.5, lo=0, hi=1)       # BCE target rescale (ANet/Charades 0.5-1.0, TACoS 0.3-0.7)
    max_iou: float = bounded(1.0, lo=0, hi=1)
    tau: float = bounded(0.1, lo=1e-6)              # contrastive temperature, both sides
    margin: float = bounded(0.4, lo=0)              # ANet 0.3, Charades 0.4, TACoS 0.1
    top_k: int = bounded(1, lo=1)                   # positives per sentence (TACoS 3)
    neg_iou: float = bounded(0.5, lo=0, hi=1)       # same-video proposals below it are negatives; sentences >= removed
    contrastive_weight: float = bounded(0.1, lo=0)  # Charades 0.05
    only_iou: int = bounded(6, lo=0)                # after this epoch contrastive + sparsity x0.01
    score_pow: float = bounded(0.5, lo=0)           # TACoS 0.3
    nms_thresh: float = bounded(0.5, lo=0, hi=1)    # TACoS 0.4
    thresholds: tuple[float, ...] = (0.3, 0.5, 0.7)  # TACoS 0.1, 0.3, 0.5
    top_windows: int = bounded(10, lo=1)            # windows kept per query in the predictions

    def check(self, where: str) -> None:
        from vidmem.common import UserError
        if self.hidden % self.heads:
            raise UserError(f"params.yaml {where}.hidden: {self.hidden} is not divisible by heads {self.heads}")
        if self.pre_clips % self.num_clips:
            raise UserError(f"params.yaml {where}.pre_clips: {self.pre_clips} is not a multiple of num_clips "
                            f"{self.num_clips}")
        if self.min_iou >= self.max_iou:
            raise UserError(f"params.yaml {where}.min_iou: must be below max_iou")
