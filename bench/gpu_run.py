#!/usr/bin/env python3
"""One command for a GPU host that has JAX and PyTorch but no TensorFlow and no network:
set up, a smoke step, the speed of ours against the reference, and the paper's CM-Vanilla
run, continued across as many short GPU periods as it takes.

Three steps, each one command:

    python bench/gpu_run.py --plan --data cifar10-train.tar.gz    # here, with a network
    OUT=/path/to/out python3 bench/gpu_run.py                      # there, from the repo root
    python bench/gpu_run.py --collect /path/to/out                 # here, afterwards

``--plan`` fills the carry folder ``.gpu/`` (git-ignored): the wheels the host lacks
(keras, optree, namex, for its Python), and the training images (a ``.tar.gz`` of
``train/<class>/*`` images, or an official CIFAR-10 archive). It checks that the
repository and that folder together stay under the 64 MiB a transfer may hold, and prints
the invocation.

The run itself (``OUT`` names the output folder) goes through these phases, each with its
own time cap, each writing its output to ``OUT`` as it goes, so a command cut off still
returns what it finished (at most 8 files come back: these):

    setup.txt     installs the wheels, unpacks the images, prints the GPU, versions, memory
    smoke.txt     one compiled training step of CM-Vanilla: JAX, mixed_float16, the
                  augmentation as Keras layers on the device
    bench.txt     bench_train.py on the GPU, CM-Vanilla and CM-XL, batch 128: ours (JAX,
                  compiled, with and without the device augmentation) against the
                  reference (fp16 autocast + GradScaler) from GPU tensors and fed as the
                  paper's script feeds it (torchvision transforms, DataLoader, 8 workers)
    train.txt     ``cli.py train --config cm_vanilla`` (100 epochs, the real one-cycle) on
                  the training images less 1,000 carved for monitoring, checkpointing every
                  epoch, stopped by ``--time-limit`` before the command's time is up
    equivalence.txt  ``bench/equivalence.py`` on the same images: ours (JAX) against the
                  reference's training loop (torchvision transforms in a DataLoader, fp16
                  autocast), CM-Vanilla itself, two seeds of a 10-epoch one-cycle each
                  (``--equivalence-args``); it takes what the run leaves
    run.tgz       the run folder, packed (``run.tgz.00``, ``.01``, ... past 15 MiB), in as
                  many parts as the files above leave room for
    summary.json  every phase's status and seconds; the run's epochs so far; the
                  equivalence runs' results and machine (``--collect`` writes them as
                  ``bench/equivalence.py`` does, figure included, under the period's folder)

The next period continues the run: ``--collect`` puts the packed run in
``results/gpu/<run name>/run.tgz`` (commit it), and the same command, given that file in
the repository, resumes it (``cli.py train --resume``) instead of starting over. Once the
run is finished, a period only measures. On a GPU host of your own (with the packages of
``requirements-gpu.txt``), the same command works without ``--plan``: the phases only
need the carry folder's data (``--data``) and skip the wheels it does not have.
"""

