"""The combiners and their honest figure: grouped out-of-fold stacking.

Input: each student's video scores over one pool of videos (NaN where the student cannot see
the video: AV on a video without usable audio), the labels, each video's group (a person or
source footage, which must never straddle folds) and which videos are fresh (no student
selected an epoch or fitted a temperature on them).

Deployed rule (predict, evaluate): students at chance on the pool get no weight; a video is
scored by the combiner fit on exactly the useful students that see it. The out-of-fold figure
repeats that whole rule inside each fold, the chance rule included, and the headline is that
figure on the fresh videos only.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

from common.ensemble.students import logit
from common.errors import UserError

CHANCE_MARGIN = 0.05  # |AUC - 0.5| below this: the student adds nothing but noise
MAX_FOLDS = 5


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC over the finite scores; NaN when they do not hold both classes."""
    from sklearn.metrics import roc_auc_score

    keep = np.isfinite(p)
    if len(set(y[keep].tolist())) < 2:
        return math.nan
    return float(roc_auc_score(y[keep], np.asarray(p, dtype=np.float64)[keep]))


def chance_reason(value: float) -> str | None:
    """Why a student with this validation AUC gets weight 0, or None when it is kept."""
    if value is None or not math.isfinite(value):
        return "validation AUC undefined"
    if abs(value - 0.5) < CHANCE_MARGIN:
        return f"validation AUC {value:.3f} is at chance (within {CHANCE_MARGIN} of 0.5)"
    return None


def useful(scores: dict[str, np.ndarray], y: np.ndarray) -> list[str]:
    return [n for n, p in scores.items() if chance_reason(auc(y, p)) is None]


