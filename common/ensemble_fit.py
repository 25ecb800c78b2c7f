"""`python -m common.ensemble fit`: learn how much to trust each student, on validation videos.

students -> the dataset's validation split (never its test split) -> face cache -> calibrated
video scores per student -> students at chance get weight 0 -> logistic regression on
logit(score) -> ensemble.json, ensemble_roc.png and ensemble_auc.md.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from common.checkpoints import atomic_write, stage_paths
from common.datasets import detect_layout, index_dataset
from common.ensemble import (ENSEMBLE_FILE, FORMAT, Settings, Student, availability_line,
                             load_students, logit, make_cache, pick_device, score_videos)
from common.errors import DatasetLayoutError, UserError
from common.face_cache import build_face_cache
from common.metrics import binary_metrics
from common.recipes import RECIPES
from common.reports import roc_plot
from common.stage_data import cap_per_split

CHANCE_MARGIN = 0.05  # |AUC - 0.5| below this: the student adds nothing but noise
MIN_PER_CLASS = 2     # fewer real or fake validation videos than this: refuse to fit
AUC_DRIFT = 0.1       # warn when a student scores this far from its training-time AUC
THRESHOLD = 0.5

log = logging.getLogger("ensemble")


# ----------------------------------------------------------------------------- settings

def training_config(student: Student) -> dict:
    """The stage config a student was trained with: in its file, else in its final-stage
    checkpoint beside it (read memory-mapped: only the small config is needed)."""
    cfg = student.checkpoint.get("config")
    if isinstance(cfg, dict):
        return cfg
    stage = str(student.checkpoint.get("stage"))
    best = stage_paths(student.path.parent, student.name, stage).best if stage in RECIPES else None
    if best is None or not best.is_file():
        return {}
    try:
        ckpt = torch.load(best, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an unreadable sibling only costs us the defaults
        return {}
    cfg = ckpt.get("config") if isinstance(ckpt, dict) else None
    return cfg if isinstance(cfg, dict) else {}


def _agreed(flag, configs: Sequence[dict], key: str, default, cast):
    """The flag if given, else the value every training config agrees on, else the default."""
    if flag is not None:
        return flag
    values = {cast(c[key]) for c in configs if c.get(key) not in (None, "None", "")}
    if len(values) > 1:
        raise UserError(f"the students were trained with different {key} values "
                        f"({', '.join(map(str, sorted(values)))}); pass --{key.replace('_', '-')}")
    return values.pop() if values else default


def choose_settings(students: dict[str, Student], args) -> tuple[Settings, int]:
    """Cache/transform settings and the split seed, matching how the students were trained."""
    configs = [training_config(s) for s in students.values()]
    settings = Settings(
        image_size=_agreed(args.image_size, configs, "image_size", 224, int),
        frames_per_video=_agreed(args.frames_per_video, configs, "frames_per_video", 32, int),
        # the longest clip any student was built for: the training cache is then reused as is
        clip_len=max(int(s.model.options.get("clip_len", 1)) for s in students.values()),
        detector=_agreed(args.face_detector, configs, "face_detector", "haar", str),
        face_model=_agreed(args.face_model, configs, "face_model", None, str))
    return settings, _agreed(args.seed, configs, "seed", 42, int)


# ----------------------------------------------------------------------------- data

def validation_records(data: Path, dataset: str, seed: int, compression: str,
                       max_videos: int | None) -> list:
    """The validation split as the stage scripts drew it (same indexer arguments, same seed)."""
    kw = {"compression": compression} if dataset == "faceforensics" else {"seed": seed}
    val = [r for r in index_dataset(dataset, data, **kw) if r.split == "val"]
    return cap_per_split(val, max_videos, seed)


def check_classes(labels: Sequence[int], where: str) -> None:
    n_fake = int(sum(labels))
    n_real = len(labels) - n_fake
    if min(n_real, n_fake) < MIN_PER_CLASS:
        raise UserError(f"{where}: {n_real} real and {n_fake} fake validation videos; the combiner "
                        f"needs at least {MIN_PER_CLASS} of each (more data or a larger --max-videos)")


# ----------------------------------------------------------------------------- combiner

def chance_reason(auc: float) -> str | None:
    """Why a student with this validation AUC gets weight 0, or None when it is kept."""
    if auc is None or not math.isfinite(auc):
        return "validation AUC undefined"
    if abs(auc - 0.5) < CHANCE_MARGIN:
        return f"validation AUC {auc:.3f} is at chance (within {CHANCE_MARGIN} of 0.5)"
    return None


def _combiner():
    """Logistic regression on standardised features (the L2 penalty then treats every
    student alike, whatever the spread of its logits); classes weighted to balance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000))


