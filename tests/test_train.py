"""Training: a real smoke fit, its run folder and TensorBoard logs, resume and its refusals."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from cmxl_keras import config, train
from cmxl_keras.errors import RunError
from cmxl_keras.schedules import one_cycle_lr
from conftest import ROOT, run_cli


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
    cfg = config.load("smoke").replace(data_dir=cifar_dir, epochs=4, aug="none", lr_max=0.01)
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
    # The run records the config as resolved: "auto" pipeline -> the one that ran.
    saved = config.from_dict(json.load(open(os.path.join(run_dir, "config.json"))))
    assert saved == cfg.replace(pipeline="tf.data")
    split = json.load(open(os.path.join(run_dir, "split.json")))
    assert split["train"] == 256 and split["val"] == 128 and split["seed"] == cfg.seed
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
    saved = config.load("smoke")
    (run_dir / "config.json").write_text(json.dumps(saved.to_dict()))
    (run_dir / "checkpoints" / "state.json").write_text(json.dumps({"step": 3}))
    with pytest.raises(RunError, match="trained with another model .*depth: saved 4, now 6"):
        train.check_resumable(str(run_dir), saved.replace(depth=6, skip_period=0))
    with pytest.raises(RunError, match="batch_size: saved 32, now 64"):
        train.check_resumable(str(run_dir), saved.replace(batch_size=64))
    with pytest.raises(RunError, match="no such run folder"):
        train.check_resumable(str(tmp_path / "missing"), saved)
    assert train.check_resumable(str(run_dir), saved.replace(lr_max=0.001)) == {"step": 3}


def _train_process(*args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "cli.py"), "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT)


def _wait_for_step(run_dir, min_step, proc, timeout=300):
    state = os.path.join(run_dir, "checkpoints", "state.json")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(state):
            try:
                if json.load(open(state))["step"] >= min_step:
                    return
            except (ValueError, KeyError):
                pass  # never happens with atomic writes; tolerate and retry
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"step {min_step} not reached in {timeout} s")


@pytest.mark.slow
def test_sigkill_then_resume_finishes_every_epoch_and_continues_the_schedule(cifar_dir, tmp_path):
    run_dir = str(tmp_path / "run")
    args = ["--config", "smoke", "--data-dir", cifar_dir, "--run-dir", run_dir,
            "--epochs", "3", "--set", "checkpoint_every_steps=2"]
    proc = _train_process(*args)
    _wait_for_step(run_dir, 10, proc)  # mid epoch 2 (8 steps per epoch)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    state = json.load(open(os.path.join(run_dir, "checkpoints", "state.json")))
    assert state["epoch"] >= 1 and not os.path.exists(os.path.join(run_dir, "results.json"))
    result = run_cli("train", "--resume", run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stdout
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["step"] == 24
    leftovers = [f for f in os.listdir(os.path.join(run_dir, "checkpoints")) if "partial" in f]
    assert not leftovers
    scalars, _, _ = read_events(os.path.join(run_dir, "tensorboard", "train"))
    lr = scalars["learning_rate"]
    assert max(lr) == 24 and min(lr) <= state["step"] + 1
    for step, value in lr.items():  # before and after the kill: one cycle, not restarted
        assert value == pytest.approx(one_cycle_lr(step, 8, 3, 0.005), rel=1e-5, abs=1e-9)
    keras.saving.load_model(os.path.join(run_dir, "model.keras"))


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly_then_nan_keeps_the_last_good_checkpoint(cifar_dir,
                                                                                 tmp_path):
    run_dir = str(tmp_path / "run")
    proc = _train_process("--config", "smoke", "--data-dir", cifar_dir, "--run-dir", run_dir,
                          "--epochs", "2", "--set", "checkpoint_every_steps=1")
    _wait_for_step(run_dir, 10, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "stopped by SIGTERM" in err and f"--resume {run_dir}" in err
    assert "Traceback" not in err
    assert json.load(open(os.path.join(run_dir, "checkpoints", "state.json")))["step"] >= 10
    # Resume with a learning rate that blows up: a clear error, the checkpoint survives.
    before = json.load(open(os.path.join(run_dir, "checkpoints", "state.json")))
    result = run_cli("train", "--resume", run_dir, "--set", "lr_max=1e8")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "training diverged" in result.stderr and "lr_max=" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.load(open(os.path.join(run_dir, "checkpoints", "state.json"))) == before
    # ... and resuming with a sane learning rate finishes the run.
    result = run_cli("train", "--resume", run_dir, "--set", "lr_max=0.005")
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
    cfg = config.load("smoke").replace(data_dir=cifar_dir, epochs=2, aug="none")
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
    model = train.compile_model(train.build_model(cfg), cfg, 8)
    model.optimizer.build(model.trainable_variables)
    model.load_weights(os.path.join(folder, "last.weights.h5"))
    assert int(model.optimizer.iterations.numpy()) == 8
