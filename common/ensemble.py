"""The student ensemble: load the students, score videos with them, fuse the scores; the CLI.

  python -m common.ensemble fit --checkpoint-dir DIR --data ROOT     (common/ensemble_fit.py)
  python -m common.ensemble predict VIDEO [VIDEO ...] [--json]

Each student gives a calibrated video score p = mean over the video's sampled frames (or
clips) of softmax(logits / T)[fake]. A combiner is a logistic regression on logit(p):
    fused = sigmoid(intercept + sum_i weight_i * logit(p_i))
fit on the validation videos the students' checkpoints list; a student at chance there gets
weight 0. One combiner is fit for every subset of the useful students, so a student missing
at predict time means the combiner fit without it, never a made-up 0.5.

Students: `<name>_model_student.pt` for the five built-in names, `ll`, and any other name;
each is this suite's student format or a TorchScript module (common/external_student.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from common.checkpoints import load_checkpoint, weights_fingerprint
from common.external_student import ExternalStudent, check_contract, is_torchscript, load_external
from common.cli import positive_int
from common.datasets import VideoRecord
from common.engine import make_precision, predict
from common.errors import CheckpointError, UserError
from common.extraction import extract_video, face_settings
from common.face_cache import FaceCache, NoFaceError
from common.faces import DETECTORS, make_detector
from common.metrics import softmax_fake, video_scores
from common.model import CLIP_MODELS, MODEL_NAMES, StudentModel, student_from_options
from common.preprocess import ClipTransform
from common.recipes import RECIPES
from common.samples import FaceSamples
from common.video import BadVideoError, probe
from common.views import recorded_view

STUDENT_NAMES = MODEL_NAMES + ("ll",)  # ll: a low-light student trained outside this suite
STUDENT_SUFFIX = "_model_student.pt"
ENSEMBLE_FILE = "ensemble.json"
FORMAT = 2  # 2: one combiner per subset of students
EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] before the logit


@dataclass(frozen=True)
class Settings:
    """What the face cache and the transforms need; the same at fit and at predict time."""
    image_size: int = 224
    frames_per_video: int = 32
    clip_len: int = 8         # frames per cached run: the longest clip any student reads
    detector: str = "yunet"
    face_model: str | None = None


@dataclass
class Student:
    name: str
    path: Path
    model: StudentModel | ExternalStudent
    temperature: float
    preprocessing: str  # the final stage's eval-time preprocessing (what calibration saw)
    clip_len: int       # frames per sample this student reads (1 for single-frame models)
    with_audio: bool
    checkpoint: dict    # the rest of the checkpoint (metrics, stage), weights removed

    @property
    def external(self) -> bool:
        return isinstance(self.model, ExternalStudent)

    @property
    def fingerprint(self) -> float:
        return weights_fingerprint(self.model.state_dict())

    def trained_val_auc(self) -> float | None:
        """Validation video AUC recorded when the student was trained, if any."""
        metrics = self.checkpoint.get("metrics") or {}
        auc = ((metrics.get("val") or {}).get("video") or {}).get("auc")
        return float(auc) if isinstance(auc, (int, float)) and math.isfinite(auc) else None


def student_path(checkpoint_dir: str | Path, name: str) -> Path:
    return Path(checkpoint_dir) / f"{name}{STUDENT_SUFFIX}"


def student_names(checkpoint_dir: str | Path) -> list[str]:
    """The built-in names and ll, then every other `<name>_model_student.pt` in the folder."""
    d = Path(checkpoint_dir)
    extra = sorted(p.name[:-len(STUDENT_SUFFIX)] for p in d.glob(f"*{STUDENT_SUFFIX}")) if d.is_dir() else []
    return list(STUDENT_NAMES) + [n for n in extra if n and n not in STUDENT_NAMES]


def load_student(path: str | Path, name: str) -> Student:
    """One `<name>_model_student.pt`: this suite's format or a TorchScript module (the
    documented contract). UserError when it is neither, or its weights do not fit."""
    path = Path(path)
    if path.is_file() and is_torchscript(path):
        model, temperature = load_external(path)
        return Student(name, path, model, temperature, "none", model.options["clip_len"], False,
                       {"kind": "torchscript"})
    ckpt = load_checkpoint(path, expected_model=name if name in MODEL_NAMES else None)
    arch = ckpt["model_options"].get("name")
    if arch not in MODEL_NAMES:
        raise CheckpointError(f"{path}: its model options name {arch!r}, not one of this suite's "
                              f"architectures ({', '.join(MODEL_NAMES)}), and it is not TorchScript")
    model = student_from_options(ckpt["model_options"])
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model its options describe "
                              f"({str(e).splitlines()[0][:120]})") from None
    model.eval()
    recipe = RECIPES.get(str(ckpt.get("stage")))
    clip = int(ckpt["model_options"].get("clip_len", 1)) if arch in CLIP_MODELS else 1
    temperature = float(ckpt.get("temperature") or 1.0)
    rest = {k: v for k, v in ckpt.items() if k != "model"}
    return Student(name, path, model, temperature if temperature > 0 else 1.0,
                   recipe.preprocessing if recipe else "none", clip, arch == "av", rest)


def load_students(checkpoint_dir: str | Path, names: Sequence[str] | None = None):
    """-> ({name: Student}, [missing names], {name: why it is present but unusable})."""
    found: dict[str, Student] = {}
    missing: list[str] = []
    incompatible: dict[str, str] = {}
    for name in names or student_names(checkpoint_dir):
        path = student_path(checkpoint_dir, name)
        if not path.is_file():
            missing.append(name)
            continue
        try:
            found[name] = load_student(path, name)
        except UserError as e:
            incompatible[name] = str(e)
    return found, missing, incompatible


def check_external(students: dict[str, Student], image_size: int) -> dict[str, str]:
    """Dry-run every TorchScript student at this crop size; drop (and return) the ones that
    break the contract."""
    broken = {}
    for name in [n for n, st in students.items() if st.external]:
        try:
            check_contract(students[name].model, image_size)
        except UserError as e:
            broken[name] = str(e)
            del students[name]
    return broken


def availability_line(found: dict, missing: Sequence[str]) -> str:
    return (f"students found: {', '.join(found) or 'none'}; "
            f"missing: {', '.join(missing) or 'none'}")


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA device is available")
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


def make_cache(root: str | Path, dataset: str, s: Settings) -> FaceCache:
    return FaceCache(root, dataset, crop_size=s.image_size, frames_per_video=s.frames_per_video,
                     clip_len=s.clip_len, detector=s.detector)


def score_videos(student: Student, records: Sequence, cache: FaceCache, settings: Settings,
                 device: torch.device, batch_size: int = 32, workers: int = 0):
    """Calibrated video scores of the cached `records` -> (ids, labels, probs), ids sorted."""
    # uint8 out of the loader: StudentModel normalises itself, and it is the external contract.
    transform = ClipTransform(settings.image_size, preprocessing=student.preprocessing, normalize=False)
    samples = FaceSamples(records, cache, clip_len=student.clip_len, transform=transform,
                          with_audio=student.with_audio, view=recorded_view(student.checkpoint))
    loader = DataLoader(samples, batch_size=batch_size, num_workers=workers,
                        pin_memory=device.type == "cuda")
    model = student.model.to(device)
    ids, labels, logits = predict(model, loader, make_precision(device, amp=True))
    return video_scores(ids, labels, softmax_fake(logits, student.temperature))


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def combiner_for(ens: dict, available: Sequence[str]) -> dict:
    """The combiner fit on exactly the ensemble's used students that are `available`."""
    want = sorted(m["name"] for m in ens["models"] if m["used"] and m["name"] in available)
    if not want:
        used = ", ".join(m["name"] for m in ens["models"] if m["used"])
        raise UserError(f"none of the students the ensemble relies on ({used}) is available")
    for c in ens["combiners"]:
        if sorted(c["students"]) == want:
            return c
    raise UserError(f"the ensemble file has no combiner for {', '.join(want)}; refit it")