import argparse
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the GPU host lacks (keras 3.15.1 as requirements.txt pins it; optree and namex, its
# dependencies, as the test environment resolves them).
WHEELS = ("keras==3.15.1", "optree==0.20.0", "namex==0.1.0")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
TRANSFER_LIMIT = 64 * 2**20  # what travels to the GPU host: the repository and the carry
PART_SIZE = 15 * 2**20  # a file that comes back holds at most 16 MiB
FILES_BACK = 8  # files that come back: the phases' logs, summary.json and the run's parts
PHASES = ("setup", "smoke", "bench", "train", "equivalence")
CAPS = {"setup": 120, "smoke": 150, "bench": 300}  # seconds; train takes the rest
# The bench's time by model: CM-XL's 66 layers take longer to compile and to step.
BENCH_SHARE = {"vanilla": 2, "xl": 3}
# The equivalence phase: CM-Vanilla itself, ours (JAX) against the reference's loop
# (DataLoader, 8 workers, fp16 autocast), two seeds of a 10-epoch one-cycle: about 205 s
# a seed on an H200 (ours 118 s with its compilation and start, the reference 84 s).
EQUIVALENCE_ARGS = ("--width 256 --depth 8 --patch-size 2 --train 45000 --val 5000 "
                    "--epochs 10 --seeds 1204,1205 --workers 8")
PACK_MARGIN = 30  # seconds kept after training to pack the run folder and exit
EXIT_TIME_LIMIT = 7  # cli.py train: stopped at --time-limit, saved (cmxl_keras/cli.py)
EXIT_INTERRUPTED = 130  # ... stopped by SIGTERM, saved


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
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"which phases to run (default {','.join(PHASES)})")
    parser.add_argument("--config", default="cm_vanilla", help="the run's config")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config overrides for the run; repeatable")
    parser.add_argument("--val-from-train", type=int, default=1000,
                        help="training images carved out to monitor the run (default 1000)")
    parser.add_argument("--precision", default="mixed_float16",
                        help="the run's, the smoke step's and the bench's precision")
    parser.add_argument("--train-seconds", type=float,
                        help="the run's --time-limit, if less than the budget leaves")
    parser.add_argument("--fresh", action="store_true",
                        help="start the run over instead of resuming a committed one")
    parser.add_argument("--bench-models", default="vanilla,xl")
    parser.add_argument("--bench-args", default="--steps 20 --infer-batches 20",
                        help="more bench_train.py arguments (default: %(default)s)")
    parser.add_argument("--equivalence-args", default=EQUIVALENCE_ARGS,
                        help="bench/equivalence.py's arguments (default: %(default)s)")
    parser.add_argument("--arch", default="",
                        help="architecture keys replacing the smoke step's and the bench's "
                             "(e.g. width=32,depth=2: a rehearsal on a CPU)")
    args = parser.parse_args()
    os.chdir(ROOT)  # relative paths (and the run's data_dir) are the repository's
    if args.plan:
        return plan(args)
    if args.collect:
        return collect(args)
    if args.smoke_step:
        return smoke_step(args)
    if not args.out:
        sys.exit("gpu_run: no output folder: set OUT (or pass --out DIR).")
    unknown = set(args.phases.split(",")) - set(PHASES)
    if unknown:
        sys.exit(f"gpu_run: --phases {args.phases}: unknown {', '.join(sorted(unknown))}; "
                 f"use any of {', '.join(PHASES)}.")
    return Period(args).run()


# -- here: the carry folder ---------------------------------------------------------------