def _cv_auc(x: np.ndarray, y: np.ndarray) -> float | None:
    """AUC of out-of-fold combiner predictions: the in-sample AUC flatters the combiner."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    k = min(5, int(np.bincount(y, minlength=2).min()))
    if k < 2:
        return None
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=0)
    p = cross_val_predict(_combiner(), x, y, cv=folds, method="predict_proba")[:, 1]
    auc = binary_metrics(y, p)["auc"]
    return float(auc) if math.isfinite(auc) else None


def fit_combiner(scores: dict[str, np.ndarray], labels: Sequence[int]) -> dict:
    """Logistic regression on logit(score) of the students that beat chance.

    -> {"models": {name: {val_auc, used, dropped_reason, weight, note}}, "intercept", "fused",
        "val_auc", "val_auc_cv"}; UserError when no student beats chance."""
    y = np.asarray(labels, dtype=np.int64)
    rows = {}
    for name, p in scores.items():
        auc = binary_metrics(y, p)["auc"]
        why = chance_reason(auc)
        rows[name] = {"val_auc": float(auc) if math.isfinite(auc) else None, "used": why is None,
                      "dropped_reason": why, "weight": 0.0, "note": ""}
    used = [n for n in scores if rows[n]["used"]]
    if not used:
        raise UserError("no student beats chance on the validation videos ("
                        + "; ".join(f"{n}: {r['dropped_reason']}" for n, r in rows.items())
                        + "); nothing to fuse")
    x = np.column_stack([logit(scores[n]) for n in used])
    pipe = _combiner().fit(x, y)
    scaler, clf = pipe.named_steps["standardscaler"], pipe.named_steps["logisticregression"]
    # Fold the standardisation into the weights: fused = sigmoid(b + sum w_i * logit(p_i)).
    weights = clf.coef_[0] / scaler.scale_
    intercept = float(clf.intercept_[0] - np.dot(weights, scaler.mean_))
    for n, w in zip(used, weights):
        rows[n]["weight"] = float(w)
        if w < 0:
            rows[n]["note"] = "negative weight: ranks validation videos the wrong way round"
    fused = pipe.predict_proba(x)[:, 1]
    auc = binary_metrics(y, fused)["auc"]
    return {"models": rows, "intercept": intercept, "fused": fused,
            "val_auc": float(auc) if math.isfinite(auc) else None, "val_auc_cv": _cv_auc(x, y)}


# ----------------------------------------------------------------------------- outputs

def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def auc_table(ens: dict) -> str:
    """Markdown table: every student's validation AUC and weight, then the ensemble."""
    lines = [f"Validation videos: {ens['n_videos']} ({ens['n_real']} real, {ens['n_fake']} fake) "
             f"of {ens['dataset']} `{ens['data']}`", "",
             "| model | val video AUC | AUC at training | weight | note |", "|---|---|---|---|---|"]
    for m in ens["models"]:
        note = (m["dropped_reason"] or m["note"]).replace("|", "\\|")
        weight = f"{m['weight']:+.3f}" if m["used"] else "0"
        lines.append(f"| {m['name']} | {_num(m['val_auc'])} | {_num(m['trained_val_auc'])} | "
                     f"{weight} | {note} |")
    lines.append(f"| **ensemble** | **{_num(ens['val_auc'])}** | | intercept {ens['intercept']:+.3f} "
                 "| in-sample: fit on these videos |")
    lines.append(f"| ensemble, cross-validated | {_num(ens['val_auc_cv'])} | | | out-of-fold "
                 "combiner (the honest estimate) |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, ens: dict, scores: dict[str, np.ndarray], labels: np.ndarray,
                  fused: np.ndarray) -> dict[str, Path]:
    paths = {"json": out / ENSEMBLE_FILE, "roc": out / "ensemble_roc.png", "md": out / "ensemble_auc.md"}
    atomic_write(paths["json"], lambda f: f.write(json.dumps(ens, indent=1) + "\n"), mode="w")
    y = labels.tolist()
    curves = {name: (y, p.tolist()) for name, p in scores.items()}
    curves["ensemble"] = (y, fused.tolist())
    roc_plot(curves, paths["roc"], f"validation ROC, {ens['dataset']} ({ens['n_videos']} videos)")
    atomic_write(paths["md"], lambda f: f.write("# Ensemble validation AUC\n\n" + auc_table(ens)), mode="w")
    return paths


