"""The model as a run trains it: the backend's precision, input pipeline and compiled
step resolved from the config, the training model (augmentation layers in front where
the pipeline is ``device``), and the recipe's optimizer, loss and metrics compiled in.

Recipe (the paper and its reference code): AdamW (lr_max 0.005, weight decay 0.01,
PyTorch's epsilon 1e-8), the one-cycle schedule updated every step, sparse categorical
cross-entropy from logits, batch 128, 100 epochs; mixed precision on a GPU.
"""

import math

from cmxl_keras.errors import ConfigError
from cmxl_keras.runtime import gpu_visible


def resolve_precision(name):
    """``auto`` is mixed_float16 where a GPU is visible to the backend, else float32."""
    if name != "auto":
        return name
    return "mixed_float16" if gpu_visible() else "float32"


def resolve_pipeline(cfg):
    """Where augmentation runs: ``tf.data`` (keras-cv, TensorFlow) or ``device`` (Keras
    layers in the model, any backend); ``auto`` picks tf.data on TensorFlow."""
    import keras

    kind = default_pipeline() if cfg.pipeline == "auto" else cfg.pipeline
    if kind == "tf.data" and not importable("tensorflow"):
        raise ConfigError(
            f"pipeline 'tf.data' needs TensorFlow, which is not installed (Keras runs on "
            f"{keras.backend.backend()!r}). Use --set pipeline=device (augmentation as "
            f"Keras layers, on the device) or install the requirements.")
    if kind == "device" and (cfg.cutmix_prob or cfg.mixup_prob):
        raise ConfigError(
            f"cutmix_prob={cfg.cutmix_prob:g} / mixup_prob={cfg.mixup_prob:g}: CutMix and "
            f"MixUp mix labels and run only in the tf.data pipeline (TensorFlow backend, "
            f"--set pipeline=tf.data). Set both to 0 for the {kind} pipeline.")
    return kind


def default_pipeline():
    import keras

    return "tf.data" if keras.backend.backend() == "tensorflow" else "device"


def steps_per_epoch(num_train, cfg):
    steps = math.ceil(num_train / cfg.batch_size)
    return min(steps, cfg.steps_per_epoch) if cfg.steps_per_epoch else steps


def build_model(cfg, sync_bn=False, augmentation=()):
    """The model of ``cfg``; with ``augmentation`` layers, the training model that runs
    them in front of it (they act in training only and hold no weights, so the weights
    are the model's, in the same order)."""
    import keras

    from cmxl_keras import models

    model = models.from_config(cfg, sync_bn=sync_bn)
    if not augmentation:
        return model
    inputs = keras.Input(shape=(cfg.image_size, cfg.image_size, 3), name="image")
    x = inputs
    for layer in augmentation:
        x = layer(x)
    return keras.Model(inputs, model(x), name=cfg.name)


def portable_copy(model, cfg):
    """``model``'s weights in a model built without synchronized BatchNorm: the file it
    is saved to loads on every backend, with or without a distribution strategy."""
    copy = build_model(cfg)
    copy.set_weights(model.get_weights())
    return copy


def resolve_jit_compile(value):
    """``jit_compile`` config value -> bool: ``auto`` compiles on JAX (where ``False``
    means an eager step, op by op) and keeps TensorFlow's graph mode (XLA measured
    slower for this model on the CPU, bench/RESULTS.md)."""
    import keras

    if value == "auto":
        return keras.backend.backend() == "jax"
    return value == "true"


def compile_model(model, cfg, steps, one_hot=False):
    """AdamW as PyTorch's on the one-cycle, cross-entropy from logits, top-1 and top-5
    accuracy; under mixed_float16, dynamic loss scaling that counts skipped steps."""
    import keras

    from cmxl_keras.optimizers import CountingLossScaleOptimizer, TorchAdamW
    from cmxl_keras.schedules import OneCycle

    optimizer = TorchAdamW(
        learning_rate=OneCycle(cfg.lr_max, cfg.epochs, steps),
        weight_decay=cfg.weight_decay, epsilon=cfg.adam_epsilon,
        global_clipnorm=cfg.clip_norm or None)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        # Keras would wrap the optimizer in its own LossScaleOptimizer, which does not
        # count skipped steps (see CountingLossScaleOptimizer).
        optimizer = CountingLossScaleOptimizer(
            optimizer, initial_scale=cfg.loss_scale,
            dynamic_growth_steps=cfg.loss_scale_growth_steps)
    if one_hot:  # CutMix/MixUp or label smoothing: soft targets
        loss = keras.losses.CategoricalCrossentropy(from_logits=True,
                                                    label_smoothing=cfg.label_smoothing)
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy"),
                   keras.metrics.TopKCategoricalAccuracy(k=5, name="top5")]
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                   keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")]
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics,
                  jit_compile=resolve_jit_compile(cfg.jit_compile))
    # Built here, not in the first step: on TensorFlow without a distribution strategy,
    # Keras defers the build into the traced step, and a step that creates variables is
    # traced twice (a second full trace of the model, its gradients and the optimizer).
    model.optimizer.build(model.trainable_variables)
    return model


def importable(module):
    """Whether ``module`` (an optional install: tensorflow, jax, torch) can be imported."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


# The optional Keras backends, and the pins that install them.
BACKEND_PINS = {"jax": "jax==0.10.2 jaxlib==0.10.2", "torch": "torch==2.14.1"}


def check_backend(backend):
    """A ConfigError where the chosen optional Keras backend is not installed. (TensorFlow
    is a requirement, and not checked: ``predict --format tflite`` runs on LiteRT alone.)"""
    if backend in BACKEND_PINS and not importable(backend):
        raise ConfigError(
            f"the Keras backend {backend!r} (from --backend or KERAS_BACKEND) is not "
            f"installed. Install it with 'pip install {BACKEND_PINS[backend]}' (pinned in "
            f"requirements-dev.txt; requirements-gpu.txt has the CUDA build of JAX), or run "
            f"with --backend tensorflow.")
