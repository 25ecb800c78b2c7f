"""Errors that mean "the user asked for something that cannot work".

Scripts catch `UserError`, print its one-line message and exit with code 2, so a bad
path or flag never ends in a traceback. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input: a path, a flag, a file. The message is one line."""


class DatasetLayoutError(UserError):
    """The --data root is missing or matches none of the official dataset layouts."""


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable, from another model or from a newer format."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint (or other atomic) write failed: full disk, quota, read-only folder."""
