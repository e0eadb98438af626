"""SIGKILL at the worst moments: during a checkpoint save, during validation, mid-export.

The CLI runs in a subprocess whose library calls are wrapped (test-side, no hooks in the
library) to announce the moment on stdout and linger in it, so the kill lands there.
"""

import json
import os
import sys

import keras
import pytest

from conftest import ROOT, Child, run_cli
from test_train import read_events

pytestmark = pytest.mark.slow

# Wrappers: print a marker when the moment starts, then stay in it for a few seconds.
SAVE = """
import time, keras
_save = keras.Model.save_weights
def save_weights(self, filepath, *a, **k):
    with open(filepath, "wb") as f:
        f.write(b"partial")  # a half-written temporary file
    print("MARK saving", flush=True)
    time.sleep(3)
    return _save(self, filepath, *a, **k)
keras.Model.save_weights = save_weights
"""
VALIDATE = """
import time
from cmxl_keras import callbacks
def on_test_begin(self, logs=None):
    print("MARK validating", flush=True)
    time.sleep(3)
callbacks.EpochReport.on_test_begin = on_test_begin
"""
EXPORT = """
import time
from cmxl_keras import export
_convert = export.convert_tflite
def convert_tflite(*a, **k):
    print("MARK converting", flush=True)
    time.sleep(3)
    return _convert(*a, **k)
export.convert_tflite = convert_tflite
"""


def _cli_with(patch, *args):
    code = patch + "\nimport sys\nsys.argv = ['cli.py'] + sys.argv[1:]\nimport cli\ncli.cli()\n"
    return Child([sys.executable, "-c", code, *args], env={"PYTHONPATH": ROOT})


def _kill_at(child, marker, nth=1, timeout=300):
    child.wait_until(lambda: child.lines_starting(f"MARK {marker}") >= nth, timeout,
                     f"marker {marker!r} #{nth}")
    child.kill()


@pytest.mark.parametrize("moment,patch,nth", [("saving", SAVE, 2), ("validating", VALIDATE, 2)])
def test_kill_during_save_or_validation_then_resume_loses_no_epoch(cifar_dir, tmp_path, moment,
                                                                    patch, nth):
    run_dir = tmp_path / "run"
    child = _cli_with(patch, "train", "--config", "smoke", "--data-dir", cifar_dir, "--run-dir",
                      run_dir, "--epochs", "3")
    _kill_at(child, moment, nth)  # in epoch 2: epoch 1 is saved, epoch 2 is not
    folder = run_dir / "checkpoints"
    state = json.load(open(folder / "state.json"))
    assert state["step"] == 8, state  # the last finished epoch, never a half-written one
    result = run_cli("train", "--resume", run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(run_dir / "metrics.json"))
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert not [f for f in os.listdir(folder) if "partial" in f]
    keras.saving.load_model(run_dir / "model.keras")
    scalars, _, _ = read_events(str(run_dir / "tensorboard" / "train"))
    assert max(scalars["learning_rate"]) == 24


def test_export_killed_halfway_leaves_no_model_and_a_rerun_works(trained_run, tmp_path):
    out = tmp_path / "exported"
    child = _cli_with(EXPORT, "export", trained_run, "--out", out, "--formats",
                      "saved_model,tflite")
    _kill_at(child, "converting")
    assert not (out / "smoke").exists()  # the staging folder is never renamed half-done
    assert [n for n in os.listdir(out) if n.startswith(".smoke")]  # only hidden leftovers
    result = run_cli("export", trained_run, "--out", out, "--formats", "saved_model,tflite")
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.listdir(out) == ["smoke"]  # the leftover staging folder was cleaned up
    assert (out / "smoke" / "model_fp32.tflite").is_file()
