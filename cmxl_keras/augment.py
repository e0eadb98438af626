"""The paper's training augmentations, as keras-cv layers inside tf.data and as Keras
layers on the device.

The pipeline is defined once, as data (``AugmentSpec`` from the config), and built from
that into batched TensorFlow code (``build_tf_augmenter``). Every random draw is per
image, as in the reference's torchvision transforms, even though the ops run on batches.
Images stay raw (float32 in [0, 255]); normalization is inside the model.

Reference order and how each torchvision parameter maps here:

1. ``RandomResizedCrop(32, scale=(0.75, 1.0), ratio=(1.0, 1.0))`` -> ``crop.py``:
   the square crop drawn in whole pixels as torchvision draws it, resized as PIL resizes
   it. keras-cv's ``RandomCropAndResize`` places a crop of any fractional size and offset
   and samples it by pixel corners: its crops move the image less than torchvision's
   (0.85x the mean pixel change on real CIFAR images), and 12 % of torchvision's are
   the whole image, none of keras-cv's.
2. ``RandomHorizontalFlip(p=0.5)`` -> ``transforms.flip`` (one ``where``; Keras' and
   keras-cv's ``RandomFlip`` draw from their own state, and here every draw is an
   argument).
3. ``RandAugment(num_ops=2, magnitude=12)`` -> ``randaugment.py``, torchvision's
   policy: per image, two ops drawn from torchvision's 14
   (Identity among them) at the fixed strength of level 12 of 31, with a random sign
   where torchvision has one, on 8-bit pixels with PIL's arithmetic, geometric ops
   filled with 0. keras-cv's own ``RandAugment`` is another policy (see
   ``randaugment.py``); it stays available as ``randaugment = "keras_cv"``
   (``keras_cv.layers.RandAugment(magnitude=12/30, magnitude_stddev=0,
   rate=13/14)``, the same fraction of each of its ops' maxima).
4. ``ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)`` -> ``jitter.py``: per
   image, the three factors uniform in ``[1 - f, 1 + f]`` and a random order, each
   adjustment PIL's 8-bit blend as torchvision's on its PIL image (keras-cv's colour
   layers have other semantics: additive brightness, per-channel contrast, saturation on
   a 0..1 scale where 0.5 is identity).
5. Normalize -> inside the model (``normalize`` layer).
6. ``RandomErasing(p=0.2, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0)`` ->
   ``erasing.py``: torchvision's algorithm (the apply draw, up to 10 tries of area and
   log-uniform aspect ratio, the first box that fits), vectorized. keras-cv's
   ``RandomCutout`` draws height and width fractions independently and always cuts.
   torchvision erases *after* Normalize with value 0, i.e. with the dataset mean colour
   in raw pixels, which is what is filled here (the model then normalizes it back to 0).

The crop, the flip, RandAugment, the jitter and erasing are written once (``crop.py``,
``transforms.flip``, ``randaugment.py``, ``jitter.py``, ``erasing.py``), each as its
uniform draws per image and a function of the images and those draws, in any op
namespace. Both pipeline forms are built from these (``transforms.Stage``): a keras-cv layer
(``VectorizedBaseImageAugmentationLayer``) in tf.data, a Keras layer on the device; they
differ only in where the draws come from.

CutMix and MixUp (keras-cv) are options, off by default as in every reported run; they
need one-hot labels, so with them on the dataset yields one-hot labels.

Every stage computes in float32 whatever the model's dtype policy: under a
mixed_float16 policy keras-cv's layers would otherwise compute in float16 and its
RandAugment returns NaN images.
"""

import contextlib
import dataclasses
import functools

import numpy as np

from cmxl_keras import randaugment, transforms
from cmxl_keras.architecture import CIFAR_MEAN, DATASETS

RANDAUGMENT_LEVELS = randaugment.LEVELS  # torchvision: 31 magnitude levels, 0..30
# For the keras-cv policy: torchvision's 14 ops include Identity, keras-cv's 10 do not,
# so each of its draws does nothing 1/14 of the time.
RANDAUGMENT_RATE = 13 / 14
RANDAUGMENT_POLICIES = ("torchvision", "keras_cv")
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
    def none(cls, image_size=32, num_classes=10):
        """Every stage off."""
        return cls(image_size=image_size, crop_scale=None, flip=False, randaugment_ops=0,
                   jitter=(0.0, 0.0, 0.0), erase_prob=0.0, cutmix_prob=0.0, mixup_prob=0.0,
                   num_classes=num_classes)

    @classmethod
    def from_config(cls, cfg):
        if cfg.aug == "none":
            return cls.none(cfg.image_size, cfg.num_classes)
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


@functools.cache
def _tf_data_stage_layer():
    """``TorchvisionStage``: a ``Stage`` as a keras-cv layer (made on first use: keras-cv
    is imported only by the tf.data pipeline)."""
    import keras_cv
    import tensorflow as tf
    # keras-cv runs its layers' ops as TensorFlow ops inside tf.data whatever the Keras
    # backend; this namespace is that switch (keras.ops outside the scope, TensorFlow's
    # ops inside it).
    from keras_cv.src.backend import ops as tf_data_ops

    class TorchvisionStage(keras_cv.layers.VectorizedBaseImageAugmentationLayer):
        """A torchvision transform written in this package (``stage``), per image."""

        def __init__(self, stage, seed=None, **kwargs):
            kwargs.setdefault("dtype", "float32")
            super().__init__(seed=seed, **kwargs)
            self.stage, self.key = stage, seed

        def get_random_transformation_batch(self, batch_size, **kwargs):
            return {name: self._random_generator.uniform(shape, 0.0, 1.0, tf.float32)
                    for name, shape in self.stage.shapes(batch_size).items()}

        def keyed_draws(self, batch_size, step):
            """The draws of training step ``step``: stateless, from (this stage's seed,
            step) alone, whatever ran before in this process."""
            step = tf.cast(step, tf.int64) * 8  # a key per draw: no stage has 8
            return {name: tf.random.stateless_uniform(
                        shape, tf.stack([tf.constant(self.key, tf.int64), step + k]))
                    for k, (name, shape) in enumerate(self.stage.shapes(batch_size).items())}

        def augment_images(self, images, transformations, **kwargs):
            return self.stage.compute(tf_data_ops, images, transformations)

        def augment_labels(self, labels, transformations, **kwargs):
            return labels

        def get_config(self):
            return dict(super().get_config(), stage=self.stage.name, **self.stage.params)

    return TorchvisionStage


