"""Experiment configuration: a frozen dataclass whose defaults are the paper's recipe.

Configs are data (big_vision style): ``Config()`` *is* the paper's CM-Vanilla recipe,
a file in ``configs/`` holds only what differs (TOML, read with the standard library's
tomllib, in ``settings.py``), and ``--set key=value`` overrides from the CLI.
Unknown keys and bad values raise ``ConfigError`` quoting the key, the value and
what is allowed.
"""

import dataclasses
import difflib
import json
import math

from cmxl_keras import architecture
from cmxl_keras.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Config:
    """One training run. Defaults reproduce the paper's CM-Vanilla recipe."""

    # -- identity
    name: str = "cm_vanilla"

    # -- model (h=256, d=8, p=2, k=5: ConvMixer-256/8 as in Table 1)
    width: int = 256
    depth: int = 8
    patch_size: int = 2
    kernel_size: int = 5
    activation: str = "gelu"
    skip_period: int = 0  # number of long-skip groups; 0 = vanilla ConvMixer
    # initial weights: PyTorch's defaults as the reference trains from, or Keras' own
    init: str = "torch"
    num_classes: int = 10
    image_size: int = 32

    # -- data
    # cifar10 or cifar100: the classes, the normalization inside the model, and the tfds
    # name when no data_dir is given (--data-dir files must hold the same dataset)
    dataset: str = "cifar10"
    data_dir: str = ""  # official CIFAR files, their .tar.gz, or an image-folder tree
    val_size: int = 5000  # paper: the 10k test set split 5,000 val / 5,000 test
    val_from_train: int = 0  # > 0: carve this many validation images from train
    # > 0: train on N images only (quick runs), drawn at random within each class with
    # split_seed, every class keeping its share
    limit_train: int = 0
    skip_corrupt: bool = False  # drop unreadable images (counted) instead of failing

    # -- augmentation, in the reference order; aug="none" switches all of it off
    aug: str = "paper"
    crop_scale_min: float = 0.75  # RandomResizedCrop scale (0.75, 1.0), ratio 1
    crop_scale_max: float = 1.0
    flip: bool = True
    randaugment_ops: int = 2  # torchvision num_ops
    randaugment_magnitude: int = 12  # torchvision magnitude, of 31 levels (0..30)
    # the RandAugment policy: torchvision's (the paper's), or keras-cv's own (tf.data only)
    randaugment: str = "torchvision"
    jitter_brightness: float = 0.2
    jitter_contrast: float = 0.2
    jitter_saturation: float = 0.2
    erase_prob: float = 0.2  # torchvision RandomErasing p; area 0.02-0.33, aspect 0.3-3.3
    cutmix_prob: float = 0.0  # off for every reported run
    mixup_prob: float = 0.0  # off for every reported run

    # -- optimisation
    epochs: int = 100
    batch_size: int = 128
    lr_max: float = 0.005
    weight_decay: float = 0.01
    adam_epsilon: float = 1e-8  # PyTorch's AdamW default; Keras' default is 1e-7
    clip_norm: float = 0.0  # global-norm clipping; 0 = off (paper default)
    label_smoothing: float = 0.0
    precision: str = "auto"  # auto = mixed_float16 on GPU, float32 on CPU
    # mixed_float16's dynamic loss scale: the reference's GradScaler defaults (its first
    # scale 2**16, doubled after 2000 steps without overflow)
    loss_scale: float = 65536.0
    loss_scale_growth_steps: int = 2000
    # a compiled training step: auto = on JAX (without it JAX runs every op eagerly), off
    # on TensorFlow (graph mode measured faster than XLA for this model on the CPU)
    jit_compile: str = "auto"
    seed: int = 1024  # initial weights, shuffling and augmentation draws
    # the validation/test split (and the carve from train): separate from ``seed`` so that
    # runs with other training seeds are scored on the same images
    split_seed: int = 1024
    # how the official test set is halved into validation and test: "reference" (the
    # reference code's halves, torch's random_split after seed 1204; needs the official
    # 10,000 test images in their official order), "random" (split_seed), or "auto"
    # (reference where the data allows it, else random)
    split: str = "auto"
    deterministic: bool = False
    steps_per_epoch: int = 0  # > 0: cap the steps of each epoch (quick runs)
    checkpoint_every_steps: int = 0  # > 0: also back up mid-epoch every N steps
    strategy: str = "auto"  # tf.distribute: auto, one_device, mirrored, multi_worker
    # where augmentation runs: "tf.data" (keras-cv in the input pipeline, TensorFlow),
    # "device" (Keras layers in front of the model, any backend); auto: tf.data on the
    # TensorFlow backend, device on the others
    pipeline: str = "auto"

    def replace(self, **changes):
        """A validated copy with ``changes`` applied."""
        return merge(self, changes)

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_toml(self):
        """TOML text of every field, readable back by ``load``."""
        lines = []
        for key, value in self.to_dict().items():
            lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


