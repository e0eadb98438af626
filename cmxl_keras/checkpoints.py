"""Checkpoints of a training run: where they live, their seals, saving them during
``fit`` (``Checkpointer``) and restoring the newest whole one (``restore``).

A checkpoint is Keras' weights file of the model and its optimizer, written atomically
(``runs.atomic_path``) and sealed inside (HDF5 root attributes) with its state record
(``state_record``: step, epoch, best accuracy, the finished epochs' records) and a
SHA-256 digest of its arrays, so a resume tells a damaged file from a whole one and
falls back to the newest whole checkpoint. The position of a checkpoint is the
optimizer's own step count stored inside it, so weights and position never disagree.
Keras' BackupAndRestore is not used: it writes its weights and metadata in place (a kill
mid-write leaves a half-written file that it then loads), and it restarts an interrupted
epoch from its first step.
"""

import contextlib
import hashlib
import json
import os

import keras
import numpy as np

from cmxl_keras import runs
from cmxl_keras.errors import DamagedCheckpoint, RunError

SEAL_STATE = "cmxl_state"  # HDF5 root attributes of a sealed checkpoint
SEAL_DIGEST = "cmxl_sha256"


def optimizer_step(model):
    """The optimizer's step count: the training step a model stands at."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def state_record(step, steps_per_epoch, best, metrics, epoch_metrics=None):
    """The state of a checkpoint at optimizer step ``step``, as it is sealed in the file
    and copied to ``state.json``; ``epoch_metrics`` (mid-epoch only) are the epoch's
    running training metrics."""
    state = {"step": step, "epoch": step // steps_per_epoch,
             "step_in_epoch": step % steps_per_epoch, "steps_per_epoch": steps_per_epoch,
             "best_val_accuracy": best, "weights": "last.weights.h5", "metrics": metrics}
    if epoch_metrics is not None:
        state["epoch_metrics"] = epoch_metrics
    return state


def has_checkpoint(run_dir):
    """Whether a run folder ever saved a checkpoint (whole or not): without one, no step
    of the run was finished."""
    paths = checkpoint_paths(run_dir)
    return any(os.path.exists(paths[k]) for k in ("last", "good", "state"))


def checkpoint_paths(run_dir):
    folder = os.path.join(run_dir, "checkpoints")
    return {"last": os.path.join(folder, "last.weights.h5"),
            "good": os.path.join(folder, "good.weights.h5"),
            "best": os.path.join(folder, "best.keras"),
            "state": os.path.join(folder, "state.json"),
            "damaged": os.path.join(folder, "damaged")}


def _arrays_digest(h5file):
    """SHA-256 over every dataset's name, dtype, shape and bytes, in name order."""
    import h5py

    digest = hashlib.sha256()
    names = []
    h5file.visititems(lambda name, obj: names.append(name)
                      if isinstance(obj, h5py.Dataset) else None)
    for name in sorted(names):
        array = np.asarray(h5file[name][()])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def seal_checkpoint(path, state):
    """Writes ``state`` and the digest of the arrays into the HDF5 file at ``path``
    (Keras' weights file; Keras ignores root attributes when it loads)."""
    import h5py

    with h5py.File(path, "r+") as f:
        f.attrs[SEAL_STATE] = json.dumps(state)
        f.attrs[SEAL_DIGEST] = _arrays_digest(f)


