"""Training on another Keras backend: JAX, with the data as numpy arrays and the
augmentation as Keras layers on the device; the model it saves serves under TensorFlow."""

import json
import os
import sys

import pytest

from conftest import ROOT, run_cli, run_process

JAX = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}

# `cli.py` counting the times Keras copies the compiled step's state back into the model's
# variables (``jax_state_sync`` with the state out of date): what reading ``self.model``
# in a callback costs under JAX, at every step if a per-step callback does it.
COUNT_SYNCS = """
import atexit, sys
from keras.src.backend.jax import trainer
_sync, syncs = trainer.JAXTrainer.jax_state_sync, [0]
def jax_state_sync(self):
    syncs[0] += bool(getattr(self, "_jax_state", None) and not self._jax_state_synced)
    return _sync(self)
trainer.JAXTrainer.jax_state_sync = jax_state_sync
atexit.register(lambda: print("SYNCS", syncs[0], flush=True))
sys.argv = ["cli.py"] + sys.argv[1:]
import cli
cli.main()
"""


def _json(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.slow
def test_jax_backend_trains_resumes_and_its_model_evaluates_under_tensorflow(cifar_dir,
                                                                            tmp_path):
    run_dir = str(tmp_path / "run")
    first = run_process([sys.executable, "-c", COUNT_SYNCS, "--backend", "jax", "train",
                         "--config", "smoke", "--data-dir", cifar_dir, "--run-dir", run_dir,
                         "--epochs", "2", "--steps-per-epoch", "8", "--precision",
                         "mixed_float16"], env=dict(JAX, PYTHONPATH=ROOT), timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    # The per-step callbacks (learning rate and step logs, step checkpoints) never read
    # the model: the state is copied back at epoch ends only (measured 4, two at each),
    # not at each of the 16 steps.
    syncs = int(first.stdout.split("SYNCS ")[-1])
    assert syncs < 8, first.stdout[-2000:]
    assert "(device, Keras layers in front of the model)" in first.stdout
    assert "compiled step (jit_compile)" in first.stdout
    env = _json(os.path.join(run_dir, "env.json"))
    assert "jax" in json.dumps(env)
    config = _json(os.path.join(run_dir, "config.json"))
    assert config["pipeline"] == "device"
    for name in ("model.keras", "checkpoints/best.keras", "checkpoints/last.weights.h5",
                 "augmentations.png", "metrics.json"):
        assert os.path.exists(os.path.join(run_dir, name)), name

    # The one-cycle and the checkpoints behave as on TensorFlow: resume to a third epoch
    # (a longer run than planned: --replan accepts the new schedule).
    again = run_cli("--backend", "jax", "train", "--resume", run_dir, "--epochs", "3",
                    "--replan", env=JAX, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    metrics = _json(os.path.join(run_dir, "metrics.json"))
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert _json(os.path.join(run_dir, "checkpoints", "state.json"))["step"] == 3 * 8

    # Trained under JAX, evaluated under TensorFlow: the same validation accuracy.
    result = run_cli("evaluate", os.path.join(run_dir, "model.keras"), "--out",
                     str(tmp_path / "eval"), env={"KERAS_BACKEND": "tensorflow"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = _json(os.path.join(str(tmp_path / "eval"), "eval_val.json"))
    assert abs(evaluated["top1"] - metrics[-1]["val_accuracy"]) <= 1 / 128 + 1e-9, (
        evaluated, metrics[-1])


def test_resume_with_another_pipeline_is_refused(cifar_dir, tmp_path):
    run_dir = str(tmp_path / "run")
    first = run_cli("train", "--config", "smoke", "--data-dir", cifar_dir, "--run-dir", run_dir,
                    "--epochs", "1", "--steps-per-epoch", "1", "--set", "aug=none")
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_cli("train", "--resume", run_dir, "--set", "pipeline=device")
    assert again.returncode == 2
    assert "pipeline: saved 'tf.data', now 'device'" in again.stderr
