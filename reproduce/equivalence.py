"""Whole training runs, ours against the reference's, on the same images and split.

    python -m reproduce compare --data-dir cifar-10-python.tar.gz       # 38 min on 2 CPU cores

For each seed, trains the same model twice on the same training images and scores it each
epoch on the same validation images:

- **ours**: ``cli.py train`` (the configs' recipe: AdamW, the one-cycle per step, the
  paper's augmentation chain in our pipeline), as a user runs it; ``--backend jax`` runs
  the GPU runs' path (Keras on JAX, the augmentation as layers in the compiled step);
- **the reference**: the training loop of the paper's ``train.py`` transcribed step for
  step (the reference network of ``reproduce/ref_torch.py``, torchvision's transforms on PIL
  images in a ``DataLoader``, AdamW, the learning rate set before every step to
  ``np.interp(epoch + (i + 1) / len(loader), [0, 2E//5, 4E//5, E], [0, lr, lr/20, 0])``,
  fp16 autocast and GradScaler on a GPU only, the seeds set as it sets them).

The split is drawn once by ``cmxl_keras.splitting.make_splits`` (``--train`` images drawn
stratified at random and ``--val`` carved out, with ``--split-seed``); the script checks
that our run's ``split.json`` names the same images by their digests. The seeds vary the
initialization, the order and the augmentation draws, on both sides alike.

The defaults are the committed run's (``results/equivalence/torchvision-crop-5120/``):
ConvMixer-64/8 with 4x4 patches, 5,120 training images (40 full batches of 128: the
reference trains each epoch's left-over images as a last, smaller batch, ours never does,
so a size that leaves none compares the two) and 2,500 validation images, 20 epochs, five
seeds a side.

Writes to ``--out`` (default ``results/equivalence/<time>``): ``results.json`` (every run's
curves, each side's final top-1 mean and sample standard deviation, the difference and
its standard error, the gap between the sides' mean curves epoch by epoch, the reading),
``curves.png`` (the validation curves of both sides, and the gap with two standard errors),
``log.txt`` (everything printed) and ``machine.json`` (host, versions, time), all of them
again after every run, so a command cut off keeps the runs it finished. The final top-1 is
the last epoch's (the reference scores its runs with the last weights). ``python -m
reproduce redraw DIR`` draws ``curves.png`` again from ``DIR/results.json`` (a host without
matplotlib).

Long comparisons span commands: ``--resume`` with the same arguments keeps the runs that
``--out`` holds and resumes a run cut off from its folder under ``--work`` (ours from its
checkpoint, mid-epoch; the reference's after its last epoch). The sides can run as two
commands side by side (``--sides ours`` and ``--sides reference --threads 1``, each with
its own ``--out``); ``python -m reproduce join A B --out C`` then reads them as one
comparison. Needs ``pip install -r reproduce/requirements.txt`` (torch, torchvision).
"""

import datetime
import json
import os
import platform
import sys
import time

import numpy as np

import reproduce
from cmxl_keras.config import parse_seeds
from cmxl_keras.data import image_files, names_digest, read_data_dir, select_names, write_twins
from cmxl_keras.errors import ConfigError
from cmxl_keras.runs import package_versions, write_text
from cmxl_keras.splitting import make_splits, pixels_digest
from reproduce.equivalence_report import earlier, draw, reading, summary_of
from reproduce.equivalence_sides import (EXIT_STOPPED, STAGES, Stopped, stopped, train_ours,
                                         train_reference)

PACKAGES = ("numpy", "keras", "tensorflow", "jax", "torch", "torchvision", "pillow")


def check(args):
    """``compare``'s options (``reproduce/cli.py``) as the runs take them: the lists split,
    ``--device auto`` resolved, the default ``--out``; a bad value is a ``ConfigError``."""
    args.seeds = list(parse_seeds(args.seeds))
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = sorted(set(args.sides) - {"ours", "reference"})
    if unknown or not args.sides:
        raise ConfigError(f"--sides {','.join(args.sides)!r}: unknown side "
                          f"{', '.join(unknown) or '(none given)'}; give ours, reference or "
                          f"ours,reference.")
    args.drop = list(STAGES) if args.drop.strip() == "all" else [
        s.strip() for s in args.drop.split(",") if s.strip()]
    if set(args.drop) - set(STAGES):
        raise ConfigError(f"--drop {','.join(args.drop)!r}: unknown stage "
                          f"{', '.join(sorted(set(args.drop) - set(STAGES)))}; give any of "
                          f"{', '.join(STAGES)}, comma-separated, or all.")
    args.forms = [f.strip() for f in args.forms.split(",")]
    if len(args.forms) != 2 or not all(args.forms) or args.forms[0] == args.forms[1]:
        raise ConfigError(f"--forms {','.join(args.forms)!r}: give two different names, "
                          f"comma-separated: --data-dir's form, then --score-data's (e.g. "
                          f"lossless,jpeg).")
    args.out = args.out or os.path.join("results", "equivalence",
                                        time.strftime("%Y-%m-%d_%H%M%S"))
    return args


class Log:
    """Prints and keeps every line, for ``log.txt``."""

    def __init__(self):
        self.lines = []

    def __call__(self, text):
        print(text, flush=True)
        self.lines.append(text)


def machine(args, seconds):
    gpu = None
    if args.device == "cuda":
        import torch

        gpu = torch.cuda.get_device_name(0)
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "cpus": os.cpu_count(), "gpu": gpu, "packages": package_versions(PACKAGES),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"), "seconds": round(seconds, 1),
            "command": reproduce.command_line()}


