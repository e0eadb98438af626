#!/usr/bin/env python3
"""Training and inference speed side by side: our Keras/TensorFlow path vs the paper's
PyTorch model (bench/ref_torch.py), CM-Vanilla and CM-XL, batch 128, in one run.

Ours is the real training step: ``train.build_model`` + ``train.compile_model`` through
``model.fit`` (train_step, AdamW on the one-cycle schedule, loss, top-1/top-5 metrics,
the project's thread settings), fed the batch as arrays; inference is ``model.predict``. Theirs is
the paper script's step (AdamW, cross-entropy, ``loss.backward()``) and an
``inference_mode`` forward pass. Both see the same random batch. Each repetition times
both frameworks back to back, each in a fresh process; the medians and their ratios (ours / theirs, higher is
better for us) are printed last, machine-readable:

    pip install -r bench/requirements.txt     # the torch of requirements-dev.txt
    python bench/bench_train.py [--models vanilla,xl] [--repeats 3] [--steps 3]
                                [--frameworks keras,keras-jax,torch]

Final lines: ``train_ratio_vanilla=...``, ``infer_ratio_vanilla=...``, and the same for xl.
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

from cmxl_keras.architecture import ARCH_KEYS, VARIANTS  # noqa: E402

# The paper's CM-Vanilla (d8, GELU) and CM-XL (d66, skip period 3, SiLU).
MODELS = {name: {key: VARIANTS[variant][key] for key in ARCH_KEYS}
          for name, variant in (("vanilla", "cm_vanilla"), ("xl", "cm_xl"))}


def step_clock(kind):
    import keras

    class StepClock(keras.callbacks.Callback):
        """Times the batches after the first one of a fit or predict call."""

        def __init__(self):
            super().__init__()
            self.ends = []

        def _end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

        def seconds(self):
            return self.ends[-1] - self.ends[0]

    setattr(StepClock, f"on_{kind}_batch_end", StepClock._end)
    return StepClock()


class Keras:
    """Our path on the Keras backend of the process (``--frameworks keras`` runs it on
    TensorFlow, ``keras-jax`` on JAX with the compiled step training uses there). The
    batch is fed as numpy arrays, which every backend takes, so the JAX form runs where
    TensorFlow is not installed (a GPU host with only JAX)."""

    def __init__(self, arch, batch, x, y):
        from cmxl_keras import config, train

        cfg = config.Config(**arch, batch_size=batch, aug="none")
        self.model = train.compile_model(train.build_model(cfg), cfg, steps=1000)
        self.batch = batch
        self.x, self.y = x, y

    def train(self, steps):
        # Steady state inside one fit: from the end of a first step to the end of the
        # last, so fit's own start-up (a fixed cost per epoch of ~390 steps) is left out.
        import numpy as np

        clock = step_clock("train")
        self.model.fit(np.concatenate([self.x] * (steps + 1)),
                       np.concatenate([self.y] * (steps + 1)), batch_size=self.batch,
                       shuffle=False, epochs=1, verbose=0, callbacks=[clock])
        return steps * self.batch / clock.seconds()

    def infer(self, batches):
        import numpy as np

        clock = step_clock("predict")
        images = np.concatenate([self.x] * (batches + 1))
        self.model.predict(images, batch_size=self.batch, verbose=0, callbacks=[clock])
        return batches * self.batch / clock.seconds()


class Torch:
    def __init__(self, arch, batch, x, y):
        import torch

        import ref_torch

        torch.manual_seed(0)
        self.model = ref_torch.build(**arch)
        self.step = ref_torch.make_train_step(self.model)
        self.predict = ref_torch.make_predict(self.model)
        self.x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())  # NCHW, as the paper's code
        self.y = torch.from_numpy(y.astype("int64"))
        self.batch = batch

    def train(self, steps):
        start = time.perf_counter()
        for _ in range(steps):
            self.step(self.x, self.y)
        return steps * self.batch / (time.perf_counter() - start)

    def infer(self, batches):
        start = time.perf_counter()
        for _ in range(batches):
            self.predict(self.x)
        return batches * self.batch / (time.perf_counter() - start)


def measure(framework, name, batch, steps, infer_batches):
    """One framework on one model in this process: warm up, then time training steps and
    inference batches. Returns (train images/s, inference images/s)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, batch).astype("int32")
    fw = {"keras": Keras, "keras-jax": Keras, "torch": Torch}[framework](
        MODELS[name], batch, x, y)
    fw.train(1)  # trace, allocate, warm up
    fw.infer(1)
    return fw.train(steps), fw.infer(infer_batches)


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
    parser.add_argument("--steps", type=int, default=3, help="training steps per repetition")
    parser.add_argument("--infer-batches", type=int, default=3)
    parser.add_argument("--frameworks", default="keras,torch",
                        help="any of keras (on TensorFlow), keras-jax (on JAX, compiled), "
                             "torch (the paper's PyTorch model)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # framework:model, one measurement
    args = parser.parse_args()
    if args.worker:
        framework, name = args.worker.split(":")
        train, infer = measure(framework, name, args.batch, args.steps, args.infer_batches)
        print(f"RESULT {train} {infer}")
        return

    # Each measurement runs in its own process: a batch-128 CM-XL needs most of this
    # machine's memory for its activations in either framework, and TensorFlow keeps its
    # memory pool for the life of a process. The frameworks alternate within each
    # repetition, so both see the same machine conditions.
    import subprocess

    print(f"{versions()}; batch {args.batch}", flush=True)
    frameworks = args.frameworks.split(",")
    lines = []
    for name in args.models.split(","):
        rates = {(fw, kind): [] for fw in frameworks for kind in ("train", "infer")}
        for r in range(args.repeats):
            for fw in frameworks:
                backend = "jax" if fw == "keras-jax" else "tensorflow"
                out = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--worker", f"{fw}:{name}",
                     "--batch", str(args.batch), "--steps", str(args.steps),
                     "--infer-batches", str(args.infer_batches)],
                    capture_output=True, text=True,
                    env=dict(os.environ, KERAS_BACKEND=backend))
                result = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
                if out.returncode != 0 or not result:
                    sys.exit(f"{fw} {name} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
                train, infer = map(float, result[-1].split()[1:])
                rates[fw, "train"].append(train)
                rates[fw, "infer"].append(infer)
            print(f"{name} repeat {r + 1}: " + ", ".join(
                f"{fw} {kind} {values[-1]:.1f} img/s" for (fw, kind), values in rates.items()),
                flush=True)
        med = {key: statistics.median(values) for key, values in rates.items()}
        for kind in ("train", "infer"):
            for fw in frameworks:
                lines.append(f"{kind}_images_per_second_{name}_{fw.replace('-', '_')}="
                             f"{med[fw, kind]:.1f}")
            if "torch" in frameworks:
                for fw, suffix in (("keras", ""), ("keras-jax", "_jax")):
                    if fw in frameworks:
                        lines.append(f"{kind}_ratio_{name}{suffix}="
                                     f"{med[fw, kind] / med['torch', kind]:.2f}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
