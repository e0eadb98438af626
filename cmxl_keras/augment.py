"""The paper's training augmentations, as keras-cv layers and tf ops inside tf.data.

The pipeline is defined once, as data (``AugmentSpec`` from the config), and built from
that into batched TensorFlow code (``build_tf_augmenter``). Every random draw is per
image, as in the reference's torchvision transforms, even though the ops run on batches.
Images stay raw (float32 in [0, 255]); normalization is inside the model.

Reference order and how each torchvision parameter maps here:

1. ``RandomResizedCrop(32, scale=(0.75, 1.0), ratio=(1.0, 1.0))`` ->
   ``TorchvisionRandomResizedCrop`` below, a keras-cv layer that computes ``crop.py``:
   the square crop drawn in whole pixels as torchvision draws it, resized as PIL resizes
   it. keras-cv's ``RandomCropAndResize`` places a crop of any fractional size and offset
   and samples it by pixel corners: its crops move the image less than torchvision's
   (0.85x the mean pixel change on real CIFAR images), and 12 % of torchvision's are
   the whole image, none of keras-cv's.
2. ``RandomHorizontalFlip(p=0.5)`` -> ``keras_cv.layers.RandomFlip("horizontal")``.
3. ``RandAugment(num_ops=2, magnitude=12)`` -> ``TorchvisionRandAugment`` below, a
   keras-cv layer (``VectorizedBaseImageAugmentationLayer``) that computes torchvision's
   policy from ``randaugment.py``: per image, two ops drawn from torchvision's 14
   (Identity among them) at the fixed strength of level 12 of 31, with a random sign
   where torchvision has one, on 8-bit pixels with PIL's arithmetic, geometric ops
   filled with 0. keras-cv's own ``RandAugment`` is another policy (see
   ``randaugment.py``); it stays available as ``randaugment = "keras_cv"``
   (``keras_cv.layers.RandAugment(magnitude=12/30, magnitude_stddev=0,
   rate=13/14)``, the same fraction of each of its ops' maxima).
4. ``ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)`` -> ``color_jitter``
   below, written here because keras-cv's colour layers use other semantics (additive
   brightness, per-channel contrast, saturation on a 0..1 scale where 0.5 is identity).
   As torchvision: each factor uniform in ``[1 - f, 1 + f]``; brightness scales the image,
   contrast blends it with the mean of its grayscale, saturation blends it with its
   grayscale; the three run in a random order per image.
5. Normalize -> inside the model (``normalize`` layer).
6. ``RandomErasing(p=0.2, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0)`` ->
   ``random_erasing`` below. keras-cv's ``RandomCutout`` draws height and width
   fractions independently and always cuts, so it cannot express torchvision's area and
   log-uniform aspect ratio with an apply rate; this is the torchvision algorithm,
   vectorized (up to 10 tries per image, else unchanged). torchvision erases *after*
   Normalize with value 0, i.e. with the dataset mean colour in raw pixels, which is what
   is filled here (the model then normalizes it back to 0).

CutMix and MixUp (keras-cv) are options, off by default as in every reported run; they
need one-hot labels, so with them on the dataset yields one-hot labels.

Every stage computes in float32 whatever the model's dtype policy: under a
mixed_float16 policy keras-cv's layers would otherwise compute in float16 and its
RandAugment returns NaN images.
"""

import contextlib
import dataclasses
import itertools
import math

from cmxl_keras import crop, randaugment
from cmxl_keras.architecture import CIFAR_MEAN, DATASETS

