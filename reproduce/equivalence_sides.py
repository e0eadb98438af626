"""The two sides of ``equivalence.py``'s comparison, one run each: ours (``cli.py train``
as a user runs it, scored by ``cli.py evaluate``) and the reference's loop
(``ref_train.train``), each resumed from its folder under ``--work``, each final model
scored on the validation images in every form asked (``--score-data``), and each stopped
where it can resume at ``--time-limit`` (``Stopped``)."""

import json
import os
import sys
import time

import numpy as np

from cmxl_keras.data import names_digest
from cmxl_keras.runs import write_text
from cmxl_keras.children import run_or_exit
from reproduce import ROOT


# The paper's training augmentation, stage by stage: our config keys that turn each off,
# and the reference transform's class.
STAGES = ("crop", "flip", "randaugment", "jitter", "erase")
OFF = {"crop": {"crop_scale_min": 1.0}, "flip": {"flip": "false"},
       "randaugment": {"randaugment_ops": 0},
       "jitter": {"jitter_brightness": 0, "jitter_contrast": 0, "jitter_saturation": 0},
       "erase": {"erase_prob": 0}}
TORCHVISION = {"crop": "RandomResizedCrop", "flip": "RandomHorizontalFlip",
               "randaugment": "RandAugment", "jitter": "ColorJitter", "erase": "RandomErasing"}
EXIT_STOPPED = 7  # stopped at --time-limit, resumable: as cli.py train and reference-loop

# ----------------------------------------------------------------------------- ours
def train_ours(args, seed, splits, log):
    """One ``cli.py train`` run; its per-epoch records (``metrics.json``)."""
    run_dir = os.path.abspath(os.path.join(args.work, f"ours-{seed}"))
    resumable = os.path.exists(os.path.join(run_dir, "checkpoints", "state.json"))
    sets = {"width": args.width, "depth": args.depth, "patch_size": args.patch_size,
            "kernel_size": args.kernel_size, "activation": args.activation,
            "skip_period": args.skip_period, "epochs": args.epochs,
            "batch_size": args.batch_size, "lr_max": args.lr, "seed": seed,
            "split_seed": args.split_seed, "val_from_train": args.val,
            "limit_train": args.train}
    for stage in args.drop:
        sets.update(OFF[stage])
    command = [sys.executable, os.path.join(ROOT, "cli.py"), "--backend", args.backend,
               "train", "--data-dir", os.path.abspath(args.train_data)]
    if args.resume and resumable:  # the run's own config, if it is this comparison's
        with open(os.path.join(run_dir, "config.json")) as f:
            saved = json.load(f)
        differ = {k: (saved.get(k), v) for k, v in sets.items() if not same(saved.get(k), v)}
        with open(os.path.join(run_dir, "split.json")) as f:  # the same pixels, not a twin
            pixels = json.load(f).get("train_pixels_sha256")
        if pixels != splits.info["train_pixels_sha256"]:
            differ["train_pixels_sha256"] = (pixels, splits.info["train_pixels_sha256"])
        if differ:
            sys.exit(f"ours, seed {seed}: {run_dir} was trained with {differ} (saved, asked): "
                     f"not this comparison's run; run without --resume to start it again")
        log(f"  resuming {run_dir}")
        command += ["--resume", run_dir]
    else:
        command += ["--config", "cm_vanilla", "--run-dir", run_dir, "--overwrite"]
        for key, value in sets.items():
            command += ["--set", f"{key}={value}"]
    if args.time_limit:
        command += ["--time-limit", f"{max(args.deadline - time.time(), 1):.0f}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    out = run_or_exit(command, args.timeout, f"ours, seed {seed}", env=env, cwd=ROOT,
                      ok=(0, EXIT_STOPPED))
    log("\n".join("  " + line for line in out.stdout.splitlines()
                  if line.startswith(("epoch ", "model:", "augmentation:", "training step:"))))
    if out.returncode == EXIT_STOPPED:
        stopped(log, f"ours, seed {seed}: stopped at --time-limit, saved in {run_dir}")
    with open(os.path.join(run_dir, "split.json")) as f:
        split = json.load(f)
    for key in ("train_indices_sha256", "val_indices_sha256"):
        if split.get(key) != splits.info[key]:
            sys.exit(f"ours, seed {seed}: split.json's {key} {split.get(key)} is not the "
                     f"split this script drew ({splits.info[key]}): the two sides would "
                     f"not train on the same images")
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    records = [{"epoch": m["epoch"], "loss": m["loss"], "accuracy": m["accuracy"],
                "val_loss": m["val_loss"], "val_accuracy": m["val_accuracy"],
                "seconds": m["epoch_seconds"]} for m in metrics]
    return records, score_ours(args, seed, run_dir, splits)


