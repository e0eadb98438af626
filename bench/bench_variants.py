#!/usr/bin/env python3
"""Our training step in the formulations a GPU profile points at, side by side, under JAX
from device arrays (``bench_forms.KerasDevice``: Keras' own compiled step), each variant
in a fresh process, the baseline first and last (a drift in the machine shows).

    python bench/bench_variants.py [--model xl] [--batch 128] [--steps 20]
        [--variants baseline,bf16,float32,shifted-depthwise,xla:FLAGS] [--arch KEY=V,...]

Variants:

    baseline           mixed_float16 and the built-in layers: what training runs
    bf16               mixed_bfloat16 (no loss scaling)
    float32            no mixed precision
    shifted-depthwise  every DepthwiseConv2D computed as k x k shifted multiply-adds
                       (``ShiftedDepthwise``: the same weights, which XLA can fuse with the
                       BatchNorm and activation around it instead of a grouped convolution,
                       whose backward pass XLA runs slowly on CUDA); its largest logit
                       difference from the built-in layer on the same weights is printed
    xla:FLAGS          the baseline with ``XLA_FLAGS=FLAGS`` (e.g. ``xla:--xla_gpu_autotune_level=0``)

Printed per variant: training images/s, the first (compiling) call's seconds, the ratio to
the baseline; the last lines are machine-readable (``variant_images_per_second_<name>=``).
"""

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import bench_train  # noqa: E402  (its models and step arguments)
from cmxl_keras.children import run_or_exit  # noqa: E402

POLICIES = {"baseline": "mixed_float16", "bf16": "mixed_bfloat16", "float32": "float32",
            "shifted-depthwise": "mixed_float16"}


def shifted_depthwise_layer():
    import keras
    from keras import ops

    class ShiftedDepthwise(keras.layers.Layer):
        """``DepthwiseConv2D(k, padding="same")`` as k x k shifted multiply-adds: the
        same kernel (k, k, C, 1) and bias (C,), in that order, so the built-in layer's
        weights load as they are."""

        def __init__(self, kernel_size, **kwargs):
            super().__init__(**kwargs)
            self.kernel_size = kernel_size

        def build(self, input_shape):
            k, channels = self.kernel_size, input_shape[-1]
            self.kernel = self.add_weight(shape=(k, k, channels, 1), name="kernel")
            self.bias = self.add_weight(shape=(channels,), name="bias", initializer="zeros")

        def call(self, x):
            k = self.kernel_size
            before = (k - 1) // 2
            padded = ops.pad(x, [[0, 0], [before, k - 1 - before], [before, k - 1 - before],
                                 [0, 0]])
            height, width = x.shape[1], x.shape[2]
            kernel = ops.cast(self.kernel, x.dtype)
            out = ops.cast(self.bias, x.dtype)
            for i in range(k):
                for j in range(k):
                    out = out + padded[:, i:i + height, j:j + width, :] * kernel[i, j, :, 0]
            return out

    return ShiftedDepthwise


def shifted(model):
    """``model`` with each DepthwiseConv2D replaced by ``ShiftedDepthwise``, same weights."""
    import keras

    layer_class = shifted_depthwise_layer()

    def clone(layer):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            return layer_class(layer.kernel_size[0], name=layer.name, dtype=layer.dtype_policy)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def worker(args):
    import keras
    import numpy as np

    import bench_forms
    from bench_train import MODELS, parse_arch
    from cmxl_keras import recipe

    keras.mixed_precision.set_global_policy(POLICIES.get(args.worker, "mixed_float16"))
    arch = dict(MODELS[args.model], **parse_arch(args.arch))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, args.batch).astype("int32")
    cfg, model = bench_forms.keras_model(arch, args.batch)
    extra = ""
    if args.worker == "shifted-depthwise":
        model = shifted(model)
        keras.mixed_precision.set_global_policy("float32")  # the numerics, in float32
        _, plain = bench_forms.keras_model(arch, args.batch)
        plain.set_weights(model.get_weights())
        exact = shifted(plain)
        difference = np.abs(np.asarray(exact(x[:8])) - np.asarray(plain(x[:8]))).max()
        extra = f" logits_max_difference={difference:.3g}"
        keras.mixed_precision.set_global_policy(POLICIES[args.worker])
    form = bench_forms.KerasDevice.of(recipe.compile_model(model, cfg, steps=1000), args.batch,
                                      x, y)
    start = time.perf_counter()
    form.train(1)
    first = time.perf_counter() - start
    rate = form.train(args.steps)
    print(f"RESULT images_per_second={rate:.1f} first_call_seconds={first:.2f}{extra}",
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    bench_train.add_step_arguments(parser)
    parser.add_argument("--variants", default="baseline,bf16,float32,shifted-depthwise")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per variant")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    variants = ["baseline"] + [v for v in args.variants.split(",")
                               if v and v != "baseline"] + ["baseline"]
    unknown = [v for v in variants if v not in POLICIES and not v.startswith("xla:")]
    if unknown:
        sys.exit(f"--variants: unknown {', '.join(unknown)}; use {', '.join(POLICIES)} or "
                 f"xla:FLAGS")
    results = {}
    for variant in variants:
        env = dict(os.environ, KERAS_BACKEND="jax")
        if variant.startswith("xla:"):
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + variant[4:]).strip()
        command = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--model",
                   args.model, "--batch", str(args.batch), "--steps", str(args.steps),
                   "--arch", args.arch]
        out = run_or_exit(command, args.timeout, f"variant {variant}", env=env)
        line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
        fields = dict(item.split("=") for item in line.split()[1:])
        results.setdefault(variant, []).append(fields)
        print(f"{variant}: {float(fields['images_per_second']):,.0f} images/s, first call "
              f"{fields['first_call_seconds']} s" + (
                  f", logits within {fields['logits_max_difference']} of the built-in layer"
                  if "logits_max_difference" in fields else ""), flush=True)
    base = statistics.median(float(f["images_per_second"]) for f in results["baseline"])
    for variant, runs in results.items():
        key = variant.replace("-", "_").replace(":", "_").replace("=", "_").replace(" ", "")
        rate = statistics.median(float(f["images_per_second"]) for f in runs)
        print(f"variant_images_per_second_{key}={rate:.1f}")
        print(f"variant_ratio_{key}={rate / base:.3f}")
        if "logits_max_difference" in runs[0]:
            print(f"variant_logits_max_difference_{key}={runs[0]['logits_max_difference']}")


if __name__ == "__main__":
    main()
