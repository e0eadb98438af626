"""Resume from damaged run folders, and the run-folder lock.

Every file a resume reads (the two checkpoints, state.json, config.json, metrics.json)
is truncated or bit-flipped in turn; the resume must take the newest checkpoint that is
whole, say what it took and what was lost, set the damaged file aside, and never lose a
whole checkpoint. The lock is tested with two real processes.
"""

import json
import os
import shutil
import sys

import h5py
import keras
import pytest

from cmxl_keras import checkpoints, config, inference, recipe, runs, settings, train
from cmxl_keras.errors import DamagedCheckpoint, RunError, RunInUse
from conftest import ROOT, Child, run_cli


def truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def flip_bit(path, offset, bit=0):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def largest_dataset_offset(path):
    """The file offset of the middle of the largest array: a flip there leaves the file
    a valid HDF5 file that loads, with one wrong weight."""
    found = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.append((obj.nbytes, obj.id.get_offset()))
                     if isinstance(obj, h5py.Dataset) and obj.id.get_offset() else None)
    nbytes, offset = max(found)
    return offset + nbytes // 2


def tiny_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_a_sealed_checkpoint_detects_truncation_and_bit_flips(tmp_path):
    model = tiny_model()
    path = str(tmp_path / "last.weights.h5")
    model.save_weights(path)
    assert checkpoints.checkpoint_state(path) is None  # unsealed: no state, not an error
    checkpoints.seal_checkpoint(path, {"step": 5})
    assert checkpoints.checkpoint_state(path) == {"step": 5}
    tiny_model().load_weights(path)  # Keras loads a sealed file like any other
    original = open(path, "rb").read()

    flip_bit(path, largest_dataset_offset(path))
    tiny_model().load_weights(path)  # HDF5 itself does not notice a flipped weight ...
    with pytest.raises(DamagedCheckpoint, match="do not match their digest"):
        checkpoints.checkpoint_state(path)  # ... the digest does
    open(path, "wb").write(original)
    truncate(path)
    with pytest.raises(DamagedCheckpoint, match="last.weights.h5"):
        checkpoints.checkpoint_state(path)
    open(path, "wb").write(b"not a checkpoint")
    with pytest.raises(DamagedCheckpoint):
        checkpoints.checkpoint_state(path)


def test_the_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    folder = str(tmp_path / "run")
    with runs.RunLock(folder, ["python", "cli.py", "train", "--first"]):
        with pytest.raises(RunInUse, match=rf"PID {os.getpid()} .*--first.*kill {os.getpid()}"):
            with runs.RunLock(folder, ["second"]):
                pass
        # --overwrite of a folder in use is refused before anything is removed.
        open(os.path.join(folder, "metrics.json"), "w").write("[]")
        import contextlib

        with contextlib.ExitStack() as held, pytest.raises(RunInUse):
            runs.new_run_dir(None, "x", folder, overwrite=True, held=held)
        assert os.path.exists(os.path.join(folder, "metrics.json"))
    assert not os.path.exists(os.path.join(folder, runs.LOCK_NAME))  # a clean exit: no trace
    with runs.RunLock(folder, ["third"]):  # released on exit
        pass


# ---- damaged run folders ------------------------------------------------------------

@pytest.fixture(scope="module")
def two_epoch_run(cifar_dir, tmp_path_factory):
    """A finished 2-epoch smoke run (8 steps per epoch) whose ``last`` checkpoint is at
    step 16 and whose ``good`` copy is the one of epoch 1 (step 8): the state a run is in
    between two epoch ends. Made for real: the epoch-1 checkpoint is a 1-epoch run's,
    which is then resumed for a second epoch (``--replan``)."""
    base = tmp_path_factory.mktemp("resume")
    run_dir = str(base / "run")
    cfg = settings.load("smoke").replace(data_dir=cifar_dir, epochs=1, aug="none")
    quiet = dict(argv=["test"], log=lambda m: None, verbose=0)
    train.train(cfg, run_dir=run_dir, **quiet)
    epoch1 = str(base / "epoch1.weights.h5")
    shutil.copyfile(checkpoints.checkpoint_paths(run_dir)["last"], epoch1)
    train.train(cfg.replace(epochs=2), resume=run_dir, replan=True, **quiet)
    shutil.copyfile(epoch1, checkpoints.checkpoint_paths(run_dir)["good"])
    assert checkpoints.checkpoint_state(checkpoints.checkpoint_paths(run_dir)["last"])["step"] == 16
    assert checkpoints.checkpoint_state(checkpoints.checkpoint_paths(run_dir)["good"])["step"] == 8
    return cfg.replace(epochs=2), run_dir


