"""Input pipelines over decoded arrays: the order of the training images, batches, and
(in tf.data) augmentation in parallel and prefetch.

The arrays are decoded once (``data.py``) and held in memory, so there is nothing to
cache: each training batch gathers its images from the arrays by the indices of
``training_order``. Augmentation runs after ``batch`` because keras-cv's layers vectorize
over a batch while drawing per image. Backends without tf.data (JAX, PyTorch) get the
training batches from ``ArrayBatches``, a Keras ``PyDataset`` with an order of the same
kind drawn by NumPy. ``fit_inputs`` gives ``model.fit`` its data for the config's
pipeline; ``augmentation_grid`` draws a picture of augmented training images.
"""

import keras
import numpy as np

from cmxl_keras import augment
from cmxl_keras.augment import AugmentSpec, build_tf_augmenter


def _to_float(images, labels):
    import tensorflow as tf

    return tf.cast(images, tf.float32), labels


def _one_hot(num_classes):
    import tensorflow as tf

    def convert(images, labels):
        if labels.shape.rank == 1:
            labels = tf.one_hot(tf.cast(labels, tf.int32), num_classes)
        return images, labels

    return convert


def training_order(n, seed, start_step=0, batch_size=1):
    """The training images' indices as one stream: pass ``k`` over the ``n`` images is
    the permutation drawn from ``(seed, k)`` alone (a stateless shuffle), and the stream
    starts ``start_step`` batches in.

    A run resumed at step ``s`` therefore sees exactly the images an uninterrupted run
    sees from its step ``s`` on, in the same order; whole passes are skipped by
    arithmetic, not by drawing them. (``Dataset.shuffle`` would restart its draws on
    every resume: an interrupted run would see the first epoch's order again.)
    """
    import tensorflow as tf

    first, within = divmod(start_step * batch_size, n)

    def one_pass(k):
        key = tf.stack([tf.constant(seed, tf.int64), k])
        return tf.data.Dataset.from_tensor_slices(
            tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=key))

    return tf.data.Dataset.range(first, 2 ** 62).flat_map(one_pass).skip(within)