def plan(args):
    wheels = os.path.join(args.carry, "wheels")
    data = os.path.join(args.carry, "data")
    if args.data and not os.path.exists(args.data):
        sys.exit(f"gpu_run --plan: --data {args.data!r} does not exist. Give the training "
                 f"images: a .tar.gz of train/<class>/* images, an official CIFAR-10 "
                 f"archive, or a folder holding train/<class>/.")
    if args.data and os.path.isdir(args.data) and not os.path.isdir(
            os.path.join(args.data, "train")):
        sys.exit(f"gpu_run --plan: --data {args.data!r} has no train/ folder; give the "
                 f"folder that holds train/<class>/ images.")
    if not args.data and not (os.path.isdir(data) and os.listdir(data)):
        sys.exit("gpu_run --plan: the carry folder holds no training images yet: pass --data "
                 "(a .tar.gz of train/<class>/* images, an official CIFAR-10 archive, or a "
                 "folder holding train/<class>/).")
    os.makedirs(wheels, exist_ok=True)
    os.makedirs(data, exist_ok=True)
    tag = args.python_version.replace(".", "")
    for spec in WHEELS:
        name, version = spec.split("==")
        have = [w for w in glob.glob(os.path.join(wheels, f"{name}-{version}-*.whl"))
                if "-none-any" in w or f"cp{tag}" in w]
        if have:
            continue
        for stale in glob.glob(os.path.join(wheels, f"{name}-*.whl")):
            os.remove(stale)  # one version of each: two stop the install
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--only-binary=:all:", "--python-version", args.python_version,
                   "--implementation", "cp", "-d", wheels, spec]
        command += [x for platform in PLATFORMS for x in ("--platform", platform)]
        print(f"plan: downloading {spec} for Python {args.python_version}", flush=True)
        out = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if out.returncode:
            sys.exit(f"gpu_run --plan: pip could not download {spec} for Python "
                     f"{args.python_version} on x86-64 Linux:\n{out.stderr[-2000:]}")
    if args.data:
        for old in os.listdir(data):
            os.remove(os.path.join(data, old))
        if os.path.isdir(args.data):
            with tarfile.open(os.path.join(data, "images.tar.gz"), "w:gz") as tar:
                tar.add(os.path.join(args.data, "train"), arcname="train")
        else:
            shutil.copyfile(args.data, os.path.join(data, os.path.basename(args.data)))
    carried = os.listdir(data)
    size = transfer_size(args.carry)
    print(f"plan: {args.carry}/ holds {', '.join(sorted(os.listdir(wheels)))} and "
          f"{carried[0]}; the repository and it come to {size / 2**20:.1f} MiB of "
          f"{TRANSFER_LIMIT / 2**20:.0f}")
    if size > TRANSFER_LIMIT:
        sys.exit(f"gpu_run --plan: {size / 2**20:.1f} MiB would travel, over the "
                 f"{TRANSFER_LIMIT / 2**20:.0f} MiB limit. Carry smaller images (JPEG, as "
                 f"a .tar.gz of train/<class>/) or remove large untracked files.")
    runs = sorted(glob.glob(os.path.join(args.results, "*", "run.tgz")))
    for packed in runs:
        print(f"plan: the period resumes {packed} ({describe_packed(packed)})")
    print("plan: run from the repository root, carrying the folder above:\n"
          f"  command:  python3 bench/gpu_run.py    (OUT set to the output folder)\n"
          f"  carry:    {args.carry}\n"
          f"  timeout:  600 s (the command stops itself after --budget {args.budget:g} s)\n"
          f"then: python bench/gpu_run.py --collect <the returned files' folder>, and "
          f"commit {args.results}/")