def ensemble_record(students: dict[str, Student], unavailable: dict[str, str], fit: dict,
                    settings: Settings, dataset: str, data: Path, labels: np.ndarray) -> dict:
    models = []
    for name, st in students.items():
        row = fit["models"][name]
        models.append({"name": name, "checkpoint": str(st.path.absolute()),
                       "temperature": st.temperature, "preprocessing": st.preprocessing,
                       "clip_len": st.clip_len, "fingerprint": st.fingerprint,
                       "trained_val_auc": st.trained_val_auc(), **row})
    return {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "feature": "logit of the calibrated video fake probability, clipped to [1e-6, 1-1e-6]",
            "models": models, "intercept": fit["intercept"], "threshold": THRESHOLD,
            "val_auc": fit["val_auc"], "val_auc_cv": fit["val_auc_cv"], "settings": asdict(settings),
            "dataset": dataset, "data": str(data), "split": "val", "n_videos": int(len(labels)),
            "n_real": int((labels == 0).sum()), "n_fake": int((labels == 1).sum()),
            "unavailable": unavailable}


# ----------------------------------------------------------------------------- command

def run_fit(args) -> int:
    args.workers = max(0, args.workers)
    students, missing, incompatible = load_students(args.checkpoint_dir)
    print(availability_line(students, missing))
    for name, why in incompatible.items():
        print(f"{name}: present but incompatible, not used ({why})")
    if not students:
        raise UserError(f"{args.checkpoint_dir}: no usable <model>_model_student.pt here")
    dataset = args.dataset or detect_layout(args.data)
    if dataset is None:
        raise DatasetLayoutError(f"{args.data}: not a FaceForensics++, Celeb-DF or DFDC root "
                                 "(or pass --dataset)")
    settings, seed = choose_settings(students, args)
    val = validation_records(args.data, dataset, seed, args.compression, args.max_videos)
    check_classes([r.label for r in val], str(args.data))
    cache = make_cache(args.cache_dir, dataset, settings)
    summary = build_face_cache(val, cache, workers=args.workers, face_model=settings.face_model,
                               progress=sys.stderr.isatty())
    usable = [r for r in val if cache.is_complete(r.rel)]
    if len(usable) < len(val):
        log.warning("%d of %d validation videos have no face crops (skipped: %s)",
                    len(val) - len(usable), len(val), summary["skipped"] or summary["failed"])
    check_classes([r.label for r in usable], f"{cache.dir} (videos with faces)")
    device = pick_device(args.device)
    scores, ids, labels = {}, None, None
    for name, st in students.items():
        got_ids, got_labels, probs = score_videos(st, usable, cache, settings, device,
                                                  args.batch_size, args.workers)
        if ids is not None and got_ids != ids:
            raise RuntimeError(f"{name} scored a different set of videos than the other students")
        ids, labels, scores[name] = got_ids, got_labels, probs
    fit = fit_combiner(scores, labels)
    unavailable = {**{n: "missing" for n in missing},
                   **{n: f"present but incompatible: {why}" for n, why in incompatible.items()}}
    ens = ensemble_record(students, unavailable, fit, settings, dataset, args.data, labels)
    for m in ens["models"]:
        if m["val_auc"] is not None and m["trained_val_auc"] is not None \
                and abs(m["val_auc"] - m["trained_val_auc"]) > AUC_DRIFT:
            log.warning("%s: validation AUC %.3f here, %.3f at training: are the image size, frames "
                        "per video, detector and seed the training ones?", m["name"], m["val_auc"],
                        m["trained_val_auc"])
    paths = write_outputs(args.out or args.checkpoint_dir, ens, scores, labels, fit["fused"])
    print(auc_table(ens))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