def score_ours(args, seed, run_dir, splits):
    """The final model scored on the validation images in each form by ``cli.py evaluate``
    as a user runs it (``--data-dir`` the other form), which checks that they are the
    run's split; its per-image predictions checked against the split's names here too."""
    scores = {}
    for form, data in zip(args.forms, (args.train_data, args.score_data)):
        if not data:
            continue
        out = os.path.join(run_dir, f"eval-{form}")
        command = [sys.executable, os.path.join(ROOT, "cli.py"), "--backend", args.backend,
                   "evaluate", run_dir, "--data-dir", os.path.abspath(data), "--out", out,
                   "--json"]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        done = run_or_exit(command, 900, f"ours, seed {seed}: evaluate on {form}", env=env,
                           cwd=ROOT)
        result = json.loads(done.stdout)
        names = splits.val.names and names_digest(splits.val.names)
        if result["data"]["names_sha256"] != names:
            sys.exit(f"ours, seed {seed}: evaluate read {result['data']['names_sha256']} on "
                     f"{form}, not the split's validation images ({names})")
        scores[form] = score_record(result["predicted"], splits.val.labels)
    return scores


def score_record(predicted, labels):
    """top-1 and which images were right (a string of 0 and 1: the paired tests' input)."""
    right = np.asarray(predicted) == np.asarray(labels)
    return {"top1": float(right.mean()), "correct": "".join("01"[int(r)] for r in right)}


def same(saved, asked):
    """Whether a config value saved in ``config.json`` is the ``--set`` value asked."""
    try:
        return float(saved) == float(asked)
    except (TypeError, ValueError):
        return str(saved).lower() == str(asked).lower()


# ----------------------------------------------------------------------------- reference
def train_reference(args, seed, splits, log):
    """The paper's ``train.py`` loop (``ref_train.train``) on ``splits``' images; its
    per-epoch records."""
    from reproduce import ref_train

    spec = {key: getattr(args, key) for key in ("width", "depth", "patch_size", "kernel_size",
                                               "activation", "skip_period", "epochs",
                                               "batch_size", "lr", "device", "workers")}
    spec.update(seed=seed, drop=[TORCHVISION[stage] for stage in args.drop])
    if args.names_from or args.score_data:  # its images too (a resume on others is refused)
        spec.update(train_pixels_sha256=splits.info["train_pixels_sha256"])
    run_dir = os.path.join(args.work, f"reference-{seed}")
    os.makedirs(run_dir, exist_ok=True)
    checkpoint = os.path.join(run_dir, ref_train.CHECKPOINT)
    spec_path = os.path.join(run_dir, "spec.json")
    if os.path.exists(checkpoint) and args.resume:  # it goes on after its last epoch
        with open(spec_path) as f:
            saved = json.load(f)
        if saved != spec:
            sys.exit(f"reference, seed {seed}: {run_dir} was trained with "
                     f"{ {k: saved.get(k) for k in spec if saved.get(k) != spec[k]} }, not "
                     f"this comparison's spec; run without --resume to start it again")
    elif os.path.exists(checkpoint):
        os.remove(checkpoint)  # a new run
    write_text(spec_path, json.dumps(spec, indent=1))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    # An epoch's time before the deadline: the next epoch would not end before it.
    records, model, finished = ref_train.train(
        spec, splits, log, run_dir=run_dir,
        stop=lambda seconds: bool(args.time_limit) and time.time() + seconds > args.deadline)
    if not finished:
        stopped(log, f"reference, seed {seed}: stopped before --time-limit, saved in {run_dir}")
    scores = {}
    for form, images in zip(args.forms, (splits.val, args.score_split)):
        if images is not None:
            scores[form] = score_record(ref_train.predict(model, images.images, args.device),
                                        splits.val.labels)
    if args.device == "cuda":
        import torch

        del model
        torch.cuda.empty_cache()  # our next run's JAX takes most of the GPU's memory at start
    return records, scores


class Stopped(Exception):
    """``--time-limit`` reached, a run saved where it resumes: ``main`` writes what it has
    and exits 7 (as ``cli.py train``)."""


def stopped(log, message):
    raise Stopped(message + "; --resume goes on from there")
