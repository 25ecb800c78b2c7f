"""One run per stage and checkpoint folder: a lock file that holds the owner's pid.

A second run of the same stage in the same folder would interleave epochs in one metrics
file and race on the same checkpoints, so it is refused while the first is alive. A lock
left by a run that died (its pid is gone on this host) is stale and taken over.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

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
    path.parent.mkdir(parents=True, exist_ok=True)
    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(path)
            if not _stale(owner):
                raise StageLocked(
                    f"{what} is already running (pid {owner['pid']} on {owner['host']}, lock "
                    f"{path}); wait for it, or delete the lock if that process is gone") from None
            path.unlink(missing_ok=True)  # stale: the next attempt takes it over
            continue
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
