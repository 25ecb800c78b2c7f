"""Students trained outside this suite, as TorchScript modules with one documented contract.

Contract (README, "Extra students"):
  input   uint8 face crops [B, T, 3, S, S], RGB, values 0-255, the crops of the face cache
          (no CLAHE, no normalisation: the module does its own);
  output  float logits [B, 2]; class 1 = FAKE;
  T       the module's integer attribute `clip_len` if it has one, else 1;
  T-scale the module's float attribute `temperature` if it has one, else 1.0 (its calibration).
A file that is neither this suite's student format nor such a module is named and skipped.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from torch import nn

from common.errors import CheckpointError


def is_torchscript(path: str | Path) -> bool:
    """Whether `path` is a TorchScript archive (a zip holding code/ and constants.pkl)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


class ExternalStudent(nn.Module):
    """A TorchScript module behind the call signature of StudentModel."""

    def __init__(self, module: torch.jit.ScriptModule, clip_len: int, path: Path) -> None:
        super().__init__()
        self.module = module
        self.options = {"name": "external", "clip_len": int(clip_len), "path": str(path)}

    def forward(self, frames: torch.Tensor, mel: torch.Tensor | None = None,
                audio_missing: torch.Tensor | None = None) -> torch.Tensor:
        if frames.dim() == 4:
            frames = frames.unsqueeze(1)
        if frames.dtype != torch.uint8:
            raise ValueError("external students take uint8 frames")
        return self.module(frames)


def load_external(path: str | Path) -> tuple[ExternalStudent, float]:
    """-> (module wrapper, its temperature). CheckpointError when the file breaks the contract."""
    path = Path(path)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # a damaged archive or an unknown operator: one line, then skipped
        raise CheckpointError(f"{path}: not a loadable TorchScript module ({str(e).splitlines()[0][:120]})") from None
    module.eval()
    clip_len = getattr(module, "clip_len", 1)
    temperature = getattr(module, "temperature", 1.0)
    if not isinstance(clip_len, int) or clip_len < 1:
        raise CheckpointError(f"{path}: attribute clip_len must be a positive int, got {clip_len!r}")
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise CheckpointError(f"{path}: attribute temperature must be a positive number, got {temperature!r}")
    return ExternalStudent(module, clip_len, path), float(temperature)


@torch.no_grad()
def check_contract(model: ExternalStudent, image_size: int) -> None:
    """One dry call on two black uint8 clips: the output must be finite [2, 2] logits."""
    frames = torch.zeros(2, model.options["clip_len"], 3, image_size, image_size, dtype=torch.uint8)
    where = model.options["path"]
    try:
        out = model(frames)
    except Exception as e:
        raise CheckpointError(f"{where}: rejects uint8 frames [B, T, 3, {image_size}, {image_size}] "
                              f"({' '.join(str(e).split())[:120]})") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, 2) or not out.is_floating_point():
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckpointError(f"{where}: returned {shape} for 2 clips; the contract is float logits [B, 2]")
    if not torch.isfinite(out).all():
        raise CheckpointError(f"{where}: returned non-finite logits")