def train_dataset(split, batch_size, spec: AugmentSpec, seed=0, deterministic=False,
                  repeat=False, one_hot=False, num_classes=10, start_step=0):
    """Shuffled, augmented batches of ``(float32 images in [0, 255], labels)``, from
    ``start_step`` batches into the ``training_order`` stream.

    Labels are one-hot where ``one_hot`` (label smoothing) or the spec mixes images.
    """
    import tensorflow as tf

    images, labels = tf.constant(split.images), tf.constant(split.labels)
    order = training_order(len(split), seed, start_step, batch_size)
    # With repeat the stream has no epoch edges: every batch is full, and an epoch of
    # ceil(N / batch) steps covers at least N images, as many steps as PyTorch's
    # DataLoader with drop_last=False gives. Without repeat: one pass, the last batch
    # partial.
    ds = order.batch(batch_size) if repeat else order.take(len(split)).batch(batch_size)
    # Each batch carries its training step: the augmentation's draws are keyed by it.
    ds = ds.enumerate(start_step).map(
        lambda step, index: (tf.gather(images, index), tf.gather(labels, index), step))
    augment = (lambda x, y, step: _to_float(x, y)) if spec.is_identity else (
        build_tf_augmenter(spec, seed=seed))
    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if one_hot:
        ds = ds.map(_one_hot(num_classes))
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(split, batch_size, one_hot=False, num_classes=10):
    """Batches of the untouched images (normalization happens inside the model)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels)).batch(batch_size)
    ds = ds.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE)
    if one_hot:
        ds = ds.map(_one_hot(num_classes))
    return ds.prefetch(tf.data.AUTOTUNE)


class NumpyOrder:
    """``training_order`` drawn by NumPy (for hosts without TensorFlow): pass ``k`` over
    the ``n`` images is the permutation of ``default_rng((seed, k))``, so the batch of a
    step depends on (seed, step) alone. (Not the same permutations as TensorFlow's.)"""

    def __init__(self, n, seed):
        self.n, self.seed, self._pass = n, seed, (None, None)

    def permutation(self, k):
        if self._pass[0] != k:  # steps come in order: one pass held at a time
            self._pass = (k, np.random.default_rng((self.seed, k)).permutation(self.n))
        return self._pass[1]

    def batch(self, step, batch_size):
        """The image indices of training step ``step``: every batch full, running on
        into the next pass where one ends."""
        start, parts = step * batch_size, []
        while start < (step + 1) * batch_size:
            k, within = divmod(start, self.n)
            part = self.permutation(k)[within:within + (step + 1) * batch_size - start]
            parts.append(part)
            start += len(part)
        return np.concatenate(parts)


class ArrayBatches(keras.utils.PyDataset):
    """``steps`` training batches ``(float32 images, labels)`` from step ``start_step``
    on, in ``NumpyOrder``: a run resumed at step ``s`` gets the batches an uninterrupted
    run gets from ``s`` on. Pass ``shuffle=False`` to ``fit`` (Keras would shuffle the
    batches)."""

    def __init__(self, images, labels, batch_size, seed, start_step, steps):
        super().__init__()
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.start_step, self.steps = start_step, steps
        self.order = NumpyOrder(len(images), seed)

    def __len__(self):
        return self.steps

    def __getitem__(self, i):
        index = self.order.batch(self.start_step + i, self.batch_size)
        return self.images[index].astype(np.float32), self.labels[index]


def fit_inputs(cfg, splits, spec, one_hot, stages, steps):
    """``{"fit": start step -> model.fit's data arguments, "grid": batches to draw the
    augmentation grid from}`` for the config's pipeline, ``steps`` to an epoch. Each
    ``fit`` call iterates its data afresh, so each gets the stream from the step it starts
    at: a resumed run sees the batches an uninterrupted one sees. The device pipeline's
    batches come unaugmented (its stages are in the model): from tf.data on TensorFlow,
    else from ``ArrayBatches``."""
    if cfg.pipeline == "tf.data" or keras.backend.backend() == "tensorflow":
        fed = spec if cfg.pipeline == "tf.data" else augment.AugmentSpec.none(
            cfg.image_size, cfg.num_classes)

        def train_ds(start_step):
            return train_dataset(splits.train, cfg.batch_size, fed, seed=cfg.seed,
                                 deterministic=cfg.deterministic, repeat=True,
                                 one_hot=one_hot, num_classes=cfg.num_classes,
                                 start_step=start_step)

        val_ds = eval_dataset(splits.val, cfg.batch_size, one_hot=one_hot,
                              num_classes=cfg.num_classes)
        fit = lambda start: dict(x=train_ds(start), validation_data=val_ds,  # noqa: E731
                                 shuffle=False)
        if cfg.pipeline == "tf.data":
            return {"fit": fit, "grid": train_ds(0)}
    else:
        def labels(split):
            y = split.labels.astype(np.int32)
            return np.eye(cfg.num_classes, dtype=np.float32)[y] if one_hot else y

        total = cfg.epochs * steps
        train_labels, val = labels(splits.train), (splits.val.images.astype(np.float32),
                                                   labels(splits.val))
        fit = lambda start: dict(  # noqa: E731
            x=ArrayBatches(splits.train.images, train_labels, cfg.batch_size, cfg.seed,
                           start, total - start),
            validation_data=val, validation_batch_size=cfg.batch_size, shuffle=False)
    # 64 images drawn across the split by the seed (the first batch of NumpyOrder's
    # first pass: the batch a run off TensorFlow trains on first), as the tf.data form's
    # grid shows its first shuffled batch: not the split's first 64, which a class-sorted
    # image folder fills with one class.
    first = NumpyOrder(len(splits.train), cfg.seed).batch(0, 64)
    sample = splits.train.images[first].astype(np.float32)
    grid = [(augment.apply_keras_layers(stages, sample) if stages else sample, None)]
    return {"fit": fit, "grid": grid}


def augmentation_grid(dataset, rows=8, scale=2):
    """A rows x rows grid (uint8, pixels enlarged ``scale`` times) of augmented images."""
    batches, count = [], 0
    for images, _ in dataset:  # the dataset repeats: enough batches always come
        batches.append(np.asarray(images))
        count += len(batches[-1])
        if count >= rows * rows:
            break
    images = np.clip(np.concatenate(batches)[: rows * rows], 0, 255).astype(np.uint8)
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = images.shape
    grid = np.full((rows * (h + 2), rows * (w + 2), c), 255, np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, rows)
        top, left = r * (h + 2) + 1, col * (w + 2) + 1
        grid[top:top + h, left:left + w] = image
    return grid
