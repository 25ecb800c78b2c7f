"""`python -m common.evaluate`: every student and the ensemble on data none of them chose on.

  python -m common.evaluate --checkpoint-dir checkpoints --dataset celebdf --data /data/Celeb-DF-v2
  python -m common.evaluate --checkpoint-dir checkpoints --dataset dfdc --data /data/dfdc --parts 10,11

Held-out data per dataset (--split test, the only split this command scores):
  faceforensics  the official test split (<data>/splits/test.json or --splits)
  celebdf        List_of_testing_videos.txt
  dfdc           the parts no student trained or validated on (--parts to pick some; a used part is refused)
Every stage every student passed through is re-indexed from its checkpoint (common/training/
held_out.py): a test video any stage trained or validated on is refused (exit 2, naming how many
and which stage), or left out with --allow-overlap. Videos without a usable face score 0.5 and
count in every video-level figure. Figures per student and for the ensemble, in the field's usual
form: frame AUC, video AUC, AP, EER (ranked on logit margins), log loss; written to evaluation.md,
evaluation.json and evaluation_roc.png under --out (default <checkpoint-dir>/evaluation/<dataset>).
Face crops come the way stage validation gets them (stage_data.make_cache / ensure_cached).
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

from common.cli import evaluate_parser as build_parser

if __name__ == "__main__":  # the flags (and --help) answer before torch and the students load
    build_parser().parse_args()

import numpy as np
from common.data.atomic import atomic_write
from common.data.datasets import index_dataset, part_dirs
from common.data.samples import FaceSamples
from common.ensemble.fit import choose_settings
from common.ensemble.students import (ENSEMBLE_FILE, Student, blind_reason, check_external, fuse, load_ensemble,
                                      load_students, pick_device)
from common.errors import UserError, fault_exit
from common.faces.views import recorded_view
from common.preprocess import ClipTransform
from common.training import held_out
from common.training import stage_data as sd
from common.training.distributed import DistInfo
from common.training.engine import make_precision, predict
from common.training.metrics import binary_metrics, frame_margins, margin_probability, video_scores
from common.training.reports import roc_plot

log = logging.getLogger("evaluate")
FIGURES = (("frame AUC", "frame", "auc"), ("video AUC", "video", "auc"), ("AP", "video", "ap"),
           ("EER", "video", "eer"), ("log loss", "video", "log_loss"))


# ----------------------------------------------------------------------------- held-out data

def student_lineages(students: dict[str, Student], checkpoint_dir: Path) -> dict[str, list[dict]]:
    """The stages each student passed through; one warning line per stage that cannot be read."""
    out = {}
    for name, st in students.items():
        if st.external:
            log.warning("%s: a TorchScript student records no training data; its training videos are not checked", name)
            continue
        out[name], unread = held_out.student_lineage(st.checkpoint, checkpoint_dir, name)
        for stage in unread:
            log.warning("%s: no readable %s checkpoint in %s; that stage's videos are not checked",
                        name, stage, checkpoint_dir)
    return out


def used_parts(lineages: dict[str, list[dict]]) -> set[int]:
    """DFDC parts any stage of any student trained or validated on."""
    parts: set[int] = set()
    for entries in lineages.values():
        for e in entries:
            if e["data_index"].get("dataset") == "dfdc":
                kw = e["data_index"].get("kwargs") or {}
                parts |= {int(k) for k in (kw.get("parts") or [])} | {int(k) for k in (kw.get("val_parts") or [])}
    return parts


def official_test_records(args, lineages: dict[str, list[dict]]) -> tuple[list, str]:
    """-> (the dataset's test records as its official lists give them, what they are)."""
    if args.dataset == "faceforensics":
        folder = args.splits or Path(args.data) / "splits"
        if not (Path(folder) / "test.json").is_file():
            raise UserError(f"{folder}: no official test.json; the FF++ test split must be the official one")
        recs = index_dataset("faceforensics", args.data, compression=args.compression, splits_dir=args.splits)
        return recs, f"FaceForensics++ official test split ({args.compression})"
    if args.dataset == "celebdf":
        if not (Path(args.data) / "List_of_testing_videos.txt").is_file():
            raise UserError(f"{args.data}: no List_of_testing_videos.txt (Celeb-DF's test list)")
        return index_dataset("celebdf", args.data), "Celeb-DF List_of_testing_videos.txt"
    used = used_parts(lineages)
    on_disk = set(part_dirs(args.data))
    parts = set(args.parts) if args.parts else on_disk - used
    if parts & used:
        raise UserError(f"DFDC part(s) {', '.join(map(str, sorted(parts & used)))} were trained or validated on; "
                        "pick parts no student saw")
    if not parts:
        raise UserError(f"{args.data}: every DFDC part here ({', '.join(map(str, sorted(on_disk)))}) was "
                        "trained or validated on; evaluate on other parts")
    recs = [as_test(r) for r in index_dataset("dfdc", args.data, parts=sorted(parts), val_fraction=0)]
    return recs, f"DFDC parts {', '.join(map(str, sorted(parts)))} (no student trained or validated on them)"


def held_out_records(args, lineages: dict[str, list[dict]]) -> tuple[list, str]:
    """-> (test records no stage of any student trained or validated on, a line saying what they are).

    A test video some stage used is an error naming how many and which stage; with
    --allow-overlap those videos are left out and the line says so."""
    recs, what = official_test_records(args, lineages)
    test = [r for r in recs if r.split == "test"]
    overlaps, unchecked = held_out.find_overlaps([r.rel for r in test], lineages, args.dataset)
    for line in unchecked:
        log.warning("%s", line)
    if overlaps:
        lines = "; ".join(o.line(len(test)) for o in overlaps)
        if not args.allow_overlap:
            raise UserError(f"{lines}. These are not held-out videos: use a test list none of the stages "
                            "trained or validated on, or pass --allow-overlap to score only the others")
        used = set().union(*(o.videos for o in overlaps))
        log.warning("--allow-overlap: leaving out %d test videos (%s)", len(used), lines)
        test = [r for r in test if r.rel not in used]
        what += f", less the {len(used)} videos a student's stage trained or validated on (--allow-overlap)"
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
    return {"ids": ids, "labels": labels, "logits": logits, "no_audio": samples.without_audio()}


def student_row(got: dict, records: Sequence, temperature: float) -> tuple[dict, dict[str, float]]:
    """-> (figures of one student, {video: margin}). A video without a usable face has margin 0,
    probability 0.5 at any temperature (the field's usual protocol), and counts in every video
    figure; its number per class is reported. Ranking figures read the float64 margins."""
    margins = frame_margins(got["logits"])
    ids, _, vmargins = video_scores(got["ids"], got["labels"], margins)
    scored = dict(zip(ids, vmargins.tolist()))
    faceless = [r for r in records if r.rel not in scored]
    y = [r.label for r in records]
    m = np.array([scored.get(r.rel, 0.0) for r in records], dtype=np.float64)
    row = {"video": binary_metrics(y, margin_probability(m, temperature), scores=m),
           "frame": binary_metrics(got["labels"], margin_probability(margins, temperature), scores=margins),
           "temperature": temperature,
           "videos_without_faces": {"real": sum(1 - r.label for r in faceless), "fake": sum(r.label for r in faceless)}}
    return row, scored


def ensemble_row(ens: dict, records: Sequence, video_probs: dict[str, dict[str, float]]) -> tuple[dict, dict]:
    """-> (the ensemble's figures, {video: fused probability}). Each video is fused from the
    students that saw a face in it and can read it (AV only with audio; the combiner fit
    without the others); a video no student
    saw a face in scores 0.5, like a faceless video of one student."""
    fused, used, faceless = {}, {}, {"real": 0, "fake": 0}
    members = {m["name"] for m in ens["models"] if m["used"]}
    for r in records:
        scores = {n: p[r.rel] for n, p in video_probs.items() if r.rel in p}
        try:
            fused[r.rel], _ = fuse(scores, ens) if scores else (0.5, None)
        except UserError:  # none of the ensemble's own students saw a face here
            fused[r.rel] = 0.5
        key = ", ".join(sorted(n for n in scores if n in members)) or "none (no face: 0.5)"
        used[key] = used.get(key, 0) + 1
        if key.startswith("none"):
            faceless[("real", "fake")[r.label]] += 1
    y = [r.label for r in records]
    p = [fused[r.rel] for r in records]
    return dict(figures(None, None, y, p), combiners_used=used, videos_without_faces=faceless), fused


def figures(frame_labels, frame_probs, vlabels, vprobs) -> dict:
    out = {"video": binary_metrics(vlabels, vprobs)}
    out["frame"] = binary_metrics(frame_labels, frame_probs) if frame_probs is not None else None
    return out


def evaluate_all(students: dict[str, Student], ens: dict | None, records: Sequence, args, settings,
                 device) -> tuple[dict, dict]:
    """-> (rows {name: figures}, curves {name: (labels, scores)}) for the students and the ensemble."""
    rows, curves, video_probs = {}, {}, {}
    label = {r.rel: r.label for r in records}
    for name, st in students.items():
        got = score_student(st, records, args, settings, args.dataset, device)
        temperature = st.temperature
        if ens is not None:  # the ensemble's combiners were fit on scores at its temperatures
            temperature = next((float(m["temperature"]) for m in ens["models"] if m["name"] == name), temperature)
        rows[name], margins = student_row(got, records, temperature)
        rows[name]["video_scores"] = {vid: {"label": label[vid], "score": float(margin_probability(
            margins.get(vid, 0.0), temperature)), "margin": margins.get(vid), "face": vid in margins}
            for vid in sorted(label)}
        curves[name] = ([label[v] for v in sorted(label)], [margins.get(v, 0.0) for v in sorted(label)])
        # the combiners' input, only on the videos the student can see (AV only where there is audio)
        video_probs[name] = {v: float(margin_probability(mv, temperature)) for v, mv in margins.items()
                             if blind_reason(st, v not in got["no_audio"]) is None}
        log.info("%s: video AUC %s on %d videos (%d with a usable face)", name, _fmt(rows[name]["video"]["auc"]),
                 len(records), len(margins))
    if ens is not None:
        rows["ensemble"], fused = ensemble_row(ens, records, video_probs)
        rows["ensemble"]["video_scores"] = {vid: {"label": label[vid], "score": float(fused[vid])}
                                            for vid in sorted(label)}
        curves["ensemble"] = ([label[v] for v in sorted(label)], [fused[v] for v in sorted(label)])
    return rows, curves


# ----------------------------------------------------------------------------- outputs

def _fmt(v) -> str:
    return "n/a" if v is None or not isinstance(v, (int, float)) or not math.isfinite(v) else f"{v:.4f}"


def table(rows: dict) -> str:
    head = ("| model | " + " | ".join(f for f, _, _ in FIGURES) + " | videos (real / fake) "
            "| no usable face, scored 0.5 (real / fake) |")
    lines = [head, "|" + "---|" * (len(FIGURES) + 3)]
    for name, r in rows.items():
        cells = [_fmt((r[level] or {}).get(key)) if r[level] else "n/a" for _, level, key in FIGURES]
        v, nf = r["video"], r.get("videos_without_faces") or {"real": 0, "fake": 0}
        label = f"**{name}**" if name == "ensemble" else name
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {v['n']} ({v['n'] - v['n_fake']} / {v['n_fake']}) "
                     f"| {nf['real'] + nf['fake']} ({nf['real']} / {nf['fake']}) |")
    return "\n".join(lines)


def write_outputs(out: Path, report: dict, curves: dict) -> dict[str, Path]:
    paths = {"md": out / "evaluation.md", "json": out / "evaluation.json", "roc": out / "evaluation_roc.png"}
    atomic_write(paths["json"], lambda f: f.write(json.dumps(report, indent=1, default=float) + "\n"), mode="w")
    md = (f"# Held-out evaluation: {report['what']}\n\n`{report['data']}`, {report['n_videos']} videos, "
          f"{report['created']}\n\n{table(report['rows'])}\n\nThreshold-free figures except log loss (calibrated "
          "probabilities). A student's video score is the mean of its frames' logit margins; AUC, AP and EER "
          "rank those margins, so they do not depend on the temperature. A video without a usable face "
          "scores 0.5 and counts in every video figure. No stage of any student trained or validated on "
          "these videos, and none was used to fit a temperature or the ensemble.\n")
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
    records, what = held_out_records(args, student_lineages(students, args.checkpoint_dir))
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        return run(args)
    except (UserError, OSError) as e:  # a bad flag or file: 2; a write the disk refused: 3
        return fault_exit(e)


if __name__ == "__main__":
    sys.exit(main())
