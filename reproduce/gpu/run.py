#!/usr/bin/env python3
"""One command for a GPU host that has JAX and PyTorch but no TensorFlow and no network:
set up, then work through the GPU campaign's queue of training runs (the reference's own
loop and ours, every Table-1 row), each resumed wherever it stopped, across as many short
GPU periods as it takes; the smoke step and the speed bench when the code they measure
changed.

Three steps, each one command:

    python -m reproduce gpu --plan --data cifar10-train.tar.gz    # here, with a network
    OUT=/path/to/out python3 -m reproduce gpu                      # there, from the repo root
    python -m reproduce gpu --collect /path/to/out                 # here, afterwards

``--plan`` fills the carry folder ``.gpu/`` (git-ignored): the wheels the host lacks
(keras, optree, namex, for its Python), and the training images (a ``.tar.gz`` of
``train/<class>/*`` images, or an official CIFAR-10 archive). It prints what travels part
by part (the repository's code and records, finished runs, running jobs' state, the
shipped model; the carry folder's wheels and images) and fails when the sum passes the
64 MiB a transfer may hold; it says which jobs resume and whether the bench will run.

The command (``OUT`` names the output folder) goes through these phases, each with its
own time cap, each writing its output to ``OUT`` as it goes, so a command cut off still
returns what it finished (at most 8 files come back: these):

    setup.txt     installs the wheels, unpacks the images, prints the GPU, versions, memory;
                  on a warm machine (a second command in the same period: the work folder
                  ``.gpu-work/`` is still there) it reuses all three and carries nothing
    smoke.txt     one compiled training step of CM-Vanilla: JAX, mixed_float16, the
                  augmentation as Keras layers on the device
    bench.txt     bench_train.py on the GPU, CM-Vanilla and CM-XL, batch 128: ours (JAX,
                  compiled, with and without the device augmentation, and from device
                  arrays) against the reference (fp16 autocast + GradScaler) from GPU
                  tensors, tuned as a
                  competent PyTorch user runs it (torch.compile, channels_last,
                  cudnn.benchmark, fused AdamW; its compile time apart), and fed as the
                  paper's script feeds it (torchvision transforms, DataLoader, 8 workers)
    queue.txt     the jobs of ``campaign.QUEUE`` in order (``--jobs`` picks), each on the
                  training images less 1,000 carved for monitoring, with the paper's 100
                  epochs: the reference's loop (``python -m reproduce reference-loop``)
                  and ours (``cli.py --backend jax train``), seeds 1204 and 1205, then the other rows; each
                  resumes from the folder left on this warm machine, else its committed
                  ``results/gpu/<job>/state.tgz``; stopped by its own time limit before
                  the command's time is up, saved
    profile.txt   only when asked (``--phases``): ``bench/bench_profile.py``, CM-XL's
                  training step (the device augmentation in it) under JAX's profiler: the
                  top kernels, the share of each part of the recipe and of each pass
                  (``summary.json`` carries it whole; ``--collect`` writes profile.json)
    variants.txt  only when asked (``--phases``): ``bench/bench_variants.py``, CM-XL's
                  training step in the formulations a profile points at (bf16, float32,
                  the depthwise convolution as shifted multiply-adds, XLA flags)
    equivalence.txt  only when asked (``--phases``): ``python -m reproduce compare`` on the same
                  images, ours (JAX) against the reference's loop, short one-cycles
    jobs.tar      each job this machine took further than its committed state, packed:
                  resumable while unfinished, only what a user needs once finished
                  (``jobs.tar.00``, ``.01``, ... past 15 MiB)
    summary.json  every phase's status and seconds; each job's state

By default (``--phases auto``) the smoke step and the bench run only when the code they
measure changed since the filed bench (``results/gpu/bench.json``) and since a bench on
this machine. ``--collect`` files what came back: a finished job as
``results/gpu/<job>/run.tgz`` with its records beside it (it never runs or travels
again), an unfinished one as ``state.tgz``, the logs under ``results/gpu/periods/``, and
regenerates the Table-1 page (``docs/table1.md``). On a GPU host of your own (with the
packages of ``requirements-gpu.txt``), the same command works without the wheels.
"""

import os
import sys
import types

import click

from cmxl_keras.cli_support import stops_as_errors
from reproduce import ROOT
from reproduce.gpu import carry, period, probe

# The equivalence phase's default: CM-Vanilla itself, ours (JAX) against the reference's
# loop (DataLoader, 8 workers, fp16 autocast), two seeds of a 10-epoch one-cycle: about
# 205 s a seed on an H200 (ours 118 s with its compilation and start, the reference 84 s).
EQUIVALENCE_ARGS = ("--width 256 --depth 8 --patch-size 2 --train 45000 --val 5000 "
                    "--epochs 10 --seeds 1204,1205 --workers 8")
# The comparison jobs' (what the JPEG images cost): CM-Vanilla, the paper's 100 epochs,
# both loops, three seeds, on the 5,085 lossless images' split (4,096 training, 32 whole
# batches; 989 validation), as the CPU-scale 2 x 2 of results/jpeg-cost/cpu/ splits them.
COMPARISON_ARGS = ("--width 256 --depth 8 --patch-size 2 --kernel-size 5 --train 4096 "
                   "--val 989 --epochs 100 --seeds 1204,1205,1206")


@click.command(epilog="Phases, records and the transfer: reproduce/gpu/README.md and "
                      "docs/gpus.md, \"Training on a GPU\".")