RANDAUGMENT_LEVELS = randaugment.LEVELS  # torchvision: 31 magnitude levels, 0..30
# For the keras-cv policy: torchvision's 14 ops include Identity, keras-cv's 10 do not,
# so each of its draws does nothing 1/14 of the time.
RANDAUGMENT_RATE = 13 / 14
RANDAUGMENT_POLICIES = ("torchvision", "keras_cv")
ERASE_AREA = (0.02, 0.33)
ERASE_ASPECT = (0.3, 3.3)
ERASE_TRIES = 10  # torchvision tries 10 boxes before it gives up and returns the image
MIX_ALPHA = 1.0  # reference CutMix/MixUp beta(1, 1)


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """Stages and parameters of the training pipeline; a stage at 0 / False is off."""

    image_size: int = 32
    crop_scale: tuple = (0.75, 1.0)  # None: no crop
    flip: bool = True
    randaugment_ops: int = 2
    randaugment_magnitude: int = 12  # of RANDAUGMENT_LEVELS
    randaugment: str = "torchvision"  # the policy: torchvision's (the paper's) or keras-cv's
    jitter: tuple = (0.2, 0.2, 0.2)  # brightness, contrast, saturation
    erase_prob: float = 0.2
    # the erase fill in pixels: the dataset's mean colour (torchvision's value 0 after
    # Normalize with that dataset's mean)
    erase_fill: tuple = tuple(255.0 * m for m in CIFAR_MEAN)
    cutmix_prob: float = 0.0
    mixup_prob: float = 0.0
    num_classes: int = 10

    @classmethod
    def from_config(cls, cfg):
        if cfg.aug == "none":
            return cls(image_size=cfg.image_size, crop_scale=None, flip=False,
                       randaugment_ops=0, jitter=(0.0, 0.0, 0.0), erase_prob=0.0,
                       cutmix_prob=0.0, mixup_prob=0.0, num_classes=cfg.num_classes)
        crop = (cfg.crop_scale_min, cfg.crop_scale_max)
        mean = DATASETS[cfg.dataset]["mean"]
        return cls(image_size=cfg.image_size, erase_fill=tuple(255.0 * m for m in mean),
                   crop_scale=None if crop == (1.0, 1.0) else crop, flip=cfg.flip,
                   randaugment_ops=cfg.randaugment_ops,
                   randaugment_magnitude=cfg.randaugment_magnitude,
                   randaugment=cfg.randaugment,
                   jitter=(cfg.jitter_brightness, cfg.jitter_contrast, cfg.jitter_saturation),
                   erase_prob=cfg.erase_prob, cutmix_prob=cfg.cutmix_prob,
                   mixup_prob=cfg.mixup_prob, num_classes=cfg.num_classes)

    @property
    def keras_cv_magnitude(self):
        """torchvision level -> keras-cv's 0..1 scale (the same fraction of each op's max)."""
        return self.randaugment_magnitude / (RANDAUGMENT_LEVELS - 1)

    @property
    def one_hot_labels(self):
        return self.cutmix_prob > 0 or self.mixup_prob > 0

    @property
    def is_identity(self):
        return (self.crop_scale is None and not self.flip and self.randaugment_ops == 0
                and not any(self.jitter) and self.erase_prob == 0 and not self.one_hot_labels)

    def describe(self):
        if self.is_identity:
            return "none"
        parts = []
        if self.crop_scale:
            parts.append(f"RandomResizedCrop(scale={self.crop_scale})")
        if self.flip:
            parts.append("HorizontalFlip(0.5)")
        if self.randaugment_ops:
            parts.append(f"RandAugment({self.randaugment}, {self.randaugment_ops} ops, "
                         f"magnitude {self.randaugment_magnitude}/{RANDAUGMENT_LEVELS - 1})")
        if any(self.jitter):
            parts.append("ColorJitter(%g, %g, %g)" % self.jitter)
        if self.erase_prob:
            parts.append(f"RandomErasing(p={self.erase_prob})")
        if self.cutmix_prob:
            parts.append(f"CutMix(p={self.cutmix_prob})")
        if self.mixup_prob:
            parts.append(f"MixUp(p={self.mixup_prob})")
        return " -> ".join(parts)


# ----------------------------------------------------------------------------- tf ops
def _grayscale(images):
    import tensorflow as tf

    # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale.
    weights = tf.constant([0.299, 0.587, 0.114], images.dtype)
    return tf.reduce_sum(images * weights, axis=-1, keepdims=True)


def color_jitter(images, brightness, contrast, saturation, seed=None):
    """torchvision ColorJitter on a float batch in [0, 255]; per-image factors and order."""
    import tensorflow as tf

    batch = tf.shape(images)[0]

    def factor(strength):
        if not strength:
            return tf.ones([batch, 1, 1, 1], images.dtype)
        return tf.random.uniform([batch, 1, 1, 1], 1 - strength, 1 + strength, images.dtype)

    b, c, s = factor(brightness), factor(contrast), factor(saturation)

    def blend(x, other, f):
        return tf.clip_by_value(f * x + (1 - f) * other, 0.0, 255.0)

    ops = (
        lambda x: blend(x, tf.zeros_like(x), b),
        lambda x: blend(x, tf.reduce_mean(_grayscale(x), axis=[1, 2, 3], keepdims=True), c),
        lambda x: blend(x, _grayscale(x), s),
    )
    orders = tf.constant(list(itertools.permutations(range(3))), tf.int32)  # 6 x 3
    order = tf.gather(orders, tf.random.uniform([batch], 0, 6, tf.int32))
    x = images
    for step in range(3):
        candidates = tf.stack([op(x) for op in ops])  # 3 x B x H x W x C (tiny images)
        pick = tf.one_hot(order[:, step], 3, dtype=images.dtype)  # B x 3
        x = tf.einsum("kbhwc,bk->bhwc", candidates, pick)
    return x


