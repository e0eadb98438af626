"""Training: a run folder trained with the recipe (``recipe.py``) through ``model.fit``,
and resumed from its checkpoints (``checkpoints.py``). ``train`` returns when the run is
finished, stopped by a signal or its time limit (after saving), or diverged (after
keeping the last good checkpoint).
"""

import contextlib
import os
import shutil
import sys
import tempfile
import time

from cmxl_keras import augment, recipe, runs
from cmxl_keras.errors import (ConfigError, RunError, TimeLimitReached, TrainingDiverged,
                               TrainingInterrupted)

# A resumed run must rebuild exactly the model it saved.
ARCH_KEYS = ("width", "depth", "patch_size", "kernel_size", "activation", "skip_period",
             "num_classes", "image_size")
# ... and see the same data in the same number of steps per epoch, or the one-cycle
# schedule (which counts optimizer steps) would land somewhere else.
DATA_KEYS = ("dataset", "val_size", "val_from_train", "limit_train", "split_seed",
             "split", "seed", "batch_size", "steps_per_epoch", "pipeline")
# ... and follow the one-cycle it planned, unless the user asks to re-plan it (--replan).
SCHEDULE_KEYS = ("epochs", "lr_max")


def check_resumable(run_dir, cfg, replan=False):
    """The saved config and state of ``run_dir``; refuses another model, data setup or
    precision, and (unless ``replan``) another schedule. (Read here again, under the run
    folder's lock, whatever the command line read before taking it.)"""
    from cmxl_keras import checkpoints, config as config_lib, settings

    checkpoints.require_run_folder(run_dir)
    saved = settings.load_saved(run_dir)

    def differences(keys):
        return [f"{k}: saved {was!r}, now {now!r}"
                for k, was, now in config_lib.differing(saved, cfg, keys)]

    diffs = differences(ARCH_KEYS)
    if diffs:
        raise RunError(
            f"--resume {run_dir!r} is refused: the run was trained with another model "
            f"({'; '.join(diffs)}). Resume with the run's own architecture (omit those "
            f"flags), or start a new run.")
    if saved.pipeline == "auto":  # a run from before the key existed: tf.data
        saved = saved.replace(pipeline="tf.data")
    if cfg.pipeline == "auto":
        cfg = cfg.replace(pipeline=recipe.default_pipeline())
    diffs = differences(DATA_KEYS)
    if diffs:
        raise RunError(
            f"--resume {run_dir!r} is refused: {'; '.join(diffs)}. These fix the data and "
            f"the steps per epoch that the learning-rate schedule counts; resume without "
            f"changing them.")
    if saved.precision == "auto":  # a run from before the resolved precision was saved
        saved = saved.replace(precision=recipe.resolve_precision("auto"))
    diffs = differences(("precision",))
    if diffs:
        raise RunError(
            f"--resume {run_dir!r} is refused: {diffs[0]}. The checkpoint holds the "
            f"optimizer state of a {saved.precision} run (loss scaling under "
            f"mixed_float16); resume with --precision {saved.precision}.")
    diffs = differences(SCHEDULE_KEYS)
    if diffs and not replan:
        raise RunError(
            f"--resume {run_dir!r} is refused: {'; '.join(diffs)}. The one-cycle learning "
            f"rate was planned over the run's epochs and peak, and changing them bends the "
            f"curve in mid-run. Resume without them, or add --replan to follow the new "
            f"schedule from the current step on.")
    return saved


def _hparams(cfg):
    keys = ("name", "width", "depth", "patch_size", "kernel_size", "activation", "skip_period",
            "aug", "epochs", "batch_size", "lr_max", "weight_decay", "label_smoothing",
            "clip_norm", "precision", "seed")
    return {k: getattr(cfg, k) for k in keys}


def check_same_split(run_dir, cfg, info, log):
    """A run resumed with its images elsewhere (``--data-dir``, another machine) goes on
    only if they split as the saved ones did: the same counts and index digests as its
    ``split.json``."""
    try:
        saved = runs.read_json(os.path.join(run_dir, "split.json"), None)
    except (OSError, ValueError):  # damaged: said below as unreadable
        saved = None
    keys = ("train", "val", "test", "train_indices_sha256", "val_indices_sha256",
            "test_indices_sha256")
    diffs = [f"{k}: saved {saved.get(k)!r}, now {info.get(k)!r}" for k in keys
             if saved is not None and saved.get(k) != info.get(k)]
    if saved is None or diffs:
        raise RunError(
            f"--resume {run_dir!r} is refused: the images at --data-dir {cfg.data_dir!r} "
            f"do not split as those the run trained on did ("
            f"{'; '.join(diffs) if saved else 'the run has no readable split.json'}). "
            f"Point --data-dir at the same images.")
    log(f"resuming with the images at {cfg.data_dir} (the run's split, the same counts "
        f"and index digests)")


