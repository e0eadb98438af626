"""tf.data input pipelines over decoded arrays: shuffle, augment in parallel, batch, prefetch.

The arrays are decoded once (``data.py``) and held in memory, so there is nothing to
cache: ``from_tensor_slices`` hands out slices of the decoded arrays. Augmentation runs
after ``batch`` because keras-cv's layers vectorize over a batch while drawing per image.
"""

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


def train_dataset(split, batch_size, spec: AugmentSpec, seed=0, deterministic=False,
                  repeat=False, one_hot=False, num_classes=10):
    """Shuffled, augmented batches of ``(float32 images in [0, 255], labels)``.

    Labels are one-hot where ``one_hot`` (label smoothing) or the spec mixes images.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    # With repeat() before batch() the stream has no epoch edges: every batch is full, and
    # an epoch of ceil(N / batch) steps covers at least N images, as many steps as PyTorch's
    # DataLoader with drop_last=False gives. Without repeat, the last batch is partial.
    ds = ds.batch(batch_size)
    augment = _to_float if spec.is_identity else build_tf_augmenter(spec, seed=seed)
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
