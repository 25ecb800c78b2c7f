"""Validation metrics: frame- and video-level scores, the collapse guard, temperature calibration.

A frame's score is its logit margin (logit[fake] - logit[real]); a video's score is the mean
of its frames' margins. Dividing by a temperature T > 0 does not reorder margins, so every
ranking figure (AUC, AP, EER) is the same at any T; only the probabilities, sigmoid(margin / T),
and the log loss depend on it. A video is identified by its path relative to the dataset root
(FF++ reuses `000_003.mp4` under every method).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from common.errors import UserError

# Collapsed = no useful ranking (video AUC at or below this) ...
COLLAPSE_AUC = 0.55
# ...or almost no spread: the video margins vary less than this. A well-ranked model whose
# scores all sit on one side of 0 is *not* collapsed: the temperature fixes it.
COLLAPSE_SPREAD = 1e-3
# Temperature search range (log-uniform bounds of the 1-D minimisation).
T_MIN, T_MAX = 0.01, 100.0
# Probabilities are clipped only inside the log loss (log 0); never before ranking.
LOG_LOSS_EPS = 1e-15


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> float:
    """The rate where false positives equal false negatives, linearly interpolated between
    the two ROC points where (miss rate - false-positive rate) changes sign."""
    fpr, tpr, _ = roc_curve(labels, np.asarray(scores, dtype=np.float64), drop_intermediate=False)
    gap = (1.0 - tpr) - fpr  # starts at 1 (nothing flagged), ends at -1 (everything flagged)
    i = int(np.nonzero(gap <= 0)[0][0])
    if gap[i] == 0 or i == 0:
        return float(fpr[i])
    t = gap[i - 1] / (gap[i - 1] - gap[i])  # where the segment from point i-1 to i crosses 0
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def binary_metrics(labels: Sequence[int], probs: Sequence[float], threshold: float = 0.5,
                   scores: Sequence[float] | None = None) -> dict:
    """AUC, AP, EER (ranked on `scores`, default the probabilities, as float64 and unclipped),
    accuracy and balanced accuracy at `threshold`, and log loss of the fake-probabilities."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    rank = p if scores is None else np.asarray(scores, dtype=np.float64)
    pred = (p >= threshold).astype(np.int64)
    out = {"n": int(y.size), "n_fake": int(y.sum()), "acc": float((pred == y).mean()) if y.size else math.nan}
    recalls = [float((pred[y == c] == c).mean()) for c in (0, 1) if (y == c).any()]
    out["balanced_acc"] = float(np.mean(recalls)) if recalls else math.nan
    q = np.clip(p, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    out["log_loss"] = float(-(y * np.log(q) + (1 - y) * np.log1p(-q)).mean()) if y.size else math.nan
    if len(set(y.tolist())) == 2:
        out["auc"] = float(roc_auc_score(y, rank))
        out["ap"] = float(average_precision_score(y, rank))
        out["eer"] = equal_error_rate(y, rank)
    else:  # AUC is undefined with one class; say so instead of inventing a number
        out["auc"] = out["ap"] = out["eer"] = math.nan
    return out


def frame_margins(logits: torch.Tensor) -> np.ndarray:
    """logit[fake] - logit[real] of [N, 2] logits, as float64: the frame's score."""
    logits = logits.detach().cpu().double()
    return (logits[:, 1] - logits[:, 0]).numpy() if logits.numel() else np.zeros(0)


def margin_probability(margins, temperature: float = 1.0) -> np.ndarray:
    """sigmoid(margin / T) in float64 (tanh form: no overflow for any margin)."""
    return 0.5 * (1.0 + np.tanh(np.asarray(margins, dtype=np.float64) / (2.0 * temperature)))


def video_scores(video_ids: Sequence[str], labels: Sequence[int], scores: Sequence[float]):
    """Mean of each video's frame scores -> (ids, labels, means), ids sorted. Pass frame
    margins (frame_margins) to get the suite's video score, the mean logit margin."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    video_label: dict[str, int] = {}
    for vid, y, s in zip(video_ids, labels, scores):
        sums[vid] += float(s)
        counts[vid] += 1
        video_label[vid] = int(y)
    ids = sorted(sums)
    return ids, np.array([video_label[v] for v in ids]), np.array([sums[v] / counts[v] for v in ids],
                                                                   dtype=np.float64)


def video_probabilities(video_ids: Sequence[str], labels: Sequence[int], logits: torch.Tensor,
                        temperature: float = 1.0):
    """Calibrated video probabilities -> (ids, labels, sigmoid(mean frame margin / T)), ids sorted."""
    ids, vlabels, vmargins = video_scores(video_ids, labels, frame_margins(logits))
    return ids, vlabels, margin_probability(vmargins, temperature)


def collapse_check(margins: Sequence[float], labels: Sequence[int] | None = None) -> dict:
    """Collapsed = the video margins do not rank (AUC <= COLLAPSE_AUC) or barely vary.

    Where the margins sit relative to 0 does not matter: that is calibration, not ranking."""
    m = np.asarray(margins, dtype=np.float64)
    if m.size == 0:
        return {"collapsed": True, "reason": "no validation predictions"}
    spread = float(m.std())
    auc = math.nan
    if labels is not None:
        y = np.asarray(labels, dtype=np.int64)
        if len(set(y.tolist())) == 2:
            auc = float(roc_auc_score(y, m))
    reason = ""
    if spread < COLLAPSE_SPREAD:
        reason = f"scores barely vary (logit std {spread:.2e})"
    elif math.isfinite(auc) and auc <= COLLAPSE_AUC:
        reason = f"video AUC {auc:.3f} <= {COLLAPSE_AUC} (no useful ranking)"
    return {"collapsed": bool(reason), "reason": reason, "auc": auc, "logit_std": spread,
            "fake_share": float((m >= 0).mean())}


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
    """Mean NLL of the video probabilities sigmoid(mean frame margin / T) at this temperature."""
    y = np.asarray(labels, dtype=np.int64)
    index, vlabels = _video_index(y, video_ids)
    return _nll(frame_margins(logits), index, vlabels, temperature)


def _nll(margin: np.ndarray, index: np.ndarray, vlabels: np.ndarray, temperature: float) -> float:
    video = np.bincount(index, margin, minlength=vlabels.size) / np.bincount(index, minlength=vlabels.size)
    signed = np.where(vlabels == 1, -video, video) / temperature
    return float(np.logaddexp(0.0, signed).mean())  # -log sigmoid(+-m / T), exact for any margin


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
    margin = frame_margins(logits)
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

    Ranking figures and the guard read margins, so they are the same at every temperature;
    accuracy and log loss read the probabilities at `temperature`."""
    margins = frame_margins(logits)
    ids, vlabels, vmargins = video_scores(video_ids, labels, margins)
    return {
        "frame": binary_metrics(labels, margin_probability(margins, temperature), scores=margins),
        "video": binary_metrics(vlabels, margin_probability(vmargins, temperature), scores=vmargins),
        "collapse": collapse_check(vmargins, vlabels),
    }


def require_two_classes(labels: Sequence[int], what: str) -> None:
    """A split that ranks nothing (one class) cannot pick an epoch or fit a temperature."""
    y = set(int(v) for v in labels)
    if len(y) < 2:
        only = "no videos" if not y else f"only {'fake' if 1 in y else 'real'} videos"
        raise UserError(f"{what} has {only}: its AUC is undefined, so no epoch can be chosen on it")