def random_erasing(images, prob, area=ERASE_AREA, aspect=ERASE_ASPECT, fill=None):
    """torchvision RandomErasing on a float batch; returns the batch and the erase mask."""
    import tensorflow as tf

    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    fill = tf.constant([255.0 * m for m in CIFAR_MEAN] if fill is None else fill,
                       images.dtype)
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    # ERASE_TRIES candidate boxes per image; the first that fits is used, as torchvision.
    tries = [batch, ERASE_TRIES]
    target = tf.random.uniform(tries, area[0], area[1]) * h_f * w_f
    log_ratio = tf.random.uniform(tries, math.log(aspect[0]), math.log(aspect[1]))
    ratio = tf.exp(log_ratio)
    box_h = tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32)
    box_w = tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32)
    fits = (box_h < height) & (box_w < width)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    any_fit = tf.reduce_any(fits, axis=1)
    pick = lambda t: tf.gather(t, first, batch_dims=1)
    box_h, box_w = pick(box_h), pick(box_w)
    top = tf.cast(tf.floor(tf.random.uniform([batch]) *
                           tf.cast(height - box_h + 1, tf.float32)), tf.int32)
    left = tf.cast(tf.floor(tf.random.uniform([batch]) *
                            tf.cast(width - box_w + 1, tf.float32)), tf.int32)
    apply = (tf.random.uniform([batch]) < prob) & any_fit
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + box_h)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + box_w)[:, None, None])
              & apply[:, None, None])
    mask = tf.cast(inside, images.dtype)[..., None]
    return images * (1 - mask) + fill * mask, mask


@contextlib.contextmanager
def _float32_policy():
    """Layers made inside compute in float32 whatever the global dtype policy: keras-cv's
    composite layers (RandAugment) make their sub-layers with the global policy, so a
    ``dtype`` argument on the outer layer alone would not reach them."""
    import keras

    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _torchvision_crop_layer():
    """``TorchvisionRandomResizedCrop``: ``crop.run`` as a keras-cv layer (made on first
    use, as the RandAugment layer below)."""
    import keras_cv
    import tensorflow as tf
    from keras_cv.src.backend import ops as tf_data_ops

    class TorchvisionRandomResizedCrop(keras_cv.layers.VectorizedBaseImageAugmentationLayer):
        """torchvision's ``RandomResizedCrop(size, scale, ratio=(1, 1))`` for square
        images in [0, 255], per image."""

        def __init__(self, scale=(0.75, 1.0), seed=None, **kwargs):
            kwargs.setdefault("dtype", "float32")
            super().__init__(seed=seed, **kwargs)
            self.scale = tuple(scale)

        def get_random_transformation_batch(self, batch_size, **kwargs):
            draw = lambda: self._random_generator.uniform(  # noqa: E731
                (batch_size,), 0.0, 1.0, tf.float32)
            return {"area": draw(), "top": draw(), "left": draw()}

        def augment_images(self, images, transformations, **kwargs):
            return crop.run(tf_data_ops, images, transformations["area"],
                            transformations["top"], transformations["left"], self.scale)

        def get_config(self):
            return dict(super().get_config(), scale=self.scale)

    return TorchvisionRandomResizedCrop


