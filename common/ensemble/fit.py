"""`python -m common.ensemble fit`: learn how much to trust each student, on validation videos.

students -> the validation videos their checkpoints list (never recomputed, never the test
split), plus the fresh ones: validation-split videos no student listed (left out by a
--max-videos cap), which no student trained on, selected an epoch on or fitted a temperature
on -> face cache -> calibrated video scores per student (none where the student cannot see
the video) -> students at chance get weight 0 -> one logistic regression on logit(score) per
subset of the others (common/ensemble/stacking.py) -> ensemble.json, ensemble_roc.png and
ensemble_auc.md. Figures are out-of-fold over folds that keep each group (person, source
footage) whole; the headline is the out-of-fold figure on the fresh videos alone.
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

from common.data.atomic import atomic_write
from common.data.datasets import detect_layout
from common.ensemble.stacking import fit_combiner
from common.ensemble.students import (ENSEMBLE_FILE, FORMAT, Settings, Student, availability_line, blind_reason,
                                      check_external, load_students, make_cache, pick_device, score_videos)
from common.errors import DatasetLayoutError, UserError
from common.faces.extraction import build_face_cache
from common.recipes import DEFAULTS, RECIPES
from common.training.checkpoints import stage_paths
from common.training.reports import roc_plot
from common.training.stage_data import cap_per_split, index_from

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


def _index_kwargs(index: dict) -> dict:
    return dict(index.get("kwargs") or {})


def validation_records(data: Path, index: dict, rels: Sequence[str], max_videos: int | None,
                       seed: int) -> list:
    """The listed validation videos under `data` (paths and labels from the index; the split
    the indexer draws is ignored: membership comes from the list)."""
    kw = _index_kwargs(index)
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


def fresh_records(data: Path, students: dict[str, Student], max_videos: int | None, seed: int) -> list:
    """Videos no student trained on, selected an epoch on or fitted a temperature on: in the
    validation split of every student's recorded index (redrawn from its arguments) and in no
    student's `val_videos` (a --max-videos cap left them out). None when a split cannot be
    redrawn as it was (a splits folder gone, or the redrawn split misses listed videos)."""
    ckpts = [st.checkpoint for st in students.values()
             if st.checkpoint.get("val_videos") is not None and st.checkpoint.get("data_index")]
    indexes = {json.dumps(_index_kwargs(c["data_index"]), sort_keys=True): c for c in ckpts}
    listed = set().union(*(set(c["val_videos"]) for c in ckpts))
    candidates = None
    for c in indexes.values():
        index, kw = c["data_index"], _index_kwargs(c["data_index"])
        if kw.get("splits_dir") and not Path(kw["splits_dir"]).is_dir():
            log.warning("%s is gone: the students' split cannot be redrawn; no fresh videos", kw["splits_dir"])
            return []
        val = {r.rel: r for r in index_from(dict(index, root=str(data), kwargs=kw)) if r.split == "val"}
        if not set(c["val_videos"]) <= set(val):
            log.warning("the validation split redrawn under %s is not the students' (the tree changed?); "
                        "no fresh videos", data)
            return []
        candidates = val if candidates is None else {k: r for k, r in candidates.items() if k in val}
    fresh = sorted((r for k, r in (candidates or {}).items() if k not in listed), key=lambda r: r.rel)
    return cap_per_split(fresh, max_videos, seed, key=lambda r: "fresh")


def check_classes(labels: Sequence[int], where: str) -> None:
    n_fake = int(sum(labels))
    n_real = len(labels) - n_fake
    if min(n_real, n_fake) < MIN_PER_CLASS:
        raise UserError(f"{where}: {n_real} real and {n_fake} fake validation videos; the combiner "
                        f"needs at least {MIN_PER_CLASS} of each (more data or a larger --max-videos)")


# ----------------------------------------------------------------------------- outputs

def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _count(n: int, n_fake: int) -> str:
    return f"{n} ({n - n_fake} real, {n_fake} fake)"


def which_videos(ens: dict) -> list[str]:
    """Which videos the figures come from, in words."""
    sel, fresh = ens["selection_videos"], ens["fresh_videos"]
    return [f"Videos: {_count(ens['n_videos'], ens['n_fake'])} of {ens['dataset']} `{ens['data']}`:", "",
            f"- {_count(sel['n'], sel['n_fake'])} from the students' `val_videos`: every student selected its "
            "epoch and fitted its temperature on them;",
            f"- {_count(fresh['n'], fresh['n_fake'])} fresh: in the students' validation split but in no "
            "student's list (left out by a --max-videos cap), so no student trained, selected or calibrated "
            "on them. **The headline is taken on these alone.**", "",
            "Folds keep each group (person / source footage) whole (StratifiedGroupKFold); inside each fold "
            "the chance rule and the combiners are fit anew on the other folds."]


def auc_table(ens: dict) -> str:
    """Markdown: which videos, every student's validation AUC and weight, then the ensemble."""
    lines = which_videos(ens) + ["", "| model | val video AUC | videos seen | AUC at training | weight | note |",
                                 "|---|---|---|---|---|---|"]
    for m in ens["models"]:
        note = (m["dropped_reason"] or m["note"]).replace("|", "\\|")
        weight = f"{m['weight']:+.3f}" if m["used"] else "0"
        lines.append(f"| {m['name']} | {_num(m['val_auc'])} | {m.get('n_seen', ens['n_videos'])} | "
                     f"{_num(m['trained_val_auc'])} | {weight} | {note} |")
    headline_note = ("out-of-fold, on the fresh videos only" if ens["headline_auc"] is not None else
                     "no fresh videos of both classes: no honest figure here; see `python -m common.evaluate`")
    lines.append(f"| **ensemble (headline)** | **{_num(ens['headline_auc'])}** | {ens['fresh_videos']['n']} | | "
                 f"intercept {ens['intercept']:+.3f} | {headline_note} |")
    lines.append(f"| ensemble, out-of-fold, all videos | {_num(ens['val_auc_oof'])} | {ens['n_videos']} | | | "
                 "out-of-fold: each video scored by a combiner not fit on it; the students were selected on "
                 "the val_videos among them: optimistic |")
    lines.append(f"| ensemble, in-sample | {_num(ens['val_auc_in_sample'])} | {ens['n_videos']} | | | fit and "
                 "scored on the same videos: optimistic, not a result |")
    lines += ["", "Combiners (one per subset of the useful students; used when the others are missing or "
              "cannot see a video, e.g. AV without audio):", "", "| students | out-of-fold AUC (on the videos all of them see) |",
              "|---|---|"]
    lines += [f"| {', '.join(c['students'])} | {_num(c['auc_oof'])} |" for c in ens["combiners"]]
    lines += ["", "Held-out figures: `python -m common.evaluate` on a test split."]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, ens: dict, scores: dict[str, np.ndarray], labels: np.ndarray,
                  fused: np.ndarray) -> dict[str, Path]:
    paths = {"json": out / ENSEMBLE_FILE, "roc": out / "ensemble_roc.png", "md": out / "ensemble_auc.md"}
    atomic_write(paths["json"], lambda f: f.write(json.dumps(ens, indent=1) + "\n"), mode="w")
    curves = {name: p for name, p in scores.items()}
    if fused is not None:
        curves["ensemble (out-of-fold)"] = fused
    seen = {name: np.isfinite(p) for name, p in curves.items()}  # a student blind on a video has no point
    curves = {name: (labels[seen[name]].tolist(), p[seen[name]].tolist()) for name, p in curves.items()}
    roc_plot(curves, paths["roc"], f"validation ROC, {ens['dataset']} ({ens['n_videos']} videos)")
    atomic_write(paths["md"], lambda f: f.write("# Ensemble validation AUC\n\n" + auc_table(ens)), mode="w")
    return paths


