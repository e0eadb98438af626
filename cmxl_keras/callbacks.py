"""Callbacks of a training run: NaN, signal and time-limit guards, per-epoch records, and
TensorBoard extras (learning rate per step, images/s, hparams). The checkpoints' callback
is ``checkpoints.Checkpointer``.
"""

import math
import os
import signal
import time

import keras
import numpy as np

from cmxl_keras.checkpoints import optimizer_step


# TrainState.stop_reason when --time-limit stopped the run.
TIME_LIMIT = "time limit"


class TrainState:
    """What the callbacks share: why training stopped, and the epoch records."""

    def __init__(self, steps_per_epoch, metrics=None, best=None):
        self.steps_per_epoch = steps_per_epoch
        self.stop_reason = None  # None, "diverged", TIME_LIMIT or a signal name
        self.diverged_at = None
        self.metrics = list(metrics or [])  # the finished epochs' records
        self.best = best  # best val_accuracy so far
        self.announce = None  # the finished epoch's line, printed once it is saved
        self.epoch_first_step = 0  # the optimizer step the current epoch started at

    def step_after(self, batch):
        """The optimizer's step count once batch ``batch`` (0-based in this epoch) is done,
        counted on the host. Per-step callbacks use it instead of ``self.model``: under
        JAX, Keras keeps the variables inside the compiled step's state during an epoch,
        and reading ``self.model`` copies every one of them back (``jax_state_sync``),
        which takes longer than a GPU training step."""
        return self.epoch_first_step + batch + 1

    def epoch_finished(self, model):
        """Whether the epoch that just ended ran all its steps (a signal may arrive during
        validation, after the last step: that epoch is finished and is kept)."""
        if self.stop_reason is None:
            return True
        return self.stop_reason != "diverged" and optimizer_step(model) % self.steps_per_epoch == 0


class Guard(keras.callbacks.Callback):
    """Stops on a non-finite loss, and on SIGINT/SIGTERM or at ``deadline`` (a
    ``time.monotonic`` value: ``--time-limit``) after saving the current step. The
    deadline never stops the run's last step: a run that finishes, finishes."""

    def __init__(self, state, checkpointer, deadline=None, total_steps=None):
        super().__init__()
        self.state = state
        self.checkpointer = checkpointer
        self.deadline = deadline
        self.total_steps = total_steps
        self._previous = {}

    def on_train_begin(self, logs=None):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def on_train_end(self, logs=None):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        if self.state.stop_reason is None:
            self.state.stop_reason = signal.Signals(signum).name
        self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.state.stop_reason = "diverged"
            epoch = (optimizer_step(self.model) - 1) // self.state.steps_per_epoch
            self.state.diverged_at = epoch, batch
            self.model.stop_training = True
            return
        if (self.deadline is not None and self.state.stop_reason is None
                and time.monotonic() >= self.deadline
                and (self.total_steps is None or optimizer_step(self.model) < self.total_steps)):
            self.state.stop_reason = TIME_LIMIT
            self.model.stop_training = True
        if self.state.stop_reason not in (None, "diverged"):
            # A signal or the deadline came during this step: keep the finished steps,
            # then stop.
            self.checkpointer.save_step()


class ResumeEpochMetrics(keras.callbacks.Callback):
    """Adds back the running training metrics that a mid-epoch checkpoint holds (loss,
    accuracy, top-5: each a total and a count), so that the resumed epoch's record
    averages all its steps, as an uninterrupted run's does, not only those after the
    resume.

    Keras builds the compiled metrics' variables at the first step, so they are merged
    after it: ``saved + first step's``, the same float32 sum an uninterrupted run makes
    (the compiled metrics are all means: their states add).
    """

    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_train_batch_end(self, batch, logs=None):
        if self.values is None:
            return
        variables = self.model.metrics_variables
        if len(variables) == len(self.values):
            for variable, value in zip(variables, self.values):
                current = keras.ops.convert_to_numpy(variable)
                variable.assign(np.asarray(value, dtype=current.dtype) + current)
        self.values = None