def _torchvision_randaugment_layer():
    """``TorchvisionRandAugment``: torchvision's RandAugment as a keras-cv layer (made on
    first use: keras-cv is imported only by the tf.data pipeline)."""
    import keras_cv
    import tensorflow as tf
    # keras-cv runs its layers' ops as TensorFlow ops inside tf.data whatever the Keras
    # backend; this namespace is that switch (keras.ops outside the scope, TensorFlow's
    # ops inside it).
    from keras_cv.src.backend import ops as tf_data_ops

    class TorchvisionRandAugment(keras_cv.layers.VectorizedBaseImageAugmentationLayer):
        """torchvision's ``RandAugment(num_ops, magnitude)`` for images in [0, 255]: per
        image, ``num_ops`` ops of ``randaugment.OPS`` with a random sign each."""

        def __init__(self, num_ops=2, magnitude=12, image_size=32, seed=None, **kwargs):
            kwargs.setdefault("dtype", "float32")
            super().__init__(seed=seed, **kwargs)
            randaugment.strengths(magnitude, image_size)  # validates the level
            self.num_ops, self.magnitude, self.image_size = num_ops, magnitude, image_size

        def get_random_transformation_batch(self, batch_size, **kwargs):
            draw = lambda: self._random_generator.uniform(  # noqa: E731
                (self.num_ops, batch_size), 0.0, 1.0, tf.float32)
            return {"op": draw(), "sign": draw()}

        def augment_images(self, images, transformations, **kwargs):
            return randaugment.run(tf_data_ops, images, transformations["op"],
                                   transformations["sign"], self.magnitude, self.image_size)

        def augment_labels(self, labels, transformations, **kwargs):
            return labels

        def get_config(self):
            return dict(super().get_config(), num_ops=self.num_ops, magnitude=self.magnitude,
                        image_size=self.image_size)

    return TorchvisionRandAugment


def keras_cv_stages(spec, seed=None):
    """The keras-cv layers of stages 1-3 (crop, flip, RandAugment) that ``spec`` turns
    on, computing in float32."""
    import keras_cv

    stages = []
    with _float32_policy():
        if spec.crop_scale:
            stages.append(_torchvision_crop_layer()(spec.crop_scale, seed=_stage_seed(seed, 0)))
        if spec.flip:
            stages.append(keras_cv.layers.RandomFlip("horizontal", seed=_stage_seed(seed, 1)))
        if spec.randaugment_ops and spec.randaugment == "keras_cv":
            stages.append(keras_cv.layers.RandAugment(
                value_range=(0, 255), augmentations_per_image=spec.randaugment_ops,
                magnitude=spec.keras_cv_magnitude, magnitude_stddev=0.0,
                rate=RANDAUGMENT_RATE, seed=_stage_seed(seed, 2)))
        elif spec.randaugment_ops:
            stages.append(_torchvision_randaugment_layer()(
                spec.randaugment_ops, spec.randaugment_magnitude, spec.image_size,
                seed=_stage_seed(seed, 2)))
    return stages


def _stage_seed(seed, index):
    """One seed per stage: stages seeded alike would draw the same numbers (a crop's
    offset would decide the flip)."""
    return None if seed is None else seed + 7919 * (index + 1)


def build_tf_augmenter(spec, seed=None):
    """A function ``(images uint8/float [B,H,W,3], labels [B]) -> (float32 images, labels)``.

    For use in ``Dataset.map`` after ``batch``: keras-cv layers draw per image.
    """
    import keras_cv
    import tensorflow as tf

    stages = keras_cv_stages(spec, seed)
    with _float32_policy():
        cutmix = keras_cv.layers.CutMix(alpha=MIX_ALPHA, seed=seed) if spec.cutmix_prob else None
        mixup = keras_cv.layers.MixUp(alpha=MIX_ALPHA, seed=seed) if spec.mixup_prob else None

    def maybe(layer, prob, images, labels):
        def mixed():
            out = layer({"images": images, "labels": labels})
            return out["images"], out["labels"]

        return tf.cond(tf.random.uniform([]) < prob, mixed, lambda: (images, labels))

    def augment(images, labels):
        images = tf.cast(images, tf.float32)
        for stage in stages:
            images = stage(images)
        if any(spec.jitter):
            images = color_jitter(images, *spec.jitter)
        if spec.erase_prob:
            images, _ = random_erasing(images, spec.erase_prob, fill=spec.erase_fill)
        if spec.one_hot_labels:
            labels = tf.one_hot(tf.cast(labels, tf.int32), spec.num_classes)
            if cutmix is not None:
                images, labels = maybe(cutmix, spec.cutmix_prob, images, labels)
            if mixup is not None:
                images, labels = maybe(mixup, spec.mixup_prob, images, labels)
        return images, labels

    return augment


