"""Where a stage starts: the device, the stage's lock, and the weights it starts from
(--resume, --init, the previous stage's best checkpoint, or scratch).

Every refusal here happens before any data work: a wrong flag costs seconds, not an
extraction.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from common.errors import CheckpointError, UserError
from common.model import build_student, student_from_options
from common.recipes import script_name
from common.training import distributed
from common.training.checkpoints import load_checkpoint, stage_paths
from common.training.run_guard import acquire, check_not_overwriting, check_resume_flags, run_flags

log = logging.getLogger("train")


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA device is available")
    if choice == "cpu" or not torch.cuda.is_available():
        log.warning("training on the CPU%s", "" if choice == "cpu" else " (no CUDA device found)")
        return torch.device("cpu")
    return torch.device("cuda")


def take_lock(cfg, paths, dist_info) -> Path | None:
    """Rank 0 locks the stage against a second run in the same folder; every rank learns
    whether it may go on (a refusal on rank 0 alone would leave the others waiting)."""
    lock, refusal = None, None
    if dist_info.main:
        try:
            lock = acquire(paths.best.with_suffix(".lock"), f"{cfg.model} {cfg.stage}")
        except UserError as e:
            refusal = str(e)
    refusal = distributed.broadcast_object(dist_info, refusal)
    if refusal:
        raise UserError(refusal)
    return lock


def resolve_start(cfg, recipe, paths) -> tuple[str, dict | None, Path | None]:
    """Where weights come from: ('resume'|'init'|'previous'|'scratch', checkpoint, its path)."""
    if cfg.resume and paths.last.exists():
        ckpt = load_checkpoint(paths.last, cfg.model)
        check_resume_flags(run_flags(cfg), ckpt.get("flags"), paths.last)
        return "resume", ckpt, paths.last
    if cfg.resume:
        announce_restart(cfg, paths)
    elif not cfg.overwrite:
        check_not_overwriting(paths.best, paths.last, _finished(paths.best, cfg.model))
    if cfg.init is not None:
        return "init", load_checkpoint(cfg.init, cfg.model), cfg.init
    if recipe.previous is None:
        return "scratch", None, None
    prev = stage_paths(cfg.checkpoint_dir, cfg.model, recipe.previous).best
    if not prev.exists():
        raise CheckpointError(f"{prev} not found: run {script_name(cfg.model, recipe.previous)} first "
                              "(or pass --init PATH)")
    ckpt = load_checkpoint(prev, cfg.model)
    check_finished(ckpt, prev)
    return "previous", ckpt, prev


def _finished(best: Path, model: str) -> bool:
    return best.exists() and load_checkpoint(best, model).get("stage_finished") is True


def announce_restart(cfg, paths) -> None:
    """--resume with no _last.pt: the run stopped or failed before its first checkpoint (during
    face extraction, or in epoch 1: a full disk, a dead worker, a non-finite loss). There is
    nothing to continue, so the stage restarts from its start; a restarted job can pass
    --resume every time. A finished stage is never restarted this way."""
    try:
        finished = _finished(paths.best, cfg.model)
    except CheckpointError:
        finished = False  # an unreadable best of an unfinished run: the restart replaces it
    if finished:
        raise UserError(f"{paths.best} is a finished stage and {paths.last.name} is gone, so there is "
                        "nothing to resume; pass --overwrite to train it again")
    old = f"; its unfinished {paths.best.name} is replaced" if paths.best.exists() else ""
    log.warning("--resume: %s does not exist (the run stopped before its first checkpoint); the stage "
                "restarts from its start (its metrics file and the face cache are kept%s)", paths.last, old)


def check_finished(ckpt: dict, path: Path) -> None:
    """Refuse to start from a stage that stopped early, failed or collapsed (unless --init)."""
    if ckpt.get("stage_finished") is True:
        return
    why = ckpt.get("stage_failed") or ("it stopped before its last epoch" if "stage_finished" in ckpt
                                       else "it does not record that its stage finished")
    raise CheckpointError(f"{path} is from an unfinished stage ({why}); finish that stage with --resume, "
                          f"or pass --init {path} to start from it anyway")


def build_model(cfg, start: str, ckpt: dict | None):
    if ckpt is None:
        return build_student(cfg.model, backbone=cfg.backbone, pretrained=cfg.pretrained,
                             clip_len=cfg.clip_len)
    model = student_from_options(ckpt["model_options"])
    model.load_state_dict(ckpt["model"], strict=True)  # never a silent partial load
    log.info("weights loaded (%s) from a %s checkpoint, backbone %s", start,
             ckpt.get("stage", "?"), ckpt["model_options"].get("backbone"))
    return model
