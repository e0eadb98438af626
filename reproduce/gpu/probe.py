"""What ``python -m reproduce gpu`` runs in child processes on the GPU host: the version probe
of its setup phase, and its smoke step."""

import sys
import time

PROBE = """import json, platform, importlib
found = {'python': platform.python_version()}
for m in ('keras', 'jax', 'jaxlib', 'torch', 'torchvision', 'numpy', 'tensorboard',
          'tensorflow'):
    try:
        found[m] = importlib.import_module(m).__version__
    except ImportError:
        found[m] = None
found['keras_file'] = importlib.import_module('keras').__file__  # the carried wheel's?
try:  # the free memory before JAX takes its share (it preallocates 75 %)
    import torch
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        found['gpu'] = torch.cuda.get_device_name(0)
        found['gpu_memory_free_gib'] = round(free / 2**30, 1)
        found['gpu_memory_total_gib'] = round(total / 2**30, 1)
except ImportError:
    pass
import jax
devices = jax.devices()
found['jax_devices'] = [str(d) for d in devices]
stats = devices[0].memory_stats() or {}
found['jax_memory_limit_gib'] = round(stats.get('bytes_limit', 0) / 2**30, 1)
print('VERSIONS ' + json.dumps(found))
"""


def smoke_step(args):
    """One compiled training step of CM-Vanilla as training runs it under JAX: the
    paper's augmentation as Keras layers in the step, the loss-scaled AdamW on the
    one-cycle, then a second step; prints a SMOKE line."""
    import keras
    import numpy as np

    from cmxl_keras import augment, config, recipe
    from cmxl_keras.architecture import parse_arch

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
