"""A disk that fills during a real sweep (issue 14): the sweep ends with one clear line,
the store stays readable, and once space is freed the same command resumes to the same
consistent end as after a kill (tests/reliability/consistency.py).

The disk is a 64 MiB tmpfs mounted over the output root (mounting needs root or sudo;
without them the tests skip and say why); a filler file takes its last free byte at a
chosen moment.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import error_lines
from tests.reliability.consistency import SWEEP, check_consistent, completed_trials, wait_for
from tests.tracking.conftest import open_experiment, run_cli, start_cli

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

# label -> what the sweep prints (or the file it makes) just before the disk fills
MOMENTS = {
    "between trials": "trial 0: score",
    "while the final model is saved and logged": "FILE:best_model.keras",
}


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs at tmp_path/disk, ours to write, unmounted after the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    as_root = [] if os.geteuid() == 0 or not shutil.which("sudo") else ["sudo", "-n"]
    options = f"size=64m,uid={os.getuid()},gid={os.getgid()}"
    mounted = subprocess.run([*as_root, "mount", "-t", "tmpfs", "-o", options, "tmpfs",
                              str(disk)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run([*as_root, "umount", "--lazy", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Write a file until the disk has no free byte left; returns it."""
    filler, block = disk / "filler", b"\0" * (1 << 20)
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(descriptor, block)   # partial writes take the last bytes
    except OSError as error:
        assert error.errno == errno.ENOSPC, error
    finally:
        os.close(descriptor)
    return filler


@pytest.mark.parametrize("moment", MOMENTS)
def test_a_full_disk_stops_the_sweep_in_one_line_and_it_resumes_once_freed(
        tmp_path, small_disk, moment):
    root, stderr = small_disk / "out", tmp_path / "sweep.err"
    args = [*SWEEP, f"paths.root={root}"]
    process = start_cli(*args, stderr_path=stderr)
    try:
        wait_for(MOMENTS[moment], root, stderr, process)
        filler = _fill(small_disk)
        code = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()

    lines = error_lines(stderr.read_text())
    assert code == 2, lines[-20:]
    assert not [line for line in lines if "Traceback" in line], lines
    assert lines[-1].startswith("cnnsearch: error:") and "no space left on device" in lines[-1]
    assert lines[-1].endswith("(a sweep resumes where it stopped)"), lines[-1]
    assert [line for line in lines if line.startswith("cnnsearch: error:")] == [lines[-1]]
    assert open_experiment(root).parents, "the store no longer opens"
    before = completed_trials(root)

    filler.unlink()
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    check_consistent(root, before)
