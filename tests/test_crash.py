"""SIGKILL at the worst moments: during a checkpoint save, during validation, mid-export.

The CLI runs in a subprocess whose library calls are wrapped (test-side, no hooks in the
library) to announce the moment on stdout and linger in it, so the kill lands there.
"""

import json
import os
import sys

import keras
import pytest

from cmxl_keras import checkpoints, runs
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
from cmxl_keras import tflite
_convert = tflite.convert_tflite
def convert_tflite(*a, **k):
    print("MARK converting", flush=True)
    time.sleep(3)
    return _convert(*a, **k)
tflite.convert_tflite = convert_tflite
"""


# Every atomic write of the library goes through runs.atomic_path: this wrapper logs each
# one (the file's path in the run folder) and, at the KILL_AT-th, SIGKILLs the process with
# the new bytes on disk in the temporary file, before the rename that would publish them.
# A kill there leaves the folder as it was after the write before, plus a stray temporary
# file: the kills at writes 1..N cover every moment of a run.
KILL_AT_WRITE = """
import contextlib, os, signal
from cmxl_keras import runs
_atomic, _count = runs.atomic_path, [0]
@contextlib.contextmanager
def atomic_path(path):
    with _atomic(path) as tmp:
        yield tmp
        _count[0] += 1
        with open(os.environ["WRITE_LOG"], "a") as f:
            f.write(os.path.relpath(path, os.environ["RUN_DIR"]) + "\\n")
        if _count[0] == int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
runs.atomic_path = atomic_path
"""


CLI_MAIN = "\nimport sys\nsys.argv = ['cli.py'] + sys.argv[1:]\nimport cli\ncli.main()\n"


def _cli_with(patch, *args):
    return Child([sys.executable, "-c", patch + CLI_MAIN, *args], env={"PYTHONPATH": ROOT})


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


def h5_arrays(path):
    """Every array of a weights file by its name: the model's weights, BatchNorm
    statistics and the optimizer's state (step count, moments)."""
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return arrays


def assert_same_arrays(got, expected, what):
    assert sorted(got) == sorted(expected), what
    differ = [name for name in expected if not (got[name] == expected[name]).all()]
    assert not differ, (what, differ[:5])


def _killed_at_write(tmp_path, name, kill_at, args, env=None):
    """``cli.py ARGS --run-dir tmp_path/name`` SIGKILLed at its ``kill_at``-th write (0:
    never): (the run folder, the finished process, the writes it made in order)."""
    run_dir = tmp_path / name
    log = {"WRITE_LOG": str(tmp_path / f"{name}.writes"), "RUN_DIR": str(run_dir),
           "KILL_AT": str(kill_at)}
    child = Child([sys.executable, "-c", KILL_AT_WRITE + CLI_MAIN, *args, "--run-dir",
                   run_dir], env=dict(env or {}, **log, PYTHONPATH=ROOT))
    return run_dir, child.wait(600), open(log["WRITE_LOG"]).read().split()


