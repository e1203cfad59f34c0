"""EMCL's expectation-maximisation compact subspace (`tvr/models/until_module.py: Emcl`), over channels.

X [S, C] stacks S samples (text-conditioned pooled videos and texts, jointly). The data points are the C
channels, each a vector over the S samples; K bases live in sample space:

    μ ← the momentum state (1×K) repeated over samples                       [S, K]
    repeat `iters` times, under no_grad:
        E: Z = softmax_k(Xᵀμ / λ), then each basis' column normalised over channels    [C, K]
        M: μ = X Z, then each basis L2-normalised over samples                         [S, K]
    out = X + β · μ Zᵀ          (μ, Z carry no gradient: the reconstruction is detached)

While training, the momentum state follows μ ← m·μ + (1−m)·mean_samples(μ_new), as the code does.

Why a second state. The reconstruction is linear in X once the EM has settled: μ Zᵀ = X · Z D⁻¹ Zᵀ with D the
per-basis norms over samples, i.e. X · A for a C×C operator A that depends on *every* sample of the block. That
is why EMCL's scores change with its 32×32 evaluation blocks. We keep a running (bias-corrected) average of A
over training steps, with the same momentum, and at inference apply the frozen operator row by row,
out = X + β · X Ā — BatchNorm's split (batch statistics in training, running statistics at inference), so a
score depends on its own text-video pair only and any block size gives the same matrix. `block` mode (the
seed's: EM inside each evaluation block from the momentum state) is kept for comparison.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class EMSubspace(nn.Module):
    """K-basis EM over feature channels with EMCL's momentum state, plus the running reconstruction operator."""

    def __init__(self, dim: int, bases: int = 32, iters: int = 9, lamd: float = 1.0, beta: float = 3.0,
                 momentum: float = 0.9, init: str = "sign", eps: float = 1e-6):
        super().__init__()
        self.bases, self.iters, self.lamd, self.beta, self.momentum, self.eps = bases, iters, lamd, beta, momentum, eps
        mu = torch.randn(1, bases) * math.sqrt(2.0 / bases)
        if init == "sign":  # the code's `mu / mu.norm(dim=0)` on a 1×K tensor: every entry becomes ±1
            mu = mu / (eps + mu.norm(dim=0, keepdim=True))
        elif init == "normal":  # one unit vector over the K bases, so bases start distinct
            mu = mu / mu.norm()
        else:
            raise ValueError(f"em init must be sign or normal, got {init!r}")
        self.register_buffer("mu", mu)                                   # the momentum state [1, K]
        self.register_buffer("operator", torch.zeros(dim, dim))          # running Σ (1−m) m^i A_i  [C, C]
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, mu0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the EM iterations on X [S, C] (no gradient) → (μ [S, K], Z [C, K])."""
        x = x.detach()
        mu = (self.mu if mu0 is None else mu0).to(x).expand(x.shape[0], -1)
        z = None
        for _ in range(self.iters):
            z = torch.softmax(x.t() @ mu / self.lamd, dim=1)              # E: channels → bases
            z = z / (self.eps + z.sum(dim=0, keepdim=True))
            mu = x @ z                                                    # M: bases over samples
            mu = mu / (self.eps + mu.norm(dim=0, keepdim=True))
        if z is None:
            raise ValueError("EM needs at least one iteration")
        return mu, z

    def reconstruction_operator(self, x: torch.Tensor, mu: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """A [C, C] with μ Zᵀ = X A (μ = X Z / its column norms)."""
        norms = self.eps + (x.detach() @ z).norm(dim=0)
        return (z / norms) @ z.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training / block mode: EM on this matrix. In training the momentum state and Ā are updated."""
        mu, z = self.fit(x)
        rec = (mu @ z.t()).detach()
        if self.training:
            with torch.no_grad():
                self.mu.mul_(self.momentum).add_((1 - self.momentum) * mu.mean(dim=0, keepdim=True))
                a = self.reconstruction_operator(x, mu, z)
                self.operator.mul_(self.momentum).add_((1 - self.momentum) * a.to(self.operator))
                self.updates.add_(1)
        return x + self.beta * rec

    def frozen_operator(self) -> torch.Tensor:
        """Ā, bias-corrected (Adam's 1 − mᵗ), or 0 before any training step."""
        n = int(self.updates)
        if n == 0:
            return torch.zeros_like(self.operator)
        return self.operator / (1 - self.momentum ** n)

    def apply_frozen(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: x + β · x Ā, row by row (each row depends on itself only)."""
        return x + self.beta * (x @ self.frozen_operator().to(x)).detach()
