"""The ensemble's command line: fit a combiner, score video files.

  python -m common.ensemble fit --checkpoint-dir DIR --data ROOT     (common/ensemble/fit.py)
  python -m common.ensemble predict VIDEO [VIDEO ...] [--json]

The students and the fusion of their scores live in common/ensemble/students.py; predict crops each
video through the one face path (common/faces/extraction.py) with the students' recorded settings.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from common.cli import ensemble_parser as build_parser
from common.data.datasets import VideoRecord
from common.ensemble.fit import run_fit
from common.ensemble.students import (ENSEMBLE_FILE, Settings, Student, blind_reason, check_external, combiner_for,
                                      fuse, load_ensemble, load_student, make_cache, pick_device, score_videos,
                                      student_path, views_needed)
from common.errors import UserError, fault_exit
from common.faces.cache import NoFaceError
from common.faces.detectors import make_detector
from common.faces.extraction import extract_video, face_settings
from common.faces.video import BadVideoError, probe


def predictor_students(ens: dict, checkpoint_dir: Path) -> tuple[dict[str, Student], list[str]]:
    """The ensemble's students that load from `checkpoint_dir`, with the ensemble's temperatures."""
    students, absent = {}, []
    for m in ens["models"]:
        path = student_path(checkpoint_dir, m["name"])
        try:
            st = load_student(path, m["name"])
        except UserError as e:
            absent.append(m["name"])
            print(f"note: {m['name']} is missing or unusable ({e}); the combiner fit without it "
                  "is used", file=sys.stderr)
            continue
        if m.get("fingerprint") is not None and not math.isclose(st.fingerprint, m["fingerprint"],
                                                                 rel_tol=1e-6, abs_tol=1e-6):
            print(f"warning: {path} changed since the ensemble was fit; refit it", file=sys.stderr)
        st.temperature = float(m["temperature"])  # the combiner was fit on these scores
        students[m["name"]] = st
    broken = check_external(students, int(ens["settings"]["image_size"]))
    for name, why in broken.items():
        absent.append(name)
        print(f"note: {name} is unusable ({why}); the combiner fit without it is used", file=sys.stderr)
    if not any(m["used"] and m["name"] in students for m in ens["models"]):
        raise UserError(f"{checkpoint_dir}: none of the students the ensemble relies on "
                        f"({', '.join(m['name'] for m in ens['models'] if m['used'])}) is usable")
    return students, absent


def predict_video(path: str, students: dict[str, Student], ens: dict, detector,
                  device: torch.device) -> dict:
    """Scores of one video file. Raises BadVideoError / NoFaceError for an unusable video."""
    settings = Settings(**ens["settings"])
    info = probe(path)
    name = Path(path).name
    rec = VideoRecord(path=str(Path(path).absolute()), rel=name, label=0, group=name,
                      split="test", has_audio=info.has_audio)
    with tempfile.TemporaryDirectory(prefix="ensemble-") as tmp:
        cache = make_cache(tmp, "predict", settings, views_needed(students))  # crop no more
        cache.dir.mkdir(parents=True)
        meta = extract_video(rec, cache, detector)
        raw = {n: score_videos(st, [rec], cache, settings, device)[2] for n, st in students.items()}
    audio = bool(meta["audio"]["present"])
    per = student_rows(ens, students, raw, audio)
    seen = {n: r["score"] for n, r in per.items() if r.pop("sees")}
    fused, _ = fuse(seen, ens)
    combiner = combiner_for(ens, list(seen))
    threshold = float(ens["threshold"])
    for n, r in per.items():
        r["used"] = n in combiner["students"]
        r["weight"] = float(combiner["weights"].get(n, 0.0))
        if not r["used"]:
            r.setdefault("reason", next(m.get("dropped_reason") for m in ens["models"] if m["name"] == n))
    return {"video": path, "ok": True, "fake_probability": fused,
            "verdict": "FAKE" if fused >= threshold else "REAL", "threshold": threshold,
            "audio": audio, "students": per,
            "missing_students": [m["name"] for m in ens["models"] if m["name"] not in students],
            "left_out": [m["name"] for m in ens["models"] if m["used"] and m["name"] not in combiner["students"]],
            "combiner": combiner["students"]}


def student_rows(ens: dict, students: dict[str, Student], raw: dict, audio: bool) -> dict[str, dict]:
    """One row per student of the ensemble: its score (None when it gave none), its flag, and
    "sees" (False, with a "reason", when its input is missing: its file, its crops, or the
    audio a student that hears needs)."""
    threshold = float(ens["threshold"])
    per = {}
    for m in ens["models"]:
        n = m["name"]
        if n not in students:
            per[n] = {"score": None, "flag": None, "sees": False, "reason": "missing or unusable file"}
            continue
        got = raw[n]
        score = float(got[0]) if len(got) else None
        why = blind_reason(students[n], audio) or (None if score is not None else "no face crops in its view")
        per[n] = {"score": score, "flag": None if score is None else ("FAKE" if score >= threshold else "REAL"),
                  "sees": why is None, **({"reason": why} if why else {})}
    return per


def format_result(res: dict) -> str:
    if not res["ok"]:
        return f"{res['video']}: ERROR {res['error']}"
    absent = res.get("left_out", [])
    approx = f"; combiner fit without {', '.join(absent)}" if absent else ""
    lines = [f"{res['video']}: {res['verdict']}  fused p(fake) = {res['fake_probability']:.3f} "
             f"(threshold {res['threshold']:.2f}; audio {'yes' if res['audio'] else 'no'}{approx})"]
    for name, s in res["students"].items():
        if name in res["missing_students"]:
            continue
        weight = f"weight {s['weight']:+.3f}" if s["used"] else f"weight 0 ({s['reason']})"
        score = "  n/a" if s["score"] is None else f"{s['score']:.3f}"
        lines.append(f"  {name:3s} {score}  {s['flag'] or '':4s}  {weight}")
    lines += [f"  {name:3s} missing" for name in res["missing_students"]]
    return "\n".join(lines)


def warn_face_settings(students: dict[str, Student], used: dict) -> None:
    """Crops must come from the settings the students were validated with (checkpoint key
    "faces"); say so when they do not, since scores would then drift from the metrics."""
    keys = ("detector", "max_side", "score_threshold", "box_scale", "max_gap_s", "min_usable",
            "context_scale", "native_grid", "detect_stride", "agree_iou",
            "coarse_side", "min_coarse_face", "first_margin")
    for name, st in students.items():
        rec = st.checkpoint.get("faces") or {}
        diff = [k for k in keys if k in rec and rec[k] != used.get(k)]
        if diff:
            print(f"warning: {name} was validated on crops with other face settings "
                  f"({', '.join(f'{k} {rec[k]} vs {used.get(k)}' for k in diff)})", file=sys.stderr)


def run_predict(args) -> int:
    ckpt_dir = Path(args.checkpoint_dir or (args.ensemble.parent if args.ensemble else "checkpoints"))
    ens = load_ensemble(args.ensemble or ckpt_dir / ENSEMBLE_FILE)
    students, _ = predictor_students(ens, ckpt_dir)
    device = pick_device(args.device)
    settings = Settings(**ens["settings"])
    detector = make_detector(settings.detector, settings.face_model)
    warn_face_settings(students, face_settings(detector))
    failed = 0
    for video in args.videos:
        try:
            res = predict_video(video, students, ens, detector, device)
        except (BadVideoError, NoFaceError) as e:
            res = {"video": video, "ok": False, "error": getattr(e, "reason", None) or str(e)}
        except Exception as e:  # one odd file must not hide the results of the others
            res = {"video": video, "ok": False, "error": " ".join(f"{type(e).__name__}: {e}".split())}
        failed += not res["ok"]
        print(json.dumps(res) if args.json else format_result(res), flush=True)
    return 1 if failed else 0


# ----------------------------------------------------------------------------- CLI

def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        if args.command == "fit":
            return run_fit(args)
        return run_predict(args)
    except (UserError, OSError) as e:  # a bad flag or file: 2; a write the disk refused: 3
        return fault_exit(e)
