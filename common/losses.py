"""Training losses: plain CE (stage 1), focal (stage 2), class-weighted CE (stage 4).

All of them take logits [B, 2] and int64 labels [B] (1 = fake) and return the batch mean.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError

LOSS_KINDS = ("ce", "focal", "weighted_ce")


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017): -alpha_t * (1 - p_t)^gamma * log(p_t), averaged over the batch.

    `alpha` weights the fake class (label 1) and `1 - alpha` the real class; `alpha=None` turns
    the class weighting off. With gamma=0 and alpha=None this is plain cross-entropy.
    """

    def __init__(self, alpha: float | None, gamma: float) -> None:
        super().__init__()
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"focal alpha must lie in [0, 1], got {alpha}")
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.alpha = alpha
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # float32 even under autocast: (1 - p)^gamma of a half-precision p underflows.
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, labels.long().unsqueeze(1)).squeeze(1)
        loss = -log_p
        if self.gamma:
            loss = loss * (1.0 - log_p.exp()).clamp(min=0.0).pow(self.gamma)
        if self.alpha is not None:
            is_fake = (labels == 1).to(loss.dtype)
            loss = loss * (self.alpha * is_fake + (1.0 - self.alpha) * (1.0 - is_fake))
        return loss.mean()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"


def class_weights_from_counts(counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Inverse-frequency class weights, w_c = N / (K * n_c), as float32 [len(counts)].

    They average to 1 over the samples (sum_c n_c * w_c = N), so the loss scale matches plain CE.
    A class with zero samples gets weight 0 (it cannot occur in the batch anyway) and K counts only
    the classes present; an all-zero count raises ValueError.
    """
    n = torch.as_tensor(counts, dtype=torch.float64).flatten()
    if (n < 0).any():
        raise ValueError(f"class counts must be >= 0, got {n.tolist()}")
    present = n > 0
    if not present.any():
        raise ValueError("class counts are all zero: no training samples to weight")
    weights = torch.zeros_like(n)
    weights[present] = n.sum() / (present.sum() * n[present])
    return weights.float()


def build_loss(kind: str, class_counts: Sequence[int] | torch.Tensor | None = None,
               alpha: float | None = None, gamma: float | None = None) -> nn.Module:
    """The loss module of a stage: "ce", "focal" (alpha, gamma: the recipe's) or "weighted_ce"
    (class_counts).

    The module keeps its class weights as a buffer, so `.to(device)` moves them with it.
    """
    if kind == "ce":
        return nn.CrossEntropyLoss()
    if kind == "focal":
        if gamma is None:
            raise ValueError("focal loss needs gamma (the recipe's focal_gamma)")
        return FocalLoss(alpha=alpha, gamma=gamma)
    if kind == "weighted_ce":
        if class_counts is None:
            raise ValueError("weighted_ce needs the training set's class_counts")
        return nn.CrossEntropyLoss(weight=class_weights_from_counts(class_counts))
    raise UserError(f"unknown loss {kind!r}; expected one of {', '.join(LOSS_KINDS)}")
