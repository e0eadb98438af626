"""ConvMixer and ConvMixer-XL as Keras functional graphs.

One builder, many variants (the style of keras.applications' convnext.py):
``build_convmixer`` makes every model of the paper, and ``VARIANTS`` names the
seven Table-1 models. Inside the model there are only built-in Keras layers
(the GELU layer's function is ours on TensorFlow, for speed, and saves as Keras'
``"gelu"``), so a saved ``.keras`` file loads with no custom objects and the graph
runs on any Keras backend (TensorFlow, JAX, PyTorch).

Layout, per the paper (and the reference PyTorch code)::

    stem:   Conv2D(h, p, stride p) -> act -> BN
    layer:  x + BN(act(DepthwiseConv2D(k, "same")(x))) -> Conv2D(h, 1) -> act -> BN
    head:   GlobalAveragePooling2D -> Dense(num_classes)        (logits)

ConvMixer-XL wraps each of ``skip_period`` consecutive groups of
``depth // skip_period`` layers in a long residual (``x + group(x)``).
"""

import math

import keras
from keras import layers

from cmxl_keras.architecture import (  # noqa: F401  (re-exported: one place to import from)
    ACTIVATIONS, ARCH_KEYS, CIFAR_MEAN, CIFAR_STD, DATASETS, VARIANTS, check_architecture,
    count_macs, count_params)

# PyTorch's BatchNorm2d defaults. PyTorch's momentum 0.1 weighs the *new* batch
# statistic; Keras' momentum weighs the *old* moving value, so 0.1 there is 0.9
# here. Keras' own defaults (0.99, 1e-3) would train a different model.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

INITS = ("torch", "keras")


def _torch_init(init, fan_in, depthwise=False):
    """``{kernel/depthwise, bias}_initializer`` arguments for PyTorch's default
    initialization of a Conv2d / Linear, or ``{}`` for Keras' own (``init="keras"``).

    PyTorch draws weights with ``kaiming_uniform_(a=sqrt(5))`` and biases uniformly,
    both in ``+-1 / sqrt(fan_in)``, where ``fan_in`` is what one output sums over:
    ``in_channels * k * k``, only ``k * k`` for a depthwise conv. Keras' built-in
    ``VarianceScaling(1/3, "fan_in", "uniform")`` has that bound, ``sqrt(3 / 3 / fan_in)``,
    for a Conv2D or Dense kernel; Keras counts a depthwise kernel's fan-in as
    ``k * k * channels`` and its fan-out as ``k * k``, so the depthwise form uses
    ``"fan_out"``. A new initializer per layer: one seeded instance would give every
    layer the same draws. Built-in initializers only, so ``.keras`` files load anywhere.
    """
    if init == "keras":
        return {}
    if init != "torch":
        raise ValueError(f"init {init!r} is not one of {', '.join(INITS)}.")
    bound = 1.0 / math.sqrt(fan_in)
    kernel = keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_out" if depthwise else "fan_in", distribution="uniform")
    return {("depthwise_initializer" if depthwise else "kernel_initializer"): kernel,
            "bias_initializer": keras.initializers.RandomUniform(-bound, bound)}


def _gelu_tensorflow(x):
    import tensorflow as tf

    @tf.custom_gradient
    def exact_gelu(x):
        # The forward pass is tf.nn.gelu(approximate=False)'s own expression, op for op,
        # so outputs are bitwise those of Keras' gelu (a reloaded .keras file's).
        erfc = tf.math.erfc(-x * tf.cast(0.7071067811865476, x.dtype))

        def grad(dy):
            # d/dx x * Phi(x) = Phi(x) + x * phi(x), with Phi(x) = erfc(-x / sqrt 2) / 2
            return dy * (0.5 * erfc + x * (1.0 / math.sqrt(2.0 * math.pi)) * tf.exp(-0.5 * x * x))

        return 0.5 * x * erfc, grad

    return exact_gelu(x)


def gelu(x):
    """The exact (erf) GELU, ``keras.activations.gelu(x, approximate=False)``, with its
    gradient written out on the TensorFlow backend.

    Why our own: TensorFlow has no GELU kernel; ``tf.nn.gelu`` is five elementwise ops,
    and autodiff through them runs about twice as many again over every activation of
    the step, each a full pass over a 33 MB tensor at batch 128. The written-out gradient
    (Phi(x) + x * phi(x)) reuses the forward pass's erfc. Measured on CM-Vanilla, batch
    128, 2-core CPU: the whole training step 1.12x faster (median of 3 alternating
    runs, bench/RESULTS.md). Other backends get Keras' own function (XLA fuses it there).

    The function is named ``gelu``, so ``Activation(gelu)`` saves its activation as
    ``"gelu"``: a ``.keras`` file loads anywhere, with Keras' built-in, the same function.
    """
    if keras.backend.backend() == "tensorflow":
        return _gelu_tensorflow(x)
    return keras.activations.gelu(x, approximate=False)