@pytest.mark.slow
def test_a_restore_puts_back_every_array_of_the_checkpoint(two_epoch_run, tmp_path):
    """What ``--resume`` restores, checked against the checkpoint's own arrays: the
    restored model, saved again, holds exactly the arrays of ``last`` (every weight,
    BatchNorm statistic and optimizer variable, the step count included), and none of
    them is what a fresh model holds."""
    from test_crash import assert_same_arrays, h5_arrays

    cfg, run_dir = two_epoch_run
    steps = checkpoints.checkpoint_state(checkpoints.checkpoint_paths(run_dir)["last"])["steps_per_epoch"]
    model = recipe.compile_model(recipe.build_model(cfg), cfg, steps)
    fresh = str(tmp_path / "fresh.weights.h5")
    model.save_weights(fresh)
    state = checkpoints.restore(model, run_dir, steps, log=lambda m: None, write=False)
    assert state["step"] == 16
    again = str(tmp_path / "restored.weights.h5")
    model.save_weights(again)
    saved = h5_arrays(checkpoints.checkpoint_paths(run_dir)["last"])
    assert_same_arrays(h5_arrays(again), saved, "restored vs checkpoint")
    assert len(saved) == len(model.weights) + len(model.optimizer.variables)
    before = h5_arrays(fresh)
    changed = [name for name in saved if not (before[name] == saved[name]).all()]
    assert len(changed) >= len(saved) * 0.9, sorted(set(saved) - set(changed))


def _resume_copy(two_epoch_run, tmp_path, damage):
    cfg, template = two_epoch_run
    run_dir = str(tmp_path / "run")
    shutil.copytree(template, run_dir)
    damage(run_dir)
    logs = []
    out = train.train(cfg, resume=run_dir, argv=["test"], log=logs.append, verbose=0)
    return run_dir, "\n".join(logs), out


def _path(run_dir, name):
    return checkpoints.checkpoint_paths(run_dir)[name]


def _damaged(run_dir):
    folder = _path(run_dir, "damaged")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _flip_in_data(run_dir, name):
    path = _path(run_dir, name)
    flip_bit(path, largest_dataset_offset(path))


