"""`python -m common.evaluate`: every student and the ensemble on data none of them chose on.

  python -m common.evaluate --checkpoint-dir checkpoints --dataset celebdf --data /data/Celeb-DF-v2
  python -m common.evaluate --checkpoint-dir checkpoints --dataset dfdc --data /data/dfdc --parts 10,11

Held-out data per dataset (--split test, the only split this command scores):
  faceforensics  the official test split (<data>/splits/test.json or --splits)
  celebdf        List_of_testing_videos.txt
  dfdc           the parts no student trained on (--parts to pick some; a trained part is refused)
Videos any student validated on are refused too. Figures per student and for the ensemble, in
the field's usual form: frame AUC, video AUC, AP, EER, log loss; written to evaluation.md,
evaluation.json and evaluation_roc.png under --out (default <checkpoint-dir>/evaluation/<dataset>).
Face crops come the way stage validation gets them (stage_data.make_cache / ensure_cached).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence


from common.cli import chunk_list, positive_int
from common.data.atomic import atomic_write
from common.data.datasets import DATASETS, index_dataset, part_dirs
from common.data.samples import FaceSamples
from common.ensemble.fit import choose_settings
from common.ensemble.students import (ENSEMBLE_FILE, Student, blind_reason, check_external, fuse, load_ensemble,
                                      load_students, pick_device, video_probabilities)
from common.errors import UserError
from common.faces.detectors import DETECTORS
from common.faces.views import recorded_view
from common.preprocess import ClipTransform
from common.recipes import DEFAULTS
from common.training import stage_data as sd
from common.training.distributed import DistInfo
from common.training.engine import make_precision, predict
from common.training.metrics import binary_metrics, softmax_fake, video_scores
from common.training.reports import roc_plot

log = logging.getLogger("evaluate")
FIGURES = (("frame AUC", "frame", "auc"), ("video AUC", "video", "auc"), ("AP", "video", "ap"),
           ("EER", "video", "eer"), ("log loss", "video", "log_loss"))


# ----------------------------------------------------------------------------- held-out data

def trained_parts(students: dict[str, Student]) -> set[int]:
    """DFDC parts any student's final stage trained (and validated) on."""
    parts: set[int] = set()
    for st in students.values():
        index = st.checkpoint.get("data_index") or {}
        if index.get("dataset") == "dfdc":
            parts |= {int(k) for k in index.get("kwargs", {}).get("parts") or []}
    return parts


def held_out_records(args, students: dict[str, Student]) -> tuple[list, str]:
    """-> (records never used for selection or fitting, a line saying what they are)."""
    if args.dataset == "faceforensics":
        folder = args.splits or Path(args.data) / "splits"
        if not (Path(folder) / "test.json").is_file():
            raise UserError(f"{folder}: no official test.json; the FF++ test split must be the official one")
        recs = index_dataset("faceforensics", args.data, compression=args.compression, splits_dir=args.splits)
        what = f"FaceForensics++ official test split ({args.compression})"
    elif args.dataset == "celebdf":
        if not (Path(args.data) / "List_of_testing_videos.txt").is_file():
            raise UserError(f"{args.data}: no List_of_testing_videos.txt (Celeb-DF's test list)")
        recs = index_dataset("celebdf", args.data)
        what = "Celeb-DF List_of_testing_videos.txt"
    else:
        used = trained_parts(students)
        on_disk = set(part_dirs(args.data))
        parts = set(args.parts) if args.parts else on_disk - used
        if parts & used:
            raise UserError(f"DFDC part(s) {', '.join(map(str, sorted(parts & used)))} were trained on; "
                            "pick parts no student saw")
        if not parts:
            raise UserError(f"{args.data}: every DFDC part here ({', '.join(map(str, sorted(on_disk)))}) was "
                            "trained on; evaluate on other parts")
        recs = [as_test(r) for r in index_dataset("dfdc", args.data, parts=sorted(parts), val_fraction=0)]
        what = f"DFDC parts {', '.join(map(str, sorted(parts)))} (no student trained on them)"
    test = [r for r in recs if r.split == "test"]
    seen = set().union(*(set(st.checkpoint.get("val_videos") or ()) for st in students.values()
                         if (st.checkpoint.get("data_index") or {}).get("dataset") == args.dataset))
    if seen & {r.rel for r in test}:
        raise UserError(f"{len(seen & {r.rel for r in test})} of these videos were a student's validation "
                        "videos (used for selection); this is not held-out data")
    return sd.cap_per_split(test, args.max_videos, args.seed), what


def as_test(record):
    """A DFDC record of a held-out part, marked as test."""
    return replace(record, split="test")


# ----------------------------------------------------------------------------- scoring