def checkpoint_state(path):
    """The state sealed in the checkpoint at ``path``; None for a checkpoint written
    before seals existed. Raises ``DamagedCheckpoint`` when the file does not read as
    HDF5, its arrays do not match their digest, or its state does not parse."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if SEAL_DIGEST not in f.attrs:
                return None
            state = json.loads(f.attrs[SEAL_STATE])
            if _arrays_digest(f) != f.attrs[SEAL_DIGEST]:
                raise DamagedCheckpoint(f"{path}: its arrays do not match their digest")
            return state
    except DamagedCheckpoint:
        raise
    except Exception as error:  # h5py raises OSError, KeyError, RuntimeError, ValueError
        raise DamagedCheckpoint(f"{path}: {type(error).__name__}: {error}") from None


class Checkpointer(keras.callbacks.Callback):
    """Atomic ``last`` checkpoint every epoch (and every N steps), ``best`` by val accuracy.

    It also keeps a ``good`` copy: the checkpoint this session started from, then each
    finished epoch's. Steps just before a NaN often hold finite but already exploding
    weights, so after a divergence ``rollback`` makes the good copy the one to resume.
    """

    def __init__(self, run_dir, state, every_steps=0, portable=None, log=print):
        super().__init__()
        self.portable = portable  # model -> the model to save as best.keras (or None)
        self.log = log
        self.run_dir = run_dir
        self.metrics_path = os.path.join(run_dir, "metrics.json")
        self.paths = checkpoint_paths(run_dir)
        self.state = state
        self.every_steps = every_steps
        self.good_state = None

    @contextlib.contextmanager
    def _reported(self, path):
        """A failed write (disk full, permissions) becomes a clear error; the atomic write
        has already left the previous file in place."""
        try:
            yield
        except OSError as error:
            raise RunError(
                f"cannot write {path!r} ({error.strerror or error}). The previous checkpoint "
                f"is intact. Free disk space (or fix the folder's permissions) and continue "
                f"with: python cli.py train --resume {self.run_dir}") from None

    def save_last(self):
        """The commit point: the weights, the optimizer and where they stand, sealed in
        one atomic file with the records of every finished epoch (metrics.json is
        written from them after it, and rebuilt from them on resume)."""
        step, steps = optimizer_step(self.model), self.state.steps_per_epoch
        running = None
        if step % steps:  # mid-epoch: the epoch's running training metrics too
            running = [keras.ops.convert_to_numpy(v).tolist()
                       for v in self.model.metrics_variables]
        state = state_record(step, steps, self.state.best, self.state.metrics, running)
        with self._reported(self.paths["last"]), runs.atomic_path(self.paths["last"]) as tmp:
            self.model.save_weights(tmp)
            seal_checkpoint(tmp, state)  # the file says where it stands, and is checked
        with self._reported(self.paths["state"]):
            runs.write_json(self.paths["state"], state)

    def _mark_good(self):
        if os.path.exists(self.paths["last"]) and os.path.exists(self.paths["state"]):
            runs.copy_atomic(self.paths["last"], self.paths["good"])
            self.good_state = runs.read_json(self.paths["state"])

    def on_train_begin(self, logs=None):
        if self.good_state is None:
            self._mark_good()

    def rollback(self):
        """Makes the last good checkpoint the one to resume; returns its state or None."""
        if self.good_state is None:
            for path in (self.paths["last"], self.paths["state"]):
                if os.path.exists(path):
                    os.remove(path)
            return None
        runs.copy_atomic(self.paths["good"], self.paths["last"])
        runs.write_json(self.paths["state"], self.good_state)
        return self.good_state

    def save_step(self):
        """``save_last`` in mid-epoch. Not at an epoch's last step: a checkpoint there
        would commit a finished epoch before its record exists; the epoch's end saves
        it, with the record, after validation."""
        if optimizer_step(self.model) % self.state.steps_per_epoch:
            self.save_last()

    def on_train_batch_end(self, batch, logs=None):
        if (self.every_steps and self.state.stop_reason is None
                and self.state.step_after(batch) % self.every_steps == 0):
            self.save_step()

    def on_epoch_end(self, epoch, logs=None):
        """After ``EpochReport`` has made the epoch's record: best.keras, then the commit
        point (``save_last``, with the record), then metrics.json and the good copy, and
        only then the epoch's line. A kill before the commit retrains the epoch; after it,
        the epoch counts once, whatever else was written."""
        if not self.state.epoch_finished(self.model):
            return  # an unfinished or diverged epoch is never saved as finished
        logs = logs or {}
        val = logs.get("val_accuracy")
        if val is not None and (self.state.best is None or val > self.state.best):
            self.state.best = float(val)
            with self._reported(self.paths["best"]), runs.atomic_path(self.paths["best"]) as tmp:
                (self.portable(self.model) if self.portable else self.model).save(tmp)
        self.save_last()
        with self._reported(self.metrics_path):
            runs.write_json(self.metrics_path, self.state.metrics)
        with self._reported(self.paths["good"]):
            self._mark_good()
        if self.state.announce:
            self.log(self.state.announce)
            self.state.announce = None


def restore(model, run_dir, steps, log, write=True):
    """Loads the newest checkpoint of ``run_dir`` that is whole; returns its state.

    The candidates are ``last`` (every epoch end and every N steps) and ``good`` (the
    last finished epoch's copy), each sealed with its own state. A damaged file
    (truncated, bit-flipped, unreadable) is set aside under checkpoints/damaged/, never
    deleted, and the next one is tried; a damaged or stale ``state.json`` is rewritten
    from the checkpoint actually loaded. Only when no checkpoint loads is the resume
    refused. Only the chief (``write``) changes files; other workers only read.
    """
    paths = checkpoint_paths(run_dir)
    try:
        recorded = runs.read_json(paths["state"])
        recorded = recorded if isinstance(recorded, dict) else None
    except (OSError, ValueError):
        recorded = None
    candidates, problems = [], []
    for name in ("last", "good"):
        path = paths[name]
        if not os.path.exists(path):
            continue
        try:
            sealed = checkpoint_state(path)
        except DamagedCheckpoint as error:
            problems.append((name, path, str(error)))
            continue
        if sealed is None and name == "last":  # a checkpoint from before seals existed
            sealed = recorded
        candidates.append((name, path, sealed))
    # Newest first; an unsealed copy of unknown step is tried after the sealed ones.
    candidates.sort(key=lambda c: -(c[2] or {}).get("step", -1))
    if not model.optimizer.built:  # a second build would add a loss scale's variables again
        model.optimizer.build(model.trainable_variables)
    chosen = None
    for name, path, sealed in candidates:
        if sealed is not None and sealed.get("steps_per_epoch") not in (None, steps):
            raise RunError(
                f"the checkpoint {path!r} counts {sealed.get('steps_per_epoch')} steps per "
                f"epoch but this configuration gives {steps}; resume with the run's own "
                f"batch size and data.")
        try:
            model.load_weights(path)
        except Exception as error:  # h5py and Keras raise several types for a bad file
            problems.append((name, path, f"{type(error).__name__}: {error}"))
            continue
        chosen = (name, path, sealed)
        break
    if chosen is None:
        found = "; ".join(f"{os.path.basename(p)}: {why}" for _, p, why in problems)
        raise RunError(
            f"cannot resume {run_dir!r}: no checkpoint in it loads into this model "
            f"({found or 'none found'}). They were written by another model or are damaged; "
            f"the run's metrics and checkpoints/best.keras stay as they are. Start a new run "
            f"(or restore the checkpoints folder from a copy).")
    name, path, sealed = chosen
    step, sealed = optimizer_step(model), sealed or {}
    state = state_record(step, steps, sealed.get("best_val_accuracy"), sealed.get("metrics"),
                         sealed.get("epoch_metrics"))
    if not write:
        return state
    for bad_name, bad_path, why in problems:
        kept = runs.set_aside(bad_path, paths["damaged"])
        log(f"checkpoint {os.path.basename(bad_path)} is damaged ({why}); set aside as "
            f"{os.path.relpath(kept, run_dir)}")
    newest = max([(recorded or {}).get("step", -1)] + [
        (c[2] or {}).get("step", -1) for c in candidates])
    if name != "last":
        lost = (f"the {newest - step} steps after it (up to step {newest}) are trained again"
                if newest > step else "no finished step is lost" if recorded is not None
                else "the steps after it, if any, are trained again (state.json, which "
                     "recorded the newest step, is damaged too)")
        log(f"resuming from {os.path.basename(path)} (step {step}), the newest whole "
            f"checkpoint; {lost}.")
    if recorded is None or recorded.get("step") != step:
        was = ("damaged or missing" if recorded is None
               else f"at step {recorded.get('step')}")
        log(f"checkpoints/state.json was {was}; rewritten from {os.path.basename(path)} "
            f"(step {step}).")
    for other in ("last", "good"):  # both whole again: the next resume has a fallback
        if other != name and not os.path.exists(paths[other]):
            runs.copy_atomic(path, paths[other])
    runs.write_json(paths["state"], state)
    return state


def resumed_metrics(run_dir, restored, log, write=True):
    """The records of the epochs the restored checkpoint finished: those sealed in it
    (the commit point), else (a checkpoint sealed without them) metrics.json's up to its
    epoch, a damaged file set aside. metrics.json is rewritten to match."""
    path = os.path.join(run_dir, "metrics.json")
    sealed = restored.get("metrics")
    try:
        metrics = runs.read_json(path, [])
        if not isinstance(metrics, list) or not all(isinstance(m, dict) and "epoch" in m
                                                     for m in metrics):
            raise ValueError("not a list of epoch records")
    except (OSError, ValueError) as error:
        if not write:
            return list(sealed or [])
        kept = runs.set_aside(path, os.path.join(run_dir, "checkpoints", "damaged"))
        log(f"metrics.json is damaged ({error}); set aside as {os.path.relpath(kept, run_dir)}"
            + (" and rewritten from the checkpoint's records." if sealed is not None else
               ". The epochs before the resume keep their TensorBoard logs but have no "
               "metrics.json entries."))
        metrics = []
    if sealed is not None:
        metrics = sealed
    else:  # a checkpoint sealed without the records: the file's, up to its epoch
        metrics = [m for m in metrics if m["epoch"] <= restored["epoch"]]
    if write:
        runs.write_json(path, metrics)
    return list(metrics)


def require_run_folder(run_dir, runs_dir="runs"):
    if not os.path.isdir(run_dir):
        raise RunError(
            f"--resume {run_dir!r}: no such run folder. Give a folder made by "
            f"'python cli.py train' (look under {runs_dir}/).")


def saved_config(run_dir, given, runs_dir="runs"):
    """The config a run to resume was saved with (config.json, or config.toml if that is
    damaged); None for a run killed before it wrote its config or any checkpoint (no
    step was finished): it starts over from the config ``given`` on the command line,
    and without one is refused."""
    from cmxl_keras import settings

    require_run_folder(run_dir, runs_dir)
    try:
        return settings.load_saved(run_dir)
    except RunError:
        if has_checkpoint(run_dir):
            raise
        if not given:
            raise RunError(
                f"--resume {run_dir!r}: the run was stopped before it saved its config or "
                f"any checkpoint, so nothing of it is left to continue. Start it again "
                f"with the flags it was started with (e.g. --config NAME) and --resume "
                f"{run_dir}, or with --run-dir {run_dir} --overwrite.") from None
        return None