# ------------------------------------------------------ Keras layers (any backend, on device)
# The same stages as Keras layers, for backends without tf.data (JAX, PyTorch) or to
# augment on the accelerator: they sit in front of the model during training only
# (``train`` saves models without them) and draw per image from Keras' seeded RNG.
# Crop, colour jitter and erasing are written here with keras.ops, with the torchvision
# semantics of the tf.data form above: Keras core has no RandomResizedCrop, and its
# RandomColorJitter / RandomErasing use other parameters (see the tf.data notes).
# RandAugment computes the same functions (``randaugment.py``) as the tf.data form, with
# its draws per image from Keras' RNG. tests/test_augment.py measures how the two forms
# agree stage by stage, and tests/test_reference.py compares both with torchvision.
def _keras_layers():
    import keras

    class _Augmentation(keras.layers.Layer):
        """Per-image random stage on float images in [0, 255]; identity at inference."""

        def __init__(self, seed=None, **kwargs):
            kwargs.setdefault("dtype", "float32")
            super().__init__(**kwargs)
            self.seed_generator = keras.random.SeedGenerator(seed)

        def uniform(self, shape, low=0.0, high=1.0):
            return keras.random.uniform(shape, low, high, seed=self.seed_generator)

        def call(self, images, training=None):
            if not training:
                return images
            return self.augment(keras.ops.cast(images, "float32"))

        def compute_output_shape(self, input_shape):
            return input_shape

    class RandomResizedCrop(_Augmentation):
        """``crop.run``: torchvision's RandomResizedCrop with ratio 1, per image."""

        def __init__(self, scale=(0.75, 1.0), seed=None, **kwargs):
            super().__init__(seed, **kwargs)
            self.scale = tuple(scale)

        def augment(self, images):
            batch = keras.ops.shape(images)[0]
            return crop.run(keras.ops, images, self.uniform((batch,)),
                            self.uniform((batch,)), self.uniform((batch,)), self.scale)

    class ColorJitter(_Augmentation):
        """``color_jitter`` above in keras.ops: same factors, order and clipping."""

        def __init__(self, brightness=0.2, contrast=0.2, saturation=0.2, seed=None, **kwargs):
            super().__init__(seed, **kwargs)
            self.strengths = (brightness, contrast, saturation)

        def augment(self, images):
            ops = keras.ops
            batch = ops.shape(images)[0]
            b, c, s = (self.uniform((batch, 1, 1, 1), 1 - f, 1 + f) if f
                       else ops.ones((batch, 1, 1, 1)) for f in self.strengths)

            def gray(x):
                return ops.sum(x * ops.convert_to_tensor([0.299, 0.587, 0.114]), axis=-1,
                               keepdims=True)

            def blend(x, other, f):
                return ops.clip(f * x + (1 - f) * other, 0.0, 255.0)

            candidates = (
                lambda x: blend(x, ops.zeros_like(x), b),
                lambda x: blend(x, ops.mean(gray(x), axis=(1, 2, 3), keepdims=True), c),
                lambda x: blend(x, gray(x), s),
            )
            orders = ops.convert_to_tensor(list(itertools.permutations(range(3))), "int32")
            pick = ops.floor(self.uniform((batch,), 0.0, 6.0))
            order = ops.take(orders, ops.minimum(ops.cast(pick, "int32"), 5), axis=0)
            x = images
            for step in range(3):
                stacked = ops.stack([op(x) for op in candidates])  # 3 x B x H x W x C
                weights = ops.one_hot(order[:, step], 3)  # B x 3
                x = ops.einsum("kbhwc,bk->bhwc", stacked, weights)
            return x

    class RandomErasing(_Augmentation):
        """``random_erasing`` above in keras.ops: the torchvision algorithm, filled with
        ``fill`` (the dataset's mean colour; CIFAR-10's by default)."""

        def __init__(self, prob=0.2, fill=None, seed=None, **kwargs):
            super().__init__(seed, **kwargs)
            self.prob = prob
            self.fill = tuple(fill or (255.0 * m for m in CIFAR_MEAN))

        def augment(self, images):
            ops = keras.ops
            shape = ops.shape(images)
            batch, height, width = shape[0], shape[1], shape[2]
            h_f, w_f = float(height), float(width)
            target = self.uniform((batch, ERASE_TRIES), *ERASE_AREA) * h_f * w_f
            ratio = ops.exp(self.uniform((batch, ERASE_TRIES), math.log(ERASE_ASPECT[0]),
                                         math.log(ERASE_ASPECT[1])))
            box_h = ops.round(ops.sqrt(target * ratio))
            box_w = ops.round(ops.sqrt(target / ratio))
            fits = ops.logical_and(box_h < h_f, box_w < w_f)
            first = ops.argmax(ops.cast(fits, "int32"), axis=1)[:, None]
            box_h = ops.take_along_axis(box_h, first, axis=1)[:, 0]
            box_w = ops.take_along_axis(box_w, first, axis=1)[:, 0]
            top = ops.floor(self.uniform((batch,)) * (h_f - box_h + 1))
            left = ops.floor(self.uniform((batch,)) * (w_f - box_w + 1))
            apply = ops.logical_and(self.uniform((batch,)) < self.prob, ops.any(fits, axis=1))
            rows = ops.arange(height, dtype="float32")[None, :, None]
            cols = ops.arange(width, dtype="float32")[None, None, :]
            inside = ((rows >= top[:, None, None]) & (rows < (top + box_h)[:, None, None])
                      & (cols >= left[:, None, None]) & (cols < (left + box_w)[:, None, None])
                      & apply[:, None, None])
            mask = ops.cast(inside, "float32")[..., None]
            fill = ops.convert_to_tensor(self.fill, dtype="float32")
            return images * (1 - mask) + fill * mask

    class RandAugment(_Augmentation):
        """torchvision's RandAugment from ``randaugment.py``, as the tf.data form's
        ``TorchvisionRandAugment``: ops and signs drawn per image."""

        def __init__(self, num_ops=2, magnitude=12, image_size=32, seed=None, **kwargs):
            super().__init__(seed, **kwargs)
            randaugment.strengths(magnitude, image_size)  # validates the level
            self.num_ops, self.magnitude, self.image_size = num_ops, magnitude, image_size

        def augment(self, images):
            batch = keras.ops.shape(images)[0]
            op = self.uniform((self.num_ops, batch))
            sign = self.uniform((self.num_ops, batch))
            return randaugment.run(keras.ops, images, op, sign, self.magnitude,
                                   self.image_size)

    return RandomResizedCrop, ColorJitter, RandomErasing, RandAugment


