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

# Collapsed = no useful ranking (video AUC at or below this) ...
COLLAPSE_AUC = 0.55
# ...or almost no spread: the video scores' logits vary less than this. A well-ranked model
# whose scores all sit on one side of 0.5 is *not* collapsed: the temperature fixes it.
COLLAPSE_SPREAD = 1e-3
# Temperature search range (log-uniform bounds of the 1-D minimisation).
T_MIN, T_MAX = 0.01, 100.0


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


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def collapse_check(probs: Sequence[float], labels: Sequence[int] | None = None) -> dict:
    """Collapsed = the video scores do not rank (AUC <= COLLAPSE_AUC) or barely vary.

    Where the scores sit relative to 0.5 does not matter: that is calibration, not ranking."""
    p = np.asarray(probs, dtype=np.float64)
    if p.size == 0:
        return {"collapsed": True, "reason": "no validation predictions"}
    spread = float(_logit(p).std())
    auc = math.nan
    if labels is not None:
        y = np.asarray(labels, dtype=np.int64)
        if len(set(y.tolist())) == 2:
            auc = float(roc_auc_score(y, p))
    reason = ""
    if spread < COLLAPSE_SPREAD:
        reason = f"scores barely vary (logit std {spread:.2e})"
    elif math.isfinite(auc) and auc <= COLLAPSE_AUC:
        reason = f"video AUC {auc:.3f} <= {COLLAPSE_AUC} (no useful ranking)"
    return {"collapsed": bool(reason), "reason": reason, "auc": auc, "logit_std": spread,
            "fake_share": float((p >= 0.5).mean())}


def softmax_fake(logits: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """Probability of class 1 (fake) from [N, 2] logits."""
    return torch.softmax(logits.float() / temperature, dim=1)[:, 1].cpu().numpy()


def _video_index(labels: np.ndarray, video_ids: Sequence[str] | None):
    """Frame -> video number, and each video's label (one frame per video when ids are None)."""
    if video_ids is None:
        return np.arange(labels.size), labels
    _, inverse = np.unique(np.asarray(video_ids, dtype=object).astype(str), return_inverse=True)
    vlabels = np.zeros(int(inverse.max()) + 1, dtype=np.int64)
    vlabels[inverse] = labels
    return inverse, vlabels


def video_nll(logits: torch.Tensor, labels: Sequence[int], video_ids: Sequence[str] | None,
              temperature: float) -> float:
    """Mean NLL of the video scores (mean frame probability) at this temperature."""
    y = np.asarray(labels, dtype=np.int64)
    index, vlabels = _video_index(y, video_ids)
    return _nll(np.asarray(logits.float()[:, 1] - logits.float()[:, 0], dtype=np.float64),
                index, vlabels, temperature)


def _nll(margin: np.ndarray, index: np.ndarray, vlabels: np.ndarray, temperature: float) -> float:
    frame_p = 0.5 * (1.0 + np.tanh(margin / (2.0 * temperature)))  # a stable sigmoid
    p = np.bincount(index, frame_p, minlength=vlabels.size) / np.bincount(index, minlength=vlabels.size)
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-(vlabels * np.log(p) + (1 - vlabels) * np.log1p(-p)).mean())


def fit_temperature(logits: torch.Tensor, labels, video_ids: Sequence[str] | None = None,
                    tol: float = 1e-4) -> float:
    """Scalar T minimising the validation NLL of the video scores users see.

    A bounded 1-D minimisation over log T in [log T_MIN, log T_MAX] (Brent's method, no
    gradients, no step size to diverge). Returns 1.0 only when the fit is undefined (no
    logits or one class); a T at a bound is returned as found, not replaced."""
    from scipy.optimize import minimize_scalar

    logits = logits.detach().float().cpu()
    y = np.asarray(labels.tolist() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    if logits.numel() == 0 or len(set(y.tolist())) < 2:
        return 1.0
    margin = (logits[:, 1] - logits[:, 0]).double().numpy()
    index, vlabels = _video_index(y, video_ids)
    if len(set(vlabels.tolist())) < 2:
        return 1.0
    res = minimize_scalar(lambda log_t: _nll(margin, index, vlabels, math.exp(log_t)),
                          bounds=(math.log(T_MIN), math.log(T_MAX)), method="bounded",
                          options={"xatol": tol})
    return float(math.exp(res.x))


def evaluate(video_ids: Sequence[str], labels: Sequence[int], logits: torch.Tensor,
             temperature: float = 1.0) -> dict:
    """All validation figures for one pass: frame level, video level and the collapse guard.

    The guard reads the uncalibrated (T = 1) scores: collapse is about the model's ranking and
    spread, and a large fitted temperature would otherwise shrink a healthy model's spread."""
    probs = softmax_fake(logits, temperature)
    ids, vlabels, vprobs = video_scores(video_ids, labels, probs)
    raw = vprobs if temperature == 1.0 else video_scores(video_ids, labels, softmax_fake(logits))[2]
    return {
        "frame": binary_metrics(labels, probs),
        "video": binary_metrics(vlabels, vprobs),
        "collapse": collapse_check(raw, vlabels),
    }
