"""Training objective of PDVC/CM2 (§2.3): focal + gIoU (+ L1) + event counter + caption NLL, on every layer.

total = Σ_layers 2·focal + 4·gIoU + 0·L1 + 0.5·counter + 2·caption (weights from the config). Localisation
terms are normalised by the number of ground-truth events in the batch, as PDVC does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from models.dense.config import DenseConfig
from models.dense.matcher import HungarianMatcher
from models.dense.segments import cl_to_se, generalized_segment_iou


# ---------------------------------------------------------------------------------------------------- terms
def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, num_boxes: float, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Σ over all queries of α_t (1 − p_t)^γ · BCE, divided by the number of ground-truth events."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum() / num_boxes


def giou_loss(pred: Tensor, target: Tensor, num_boxes: float) -> Tensor:
    """Σ (1 − gIoU) over matched (centre, length) pairs [n, 2], / number of ground-truth events."""
    if len(pred) == 0:
        return pred.sum() * 0
    giou = torch.diagonal(generalized_segment_iou(cl_to_se(pred), cl_to_se(target)))
    return (1 - giou).sum() / num_boxes


def l1_loss(pred: Tensor, target: Tensor, num_boxes: float) -> Tensor:
    return (pred - target).abs().sum() / num_boxes


def count_bin_rates(event_counts: Sequence[int], max_eseq_length: int) -> Tensor:
    """Frequency of each counter bin min(n, E) among the training videos → [E+1] (PDVC hard-codes ANet's)."""
    if len(event_counts) == 0:
        return torch.zeros(max_eseq_length + 1)
    bins = torch.as_tensor([min(int(n), max_eseq_length) for n in event_counts])
    return torch.bincount(bins, minlength=max_eseq_length + 1).to(torch.float32) / len(bins)


def counter_loss(
    count_logits: Tensor, counts: Tensor, bin_rates: Tensor, sigma: float = 2.0, beta: float = 1.0
) -> Tensor:
    """BCE-with-logits over count bins; target bin min(n, E).

    Bin weight 1 − (training frequency of the bin): frequent counts cost less. Negative bins k are scaled by
    (1 − exp(−(k − n)² / 2σ²))^β, so a near-miss count costs less than a far one.
    """
    e = count_logits.shape[1] - 1
    target_bin = counts.clamp(max=e).to(torch.int64)
    target = F.one_hot(target_bin, e + 1).to(count_logits.dtype)
    k = torch.arange(e + 1, device=count_logits.device, dtype=count_logits.dtype)
    near = torch.exp(-((k[None, :] - target_bin[:, None].to(k.dtype)) ** 2) / (2 * sigma**2))
    weight = (1 - bin_rates.to(count_logits.device, count_logits.dtype))[None, :]
    loss = F.binary_cross_entropy_with_logits(
        count_logits, target, weight=weight.expand_as(target), reduction="none"
    )
    coef = target + (1 - near) ** beta * (1 - target)
    return (loss * coef).mean(1).mean()


def caption_nll(logprobs: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Per-sentence mean token NLL: logprobs [n, S, V+1], targets/mask [n, S] → [n]."""
    picked = logprobs.gather(-1, targets[..., None]).squeeze(-1)
    mask = mask.to(logprobs.dtype)
    return -(picked * mask).sum(1) / (mask.sum(1) + 1e-6)


def caption_targets(tokens: Tensor, n_words: Tensor) -> tuple[Tensor, Tensor]:
    """tokens [..., S] = [0, w1..wn, 0, pad] → (targets tokens[..., 1:], mask on the n words + end token)."""
    steps = torch.arange(tokens.shape[-1] - 1, device=tokens.device)
    return tokens[..., 1:], steps < (n_words[..., None] + 1)


# -------------------------------------------------------------------------------------------------- criterion
class SetCriterion:
    """Matches every decoder layer's predictions to the targets and sums the weighted losses."""

    def __init__(self, cfg: DenseConfig, bin_rates: Tensor):
        self.cfg = cfg
        self.matcher = HungarianMatcher.from_config(cfg)
        self.bin_rates = bin_rates
        self.weights = {
            "loss_ce": cfg.cls_loss_coef,
            "loss_giou": cfg.giou_loss_coef,
            "loss_bbox": cfg.bbox_loss_coef,
            "loss_counter": cfg.count_loss_coef,
            "loss_caption": cfg.caption_loss_coef,
        }

    def __call__(self, model, out, batch) -> tuple[Tensor, dict[str, float]]:
        """model: DenseCaptioner, out: its DenseOutput, batch: DenseBatch → (weighted total, every term)."""
        cfg = self.cfg
        device = out.last.logits.device
        targets = [b.to(device) for b in batch.boxes]
        counts = torch.as_tensor([len(t) for t in targets], device=device)
        num_boxes = max(float(counts.sum()), 1.0)
        layers = list(enumerate(out.layers)) if cfg.aux_loss else [(len(out.layers) - 1, out.last)]
        terms: dict[str, Tensor] = {}
        total = out.last.logits.new_zeros(())
        for i, layer in layers:
            suffix = "" if i == len(out.layers) - 1 else f"_{i}"
            indices = self.matcher(layer.logits, layer.boxes, targets)
            target_cls = torch.zeros_like(layer.logits)
            for b, (q, _) in enumerate(indices):
                target_cls[b, q.to(device)] = 1.0
            pred = torch.cat([layer.boxes[b, q.to(device)] for b, (q, _) in enumerate(indices)])
            tgt = torch.cat([targets[b][t.to(device)] for b, (_, t) in enumerate(indices)])
            layer_terms = {
                "loss_ce": sigmoid_focal_loss(
                    layer.logits, target_cls, num_boxes, cfg.focal_alpha, cfg.focal_gamma
                ),
                "loss_giou": giou_loss(pred, tgt, num_boxes),
                "loss_bbox": l1_loss(pred, tgt, num_boxes),
                "loss_counter": counter_loss(
                    layer.count_logits, counts, self.bin_rates, cfg.counter_sigma, cfg.counter_beta
                ),
            }
            if cfg.caption_loss_coef > 0:
                layer_terms["loss_caption"] = self.caption_loss(model, layer, out.memory, indices, batch)
            for name, value in layer_terms.items():
                terms[name + suffix] = value
                total = total + self.weights[name] * value
        logged = {name: float(value.detach()) for name, value in terms.items()}
        logged["loss"] = float(total.detach())
        return total, logged

    @staticmethod
    def caption_loss(model, layer, memory, indices, batch) -> Tensor:
        """Teacher-forced NLL of each matched query's ground-truth sentence, averaged over sentences."""
        device = layer.hs.device
        if sum(len(q) for q, _ in indices) == 0:
            return layer.hs.sum() * 0
        hs = pad_sequence([layer.hs[b, q.to(device)] for b, (q, _) in enumerate(indices)], batch_first=True)
        ref = pad_sequence(
            [layer.reference[b, q.to(device)] for b, (q, _) in enumerate(indices)], batch_first=True
        )
        n_words = pad_sequence([batch.n_words[b][t] for b, (_, t) in enumerate(indices)], batch_first=True)
        width = int(n_words.max()) + 2
        tokens = pad_sequence(
            [batch.tokens[b][t, :width] for b, (_, t) in enumerate(indices)], batch_first=True
        )
        real = pad_sequence([torch.ones(len(q), dtype=torch.bool) for q, _ in indices], batch_first=True)
        tokens, n_words, real = tokens.to(device), n_words.to(device), real.to(device)
        logprobs = model.caption_head(hs, ref, memory, tokens)
        targets, mask = caption_targets(tokens, n_words)
        return caption_nll(logprobs[real], targets[real], mask[real]).mean()
