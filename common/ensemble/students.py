"""The students of the ensemble: load them, score videos with them, fuse their scores.

Each student gives a calibrated video score p = sigmoid(m / T), m the mean over the video's
sampled frames (or clips) of the logit margin logit[fake] - logit[real]. A combiner is a logistic regression on logit(p):
    fused = sigmoid(intercept + sum_i weight_i * logit(p_i))
fit on the validation videos the students' checkpoints list (common/ensemble/fit.py,
common/ensemble/stacking.py); a student at chance there gets weight 0. One combiner is fit
for every subset of the useful students, so a student that is missing, or cannot see a video
(AV on a video without usable audio: blind_reason), means the combiner fit without it, never
a made-up 0.5.

Students: `<name>_model_student.pt` for the five built-in names, `ll`, and any other name;
each is this suite's student format or a TorchScript module (common/ensemble/external.py).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from common.data.samples import FaceSamples
from common.ensemble.external import ExternalStudent, check_contract, is_torchscript, load_external
from common.errors import CheckpointError, UserError
from common.faces.cache import FaceCache
from common.faces.views import VIEWS, recorded_view
from common.model import CLIP_MODELS, MODEL_NAMES, StudentModel, student_from_options
from common.preprocess import ClipTransform
from common.recipes import DEFAULTS, RECIPES
from common.training.checkpoints import load_checkpoint, weights_fingerprint
from common.training.engine import make_precision, predict
from common.training.metrics import video_probabilities

STUDENT_NAMES = MODEL_NAMES + ("ll",)  # ll: a low-light student trained outside this suite
STUDENT_SUFFIX = "_model_student.pt"
ENSEMBLE_FILE = "ensemble.json"
FORMAT = 2  # 2: one combiner per subset of students
EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] before the logit


@dataclass(frozen=True)
class Settings:
    """What the face cache and the transforms need; the same at fit and at predict time."""
    image_size: int = DEFAULTS.image_size
    frames_per_video: int = DEFAULTS.frames_per_video
    clip_len: int = DEFAULTS.clip_len  # frames per cached run: the longest clip any student reads
    detector: str = DEFAULTS.face_detector
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


def make_cache(root: str | Path, dataset: str, s: Settings,
               views: Sequence[str] | None = None) -> FaceCache:
    """The face cache of these settings; every stored view unless `views` names fewer."""
    extra = {} if views is None else {"views": tuple(views)}
    return FaceCache(root, dataset, crop_size=s.image_size, frames_per_video=s.frames_per_video,
                     clip_len=s.clip_len, detector=s.detector, **extra)


def views_needed(students: dict[str, Student]) -> tuple[str, ...]:
    """The views these students read (in VIEWS order): what predict has to crop."""
    wanted = {recorded_view(st.checkpoint) for st in students.values()}
    return tuple(v for v in VIEWS if v in wanted)


def score_videos(student: Student, records: Sequence, cache: FaceCache, settings: Settings,
                 device: torch.device, *, batch_size: int = 32, workers: int = 0):
    """Calibrated video scores of the cached `records` -> (ids, labels, probs), ids sorted."""
    # uint8 out of the loader: StudentModel normalises itself, and it is the external contract.
    transform = ClipTransform(settings.image_size, preprocessing=student.preprocessing, normalize=False)
    samples = FaceSamples(records, cache, clip_len=student.clip_len, transform=transform,
                          with_audio=student.with_audio, view=recorded_view(student.checkpoint))
    loader = DataLoader(samples, batch_size=batch_size, num_workers=workers,
                        pin_memory=device.type == "cuda")
    model = student.model.to(device)
    ids, labels, logits = predict(model, loader, make_precision(device, amp=True))
    return video_probabilities(ids, labels, logits, student.temperature)  # sigmoid(mean frame margin / T)


NO_AUDIO = "no usable audio track (none, or it failed to decode)"


def blind_reason(student: Student, audio_present: bool) -> str | None:
    """Why `student` cannot see a video, or None when its input is there: a student that
    reads audio is blind on a video without usable audio (it would score silence)."""
    return NO_AUDIO if student.with_audio and not audio_present else None


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
