"""Whether a stage run may start: one run per stage and folder, never over finished work,
and --resume only with the flags that shape the interrupted run.

A second run of the same stage in the same folder would interleave epochs in one metrics
file and race on the same checkpoints, so a lock file holding the owner's pid refuses it
while the first is alive. A lock left by a run that died (its pid is gone on this host) is
stale and taken over.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

from common.data.atomic import FILE_MODE
from common.errors import UserError


class StageLocked(UserError):
    """Another live process holds this stage's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _owner(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # half-written by a process killed mid-write: treated as stale


def _stale(owner: dict | None) -> bool:
    if owner is None or not isinstance(owner.get("pid"), int):
        return True
    # A lock from another host (shared filesystem) cannot be checked: trust it.
    return owner.get("host") == socket.gethostname() and not _alive(owner["pid"])


def acquire(path: str | os.PathLike, what: str) -> Path:
    """Create the lock at `path` for this process, or raise StageLocked naming its owner."""
    path = Path(path)
    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
    for _ in range(3):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
        except FileExistsError:
            owner = _owner(path)
            if not _stale(owner):
                raise StageLocked(
                    f"{what} is already running (pid {owner['pid']} on {owner['host']}, lock "
                    f"{path}); wait for it, or delete the lock if that process is gone") from None
            path.unlink(missing_ok=True)  # stale: the next attempt takes it over
            continue
        except OSError as e:
            raise UserError(f"cannot create the lock {path}: {e.strerror or e} "
                            "(check --checkpoint-dir)") from None
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return path
    raise StageLocked(f"could not take the lock {path}: other runs keep taking it")


def release(path: str | os.PathLike) -> None:
    """Remove the lock if this process still owns it."""
    path = Path(path)
    owner = _owner(path)
    if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


# The one list of flags a resumed run must repeat: each changes the splits (seed, caps, split
# files, compression, DFDC parts), the crops (detector, its model, size, frames, clip) or the
# model (backbone). Every checkpoint records them (run_flags); --resume compares.
RESUME_FIXED = ("seed", "face_detector", "face_model", "image_size", "frames_per_video", "clip_len",
                "backbone", "max_videos", "splits", "compression", "chunks", "val_parts")


def _face_model_digest(cfg) -> str:
    """The YuNet model by content (sha256), so a copy elsewhere is the same model; "" when the
    detector needs none or the model is not there yet (the run itself then says so)."""
    if cfg.face_detector != "yunet":
        return ""
    from common.faces.detectors import resolve_yunet_model

    try:
        path = resolve_yunet_model(cfg.face_model, download=False)
    except UserError:
        return ""
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _flag_value(cfg, key: str) -> str:
    value = getattr(cfg, key, None)
    if key == "face_model":
        return _face_model_digest(cfg)
    if key == "splits" and value is not None:
        return str(Path(value).expanduser().absolute())
    if key in ("chunks", "val_parts") and value is not None:
        return ",".join(map(str, value))
    return str(value)


def run_flags(cfg) -> dict[str, str]:
    """The RESUME_FIXED flags as given on the command line (recorded in every checkpoint)."""
    return {k: _flag_value(cfg, k) for k in RESUME_FIXED}


def check_resume_flags(flags: dict[str, str], recorded: dict[str, str] | None, path: Path) -> None:
    """Refuse --resume when a flag of RESUME_FIXED differs from the interrupted run's (flags the
    checkpoint does not record, from an older version, are not compared)."""
    for key, value in flags.items():
        old = (recorded or {}).get(key)
        if key == "face_model" and not old:
            continue  # the run began before the model was in the cache: it then fetched the official one
        if old is not None and old != value:
            flag = "--" + key.replace("_", "-")
            shown, was = (value or "(none)", old or "(none)")
            raise UserError(f"--resume with {flag} {shown}, but {path} was trained with {flag} {was}; "
                            f"rerun with the interrupted run's {flag}, or pass --overwrite to start the "
                            "stage again")


def check_not_overwriting(best: Path, last: Path, finished: bool) -> None:
    """A fresh start (no --resume, no --overwrite) must not replace this stage's checkpoints."""
    if finished:
        raise UserError(f"{best} is a finished stage; pass --overwrite to train it again "
                        "(or --resume to redo only its calibration)")
    if last.exists():
        raise UserError(f"{last} holds an unfinished run of this stage; pass --resume to "
                        "continue it, or --overwrite to start again")
    if best.exists():
        raise UserError(f"{best} holds an unfinished run of this stage that stopped before its first "
                        f"checkpoint ({last.name} is absent); pass --resume to restart the stage from its "
                        "start (its metrics are kept), or --overwrite to start afresh")
