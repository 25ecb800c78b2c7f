"""`python -m common.ensemble fit`: learn how much to trust each student, on validation videos.

students -> the validation videos their checkpoints list (never recomputed, never the test
split) -> face cache -> calibrated video scores per student -> students at chance get weight 0
-> one logistic regression on logit(score) per subset of the others -> ensemble.json,
ensemble_roc.png and ensemble_auc.md. The figures reported are out-of-fold: each video is
scored by a combiner that was not fit on it.
"""
from __future__ import annotations

import itertools
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

from common.data.atomic import atomic_write
from common.data.datasets import detect_layout
from common.ensemble.students import (ENSEMBLE_FILE, FORMAT, Settings, Student, availability_line, check_external,
                                      load_students, logit, make_cache, pick_device, score_videos)
from common.errors import DatasetLayoutError, UserError
from common.faces.extraction import build_face_cache
from common.recipes import DEFAULTS, RECIPES
from common.training.checkpoints import stage_paths
from common.training.metrics import binary_metrics
from common.training.reports import roc_plot
from common.training.stage_data import cap_per_split, index_from

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
        image_size=_agreed(args.image_size, configs, "image_size", DEFAULTS.image_size, int),
        frames_per_video=_agreed(args.frames_per_video, configs, "frames_per_video",
                                 DEFAULTS.frames_per_video, int),
        # the longest clip any student was built for: the training cache is then reused as is
        clip_len=max(int(s.model.options.get("clip_len", 1)) for s in students.values()),
        detector=_agreed(args.face_detector, configs, "face_detector", DEFAULTS.face_detector, str),
        face_model=_agreed(args.face_model, configs, "face_model", None, str))
    return settings, _agreed(args.seed, configs, "seed", DEFAULTS.seed, int)


# ----------------------------------------------------------------------------- data

def validation_list(students: dict[str, Student]) -> tuple[dict, list[str]]:
    """(dataset-index arguments, validation rels) recorded in the students' checkpoints.

    Students trained with different caps list different videos: the fit uses the videos every
    list holds. TorchScript students list none (they are scored on the others' list)."""
    lists = {n: st.checkpoint for n, st in students.items()
             if st.checkpoint.get("val_videos") is not None and st.checkpoint.get("data_index")}
    if not lists:
        raise UserError("no student records its validation videos (checkpoints older than the "
                        "data contract); rerun their final stage so the ensemble is fit on "
                        "videos the students did not train on")
    datasets = {c["data_index"]["dataset"] for c in lists.values()}
    if len(datasets) > 1:
        raise UserError(f"the students were validated on different datasets ({', '.join(sorted(datasets))})")
    common = set.intersection(*(set(c["val_videos"]) for c in lists.values()))
    if any(len(c["val_videos"]) != len(common) for c in lists.values()):
        log.warning("the students' validation lists differ (%s); fitting on the %d videos all of "
                    "them hold", ", ".join(f"{n} {len(c['val_videos'])}" for n, c in lists.items()), len(common))
    index = next(iter(lists.values()))["data_index"]
    return index, sorted(common)


def validation_records(data: Path, index: dict, rels: Sequence[str], max_videos: int | None,
                       seed: int) -> list:
    """The listed validation videos under `data` (paths and labels from the index; the split
    the indexer draws is ignored: membership comes from the list)."""
    kw = dict(index.get("kwargs") or {})
    if kw.get("splits_dir") and not Path(kw["splits_dir"]).is_dir():
        kw["splits_dir"] = None  # its split is not used here; only the files' names and labels
    # index_from: a DFDC stage validated on whole held-out parts lists them apart from its chunks
    by_rel = {r.rel: r for r in index_from(dict(index, root=str(data), kwargs=kw))}
    absent = [rel for rel in rels if rel not in by_rel]
    if absent:
        log.warning("%d of %d listed validation videos are not under %s (first: %s)", len(absent),
                    len(rels), data, absent[0])
    val = [by_rel[rel] for rel in rels if rel in by_rel]
    return cap_per_split(val, max_videos, seed, key=lambda r: "val")


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


