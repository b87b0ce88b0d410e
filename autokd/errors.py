"""Errors autokd raises on purpose.

`AutokdError` and its subclasses are *user* errors: bad config, missing file, broken
checkpoint. The CLI prints them on one line and exits with code 2, before writing anything.
Everything else is a bug or a trial failure and keeps its traceback.
"""


class AutokdError(Exception):
    """A problem with what the user gave us; the message says where and what was expected."""


class ConfigError(AutokdError):
    """A study, search space or training config is invalid.

    Message format: ``<file>: <dotted.key>: <what was expected>, got <given>``.
    """


class DataError(AutokdError):
    """A dataset is missing, truncated or inconsistent."""


class CheckpointError(AutokdError):
    """A checkpoint is missing, corrupted or belongs to another architecture."""


class StorageError(AutokdError):
    """The Optuna storage cannot be opened, or holds no / a conflicting study."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the trial fails with this reason."""