def ensemble_record(students: dict[str, Student], unavailable: dict[str, str], fit: dict,
                    settings: Settings, dataset: str, data: Path, records: Sequence, fresh: np.ndarray) -> dict:
    """ensemble.json: the students, the combiners, the figures and which videos they come from."""
    labels = np.array([r.label for r in records], dtype=np.int64)
    models = []
    for name, st in students.items():
        row = fit["models"][name]
        models.append({"name": name, "checkpoint": str(st.path.absolute()),
                       "temperature": st.temperature, "preprocessing": st.preprocessing,
                       "clip_len": st.clip_len, "fingerprint": st.fingerprint,
                       "trained_val_auc": st.trained_val_auc(), **row})
    sel = labels[~fresh]
    return {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "feature": "logit of the calibrated video fake probability, clipped to [1e-6, 1-1e-6]",
            "models": models, "intercept": fit["intercept"], "threshold": THRESHOLD,
            "headline_auc": fit["headline_auc"], "val_auc_oof": fit["val_auc_oof"],
            "val_auc_in_sample": fit["val_auc_in_sample"], "combiners": fit["combiners"],
            "settings": asdict(settings), "dataset": dataset, "data": str(data), "split": "val",
            "n_videos": int(len(labels)), "n_real": int((labels == 0).sum()), "n_fake": int((labels == 1).sum()),
            "selection_videos": {"n": int(len(sel)), "n_fake": int(sel.sum())},
            "fresh_videos": {"n": int(fresh.sum()), "n_fake": int(labels[fresh].sum()),
                             "videos": [r.rel for r, f in zip(records, fresh) if f]},
            "folds": "StratifiedGroupKFold over the videos' groups (person / source footage)",
            "unavailable": unavailable}