def keras_layers(spec, seed=None):
    """The Keras-layer form of ``spec``: a list of layers to put in front of the model
    during training (any backend). CutMix/MixUp mix labels and need the tf.data form."""
    import keras

    if spec.one_hot_labels:
        raise ValueError("CutMix/MixUp change the labels and run only in the tf.data pipeline "
                         "(TensorFlow backend); set cutmix_prob and mixup_prob to 0.")
    RandomResizedCrop, ColorJitter, RandomErasing, RandAugment = _keras_layers()
    stages = []
    if spec.crop_scale:
        stages.append(RandomResizedCrop(spec.crop_scale, seed=_stage_seed(seed, 0),
                                        name="aug_crop"))
    if spec.flip:
        stages.append(keras.layers.RandomFlip("horizontal", seed=_stage_seed(seed, 1),
                                              dtype="float32", name="aug_flip"))
    if spec.randaugment_ops:
        if spec.randaugment != "torchvision":
            raise ValueError(
                f"randaugment {spec.randaugment!r}: keras-cv's policy runs only in the "
                f"tf.data pipeline (TensorFlow); the Keras-layer form has torchvision's.")
        stages.append(RandAugment(spec.randaugment_ops, spec.randaugment_magnitude,
                                  spec.image_size, seed=_stage_seed(seed, 2),
                                  name="aug_randaugment"))
    if any(spec.jitter):
        stages.append(ColorJitter(*spec.jitter, seed=_stage_seed(seed, 3),
                                  name="aug_color_jitter"))
    if spec.erase_prob:
        stages.append(RandomErasing(spec.erase_prob, fill=spec.erase_fill,
                                    seed=_stage_seed(seed, 4),
                                    name="aug_erasing"))
    return stages


def apply_keras_layers(stages, images):
    """Runs ``stages`` on a batch in training mode (for tests and the augmentation grid)."""
    import keras

    x = keras.ops.cast(keras.ops.convert_to_tensor(images), "float32")
    for stage in stages:
        x = stage(x, training=True)
    return keras.ops.convert_to_numpy(x)
