"""A sweep's folder: its name, its lock (one process runs a sweep at a time) and its
state file (what marks the folder as cnnsearch's and what a resume must not change)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cnnsearch.search.errors import UserError

log = logging.getLogger(__name__)

STATE_FILE = "sweep.json"
SWEEP_LOCK = ".cnnsearch.lock"   # held by the process running the sweep (flock)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_sweep_name(name: str | None) -> None:
    """A sweep name is one plain folder name, so its folder stays under ``paths.root``.

    Raises:
        UserError: for a path (``/tmp/x``, ``../x``, ``a/b``) or an odd character.
    """
    if name is not None and not NAME_PATTERN.fullmatch(str(name)):
        raise UserError(f"sweep.name must be a plain folder name (letters, digits, '.', '_', "
                        f"'-'; at most 128, not starting with '.'), got {name!r}")


@contextmanager
def sweep_folder(directory: Path, state: dict, resume: bool) -> Iterator[bool]:
    """Create (or check, on resume) the sweep's folder and hold it for this process until
    the sweep ends; yields whether it continues an earlier start.

    ``state``: the sweep's ``name`` (the folder's), ``space_hash`` (what a resume must
    not change) and ``config``, written to the state file.

    The state file, written first, marks a folder as cnnsearch's: a fresh start
    (``sweep.resume=false``) empties only such a folder, and a non-empty folder
    without it is refused, never touched. The lock (``SWEEP_LOCK``, flock) stops a second
    start of a running sweep (another terminal, a requeued job) in one line, before it
    touches the sweep's files or runs; the system drops it with the process, so a
    killed sweep resumes.
    """
    if _read_state(directory) is None and directory.exists() \
            and any(p.name != SWEEP_LOCK for p in directory.iterdir()):
        raise UserError(f"{directory} exists and is not a cnnsearch sweep folder; nothing was "
                        "changed there: choose another sweep.name or paths.root")
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / SWEEP_LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise UserError(f"sweep {directory.name!r} is running in another process "
                            f"({lock.read().strip() or 'unknown'}); wait for it to end, or "
                            "give this one another sweep.name") from None
        except OSError as error:   # a file system without flock (Lustre mounted without it)
            log.warning("cannot lock %s (%s): nothing stops a second start of this sweep "
                        "while it runs", directory, error)
        else:
            lock.truncate(0)
            lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
            lock.flush()
        yield _start(directory, state, resume)


def _start(directory: Path, state: dict, resume: bool) -> bool:
    """Continue the sweep in ``directory`` or start it afresh (emptied but for the lock
    and the state file, rewritten next); returns whether it continues."""
    before = _read_state(directory)
    continued = before is not None and resume
    if continued:
        if before.get("space_hash") != state["space_hash"]:
            raise UserError(
                f"sweep {state['name']!r} in {directory} was started with a different "
                "search space or data set; use sweep.resume=false to start it afresh or "
                "sweep.name=<new name> for a new sweep")
    elif before is not None:   # the state file, kept to the last, still marks it ours
        if directory.is_symlink():   # its entries lie outside paths.root
            raise UserError(f"{directory} is a link to {directory.readlink()}; "
                            "sweep.resume=false empties only a folder under paths.root, "
                            "nothing was deleted: remove the link or choose another sweep.name")
        for path in directory.iterdir():
            if path.name in (SWEEP_LOCK, STATE_FILE):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    (directory / STATE_FILE).write_text(json.dumps(state, indent=2, default=str))
    return continued


def _read_state(directory: Path) -> dict | None:
    """The folder's state file if cnnsearch wrote it (it names the folder), else None."""
    try:
        state = json.loads((directory / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("name") == directory.name else None
