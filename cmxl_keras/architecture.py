"""The architecture's hyper-parameters, their checks and closed-form costs.

Kept free of Keras imports so the CLI and the config can validate a model (and
pick the Keras backend) before Keras is imported.
"""

# CIFAR-10 channel statistics used by the reference code's Normalize, in [0, 1]: the mean
# and standard deviation of every pixel of the 50,000 training images
# (``data.channel_stats``; tests/test_data.py recomputes them on the shipped images).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)
# CIFAR-100's, by the same definition over its 50,000 training images: mean (0.5071,
# 0.4865, 0.4409), std (0.2673, 0.2564, 0.2762), the figures CIFAR-100 recipes normalize
# with. (There is no copy of CIFAR-100 here to recompute them; ``data.channel_stats`` on
# its training split gives them, as it gives CIFAR-10's above.)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# Per dataset (the config's ``dataset``): classes and the normalization inside the model.
DATASETS = {"cifar10": dict(num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD),
            "cifar100": dict(num_classes=100, mean=CIFAR100_MEAN, std=CIFAR100_STD)}

# Activation names accepted by the builder. "swish" and "silu" are one function
# (x * sigmoid(x)); the paper calls it SiLU.
ACTIVATIONS = ("gelu", "relu", "silu", "swish", "leaky_relu")

# The seven models of the paper's Table 1 (h=256, p=2, k=5 for all of them).
# "aug" is not a model property; it is listed so the table reads like Table 1,
# and the configs/ files carry it into the training config.
VARIANTS = {
    "cm_vanilla_noaug": dict(width=256, depth=8, patch_size=2, kernel_size=5,
                             activation="gelu", skip_period=0, aug="none",
                             paper_top1=88.54),
    "cm_vanilla": dict(width=256, depth=8, patch_size=2, kernel_size=5,
                       activation="gelu", skip_period=0, aug="paper", paper_top1=93.78),
    "cm_vanilla_relu": dict(width=256, depth=8, patch_size=2, kernel_size=5,
                            activation="relu", skip_period=0, aug="paper",
                            paper_top1=93.84),
    "cm_vanilla_silu": dict(width=256, depth=8, patch_size=2, kernel_size=5,
                            activation="silu", skip_period=0, aug="paper",
                            paper_top1=93.72),
    "cm_xl_noskip": dict(width=256, depth=66, patch_size=2, kernel_size=5,
                         activation="gelu", skip_period=0, aug="paper", paper_top1=48.68),
    "cm_xl_skip": dict(width=256, depth=66, patch_size=2, kernel_size=5,
                       activation="gelu", skip_period=3, aug="paper", paper_top1=94.22),
    "cm_xl": dict(width=256, depth=66, patch_size=2, kernel_size=5,
                  activation="silu", skip_period=3, aug="paper", paper_top1=94.52),
}

# Keys of a VARIANTS entry that are builder arguments.
ARCH_KEYS = ("width", "depth", "patch_size", "kernel_size", "activation", "skip_period")


def parse_arch(text):
    """``"width=32,depth=2"`` -> ``{"width": 32, "depth": 2}`` (architecture keys only: a
    bench's or a rehearsal's smaller model); a ConfigError naming the value otherwise."""
    from cmxl_keras.errors import ConfigError

    arch = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        try:
            if key not in ARCH_KEYS:
                raise ValueError
            arch[key] = value if key == "activation" else int(value)
        except ValueError:
            raise ConfigError(f"--arch {text!r}: {item!r} is not key=value of an architecture "
                              f"key ({', '.join(ARCH_KEYS)}) with a whole number (the "
                              f"activation: its name); e.g. --arch width=32,depth=2.") from None
    return arch


def _check_positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{name} must be an integer >= {minimum}, got {value!r}. "
            f"Pass a whole number such as --{name.replace('_', '-')} {max(minimum, 2)}.")


def check_architecture(width, depth, patch_size, kernel_size, activation,
                       skip_period=0, input_shape=(32, 32, 3), num_classes=10):
    """Raises ValueError, quoting the value, for any invalid hyper-parameter.

    Shared by the builder and the config validation, so the CLI reports a bad
    architecture before it loads any data.
    """
    _check_positive_int("width", width)
    _check_positive_int("depth", depth)
    _check_positive_int("patch_size", patch_size)
    _check_positive_int("kernel_size", kernel_size)
    _check_positive_int("num_classes", num_classes, minimum=2)
    _check_positive_int("skip_period", skip_period, minimum=0)
    if not isinstance(activation, str) or activation.lower() not in ACTIVATIONS:
        raise ValueError(
            f"activation {activation!r} is not supported; choose one of "
            f"{', '.join(ACTIVATIONS)} (swish and silu are the same function).")
    if skip_period and depth % skip_period != 0:
        divisors = [d for d in range(1, depth + 1) if depth % d == 0]
        raise ValueError(
            f"depth {depth} is not divisible by skip_period {skip_period}: the long "
            f"skips cut the {depth} layers into {skip_period} equal groups, and the "
            f"reference code would silently drop {depth % skip_period} layer(s). "
            f"Use a skip_period in {divisors}, or 0 for no long skips.")
    if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3
            or input_shape[2] != 3):
        raise ValueError(
            f"input_shape must be (height, width, 3) for RGB images, got {input_shape!r}.")
    height, width_px = input_shape[0], input_shape[1]
    if height != width_px or height < 1:
        raise ValueError(
            f"images must be square, got input_shape {tuple(input_shape)!r}; "
            f"resize them to a square size divisible by patch_size {patch_size}.")
    if height % patch_size != 0:
        raise ValueError(
            f"image size {height} is not divisible by patch_size {patch_size}: the stem "
            f"cuts the image into non-overlapping {patch_size}x{patch_size} patches. "
            f"Choose a patch_size that divides {height}.")


def count_params(width, depth, patch_size, kernel_size, num_classes=10):
    """Trainable parameters in closed form: stem, layers and head (BN gamma/beta counted)."""
    stem_params = 3 * patch_size * patch_size * width + width + 2 * width
    layer_params = (width * kernel_size * kernel_size + width + 2 * width
                    + width * width + width + 2 * width)
    head_params = width * num_classes + num_classes
    return stem_params + depth * layer_params + head_params


def count_macs(width, depth, patch_size, kernel_size, num_classes=10, image_size=32):
    """Multiply-accumulates of one forward pass (convolutions and the head).

    Exact for this architecture, and cheaper than profiling the graph:
    every layer works on ``(image_size / patch_size)**2`` positions.
    """
    positions = (image_size // patch_size) ** 2
    stem_macs = positions * 3 * patch_size * patch_size * width
    layer_macs = positions * (width * kernel_size * kernel_size + width * width)
    return stem_macs + depth * layer_macs + width * num_classes