def _pipeline():
    """Logistic regression on standardised features (the L2 penalty then treats every
    student alike, whatever the spread of its logits); classes weighted to balance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000))


def fit_one(scores: dict[str, np.ndarray], names: Sequence[str], y: np.ndarray) -> dict | None:
    """One combiner on these students, fit on the videos all of them see (standardisation
    folded into the weights: fused = sigmoid(b + sum w_i * logit(p_i))); None when those
    videos do not hold both classes."""
    x = np.column_stack([logit(scores[n]) for n in names])
    seen = np.isfinite(np.column_stack([scores[n] for n in names])).all(axis=1)
    if len(set(y[seen].tolist())) < 2:
        return None
    pipe = _pipeline().fit(x[seen], y[seen])
    scaler, clf = pipe.named_steps["standardscaler"], pipe.named_steps["logisticregression"]
    weights = clf.coef_[0] / scaler.scale_
    return {"students": list(names), "weights": {n: float(w) for n, w in zip(names, weights)},
            "intercept": float(clf.intercept_[0] - np.dot(weights, scaler.mean_))}


def apply(c: dict, scores: dict[str, np.ndarray], i: int) -> float:
    z = c["intercept"] + sum(w * float(logit(scores[n][i])) for n, w in c["weights"].items())
    return 1.0 / (1.0 + math.exp(-z))


def deployed_scores(scores: dict[str, np.ndarray], fit_scores: dict[str, np.ndarray], y_fit: np.ndarray,
                    rows: Sequence[int], used: Sequence[str]) -> np.ndarray:
    """The deployed rule on `rows` of `scores`: each video by the combiner (fit on fit_scores)
    of the `used` students that see it; 0.5 where none does or that combiner cannot be fit."""
    out = np.full(len(rows), 0.5)
    fitted: dict[tuple, dict | None] = {}
    for k, i in enumerate(rows):
        see = tuple(n for n in used if math.isfinite(scores[n][i]))
        if see and see not in fitted:
            fitted[see] = fit_one(fit_scores, see, y_fit)
        if see and fitted[see] is not None:
            out[k] = apply(fitted[see], scores, i)
    return out


def folds(y: np.ndarray, groups: Sequence) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that keep each group whole; [] when there are too few groups."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.asarray(groups, dtype=object)
    per_class = [len(set(groups[y == c].tolist())) for c in (0, 1)]
    k = min(MAX_FOLDS, *per_class)
    if k < 2:
        return []
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=0)
    return list(cv.split(np.zeros(len(y)), y, groups.astype(str)))


def out_of_fold(scores: dict[str, np.ndarray], y: np.ndarray, groups: Sequence,
                fixed: Sequence[str] | None = None) -> np.ndarray | None:
    """Each video scored by the rule fit on the other folds. `fixed` None: the deployed rule,
    chance rule included; else that one combiner (NaN on videos not all of it sees)."""
    splits = folds(y, groups)
    if not splits:
        return None
    out = np.full(len(y), np.nan)
    for train, test in splits:
        tr = {n: p[train] for n, p in scores.items()}
        if fixed is None:
            out[test] = deployed_scores(scores, tr, y[train], test, useful(tr, y[train]))
            continue
        c = fit_one(tr, fixed, y[train])
        for i in test:
            if c is not None and all(math.isfinite(scores[n][i]) for n in fixed):
                out[i] = apply(c, scores, i)
    return out


def _figure(y: np.ndarray, p: np.ndarray | None, mask: np.ndarray) -> float | None:
    if p is None:
        return None
    value = auc(y[mask], p[mask])
    return value if math.isfinite(value) else None


def fit_combiner(scores: dict[str, np.ndarray], labels: Sequence[int], groups: Sequence | None = None,
                 fresh: Sequence[bool] | None = None) -> dict:
    """A combiner for every non-empty subset of the students that beat chance, and its figures.

    -> {"models": {name: {val_auc, n_seen, used, dropped_reason, weight, note}}, "combiners",
        "intercept", "fused", "fused_oof", "val_auc_oof" (all videos), "headline_auc" (fresh
        videos only; None without both classes there), "val_auc_in_sample"}; the weights in
    "models" are the all-students combiner's. Groups default to one per video, fresh to none.
    UserError when no student beats chance."""
    y = np.asarray(labels, dtype=np.int64)
    scores = {n: np.asarray(p, dtype=np.float64) for n, p in scores.items()}
    groups = list(range(len(y))) if groups is None else list(groups)
    fresh_mask = np.zeros(len(y), bool) if fresh is None else np.asarray(fresh, dtype=bool)
    rows = {}
    for name, p in scores.items():
        value = auc(y, p)
        why = chance_reason(value)
        rows[name] = {"val_auc": value if math.isfinite(value) else None, "n_seen": int(np.isfinite(p).sum()),
                      "used": why is None, "dropped_reason": why, "weight": 0.0, "note": ""}
    used = [n for n in scores if rows[n]["used"]]
    if not used:
        raise UserError("no student beats chance on the validation videos ("
                        + "; ".join(f"{n}: {r['dropped_reason']}" for n, r in rows.items())
                        + "); nothing to fuse")
    combiners = []
    for subset in (s for k in range(1, len(used) + 1) for s in itertools.combinations(used, k)):
        c = fit_one(scores, subset, y)
        if c is not None:
            c["auc_oof"] = _figure(y, out_of_fold(scores, y, groups, fixed=subset), np.ones(len(y), bool))
            combiners.append(c)
    full = max(combiners, key=lambda c: len(c["students"]))  # the one on every useful student
    for n, w in full["weights"].items():
        rows[n]["weight"] = w
        if w < 0:
            rows[n]["note"] = "negative weight: ranks validation videos the wrong way round"
    fused = deployed_scores(scores, scores, y, range(len(y)), used)
    oof = out_of_fold(scores, y, groups)
    everything = np.ones(len(y), bool)
    return {"models": rows, "intercept": full["intercept"], "fused": fused, "fused_oof": oof,
            "val_auc_oof": _figure(y, oof, everything), "headline_auc": _figure(y, oof, fresh_mask),
            "val_auc_in_sample": _figure(y, fused, everything), "combiners": combiners}
