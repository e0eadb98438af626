"""The recipe's augmentation stages as both pipeline forms run them: each a ``Stage``, the
uniform draws in [0, 1) it takes per batch and a function of the images and those draws
in any op namespace (``keras.ops``, or keras-cv's TensorFlow namespace inside tf.data).

``augment.py`` wraps each ``Stage`` once as a keras-cv layer (tf.data) and once as a
Keras layer (the device): the forms differ only in where the draws come from, and tests
give both the same draws as torchvision.
"""

import dataclasses

from cmxl_keras import crop, erasing, jitter, randaugment

ORDER = ("crop", "flip", "randaugment", "jitter", "erasing")  # the reference's order


@dataclasses.dataclass(frozen=True)
class Stage:
    """One augmentation written in this package, as both forms use it: the uniform draws
    in [0, 1) it takes for a batch (``shapes(batch) -> {name: shape}``) and the function
    ``compute(ops, images, draws)`` of float32 images in [0, 255] and those draws."""

    name: str  # its name in ``ORDER``
    shapes: object
    compute: object
    params: dict


def flip(ops, images, flip_u):
    """torchvision's ``RandomHorizontalFlip(0.5)``: image ``i`` mirrored where
    ``flip_u[i] < 0.5``. Written here, though Keras and keras-cv have ``RandomFlip``, so
    that its draw is an argument like every other stage's: keyed by the training step in
    tf.data (a resumed run draws what the uninterrupted run drew) and given by the tests."""
    return ops.where(flip_u[:, None, None, None] < 0.5, ops.flip(images, axis=2), images)


def of_spec(spec):
    """The stages that ``spec`` (an ``augment.AugmentSpec``) turns on, by name: crop,
    flip, RandAugment (torchvision's policy), jitter, erasing."""
    stages = {}
    if spec.crop_scale:
        scale = tuple(spec.crop_scale)
        stages["crop"] = Stage(
            "crop", lambda batch: {"area": (batch,), "top": (batch,), "left": (batch,)},
            lambda ops, x, d: crop.run(ops, x, d["area"], d["top"], d["left"], scale),
            {"scale": scale})
    if spec.flip:
        stages["flip"] = Stage("flip", lambda batch: {"flip": (batch,)},
                               lambda ops, x, d: flip(ops, x, d["flip"]), {"p": 0.5})
    if spec.randaugment_ops and spec.randaugment == "torchvision":
        randaugment.strengths(spec.randaugment_magnitude, spec.image_size)  # checks the level
        n, level, size = spec.randaugment_ops, spec.randaugment_magnitude, spec.image_size
        stages["randaugment"] = Stage(
            "randaugment", lambda batch: {"op": (n, batch), "sign": (n, batch)},
            lambda ops, x, d: randaugment.run(ops, x, d["op"], d["sign"], level, size),
            {"num_ops": n, "magnitude": level, "image_size": size})
    if any(spec.jitter):
        strengths = tuple(spec.jitter)
        stages["jitter"] = Stage(
            "jitter", jitter.draw_shapes,
            lambda ops, x, d: jitter.run(ops, x, d["factor"], d["order"], strengths),
            {"strengths": strengths})
    if spec.erase_prob:
        prob, fill = spec.erase_prob, tuple(spec.erase_fill)
        stages["erasing"] = Stage(
            "erasing", erasing.draw_shapes,
            lambda ops, x, d: erasing.run(ops, x, d, prob, fill),
            {"prob": prob, "fill": fill})
    return stages


def stage_seed(seed, name):
    """Stage ``name``'s own seed from the run's: stages seeded alike would draw the same
    numbers (a crop's offset would decide the flip)."""
    return None if seed is None else seed + 7919 * (ORDER.index(name) + 1)