def _activation(name, layer_name):
    """One activation layer; names follow PyTorch's modules."""
    name = name.lower()
    if name == "gelu":
        # nn.GELU() is the exact (erf) form, and so is keras.activations.gelu by
        # default (approximate=False); tests/test_models.py pins this against erf.
        return layers.Activation(gelu, name=layer_name)
    if name in ("silu", "swish"):
        return layers.Activation("silu", name=layer_name)
    if name == "relu":
        return layers.ReLU(name=layer_name)
    # nn.LeakyReLU's default slope is 0.01; Keras' LeakyReLU defaults to 0.3.
    return layers.LeakyReLU(negative_slope=0.01, name=layer_name)


def _batch_norm(layer_name, synchronized=False):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                     synchronized=synchronized, name=layer_name)


def stem(x, width, patch_size, activation, sync_bn=False, init="torch"):
    """Patch embedding: a strided convolution over non-overlapping patches."""
    x = layers.Conv2D(width, patch_size, strides=patch_size, name="stem_conv",
                      **_torch_init(init, x.shape[-1] * patch_size * patch_size))(x)
    x = _activation(activation, "stem_act")(x)
    return _batch_norm("stem_bn", sync_bn)(x)


def mixer_layer(x, index, width, kernel_size, activation, sync_bn=False, init="torch"):
    """One ConvMixer layer: residual depthwise (spatial) mix, then pointwise (channel) mix."""
    prefix = f"layer_{index}"
    y = layers.DepthwiseConv2D(kernel_size, padding="same", name=f"{prefix}_depthwise",
                               **_torch_init(init, kernel_size * kernel_size, True))(x)
    y = _activation(activation, f"{prefix}_depthwise_act")(y)
    y = _batch_norm(f"{prefix}_depthwise_bn", sync_bn)(y)
    x = layers.Add(name=f"{prefix}_residual")([x, y])
    x = layers.Conv2D(width, 1, name=f"{prefix}_pointwise", **_torch_init(init, width))(x)
    x = _activation(activation, f"{prefix}_pointwise_act")(x)
    return _batch_norm(f"{prefix}_pointwise_bn", sync_bn)(x)


def skip_group(x, group, first_index, num_layers, width, kernel_size, activation,
               sync_bn=False, init="torch"):
    """ConvMixer-XL's inter-block residual: ``x + layers(x)`` over ``num_layers`` layers."""
    y = x
    for index in range(first_index, first_index + num_layers):
        y = mixer_layer(y, index, width, kernel_size, activation, sync_bn, init)
    return layers.Add(name=f"group_{group}_skip")([x, y])


def head(x, num_classes, init="torch", classifier_activation=None):
    """Global average pool and a linear classifier returning logits (or, with
    ``classifier_activation``, its activation of them, e.g. ``"softmax"``).

    The logits are float32 even under a mixed-precision policy, so the softmax
    and loss stay numerically stable.
    """
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    return layers.Dense(num_classes, activation=classifier_activation, dtype="float32",
                        name="head_logits", **_torch_init(init, x.shape[-1]))(x)


POOLINGS = (None, "avg", "max")