def train(cfg, runs_dir="runs", run_dir=None, resume=None, overwrite=False, argv=None,
          log=print, verbose=None, replan=False, time_limit=None):
    """Trains ``cfg`` and returns ``{"run_dir", "results"}``.

    ``time_limit``: seconds from this call (start-up, data loading and compiling
    included) after which training stops at the end of the current step and saves it,
    for a job with a wall-clock allowance that continues later with ``--resume``.

    Raises:
        TrainingDiverged: the loss became non-finite; the last good checkpoint is kept.
        TrainingInterrupted: SIGINT/SIGTERM; the current step was saved for --resume.
        TimeLimitReached: ``time_limit`` passed; the current step was saved likewise.
        RunError, DataError, ConfigError: bad input, named in the message.
    """
    from cmxl_keras import distribute

    if time_limit is not None and not time_limit > 0:
        raise ConfigError(f"--time-limit {time_limit!r}: give a positive number of seconds "
                          f"(e.g. --time-limit 3600 for an hour).")
    if time_limit is not None and cfg.strategy == "multi_worker":
        # Each worker would stop on its own clock, one step apart at worst, and the others
        # would wait in their next all-reduce for it.
        raise ConfigError(
            "--time-limit with --strategy multi_worker: each worker would stop at its own "
            "step and the others would wait for it. Use the cluster scheduler's limit (its "
            "SIGTERM saves the run), or --time-limit with one process.")
    deadline = None if time_limit is None else time.monotonic() + time_limit

    # First: a multi-worker strategy and the logical CPU split configure the runtime.
    strategy = distribute.make_strategy(cfg.strategy, log)
    # The run records what ran: the pipeline and precision that "auto" resolved to.
    cfg = cfg.replace(pipeline=recipe.resolve_pipeline(cfg),
                      precision=recipe.resolve_precision(cfg.precision))
    devices = distribute.data_parallel_devices()  # DataParallel (JAX) splits batches evenly
    if cfg.batch_size % devices:
        raise ConfigError(
            f"batch_size {cfg.batch_size} does not split evenly over the {devices} devices "
            f"of keras.distribution.DataParallel; use a multiple of {devices} (e.g. "
            f"--batch-size {devices * max(1, round(cfg.batch_size / devices))}).")
    distribute.check_cpu_collectives(recipe.resolve_jit_compile(cfg.jit_compile))
    if distribute.is_chief(strategy):
        return _train(cfg, strategy, runs_dir, run_dir, resume, overwrite, argv, log, verbose,
                      replan=replan, deadline=deadline)
    # Another worker runs the same program (the saves may read distributed variables
    # collectively) but writes into a scratch folder; the chief writes the run folder.
    task_type, task_id = distribute.task(strategy)
    scratch = tempfile.mkdtemp(prefix=f"cmxl-{task_type}{task_id}-")
    os.makedirs(os.path.join(scratch, "checkpoints"))
    log(f"{task_type} {task_id}: the chief writes the run folder; this worker's copies go "
        f"to {scratch}, removed at the end")
    try:
        result = _train(cfg, strategy, runs_dir, scratch, resume, True, argv, log, verbose,
                        chief=False, replan=replan, deadline=deadline)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log(f"done: {task_type} {task_id} finished; the chief wrote the run folder")
    return dict(result, run_dir=None)


def _train(cfg, strategy, runs_dir, run_dir, resume, overwrite, argv, log, verbose, chief=True,
           replan=False, deadline=None):
    """One training session; the run folder's lock is held until it returns or raises."""
    argv = list(argv or sys.argv)
    with contextlib.ExitStack() as held:
        return _train_locked(held, cfg, strategy, runs_dir, run_dir, resume, overwrite, argv,
                             log, verbose, chief, replan, deadline)


