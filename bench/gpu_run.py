#!/usr/bin/env python3
"""One command for a GPU host that has JAX and PyTorch but no TensorFlow and no network:
set up, then work through the GPU campaign's queue of training runs (the reference's own
loop and ours, every Table-1 row), each resumed wherever it stopped, across as many short
GPU periods as it takes; the smoke step and the speed bench when the code they measure
changed.

Three steps, each one command:

    python bench/gpu_run.py --plan --data cifar10-train.tar.gz    # here, with a network
    OUT=/path/to/out python3 bench/gpu_run.py                      # there, from the repo root
    python bench/gpu_run.py --collect /path/to/out                 # here, afterwards

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
    queue.txt     the jobs of ``gpu_queue.QUEUE`` in order (``--jobs`` picks), each on the
                  training images less 1,000 carved for monitoring, with the paper's 100
                  epochs: the reference's loop (``bench/ref_train.py``) and ours (``cli.py
                  --backend jax train``), seeds 1204 and 1205, then the other rows; each
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
    equivalence.txt  only when asked (``--phases``): ``bench/equivalence.py`` on the same
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

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_carry  # noqa: E402
import gpu_period  # noqa: E402
import gpu_probe  # noqa: E402

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--plan", action="store_true",
                      help="fill the carry folder here and print the invocation")
    mode.add_argument("--collect", metavar="DIR",
                      help="file what a period returned (its output folder) under --results")
    mode.add_argument("--smoke-step", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--carry", default=".gpu",
                        help="the carry folder (default .gpu, relative to the repository)")
    parser.add_argument("--work", default=".gpu-work",
                        help="where the host unpacks and trains (default .gpu-work)")
    parser.add_argument("--results", default=os.path.join("results", "gpu"),
                        help="the committed runs and period logs (default results/gpu)")
    parser.add_argument("--data", help="--plan: the training images to carry: a .tar.gz "
                                       "of train/<class>/* images, an official CIFAR-10 "
                                       "archive, or a folder of train/<class>/ images")
    parser.add_argument("--python-version", default="3.12",
                        help="--plan: the GPU host's Python, for the wheels (default 3.12)")
    parser.add_argument("--out", default=os.environ.get("OUT"),
                        help="the output folder (default $OUT)")
    parser.add_argument("--budget", type=float, default=560,
                        help="seconds the whole command may take (default 560)")
    parser.add_argument("--phases", default="auto",
                        help=f"auto (default: setup, queue, and smoke and bench when the "
                             f"code they measure changed), or any of "
                             f"{','.join(gpu_period.PHASES)}")
    parser.add_argument("--jobs", default="",
                        help="the queue's jobs to work through, in its order (default: "
                             "every job but the gated CM-XL ones)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="config overrides for every job (a rehearsal's sizes); "
                             "repeatable")
    parser.add_argument("--val-from-train", type=int, default=1000,
                        help="training images carved out to monitor the run (default 1000)")
    parser.add_argument("--precision", default="mixed_float16",
                        help="our jobs', the smoke step's and the bench's precision")
    parser.add_argument("--train-seconds", type=float,
                        help="a job's --time-limit, if less than the budget leaves")
    parser.add_argument("--min-job-seconds", type=float, default=90,
                        help="no job starts or resumes with less time left (default 90)")
    parser.add_argument("--ref-workers", type=int, default=8,
                        help="the reference's DataLoader workers (default 8, its own)")
    parser.add_argument("--transfer-limit", type=float,
                        default=gpu_carry.TRANSFER_LIMIT_MIB,
                        help="--plan: MiB that may travel (default %(default)s)")
    parser.add_argument("--profile-args", default="--model xl --steps 20",
                        help="bench_profile.py's arguments (phase profile, only when "
                             "asked; default: %(default)s)")
    parser.add_argument("--variants-args", default="--model xl --steps 20",
                        help="bench_variants.py's arguments (phase variants, only when "
                             "asked; default: %(default)s)")
    parser.add_argument("--bench-models", default="vanilla,xl")
    parser.add_argument("--bench-args", default="--steps 20 --infer-batches 20",
                        help="more bench_train.py arguments (default: %(default)s)")
    parser.add_argument("--equivalence-args", default=EQUIVALENCE_ARGS,
                        help="bench/equivalence.py's arguments (default: %(default)s)")
    parser.add_argument("--comparison-args", default=COMPARISON_ARGS,
                        help="bench/equivalence.py's arguments for the comparison jobs "
                             "(jpeg-cost-*; default: %(default)s)")
    parser.add_argument("--lossless", metavar="ARCHIVE",
                        help="--plan: the lossless images (a .tar.gz of train/<class>/*.png "
                             "named as their JPEG twins among --data's) that the comparison "
                             "jobs train and score on")
    parser.add_argument("--arch", default="",
                        help="architecture keys replacing the smoke step's and the bench's "
                             "(e.g. width=32,depth=2: a rehearsal on a CPU)")
    args = parser.parse_args()
    os.chdir(ROOT)  # relative paths (and the run's data_dir) are the repository's
    if args.plan:
        return gpu_carry.plan(args)
    if args.collect:
        return gpu_carry.collect(args, gpu_period.PHASES)
    if args.smoke_step:
        return gpu_probe.smoke_step(args)
    if not args.out:
        sys.exit("gpu_run: no output folder: set OUT (or pass --out DIR).")
    unknown = set(args.phases.split(",")) - set(gpu_period.PHASES) - {"auto"}
    if unknown:
        sys.exit(f"gpu_run: --phases {args.phases}: unknown {', '.join(sorted(unknown))}; "
                 f"use auto, or any of {', '.join(gpu_period.PHASES)}.")
    try:
        gpu_period.gpu_queue.select([j for j in args.jobs.split(",") if j])
    except ValueError as error:
        sys.exit(f"gpu_run: {error}")
    return gpu_period.Period(args).run()


if __name__ == "__main__":
    sys.exit(main())
