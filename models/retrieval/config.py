"""The retrieval family's model keys (`families.retrieval` + `train.<name>` in params.yaml).

meanP (CLIP4Clip) is `pooling: mean, em: false`; EMCL is `pooling: text, em: true`. Paper values (EMCL-Net /
CLIP4Clip on MSR-VTT 1k-A) are noted beside the SynthVid defaults; params.yaml repeats them per dataset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from vidmem.common import UserError
from vidmem.params import bounded


@dataclass
class RetrievalConfig:
    # inputs
    towers: Literal["features", "clip"] = "features"   # features: the tuned CLIP features of the stores;
                                                       # clip: the CLIP towers trained end to end on frames
    max_frames: int = bounded(12, lo=1)                # MSR-VTT/MSVD 12, DiDeMo/ActivityNet 64
    max_words: int = bounded(32, lo=2)                 # MSR-VTT/MSVD 32, DiDeMo/ActivityNet 64
    # feature-mode heads: the top of each tower, trained on the stored features (residual, zero-initialised,
    # so training starts from the tuned CLIP space)
    text_head_layers: int = bounded(1, lo=0)           # transformer blocks over the word tokens (0: none)
    video_head: bool = True                            # a residual linear map on each frame feature
    heads: int = bounded(4, lo=1)                      # attention heads (text head, seqTransf)
    # temporal model and pooling
    temporal: Literal["meanp", "seqtransf"] = "meanp"  # CLIP4Clip meanP | seqTransf (EMCL-Net uses seqTransf)
    temporal_layers: int = bounded(1, lo=1)            # seqTransf blocks (paper 4, from CLIP's text blocks)
    pooling: Literal["mean", "text"] = "mean"          # mean: meanP; text: EMCL's text-conditioned weights
    temp: float = bounded(3.0, lo=1e-6)                # softmax temperature of the frame weights (EMCL 3)
    # the EM compact subspace
    em: bool = False
    em_bases: int = bounded(32, lo=1)                  # centerK (EMCL 32; as an inference module 7)
    em_iters: int = bounded(9, lo=1)                   # stage_num (9; inference module 10)
    em_lambda: float = bounded(1.0, lo=1e-6)           # lamd (1; inference module 0.1)
    em_beta: float = bounded(3.0, lo=0)                # beta (3; inference module 4)
    em_momentum: float = bounded(0.9, lo=0, hi=1)      # momentum (0.9)
    em_init: Literal["sign", "normal"] = "sign"        # sign: the code's ±1 state; normal: distinct bases
    eval_em: Literal["running", "block"] = "running"   # running: frozen operator, block-size invariant;
                                                       # block: the seed's EM inside each eval block
    eval_block: int = bounded(32, lo=1)                # texts (and videos) per evaluation block
    # loss
    logit_scale_init: float = bounded(math.log(1 / 0.07), lo=0)   # CLIP's init; exp clamped to ≤ max_logit_scale
    max_logit_scale: float = bounded(100.0, lo=1)
    # end to end (towers: clip)
    clip_model: str = "vidmem-tiny"                    # open_clip config (paper: ViT-B-32)
    clip_weights: str = "data/checkpoints/encoders/clip/best.pt"   # start weights; none: seeded random init
    clip_resize_mode: str = "squash"
    coef_lr: float = bounded(1e-3, lo=0)               # tower lr = lr × coef_lr (paper 1e-4 × 1e-3)

    def check(self, where: str) -> None:
        if self.pooling == "text" and self.temp <= 0:
            raise UserError(f"params.yaml {where}.temp: must be positive")
        if self.em and self.em_bases < 1:
            raise UserError(f"params.yaml {where}.em_bases: must be at least 1")
