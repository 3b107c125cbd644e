"""``cnnsearch ui``: the MLflow UI over the local store, and its end."""

from __future__ import annotations

import signal
import socket
import time
import urllib.error
import urllib.request

import psutil
import pytest

from cnnsearch.tracking.config import TrackingConfig
from cnnsearch.tracking.store import experiment_id, open_store
from tests.tracking.conftest import free_port, start_cli, stop_tree, wait_for_text

pytestmark = pytest.mark.slow


def _wait_for_http_200(url: str, process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"cnnsearch ui exited with {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    pytest.fail(f"{url} did not answer 200 within {timeout} s")


def _port_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_ui_serves_and_sigterm_stops_its_whole_server(tmp_path):
    port = free_port()
    stderr = tmp_path / "ui.err"
    ui = start_cli("ui", f"paths.root={tmp_path}", f"ui.port={port}", stderr_path=stderr)
    try:
        _wait_for_http_200(f"http://127.0.0.1:{port}/", ui, timeout=240)
        server = psutil.Process(ui.pid).children(recursive=True)
        assert server, "the MLflow server runs in child processes"
        ui.send_signal(signal.SIGTERM)   # the command alone, as `kill <pid>` would
        assert ui.wait(timeout=120) == 0, stderr.read_text()[-3000:]
        _, alive = psutil.wait_procs(server, timeout=60)
        assert not alive, [process.cmdline()[:4] for process in alive]
        assert _port_closed(port)
    finally:
        stop_tree(ui)
    assert f"MLflow UI: http://127.0.0.1:{port}/ " in stderr.read_text()   # no sweep yet
    assert "other machines" not in stderr.read_text()
    assert (tmp_path / "mlflow").is_dir()


def test_ui_on_all_interfaces_warns(tmp_path):
    port = free_port()
    stderr = tmp_path / "ui.err"
    ui = start_cli("ui", f"paths.root={tmp_path}", "ui.host=0.0.0.0", f"ui.port={port}",
                   stderr_path=stderr)
    try:
        wait_for_text(stderr, f"MLflow UI: http://0.0.0.0:{port}/", ui, timeout=120)
    finally:
        stop_tree(ui)
    warnings = [line for line in stderr.read_text().splitlines() if "other machines" in line]
    assert len(warnings) == 1, stderr.read_text()
    assert "WARNING" in warnings[0] and "ui.host=0.0.0.0" in warnings[0]


def test_ui_prints_the_url_of_the_experiments_runs(tmp_path):
    store = TrackingConfig(root=str(tmp_path), experiment="digits")
    experiment = experiment_id(open_store(store), store)
    port = free_port()
    stderr = tmp_path / "ui.err"
    ui = start_cli("ui", f"paths.root={tmp_path}", f"ui.port={port}", stderr_path=stderr)
    try:
        url = (f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs"
               "?workflowType=machine_learning")
        wait_for_text(stderr, f"MLflow UI: {url} ", ui, timeout=120)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200   # printed only once the server answers
    finally:
        stop_tree(ui)
    tags = open_store(store).get_experiment(experiment).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
