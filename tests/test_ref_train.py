"""The reference's training loop as a resumable run (``python -m reproduce reference-loop``): a run
stopped after any epoch and resumed ends exactly as the run left alone, and its last
weights, converted into our Keras model, give the reference network's own outputs and
its own validation score through ``cli.py evaluate``."""

import json
import os
import sys

import numpy as np
import pytest

from conftest import REPRODUCE, ROOT, run_cli, run_process

pytestmark = pytest.mark.slow

# A small ConvMixer on 250 images (3 full batches of 64 and a partial one of 58, which
# the reference trains), 3 epochs, with the paper's augmentation and two DataLoader
# workers, whose seeds come from torch's random state at each epoch's start.
SETTINGS = ["width=16", "depth=2", "patch_size=4", "kernel_size=3", "epochs=3",
            "batch_size=64", "limit_train=250", "lr_max=0.01", "seed=1205"]
# Torch and Keras in one process: Keras on JAX, as on the GPU host (no TensorFlow there).
ENV = {"KERAS_BACKEND": "jax", "CUDA_VISIBLE_DEVICES": ""}


def _ref_train(cifar_dir, run_dir, *extra):
    command = REPRODUCE + ["reference-loop", "--data-dir", cifar_dir, "--run-dir", run_dir,
                           "--val-from-train", "200", "--workers", "2", "--device", "cpu"]
    for setting in SETTINGS:
        command += ["--set", setting]
    return run_process(command + list(extra), timeout=600, env=ENV)  # extra: later, it wins


@pytest.fixture(scope="module")
def left_alone(cifar_dir, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("ref") / "alone")
    result = _ref_train(cifar_dir, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def _weights(run_dir):
    import torch

    state = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)
    return state["model"], state["optimizer"]["state"], state["epoch"]


def _records(run_dir):
    with open(os.path.join(run_dir, "metrics.json")) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in json.load(f)]


def test_a_run_stopped_after_each_epoch_ends_as_the_run_left_alone(left_alone, cifar_dir,
                                                                   tmp_path):
    run_dir = str(tmp_path / "stopped")
    for epoch in (1, 2):
        result = _ref_train(cifar_dir, run_dir, "--stop-after", "1")
        assert result.returncode == 7, result.stderr[-3000:]
        assert f"stopped after epoch {epoch} of 3" in result.stdout
        assert _weights(run_dir)[2] == epoch
        assert not os.path.exists(os.path.join(run_dir, "model.keras"))
    result = _ref_train(cifar_dir, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed" in result.stdout and "after epoch 2 of 3" in result.stdout
    model, moments, epochs = _weights(run_dir)
    expected_model, expected_moments, _ = _weights(left_alone)
    assert epochs == 3 and model.keys() == expected_model.keys()
    for name in model:
        assert np.array_equal(model[name].numpy(), expected_model[name].numpy()), name
    for index in moments:
        for key in ("exp_avg", "exp_avg_sq"):
            assert np.array_equal(moments[index][key].numpy(),
                                  expected_moments[index][key].numpy())
    assert _records(run_dir) == _records(left_alone)
    # The control: another seed is another run, so equality above is not a given.
    other = str(tmp_path / "other")
    result = _ref_train(cifar_dir, other, "--set", "seed=1206")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _records(other) != _records(left_alone)


def test_the_converted_model_is_the_reference_network(left_alone, cifar_dir, tmp_path):
    """model.keras gives the reference network's eval-mode logits on the validation
    images, and ``cli.py evaluate`` scores it as the reference scored its last epoch."""
    script = f"""
import json, os, sys
import numpy as np, torch
sys.path.insert(0, {ROOT!r})
import keras
from reproduce import ref_torch
from cmxl_keras import settings, splitting
run = {left_alone!r}
cfg = settings.load_saved(run)
val = splitting.load_splits(cfg, log=lambda m: None).val
net = ref_torch.build(16, 2, 4, 3, 10, "gelu", 0, normalize=True)
net.load_state_dict(torch.load(os.path.join(run, "checkpoint.pt"), weights_only=False)["model"])
with torch.no_grad():
    theirs = net.eval()(torch.from_numpy(val.images.transpose(0, 3, 1, 2).astype(np.float32))).numpy()
ours = np.asarray(keras.saving.load_model(os.path.join(run, "model.keras"))(val.images.astype(np.float32)))
print(json.dumps({{"relative": float(np.abs(ours - theirs).max() / np.abs(theirs).max()),
                  "top1": float((theirs.argmax(-1) == val.labels).mean())}}))
"""
    result = run_process([sys.executable, "-c", script], timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    compared = json.loads(result.stdout.strip().splitlines()[-1])
    assert compared["relative"] < 1e-4
    last = _records(left_alone)[-1]["val_accuracy"]
    assert abs(compared["top1"] - last) < 1e-9  # the reference's own figure, recomputed
    evaluated = run_cli("evaluate", os.path.join(left_alone, "model.keras"), "--out",
                        tmp_path / "eval", "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert abs(json.loads(evaluated.stdout)["top1"] - last) <= 1 / 200 + 1e-9