# ----------------------------------------------------------------------------- command

def _load(args) -> tuple[dict, list, dict, dict, list]:
    """-> (students, missing, incompatible, data index, validation rels), checked against --data."""
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
    return students, missing, incompatible, index, rels


def pool_with_faces(records: list, cache, args, settings: Settings) -> list:
    """The records whose face crops are (now) in the cache, extracting what is missing."""
    summary = build_face_cache(records, cache, workers=args.workers, face_model=settings.face_model,
                               progress=sys.stderr.isatty())
    usable = [r for r in records if cache.is_complete(r.rel, r.path)]
    if len(usable) < len(records):
        log.warning("%d of %d videos have no face crops (skipped: %s)",
                    len(records) - len(usable), len(records), summary["skipped"] or summary["failed"])
    return usable


def score_pool(students: dict[str, Student], records: list, cache, settings: Settings, args):
    """-> (records sorted by rel, labels, {name: scores}); a score is NaN where the student cannot
    see the video (blind_reason: no usable audio for AV) or has no crops of it."""
    records = sorted(records, key=lambda r: r.rel)
    audio = {r.rel: bool(((cache.meta(r.rel, r.path) or {}).get("audio") or {}).get("present")) for r in records}
    device = pick_device(args.device)
    scores = {}
    for name, st in students.items():
        got_ids, _, probs = score_videos(st, records, cache, settings, device,
                                         batch_size=args.batch_size, workers=args.workers)
        by_id = dict(zip(got_ids, probs.tolist()))
        scores[name] = np.array([math.nan if blind_reason(st, audio[r.rel]) else by_id.get(r.rel, math.nan)
                                 for r in records])
        blind = sum(blind_reason(st, audio[r.rel]) is not None for r in records)
        if blind:
            log.info("%s: not used on %d of %d videos (no usable audio)", name, blind, len(records))
    return records, np.array([r.label for r in records], dtype=np.int64), scores


def run_fit(args) -> int:
    args.workers = max(0, args.workers)
    students, missing, incompatible, index, rels = _load(args)
    dataset = index["dataset"]
    settings, seed = choose_settings(students, args)
    for name, why in check_external(students, settings.image_size).items():
        print(f"{name}: present but incompatible, not used ({why})")
        incompatible[name] = why
    if not students:
        raise UserError(f"{args.checkpoint_dir}: no usable student left to fit")
    val = validation_records(args.data, index, rels, args.max_videos, seed)
    check_classes([r.label for r in val], str(args.data))
    fresh = fresh_records(args.data, students, args.max_videos, seed)
    cache = make_cache(args.cache_dir, dataset, settings)
    usable = pool_with_faces(val + fresh, cache, args, settings)
    check_classes([r.label for r in usable], f"{cache.dir} (videos with faces)")
    records, labels, scores = score_pool(students, usable, cache, settings, args)
    fresh_mask = np.array([r.rel in {f.rel for f in fresh} for r in records], dtype=bool)
    fit = fit_combiner(scores, labels, groups=[r.group for r in records], fresh=fresh_mask)
    unavailable = {**{n: "missing" for n in missing},
                   **{n: f"present but incompatible: {why}" for n, why in incompatible.items()}}
    ens = ensemble_record(students, unavailable, fit, settings, dataset, args.data, records, fresh_mask)
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
