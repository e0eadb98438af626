"""Training: a real smoke fit, its run folder and TensorBoard logs, resume and its refusals."""

import json
import os
import signal
import sys

import keras
import numpy as np
import pytest

from cmxl_keras import checkpoints, config, recipe, runs, settings, train
from cmxl_keras.errors import RunError
from cmxl_keras.schedules import one_cycle_lr
from conftest import ROOT, Child, run_cli, run_process


def read_events(folder):
    """Scalars (tag -> {step: value}), image tags and plugin tags of one TensorBoard folder."""
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(folder, size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    scalars = {}
    for tag in acc.Tags()["tensors"]:
        events = acc.Tensors(tag)
        if events and events[0].tensor_proto.dtype in (1, 2) and not events[0].tensor_proto.tensor_shape.dim:
            scalars[tag] = {e.step: float(np.asarray(
                __import__("tensorflow").make_ndarray(e.tensor_proto))) for e in events}
    try:
        hparams = acc.PluginTagToContent("hparams")
    except KeyError:
        hparams = {}
    return scalars, acc.Tags()["tensors"], hparams


@pytest.fixture(scope="module")
def smoke_run(cifar_dir, tmp_path_factory):
    cfg = settings.load("smoke").replace(data_dir=cifar_dir, epochs=4, aug="none", lr_max=0.01)
    runs_dir = str(tmp_path_factory.mktemp("runs"))
    logs = []
    out = train.train(cfg, runs_dir=runs_dir, argv=["test"], log=logs.append, verbose=0)
    return cfg, out["run_dir"], logs


@pytest.mark.slow
def test_smoke_fit_lowers_the_loss_and_fills_the_run_folder(smoke_run):
    cfg, run_dir, logs = smoke_run
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.05
    for name in ("config.toml", "config.json", "command.txt", "env.json", "split.json",
                 "results.json", "model.keras", "augmentations.png",
                 "checkpoints/last.weights.h5", "checkpoints/best.keras",
                 "checkpoints/state.json"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    env = json.load(open(os.path.join(run_dir, "env.json")))
    assert env["packages"]["keras"] == keras.__version__ and "git_commit" in env
    # The run records the config as resolved: "auto" pipeline and precision -> what ran.
    saved = config.from_dict(json.load(open(os.path.join(run_dir, "config.json"))))
    assert saved == cfg.replace(pipeline="tf.data", precision="float32")
    split = json.load(open(os.path.join(run_dir, "split.json")))
    assert split["train"] == 256 and split["val"] == 128 and split["split_seed"] == cfg.split_seed
    assert len([line for line in logs if line.startswith("epoch ")]) == 4
    # The final model is uncompiled, built-in layers only, and gives the best/last outputs.
    model = keras.saving.load_model(os.path.join(run_dir, "model.keras"))
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    assert model(images).shape == (4, 10)
    results = json.load(open(os.path.join(run_dir, "results.json")))
    assert results["epochs"] == 4
    assert results["best_val_accuracy"] == max(m["val_accuracy"] for m in metrics)


@pytest.mark.slow
def test_tensorboard_logs_hold_the_scalars_images_and_hparams(smoke_run):
    cfg, run_dir, _ = smoke_run
    tb = os.path.join(run_dir, "tensorboard")
    train_scalars, train_tags, _ = read_events(os.path.join(tb, "train"))
    val_scalars, _, _ = read_events(os.path.join(tb, "validation"))
    for tag in ("epoch_loss", "epoch_accuracy", "epoch_top5", "images_per_second",
                "epoch_seconds"):
        assert len(train_scalars[tag]) == 4, tag
    for tag in ("epoch_loss", "epoch_accuracy", "epoch_top5"):
        assert len(val_scalars[tag]) == 4, tag
    assert "augmentations" in train_tags
    lr = train_scalars["learning_rate"]
    assert sorted(lr) == list(range(1, 4 * 8 + 1))  # every step of 4 epochs x 8 steps
    for step, value in lr.items():
        assert value == pytest.approx(one_cycle_lr(step, 8, 4, cfg.lr_max), rel=1e-5, abs=1e-9)
    _, _, hparams = read_events(tb)
    assert hparams, "no HParams summary in the run's log folder"


def test_resume_with_another_model_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    saved = settings.load("smoke").replace(precision="float32")
    (run_dir / "config.json").write_text(json.dumps(saved.to_dict()))
    (run_dir / "checkpoints" / "state.json").write_text(json.dumps({"step": 3}))
    with pytest.raises(RunError, match="trained with another model .*depth: saved 4, now 6"):
        train.check_resumable(str(run_dir), saved.replace(depth=6, skip_period=0))
    with pytest.raises(RunError, match="batch_size: saved 32, now 64"):
        train.check_resumable(str(run_dir), saved.replace(batch_size=64))
    with pytest.raises(RunError, match="no such run folder"):
        train.check_resumable(str(tmp_path / "missing"), saved)
    # The schedule's plan: refused unless the user asks to re-plan it.
    for change in (dict(epochs=7), dict(lr_max=0.001)):
        with pytest.raises(RunError, match="--replan"):
            train.check_resumable(str(run_dir), saved.replace(**change))
        resumed = train.check_resumable(str(run_dir), saved.replace(**change), replan=True)
        assert resumed.depth == saved.depth  # accepted: the saved config comes back
    # Another precision would load another optimizer state (loss scaling).
    with pytest.raises(RunError, match="precision: saved 'float32', now 'mixed_float16'"):
        train.check_resumable(str(run_dir), saved.replace(precision="mixed_float16"))


def _train_process(*args):
    return Child([sys.executable, os.path.join(ROOT, "cli.py"), "train", *args])


def _wait_for_step(run_dir, min_step, child, timeout=300):
    state = os.path.join(run_dir, "checkpoints", "state.json")

    def reached():
        # state.json is written atomically: it is absent or whole
        return os.path.exists(state) and json.load(open(state))["step"] >= min_step

    child.wait_until(reached, timeout, f"a checkpoint at step {min_step}")


# mixed_float16 with a loss scale that overflows float16 and doubles after every good
# step: about every other step is skipped for non-finite gradients, mid-epoch.
SKIPPING = ["--precision", "mixed_float16", "--set", "loss_scale=1048576", "--set",
            "loss_scale_growth_steps=1"]


@pytest.mark.slow
def test_sigkill_then_resume_under_mixed_precision_equals_the_run_left_alone(cifar_dir,
                                                                            tmp_path):
    """SIGKILL in mid-epoch 2 of a mixed_float16 run whose loss scale overflows (steps
    skipped mid-epoch), then ``--resume``: every epoch once, the one-cycle schedule
    continued, and with ``deterministic = true`` the same weights, optimizer state (loss
    scale included) and metrics, bit for bit, as the same run left alone, with every
    augmentation stage on (the smoke config's: drawn from the seed and the step). (float32
    kills at every write: tests/test_crash.py.)"""
    from test_crash import assert_same_arrays, h5_arrays

    args = ["--config", "smoke", "--data-dir", cifar_dir, "--epochs", "3", "--set",
            "checkpoint_every_steps=2", "--set", "deterministic=true", *SKIPPING]
    run_dir, alone = str(tmp_path / "run"), str(tmp_path / "alone")
    child = _train_process(*args, "--run-dir", run_dir)
    _wait_for_step(run_dir, 10, child)  # mid epoch 2 (8 steps per epoch)
    child.kill()
    state = json.load(open(os.path.join(run_dir, "checkpoints", "state.json")))
    assert state["epoch"] >= 1 and not os.path.exists(os.path.join(run_dir, "results.json"))
    # The newest whole checkpoint on disk after the kill: the resume must start there.
    newest = checkpoints.checkpoint_state(checkpoints.checkpoint_paths(run_dir)["last"])
    assert newest["step"] >= 10 and newest["step"] % 2 == 0, newest["step"]
    result = run_cli("train", "--resume", run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"(optimizer step {newest['step']})" in result.stdout, result.stdout[-2000:]
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["step"] == 24
    leftovers = [name for _, _, names in os.walk(run_dir) for name in names
                 if runs.TMP_SUFFIX in name]
    assert not leftovers
    scalars, _, _ = read_events(os.path.join(run_dir, "tensorboard", "train"))
    lr = scalars["learning_rate"]
    assert max(lr) == 24 and min(lr) <= state["step"] + 1
    for step, value in lr.items():  # before and after the kill: one cycle, not restarted
        assert value == pytest.approx(one_cycle_lr(step, 8, 3, 0.005), rel=1e-5, abs=1e-9)
    keras.saving.load_model(os.path.join(run_dir, "model.keras"))
    # steps were skipped in mid-epoch, and every one of them counted
    scale = scalars["loss_scale"]
    halved = [s for s in sorted(scale) if s - 1 in scale and scale[s] < scale[s - 1]]
    assert len(halved) >= 5 and [s for s in halved if s % 8], halved
    assert all(np.isfinite(m["loss"]) for m in metrics)

    result = run_cli("train", *args, "--run-dir", alone)
    assert result.returncode == 0, result.stderr[-3000:]
    last = [checkpoints.checkpoint_paths(d)["last"] for d in (run_dir, alone)]
    assert_same_arrays(h5_arrays(last[0]), h5_arrays(last[1]), "resumed vs left alone")
    timing = ("epoch_seconds", "train_images_per_second")
    assert [{k: v for k, v in m.items() if k not in timing} for m in metrics] == [
        {k: v for k, v in m.items() if k not in timing}
        for m in json.load(open(os.path.join(alone, "metrics.json")))]


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly_then_nan_keeps_the_last_good_checkpoint(cifar_dir,
                                                                                 tmp_path):
    run_dir = str(tmp_path / "run")
    child = _train_process("--config", "smoke", "--data-dir", cifar_dir, "--run-dir", run_dir,
                           "--epochs", "2", "--set", "checkpoint_every_steps=1")
    _wait_for_step(run_dir, 10, child)
    child.proc.send_signal(signal.SIGTERM)
    err = child.wait(timeout=120).stderr
    assert child.proc.returncode == 130, err[-3000:]
    assert "stopped by SIGTERM" in err and f"--resume {run_dir}" in err
    assert "Traceback" not in err
    assert json.load(open(os.path.join(run_dir, "checkpoints", "state.json")))["step"] >= 10
    # Resume with a learning rate that blows up: a clear error, the checkpoint survives.
    before = json.load(open(os.path.join(run_dir, "checkpoints", "state.json")))
    result = run_cli("train", "--resume", run_dir, "--set", "lr_max=1e8", "--replan")
    assert result.returncode == 4, result.stderr[-3000:]  # diverged
    assert "training diverged" in result.stderr and "lr_max=" in result.stderr
    assert "--replan" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.load(open(os.path.join(run_dir, "checkpoints", "state.json"))) == before
    # ... and resuming with a sane learning rate finishes the run.
    result = run_cli("train", "--resume", run_dir, "--set", "lr_max=0.005", "--replan")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(np.isfinite(m["loss"]) for m in metrics)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["cifar-10-batches-bin", "cifar-10-batches-py", "images"])
def test_cli_trains_from_every_on_disk_layout(cifar_dir, tmp_path, layout):
    result = run_cli("train", "--config", "smoke", "--data-dir", os.path.join(cifar_dir, layout),
                     "--run-dir", tmp_path / "run", "--epochs", "1", "--steps-per-epoch", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    split = json.load(open(tmp_path / "run" / "split.json"))
    name = {"cifar-10-batches-bin": "CIFAR-10 binary", "cifar-10-batches-py": "CIFAR-10 python",
            "images": "image folder"}[layout]
    assert split["source"].startswith(name) and split["train"] == 256
    assert f"data: {name}" in result.stdout


@pytest.mark.slow
def test_disk_full_is_reported_and_the_previous_checkpoint_survives(cifar_dir, tmp_path,
                                                                     monkeypatch):
    import errno

    calls = {"n": 0}
    original = keras.Model.save_weights

    def failing_after_first(self, filepath, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:  # the first epoch's checkpoint is written, the second's is not
            with open(filepath, "wb") as f:
                f.write(b"half a file")  # the write gets partway, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", failing_after_first)
    cfg = settings.load("smoke").replace(data_dir=cifar_dir, epochs=2, aug="none")
    run_dir = str(tmp_path / "run")
    with pytest.raises(RunError) as info:
        train.train(cfg, run_dir=run_dir, argv=["test"], log=lambda m: None, verbose=0)
    message = str(info.value)
    assert "No space left on device" in message and "The previous checkpoint is intact" in message
    assert f"--resume {run_dir}" in message
    folder = os.path.join(run_dir, "checkpoints")
    assert json.load(open(os.path.join(folder, "state.json")))["step"] == 8  # epoch 1
    assert not [f for f in os.listdir(folder) if "partial" in f]
    monkeypatch.setattr(keras.Model, "save_weights", original)
    model = recipe.compile_model(recipe.build_model(cfg), cfg, 8)
    model.load_weights(os.path.join(folder, "last.weights.h5"))
    assert int(model.optimizer.iterations.numpy()) == 8


COUNTING = """
import json, sys
import numpy as np, keras
from cmxl_keras import recipe, settings
from cmxl_keras.optimizers import CountingLossScaleOptimizer
keras.mixed_precision.set_global_policy("mixed_float16")
cfg = settings.load("smoke").replace(aug="none", epochs=2, loss_scale=2.0 ** 20,
                                     loss_scale_growth_steps=1)
model = recipe.compile_model(recipe.build_model(cfg), cfg, 8)
if sys.argv[1] == "keras":  # the control: Keras' own loss scaling
    keras_own = keras.optimizers.LossScaleOptimizer(
        model.optimizer.inner_optimizer, initial_scale=2.0 ** 20, dynamic_growth_steps=1)
    model.compile(optimizer=keras_own, loss=model.loss, jit_compile=model.jit_compile)
seen = []


class Record(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer  # self.model: synced with JAX's state first
        seen.append([int(optimizer.iterations), float(optimizer.learning_rate)])


record = Record()
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (256, 32, 32, 3)).astype("float32")
y = rng.integers(0, 10, 256)
model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[record])
scale = float(keras.ops.convert_to_numpy(model.optimizer.dynamic_scale))
print("RESULT " + json.dumps({"seen": seen, "scale": scale,
                              "counting": isinstance(model.optimizer, CountingLossScaleOptimizer)}))
"""


def _counting_run(tmp_path, backend, optimizer):
    script = tmp_path / "counting.py"
    script.write_text(COUNTING)
    done = run_process([sys.executable, str(script), optimizer], timeout=600,
                       env={"KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu",
                            "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.split("RESULT ")[-1])


@pytest.mark.parametrize("backend", ["tensorflow", pytest.param("jax", marks=pytest.mark.slow)])
def test_skipped_mixed_precision_steps_still_count(tmp_path, backend):
    """mixed_float16 with a loss scale that overflows: Keras skips about every other
    step. Our optimizer still counts each, so the learning rate of every step is the
    reference's at the true step; Keras' own LossScaleOptimizer (the control) lags."""
    out = _counting_run(tmp_path, backend, "ours")
    assert out["counting"] and len(out["seen"]) == 16
    for step, (iterations, lr) in enumerate(out["seen"]):
        assert iterations == step
        assert lr == pytest.approx(one_cycle_lr(step, 8, 2, 0.005), rel=1e-5, abs=1e-9)
    control = _counting_run(tmp_path, backend, "keras")
    assert not control["counting"]
    assert [i for i, _ in control["seen"]] != list(range(16))  # skipped steps not counted


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_the_paper_augmentation_trains_under_mixed_precision(cifar_dir, tmp_path, precision):
    """What a GPU run does by default (precision auto = mixed_float16), on the CPU: every
    augmentation stage on, finite losses, and an augmentation grid of real images."""
    from PIL import Image

    run_dir = tmp_path / "run"
    result = run_cli("train", "--config", "smoke", "--data-dir", cifar_dir, "--run-dir", run_dir,
                     "--epochs", "1", "--steps-per-epoch", "4", "--precision", precision)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"precision {precision}" in result.stdout
    assert "RandAugment(torchvision, 2 ops, magnitude 12/30)" in result.stdout
    metrics = json.load(open(run_dir / "metrics.json"))
    assert np.isfinite(metrics[0]["loss"]) and np.isfinite(metrics[0]["val_loss"])
    grid = np.asarray(Image.open(run_dir / "augmentations.png"))
    assert grid.std() > 20  # images, not a flat (NaN-cast) grid


def test_a_mixed_precision_checkpoint_holds_each_optimizer_variable_once(tmp_path):
    """Keras' LossScaleOptimizer saves the wrapped optimizer's variables twice (its own
    ``variables`` include them, and the wrapped optimizer saves them too); ours saves
    them once, and reloads both its own checkpoints and ones in Keras' layout."""
    import h5py
    from keras.src.optimizers.base_optimizer import BaseOptimizer

    cfg = settings.load("smoke").replace(precision="mixed_float16", aug="none")
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        def compiled():
            return recipe.compile_model(recipe.build_model(cfg), cfg, steps=8)

        model = compiled()
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (16, 32, 32, 3)).astype("float32")
        y = rng.integers(0, 10, 16).astype("int32")
        for _ in range(3):
            model.train_on_batch(x, y)
        ours, theirs = str(tmp_path / "ours.weights.h5"), str(tmp_path / "keras.weights.h5")
        model.save_weights(ours)
        optimizer = model.optimizer
        own = len(optimizer.variables) - len(optimizer.inner_optimizer.variables)
        with h5py.File(ours) as f:
            assert len(f["optimizer/vars"]) == own == 4
            assert len(f["optimizer/inner_optimizer/vars"]) == len(
                optimizer.inner_optimizer.variables)
        optimizer.save_own_variables = lambda store: BaseOptimizer.save_own_variables(
            optimizer, store)  # Keras' own layout, as checkpoints written before this had
        model.save_weights(theirs)
        with h5py.File(theirs) as f:
            assert len(f["optimizer/vars"]) == len(optimizer.variables)
        assert os.path.getsize(ours) < 0.8 * os.path.getsize(theirs)  # 0.6 for CM-XL
        for path in (ours, theirs):
            again = compiled()
            again.load_weights(path)
            for a, b in zip(optimizer.variables, again.optimizer.variables):
                assert np.array_equal(np.asarray(a), np.asarray(b)), (path, a.path)
    finally:
        keras.mixed_precision.set_global_policy("float32")
