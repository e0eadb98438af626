#!/usr/bin/env python3
"""Inference speed of every exported form, side by side in one run.

For the Keras model, the SavedModel, each TFLite file (LiteRT) and ``model.onnx`` (ONNX
Runtime) of an export folder: images/s at batch 1 and batch 128, and the batch-1 latency
p50 / p99.

    python bench/bench_infer.py exported/<name> [--seconds 5]

(The Keras model is the export's own ``model.keras``, float32, run as ``inference.load``
runs it here.)
Last lines are machine-readable: ``<form>_b1_images_per_second=...`` and so on.
"""

import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timed(fn, images, seconds):
    fn(images)  # warm up (tracing, allocation)
    fn(images)
    latencies = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(latencies) < 5:
        start = time.perf_counter()
        fn(images)
        latencies.append(time.perf_counter() - start)
    latencies = np.array(latencies)
    return len(images) / latencies.mean(), np.percentile(latencies, 50), np.percentile(latencies, 99)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per form and batch")
    args = parser.parse_args()

    import tensorflow as tf

    from cmxl_keras import inference

    meta = inference.read_metadata(args.export_dir)
    size = meta["input"]["shape"][1]
    own = os.path.join(args.export_dir, "model.keras")
    if not os.path.isfile(own):
        sys.exit(f"{args.export_dir} has no model.keras: export it with --formats ...,keras "
                 f"(or --formats keras --add)")
    model = inference.load(own).model
    serve = tf.saved_model.load(os.path.join(args.export_dir, "saved_model", "1")) \
        .signatures["serving_default"]
    # The Keras model as a graph (tf.function, no XLA), as Keras' own predict loop runs it;
    # eager calls or predict() would add per-call Python overhead a server does not pay.
    keras_graph = tf.function(lambda x: model(tf.cast(x, tf.float32), training=False))
    forms = {
        "keras": lambda x: keras_graph(tf.constant(x)).numpy(),
        "saved_model": lambda x: serve(images=tf.constant(x))["probabilities"].numpy(),
    }
    for kind, name in inference.TFLITE_FILES.items():
        path = os.path.join(args.export_dir, name)
        if os.path.isfile(path):
            forms[kind] = inference.TFLiteRunner(path)
    if os.path.isfile(os.path.join(args.export_dir, inference.ONNX_FILE)):  # ONNX Runtime
        forms["onnx"] = inference.OnnxRunner(os.path.join(args.export_dir, inference.ONNX_FILE))
    rng = np.random.default_rng(0)
    rows = []
    for form, fn in forms.items():
        row = {"form": form}
        for batch in (1, 128):
            images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
            rate, p50, p99 = timed(fn, images, args.seconds)
            row[f"b{batch}"] = rate
            if batch == 1:
                row["p50_ms"], row["p99_ms"] = 1000 * p50, 1000 * p99
        rows.append(row)
        print(f"{form:<12} batch 1: {row['b1']:8.1f} img/s  p50 {row['p50_ms']:.2f} ms  "
              f"p99 {row['p99_ms']:.2f} ms | batch 128: {row['b128']:8.1f} img/s", flush=True)
    for row in rows:
        print(f"{row['form']}_b1_images_per_second={row['b1']:.1f}")
        print(f"{row['form']}_b128_images_per_second={row['b128']:.1f}")
        print(f"{row['form']}_b1_latency_p50_ms={row['p50_ms']:.3f}")
        print(f"{row['form']}_b1_latency_p99_ms={row['p99_ms']:.3f}")


if __name__ == "__main__":
    main()
