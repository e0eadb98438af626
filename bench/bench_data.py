#!/usr/bin/env python3
"""Input pipeline vs training step: can the tf.data pipeline keep CM-Vanilla fed?

Measures, in one run on the same machine:
  * images/s of the full training pipeline (decode is done once up front; shuffle +
    the paper's augmentations + batch 128 + prefetch), alone, with torchvision's
    RandAugment (the default) and, for comparison, keras-cv's;
  * images/s of the same augmentations in their Keras-layer form (what runs in front of
    the model on a device, ``pipeline = "device"``), compiled, on one batch;
  * images/s of CM-Vanilla training steps through the real ``model.fit`` path (the
    one-cycle AdamW, loss and metrics) on one cached batch, alone;
and prints the ratios. The pipeline must not limit training: target ratio >= 10.

    python bench/bench_data.py --data-dir data/cifar10 [--repeats 3]

Last lines are machine-readable (``pipeline_images_per_second=...``).
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pipeline_rate(split, batch, batches, spec):
    from cmxl_keras import pipeline

    it = iter(pipeline.train_dataset(split, batch, spec, seed=0, repeat=True))
    for _ in range(5):  # trace and warm up
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def device_rate(split, batch, batches, spec):
    """The Keras-layer form of the augmentations on one batch, as one compiled function."""
    import tensorflow as tf

    from cmxl_keras import augment

    stages = augment.keras_layers(spec, seed=0)
    images = tf.constant(split.images[:batch].astype("float32"))

    @tf.function
    def run(x):
        for stage in stages:
            x = stage(x, training=True)
        return x

    for _ in range(3):  # trace and warm up
        run(images).numpy()
    start = time.perf_counter()
    for _ in range(batches):
        run(images).numpy()
    return batches * batch / (time.perf_counter() - start)


def train_rate(cfg, batch, steps):
    import numpy as np
    import tensorflow as tf

    from cmxl_keras import recipe

    model = recipe.compile_model(recipe.build_model(cfg), cfg, steps=1000)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, batch).astype("int32")
    ds = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)
    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)  # trace and warm up
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True,
                        help="CIFAR-10 on disk: an official layout or its .tar.gz")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--pipeline-batches", type=int, default=60)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from cmxl_keras import augment, config, data, splitting

    cfg = config.Config(data_dir=args.data_dir, val_from_train=5000)
    raw = data.read_data_dir(args.data_dir)
    split = splitting.make_splits(raw, val_from_train=5000, log=lambda m: None).train
    spec = augment.AugmentSpec.from_config(cfg)
    old = augment.AugmentSpec.from_config(cfg.replace(randaugment="keras_cv"))
    rates = {"pipeline": [], "pipeline_keras_cv": [], "device": [], "train": []}
    for r in range(args.repeats):
        rates["pipeline"].append(pipeline_rate(split, args.batch, args.pipeline_batches, spec))
        rates["pipeline_keras_cv"].append(
            pipeline_rate(split, args.batch, args.pipeline_batches, old))
        rates["device"].append(device_rate(split, args.batch, args.pipeline_batches, spec))
        rates["train"].append(train_rate(cfg, args.batch, args.train_steps))
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} img/s"
                                              for k, v in rates.items()), flush=True)
    p, k, d, t = (statistics.median(v) for v in rates.values())
    print(f"augmentation: {spec.describe()}")
    print(f"pipeline_images_per_second={p:.0f}")
    print(f"pipeline_keras_cv_randaugment_images_per_second={k:.0f}")
    print(f"device_form_images_per_second={d:.0f}")
    print(f"train_step_images_per_second={t:.1f}")
    print(f"pipeline_over_train_ratio={p / t:.1f}")
    print(f"device_form_share_of_a_train_step={t / d:.3f}")


if __name__ == "__main__":
    main()