def transfer_size(carry):
    """Bytes that travel: tracked and untracked-not-ignored files, plus the carry folder."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, text=True,
                            timeout=60, check=True).stdout.split("\0")
    total = sum(os.path.getsize(p) for p in set(listed) if p and os.path.isfile(p)
                and not os.path.abspath(p).startswith(os.path.abspath(carry) + os.sep))
    for folder, _, files in os.walk(carry):
        total += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    return total


def describe_packed(path):
    """Where a packed run stands (``run_state``'s progress)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        try:
            with tarfile.open(path) as tar:
                tar.extractall(folder, filter=lambda m, _: m if m.name.endswith(".json")
                               else None)
        except (OSError, tarfile.TarError) as error:
            return f"unreadable: {error}"
        runs = os.listdir(folder)
        return run_state(os.path.join(folder, runs[0]))["progress"] if runs else "empty"


# -- there: one period --------------------------------------------------------------------


class Period:
    """The phases of one command on the GPU host, against one deadline."""

    def __init__(self, args):
        self.args = args
        self.start = time.monotonic()
        self.deadline = self.start + args.budget
        self.out = args.out
        os.makedirs(self.out, exist_ok=True)
        os.makedirs(args.work, exist_ok=True)
        self.site = os.path.abspath(os.path.join(args.work, "site"))
        self.summary = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "phases": {},
                        "budget_seconds": args.budget}
        self.env = dict(os.environ, KERAS_BACKEND="jax", PYTHONUNBUFFERED="1",
                        TF_CPP_MIN_LOG_LEVEL="3")
        self.data_dir = None
        self.name = None

    def left(self):
        return self.deadline - time.monotonic()

    def run(self):
        wanted = self.args.phases.split(",")
        for phase in PHASES:
            if phase not in wanted:
                self.record(phase, "skipped (not asked for)", 0)
                continue
            if phase in ("train", "equivalence"):  # these take what is left
                cap = self.left() - PACK_MARGIN
            else:
                cap = min(CAPS[phase], self.left() - PACK_MARGIN)
            if cap <= 5:
                self.record(phase, "skipped (no time left)", 0)
                continue
            began = time.monotonic()
            with open(os.path.join(self.out, f"{phase}.txt"), "a") as log:
                try:
                    status = getattr(self, f"phase_{phase}")(log, began + cap)
                except PhaseFailed as error:
                    status = f"failed: {error}"
                    log.write(f"\n{phase}: {status}\n")
                except Exception as error:  # a fault of this script: the next phases still run
                    status = f"failed: {type(error).__name__}: {error}"
                    log.write(f"\n{phase}: {status}\n{traceback.format_exc()}")
            self.record(phase, status, time.monotonic() - began)
            if phase == "setup" and not status.startswith("ok"):
                break  # nothing after it can run
        if "train" in wanted:
            try:
                self.pack()
            except (OSError, tarfile.TarError) as error:
                self.summary["pack"] = f"failed: {type(error).__name__}: {error}"
        self.summary["seconds"] = round(time.monotonic() - self.start, 1)
        self.write_summary()
        print(json.dumps(self.summary, indent=2))
        failed = [p for p, r in self.summary["phases"].items() if r["status"].startswith("failed")]
        return 1 if failed else 0

    def record(self, phase, status, seconds):
        self.summary["phases"][phase] = {"status": status, "seconds": round(seconds, 1)}
        print(f"gpu_run: {phase}: {status} ({seconds:.0f} s)", flush=True)
        self.write_summary()

    def write_summary(self):
        path = os.path.join(self.out, "summary.json")
        with open(path + ".tmp", "w") as f:
            json.dump(self.summary, f, indent=2)
        os.replace(path + ".tmp", path)

    def child(self, command, log, until, label, shown=None):
        """Runs ``command`` with its output streamed into ``log`` (under the name ``shown``,
        if given); past ``until`` it is sent SIGTERM (saving what it can), then SIGKILL 20 s
        later. Returns its exit code, or None if it had to be stopped (``self.stopped``
        then holds the exit code it ended with, which says whether it saved)."""
        log.write(f"$ {shown or ' '.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)
        self.stopped = None
        try:
            return proc.wait(timeout=max(1.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        log.write(f"\ngpu_run: {label} ran past its time cap; stopping it (SIGTERM)\n")
        log.flush()
        for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.stopped = proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        return None

    # -- phases: each returns a status line ("ok ...") or raises PhaseFailed

    def phase_setup(self, log, until):
        wheels = sorted(glob.glob(os.path.join(self.args.carry, "wheels", "*.whl")))
        if wheels:
            code = self.child([sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
                               "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
                               "--target", self.site] + wheels, log, until, "pip install")
            if code != 0:
                raise PhaseFailed(f"installing the carried wheels failed (exit {code})")
            self.env["PYTHONPATH"] = os.pathsep.join(
                [self.site] + [p for p in [self.env.get("PYTHONPATH")] if p])
        self.data_dir = self.unpack_data(log)
        log.write(f"data: {self.data_dir}\n")
        probe = ("import json, platform, importlib\n"
                 "found = {'python': platform.python_version()}\n"
                 "for m in ('keras', 'jax', 'jaxlib', 'torch', 'torchvision', 'numpy', "
                 "'tensorboard', 'tensorflow'):\n"
                 "    try:\n"
                 "        found[m] = importlib.import_module(m).__version__\n"
                 "    except ImportError:\n"
                 "        found[m] = None\n"
                 # where keras came from: the carried wheel (site/), or the host's own
                 "found['keras_file'] = importlib.import_module('keras').__file__\n"
                 # the free memory before JAX takes its share (it preallocates 75 %)
                 "try:\n"
                 "    import torch\n"
                 "    if torch.cuda.is_available():\n"
                 "        free, total = torch.cuda.mem_get_info()\n"
                 "        found['gpu'] = torch.cuda.get_device_name(0)\n"
                 "        found['gpu_memory_free_gib'] = round(free / 2**30, 1)\n"
                 "        found['gpu_memory_total_gib'] = round(total / 2**30, 1)\n"
                 "except ImportError:\n"
                 "    pass\n"
                 "import jax\n"
                 "devices = jax.devices()\n"
                 "found['jax_devices'] = [str(d) for d in devices]\n"
                 "stats = devices[0].memory_stats() or {}\n"
                 "found['jax_memory_limit_gib'] = round(stats.get('bytes_limit', 0) / 2**30, 1)\n"
                 "print('VERSIONS ' + json.dumps(found))\n")
        if shutil.which("nvidia-smi"):
            self.child(["nvidia-smi"], log, min(until, time.monotonic() + 30), "nvidia-smi")
        code = self.child([sys.executable, "-c", probe], log, until, "the version probe",
                          shown="python3 -c <print the versions, devices and memory>")
        if code != 0:
            raise PhaseFailed(f"the version probe failed (exit {code}): see setup.txt")
        log.flush()
        with open(log.name) as f:
            line = [l for l in f if l.startswith("VERSIONS ")][-1]
        self.summary["machine"] = json.loads(line[len("VERSIONS "):])
        return f"ok ({self.summary['machine'].get('gpu') or 'no GPU'})"

    def unpack_data(self, log):
        carried = sorted(glob.glob(os.path.join(self.args.carry, "data", "*")))
        if not carried:
            raise PhaseFailed(f"no training images in {self.args.carry}/data/: run "
                              f"'python bench/gpu_run.py --plan --data ...' first")
        source = carried[0]
        if os.path.isdir(source):
            return source
        try:
            with tarfile.open(source) as tar:
                members = tar.getmembers()
                if any(m.name.split("/")[0].startswith("cifar-10-batches") for m in members):
                    return source  # an official archive: cli.py reads it as it is
                target = os.path.join(self.args.work, "data")
                if not os.path.isdir(os.path.join(target, "train")):
                    shutil.rmtree(target, ignore_errors=True)
                    tar.extractall(target + ".partial", filter="data")
                    os.replace(target + ".partial", target)
        except (OSError, tarfile.TarError) as error:
            raise PhaseFailed(f"cannot unpack {source}: {error}") from None
        if not os.path.isdir(os.path.join(target, "train")):
            raise PhaseFailed(f"{source} holds no train/ folder of class folders")
        return target

    def phase_smoke(self, log, until):
        command = [sys.executable, os.path.abspath(__file__), "--smoke-step",
                   "--precision", self.args.precision, "--arch", self.args.arch]
        code = self.child(command, log, until, "the smoke step")
        if code != 0:
            raise PhaseFailed("the smoke step " + ("ran past its cap" if code is None
                                                   else f"failed (exit {code})"))
        log.flush()
        with open(log.name) as f:
            line = [l for l in f if l.startswith("SMOKE ")][-1]
        return "ok " + line[len("SMOKE "):].strip()

    def phase_bench(self, log, until):
        models = [m for m in self.args.bench_models.split(",") if m]
        done = []
        for i, model in enumerate(models):
            weights = [BENCH_SHARE.get(m, 1) for m in models[i:]]
            share = (until - time.monotonic()) * weights[0] / sum(weights)
            command = [sys.executable, os.path.join("bench", "bench_train.py"),
                       "--frameworks", "keras-jax-aug,keras-jax,torch,torch-loader",
                       "--models", model, "--repeats", "1", "--infer-batch-sizes", "128",
                       "--precision", self.args.precision, "--timeout", f"{max(share, 1):.0f}"]
            if self.args.arch:
                command += ["--arch", self.args.arch]
            command += self.args.bench_args.split()
            if "--batch" in command:  # a rehearsal's smaller batch: infer at it
                command[command.index("--infer-batch-sizes") + 1] = \
                    command[command.index("--batch") + 1]
            code = self.child(command, log, time.monotonic() + share, f"bench {model}")
            done.append(f"{model} " + ("ok" if code == 0 else "cut off" if code is None
                                        else f"failed (exit {code})"))
        if not any(d.endswith(" ok") for d in done):
            raise PhaseFailed("; ".join(done))
        return "ok: " + "; ".join(done)

    def phase_train(self, log, until):
        if self.data_dir is None:
            raise PhaseFailed("setup did not run, so there are no images")
        name = self.run_name()
        run_dir = os.path.join(self.args.work, "run", name)
        packed = os.path.join(self.args.results, name, "run.tgz")
        has_checkpoint = os.path.exists(os.path.join(run_dir, "checkpoints"))
        if not has_checkpoint and os.path.exists(packed) and not self.args.fresh:
            shutil.rmtree(run_dir, ignore_errors=True)
            with tarfile.open(packed) as tar:
                tar.extractall(os.path.dirname(run_dir), filter="data")
            log.write(f"gpu_run: continuing the run packed in {packed}\n")
            has_checkpoint = True
        self.name = name
        if os.path.exists(os.path.join(run_dir, "results.json")):
            return "ok: the run is finished already"
        seconds = until - time.monotonic()
        command = [sys.executable, "cli.py", "--backend", "jax", "train"]
        if has_checkpoint and not self.args.fresh:
            command += ["--resume", run_dir]
        else:
            command += ["--config", self.args.config, "--data-dir", self.data_dir,
                        "--val-from-train", str(self.args.val_from_train),
                        "--precision", self.args.precision, "--set", "pipeline=device",
                        "--run-dir", run_dir, "--overwrite"]
            for item in self.args.overrides:
                command += ["--set", item]
        # --time-limit (counted from the start of training, after the imports) stops it
        # at the end of a step and saves; the phase's cap is a backstop 10 s later.
        limit = max(seconds - 20, 1)
        if self.args.train_seconds:
            limit = min(limit, self.args.train_seconds)
        command += ["--time-limit", f"{limit:g}"]
        code = self.child(command, log, until + 10, "training")
        self.summary["run"] = run_state(run_dir)
        if code == 0:
            return "ok: finished"
        if code == EXIT_TIME_LIMIT:
            return f"ok: stopped at its time limit, {self.summary['run'].get('progress')}"
        if code is None and self.stopped == EXIT_INTERRUPTED:  # a step outlasted the margin
            return (f"ok: stopped by SIGTERM at the phase's cap and saved, "
                    f"{self.summary['run'].get('progress')}")
        raise PhaseFailed("training " + ("ran past its cap" if code is None
                                         else f"exited with {code}: see train.txt"))

    def phase_equivalence(self, log, until):
        if self.data_dir is None:
            raise PhaseFailed("setup did not run, so there are no images")
        # Its files travel inside summary.json (few files come back); --collect writes them.
        out = os.path.join(self.args.work, "equivalence-out")
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, os.path.join("bench", "equivalence.py"), "--data",
                   self.data_dir, "--backend", "jax", "--device", "auto", "--out", out,
                   "--work", os.path.join(self.args.work, "equivalence"),
                   "--timeout", f"{max(until - time.monotonic(), 1):.0f}"]
        command += self.args.equivalence_args.split()
        code = self.child(command, log, until, "the equivalence runs")
        try:
            with open(os.path.join(out, "results.json")) as f:
                results = json.load(f)
        except (OSError, ValueError):
            results = None
        if results is None:
            raise PhaseFailed("no run finished " + ("before the phase's cap" if code is None
                                                     else f"(exit {code}): see equivalence.txt"))
        with open(os.path.join(out, "machine.json")) as f:
            self.summary["equivalence"] = {"results": results, "machine": json.load(f)}
        done = {side: len(runs) for side, runs in results["runs"].items()}
        status = ", ".join(f"{n} {side}" for side, n in done.items()) + " runs"
        if code == 0:
            return f"ok: {status}"
        return f"ok: cut off with {status} finished" if code is None else \
            f"failed (exit {code}) after {status}: see equivalence.txt"

    def run_name(self):
        command = [sys.executable, "cli.py", "train", "--config", self.args.config,
                   "--dry-run"] + [x for item in self.args.overrides for x in ("--set", item)]
        out = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=120)
        for line in out.stdout.splitlines():
            if line.startswith("name = "):
                return json.loads(line.split("=", 1)[1])
        raise PhaseFailed(f"cannot resolve --config {self.args.config}: {out.stderr[-800:]}")

    def pack(self):
        """The run folder as run.tgz in OUT (in parts past PART_SIZE), without what a resume
        rebuilds (the good checkpoint is a copy of last) or a dead process left."""
        if self.name is None:
            return
        run_dir = os.path.join(self.args.work, "run", self.name)
        if not os.path.isdir(run_dir):
            return
        skip = {"good.weights.h5", ".lock"}
        target = os.path.join(self.args.work, "run.tgz")
        with tarfile.open(target, "w:gz") as tar:
            tar.add(run_dir, arcname=self.name, filter=lambda m: None if (
                os.path.basename(m.name) in skip or ".partial" in m.name
                or os.path.basename(m.name).startswith(".")) else m)
        size = os.path.getsize(target)
        parts = max(1, -(-size // PART_SIZE))
        for old in glob.glob(os.path.join(self.out, "run.tgz*")):
            os.remove(old)
        room = FILES_BACK - len(os.listdir(self.out))
        if parts > room:
            self.summary["pack"] = (f"failed: {size} bytes would need {parts} parts, and "
                                    f"{room} more files can come back")
            return
        names = []
        with open(target, "rb") as f:
            for i in range(parts):
                name = "run.tgz" if parts == 1 else f"run.tgz.{i:02d}"
                with open(os.path.join(self.out, name), "wb") as part:
                    part.write(f.read(PART_SIZE))
                names.append(name)
        self.summary["pack"] = {"run": self.name, "parts": names, "bytes": size,
                                "sha256": sha256(target)}


class PhaseFailed(Exception):
    pass


def run_state(run_dir):
    """Where a run folder stands: the epochs finished (metrics.json), the optimizer step
    its checkpoint holds (checkpoints/state.json), finished or not."""

    def read(*path, default=None):
        try:
            with open(os.path.join(run_dir, *path)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return default

    metrics = read("metrics.json", default=[]) or []
    epochs = (read("config.json", default={}) or {}).get("epochs")
    step = (read("checkpoints", "state.json", default={}) or {}).get("step")
    done = metrics[-1]["epoch"] if metrics else 0
    finished = os.path.exists(os.path.join(run_dir, "results.json"))
    progress = f"epoch {done} of {epochs} finished" + (
        f", checkpoint at optimizer step {step}" if step is not None else ", no checkpoint")
    return {"progress": "finished" if finished else progress, "epochs_done": done,
            "epochs": epochs, "step": step, "finished": finished,
            "last": metrics[-1] if metrics else None}


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- there: the smoke step (a child process) ----------------------------------------------


def smoke_step(args):
    """One compiled training step of CM-Vanilla as training runs it under JAX: the
    paper's augmentation as Keras layers in the step, the loss-scaled AdamW on the
    one-cycle, then a second step; prints a SMOKE line."""
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import keras
    import numpy as np

    from bench_train import parse_arch
    from cmxl_keras import augment, config, recipe

    keras.mixed_precision.set_global_policy(args.precision)
    cfg = config.variant_config("cm_vanilla").replace(**parse_arch(args.arch))
    layers = augment.keras_layers(augment.AugmentSpec.from_config(cfg), seed=0)
    model = recipe.compile_model(recipe.build_model(cfg, augmentation=layers), cfg, steps=390)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (cfg.batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, cfg.batch_size).astype("int32")
    times, losses = [], []
    for _ in range(2):
        start = time.perf_counter()
        loss = model.train_on_batch(x, y, return_dict=True)["loss"]
        times.append(time.perf_counter() - start)
        losses.append(float(loss))
    device = str(keras.backend.backend()) + " on " + str(
        __import__("jax").devices()[0].platform)
    print(f"SMOKE {keras.backend.backend()} ({device}), {args.precision}, batch "
          f"{cfg.batch_size}: compile and first step {times[0]:.1f} s, second step "
          f"{times[1] * 1000:.0f} ms, losses {losses[0]:.3f} {losses[1]:.3f}", flush=True)
    if not all(np.isfinite(losses)):
        sys.exit("smoke: a loss is not finite")


# -- here: what came back -----------------------------------------------------------------


def collect(args):
    back = args.collect
    summary_path = os.path.join(back, "summary.json")
    if not os.path.exists(summary_path):
        sys.exit(f"gpu_run --collect: {back!r} has no summary.json; give the folder the "
                 f"period's files came back to.")
    with open(summary_path) as f:
        summary = json.load(f)
    stamp = summary.get("started", time.strftime("%Y-%m-%d %H:%M:%S")).replace(" ", "_")
    period = os.path.join(args.results, "periods", stamp.replace(":", "")[:17])
    os.makedirs(period, exist_ok=True)
    for name in ("summary.json",) + tuple(f"{p}.txt" for p in PHASES):
        if os.path.exists(os.path.join(back, name)):
            shutil.copyfile(os.path.join(back, name), os.path.join(period, name))
    if "equivalence" in summary:  # bench/equivalence.py's files, from summary.json
        folder = os.path.join(period, "equivalence")
        os.makedirs(folder, exist_ok=True)
        for name, data in summary["equivalence"].items():
            with open(os.path.join(folder, f"{name}.json"), "w") as f:
                json.dump(data, f, indent=1)
        if os.path.exists(os.path.join(back, "equivalence.txt")):
            shutil.copyfile(os.path.join(back, "equivalence.txt"),
                            os.path.join(folder, "log.txt"))
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "equivalence.py"),
                        "--redraw", folder], check=True, timeout=120)
    pack = summary.get("pack")
    if isinstance(pack, dict):
        target = os.path.join(args.results, pack["run"], "run.tgz")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target + ".tmp", "wb") as out:
            for part in pack["parts"]:
                with open(os.path.join(back, part), "rb") as f:
                    shutil.copyfileobj(f, out)
        if sha256(target + ".tmp") != pack["sha256"]:
            os.remove(target + ".tmp")
            sys.exit(f"gpu_run --collect: the parts of {pack['run']} in {back!r} do not add "
                     f"up to the packed run (sha256 differs); nothing was replaced.")
        os.replace(target + ".tmp", target)
        with tarfile.open(target) as tar:  # the small records, readable in the repository
            for member in tar.getmembers():
                base = os.path.basename(member.name)
                if member.isfile() and member.name.count("/") == 1 and base.endswith(
                        (".json", ".toml")):
                    with open(os.path.join(os.path.dirname(target), base), "wb") as f:
                        f.write(tar.extractfile(member).read())
        print(f"collect: {target} ({describe_packed(target)})")
    # The Table-1 page, from the committed runs (bench/table1.py; commit it with them):
    # docs/table1.md for the repository's results/gpu, else beside the results given.
    committed = os.path.abspath(args.results) == os.path.join(ROOT, "results", "gpu")
    page = (os.path.join(ROOT, "docs", "table1.md") if committed
            else os.path.join(args.results, "table1.md"))
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "table1.py"), "--results",
                    args.results, "--out", page], check=True, timeout=120)
    print(f"collect: the period's logs are in {period}/")
    for phase, result in summary.get("phases", {}).items():
        print(f"  {phase}: {result['status']} ({result['seconds']} s)")


if __name__ == "__main__":
    sys.exit(main())
