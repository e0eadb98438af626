"""Trained models in Python, in ``keras.applications``' convention: a builder per
architecture with ``weights=``, ``include_top``, ``pooling`` and ``classifier_activation``,
and ``from_preset`` (KerasHub's name) for a shipped model by name::

    from cmxl_keras import applications

    model = applications.ConvMixer(weights="cifar10")      # CM-Vanilla, trained, softmax
    probabilities = model.predict(images)                   # uint8 or float in [0, 255]
    backbone = applications.ConvMixer(weights="cifar10", include_top=False, pooling="avg")
    same = applications.from_preset("cm_vanilla")

The models take raw pixels (the normalization is inside, as in ``keras.applications``'
ConvNeXt) and compute in the global dtype policy (float32 unless you set another): a
model trained under mixed precision on a GPU comes back in float32, as fast as a CPU
runs it. A preset is an exported model folder that holds ``model.keras`` (``python cli.py
export`` writes it) and ``metadata.json``: the shipped ones in ``exported/`` (installed
as ``cmxl_keras/presets/`` by ``pip install .``), or any export of your own by path.
"""

import os

from cmxl_keras.errors import RunError
from cmxl_keras.inference import KERAS_FILE

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
# The shipped presets: exported/ of a clone, or cmxl_keras/presets/ where installed.
PRESET_DIRS = (os.path.join(os.path.dirname(_PACKAGE), "exported"),
               os.path.join(_PACKAGE, "presets"))


def presets():
    """The names of the shipped presets (exported folders with a ``model.keras``)."""
    names = set()
    for folder in PRESET_DIRS:
        if os.path.isdir(folder):
            names.update(name for name in os.listdir(folder)
                         if os.path.isfile(os.path.join(folder, name, KERAS_FILE)))
    return sorted(names)


def preset_dir(preset):
    """The folder of ``preset``: a shipped preset's name (``presets()``) is that preset,
    even where the working folder holds a folder of the same name; a path (written with
    a separator, as ``./name``, or absolute) is an exported folder."""
    shipped = [os.path.join(folder, preset) for folder in PRESET_DIRS]
    as_path = os.sep in preset or "/" in preset or os.path.isabs(preset)
    candidates = [preset] if as_path else shipped + [preset]
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, KERAS_FILE)):
            return folder
    if os.path.isdir(preset):
        raise RunError(f"{preset!r} has no {KERAS_FILE}: export it again with the keras "
                       f"format (python cli.py export RUN_DIR --formats ...,keras).")
    raise RunError(f"no preset {preset!r}: the shipped ones are {', '.join(presets()) or '(none)'}"
                   f"; or give the path of a folder that 'python cli.py export' wrote.")


def from_preset(preset, include_top=True, pooling=None, classifier_activation="softmax",
                name=None):
    """The trained model ``preset`` (``presets()``, or an exported folder) as a Keras model
    in the global dtype policy; ``include_top``, ``pooling`` and
    ``classifier_activation`` as in ``keras.applications`` (``None`` gives logits)."""
    import keras

    from cmxl_keras import config as config_lib, inference, models

    folder = preset_dir(preset)
    metadata = inference.read_metadata(folder)
    if not metadata.get("config"):
        raise RunError(f"{folder!r}'s metadata.json records no config, so its architecture "
                       f"is unknown; export it from its run folder.")
    cfg = config_lib.from_dict(metadata["config"])
    stats = models.DATASETS[cfg.dataset]
    model = models.build_convmixer(
        width=cfg.width, depth=cfg.depth, patch_size=cfg.patch_size,
        kernel_size=cfg.kernel_size, num_classes=cfg.num_classes, activation=cfg.activation,
        skip_period=cfg.skip_period, input_shape=(cfg.image_size, cfg.image_size, 3),
        name=name or cfg.name, init=cfg.init, include_top=include_top, pooling=pooling,
        classifier_activation=classifier_activation if include_top else None,
        mean=stats["mean"], std=stats["std"])
    trained = inference.guarded(os.path.join(folder, KERAS_FILE), lambda: keras.saving.load_model(
        os.path.join(folder, KERAS_FILE), compile=False))
    for layer in model.layers:  # by name: the backbone has a subset of the layers
        weights = trained.get_layer(layer.name).get_weights() if layer.weights else []
        if weights:
            layer.set_weights(weights)
    return model


def _builder(variant, include_top, weights, input_shape, pooling, classes,
             classifier_activation, name, architecture):
    from cmxl_keras import models

    unknown = sorted(set(architecture) - set(models.ARCH_KEYS))
    if unknown:
        raise RunError(f"unknown hyper-parameter(s) {', '.join(unknown)}; a builder takes "
                       f"{', '.join(models.ARCH_KEYS)}.")
    arch = {key: models.VARIANTS[variant][key] for key in models.ARCH_KEYS}
    arch.update(architecture)
    if weights == "cifar10":
        if variant not in presets():
            raise RunError(f"weights='cifar10': no trained {variant} ships yet (shipped: "
                           f"{', '.join(presets()) or 'none'}); use weights=None (random "
                           f"initialization) or the path of a .keras / .weights.h5 file.")
        if architecture or classes != 10 or (input_shape is not None
                                             and tuple(input_shape) != (32, 32, 3)):
            raise RunError(
                f"weights='cifar10' is {variant} as the paper has it, a 10-class model of "
                f"32x32x3 images; got {architecture or 'its hyper-parameters'}, "
                f"classes={classes}, input_shape={input_shape}. Leave them unset, or use "
                f"weights=None.")
        return from_preset(variant, include_top, pooling, classifier_activation, name)
    model = models.build_convmixer(
        num_classes=classes, input_shape=input_shape or (32, 32, 3), name=name or variant,
        include_top=include_top, pooling=pooling,
        classifier_activation=classifier_activation if include_top else None, **arch)
    if weights is not None:
        if not os.path.isfile(str(weights)):
            raise RunError(f"weights={weights!r}: give 'cifar10', None, or the path of a "
                           f".keras or .weights.h5 file of this architecture.")
        model.load_weights(weights)
    return model


def ConvMixer(include_top=True, weights="cifar10", input_shape=None, pooling=None, classes=10,
              classifier_activation="softmax", name=None, **architecture):
    """The paper's CM-Vanilla (``models.VARIANTS["cm_vanilla"]``: ConvMixer-256/8, patch
    2, kernel 5, GELU); ``architecture`` (``width``, ``depth``, ``patch_size``,
    ``kernel_size``, ``activation``, ``skip_period``) changes it, with ``weights=None``
    or a file. ``weights="cifar10"`` is the shipped CM-Vanilla trained on CIFAR-10."""
    return _builder("cm_vanilla", include_top, weights, input_shape, pooling, classes,
                    classifier_activation, name, architecture)


def ConvMixerXL(include_top=True, weights=None, input_shape=None, pooling=None, classes=10,
                classifier_activation="softmax", name=None, **architecture):
    """The paper's CM-XL (``models.VARIANTS["cm_xl"]``: ConvMixer-256/66, patch 2, kernel
    5, SiLU, three long skips); ``architecture`` as for ``ConvMixer``. No trained CM-XL
    ships yet: ``weights=None`` or a file."""
    return _builder("cm_xl", include_top, weights, input_shape, pooling, classes,
                    classifier_activation, name, architecture)