def _oof(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """Out-of-fold combiner predictions: each video scored by a combiner not fit on it."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    k = min(5, int(np.bincount(y, minlength=2).min()))
    if k < 2:
        return None
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=0)
    return cross_val_predict(_combiner(), x, y, cv=folds, method="predict_proba")[:, 1]


def _auc(y: np.ndarray, p: np.ndarray | None) -> float | None:
    if p is None:
        return None
    auc = binary_metrics(y, p)["auc"]
    return float(auc) if math.isfinite(auc) else None


def _fit_one(scores: dict[str, np.ndarray], names: Sequence[str], y: np.ndarray) -> dict:
    """One combiner on these students: weights on logit(p) (standardisation folded in), its
    in-sample and out-of-fold predictions."""
    x = np.column_stack([logit(scores[n]) for n in names])
    pipe = _combiner().fit(x, y)
    scaler, clf = pipe.named_steps["standardscaler"], pipe.named_steps["logisticregression"]
    weights = clf.coef_[0] / scaler.scale_  # fused = sigmoid(b + sum w_i * logit(p_i))
    oof = _oof(x, y)
    return {"students": list(names), "weights": {n: float(w) for n, w in zip(names, weights)},
            "intercept": float(clf.intercept_[0] - np.dot(weights, scaler.mean_)),
            "auc_oof": _auc(y, oof), "fused": pipe.predict_proba(x)[:, 1], "fused_oof": oof}


def fit_combiner(scores: dict[str, np.ndarray], labels: Sequence[int]) -> dict:
    """A combiner for every non-empty subset of the students that beat chance.

    -> {"models": {name: {val_auc, used, dropped_reason, weight, note}}, "combiners": [...],
        "intercept", "fused", "fused_oof", "val_auc_oof", "val_auc_in_sample"}; the weights in
    "models" are the all-students combiner's. UserError when no student beats chance."""
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
    combiners = [_fit_one(scores, subset, y) for k in range(1, len(used) + 1)
                 for subset in itertools.combinations(used, k)]
    full = combiners[-1]
    for n, w in full["weights"].items():
        rows[n]["weight"] = w
        if w < 0:
            rows[n]["note"] = "negative weight: ranks validation videos the wrong way round"
    return {"models": rows, "intercept": full["intercept"], "fused": full["fused"],
            "fused_oof": full["fused_oof"], "val_auc_oof": full["auc_oof"],
            "val_auc_in_sample": _auc(y, full["fused"]),
            "combiners": [{k: c[k] for k in ("students", "weights", "intercept", "auc_oof")}
                          for c in combiners]}


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
    lines.append(f"| **ensemble** | **{_num(ens['val_auc_oof'])}** | | intercept {ens['intercept']:+.3f} "
                 "| out-of-fold: each video scored by a combiner not fit on it |")
    lines.append(f"| ensemble, in-sample | {_num(ens['val_auc_in_sample'])} | | | fit and scored on the "
                 "same videos: optimistic, not a result |")
    lines += ["", "Combiners (one per subset of the useful students; used when the others are missing):",
              "", "| students | out-of-fold AUC |", "|---|---|"]
    lines += [f"| {', '.join(c['students'])} | {_num(c['auc_oof'])} |" for c in ens["combiners"]]
    lines += ["", "Held-out figures: `python -m common.evaluate` on a test split."]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, ens: dict, scores: dict[str, np.ndarray], labels: np.ndarray,
                  fused: np.ndarray) -> dict[str, Path]:
    paths = {"json": out / ENSEMBLE_FILE, "roc": out / "ensemble_roc.png", "md": out / "ensemble_auc.md"}
    atomic_write(paths["json"], lambda f: f.write(json.dumps(ens, indent=1) + "\n"), mode="w")
    y = labels.tolist()
    curves = {name: (y, p.tolist()) for name, p in scores.items()}
    if fused is not None:
        curves["ensemble (out-of-fold)"] = (y, fused.tolist())
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
            "val_auc_oof": fit["val_auc_oof"], "val_auc_in_sample": fit["val_auc_in_sample"],
            "combiners": fit["combiners"], "settings": asdict(settings),
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
    index, rels = validation_list(students)
    dataset = index["dataset"]
    if args.dataset is not None and args.dataset != dataset:
        raise UserError(f"--dataset {args.dataset}: the students were validated on {dataset}")
    if detect_layout(args.data) not in (None, dataset):
        raise DatasetLayoutError(f"{args.data}: a {detect_layout(args.data)} root; the students' "
                                 f"validation videos are {dataset} videos")
    settings, seed = choose_settings(students, args)
    for name, why in check_external(students, settings.image_size).items():
        print(f"{name}: present but incompatible, not used ({why})")
        incompatible[name] = why
    if not students:
        raise UserError(f"{args.checkpoint_dir}: no usable student left to fit")
    val = validation_records(args.data, index, rels, args.max_videos, seed)
    check_classes([r.label for r in val], str(args.data))
    cache = make_cache(args.cache_dir, dataset, settings)
    summary = build_face_cache(val, cache, workers=args.workers, face_model=settings.face_model,
                               progress=sys.stderr.isatty())
    usable = [r for r in val if cache.is_complete(r.rel, r.path)]
    if len(usable) < len(val):
        log.warning("%d of %d validation videos have no face crops (skipped: %s)",
                    len(val) - len(usable), len(val), summary["skipped"] or summary["failed"])
    check_classes([r.label for r in usable], f"{cache.dir} (videos with faces)")
    device = pick_device(args.device)
    scores, ids, labels = {}, None, None
    for name, st in students.items():
        got_ids, got_labels, probs = score_videos(st, usable, cache, settings, device,
                                                  batch_size=args.batch_size, workers=args.workers)
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
    paths = write_outputs(args.out or args.checkpoint_dir, ens, scores, labels, fit["fused_oof"])
    print(auc_table(ens))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
