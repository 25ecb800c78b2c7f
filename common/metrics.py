"""Validation metrics: frame- and video-level scores, the collapse guard, temperature calibration.

Video-level scores are the mean of a video's frame probabilities; a video is identified by
its path relative to the dataset root (FF++ reuses `000_003.mp4` under every method).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

# A model whose validation probabilities spread less than this is not discriminating.
COLLAPSE_STD = 1e-3
# ...or one that calls (almost) every validation video the same class.
COLLAPSE_MAJORITY = 0.98


def equal_error_rate(labels: np.ndarray, probs: np.ndarray) -> float:
    """The rate where false positives equal false negatives (interpolated on the ROC)."""
    fpr, tpr, _ = roc_curve(labels, probs)
    fnr = 1.0 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2.0)


def binary_metrics(labels: Sequence[int], probs: Sequence[float], threshold: float = 0.5) -> dict:
    """AUC, AP, EER, accuracy, balanced accuracy and log loss of fake-probabilities."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    pred = (p >= threshold).astype(np.int64)
    out = {"n": int(y.size), "n_fake": int(y.sum()), "acc": float((pred == y).mean()) if y.size else math.nan}
    recalls = [float((pred[y == c] == c).mean()) for c in (0, 1) if (y == c).any()]
    out["balanced_acc"] = float(np.mean(recalls)) if recalls else math.nan
    out["log_loss"] = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if y.size else math.nan
    if len(set(y.tolist())) == 2:
        out["auc"] = float(roc_auc_score(y, p))
        out["ap"] = float(average_precision_score(y, p))
        out["eer"] = equal_error_rate(y, p)
    else:  # AUC is undefined with one class; say so instead of inventing a number
        out["auc"] = out["ap"] = out["eer"] = math.nan
    return out


def video_scores(video_ids: Sequence[str], labels: Sequence[int], probs: Sequence[float]):
    """Mean frame probability per video -> (ids, labels, probs), ids sorted."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    video_label: dict[str, int] = {}
    for vid, y, p in zip(video_ids, labels, probs):
        sums[vid] += float(p)
        counts[vid] += 1
        video_label[vid] = int(y)
    ids = sorted(sums)
    return ids, np.array([video_label[v] for v in ids]), np.array([sums[v] / counts[v] for v in ids])


def collapse_check(probs: Sequence[float], threshold: float = 0.5) -> dict:
    """Flags a model that predicts one class for (nearly) everything or barely varies."""
    p = np.asarray(probs, dtype=np.float64)
    if p.size == 0:
        return {"collapsed": True, "reason": "no validation predictions"}
    fake_share = float((p >= threshold).mean())
    std = float(p.std())
    reason = ""
    if std < COLLAPSE_STD:
        reason = f"predictions barely vary (std {std:.2e})"
    elif fake_share >= COLLAPSE_MAJORITY:
        reason = f"{fake_share:.1%} of predictions are FAKE"
    elif fake_share <= 1 - COLLAPSE_MAJORITY:
        reason = f"{1 - fake_share:.1%} of predictions are REAL"
    return {"collapsed": bool(reason), "reason": reason, "fake_share": fake_share, "prob_std": std}


def softmax_fake(logits: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """Probability of class 1 (fake) from [N, 2] logits."""
    return torch.softmax(logits.float() / temperature, dim=1)[:, 1].cpu().numpy()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> float:
    """One scalar T minimising validation NLL of softmax(logits / T) (Guo et al., 2017)."""
    logits = logits.detach().float().cpu()
    labels = labels.detach().long().cpu()
    if logits.numel() == 0 or labels.unique().numel() < 2:
        return 1.0
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return t if math.isfinite(t) and 0.01 < t < 100 else 1.0


def evaluate(video_ids: Sequence[str], labels: Sequence[int], logits: torch.Tensor,
             temperature: float = 1.0) -> dict:
    """All validation figures for one pass: frame level, video level and the collapse guard."""
    probs = softmax_fake(logits, temperature)
    ids, vlabels, vprobs = video_scores(video_ids, labels, probs)
    return {
        "frame": binary_metrics(labels, probs),
        "video": binary_metrics(vlabels, vprobs),
        "collapse": collapse_check(vprobs),
    }