def student_samples(st: Student, records: Sequence, args, settings, dataset: str) -> tuple[FaceSamples, object]:
    """Face crops for one student, through the stage scripts' cache and sample path."""
    arch = None if st.external else st.model.options["name"]
    cfg = SimpleNamespace(cache_dir=args.cache_dir, image_size=settings.image_size,
                          frames_per_video=settings.frames_per_video, clip_len=settings.clip_len,
                          face_detector=settings.detector, face_model=settings.face_model,
                          workers=args.workers, batch_size=args.batch_size, model=arch)
    recipe = SimpleNamespace(dataset=dataset, preprocessing=st.preprocessing, augmentation="none")
    cache = sd.make_cache(cfg, recipe)
    sd.ensure_cached(records, cache, cfg, DistInfo(), f"{st.name} ({st.preprocessing})")
    if arch is not None:
        cfg.clip_len = st.clip_len
        return sd.samples_for(records, cache, cfg, recipe, train=False, view=recorded_view(st.checkpoint)), cfg
    transform = ClipTransform(settings.image_size, preprocessing="none", normalize=False)
    return FaceSamples(records, cache, clip_len=st.clip_len, transform=transform, with_audio=False), cfg


def score_student(st: Student, records: Sequence, args, settings, dataset: str, device) -> dict:
    samples, cfg = student_samples(st, records, args, settings, dataset)
    loader = sd.eval_loader(samples, cfg, DistInfo(), device)
    ids, labels, logits = predict(st.model.to(device), loader, make_precision(device, amp=True))
    return {"ids": ids, "labels": labels, "logits": logits, "missing": samples.missing,
            "no_audio": samples.without_audio()}


def figures(frame_labels, frame_probs, vlabels, vprobs) -> dict:
    out = {"video": binary_metrics(vlabels, vprobs)}
    out["frame"] = binary_metrics(frame_labels, frame_probs) if frame_probs is not None else None
    return out


def evaluate_all(students: dict[str, Student], ens: dict | None, records: Sequence, args, settings,
                 device) -> tuple[dict, dict]:
    """-> (rows {name: figures}, curves {name: (labels, probs)}) for the students and the ensemble."""
    rows, curves, video_probs, video_label = {}, {}, {}, {}
    fusable: dict[str, dict] = {}  # the combiners' input, on the videos each student can see
    for name, st in students.items():
        got = score_student(st, records, args, settings, args.dataset, device)
        temperature = st.temperature
        if ens is not None:  # the ensemble's combiners were fit on scores at its temperatures
            temperature = next((float(m["temperature"]) for m in ens["models"] if m["name"] == name), temperature)
        probs = softmax_fake(got["logits"], temperature)
        ids, vlabels, vprobs = video_scores(got["ids"], got["labels"], probs)
        rows[name] = dict(figures(got["labels"], probs, vlabels, vprobs), temperature=temperature,
                          videos_without_faces=int(got["missing"]))
        curves[name] = (vlabels.tolist(), vprobs.tolist())
        video_probs[name] = dict(zip(ids, vprobs.tolist()))
        video_label.update(zip(ids, vlabels.tolist()))
        f_ids, _, f_probs = video_probabilities(got["ids"], got["labels"], got["logits"], temperature)
        fusable[name] = {v: q for v, q in zip(f_ids, f_probs.tolist())
                         if blind_reason(st, v not in got["no_audio"]) is None}
        log.info("%s: video AUC %s on %d videos", name, _fmt(rows[name]["video"]["auc"]), len(ids))
    if ens is not None:
        ids = sorted(video_label)
        fused, used = [], {}
        for vid in ids:
            scores = {n: p[vid] for n, p in fusable.items() if vid in p}  # AV only where there is audio
            try:
                p, missing = fuse(scores, ens)
            except UserError:
                continue  # none of the ensemble's students scored this video
            fused.append((vid, p))
            key = ", ".join(sorted(n for n in scores if n in {m["name"] for m in ens["models"] if m["used"]}))
            used[key] = used.get(key, 0) + 1
        y = [video_label[v] for v, _ in fused]
        p = [q for _, q in fused]
        rows["ensemble"] = dict(figures(None, None, y, p), combiners_used=used)
        curves["ensemble"] = (y, p)
        video_probs["ensemble"] = dict(fused)
    for name, r in rows.items():  # per-video scores, so any figure can be recomputed
        r["video_scores"] = {vid: {"label": int(video_label[vid]), "score": float(p)}
                             for vid, p in sorted(video_probs[name].items())}
    return rows, curves


# ----------------------------------------------------------------------------- outputs

def _fmt(v) -> str:
    return "n/a" if v is None or not isinstance(v, (int, float)) or not math.isfinite(v) else f"{v:.4f}"


