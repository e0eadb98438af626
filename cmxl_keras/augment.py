"""The paper's training augmentations, as keras-cv layers and tf ops inside tf.data.

The pipeline is defined once, as data (``AugmentSpec`` from the config), and built from
that into batched TensorFlow code (``build_tf_augmenter``). Every random draw is per
image, as in the reference's torchvision transforms, even though the ops run on batches.
Images stay raw (float32 in [0, 255]); normalization is inside the model.

Reference order and how each torchvision parameter maps here:

1. ``RandomResizedCrop(32, scale=(0.75, 1.0), ratio=(1.0, 1.0))`` ->
   ``keras_cv.layers.RandomCropAndResize(crop_area_factor=(0.75, 1.0),
   aspect_ratio_factor=(1.0, 1.0))``: both draw the crop's area fraction uniformly from
   ``scale`` and place it uniformly, then resize bilinearly to 32x32. With ratio fixed at
   1 the crop is square in both.
2. ``RandomHorizontalFlip(p=0.5)`` -> ``keras_cv.layers.RandomFlip("horizontal")``.
3. ``RandAugment(num_ops=2, magnitude=12)`` (torchvision: 31 magnitude levels 0..30, each
   op at a fixed strength ``magnitude / 30`` of its maximum, always applied) ->
   ``keras_cv.layers.RandAugment(augmentations_per_image=2, magnitude=12 / 30,
   magnitude_stddev=0, rate=13 / 14)``. keras-cv's magnitude is the same linear fraction of
   each op's maximum on a 0..1 scale; ``magnitude_stddev=0`` keeps it fixed (keras-cv's
   default 0.15 would jitter it). torchvision picks among 14 ops, one being Identity, so a
   draw changes nothing 1/14 of the time; keras-cv has no Identity op, and ``rate=13/14``
   gives each draw the same chance of doing nothing. keras-cv's op list (auto-contrast,
   equalize, solarize, colour, contrast, brightness, shear x/y, translate x/y) lacks
   torchvision's rotate, posterize and sharpness, and its per-op maxima differ; these
   are keras-cv's choices and are kept as the user asked for keras-cv's RandAugment.
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
"""

import dataclasses
import itertools
import math

from cmxl_keras.architecture import CIFAR_MEAN

# torchvision RandAugment: 31 magnitude levels, 0..30.
RANDAUGMENT_LEVELS = 31
# torchvision RandAugment's 14 ops include Identity; keras-cv's 10 ops do not.
RANDAUGMENT_RATE = 13 / 14
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
    jitter: tuple = (0.2, 0.2, 0.2)  # brightness, contrast, saturation
    erase_prob: float = 0.2
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
        return cls(image_size=cfg.image_size,
                   crop_scale=None if crop == (1.0, 1.0) else crop, flip=cfg.flip,
                   randaugment_ops=cfg.randaugment_ops,
                   randaugment_magnitude=cfg.randaugment_magnitude,
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
            parts.append(f"RandAugment({self.randaugment_ops} ops, magnitude "
                         f"{self.randaugment_magnitude}/{RANDAUGMENT_LEVELS - 1})")
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


def keras_cv_stages(spec, seed=None):
    """The keras-cv layers of stages 1-3 (crop, flip, RandAugment) that ``spec`` turns on."""
    import keras_cv

    stages = []
    if spec.crop_scale:
        stages.append(keras_cv.layers.RandomCropAndResize(
            target_size=(spec.image_size, spec.image_size), crop_area_factor=spec.crop_scale,
            aspect_ratio_factor=(1.0, 1.0), seed=seed))
    if spec.flip:
        stages.append(keras_cv.layers.RandomFlip("horizontal", seed=seed))
    if spec.randaugment_ops:
        stages.append(keras_cv.layers.RandAugment(
            value_range=(0, 255), augmentations_per_image=spec.randaugment_ops,
            magnitude=spec.keras_cv_magnitude, magnitude_stddev=0.0, rate=RANDAUGMENT_RATE,
            seed=seed))
    return stages


def build_tf_augmenter(spec, seed=None):
    """A function ``(images uint8/float [B,H,W,3], labels [B]) -> (float32 images, labels)``.

    For use in ``Dataset.map`` after ``batch``: keras-cv layers draw per image.
    """
    import keras_cv
    import tensorflow as tf

    stages = keras_cv_stages(spec, seed)
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
            images, _ = random_erasing(images, spec.erase_prob)
        if spec.one_hot_labels:
            labels = tf.one_hot(tf.cast(labels, tf.int32), spec.num_classes)
            if cutmix is not None:
                images, labels = maybe(cutmix, spec.cutmix_prob, images, labels)
            if mixup is not None:
                images, labels = maybe(mixup, spec.mixup_prob, images, labels)
        return images, labels

    return augment