def keras_cv_stages(spec, seed=None):
    """The keras-cv layers of the stages that ``spec`` turns on, in the reference order
    (crop, flip, RandAugment, jitter, erasing), computing in float32."""
    import keras_cv

    written = transforms.of_spec(spec)
    layer = _tf_data_stage_layer()
    stages = []
    with _float32_policy():
        for name in transforms.ORDER:
            if name in written:
                stages.append(layer(written[name], seed=transforms.stage_seed(seed, name)))
            elif name == "randaugment" and spec.randaugment_ops:  # keras-cv's policy
                stages.append(keras_cv.layers.RandAugment(
                    value_range=(0, 255), augmentations_per_image=spec.randaugment_ops,
                    magnitude=spec.keras_cv_magnitude, magnitude_stddev=0.0,
                    rate=RANDAUGMENT_RATE, seed=transforms.stage_seed(seed, name)))
    return stages


def build_tf_augmenter(spec, seed=None):
    """A function ``(images uint8/float [B,H,W,3], labels [B], step=None) -> (float32
    images, labels)``, for use in ``Dataset.map`` after ``batch``: every draw is per image.

    Given the batch's training ``step`` and a ``seed``, the stages written here draw from
    (seed, step) alone, statelessly: the batch of step ``s`` is augmented the same in an
    uninterrupted run and in a run resumed before ``s``. keras-cv's own RandAugment
    policy, CutMix and MixUp draw from their generators' state, which restarts with the
    process.
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

    def augment(images, labels, step=None):
        images = tf.cast(images, tf.float32)
        for stage in stages:
            if step is not None and seed is not None and hasattr(stage, "keyed_draws"):
                draws = stage.keyed_draws(tf.shape(images)[0], step)
                images = stage.augment_images(images, draws)
            else:
                images = stage(images)
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
# (``train`` saves models without them) and draw per image from Keras' seeded RNG. The
# stages are the same ``Stage`` functions as the tf.data form's. tests/test_augment.py
# measures how the two forms agree stage by stage, and tests/test_reference.py compares
# both with torchvision.
@functools.cache
def _device_stage_layer():
    import keras

    class DeviceStage(keras.layers.Layer):
        """A torchvision transform written in this package (``stage``), per image, on
        float images in [0, 255]; the identity at inference."""

        def __init__(self, stage, seed=None, **kwargs):
            kwargs.setdefault("dtype", "float32")
            super().__init__(**kwargs)
            self.stage = stage
            self.seed_generator = keras.random.SeedGenerator(seed)

        def draws(self, batch):
            """This batch's uniform draws in [0, 1), by name: one draw of the seed
            generator each."""
            return {name: keras.random.uniform(shape, 0.0, 1.0, seed=self.seed_generator)
                    for name, shape in self.stage.shapes(batch).items()}

        def start_at(self, step):
            """Makes the next batch draw what training step ``step`` draws in a run that
            started at 0: each step draws the generator once per name, so after ``step``
            steps its state is ``[seed, step x names]``. (Set before every ``fit``, as
            the generator's state is not in a checkpoint.)"""
            state = self.seed_generator.state
            seed = keras.ops.convert_to_numpy(state.value)[0]
            names = len(self.stage.shapes(1))
            state.assign(np.array([seed, step * names], dtype=state.dtype))

        def call(self, images, training=None):
            if not training:
                return images
            images = keras.ops.cast(images, "float32")
            return self.stage.compute(keras.ops, images, self.draws(keras.ops.shape(images)[0]))

        def compute_output_shape(self, input_shape):
            return input_shape

    return DeviceStage


def keras_layers(spec, seed=None):
    """The Keras-layer form of ``spec``: a list of layers to put in front of the model
    during training (any backend). CutMix/MixUp mix labels and need the tf.data form."""
    if spec.one_hot_labels:
        raise ValueError("CutMix/MixUp change the labels and run only in the tf.data pipeline "
                         "(TensorFlow backend); set cutmix_prob and mixup_prob to 0.")
    if spec.randaugment_ops and spec.randaugment != "torchvision":
        raise ValueError(
            f"randaugment {spec.randaugment!r}: keras-cv's policy runs only in the "
            f"tf.data pipeline (TensorFlow); the Keras-layer form has torchvision's.")
    written = transforms.of_spec(spec)
    layer = _device_stage_layer()
    return [layer(written[name], seed=transforms.stage_seed(seed, name), name=f"aug_{name}")
            for name in transforms.ORDER if name in written]


def start_keras_layers(stages, step):
    """Sets every layer of ``keras_layers`` to draw training step ``step``'s draws next."""
    for stage in stages:
        stage.start_at(step)


def apply_keras_layers(stages, images):
    """Runs ``stages`` on a batch in training mode (for tests and the augmentation grid)."""
    import keras

    x = keras.ops.cast(keras.ops.convert_to_tensor(images), "float32")
    for stage in stages:
        x = stage(x, training=True)
    return keras.ops.convert_to_numpy(x)