def _train_locked(held, cfg, strategy, runs_dir, run_dir, resume, overwrite, argv, log,
                  verbose, chief, replan, deadline):
    import keras

    from cmxl_keras import (callbacks, checkpoints, distribute, models, pipeline, schedules,
                            splitting)

    if resume and chief and os.path.isdir(resume):  # a missing folder: check_resumable says so
        held.enter_context(runs.RunLock(resume, argv))  # before reading what it may write
    # A run killed before its first checkpoint finished no step: it starts over in its
    # folder, with the config (and so the split) it was started with.
    restart = bool(resume) and os.path.isdir(resume) and not checkpoints.has_checkpoint(resume)
    if restart:
        log(f"{resume}: the run stopped before its first checkpoint (no step was finished); "
            f"starting it over in that folder with its config.")
        os.makedirs(os.path.join(resume, "checkpoints"), exist_ok=True)
    moved = False  # a resumed run's images now elsewhere: the split must match
    if resume and not restart:
        moved = check_resumable(resume, cfg, replan).data_dir != cfg.data_dir
    precision = cfg.precision
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()

    splits = splitting.load_splits(cfg, log=log)  # before the run folder: bad data leaves nothing
    if moved:
        check_same_split(resume, cfg, splits.info, log)
    if chief:
        run_dir = resume or runs.new_run_dir(runs_dir, cfg.name, run_dir, overwrite,
                                             held=held, argv=argv)
    if chief and (restart or not resume):
        runs.write_run_metadata(run_dir, cfg, argv, splits.info)

    spec = augment.AugmentSpec.from_config(cfg)
    one_hot = spec.one_hot_labels or cfg.label_smoothing > 0
    steps = recipe.steps_per_epoch(len(splits.train), cfg)
    # device: the augmentation layers run inside the compiled training step
    stages = (augment.keras_layers(spec, seed=cfg.seed)
              if cfg.pipeline == "device" and not spec.is_identity else [])

    replicas = distribute.replicas(strategy)
    devices = max(replicas, distribute.data_parallel_devices())
    state = callbacks.TrainState(steps)
    # With several replicas (BatchNorm synchronized) or augmentation layers in front, the
    # training model is not the one to save: checkpoints of the model come from a plain
    # copy with the same weights, which loads anywhere.
    portable = (lambda m: recipe.portable_copy(m, cfg)) if replicas > 1 or stages else None
    checkpointer = checkpoints.Checkpointer(run_dir, state, cfg.checkpoint_every_steps,
                                            portable, log=log)
    start_step = 0
    with distribute.scope(strategy):
        model = recipe.compile_model(
            recipe.build_model(cfg, sync_bn=replicas > 1, augmentation=stages), cfg, steps,
            one_hot=one_hot)
        distribute.prepare_model(model, strategy)
        if resume and not restart:
            restored = checkpoints.restore(model, resume, steps, log, write=chief)
            start_step = restored["step"]
            state.best = restored["best_val_accuracy"]
            state.metrics = checkpoints.resumed_metrics(resume, restored, log, write=chief)
    if resume and chief:  # only once a checkpoint loaded: a refused resume changes nothing
        for folder in (run_dir, os.path.join(run_dir, "checkpoints")):
            for name in runs.remove_partials(folder):
                log(f"removed {name}, left by an interrupted write")
        if not restart:  # a restart wrote its metadata above
            with open(os.path.join(run_dir, "command.txt"), "a") as f:
                f.write(" ".join(argv) + "\n")
            runs.write_text(os.path.join(run_dir, "config.toml"), cfg.to_toml())
            runs.write_json(os.path.join(run_dir, "config.json"), cfg.to_dict())
    data_args = pipeline.fit_inputs(cfg, splits, spec, one_hot, stages, steps)
    if resume and not restart:
        log(f"resuming {resume} at epoch {start_step // steps + 1}, step "
            f"{start_step % steps} of {steps} (optimizer step {start_step})")
    log(f"model: {cfg.name}, {models.trainable_param_count(model):,} trainable parameters; "
        f"precision {precision}; {len(splits.train):,} train / {len(splits.val):,} val "
        f"images; {steps} steps per epoch of {cfg.batch_size} images"
        + (f" ({cfg.batch_size // devices} per replica on {devices})" if devices > 1 else ""))
    jit = recipe.resolve_jit_compile(cfg.jit_compile)
    log(f"training step: {keras.backend.backend()}, "
        + ("compiled step (jit_compile)" if jit else "TensorFlow graph" if
           keras.backend.backend() == "tensorflow" else "eager, op by op (jit_compile=false)"))
    log(f"augmentation: {spec.describe()}" + ("" if spec.is_identity else (
        f" ({cfg.pipeline}" + (", Keras layers in front of the model)"
                               if cfg.pipeline == "device" else ")"))))

    tb_dir = os.path.join(run_dir, "tensorboard")
    extra = []
    writer = callbacks.make_summary_writer(tb_dir, log)
    if isinstance(writer, callbacks.SummaryWriter):  # TensorFlow: Keras writes the epochs
        extra.append(keras.callbacks.TensorBoard(tb_dir, write_graph=False, profile_batch=0))
    if restart or not resume:  # on every worker alike: drawing it may advance the seeds
        grid = pipeline.augmentation_grid(data_args["grid"])
        runs.write_png(os.path.join(run_dir, "augmentations.png"), grid)
        if writer is not None:
            writer.image("augmentations", grid)
            writer.hparams(_hparams(cfg))
            writer.flush()
    report = callbacks.EpochReport(
        state, cfg.batch_size, cfg.epochs,
        lambda step: schedules.one_cycle_lr(step, steps, cfg.epochs, cfg.lr_max), writer)
    guard = callbacks.Guard(state, checkpointer, deadline, total_steps=cfg.epochs * steps)
    cbs = [guard, report, checkpointer] + extra + distribute.collective_callbacks()
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 0

    started = time.time()
    epoch, skip = divmod(start_step, steps)
    if skip and epoch < cfg.epochs:  # finish the interrupted epoch first
        running = callbacks.ResumeEpochMetrics(restored.get("epoch_metrics"))
        augment.start_keras_layers(stages, start_step)
        model.fit(**data_args["fit"](start_step), epochs=epoch + 1, initial_epoch=epoch,
                  steps_per_epoch=steps - skip, callbacks=[running] + cbs, verbose=verbose)
        epoch += 1
    if state.stop_reason is None and epoch < cfg.epochs:
        augment.start_keras_layers(stages, epoch * steps)
        model.fit(**data_args["fit"](epoch * steps), epochs=cfg.epochs, initial_epoch=epoch,
                  steps_per_epoch=steps, callbacks=cbs, verbose=verbose)
    if writer is not None:
        writer.flush()
    return _finish(model, cfg, run_dir, state, checkpointer, started,
                   log if chief else (lambda *a: None))


