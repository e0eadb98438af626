#!/usr/bin/env python3
"""Whole training runs, ours against the reference's, on the same images and split.

    python bench/equivalence.py --data cifar-10-python.tar.gz       # 38 min on 2 CPU cores

For each seed, trains the same model twice on the same training images and scores it each
epoch on the same validation images:

- **ours**: ``cli.py train`` (the configs' recipe: AdamW, the one-cycle per step, the
  paper's augmentation chain in our pipeline), as a user runs it; ``--backend jax`` runs
  the GPU runs' path (Keras on JAX, the augmentation as layers in the compiled step);
- **the reference**: the training loop of the paper's ``train.py`` transcribed step for
  step (the reference network of ``bench/ref_torch.py``, torchvision's transforms on PIL
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
the last epoch's (the reference scores its runs with the last weights). ``--redraw DIR``
draws ``curves.png`` again from ``DIR/results.json`` (a host without matplotlib).

Long comparisons span commands: ``--resume`` with the same arguments keeps the runs that
``--out`` holds and resumes a run cut off from its folder under ``--work`` (ours from its
checkpoint, mid-epoch; the reference's after its last epoch). The sides can run as two
commands side by side (``--sides ours`` and ``--sides reference --threads 1``, each with
its own ``--out``); ``--join A,B --out C`` then reads them as one comparison.
Needs ``pip install -r bench/requirements.txt`` (torch, torchvision).
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cmxl_keras.data import read_data_dir  # noqa: E402
from cmxl_keras.splitting import make_splits  # noqa: E402
from cmxl_keras.runs import package_versions, write_text  # noqa: E402
from runner import run_or_exit  # noqa: E402
from equivalence_report import (draw, earlier, reading, redraw, summarize,  # noqa: E402,F401
                                summary_of, write_join)

# The paper's training augmentation, stage by stage: our config keys that turn each off,
# and the reference transform's class.
STAGES = ("crop", "flip", "randaugment", "jitter", "erase")
OFF = {"crop": {"crop_scale_min": 1.0}, "flip": {"flip": "false"},
       "randaugment": {"randaugment_ops": 0},
       "jitter": {"jitter_brightness": 0, "jitter_contrast": 0, "jitter_saturation": 0},
       "erase": {"erase_prob": 0}}
TORCHVISION = {"crop": "RandomResizedCrop", "flip": "RandomHorizontalFlip",
               "randaugment": "RandAugment", "jitter": "ColorJitter", "erase": "RandomErasing"}
PACKAGES = ("numpy", "keras", "tensorflow", "jax", "torch", "torchvision", "pillow")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--redraw", metavar="DIR",
                        help="only draw DIR/curves.png again from DIR/results.json")
    parser.add_argument("--join", metavar="DIR,DIR",
                        help="only join the runs in these folders' results.json (the same "
                             "images, split and model; other seeds or sides) into --out")
    parser.add_argument("--resume", action="store_true",
                        help="go on with --out's runs: the seeds finished there are kept, a "
                             "run cut off resumes from its folder under --work")
    parser.add_argument("--data",
                        help="the images: what cli.py's --data-dir takes (official CIFAR-10 "
                             "files or archive, or train/<class>/ images, or their .tar.gz)")
    parser.add_argument("--train", type=int, default=5120, help="training images")
    parser.add_argument("--val", type=int, default=2500, help="validation images")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--seeds", default="1204,1205,1206,1207,1208",
                        help="comma-separated; each trains both sides once")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.005, help="the one-cycle's peak")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--kernel-size", type=int, default=5)
    parser.add_argument("--activation", default="gelu")
    parser.add_argument("--skip-period", type=int, default=0)
    parser.add_argument("--backend", default="tensorflow", choices=("tensorflow", "jax"),
                        help="ours: the Keras backend")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                        help="the reference: where it trains (fp16 autocast on cuda; auto: "
                             "cuda where there is one)")
    parser.add_argument("--workers", type=int, default=1,
                        help="the reference's DataLoader workers (its script: 8)")
    parser.add_argument("--threads", type=int, default=0,
                        help="the reference's torch threads (0: torch's default); with a "
                             "second command running the other side beside it")
    parser.add_argument("--drop", default="",
                        help="augmentation stages left out on both sides, comma-separated: "
                             f"{', '.join(STAGES)} (all: no augmentation); to find which "
                             "stage a difference comes from")
    parser.add_argument("--sides", default="ours,reference")
    parser.add_argument("--out", help="default: results/equivalence/<time>")
    parser.add_argument("--work", default=os.path.join(".equivalence"),
                        help="our runs' folders (kept; git-ignored)")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds one run of ours may take")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    args.drop = STAGES if args.drop.strip() == "all" else [
        s.strip() for s in args.drop.split(",") if s.strip()]
    if set(args.drop) - set(STAGES):
        parser.error(f"--drop takes {', '.join(STAGES)} or all (got {args.drop})")
    unknown = set(args.sides) - {"ours", "reference"}
    args.join = [d for d in (args.join or "").split(",") if d.strip()]
    if args.join and not args.out:
        parser.error("--join needs --out: the folder for the joined reading")
    args.out = args.out or os.path.join("results", "equivalence",
                                        time.strftime("%Y-%m-%d_%H%M%S"))
    if not args.data and not args.redraw and not args.join:
        parser.error("--data is required: the images both sides train on")
    if unknown or not args.seeds:
        parser.error(f"--sides takes ours and/or reference (got {sorted(unknown)}); "
                     f"--seeds takes at least one integer")
    return args


class Log:
    """Prints and keeps every line, for ``log.txt``."""

    def __init__(self):
        self.lines = []

    def __call__(self, text):
        print(text, flush=True)
        self.lines.append(text)


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
               "train", "--data-dir", os.path.abspath(args.data)]
    if args.resume and resumable:  # the run's own config, if it is this comparison's
        with open(os.path.join(run_dir, "config.json")) as f:
            saved = json.load(f)
        differ = {k: (saved.get(k), v) for k, v in sets.items() if not same(saved.get(k), v)}
        if differ:
            sys.exit(f"ours, seed {seed}: {run_dir} was trained with {differ} (saved, asked): "
                     f"not this comparison's run; run without --resume to start it again")
        log(f"  resuming {run_dir}")
        command += ["--resume", run_dir]
    else:
        command += ["--config", "cm_vanilla", "--run-dir", run_dir, "--overwrite"]
        for key, value in sets.items():
            command += ["--set", f"{key}={value}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    out = run_or_exit(command, args.timeout, f"ours, seed {seed}", env=env, cwd=ROOT)
    log("\n".join("  " + line for line in out.stdout.splitlines()
                  if line.startswith(("epoch ", "model:", "augmentation:", "training step:"))))
    with open(os.path.join(run_dir, "split.json")) as f:
        split = json.load(f)
    for key in ("train_indices_sha256", "val_indices_sha256"):
        if split.get(key) != splits.info[key]:
            sys.exit(f"ours, seed {seed}: split.json's {key} {split.get(key)} is not the "
                     f"split this script drew ({splits.info[key]}): the two sides would "
                     f"not train on the same images")
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    return [{"epoch": m["epoch"], "loss": m["loss"], "accuracy": m["accuracy"],
             "val_loss": m["val_loss"], "val_accuracy": m["val_accuracy"],
             "seconds": m["epoch_seconds"]} for m in metrics]


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
    import ref_train

    spec = {key: getattr(args, key) for key in ("width", "depth", "patch_size", "kernel_size",
                                               "activation", "skip_period", "epochs",
                                               "batch_size", "lr", "device", "workers")}
    spec.update(seed=seed, drop=[TORCHVISION[stage] for stage in args.drop])
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
    records, model, _ = ref_train.train(spec, splits, log, run_dir=run_dir)
    if args.device == "cuda":
        import torch

        del model
        torch.cuda.empty_cache()  # our next run's JAX takes most of the GPU's memory at start
    return records


def machine(args, seconds):
    gpu = None
    if args.device == "cuda":
        import torch

        gpu = torch.cuda.get_device_name(0)
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "cpus": os.cpu_count(), "gpu": gpu, "packages": package_versions(PACKAGES),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"), "seconds": round(seconds, 1),
            "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])}


def main(argv=None):
    args = parse_args(argv)
    if args.redraw:
        return redraw(args.redraw)
    if args.join:
        return write_join(args.join, args.out)
    started = time.time()
    log = Log()
    raw = read_data_dir(args.data)
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
    trainers = {"ours": train_ours, "reference": train_reference}
    runs = {side: [] for side in args.sides}
    results = {"config": config, "runs": runs}
    if args.resume:
        args.earlier = earlier(args.out, results, log)
    for seed in args.seeds:  # the sides alternate, so a drift in the machine meets both
        for side in args.sides:
            if any(r["seed"] == seed for r in runs[side]):
                continue  # finished by an earlier command (--resume)
            log(f"{side}, seed {seed}:")
            t0 = time.time()
            epochs = trainers[side](args, seed, splits, log)
            runs[side].append({"seed": seed, "epochs": epochs,
                               "seconds": round(time.time() - t0, 1)})
            log(f"{side}, seed {seed}: final top-1 {epochs[-1]['val_accuracy'] * 100:.2f} % "
                f"({time.time() - t0:.0f} s)")
            write(args, results, log, started)  # a run cut off keeps the finished ones
    for line in reading(summary_of(results)):
        log(line)
    write(args, results, log, started)
    print(f"wrote {args.out}/: results.json, curves.png, log.txt, machine.json")
    return results


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
    except ImportError:  # a host without matplotlib: --redraw draws it from results.json
        pass


if __name__ == "__main__":
    main()
