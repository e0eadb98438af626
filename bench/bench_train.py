#!/usr/bin/env python3
"""Training and inference speed side by side: our Keras/TensorFlow path vs the paper's
PyTorch model (reproduce/ref_torch.py), CM-Vanilla and CM-XL, batch 128, in one run.

Ours is the real training step: ``recipe.build_model`` + ``recipe.compile_model`` through
``model.fit`` (train_step, AdamW on the one-cycle schedule, loss, top-1/top-5 metrics,
the project's thread settings), fed the batch as arrays; inference is ``model.predict``. Theirs is
the paper script's step (AdamW, cross-entropy, ``loss.backward()``) and an
``inference_mode`` forward pass. Both see the same random batch.

The reference is measured in every form a PyTorch user would try on a CPU: as the paper's
script runs it (``torch``), with tcmalloc or jemalloc preloaded (``torch+tcmalloc``,
``torch+jemalloc``: the standard advice for PyTorch on CPUs, since glibc maps and unmaps
every large buffer at every step), and ``torch.compile`` (``torch-compile``, also with an
allocator); on a GPU, as a competent user tunes it (``torch-tuned``: ``torch.compile``,
channels_last, ``cudnn.benchmark``, fused AdamW, inputs on the device, no read-back per
step; its compile time is the ``train_first_call_seconds`` line). Ours can take an
allocator the same way (``keras+tcmalloc``), runs under JAX from device arrays
(``keras-jax-device``: its compiled step without a host copy per step), and is also
measured in the form a user deploys for inference (``keras-tflite``: the exported fp32
TFLite file, from the folded graph ``cli.py export`` writes, run by LiteRT with XNNPACK;
inference only). Inference is timed at batch 128 and at batch 1
(``--infer-batch-sizes``), one call per batch in every framework, float32 everywhere.
Each repetition times every form back to back, each in a fresh process; the medians are
printed last, machine-readable, with ours / the **fastest** reference
(``train_ratio_vanilla=...``) and ours / each reference
(``train_ratio_vanilla_vs_torch_tcmalloc=...``); higher is better for us:

    pip install -r bench/requirements.txt     # the torch of requirements-dev.txt
    apt-get install libtcmalloc-minimal4 libjemalloc2   # the allocators (Debian/Ubuntu)
    python bench/bench_train.py [--models vanilla,xl] [--repeats 3] [--steps 3]
                                [--frameworks keras,torch,torch+tcmalloc,...]
                                [--infer-batch-sizes 128,1]

``--steps 0`` measures inference only. ``--convs-only`` replaces every activation and
BatchNorm layer with an identity in ours and in the reference alike: the time the rest of
the step takes, the bound of what faster activations and BatchNorms could give.

A form whose allocator is not installed is reported as missing and left out.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import cmxl_keras  # noqa: E402,F401  (before TensorFlow: it picks the CPU allocator)

from cmxl_keras import architecture  # noqa: E402
from cmxl_keras.architecture import ARCH_KEYS, VARIANTS  # noqa: E402
from cmxl_keras.children import run_or_exit, tail  # noqa: E402
from cmxl_keras.errors import ConfigError  # noqa: E402
import bench_forms  # noqa: E402  (bench/bench_forms.py: the forms measured)
from bench_forms import RUNNERS  # noqa: E402

# The paper's CM-Vanilla (d8, GELU) and CM-XL (d66, skip period 3, SiLU).
MODELS = {name: {key: VARIANTS[variant][key] for key in ARCH_KEYS}
          for name, variant in (("vanilla", "cm_vanilla"), ("xl", "cm_xl"))}


ALLOCATORS = {"tcmalloc": "tcmalloc_minimal", "jemalloc": "jemalloc"}
REFERENCE = ("torch", "torch-compile", "torch-tuned", "torch-loader")
DEFAULT_FRAMEWORKS = ("keras,keras-tflite,keras+tcmalloc,torch,torch+tcmalloc,torch+jemalloc,"
                      "torch-compile,torch-compile+tcmalloc")


def allocator_library(name):
    """The shared library to preload for ``name``, or None where it is not installed."""
    import ctypes.util

    return ctypes.util.find_library(ALLOCATORS[name])


def worker_env(form):
    """The environment of one form's worker: its Keras backend and preloaded allocator."""
    runner, _, allocator = form.partition("+")
    env = dict(os.environ,
               KERAS_BACKEND="jax" if runner.startswith("keras-jax") else "tensorflow")
    if allocator:
        env["LD_PRELOAD"] = allocator_library(allocator)
    return env


