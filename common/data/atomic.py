"""Atomic file writes: nothing is lost when a run dies or the disk fills mid-write.

Every file the suite writes (checkpoints, face-cache entries, metrics, reports) goes to a
temporary name in the same folder, is fsynced, then renamed over the target, so a crash or
a full disk leaves the previous file intact.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from common.errors import CheckpointWriteError

_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would give: every file we write gets the same mode


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb",
                 sync: bool = True) -> None:
    """Run `write(fileobj)` into a temp file beside `path`, fsync, then rename over `path`.
    `sync=False` skips the fsync, for a file whose loss another, synced file would reveal
    (a face-cache view: its entry's json records its size and checksum)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CheckpointWriteError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)  # mkstemp makes 0600
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise CheckpointWriteError(f"cannot write {path}: {e.strerror or e} (the previous file is untouched)") from e
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(p: str) -> None:
    try:
        os.remove(p)
    except OSError:
        pass