@click.option("--plan", is_flag=True,
              help="Here, with a network: fill the carry folder and print what travels.")
@click.option("--collect", metavar="DIR",
              help="Here, afterwards: file what a period returned (its output folder) under "
                   "--results and regenerate the Table-1 page.")
@click.option("--smoke-step", is_flag=True, hidden=True)
@click.option("--carry", "carry_dir", default=".gpu", show_default=True,
              help="The carry folder, relative to the repository.")
@click.option("--work", default=".gpu-work", show_default=True,
              help="Where the host unpacks and trains.")
@click.option("--results", default=os.path.join("results", "gpu"), show_default=True,
              help="The committed runs and period logs.")
@click.option("--data", help="--plan: the training images to carry: a .tar.gz of "
                             "train/<class>/* images, an official CIFAR-10 archive, or a "
                             "folder of train/<class>/ images.")
@click.option("--lossless", metavar="ARCHIVE",
              help="--plan: the lossless images (a .tar.gz of train/<class>/*.png named as "
                   "their JPEG twins among --data's) that the comparison jobs train and "
                   "score on.")
@click.option("--python-version", default="3.12", show_default=True,
              help="--plan: the GPU host's Python, for the wheels.")
@click.option("--transfer-limit", type=float, default=carry.TRANSFER_LIMIT_MIB,
              show_default=True, help="--plan: MiB that may travel.")
@click.option("--out", default=lambda: os.environ.get("OUT"),
              help="The output folder that comes back (default: $OUT).")
@click.option("--budget", type=float, default=560, show_default=True,
              help="Seconds the whole command may take.")
@click.option("--phases", default="auto", show_default=True,
              help=f"auto (setup, queue, and smoke and bench when the code they measure "
                   f"changed), or any of {','.join(period.PHASES)}.")
@click.option("--jobs", default="",
              help="The queue's jobs to work through, in its order (default: every job but "
                   "the gated CM-XL ones).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Config overrides for every job (a rehearsal's sizes); repeatable.")
@click.option("--val-from-train", type=int, default=1000, show_default=True,
              help="Training images carved out to monitor each run.")
@click.option("--precision", default="mixed_float16", show_default=True,
              help="Our jobs', the smoke step's and the bench's precision.")
@click.option("--train-seconds", type=float,
              help="A job's --time-limit, if less than the budget leaves.")
@click.option("--min-job-seconds", type=float, default=90, show_default=True,
              help="No job starts or resumes with less time left.")
@click.option("--ref-workers", type=int, default=8, show_default=True,
              help="The reference's DataLoader workers (its own 8).")
@click.option("--profile-args", default="--model xl --steps 20", show_default=True,
              help="bench/bench_profile.py's arguments (phase profile, only when asked).")
@click.option("--variants-args", default="--model xl --steps 20", show_default=True,
              help="bench/bench_variants.py's arguments (phase variants, only when asked).")
@click.option("--bench-models", default="vanilla,xl", show_default=True,
              help="The models bench/bench_train.py measures (phase bench).")
@click.option("--bench-args", default="--steps 20 --infer-batches 20", show_default=True,
              help="More bench/bench_train.py arguments.")
@click.option("--equivalence-args", default=EQUIVALENCE_ARGS, show_default=True,
              help="compare's arguments for the equivalence phase (only when asked).")
@click.option("--comparison-args", default=COMPARISON_ARGS, show_default=True,
              help="compare's arguments for the comparison jobs (jpeg-cost-*).")
@click.option("--arch", default="",
              help="Architecture keys replacing the smoke step's and the bench's (e.g. "
                   "width=32,depth=2: a rehearsal on a CPU).")
@stops_as_errors
def gpu(**options):
    """The GPU campaign's queue, one command a short GPU period.

    \b
    python -m reproduce gpu --plan --data cifar10-train-jpeg.tar.gz   # here
    OUT=/path/to/out python3 -m reproduce gpu       # there, from the repository's root
    python -m reproduce gpu --collect /path/to/out  # here, afterwards

    On a GPU host with JAX and PyTorch but no TensorFlow and no network: set up, then work
    through the queue of 100-epoch runs (the reference's own loop and ours, every Table-1
    row, the comparison jobs), each resumed wherever it stopped; the smoke step and the
    speed bench when the code they measure changed.
    """
    args = types.SimpleNamespace(**options)
    args.carry = args.carry_dir
    args.overrides = list(args.overrides)
    if args.plan and args.collect:
        raise click.UsageError("--plan and --collect: give one of them (--plan before a "
                               "period, --collect after it).")
    os.chdir(ROOT)  # relative paths (and the run's data_dir) are the repository's
    if args.plan:
        return carry.plan(args)
    if args.collect:
        return carry.collect(args, period.PHASES)
    if args.smoke_step:
        return probe.smoke_step(args)
    if not args.out:
        raise click.UsageError("no output folder: set OUT (or pass --out DIR), the folder "
                               "whose files come back from the GPU host.")
    unknown = set(args.phases.split(",")) - set(period.PHASES) - {"auto"}
    if unknown:
        raise click.BadParameter(f"{args.phases!r}: unknown {', '.join(sorted(unknown))}; "
                                 f"use auto, or any of {', '.join(period.PHASES)}.",
                                 param_hint="--phases")
    try:
        period.campaign.select([j for j in args.jobs.split(",") if j])
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--jobs") from None
    code = period.Period(args).run()
    if code:
        sys.exit(code)
