"""Shared test helpers: the CLI as a subprocess, small models, real data on demand."""

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, ROOT)


def run_cli(*args, env=None, timeout=600, cwd=None):
    """Runs ``python cli.py ARGS`` for real and returns the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "cli.py"), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd or ROOT)


def random_images(n, size=32, seed=0):
    """Raw uint8 RGB images, never all-zero."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture
def tiny_kwargs():
    """Builder arguments of a small ConvMixer-XL (long skips on) for fast tests."""
    return dict(width=16, depth=4, patch_size=4, kernel_size=3, activation="gelu",
                skip_period=2)


def shipped_cifar(tmp_path_factory, limit, *layouts, suffix=""):
    """The first ``limit`` shipped CIFAR-10 training images written by
    ../shared/data/prepare_cifar10.py (binary layout, plus ``layouts`` such as
    "--python"); CMXL_DATA_CACHE (+ ``suffix``) names a folder to reuse across sessions."""
    cache = os.environ.get("CMXL_DATA_CACHE")
    out = cache + suffix if cache else str(tmp_path_factory.mktemp(f"cifar10-{limit}"))
    done = "cifar-10-batches-py" if "--python" in layouts else "cifar-10-batches-bin"
    if not os.path.isdir(os.path.join(out, done)):
        script = os.path.join(SHARED_DATA, "prepare_cifar10.py")
        assert os.path.isfile(script), f"shipped data missing: {script}"
        subprocess.run([sys.executable, script, out, *layouts, "--limit", str(limit)],
                       check=True, capture_output=True, timeout=600)
    return out


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    """The shipped CIFAR-10 training images in all three official on-disk layouts,
    limited to 2,000 images to keep it quick; made once per test session."""
    return shipped_cifar(tmp_path_factory, 2000, "--python", "--folder")


@pytest.fixture(scope="session")
def trained_run(cifar_dir, tmp_path_factory):
    """A real run folder from `cli.py train`: the smoke model, trained a little longer
    (no augmentation, 6 epochs) so its predictions are confident enough for parity checks."""
    run_dir = str(tmp_path_factory.mktemp("trained") / "run")
    result = run_cli("train", "--config", "smoke", "--data-dir", cifar_dir, "--run-dir", run_dir,
                     "--epochs", "6", "--set", "aug=none", "--lr", "0.01")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir
