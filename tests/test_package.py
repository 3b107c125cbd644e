"""The installed package: one import package `cnnsearch`, its config inside, a wheel that works
from any directory, and a registered model that loads once cnnsearch is uninstalled."""

from __future__ import annotations

import json
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import CONF_DIR, REPO, error_lines


def test_every_config_group_is_a_listed_package_so_the_wheel_ships_it():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    groups = {f"cnnsearch.conf.{p.name}" for p in CONF_DIR.iterdir() if p.is_dir()}
    assert groups | {"cnnsearch.conf"} <= set(setuptools["packages"])
    assert setuptools["package-dir"] == {"cnnsearch": "."}


def test_python_dash_m_cnnsearch_is_the_console_script(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cnnsearch", "--help"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage: cnnsearch <command>" in done.stdout


def _run(*command, cwd, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheelhouse")
    done = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", out, REPO, cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("cnnsearch-*.whl")
    return path


@pytest.mark.slow
def test_the_wheel_holds_one_package_and_all_of_conf(wheel):
    archive = zipfile.ZipFile(wheel)
    dist_info = wheel.name.split("-py3")[0] + ".dist-info"
    names = archive.namelist()
    assert {name.split("/")[0] for name in names} == {"cnnsearch", dist_info}
    conf = "cnnsearch/conf/"
    shipped = {name.removeprefix(conf) for name in names if name.startswith(conf)}
    assert shipped == {str(p.relative_to(CONF_DIR)) for p in CONF_DIR.rglob("*.yaml")}
    assert archive.read(f"{dist_info}/top_level.txt").decode().split() == ["cnnsearch"]


@pytest.mark.slow   # ~30 s: a venv, the wheel, a quick sweep, an uninstall, a pyfunc load
def test_the_wheel_in_a_fresh_venv_sweeps_from_anywhere_and_its_model_outlives_it(
        wheel, tmp_path):
    venv = tmp_path / "venv"
    assert _run(sys.executable, "-m", "venv", venv, cwd=tmp_path).returncode == 0
    python = venv / "bin" / "python"
    # The dependencies come from this environment's site-packages (no download); a path
    # added by a .pth line does not run that folder's own .pth files, so the editable
    # install of this checkout stays invisible in the fresh venv.
    venv_site = _run(python, "-c", "import site; print(site.getsitepackages()[0])",
                     cwd=tmp_path).stdout.strip()
    Path(venv_site, "dependencies.pth").write_text(site.getsitepackages()[0] + "\n")
    installed = _run(python, "-m", "pip", "install", "--no-deps", "--no-index", wheel,
                     cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert _run(python, "-c", "import models", cwd=elsewhere).returncode != 0
    located = _run(python, "-c", "import cnnsearch; print(cnnsearch.__file__)", cwd=elsewhere)
    assert located.stdout.strip().startswith(venv_site), located.stdout
    sweep = _run(venv / "bin" / "cnnsearch", "sweep", "experiment=quick", "data.limit=300",
                 "search_space.pooling=[sum]", cwd=elsewhere)
    assert sweep.returncode == 0, error_lines(sweep.stderr)[-20:]
    assert "test accuracy" in sweep.stdout
    assert (elsewhere / "outputs" / "mlflow" / "mlflow.db").is_file()

    removed = _run(python, "-m", "pip", "uninstall", "-y", "cnnsearch", cwd=tmp_path)
    assert removed.returncode == 0, removed.stderr[-3000:]
    store = f"sqlite:///{elsewhere}/outputs/mlflow/mlflow.db"
    loaded = _run(python, "-c", f"""
import json, sys
import mlflow, numpy as np
try:
    import cnnsearch
    sys.exit("cnnsearch is still importable")
except ImportError:
    pass
mlflow.set_tracking_uri({store!r})
mlflow.set_registry_uri({store!r})
model = mlflow.pyfunc.load_model("models:/cnnsearch-digits/latest")
print(json.dumps(np.asarray(model.predict(np.zeros((2, 8, 8, 1), "float32"))).shape))
""", cwd=elsewhere)
    assert loaded.returncode == 0, error_lines(loaded.stderr)[-20:]
    assert json.loads(loaded.stdout.strip().splitlines()[-1]) == [2, 10]