def build_convmixer(width=256, depth=8, patch_size=2, kernel_size=5, num_classes=10,
                    activation="gelu", skip_period=0, input_shape=(32, 32, 3), name=None,
                    sync_bn=False, init="torch", include_top=True, pooling=None,
                    classifier_activation=None, mean=CIFAR_MEAN, std=CIFAR_STD):
    """Builds a ConvMixer (``skip_period=0``) or ConvMixer-XL graph.

    Args:
        width: channels ``h`` of every layer.
        depth: number of ConvMixer layers.
        patch_size: stem patch size ``p`` (kernel and stride).
        kernel_size: depthwise kernel size ``k``.
        num_classes: logits returned by the head.
        activation: one of ``ACTIVATIONS``.
        skip_period: number of equal groups wrapped in a long residual; 0 for none.
            ``depth`` must be divisible by it.
        input_shape: ``(size, size, 3)``; ``size`` divisible by ``patch_size``.
        name: model name; defaults to ``convmixer_{width}_{depth}``.
        sync_bn: BatchNorm statistics over the global batch under a tf.distribute
            strategy with several replicas (TensorFlow backend only). Weights are the
            same either way: train with it, save and serve a model built without it.
        init: ``"torch"`` for PyTorch's default initialization of every convolution and
            the classifier (what the reference trains from), ``"keras"`` for Keras'
            (glorot-uniform kernels, zero biases).
        include_top: the classifier head (as in ``keras.applications``). ``False``
            returns the last layer's feature map ``[batch, size/p, size/p, width]``, a
            backbone for another head.
        pooling: with ``include_top=False``: ``None`` (the feature map), ``"avg"`` or
            ``"max"`` (global pooling to ``[batch, width]``).
        classifier_activation: with ``include_top``: ``None`` for logits (what
            training uses), or an activation such as ``"softmax"``.
        mean, std: per-channel statistics (in [0, 1]) of the normalization inside the
            model; CIFAR-10's by default, ``DATASETS["cifar100"]``'s for CIFAR-100.

    Returns:
        A ``keras.Model`` mapping raw images (uint8 or float in [0, 255]) to logits
        (or what ``include_top``, ``pooling`` and ``classifier_activation`` ask for).
        Pixel normalization with the paper's mean/std happens inside the model.

    Raises:
        ValueError: an invalid hyper-parameter, quoting the value.
    """
    input_shape = tuple(input_shape)
    check_architecture(width, depth, patch_size, kernel_size, activation, skip_period,
                       input_shape, num_classes)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not one of None, 'avg', 'max'.")
    inputs = keras.Input(shape=input_shape, name="image")
    # Normalize raw [0, 255] pixels inside the model (the reference's ToTensor +
    # Normalize), so exported models take raw images. No trainable weights.
    x = layers.Normalization(
        mean=[255.0 * m for m in mean],
        variance=[(255.0 * s) ** 2 for s in std],
        name="normalize")(inputs)
    x = stem(x, width, patch_size, activation, sync_bn, init)
    if skip_period:
        per_group = depth // skip_period
        for group in range(skip_period):
            x = skip_group(x, group + 1, group * per_group + 1, per_group,
                           width, kernel_size, activation, sync_bn, init)
    else:
        for index in range(1, depth + 1):
            x = mixer_layer(x, index, width, kernel_size, activation, sync_bn, init)
    if include_top:
        outputs = head(x, num_classes, init, classifier_activation)
    elif pooling == "avg":
        outputs = layers.GlobalAveragePooling2D(name="head_pool")(x)
    elif pooling == "max":
        outputs = layers.GlobalMaxPooling2D(name="head_pool")(x)
    else:
        outputs = x
    return keras.Model(inputs, outputs, name=name or f"convmixer_{width}_{depth}")


def from_config(cfg, sync_bn=False):
    """The model a run's config (``config.Config``) describes: its architecture, its
    initialization and its dataset's normalization."""
    stats = DATASETS[cfg.dataset]
    return build_convmixer(
        width=cfg.width, depth=cfg.depth, patch_size=cfg.patch_size,
        kernel_size=cfg.kernel_size, num_classes=cfg.num_classes, activation=cfg.activation,
        skip_period=cfg.skip_period, input_shape=(cfg.image_size, cfg.image_size, 3),
        name=cfg.name, sync_bn=sync_bn, init=cfg.init, mean=stats["mean"], std=stats["std"])


def build_variant(variant, num_classes=10, input_shape=(32, 32, 3), **overrides):
    """Builds one of ``VARIANTS`` by name, with optional builder-argument overrides."""
    if variant not in VARIANTS:
        raise ValueError(
            f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    kwargs = {key: VARIANTS[variant][key] for key in ARCH_KEYS}
    kwargs.update(overrides)
    return build_convmixer(num_classes=num_classes, input_shape=input_shape,
                           name=variant, **kwargs)


def trainable_param_count(model):
    """Number of trainable scalars of a built model."""
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))


def describe(cfg, model=None):
    """``info``'s figures of the model ``cfg`` describes: parameters, MACs, layers."""
    model = model or from_config(cfg)
    trainable = trainable_param_count(model)
    macs = count_macs(cfg.width, cfg.depth, cfg.patch_size, cfg.kernel_size, cfg.num_classes,
                      cfg.image_size)
    return {"config": cfg.to_dict(), "trainable_params": trainable,
            "non_trainable_params": model.count_params() - trainable, "macs_per_image": macs,
            "flops_per_image": 2 * macs, "layers": len(model.layers)}


def description_text(cfg, figures):
    """``describe``'s figures as ``info`` prints them."""
    skips = (f"{cfg.skip_period} long skips of {cfg.depth // cfg.skip_period} layers"
             if cfg.skip_period else "no long skips")
    macs, flops = figures["macs_per_image"], figures["flops_per_image"]
    return "\n".join([
        f"model: {cfg.name}  (ConvMixer-{cfg.width}/{cfg.depth}, patch {cfg.patch_size}, "
        f"kernel {cfg.kernel_size}, {cfg.activation}, {skips})",
        f"input: {cfg.image_size}x{cfg.image_size}x3 raw pixels, {cfg.num_classes} classes",
        f"trainable parameters: {figures['trainable_params']:,}",
        f"non-trainable parameters: {figures['non_trainable_params']:,}  "
        f"(BatchNorm moving statistics)",
        f"MACs per image: {macs:,}  (FLOPs ~ {flops / 1e9:.3f} G)"])
