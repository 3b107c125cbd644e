"""Errors that the command line reports to the user without a traceback."""

from __future__ import annotations

import errno

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# how libraries that do not raise an OSError say it: SQLite (MLflow's store), HDF5 (weights)
DISK_FULL_TEXTS = ("database or disk is full", "No space left on device", "Disk quota exceeded")


def first_line(text: str) -> str:
    """The first non-blank line of ``text``, stripped ("" if none)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def last_line(text: str) -> str:
    """The last non-blank line of ``text``, stripped ("" if none): a traceback's error."""
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


class UserError(Exception):
    """A problem the user can fix (bad config, missing file): shown as one line, no traceback."""


def disk_full(error: BaseException) -> str | None:
    """One line for an error caused by a full disk (anywhere in its chain), else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if (isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS) or any(
                text in str(error) for text in DISK_FULL_TEXTS):
            where = getattr(error, "filename", None)
            return (f"no space left on device{f' (writing {where})' if where else ''}: free "
                    "some space, then run the same command again (a sweep resumes where it "
                    "stopped)")
        error = error.__cause__ or error.__context__
    return None


class SweepStopped(UserError):
    """Raised by an observer that cannot go on (its MLflow recorder is lost): the sweep
    stops in one line and its running trial is handed back (a resume runs it again), not
    counted as failed."""