FIELDS = {f.name: f for f in dataclasses.fields(Config)}

# The device strategies distribute.py makes (see its ``make_strategy``).
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")

# Closed sets of values for string fields.
CHOICES = {
    "activation": architecture.ACTIVATIONS,
    "aug": ("paper", "none"),
    "precision": ("auto", "float32", "mixed_float16", "mixed_bfloat16"),
    "strategy": STRATEGIES,
    "pipeline": ("auto", "tf.data", "device"),
    "randaugment": ("torchvision", "keras_cv"),
    "init": ("torch", "keras"),
    "jit_compile": ("auto", "true", "false"),
    "dataset": tuple(architecture.DATASETS),
    "split": ("auto", "reference", "random"),
}

# Numeric bounds: (minimum, maximum, inclusive-minimum).
BOUNDS = {
    "val_size": (0, None),
    "val_from_train": (0, None),
    "limit_train": (0, None),
    "crop_scale_min": (0.0, 1.0),
    "crop_scale_max": (0.0, 1.0),
    "randaugment_ops": (0, 14),
    "randaugment_magnitude": (0, 30),
    "jitter_brightness": (0.0, 1.0),
    "jitter_contrast": (0.0, 1.0),
    "jitter_saturation": (0.0, 1.0),
    "erase_prob": (0.0, 1.0),
    "cutmix_prob": (0.0, 1.0),
    "mixup_prob": (0.0, 1.0),
    "epochs": (1, None),
    "batch_size": (1, None),
    "lr_max": (0.0, None),
    "weight_decay": (0.0, None),
    "adam_epsilon": (0.0, None),
    "clip_norm": (0.0, None),
    "loss_scale": (1.0, None),
    "loss_scale_growth_steps": (1, None),
    "label_smoothing": (0.0, 1.0),
    "seed": (0, None),
    "split_seed": (0, None),
    "steps_per_epoch": (0, None),
    "checkpoint_every_steps": (0, None),
}

def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else json.dumps(str(value))
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


def _type_name(tp):
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[tp]


def _field_type(key):
    tp = FIELDS[key].type
    if isinstance(tp, str):  # postponed annotations
        tp = {"int": int, "float": float, "bool": bool, "str": str}[tp]
    return tp


def _unknown_key(key, source):
    close = difflib.get_close_matches(key, FIELDS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"unknown config key {key!r} in {source}.{hint} Allowed keys: {', '.join(FIELDS)}.")


def coerce(key, value, source="the config"):
    """Checks ``value``'s type for ``key`` (ints are accepted for floats)."""
    if key not in FIELDS:
        _unknown_key(key, source)
    tp = _field_type(key)
    ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(
            f"config key {key!r} in {source} must be {_type_name(tp)}, "
            f"got {value!r} ({type(value).__name__}). Default: {FIELDS[key].default!r}.")
    return value


def parse_override(text):
    """Parses one ``--set key=value`` into ``(key, typed value)``."""
    if "=" not in text:
        raise ConfigError(
            f"--set expects key=value, got {text!r}; for example --set epochs=10.")
    key, raw = (part.strip() for part in text.split("=", 1))
    source = f"--set {text}"
    if key not in FIELDS:
        _unknown_key(key, source)
    tp = _field_type(key)
    try:
        if tp is bool:
            lowered = raw.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            value = lowered in ("true", "1", "yes")
        elif tp is int:
            value = int(raw)
        elif tp is float:
            value = float(raw)
        else:
            value = raw
    except ValueError:
        raise ConfigError(
            f"--set {key}={raw!r}: {key} must be {_type_name(tp)} "
            f"(default {FIELDS[key].default!r}); for example --set {key}="
            f"{_toml_value(FIELDS[key].default)}.") from None
    return key, value


def parse_seeds(text):
    """``"1024,1025"`` -> ``(1024, 1025)``; a ConfigError naming the value otherwise."""
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        seeds = ()
    if not seeds or any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(
            f"--seeds {text!r} is not a list of distinct whole numbers >= 0. Give the "
            f"training seeds separated by commas, e.g. --seeds 1024,1025,1026.")
    return seeds


