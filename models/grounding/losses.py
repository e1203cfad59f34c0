"""MMN's two losses (`MCG-NJU/MMN: mmn/modeling/mmn/loss.py`) and the GT IoU map they are trained against."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def moment_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU (MMN: intersection / hull) between windows a [..., 2] and b [..., 2], broadcast."""
    inter = (torch.minimum(a[..., 1], b[..., 1]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    hull = torch.maximum(a[..., 1], b[..., 1]) - torch.minimum(a[..., 0], b[..., 0])
    return inter / hull.clamp(min=1e-9)


def cell_moments(n: int, device=None) -> torch.Tensor:
    """[N, N, 2] relative moments of the map's cells: (i, j) → [i/N, (j+1)/N]."""
    i = torch.arange(n, device=device, dtype=torch.float32)
    return torch.stack(torch.broadcast_tensors(i[:, None] / n, (i[None, :] + 1) / n), -1)


def iou2d(moments: torch.Tensor, n: int) -> torch.Tensor:
    """GT IoU maps [..., N, N] of relative moments [..., 2] (in [0, 1])."""
    return moment_iou(cell_moments(n, moments.device), moments[..., None, None, :])


def scaled_bce(scores: torch.Tensor, iou: torch.Tensor, mask2d: torch.Tensor, min_iou: float, max_iou: float
               ) -> torch.Tensor:
    """BCE of IoU scores [M, N, N] (probabilities) against the GT IoU rescaled from [min, max] to [0, 1] and
    clamped, averaged over the valid cells."""
    target = ((iou - min_iou) / (max_iou - min_iou)).clamp(0, 1)
    s = scores[:, mask2d].clamp(1e-6, 1 - 1e-6)
    return F.binary_cross_entropy(s, target[:, mask2d])


def mutual_matching(prop: torch.Tensor, sent: torch.Tensor, video_of: torch.Tensor, iou: torch.Tensor,
                    moments: torch.Tensor, mask2d: torch.Tensor, tau: float = 0.1, margin: float = 0.4,
                    top_k: int = 1, neg_iou: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """MMN's mutual-matching contrastive loss.

    prop [B, C, N, N] contrastive map features, sent [M, C] the M sentences of the batch, video_of [M] their
    video, iou [M, N, N] their GT IoU maps, moments [M, 2] their GT moments. Positives: each sentence's top-k
    IoU proposals (score − margin). Video side: a positive proposal against every sentence of the batch but
    same-video sentences whose GT overlaps its own (IoU ≥ neg_iou). Sentence side: a sentence against its
    positive, the same-video proposals with IoU < neg_iou and every proposal of the other videos.
    Masked-out negatives are excluded outright (MMN multiplies their similarity by 0, which still counts
    exp(0) in the denominator).
    """
    b, c = prop.shape[:2]
    feats = F.normalize(prop[:, :, mask2d], dim=1)                         # [B, C, P]
    s = F.normalize(sent, dim=1)                                           # [M, C]
    iou1d = iou[:, mask2d]                                                 # [M, P]
    top = iou1d.topk(top_k, dim=-1).indices                                # [M, k]
    pos_feat = feats[video_of][torch.arange(len(s))[:, None], :, top]     # [M, k, C]
    pos = (pos_feat * s[:, None]).sum(-1) - margin                         # [M, k]
    # video side: positive proposal vs all sentences
    vid_all = torch.einsum("mkc,nc->mkn", pos_feat, s)                     # [M, k, M]
    eye = torch.eye(len(s), dtype=torch.bool, device=s.device)
    vid_all = vid_all - margin * eye[:, None].float()
    same = video_of[:, None] == video_of[None, :]
    overlap = moment_iou(moments[:, None], moments[None, :]) >= neg_iou
    keep_v = ~(same & overlap) | eye
    vid_all = vid_all.masked_fill(~keep_v[:, None], float("-inf"))
    loss_vid = -(pos / tau - torch.logsumexp(vid_all / tau, dim=-1)).mean()
    # sentence side: sentence vs all proposals of the batch
    sent_all = torch.einsum("mc,bcp->mbp", s, feats)                       # [M, B, P]
    own = torch.zeros(len(s), b, dtype=torch.bool, device=s.device)
    own[torch.arange(len(s)), video_of] = True
    neg_keep = ~own[:, :, None] | (iou1d < neg_iou)[:, None, :]            # other videos: all; own: low IoU
    negs = sent_all.masked_fill(~neg_keep, float("-inf")).flatten(1)       # [M, B·P]
    logits = torch.cat((pos[:, :, None], negs[:, None].expand(-1, pos.shape[1], -1)), -1) / tau
    loss_sent = -(pos / tau - torch.logsumexp(logits, dim=-1)).mean()
    return loss_vid, loss_sent
