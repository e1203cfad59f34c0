"""The MemBridge family's model keys (`families.membridge` + `train.<name>` in params.yaml).

One config serves the four stage kinds (`task`: pretrain, retrieval, caption, qa); `bridge: false` is the
baseline: the same fusion encoder with full attention and no bridge tokens. Paper values (MemBridge, IEEE TIP
2023, `jahhaoyang/MemBridge: Pretrain_fusion_memory/`) are noted beside the SynthVid defaults.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vidmem.common import UserError
from vidmem.params import bounded


@dataclass
class MemBridgeConfig:
    task: Literal["pretrain", "retrieval", "caption", "qa"] = "pretrain"
    bridge: bool = True                           # false: the baseline (full attention, no bridge tokens)
    # inputs
    max_frames: int = bounded(12, lo=1)           # paper 12 frames at 1 fps
    max_words: int = bounded(20, lo=1)            # paper 32 words (CLIP tokens)
    # fusion encoder
    width: int = bounded(128, lo=8)               # paper 512
    heads: int = bounded(4, lo=1)                 # paper 8
    ffn: int = bounded(256, lo=1)                 # MLP hidden size (paper 2048, CLIP's 4 × width)
    layers: int = bounded(2, lo=1)                # paper 6 (the first 6 blocks of a CLIP-style transformer)
    text_layers: int = bounded(1, lo=1)           # causal word-token encoder (paper: the CLIP text tower)
    dropout: float = bounded(0.1, lo=0, hi=1)
    # bridge tokens from the learnable memory
    memory_slots: int = bounded(256, lo=1)        # paper 8192 slots
    bridges: int = bounded(8, lo=1)               # paper K = 8
    # pre-training losses (equal weights, as the paper)
    mlm_prob: float = bounded(0.15, lo=0, hi=1)   # paper 15 % Bernoulli
    hard_temp: float = bounded(0.1, lo=1e-6)     # softmax temperature over the dual-encoder cosine
                                                  # similarities the hard negatives are drawn from
    vtm_dropout: float = bounded(0.1, lo=0, hi=1)  # paper 0.5 on the matching head's inputs
    # downstream
    rerank_top: int = bounded(10, lo=0)           # retrieval: candidates re-scored per query (0: all)
    rerank_dual: float = bounded(1.0, lo=0)       # + this × the dual cosine in a candidate's score (BLIP: 1)
    beam_size: int = bounded(3, lo=1)             # captioning: the beam width (greedy is scored too)
    length_penalty: float = bounded(1.0, lo=0)    # beam: rank hypotheses by log p / length^length_penalty

    def check(self, where: str) -> None:
        if self.width % self.heads:
            raise UserError(f"params.yaml {where}.width: {self.width} is not a multiple of heads "
                            f"({self.heads})")