def fuse(scores: dict[str, float], ens: dict) -> tuple[float, list[str]]:
    """Fused fake probability from per-student scores, with the combiner fit on the used
    students present; also the used students that were missing."""
    c = combiner_for(ens, list(scores))
    z = float(c["intercept"]) + sum(float(w) * float(logit(scores[n])) for n, w in c["weights"].items())
    missing = [m["name"] for m in ens["models"] if m["used"] and m["name"] not in scores]
    return 1.0 / (1.0 + math.exp(-z)), missing


# ----------------------------------------------------------------------------- predict

def load_ensemble(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no ensemble file here (run `python -m common.ensemble fit` first)")
    try:
        ens = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable ensemble file ({e})") from None
    if not isinstance(ens, dict) or not {"models", "intercept", "settings", "threshold"} <= set(ens):
        raise UserError(f"{path}: not an ensemble file written by `python -m common.ensemble fit`")
    if ens.get("format", 1) > FORMAT:
        raise UserError(f"{path}: written by a newer version of this suite (format {ens['format']})")
    if ens.get("format", 1) < FORMAT or "combiners" not in ens:
        raise UserError(f"{path}: written by an older version (one combiner for all students); "
                        "refit it with `python -m common.ensemble fit`")
    return ens


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
        cache = make_cache(tmp, "predict", settings)
        cache.dir.mkdir(parents=True)
        meta = extract_video(rec, cache, detector)
        scores = {n: float(score_videos(st, [rec], cache, settings, device)[2][0])
                  for n, st in students.items()}
    fused, _ = fuse(scores, ens)
    combiner = combiner_for(ens, list(scores))
    threshold = float(ens["threshold"])
    per = {}
    for m in ens["models"]:
        if m["name"] in scores:
            p = scores[m["name"]]
            per[m["name"]] = {"score": p, "flag": "FAKE" if p >= threshold else "REAL",
                              "weight": float(combiner["weights"].get(m["name"], 0.0)), "used": m["used"],
                              "dropped_reason": m.get("dropped_reason")}
    return {"video": path, "ok": True, "fake_probability": fused,
            "verdict": "FAKE" if fused >= threshold else "REAL", "threshold": threshold,
            "audio": bool(meta["audio"]["present"]), "students": per,
            "missing_students": [m["name"] for m in ens["models"] if m["name"] not in scores],
            "combiner": combiner["students"]}


def format_result(res: dict) -> str:
    if not res["ok"]:
        return f"{res['video']}: ERROR {res['error']}"
    absent = [n for n in res["missing_students"] if n not in res["combiner"]]
    approx = f"; combiner fit without {', '.join(absent)}" if absent else ""
    lines = [f"{res['video']}: {res['verdict']}  fused p(fake) = {res['fake_probability']:.3f} "
             f"(threshold {res['threshold']:.2f}; audio {'yes' if res['audio'] else 'no'}{approx})"]
    for name, s in res["students"].items():
        weight = f"weight {s['weight']:+.3f}" if s["used"] else f"weight 0 ({s['dropped_reason']})"
        lines.append(f"  {name:3s} {s['score']:.3f}  {s['flag']:4s}  {weight}")
    lines += [f"  {name:3s} missing" for name in res["missing_students"]]
    return "\n".join(lines)


def warn_face_settings(students: dict[str, Student], used: dict) -> None:
    """Crops must come from the settings the students were validated with (checkpoint key
    "faces"); say so when they do not, since scores would then drift from the metrics."""
    keys = ("detector", "max_side", "score_threshold", "box_scale", "max_gap_s", "min_usable",
            "context_scale", "native_grid")
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

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m common.ensemble",
                                description="Fit and apply the stacking ensemble of the students.")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit the combiners on the validation videos the students' checkpoints list")
    f.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"))
    f.add_argument("--data", type=Path, required=True, help="dataset root (official layout)")
    f.add_argument("--dataset", choices=("dfdc", "celebdf", "faceforensics"),
                   help="check that the students were validated on this dataset")
    f.add_argument("--cache-dir", type=Path, default=Path("cache"))
    f.add_argument("--max-videos", type=positive_int, help="cap validation videos (half real, half fake)")
    f.add_argument("--image-size", type=positive_int, help="face crop side (default: training config or 224)")
    f.add_argument("--frames-per-video", type=positive_int, help="default: training config or 32")
    f.add_argument("--face-detector", choices=DETECTORS, help="default: training config or yunet")
    f.add_argument("--face-model", help="YuNet .onnx for --face-detector yunet")
    f.add_argument("--seed", type=int, help="seed of the --max-videos cap (default: training config or 42); "
                                            "the videos themselves come from the students' checkpoints")
    f.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    f.add_argument("--batch-size", type=positive_int, default=32)
    f.add_argument("--workers", type=int, default=2, help="DataLoader and face-extraction workers")
    f.add_argument("--out", type=Path, help="where ensemble.json and the reports go "
                                            "(default: --checkpoint-dir)")
    q = sub.add_parser("predict", help="score video files with a fitted ensemble")
    q.add_argument("videos", nargs="+", metavar="VIDEO")
    q.add_argument("--checkpoint-dir", type=Path, help="students' folder (default: the ensemble "
                                                        "file's folder, else checkpoints)")
    q.add_argument("--ensemble", type=Path, help="default: <checkpoint-dir>/ensemble.json")
    q.add_argument("--json", action="store_true", help="one JSON object per video")
    q.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        if args.command == "fit":
            from common.ensemble_fit import run_fit
            return run_fit(args)
        return run_predict(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