class EpochReport(keras.callbacks.Callback):
    """Times each epoch and makes its record (``state.metrics``) and summary line, which
    ``Checkpointer`` saves and prints after it: it must come before it in the list."""

    def __init__(self, state, batch_size, epochs, lr_at, writer=None):
        super().__init__()
        self.state = state
        self.batch_size = batch_size
        self.epochs = epochs
        self.writer = writer
        # step -> the learning rate of the step after it, computed on the host with the
        # schedule's own formula: reading the optimizer's would copy the model's state
        # out of JAX's compiled step (see TrainState.step_after).
        self.lr_at = lr_at
        self._start = self._train_end = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_end = None
        self.state.epoch_first_step = optimizer_step(self.model)

    def _log_loss_scale(self, step):
        scale = getattr(self.model.optimizer, "dynamic_scale", None)
        if scale is not None:  # mixed_float16: the loss scale, halved at each skip
            self.writer.scalar("loss_scale", float(keras.ops.convert_to_numpy(scale)), step)

    def on_test_begin(self, logs=None):
        if self._start is not None and self._train_end is None:
            self._train_end = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.writer is None:
            return
        step = self.state.step_after(batch)
        self.writer.scalar("learning_rate", self.lr_at(step), step)
        # The loss scale lives in the optimizer: read every step where that is free
        # (TensorFlow), at each epoch's end under JAX (see TrainState.step_after).
        if keras.backend.backend() != "jax":
            self._log_loss_scale(step)

    def on_epoch_end(self, epoch, logs=None):
        if not self.state.epoch_finished(self.model):
            return
        now = time.perf_counter()
        train_seconds = (self._train_end or now) - self._start
        step = optimizer_step(self.model)
        # The training stream repeats across epochs: every batch is full.
        images = (step - self.state.epoch_first_step) * self.batch_size
        entry = {"epoch": epoch + 1}
        entry.update({k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"})
        entry.update(lr=self.lr_at(step), epoch_seconds=now - self._start,
                     train_images_per_second=images / max(train_seconds, 1e-9), step=step)
        self.state.metrics = [m for m in self.state.metrics if m["epoch"] < epoch + 1]
        self.state.metrics.append(entry)
        if self.writer is not None:
            if keras.backend.backend() == "jax":
                self._log_loss_scale(entry["step"])
            self.writer.scalar("images_per_second", entry["train_images_per_second"], epoch + 1)
            self.writer.scalar("epoch_seconds", entry["epoch_seconds"], epoch + 1)
            if isinstance(self.writer, EventFileSummaryWriter):  # no Keras TensorBoard
                self.writer.epoch_scalars(epoch, logs or {})
        val = (f" | val loss {entry['val_loss']:.4f} acc {entry['val_accuracy']:.4f} "
               f"top5 {entry.get('val_top5', float('nan')):.4f}" if "val_loss" in entry else "")
        self.state.announce = (
            f"epoch {epoch + 1}/{self.epochs}: loss {entry['loss']:.4f} "
            f"acc {entry['accuracy']:.4f}{val} | lr {entry['lr']:.2e} | "
            f"{entry['train_images_per_second']:.0f} img/s | {entry['epoch_seconds']:.1f} s")


class SummaryWriter:
    """TensorBoard scalars, images and hparams through tf.summary, where TensorFlow exists.

    Keras' TensorBoard callback writes the epoch scalars (loss, accuracy, top-5, for
    train and validation); this adds what it does not: the learning rate per step,
    images/s, epoch time, the augmentation grid and the hyperparameters.
    """

    def __init__(self, log_dir):
        import tensorflow as tf

        self.tf = tf
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "train"))
        # HParams go to the run's root log folder: TensorBoard's HParams plugin treats
        # that folder as one session and finds its metrics in train/ and validation/.
        self.root_writer = tf.summary.create_file_writer(log_dir)

    def scalar(self, name, value, step):
        with self.writer.as_default():
            self.tf.summary.scalar(name, value, step=step)

    def image(self, name, grid, step=0):
        with self.writer.as_default():
            self.tf.summary.image(name, np.asarray(grid, np.uint8)[None], step=step)

    def hparams(self, hparams):
        from tensorboard.plugins.hparams import api as hp

        with self.root_writer.as_default():
            hp.hparams(hparams)

    def flush(self):
        self.writer.flush()
        self.root_writer.flush()


class EventFileSummaryWriter:
    """The same TensorBoard logs without TensorFlow (the JAX backend on a host with only
    the ``tensorboard`` package), written by that package's own event-file writer.

    Keras' TensorBoard callback needs ``tf.summary``, so this also writes what it would:
    ``epoch_<metric>`` at step ``epoch`` (0-based) in ``train/`` and ``validation/``.
    Scalars are ``simple_value`` summaries and images PNG-encoded, which TensorBoard
    reads as it reads ``tf.summary``'s.
    """

    def __init__(self, log_dir):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self._new_writer = EventFileWriter
        self.log_dir = log_dir
        self._writers = {}

    def _write(self, folder, summary, step):
        if folder not in self._writers:
            self._writers[folder] = self._new_writer(os.path.join(self.log_dir, folder))
        self._writers[folder].add_event(
            self._event(wall_time=time.time(), step=int(step), summary=summary))

    def scalar(self, name, value, step, folder="train"):
        value = self._summary.Value(tag=name, simple_value=float(value))
        self._write(folder, self._summary(value=[value]), step)

    def image(self, name, grid, step=0):
        import io

        from PIL import Image

        grid = np.asarray(grid, np.uint8)
        png = io.BytesIO()
        Image.fromarray(grid).save(png, format="PNG")
        image = self._summary.Image(height=grid.shape[0], width=grid.shape[1],
                                    colorspace=grid.shape[2], encoded_image_string=png.getvalue())
        self._write("train", self._summary(value=[self._summary.Value(tag=name, image=image)]),
                    step)

    def hparams(self, hparams):
        from tensorboard.plugins.hparams import summary_v2

        self._write("", summary_v2.hparams_pb(hparams), 0)  # the root: see SummaryWriter

    def epoch_scalars(self, epoch, logs):
        for key, value in logs.items():
            if key == "learning_rate":
                continue
            folder, name = (("validation", key[4:]) if key.startswith("val_")
                            else ("train", key))
            self.scalar(f"epoch_{name}", value, epoch, folder)

    def flush(self):
        for writer in self._writers.values():
            writer.flush()


def make_summary_writer(log_dir, log=print):
    """TensorBoard's writer: through ``tf.summary`` where TensorFlow is installed, else the
    ``tensorboard`` package's own; None (said once) where neither is."""
    try:
        return SummaryWriter(log_dir)
    except ImportError:
        pass
    try:
        writer = EventFileSummaryWriter(log_dir)
    except ImportError:
        log("tensorboard: neither TensorFlow nor the tensorboard package is installed; this "
            "run writes no TensorBoard logs (metrics.json has every epoch).")
        return None
    log("tensorboard: TensorFlow is not installed; the logs are written by the tensorboard "
        "package itself.")
    return writer
