"""Checkpoint files: names on disk, strict loading, RNG state.

torch is imported inside the functions that need it, so the status table and the file
helpers load without it.

Every write goes through common/data/atomic.py (temp file, fsync, rename), so a crash or a
full disk mid-save leaves the previous file intact.
"""
from __future__ import annotations

import io
import os
import platform
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.atomic import atomic_write
from common.errors import CheckpointError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class StagePaths:
    best: Path      # <m>_stage<k>_<dataset>.pt      best validation video AUC
    last: Path      # <m>_stage<k>_<dataset>_last.pt for --resume
    metrics: Path   # <m>_stage<k>_<dataset>.metrics.jsonl
    student: Path   # <m>_model_student.pt           written after the final stage


def stage_paths(checkpoint_dir: str | os.PathLike, model: str, stage: str) -> StagePaths:
    d = Path(checkpoint_dir)
    base = f"{model}_{stage}"
    return StagePaths(d / f"{base}.pt", d / f"{base}_last.pt", d / f"{base}.metrics.jsonl",
                      d / f"{model}_model_student.pt")


def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """Atomically save a checkpoint dict, stamped with the format version and library versions."""
    import torch

    obj = dict(obj, format=FORMAT_VERSION, versions=library_versions())
    # Serialised in memory first: torch.save wraps a failed file write (ENOSPC) in a
    # RuntimeError, while a plain write raises the OSError that names the disk's problem.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def load_checkpoint(path: str | os.PathLike, expected_model: str | None = None) -> dict:
    """Load a checkpoint of this suite; refuse other files, newer formats and other models."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle and EOF errors all mean "not a usable checkpoint"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({first[:160]})") from e
    if not isinstance(ckpt, dict) or "format" not in ckpt or "model_options" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint written by this training suite")
    if ckpt["format"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer version of this suite "
                              f"(format {ckpt['format']} > {FORMAT_VERSION}); update the code")
    got = ckpt["model_options"].get("name")
    if expected_model is not None and got != expected_model:
        raise CheckpointError(f"{path} holds a {str(got).upper()} model, not {expected_model.upper()}")
    return ckpt


def looks_whole(path: str | os.PathLike) -> bool:
    """Whether a checkpoint file is a whole torch archive: its zip directory sits at the end of
    the file, so a truncated or overwritten file fails here, without torch or the weights."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def library_versions() -> dict:
    import torch
    import torchvision

    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "numpy": np.__version__, "python": platform.python_version()}


def capture_rng() -> dict:
    """Python, NumPy and torch RNG state, as tensors and plain values (loadable weights_only)."""
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def weights_fingerprint(state_dict: dict) -> float:
    """A cheap number that changes with the weights: lets a later stage prove what it loaded."""
    return float(sum(v.double().sum() for v in state_dict.values() if v.is_floating_point()))