def _hurt_checkpoint(name, damage):
    """A function that truncates the run's ``name`` checkpoint, or flips a bit inside
    its largest array."""
    if damage == "truncate":
        return lambda run_dir: truncate(_path(run_dir, name))
    return lambda run_dir: _flip_in_data(run_dir, name)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_a_damaged_last_checkpoint_falls_back_to_good(two_epoch_run, tmp_path, damage):
    run_dir, log, out = _resume_copy(two_epoch_run, tmp_path, _hurt_checkpoint("last", damage))
    assert "last.weights.h5 is damaged" in log
    assert "resuming from good.weights.h5 (step 8)" in log
    assert "the 8 steps after it (up to step 16) are trained again" in log
    assert "at epoch 2, step 0" in log
    assert [name.endswith("-last.weights.h5") for name in _damaged(run_dir)] == [True]
    # The lost epoch was trained again: the run is whole and finished.
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[-1]["step"] == 16
    assert checkpoints.checkpoint_state(_path(run_dir, "last"))["step"] == 16
    assert json.load(open(_path(run_dir, "state")))["step"] == 16
    assert out["results"]["epochs"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_a_damaged_good_copy_is_set_aside_and_last_is_used(two_epoch_run, tmp_path, damage):
    run_dir, log, _ = _resume_copy(two_epoch_run, tmp_path, _hurt_checkpoint("good", damage))
    assert "good.weights.h5 is damaged" in log and "at epoch 3, step 0" in log
    assert "trained again" not in log
    assert [name.endswith("-good.weights.h5") for name in _damaged(run_dir)] == [True]
    assert checkpoints.checkpoint_state(_path(run_dir, "good"))["step"] == 16  # made again, whole


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_a_damaged_state_json_is_rebuilt_from_the_checkpoint(two_epoch_run, tmp_path, damage):
    def hurt(run_dir):
        path = _path(run_dir, "state")
        if damage == "truncate":
            truncate(path)
        else:  # "step": 16 -> "step": 14: still valid JSON, with a wrong step
            text = open(path, "rb").read()
            flip_bit(path, text.index(b'"step": 16') + len(b'"step": 1'), bit=1)
    run_dir, log, _ = _resume_copy(two_epoch_run, tmp_path, hurt)
    was = "damaged or missing" if damage == "truncate" else "at step 14"
    assert f"checkpoints/state.json was {was}; rewritten from last.weights.h5 (step 16)" in log
    assert "at epoch 3, step 0" in log
    assert json.load(open(_path(run_dir, "state")))["step"] == 16


@pytest.mark.slow
def test_both_checkpoints_damaged_is_refused_and_nothing_is_moved(two_epoch_run, tmp_path):
    cfg, template = two_epoch_run
    run_dir = str(tmp_path / "run")
    shutil.copytree(template, run_dir)
    truncate(_path(run_dir, "last"))
    _flip_in_data(run_dir, "good")
    with pytest.raises(RunError, match=r"no checkpoint in it loads .*last.weights.h5: .*"
                                       r"good.weights.h5: .*do not match"):
        train.train(cfg, resume=run_dir, argv=["test"], log=lambda m: None, verbose=0)
    assert os.path.exists(_path(run_dir, "last")) and os.path.exists(_path(run_dir, "good"))
    assert _damaged(run_dir) == []


def _hurt_json(path, damage):
    """Truncated, or one bit flipped in its first byte ('{' -> 'z', '[' -> 'Z'). (A flip
    inside a number can leave valid JSON with another value, which no parser can tell;
    the checkpoints, which carry digests, are where that matters.)"""
    if damage == "truncate":
        truncate(path)
    else:
        flip_bit(path, 0)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_a_damaged_config_json_is_read_from_config_toml(two_epoch_run, tmp_path, damage):
    run_dir, log, _ = _resume_copy(two_epoch_run, tmp_path,
                                   lambda d: _hurt_json(os.path.join(d, "config.json"), damage))
    assert "at epoch 3, step 0" in log
    saved = config.from_dict(json.load(open(os.path.join(run_dir, "config.json"))))
    assert saved.depth == 4 and saved.epochs == 2  # rewritten whole


@pytest.mark.slow
def test_both_saved_configs_damaged_is_refused_with_the_fix(two_epoch_run, tmp_path):
    cfg, template = two_epoch_run
    run_dir = str(tmp_path / "run")
    shutil.copytree(template, run_dir)
    truncate(os.path.join(run_dir, "config.json"))
    with open(os.path.join(run_dir, "config.toml"), "a") as f:
        f.write("depth = = 3\n")
    with pytest.raises(RunError, match="saved config cannot be read .*config.json.*"
                                       "config.toml.*Restore config.json or config.toml"):
        train.train(cfg, resume=run_dir, argv=["test"], log=lambda m: None, verbose=0)


@pytest.mark.slow
def test_a_finished_run_with_a_damaged_config_json_loads_with_its_config_toml(two_epoch_run,
                                                                              tmp_path):
    """Export and evaluate load a finished run (its folder, or its model.keras) with the
    saved config as a resume reads it: config.toml where config.json is damaged, and a
    clear refusal where both are."""
    run_dir = str(tmp_path / "run")
    shutil.copytree(two_epoch_run[1], run_dir)
    truncate(os.path.join(run_dir, "config.json"))
    for source in (run_dir, os.path.join(run_dir, "model.keras")):
        _, saved, _ = inference.load_keras(source)
        assert saved.depth == 4 and saved.epochs == 2, source
    with open(os.path.join(run_dir, "config.toml"), "a") as f:
        f.write("depth = = 3\n")
    with pytest.raises(RunError, match="saved config cannot be read"):
        inference.load_keras(run_dir)


@pytest.mark.slow
def test_a_run_resumes_with_its_images_elsewhere_only_if_they_split_the_same(
        two_epoch_run, cifar_dir, tmp_path):
    """Another machine, the images in another folder (``--data-dir`` on ``--resume``):
    the run goes on if they split as its ``split.json`` says; else it is refused with the
    difference and the fix, and nothing in the run folder changes."""
    cfg, template = two_epoch_run
    moved = str(tmp_path / "images-here")
    shutil.copytree(cifar_dir, moved)
    run_dir = str(tmp_path / "run")
    shutil.copytree(template, run_dir)
    split_path = os.path.join(run_dir, "split.json")
    kept = open(split_path).read()
    split = json.loads(kept)
    split["train_indices_sha256"] = "0" * 16  # as if the images there drew another split
    runs.write_json(split_path, split)
    before = {name: os.path.getmtime(os.path.join(run_dir, name)) for name in os.listdir(run_dir)}
    with pytest.raises(RunError, match="do not split as those the run trained on did "
                                       "\\(train_indices_sha256: saved '0000000000000000', "
                                       "now '[0-9a-f]{16}'\\)\\. Point --data-dir at the same"):
        train.train(cfg.replace(data_dir=moved), resume=run_dir, argv=["test"],
                    log=lambda m: None, verbose=0)
    after = {name: os.path.getmtime(os.path.join(run_dir, name)) for name in os.listdir(run_dir)}
    assert after == before
    with open(split_path, "w") as f:
        f.write(kept[:len(kept) // 2])  # damaged: refused as unreadable, no traceback
    with pytest.raises(RunError, match="the run has no readable split.json"):
        train.train(cfg.replace(data_dir=moved), resume=run_dir, argv=["test"],
                    log=lambda m: None, verbose=0)
    with open(split_path, "w") as f:
        f.write(kept)
    logs = []
    out = train.train(cfg.replace(data_dir=moved), resume=run_dir, argv=["test"],
                      log=logs.append, verbose=0)
    assert f"resuming with the images at {moved} (the run's split" in "\n".join(logs)
    assert out["results"]["epochs"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_a_damaged_metrics_json_is_set_aside_and_rebuilt_from_the_checkpoint(
        two_epoch_run, tmp_path, damage):
    """The epoch records are sealed in the checkpoint (the commit point): a damaged
    metrics.json is set aside and written again from them, every epoch kept."""
    run_dir, log, out = _resume_copy(two_epoch_run, tmp_path,
                                     lambda d: _hurt_json(os.path.join(d, "metrics.json"), damage))
    assert "metrics.json is damaged" in log and "rewritten from the checkpoint's records" in log
    assert [name.endswith("-metrics.json") for name in _damaged(run_dir)] == [True]
    assert [m["epoch"] for m in json.load(open(os.path.join(run_dir, "metrics.json")))] == [1, 2]
    assert out["results"]["epochs"] == 2


# ---- two processes, one run folder ----------------------------------------------------

@pytest.mark.slow
def test_a_second_process_on_a_run_in_use_is_refused_until_the_first_dies(cifar_dir, tmp_path):
    run_dir = str(tmp_path / "run")
    first = Child([sys.executable, os.path.join(ROOT, "cli.py"), "train", "--config", "smoke",
                   "--data-dir", cifar_dir, "--run-dir", run_dir, "--epochs", "40",
                   "--set", "aug=none"])
    first.wait_until(lambda: first.lines_starting("epoch 1/40") > 0, 300,
                     "the first epoch of the first process")
    for second in (["--resume", run_dir],
                   ["--config", "smoke", "--data-dir", cifar_dir, "--run-dir", run_dir,
                    "--overwrite"]):
        result = run_cli("train", *second, timeout=300)
        assert result.returncode == 6, result.stderr[-3000:]
        assert f"in use by another process (PID {first.proc.pid} " in result.stderr
        assert "--epochs 40" in result.stderr and "Traceback" not in result.stderr
    assert os.path.exists(_path(run_dir, "last"))  # --overwrite removed nothing
    first.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
    result = run_cli("train", "--resume", run_dir, "--epochs", "1", "--replan", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stdout