def measure(framework, name, batch, steps, infer_batches, infer_sizes, convs_only=False,
            arch=None):
    """One framework on one model in this process (``convs_only``: without its activation
    and BatchNorm layers; ``arch``: keys that replace the model's): warm up, then time
    training steps and inference calls. Returns {kind: value}: images/s for ``train``
    (absent for an inference-only form or ``steps`` 0), ``infer`` (batch ``batch``) and
    ``infer_b<size>`` for the other sizes; and the seconds of each warm-up call,
    ``<kind>_first_s`` (tracing, compiling and allocating: on JAX, the compile time)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, batch).astype("int32")
    fw = RUNNERS[framework.partition("+")[0]](dict(MODELS[name], **(arch or {})), batch, x, y,
                                              convs_only)
    rates = {}
    if steps:
        start = time.perf_counter()
        if fw.train(1) is not None:  # trace, allocate, warm up
            rates["train_first_s"] = time.perf_counter() - start
            rates["train"] = fw.train(steps)
    for size in infer_sizes:
        kind = infer_kind(size, batch)
        start = time.perf_counter()
        if fw.infer(2, size) is None:  # trace or compile for this size, warm up
            continue
        rates[f"{kind}_first_s"] = time.perf_counter() - start
        # Batch 1 is timed over as many calls as images in the batch-128 timing.
        calls = max(infer_batches, infer_batches * batch // size)
        rates[kind] = fw.infer(calls, size)
    return rates


def infer_kind(size, batch):
    return "infer" if size == batch else f"infer_b{size}"


def versions():
    import importlib

    found = []
    for module in ("keras", "tensorflow", "jax", "torch"):
        try:
            found.append(f"{module} {importlib.import_module(module).__version__}")
        except ImportError:
            found.append(f"{module} not installed")
    return (", ".join(found) + "; TF_CPU_ALLOCATOR_USE_BFC="
            f"{os.environ.get('TF_CPU_ALLOCATOR_USE_BFC')}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vanilla,xl")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3,
                        help="training steps per repetition (0: inference only)")
    parser.add_argument("--infer-batches", type=int, default=3,
                        help="timed calls at batch --batch; a smaller batch size gets as "
                             "many calls as images in those")
    parser.add_argument("--infer-batch-sizes", default=None,
                        help="inference batch sizes (default: --batch and 1)")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds one measurement may take before the bench stops "
                             "with its last output")
    parser.add_argument("--frameworks", default=DEFAULT_FRAMEWORKS,
                        help="any of keras (on TensorFlow), keras-jax (on JAX, compiled), "
                             "torch (the paper's PyTorch model as its script runs it), "
                             "torch-compile (torch.compile), each optionally +tcmalloc or "
                             "+jemalloc (LD_PRELOAD); keras-tflite (ours exported to fp32 "
                             "TFLite, LiteRT with XNNPACK; inference only)")
    parser.add_argument("--precision", choices=("float32", "mixed_float16"), default="float32",
                        help="ours: the Keras dtype policy; the reference: fp16 autocast "
                             "with GradScaler where it runs on a GPU (its script's AMP)")
    parser.add_argument("--workers", type=int, default=8,
                        help="torch-loader's DataLoader workers (the paper's script: 8)")
    parser.add_argument("--arch", default="",
                        help="architecture keys that replace every model's, e.g. "
                             "width=32,depth=2 (a quick rehearsal of the bench)")
    parser.add_argument("--convs-only", action="store_true",
                        help="every activation and BatchNorm layer replaced by an identity, "
                             "in ours and the reference alike: the time the rest (the "
                             "convolutions, residual adds, head and optimizer) takes, the "
                             "bound of any speed-up of those layers; keys name the model "
                             "<model>_convs_only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # framework:model, one measurement
    args = parser.parse_args()
    bench_forms.PRECISION, bench_forms.WORKERS = args.precision, args.workers
    arch = parse_arch(args.arch)
    sizes = [int(v) for v in (args.infer_batch_sizes or f"{args.batch},1").split(",")]
    if not all(0 < size <= args.batch for size in sizes):
        sys.exit(f"--infer-batch-sizes {args.infer_batch_sizes}: each size must be between 1 "
                 f"and --batch ({args.batch}); raise --batch for a larger one.")
    if args.worker:
        framework, name = args.worker.split(":")
        if args.precision != "float32" and framework.startswith("keras"):
            import keras

            keras.mixed_precision.set_global_policy(args.precision)
        rates = measure(framework, name, args.batch, args.steps, args.infer_batches, sizes,
                        args.convs_only, arch)
        print("RESULT " + " ".join(f"{kind}={rate}" for kind, rate in rates.items()))
        return

    # Each measurement runs in its own process: a batch-128 CM-XL needs most of this
    # machine's memory for its activations in either framework, and TensorFlow keeps its
    # memory pool for the life of a process. The frameworks alternate within each
    # repetition, so both see the same machine conditions.
    print(f"{versions()}; batch {args.batch}; {args.precision}"
          + (f"; architecture {args.arch}" if args.arch else "")
          + ("; convs only (activations and BatchNorm are identities)" if args.convs_only
             else ""), flush=True)
    frameworks = []
    for form in args.frameworks.split(","):
        runner, _, allocator = form.partition("+")
        if runner not in RUNNERS or (allocator and allocator not in ALLOCATORS):
            sys.exit(f"unknown framework form {form!r}: use {', '.join(RUNNERS)}, each "
                     f"optionally +{' or +'.join(ALLOCATORS)}")
        if allocator and not allocator_library(allocator):
            print(f"missing: {form} ({allocator} is not installed: apt-get install "
                  f"{'libtcmalloc-minimal4' if allocator == 'tcmalloc' else 'libjemalloc2'})",
                  flush=True)
            continue
        frameworks.append(form)
    kinds = (["train"] if args.steps else []) + [infer_kind(size, args.batch) for size in sizes]
    lines = []
    for name in args.models.split(","):
        rates = {}
        label = name + ("_convs_only" if args.convs_only else "")
        for r in range(args.repeats):
            for fw in frameworks:
                for kind, rate in run_worker(fw, name, sizes, args).items():
                    rates.setdefault((fw, kind), []).append(rate)
            print(f"{label} repeat {r + 1}: " + ", ".join(
                f"{fw} {kind} {values[-1]:.1f} " + ("s" if kind.endswith("_s") else "img/s")
                for (fw, kind), values in rates.items()), flush=True)
        med = {key: statistics.median(values) for key, values in rates.items()}
        for kind in kinds:
            measured = [fw for fw in frameworks if (fw, kind) in med]
            ours = [fw for fw in measured if fw.partition("+")[0] not in REFERENCE]
            references = [fw for fw in measured if fw.partition("+")[0] in REFERENCE]
            for fw in measured:
                lines.append(f"{kind}_images_per_second_{label}_{_key(fw)}={med[fw, kind]:.1f}")
                if (fw, f"{kind}_first_s") in med:
                    lines.append(f"{kind}_first_call_seconds_{label}_{_key(fw)}="
                                 f"{med[fw, f'{kind}_first_s']:.2f}")
            if not references:
                continue
            fastest = max(references, key=lambda fw: med[fw, kind])
            lines.append(f"{kind}_fastest_reference_{label}={fastest}")
            for fw in ours:
                suffix = "" if fw == "keras" else f"_{_key(fw)}"
                lines.append(f"{kind}_ratio_{label}{suffix}="
                             f"{med[fw, kind] / med[fastest, kind]:.2f}")
                for ref in references:
                    lines.append(f"{kind}_ratio_{label}{suffix}_vs_{_key(ref)}="
                                 f"{med[fw, kind] / med[ref, kind]:.2f}")
    print("\n".join(lines))


def run_worker(fw, name, sizes, args):
    """One measurement in a fresh process; exits with its last output if it fails or
    runs past ``--timeout``."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", f"{fw}:{name}",
               "--batch", str(args.batch), "--steps", str(args.steps),
               "--infer-batches", str(args.infer_batches),
               "--infer-batch-sizes", ",".join(map(str, sizes)),
               "--precision", args.precision, "--workers", str(args.workers),
               "--arch", args.arch] + (
                   ["--convs-only"] if args.convs_only else [])
    out = run_or_exit(command, args.timeout, f"{fw} {name}", env=worker_env(fw))
    result = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if not result:
        sys.exit(f"{fw} {name} printed no RESULT line; its last output:\n{tail(out.stderr)}")
    return {kind: float(rate) for kind, rate in
            (item.split("=") for item in result[-1].split()[1:])}


def parse_arch(text):
    """``width=32,depth=2`` -> {"width": 32, "depth": 2}, or exit naming the value."""
    try:
        return architecture.parse_arch(text)
    except ConfigError as error:
        sys.exit(str(error))


def add_step_arguments(parser):
    """The arguments that pick the training step measured: ``--model``, ``--batch``,
    ``--steps`` and ``--arch`` (bench_variants.py, bench_profile.py)."""
    parser.add_argument("--model", default="xl", choices=tuple(MODELS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--arch", default="", help="architecture keys replacing the model's")


def _key(form):
    return form.replace("-", "_").replace("+", "_")


if __name__ == "__main__":
    main()
