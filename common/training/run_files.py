"""What a stage writes beside its checkpoints: metrics lines, the skipped-video list, logs.

Kept apart from `common.training.stage` so the stage reads as the recipe's life, and these small
file chores can be found (and tested) on their own.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

from common.data.atomic import atomic_write
from common.errors import UserError
from common.faces.cache import AUDIO_FAILED

log = logging.getLogger("train")


def report_epoch(cfg, metrics: dict, line: dict) -> None:
    v, f, c = metrics["video"], metrics["frame"], metrics["collapse"]
    log.info("epoch %d: train loss %.4f (%.1f samples/s) | val video AUC %.4f AP %.4f EER %.4f bal.acc %.4f"
             " | frame AUC %.4f | val loss %.4f", line["epoch"], line["train"]["loss"],
             line["train"]["samples_per_s"], v["auc"], v["ap"], v["eer"], v["balanced_acc"], f["auc"],
             metrics["loss"])
    if c["collapsed"]:
        log.error("!!! COLLAPSE: the %s model's validation predictions are degenerate: %s. "
                  "It is not learning the task; do not ship this checkpoint.", cfg.model.upper(), c["reason"])


def tensorboard_writer(paths, dist_info):
    """TensorBoard events under <checkpoint-dir>/tensorboard/ when the package is installed."""
    if not dist_info.main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional dependency
        return None
    return SummaryWriter(log_dir=str(paths.best.parent / "tensorboard" / paths.best.stem))


def missing_rels(records, cache) -> set[str]:
    return {r.rel for r in records if not cache.is_complete(r.rel, r.path)}  # the index decides


def skipped_path(paths) -> Path:
    """<m>_<stage>.skipped.txt beside the metrics."""
    return paths.metrics.with_suffix("").with_suffix(".skipped.txt")


def skip_reason(cache, rel: str) -> str:
    """'<reason>: <why>' from the cache's skip marker (bad_video, no_face, few_faces, missing),
    else a failed extraction."""
    try:
        marker = json.loads(cache.paths(rel)["skip"].read_text())
        return " ".join(f"{marker['reason']}: {marker.get('detail', '')}".split())
    except (OSError, ValueError, KeyError, TypeError):
        return "failed: extraction error (logged above); retried on the next run"


def write_skipped(path: Path, rels: list[str], dist_info, cache=None) -> None:
    """One line per skipped video: its rel, a tab, the reason."""
    if dist_info.main and rels:
        lines = [rel if cache is None else f"{rel}\t{skip_reason(cache, rel)}" for rel in rels]
        atomic_write(path, lambda f: f.write("\n".join(lines) + "\n"), mode="w")


def data_summary(records, cache, skipped: list[str], skipped_file: Path) -> dict:
    """What the run could not use: skipped videos by reason, tracks whose audio failed."""
    used = [r for r in records if r.split in ("train", "val")]
    skipped = set(skipped)
    reasons = Counter(skip_reason(cache, rel).split(":")[0] for rel in skipped)
    audio_failed = 0
    for r in used:
        if r.has_audio and r.rel not in skipped:
            meta = cache.meta(r.rel)
            audio_failed += bool(meta) and meta.get("audio", {}).get("reason") == AUDIO_FAILED
    return {"videos": len(used), "skipped": dict(reasons), "audio_failed": audio_failed,
            "skipped_list": str(skipped_file) if skipped else None}


def append_jsonl(path: Path, line: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(line, default=float) + "\n")


def check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --checkpoint-dir {directory}: {e.strerror}") from e
    if not os.access(directory, os.W_OK):
        raise UserError(f"--checkpoint-dir {directory} is not writable")


def remove_stale_temps(paths) -> None:
    """Temp files of checkpoint writes that a killed run left behind (never read; only tidied)."""
    for target in (paths.best, paths.last):
        for stale in target.parent.glob(f".{target.name}.*.tmp"):
            stale.unlink(missing_ok=True)
