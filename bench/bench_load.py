#!/usr/bin/env python3
"""A model trained under mixed precision, run on this machine as ``inference.load`` runs
it: as saved (its mixed_float16 policy) against what ``load`` does by default here
(float32 where no GPU is visible), side by side in one process, alternating.

    python bench/bench_load.py [MODEL] [--data-dir D] [--images 1024] [--rounds 3]

MODEL is a run folder or ``.keras`` file; by default the committed GPU run's
``model.keras``, as it was saved (mixed_float16), taken out of
``results/gpu/cm_vanilla/run.tgz``. With ``--data-dir`` the images
are the run's own validation images from that data, else random pixels (the speed does
not depend on them; the agreement figures then mean less). ``mixed_bfloat16`` is
measured too, as the other policy a CPU might run faster. Each form runs through
``inference.keras_predict`` (batch 256) on the same images; the last lines are
machine-readable: ``<form>_images_per_second=...``, ``speedup=...``.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
GPU_RUN = os.path.join(ROOT, "results", "gpu", "cm_vanilla", "run.tgz")


def gpu_model(folder):
    """The committed GPU run's ``model.keras`` with its config (which names its split),
    unpacked into ``folder``."""
    import tarfile

    with tarfile.open(GPU_RUN) as archive:  # one pass: a .tar.gz cannot seek back cheaply
        for name in ("config.json", "config.toml", "model.keras"):  # the archive's order
            with open(os.path.join(folder, name), "wb") as f:
                f.write(archive.extractfile(f"cm_vanilla/{name}").read())
    return os.path.join(folder, "model.keras")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="default: the GPU run's model.keras")
    parser.add_argument("--data-dir", help="the run's data: time its validation images")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per form")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        measure(args, args.model or gpu_model(folder))


def measure(args, path):
    import keras

    from cmxl_keras import evaluate, inference

    saved = inference.load(path, precision="saved")
    auto = inference.load(path)
    forms = {"saved": saved, "auto": auto}
    bf16 = keras.models.clone_model(
        saved.model, clone_function=lambda layer: layer.__class__.from_config(
            dict(layer.get_config(), dtype="float32" if layer.name == "head_logits"
                 else "mixed_bfloat16")))
    bf16.set_weights(saved.model.get_weights())
    forms["mixed_bfloat16"] = inference.Loaded(
        "keras", path, lambda x, batch, desc: inference.keras_predict(bf16, x, batch, desc),
        saved.image_size, precision="mixed_bfloat16")
    if args.data_dir:
        split, _, _ = evaluate.evaluation_split(saved.cfg, "val", args.data_dir,
                                                log=lambda message: None)
        images = split.images[:args.images]
        source = f"the first {len(images)} validation images of the run's split"
    else:
        size = saved.image_size
        images = np.random.default_rng(0).integers(0, 256, (args.images, size, size, 3),
                                                   dtype=np.uint8)
        source = f"{len(images)} random images"
    print(f"model: {path}; saved: as saved ({saved.precision}); auto: inference.load's "
          f"default here ({auto.precision}); {source}; {os.cpu_count()} CPUs", flush=True)
    outputs, seconds = {}, {name: [] for name in forms}
    for name, loaded in forms.items():
        outputs[name] = loaded(images[:256], desc="")  # warm up: tracing, allocation
    for _ in range(args.rounds):
        for name, loaded in forms.items():
            start = time.perf_counter()
            outputs[name] = loaded(images, desc="")
            seconds[name].append(time.perf_counter() - start)
    reference = outputs[next(iter(forms))]
    rates = {}
    for name in forms:
        rates[name] = len(images) / float(np.median(seconds[name]))
        diff = float(np.abs(outputs[name] - reference).max())
        agree = float((outputs[name].argmax(-1) == reference.argmax(-1)).mean())
        print(f"{name:<15} {rates[name]:8.1f} images/s (median of {args.rounds}; rounds "
              f"{', '.join(f'{len(images) / s:.1f}' for s in seconds[name])}); max abs "
              f"diff from saved {diff:.2e}, top-1 agreement {agree:.4f}", flush=True)
    for name, rate in rates.items():
        print(f"{name}_images_per_second={rate:.1f}")
    print(f"speedup={rates['auto'] / rates['saved']:.2f}")


if __name__ == "__main__":
    main()