def validate(config):
    """Raises ConfigError naming the key and value of the first bad setting."""
    for key, allowed in CHOICES.items():
        value = getattr(config, key)
        if value not in allowed:
            raise ConfigError(
                f"config key {key!r} has value {value!r}; allowed values: "
                f"{', '.join(allowed)}.")
    for key, (low, high) in BOUNDS.items():
        value = getattr(config, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key {key!r} must be a finite number, got {value!r}.")
        if value < low or (high is not None and value > high):
            allowed = f">= {low}" if high is None else f"between {low} and {high}"
            raise ConfigError(
                f"config key {key!r} has value {value!r}; it must be {allowed}.")
    if config.crop_scale_min > config.crop_scale_max:
        raise ConfigError(
            f"crop_scale_min {config.crop_scale_min!r} is above crop_scale_max "
            f"{config.crop_scale_max!r}; the paper uses 0.75 and 1.0.")
    if config.lr_max <= 0:
        raise ConfigError(f"config key 'lr_max' must be > 0, got {config.lr_max!r}.")
    if not config.name or "/" in config.name or config.name.startswith("."):
        raise ConfigError(
            f"config key 'name' must be a plain file-name-safe word, got {config.name!r}.")
    try:
        architecture.check_architecture(
            config.width, config.depth, config.patch_size, config.kernel_size,
            config.activation, config.skip_period,
            (config.image_size, config.image_size, 3), config.num_classes)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return config


def merge(base, changes, source="the overrides"):
    """A validated copy of ``base`` with ``changes`` (a mapping) applied. Changing the
    ``dataset`` sets its number of classes unless ``num_classes`` is changed too."""
    typed = {key: coerce(key, value, source) for key, value in changes.items()}
    if typed.get("dataset") in architecture.DATASETS and "num_classes" not in typed:
        typed["num_classes"] = architecture.DATASETS[typed["dataset"]]["num_classes"]
    return validate(dataclasses.replace(base, **typed))


def differing(saved, config, keys):
    """``[(key, saved value, value)]`` for the ``keys`` where two Configs differ (a run's
    saved config against the one asked for: resume and the ablation runner refuse them)."""
    return [(key, getattr(saved, key), getattr(config, key)) for key in keys
            if getattr(saved, key) != getattr(config, key)]


def from_dict(data, source="a saved config"):
    """Rebuilds a Config from ``to_dict()`` output (e.g. a run folder's config.json).

    A config saved before ``split_seed`` existed split its data with ``seed``, and one
    saved before ``split`` existed drew its halves at random: each keeps that split
    (resuming or evaluating it must see the same validation and test images)."""
    if isinstance(data, dict) and "seed" in data and "split_seed" not in data:
        data = dict(data, split_seed=data["seed"])
    if isinstance(data, dict) and "seed" in data and "split" not in data:
        data = dict(data, split="random")
    return merge(Config(), data, source=source)


def architecture_name(config):
    """``convmixer-<width>-<depth>``, then what differs from the paper's ConvMixer-256/8:
    ``-s<skip_period>`` (long skips), ``-p<patch>``, ``-k<kernel>``, the activation and
    ``-c<classes>``, e.g. ``convmixer-256-66-s3-swish``."""
    parts = [f"convmixer-{config.width}-{config.depth}"]
    if config.skip_period:
        parts.append(f"s{config.skip_period}")
    if config.patch_size != Config.patch_size:
        parts.append(f"p{config.patch_size}")
    if config.kernel_size != Config.kernel_size:
        parts.append(f"k{config.kernel_size}")
    parts.append(config.activation)
    if config.num_classes != Config.num_classes:
        parts.append(f"c{config.num_classes}")
    return "-".join(parts)


# Every Table-1 run: the reference code's seed (1204 in its train.py; the paper's text
# says 1024) and its validation/test halves of the official test set.
REFERENCE_PROTOCOL = {"seed": 1204, "split_seed": 1204, "split": "reference"}


def variant_config(variant):
    """The Config of a Table-1 variant (model fields and aug from VARIANTS)."""
    if variant not in architecture.VARIANTS:
        raise ConfigError(
            f"unknown variant {variant!r}; choose one of {', '.join(architecture.VARIANTS)}.")
    spec = architecture.VARIANTS[variant]
    changes = {key: spec[key] for key in architecture.ARCH_KEYS}
    changes.update(REFERENCE_PROTOCOL)
    changes.update(name=variant, aug=spec["aug"])
    return merge(Config(), changes)


__all__ = ["Config", "ConfigError", "architecture_name", "coerce", "differing", "from_dict",
           "merge", "parse_override", "validate", "variant_config"]