def _finish(model, cfg, run_dir, state, checkpointer, started, log):
    from cmxl_keras import callbacks

    if state.stop_reason == "diverged":
        epoch, batch = state.diverged_at
        good = checkpointer.rollback()
        where = (f"The last good checkpoint (epoch {good['epoch'] + 1}, step "
                 f"{good['step_in_epoch']}; optimizer step {good['step']}) is kept in "
                 f"{os.path.dirname(checkpointer.paths['last'])}. Resume from it with a smaller "
                 f"learning rate: python cli.py train --resume {run_dir} --set "
                 f"lr_max={cfg.lr_max / 10:g} --replan" if good else
                 "No finished epoch was saved; start again with a smaller --lr "
                 f"(now {cfg.lr_max:g}).")
        raise TrainingDiverged(
            f"training diverged: the loss became NaN or infinite at epoch {epoch + 1}, step "
            f"{batch + 1} (lr_max {cfg.lr_max:g}). " + where)
    if state.stop_reason == callbacks.TIME_LIMIT:
        import keras

        step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        epoch, in_epoch = divmod(step, state.steps_per_epoch)
        where = (f"after epoch {epoch} of {cfg.epochs}" if not in_epoch else
                 f"in epoch {epoch + 1} of {cfg.epochs}, after step {in_epoch} of its "
                 f"{state.steps_per_epoch}")
        raise TimeLimitReached(
            f"training stopped at its time limit (--time-limit), {where}; "
            f"every finished step is saved. Continue with: python cli.py train --resume "
            f"{run_dir}")
    if state.stop_reason is not None:
        raise TrainingInterrupted(
            f"training stopped by {state.stop_reason}; every finished step is saved. "
            f"Continue with: python cli.py train --resume {run_dir}")
    final = recipe.portable_copy(model, cfg)  # uncompiled: built-in layers only, loads anywhere
    with runs.atomic_path(os.path.join(run_dir, "model.keras")) as tmp:
        final.save(tmp)
    last = state.metrics[-1] if state.metrics else {}
    results = {
        "epochs": len(state.metrics), "final": last,
        "best_val_accuracy": state.best,
        "best_epoch": max(state.metrics, key=lambda m: m.get("val_accuracy", -1))["epoch"]
        if state.metrics else None,
        "wall_seconds_this_session": time.time() - started,
        "train_seconds_total": sum(m["epoch_seconds"] for m in state.metrics),
    }
    runs.write_json(os.path.join(run_dir, "results.json"), results)
    log(f"done: {run_dir} (best val accuracy {state.best if state.best is not None else 'n/a'})")
    return {"run_dir": run_dir, "results": results}