def test_a_kill_at_each_write_in_turn_resumes_with_every_epoch_recorded_once(cifar_dir,
                                                                              tmp_path):
    """Crash safety as storage engines prove it: the same run is killed at its first
    write, then (fresh) at its second, ..., at its last; after each kill, ``--resume``
    with the run's flags finishes it, every epoch recorded exactly once, and the final
    checkpoint is at the last step. A kill before the run's first checkpoint starts the
    run over in its folder (before its config was written too: from the flags given).

    Resumed equals uninterrupted: with ``deterministic = true`` each resumed run ends
    with the uninterrupted run's weights, BatchNorm statistics, optimizer state and
    metrics, bit for bit, whether it was killed mid-epoch (a checkpoint every step) or
    between epochs.

    Each kill lands inside a write, after its temporary file is written and before the
    rename that commits it (the harness wraps ``runs.atomic_path``): the temporary file is
    there after the kill, and gone after the resume. Each resume starts from the step the
    uninterrupted run's write log says was committed last (its checkpoints, one a step, in
    order), so a resume that fell back to an older checkpoint (``good.weights.h5``) or
    started over needlessly fails here, though it would end equal.

    Out of scope, because they do not go through ``runs.atomic_path``: TensorBoard's
    event files (appended by its writer as it goes; a kill may cut the last record
    short), the run folder's ``.lock`` (an ``flock``, which the kernel releases at the
    kill; every resume here takes it again) and ``command.txt``'s line per resume
    (appended)."""
    import concurrent.futures

    flags = ["--config", "smoke", "--data-dir", cifar_dir, "--epochs", "2",
             "--steps-per-epoch", "2", "--limit-train", "64", "--val-from-train", "32",
             "--set", "batch_size=16",
             "--set", "aug=none", "--set", "deterministic=true",
             "--set", "checkpoint_every_steps=1"]

    def run(name, kill_at):
        return _killed_at_write(tmp_path, name, kill_at, ["train", *flags])

    whole_dir, whole, writes = run("whole", 0)
    assert whole.returncode == 0, whole.stderr[-3000:]
    final = h5_arrays(checkpoints.checkpoint_paths(str(whole_dir))["last"])
    whole_metrics = json.load(open(whole_dir / "metrics.json"))
    # The commit point comes first: a finished epoch's checkpoint before its record.
    assert writes.index("checkpoints/last.weights.h5") < writes.index("metrics.json")
    assert len(writes) >= 12, writes

    def partials(run_dir):
        return [os.path.relpath(os.path.join(folder, name), run_dir)
                for folder, _, names in os.walk(run_dir) for name in names
                if runs.TMP_SUFFIX in name]

    def kill_then_resume(k):
        run_dir, killed, done = run(f"kill{k}", k)
        assert killed.returncode == -9, (k, killed.stderr[-2000:])
        assert done[-1] == writes[k - 1], (k, done, writes)  # the same write sequence
        # Killed inside write k: its temporary file written, not yet renamed.
        folder, name = os.path.split(writes[k - 1])
        stem = f".{name.partition('.')[0]}{runs.TMP_SUFFIX}-"
        assert [p for p in partials(run_dir) if os.path.dirname(p) == folder
                and os.path.basename(p).startswith(stem)], (k, writes[k - 1], partials(run_dir))
        # The step it must resume from: the last checkpoint the writes before k committed.
        committed_step = writes[:k - 1].count("checkpoints/last.weights.h5")
        resumed = run_cli("train", "--resume", run_dir, *flags, timeout=600)
        assert resumed.returncode == 0, (k, writes[k - 1], resumed.stderr[-3000:])
        if committed_step:
            assert f"(optimizer step {committed_step})" in resumed.stdout, (
                k, writes[k - 1], committed_step, resumed.stdout[-2000:])
        assert not partials(run_dir), (k, partials(run_dir))
        metrics = json.load(open(run_dir / "metrics.json"))
        assert [m["epoch"] for m in metrics] == [1, 2], (k, writes[k - 1], metrics)
        last = checkpoints.checkpoint_paths(str(run_dir))["last"]
        state = checkpoints.checkpoint_state(last)
        assert state["step"] == 4 and [m["epoch"] for m in state["metrics"]] == [1, 2]
        assert_same_arrays(h5_arrays(last), final, (k, writes[k - 1]))
        timing = ("epoch_seconds", "train_images_per_second")
        assert [{key: v for key, v in m.items() if key not in timing} for m in metrics] == [
            {key: v for key, v in m.items() if key not in timing} for m in whole_metrics]
        assert os.path.exists(run_dir / "results.json") and os.path.exists(
            run_dir / "model.keras")
        return resumed.stdout

    # Two at a time: each kill and resume is a process of its own on one of the two cores
    # (forked from the tests' fork server, tests/forked.py, which gives it what a fresh
    # interpreter has; the SIGKILL is real).
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        outputs = list(pool.map(kill_then_resume, range(1, len(writes) + 1)))
    # Both kinds of resume were among them: mid-epoch (step 1 or 3) and between epochs.
    assert any(", step 1 of 2 (optimizer step" in out for out in outputs)
    assert any(", step 0 of 2 (optimizer step 2)" in out for out in outputs)
    first_checkpoint = writes.index("checkpoints/last.weights.h5") + 1
    for k, out in enumerate(outputs, start=1):
        started_over = "stopped before its first checkpoint" in out
        assert started_over == (k <= first_checkpoint), (k, writes[k - 1], out[-2000:])


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_the_device_pipeline_resumed_mid_epoch_equals_the_run_left_alone(cifar_dir, tmp_path,
                                                                          backend):
    """``pipeline = device`` (every augmentation stage as a layer in front of the model)
    with ``deterministic = true``, killed just after its checkpoint at step 2 of a 3-step
    epoch and resumed: the same weights, BatchNorm statistics, optimizer state and metrics
    as the run left alone, bit for bit. The batches continue from the step (tf.data's
    order on TensorFlow, ``pipeline.ArrayBatches`` under JAX) and so do the stages' draws
    (their generators set to the step), across the edges of epochs and of passes over
    the 64 images (4 batches a pass, 3 steps an epoch)."""
    env = {"KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    args = ["--backend", backend, "train", "--config", "smoke", "--data-dir", cifar_dir,
            "--epochs", "2", "--steps-per-epoch", "3", "--limit-train", "64",
            "--val-from-train", "32", "--set", "batch_size=16", "--set", "pipeline=device",
            "--set", "deterministic=true", "--set", "checkpoint_every_steps=1"]
    whole_dir, whole, writes = _killed_at_write(tmp_path, "whole", 0, args, env)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "(device, Keras layers in front of the model)" in whole.stdout
    saves = [k for k, name in enumerate(writes, 1) if name == "checkpoints/last.weights.h5"]
    run_dir, killed, _ = _killed_at_write(tmp_path, "killed", saves[1] + 1, args, env)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = run_cli("--backend", backend, "train", "--resume", run_dir, env=env,
                      timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at epoch 1, step 2 of 3 (optimizer step 2)" in resumed.stdout
    last = [checkpoints.checkpoint_paths(str(d))["last"] for d in (run_dir, whole_dir)]
    assert checkpoints.checkpoint_state(last[0])["step"] == 6
    assert_same_arrays(h5_arrays(last[0]), h5_arrays(last[1]), "resumed vs left alone")
    timing = ("epoch_seconds", "train_images_per_second")
    assert [{k: v for k, v in m.items() if k not in timing}
            for m in json.load(open(run_dir / "metrics.json"))] == [
        {k: v for k, v in m.items() if k not in timing}
        for m in json.load(open(whole_dir / "metrics.json"))]