def main(args):
    """Trains and reads the comparison ``args`` (``check``'s) asks for; exits
    ``EXIT_STOPPED`` when ``--time-limit`` stopped it, resumable."""
    started = time.time()
    args.deadline, args.started_one = started + (args.time_limit or 0), False
    log = Log()
    args.train_data = training_data(args, log)
    raw = read_data_dir(args.train_data)
    splits = make_splits(raw, val_from_train=args.val, limit_train=args.train,
                         seed=args.split_seed, log=log)
    log(f"data: {raw.description}; {len(splits.train.labels):,} training and "
        f"{len(splits.val.labels):,} validation images (split seed {args.split_seed})")
    config = {k: getattr(args, k) for k in (
        "train", "val", "split_seed", "seeds", "epochs", "batch_size", "lr", "width", "depth",
        "patch_size", "kernel_size", "activation", "skip_period", "backend", "device",
        "workers", "drop")}
    config.update(data=raw.description, train_indices_sha256=splits.info["train_indices_sha256"],
                  val_indices_sha256=splits.info["val_indices_sha256"])
    if args.names_from or args.score_data:  # only then: earlier comparisons resume as they were
        config.update({key: splits.info.get(key) for key in (
            "train_names_sha256", "val_names_sha256", "train_pixels_sha256",
            "val_pixels_sha256")})
        # Where the images lie is said, not compared (--resume): the digests say which.
        config.update(forms=args.forms, paths={"data": args.data, "names_from":
                                               args.names_from, "score_data": args.score_data})
    args.score_split = scoring_split(args, raw, splits, log)
    if args.score_split is not None:
        config["score_pixels_sha256"] = pixels_digest(args.score_split.images)
    runs = {side: [] for side in args.sides}
    results = {"config": config, "runs": runs}
    if args.resume:
        args.earlier = earlier(args.out, results, log)
    try:
        train_all(args, splits, runs, results, log, started)
    except Stopped as stop:
        log(str(stop))
        write(args, results, log, started)
        sys.exit(EXIT_STOPPED)
    for line in reading(summary_of(results)):
        log(line)
    write(args, results, log, started)
    print(f"wrote {args.out}/: results.json, curves.png, log.txt, machine.json")
    return results


def training_data(args, log):
    """What both sides train on: ``--data``, or with ``--names-from`` its twins of those
    images, copied as they are into a .tar under ``--work`` (made once)."""
    if not args.names_from:
        return args.data
    os.makedirs(args.work, exist_ok=True)
    names = sorted(image_files(args.names_from)[0])
    path = os.path.join(args.work,
                        f"twins-{names_digest([os.path.abspath(args.data)] + names)}.tar")
    if not os.path.exists(path):
        count = write_twins(args.names_from, args.data, path)
        log(f"data: {count:,} images of {args.data} named as {args.names_from}'s, copied "
            f"into {path}")
    return path


def scoring_split(args, raw, splits, log):
    """``--score-data``'s twins of the validation images (None without it)."""
    if not args.score_data:
        return None
    if splits.val.names is None:
        sys.exit(f"--score-data: {raw.description} is not an image folder, so its "
                 f"validation images have no names to find in {args.score_data}")
    split = select_names(read_data_dir(args.score_data), splits.val.names, args.train_data)
    if not np.array_equal(split.labels, splits.val.labels):
        sys.exit(f"--score-data: {args.score_data}'s images of the validation names have "
                 f"other labels (class folders) than {args.train_data}'s")
    log(f"scored also on {args.score_data}: the {len(split):,} validation images by name "
        f"({args.forms[0]} and {args.forms[1]})")
    return split


def train_all(args, splits, runs, results, log, started):
    """Every seed's runs of every side not finished yet, each written when it ends."""
    trainers = {"ours": train_ours, "reference": train_reference}
    for seed in args.seeds:  # the sides alternate, so a drift in the machine meets both
        for side in args.sides:
            if any(r["seed"] == seed for r in runs[side]):
                continue  # finished by an earlier command (--resume)
            if args.time_limit and time.time() > args.deadline and args.started_one:
                stopped(log, f"{side}, seed {seed}: not started, --time-limit reached")
            args.started_one = True  # each command takes one run further, however short
            log(f"{side}, seed {seed}:")
            t0 = time.time()
            epochs, scores = trainers[side](args, seed, splits, log)
            runs[side].append({"seed": seed, "epochs": epochs,
                               "seconds": round(time.time() - t0, 1)})
            if scores:
                runs[side][-1]["scores"] = scores
            log(f"{side}, seed {seed}: final top-1 {epochs[-1]['val_accuracy'] * 100:.2f} %"
                + "".join(f"; on {form} {100 * v['top1']:.2f} %" for form, v in scores.items())
                + f" ({time.time() - t0:.0f} s)")
            write(args, results, log, started)  # a run cut off keeps the finished ones


def write(args, results, log, started):
    """``results.json`` (with the summary of the runs finished so far), the figure, the
    log and the machine record, each replaced whole."""
    results["summary"] = summary_of(results)
    os.makedirs(args.out, exist_ok=True)
    texts = {"results.json": json.dumps(results, indent=1),
             "machine.json": json.dumps(dict(machine(args, time.time() - started),
                                             earlier=getattr(args, "earlier", [])), indent=1),
             "log.txt": "\n".join(log.lines) + "\n"}
    for name, text in texts.items():
        write_text(os.path.join(args.out, name), text)
    try:
        draw(results, os.path.join(args.out, "curves.png"))
    except ImportError:  # a host without matplotlib: redraw draws it from results.json
        pass

