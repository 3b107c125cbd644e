"""search.errors: which errors mean a full disk, wherever a library reports it."""

from __future__ import annotations

import errno

from cnnsearch.search.errors import disk_full


def _chained(cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as error:
            raise RuntimeError("recording the trial failed") from error
    except RuntimeError as outer:
        return outer


def test_a_full_disk_is_recognised_by_errno_and_by_the_libraries_wordings():
    assert disk_full(OSError(errno.ENOSPC, "No space left on device", "/out/a.json")) == (
        "no space left on device (writing /out/a.json): free some space, then run the same "
        "command again (a sweep resumes where it stopped)")
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded")).startswith(
        "no space left on device: free some space")
    sqlite = Exception("(sqlite3.OperationalError) database or disk is full")
    assert disk_full(_chained(sqlite)).startswith("no space left on device: free")
    hdf5 = OSError("Unable to synchronously write file (file write failed: errno = 28, "
                   "error message = 'No space left on device')")
    assert disk_full(hdf5) is not None


def test_other_errors_are_not_a_full_disk():
    assert disk_full(OSError(errno.EACCES, "Permission denied", "/out")) is None
    assert disk_full(_chained(ValueError("loss became NaN at epoch 0"))) is None
    assert disk_full(KeyboardInterrupt()) is None
