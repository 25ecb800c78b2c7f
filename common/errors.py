"""Errors that mean "the user asked for something that cannot work".

Scripts catch `UserError`, print its one-line message and exit with code 2, so a bad
path or flag never ends in a traceback. A write the disk refused (`is_disk_fault`) exits 3
in every command, like a failed stage. Anything else is a bug and keeps its traceback.
"""
import errno
import sys

# A write that failed because of the disk, not the program or the command line.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)
EXIT_DISK = 3


class UserError(Exception):
    """A problem with the user's input: a path, a flag, a file. The message is one line."""


class DatasetLayoutError(UserError):
    """The --data root is missing or matches none of the official dataset layouts."""


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable, from another model or from a newer format."""


class WriteError(UserError):
    """A write the disk refused (full disk, quota, read-only folder): exit 3, not 2."""


class CheckpointWriteError(CheckpointError, WriteError):
    """A checkpoint (or other atomic) write failed: full disk, quota, read-only folder."""


def is_disk_fault(exc: BaseException) -> bool:
    """A full disk, a quota, a read-only or failing filesystem: one of our writes (WriteError:
    checkpoints, reports, the face cache) or a library's own write (a bare OSError)."""
    return isinstance(exc, WriteError) or (isinstance(exc, OSError) and exc.errno in DISK_ERRNOS)


def fault_exit(exc: BaseException) -> int:
    """A user's or the disk's fault as one line on stderr -> its exit status (2, or 3 for the
    disk); anything else is a bug and is raised again, with its traceback."""
    if not isinstance(exc, UserError) and not is_disk_fault(exc):
        raise exc
    print(f"error: {exc}", file=sys.stderr)
    return EXIT_DISK if is_disk_fault(exc) else 2