def table(rows: dict) -> str:
    head = "| model | " + " | ".join(f for f, _, _ in FIGURES) + " | videos (real / fake) |"
    lines = [head, "|" + "---|" * (len(FIGURES) + 2)]
    for name, r in rows.items():
        cells = [_fmt((r[level] or {}).get(key)) if r[level] else "n/a" for _, level, key in FIGURES]
        v = r["video"]
        label = f"**{name}**" if name == "ensemble" else name
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {v['n']} ({v['n'] - v['n_fake']} / {v['n_fake']}) |")
    return "\n".join(lines)


def write_outputs(out: Path, report: dict, curves: dict) -> dict[str, Path]:
    paths = {"md": out / "evaluation.md", "json": out / "evaluation.json", "roc": out / "evaluation_roc.png"}
    atomic_write(paths["json"], lambda f: f.write(json.dumps(report, indent=1, default=float) + "\n"), mode="w")
    md = (f"# Held-out evaluation: {report['what']}\n\n`{report['data']}`, {report['n_videos']} videos, "
          f"{report['created']}\n\n{table(report['rows'])}\n\nThreshold-free figures except log loss (calibrated "
          "probabilities). Video score = mean of the frame probabilities. None of these videos was used to "
          "select an epoch, fit a temperature or fit the ensemble.\n")
    atomic_write(paths["md"], lambda f: f.write(md), mode="w")
    drawable = {n: c for n, c in curves.items() if len(set(c[0])) == 2}
    if drawable:
        roc_plot(drawable, paths["roc"], f"held-out ROC, {report['what']}")
    else:
        paths.pop("roc")
    return paths


# ----------------------------------------------------------------------------- command

def run(args) -> int:
    args.workers = max(0, args.workers)
    students, missing, incompatible = load_students(args.checkpoint_dir)
    for name, why in incompatible.items():
        print(f"{name}: present but incompatible, not evaluated ({why})")
    if not students:
        raise UserError(f"{args.checkpoint_dir}: no usable <model>_model_student.pt here")
    settings, args.seed = choose_settings(students, args)
    for name, why in check_external(students, settings.image_size).items():
        print(f"{name}: present but incompatible, not evaluated ({why})")
    ens_path = args.checkpoint_dir / ENSEMBLE_FILE
    ens = load_ensemble(ens_path) if ens_path.is_file() else None
    records, what = held_out_records(args, students)
    labels = [r.label for r in records]
    if not records:
        raise UserError(f"{args.data}: no held-out videos found ({what})")
    log.info("%s: %d videos (%d real, %d fake)", what, len(records), labels.count(0), labels.count(1))
    rows, curves = evaluate_all(students, ens, records, args, settings, pick_device(args.device))
    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "dataset": args.dataset, "data": str(args.data),
              "split": args.split, "what": what, "n_videos": len(records), "settings": asdict(settings),
              "students_missing": missing, "ensemble": str(ens_path) if ens else None, "rows": rows}
    out = args.out or args.checkpoint_dir / "evaluation" / args.dataset
    paths = write_outputs(out, report, curves)
    print(f"{what}: {len(records)} videos\n\n{table(rows)}\n")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m common.evaluate",
                                description="Score every student and the ensemble on held-out data.")
    p.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"))
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--data", type=Path, required=True, help="dataset root (official layout)")
    p.add_argument("--split", choices=("test",), default="test",
                   help="held-out data only: FF++ official test, Celeb-DF test list, untrained DFDC parts")
    p.add_argument("--parts", type=chunk_list, help="DFDC parts to score (default: every part no student trained on)")
    p.add_argument("--compression", choices=("raw", "c23", "c40"), default="c23", help="FF++ compression folder")
    p.add_argument("--splits", type=Path, help="FF++ folder with the official split files (default <data>/splits)")
    p.add_argument("--cache-dir", type=Path, default=Path("cache"))
    p.add_argument("--max-videos", type=positive_int, help="cap the videos scored (half real, half fake)")
    p.add_argument("--image-size", type=positive_int, help=f"default: training config or {DEFAULTS.image_size}")
    p.add_argument("--frames-per-video", type=positive_int, help=f"default: training config or {DEFAULTS.frames_per_video}")
    p.add_argument("--face-detector", choices=DETECTORS, help=f"default: training config or {DEFAULTS.face_detector}")
    p.add_argument("--face-model", help="YuNet .onnx for --face-detector yunet")
    p.add_argument("--seed", type=int, help=f"seed of the --max-videos cap (default: training config or {DEFAULTS.seed})")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, help="output folder (default <checkpoint-dir>/evaluation/<dataset>)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
