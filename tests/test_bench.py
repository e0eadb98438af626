"""The scripts' child-process runner (``cmxl_keras/children.py``) and the benchmarks'
time-to-accuracy arithmetic (bench/ itself is run by hand, not by CI; these are the parts
of it that decide what a run reports)."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench_tta  # noqa: E402
from cmxl_keras.children import run_or_exit  # noqa: E402


def test_run_or_exit_returns_the_finished_process():
    out = run_or_exit([sys.executable, "-c", "print('fine')"], timeout=60)
    assert out.stdout.strip() == "fine"


HUNG = ("import sys, time; print('epoch 3 of 5', flush=True); "
        "sys.stderr.write('still working\\n'); sys.stderr.flush(); time.sleep(60)")
FAILED = "import sys; print('loading data'); sys.exit('no such folder: data/x')"


@pytest.mark.parametrize("code, timeout, expected", [
    (HUNG, 10, ["train seed 7 ran past --timeout 10 s", "epoch 3 of 5", "still working"]),
    (FAILED, 60, ["train seed 7 failed (exit 1)", "loading data", "no such folder: data/x"]),
], ids=["hung", "failed"])
def test_a_hung_or_failed_child_exits_with_its_last_output(code, timeout, expected):
    with pytest.raises(SystemExit) as error:
        run_or_exit([sys.executable, "-c", code], timeout, label="train seed 7")
    for text in expected:
        assert text in str(error.value)


def test_minutes_to_target_counts_training_time_up_to_the_first_epoch_at_target():
    epochs = [{"epoch_seconds": 120.0, "val_accuracy": 0.5},
              {"epoch_seconds": 90.0, "val_accuracy": 0.76},
              {"epoch_seconds": 90.0, "val_accuracy": 0.74},
              {"epoch_seconds": 90.0, "val_accuracy": 0.80}]
    assert bench_tta.minutes_to(epochs, 0.75) == pytest.approx(3.5)
    assert bench_tta.minutes_to(epochs, 0.80) == pytest.approx(6.5)
    assert bench_tta.minutes_to(epochs, 0.81) is None


def test_without_a_label_the_failure_names_the_command_line():
    with pytest.raises(SystemExit) as error:
        run_or_exit([sys.executable, "-c", FAILED], timeout=60)
    assert f"{sys.executable} -c {FAILED} failed (exit 1)" in str(error.value)


@pytest.mark.parametrize("arch", [
    dict(width=16, depth=2, patch_size=2, kernel_size=3, activation="gelu", skip_period=0),
    dict(width=16, depth=4, patch_size=2, kernel_size=3, activation="silu", skip_period=2),
], ids=["vanilla", "xl"])
def test_convs_only_strips_the_same_layers_from_ours_and_the_reference(arch):
    # --convs-only bounds what a faster activation or BatchNorm could gain; it is a fair
    # bound only if both frameworks lose exactly those layers and keep everything else.
    import keras
    import numpy as np
    import torch

    import bench_forms
    from reproduce import ref_torch

    full = ref_torch.build(**arch)
    stripped = ref_torch.convs_only(ref_torch.build(**arch))
    kinds = {type(m).__name__ for m in stripped.modules()}
    assert not kinds & {"BatchNorm2d", "GELU", "SiLU"} and "Conv2d" in kinds
    bn_params = sum(p.numel() for m in full.modules() if isinstance(m, torch.nn.BatchNorm2d)
                    for p in m.parameters())
    torch_params = sum(p.numel() for p in stripped.parameters())
    assert bn_params > 0 and torch_params == sum(p.numel() for p in full.parameters()) - bn_params

    _, model = bench_forms.keras_model(arch, batch=4, convs_only=True)
    kept = {type(layer).__name__ for layer in model.layers}
    assert not kept & {"BatchNormalization", "Activation", "ReLU", "LeakyReLU"}
    assert {"Conv2D", "DepthwiseConv2D", "Add"} <= kept
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == torch_params
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    logits = keras.ops.convert_to_numpy(model(x, training=True))
    assert logits.shape == (2, 10) and np.isfinite(logits).all()


DEVICE_STEP = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import bench_forms

arch = dict(width=16, depth=2, patch_size=4, kernel_size=3, activation="gelu", skip_period=0)
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (8, 32, 32, 3)).astype("float32")
y = rng.integers(0, 10, 8).astype("int32")
device = bench_forms.KerasDevice(arch, 8, x, y)
start = device.model.get_weights()
device.train(2)  # the first call builds (one ordinary step), then two device steps
plain = bench_forms.Keras(arch, 8, x, y)
plain.model.set_weights(start)
for _ in range(3):
    plain.model.train_on_batch(x, y)
# The same compiled step on the same inputs: the same weights, bit for bit (the
# one-cycle's first learning rates move them by about 1e-7: a step more or less shows).
first = {id(v): w for v, w in zip(plain.model.weights, start)}
for got, want in zip(device.state[0], plain.model.trainable_weights):
    assert np.any(np.asarray(want.value) != first[id(want)])
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want.value))
print("SAME")
"""


def test_the_device_form_runs_keras_own_training_step():
    """``keras-jax-device`` (ours from device arrays) must time the step that ``fit``
    runs, not another: from the same weights, its steps end where the same number of
    ``train_on_batch`` steps do (and the weights moved)."""
    from conftest import ROOT, run_process

    result = run_process([sys.executable, "-c", DEVICE_STEP, os.path.join(ROOT, "bench")],
                         timeout=300, env={"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0 and "SAME" in result.stdout, result.stderr[-3000:]
