"""`pip install .`: the `cmxl` command, identical to `python cli.py`, with the configs
shipped as package data and found from any working directory."""

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib

import pytest

from conftest import ROOT, run_process


def _pins(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith(("#", "-r"))]


def test_pyproject_pins_are_requirements_txt():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["dependencies"] == _pins(os.path.join(ROOT, "requirements.txt"))
    assert project["version"] == __import__("cmxl_keras").__version__
    assert project["scripts"]["cmxl"] == "cmxl_keras.cli:main"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A new virtual environment with this project installed by pip from a copy of the
    repository. Its dependencies are this environment's (a .pth file), so the install
    needs no network; the project itself is what pip built and installed."""
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".ci-venv", "__pycache__", "runs", "build", "*.egg-info", "results",
        "saved_model", "*.tflite"))
    venv = base / "venv"
    made = run_process([sys.executable, "-m", "venv", str(venv)], timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    site = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, timeout=60).stdout.strip()
    with open(os.path.join(site, "dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    pip = run_process([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps",
                       "--no-build-isolation", "--no-index", str(source)], timeout=600,
                      cwd=str(base))
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-3000:]
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    return venv, elsewhere


@pytest.mark.slow
def test_cmxl_is_installed_and_finds_the_shipped_configs_anywhere(installed):
    venv, elsewhere = installed
    cmxl = str(venv / "bin" / "cmxl")
    where = run_process([str(venv / "bin" / "python"), "-c",
                         "import cmxl_keras.settings as c; print(c.__file__); print(c.CONFIG_DIR)"],
                        timeout=120, cwd=str(elsewhere))
    module, configs = where.stdout.split()
    assert module.startswith(str(venv)) and configs.startswith(str(venv)), where.stdout
    assert sorted(os.listdir(configs)) == sorted(os.listdir(os.path.join(ROOT, "configs")))
    version = run_process([cmxl, "--version"], timeout=120, cwd=str(elsewhere))
    assert version.returncode == 0 and "0.1.0" in version.stdout
    info = run_process([cmxl, "info", "--config", "cm_xl"], timeout=300, cwd=str(elsewhere))
    assert info.returncode == 0, info.stderr[-2000:]
    same = run_process([sys.executable, os.path.join(ROOT, "cli.py"), "info", "--config",
                        "cm_xl"], timeout=300, cwd=str(elsewhere))
    assert info.stdout == same.stdout and "model: cm_xl" in info.stdout
    # A configs/ folder in the working directory is the one users edit: a name there wins.
    (elsewhere / "configs").mkdir()
    (elsewhere / "configs" / "mine.toml").write_text('name = "mine"\ndepth = 6\n')
    mine = run_process([cmxl, "info", "--config", "mine"], timeout=300, cwd=str(elsewhere))
    assert mine.returncode == 0 and "model: mine  (ConvMixer-256/6" in mine.stdout, mine.stderr


@pytest.mark.slow
def test_the_installed_package_carries_the_shipped_model(installed):
    """``pip install .`` carries the shipped model's Keras file: applications builds it
    from any folder, the same model as in the repository."""
    venv, elsewhere = installed
    script = ("from cmxl_keras import applications as a; import numpy as np; "
              "m = a.ConvMixer(weights='cifar10'); print(a.preset_dir('cm_vanilla')); "
              "x = np.arange(2 * 32 * 32 * 3).reshape(2, 32, 32, 3) % 256; "
              "print(np.asarray(m(x.astype('float32'))).round(4).tolist())")
    there = run_process([str(venv / "bin" / "python"), "-c", script], timeout=300,
                        cwd=str(elsewhere))
    assert there.returncode == 0, there.stderr[-3000:]
    folder, outputs = there.stdout.strip().splitlines()[-2:]
    assert folder.startswith(str(venv)) and folder.endswith(os.path.join("presets", "cm_vanilla"))
    here = run_process([sys.executable, "-c", script], timeout=300, cwd=ROOT)
    assert here.stdout.strip().splitlines()[-1] == outputs
    assert here.stdout.strip().splitlines()[-2].startswith(os.path.join(ROOT, "exported"))


@pytest.mark.slow
def test_cmxl_trains_the_smoke_config_from_another_directory(installed, cifar_dir):
    venv, elsewhere = installed
    result = run_process([str(venv / "bin" / "cmxl"), "train", "--config", "smoke",
                          "--data-dir", cifar_dir, "--epochs", "1", "--steps-per-epoch", "2",
                          "--set", "aug=none"], timeout=600, cwd=str(elsewhere))
    assert result.returncode == 0, result.stderr[-3000:]
    made = [name for name in os.listdir(elsewhere / "runs") if name.startswith("smoke-")]
    assert len(made) == 1
    assert os.path.isfile(elsewhere / "runs" / made[0] / "model.keras")
