"""Augmentation behaviour, Keras-style, and the mapping onto torchvision's parameters."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from cmxl_keras import augment, erasing, jitter, pipeline
from cmxl_keras.augment import AugmentSpec
from cmxl_keras.config import Config
from cmxl_keras.data import Split
from conftest import random_images

OFF = dict(crop_scale=None, flip=False, randaugment_ops=0, jitter=(0.0, 0.0, 0.0),
           erase_prob=0.0)


def _run(spec, images, labels=None, seed=0):
    tf.random.set_seed(seed)
    labels = np.zeros(len(images), np.int32) if labels is None else labels
    out, out_labels = augment.build_tf_augmenter(spec, seed=None)(tf.constant(images),
                                                                  tf.constant(labels))
    return np.asarray(out), np.asarray(out_labels)


def test_paper_pipeline_keeps_shape_dtype_and_range():
    out, labels = _run(AugmentSpec(), random_images(64))
    assert out.shape == (64, 32, 32, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    np.testing.assert_array_equal(labels, np.zeros(64))


def test_everything_off_is_identity_and_aug_none_is_off():
    spec = AugmentSpec.from_config(Config(aug="none"))
    assert spec.is_identity and spec.describe() == "none"
    images = random_images(8)
    out, _ = _run(AugmentSpec(**OFF), images)
    np.testing.assert_array_equal(out, images.astype(np.float32))


def test_probability_zero_stages_are_identity():
    """Erasing at p = 0 and the jitter at strength 0 keep 8-bit images exactly, in the
    op namespace of either form."""
    import keras

    images = random_images(256).astype(np.float32)
    draws = {name: np.random.default_rng(1).uniform(size=shape).astype(np.float32)
             for name, shape in erasing.draw_shapes(256).items()}
    erased = erasing.run(keras.ops, images, draws, 0.0, (1.0, 2.0, 3.0))
    np.testing.assert_array_equal(np.asarray(erased), images)
    top, left, height, width = erasing.boxes(keras.ops, draws, 0.0, 32, 32)
    assert not np.any(np.asarray(height)) and not np.any(np.asarray(width))
    factor_u, order_u = np.full((3, 256), 0.9, np.float32), np.full(256, 0.5, np.float32)
    jittered = jitter.run(keras.ops, images, factor_u, order_u, (0.0, 0.0, 0.0))
    np.testing.assert_array_equal(np.asarray(jittered), images)
    # The control: the same draws at the paper's strengths change the images.
    assert np.any(np.asarray(jitter.run(keras.ops, images, factor_u, order_u,
                                        (0.2, 0.2, 0.2))) != images)


def test_images_in_a_batch_get_different_draws():
    same = np.repeat(random_images(1), 32, axis=0)
    out, _ = _run(AugmentSpec(), same)
    distinct = {o.round(1).tobytes() for o in out}
    assert len(distinct) >= 30


def test_eval_pipeline_is_untouched():
    images = random_images(10)
    batches = list(pipeline.eval_dataset(Split(images, np.arange(10, dtype=np.int32)), 4))
    got = np.concatenate([np.asarray(x) for x, _ in batches])
    np.testing.assert_array_equal(got, images.astype(np.float32))


def test_train_pipeline_is_deterministic_for_a_seed_in_deterministic_mode():
    split = Split(random_images(64), np.arange(64, dtype=np.int32) % 10)
    spec = AugmentSpec(**dict(OFF, flip=True))
    first = [np.asarray(y) for _, y in pipeline.train_dataset(split, 16, spec, seed=5,
                                                               deterministic=True)]
    again = [np.asarray(y) for _, y in pipeline.train_dataset(split, 16, spec, seed=5,
                                                               deterministic=True)]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    assert sorted(np.concatenate(first)) == sorted(split.labels)  # every image once


@pytest.mark.parametrize("form", ["tf.data", "ArrayBatches"])
def test_a_resumed_training_stream_continues_the_uninterrupted_one(form):
    """The order is a function of (seed, pass) alone: started at step s (a resume), the
    stream gives the uninterrupted stream's batches from step s on, across pass edges
    (10 images, batches of 4); each pass is a permutation, and passes differ. In both
    forms: tf.data's, and the ``PyDataset`` of backends without tf.data."""
    split = Split(random_images(10), np.arange(10, dtype=np.int32))
    spec = AugmentSpec(**OFF)

    def labels(start, count, seed=3):
        if form == "ArrayBatches":
            ds = pipeline.ArrayBatches(split.images, split.labels, 4, seed, start, count)
            assert len(ds) == count and ds[0][0].dtype == np.float32
            return [list(ds[i][1]) for i in range(count)]
        ds = pipeline.train_dataset(split, 4, spec, seed=seed, repeat=True, start_step=start,
                                    deterministic=True)
        return [list(np.asarray(y)) for _, y in ds.take(count)]

    whole = labels(0, 12)
    for start in (1, 2, 3, 5, 7):
        assert labels(start, 12 - start) == whole[start:], start
    stream = np.concatenate(whole)
    passes = [list(stream[i:i + 10]) for i in range(0, 40, 10)]
    assert all(sorted(p) == list(range(10)) for p in passes)
    assert len({tuple(p) for p in passes}) == 4
    assert labels(0, 12, seed=4) != whole


def test_a_resumed_stream_is_augmented_as_the_uninterrupted_one():
    """With the paper's augmentation, the batches from step s on of a stream started at
    s (a resume) are the uninterrupted stream's, pixel for pixel: every draw is keyed by
    (seed, step). The control: another seed gives other batches."""
    split = Split(random_images(24), np.arange(24, dtype=np.int32) % 10)

    def images(start, count, seed=3):
        ds = pipeline.train_dataset(split, 8, AugmentSpec(), seed=seed, repeat=True,
                                    start_step=start, deterministic=True)
        return [np.asarray(x) for x, _ in ds.take(count)]

    whole = images(0, 6)
    assert not np.array_equal(whole[0], split.images[:8])  # augmented
    for start in (1, 4):
        resumed = images(start, 6 - start)
        for step, batch in enumerate(resumed, start):
            np.testing.assert_array_equal(batch, whole[step])
    other = images(0, 1, seed=4)[0]
    assert not np.array_equal(other, whole[0])


def test_device_layers_started_at_a_step_draw_as_the_uninterrupted_run():
    """The device form's stages set to step s draw what they draw at step s of a run
    from step 0 (each step's draws come from the seed generator at [seed, s x names]):
    a resumed run's batches are augmented as the uninterrupted run's."""
    images = random_images(8).astype(np.float32)
    stages = augment.keras_layers(AugmentSpec(), seed=3)
    augment.start_keras_layers(stages, 0)
    whole = [augment.apply_keras_layers(stages, images) for _ in range(5)]
    assert not np.array_equal(whole[3], whole[4])
    for start in (1, 4):
        resumed = augment.keras_layers(AugmentSpec(), seed=3)
        augment.apply_keras_layers(resumed, images)  # draws before: the augmentation grid
        augment.start_keras_layers(resumed, start)
        for step in range(start, 5):
            np.testing.assert_array_equal(augment.apply_keras_layers(resumed, images),
                                          whole[step])


def test_crop_scale_bounds():
    # A horizontal ramp: the span of values left after the crop is the crop's width
    # fraction, and with ratio 1 its square is the crop's area fraction.
    ramp = np.tile(np.linspace(0, 255, 32, dtype=np.float32)[None, :, None], (32, 1, 3))
    images = np.repeat(ramp[None], 1000, axis=0)
    spec = AugmentSpec(**dict(OFF, crop_scale=(0.75, 1.0)))
    out, _ = _run(spec, images)
    # The crop samples output column x at left + (x + 0.5) * side / 32 - 0.5, so the
    # 0..255 ramp's span over the output row is side / 32 (the width fraction) x 255.
    width_fraction = (out[:, 16, -1, 0] - out[:, 16, 0, 0]) / 255
    area = width_fraction ** 2
    assert area.min() >= 0.75 - 0.05 and area.max() <= 1.0 + 1e-3
    assert area.min() < 0.8 and area.max() > 0.95  # the whole range is drawn
    assert abs(np.mean(area) - 0.875) < 0.03


def test_flip_rate_is_one_half():
    ramp = np.tile(np.arange(32, dtype=np.float32)[None, :, None], (32, 1, 3))
    out, _ = _run(AugmentSpec(**dict(OFF, flip=True)), np.repeat(ramp[None], 2000, axis=0))
    flipped = out[:, 0, 0, 0] == 31
    assert abs(flipped.mean() - 0.5) < 0.04
    np.testing.assert_array_equal(out[flipped][:, :, ::-1], out[~flipped][:1].repeat(
        flipped.sum(), axis=0))


def test_randaugment_is_torchvisions_by_default_and_keras_cv_on_request():
    spec = AugmentSpec()
    assert spec.randaugment == "torchvision"
    layer = augment.keras_cv_stages(spec)[2]  # crop, flip, RandAugment, ...
    assert type(layer).__name__ == "TorchvisionStage" and layer.stage.name == "randaugment"
    assert (layer.stage.params["num_ops"], layer.stage.params["magnitude"]) == (2, 12)
    assert "RandAugment(torchvision, 2 ops, magnitude 12/30)" in spec.describe()
    # keras-cv's own policy stays available, at torchvision's magnitude fraction.
    old = AugmentSpec.from_config(Config(randaugment="keras_cv"))
    layer = augment.keras_cv_stages(old)[2]
    assert type(layer).__name__ == "RandAugment"
    assert layer.augmentations_per_image == 2
    assert layer.magnitude == pytest.approx(0.4) and layer.magnitude_stddev == 0.0
    assert layer.rate == pytest.approx(13 / 14)
    for policy in ("torchvision", "keras_cv"):
        images = random_images(200)
        out, _ = _run(AugmentSpec(**dict(OFF, randaugment_ops=2, randaugment=policy)), images)
        changed = np.any(np.abs(out - images) > 1, axis=(1, 2, 3))
        assert changed.mean() > 0.7, policy
    with pytest.raises(ValueError, match="keras-cv's policy runs only in the tf.data"):
        augment.keras_layers(old)


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_every_stage_computes_in_float32_under_a_mixed_policy(precision):
    """Under a mixed policy keras-cv's layers would compute in half precision (its
    RandAugment then returns NaN images): every stage of both forms stays float32 and
    finite, on edge images (all black, all white, one flat colour, random)."""
    import keras

    images = np.concatenate([np.zeros((8, 32, 32, 3)), np.full((8, 32, 32, 3), 255.0),
                             np.tile([[[[200.0, 30.0, 90.0]]]], (8, 32, 32, 1)),
                             random_images(8).astype(np.float64)]).astype(np.uint8)
    stages = dict(crop_scale=(0.75, 1.0), flip=True, randaugment_ops=2,
                  jitter=(0.2, 0.2, 0.2), erase_prob=0.5)
    keras.mixed_precision.set_global_policy(precision)
    try:
        for stage, value in list(stages.items()) + [("all", None)]:
            spec = AugmentSpec(**(stages if stage == "all" else dict(OFF, **{stage: value})))
            for policy in (("torchvision", "keras_cv") if stage in ("randaugment_ops", "all")
                           else ("torchvision",)):
                spec = dataclasses.replace(spec, randaugment=policy)
                tf_out, _ = _run(spec, images)
                assert tf_out.dtype == np.float32 and np.isfinite(tf_out).all(), (stage, policy)
                assert tf_out.min() >= 0 and tf_out.max() <= 255, (stage, policy)
            layers = augment.keras_layers(dataclasses.replace(spec, randaugment="torchvision"))
            out = augment.apply_keras_layers(layers, images)
            assert out.dtype == np.float32 and np.isfinite(out).all(), stage
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_cutmix_and_mixup_yield_one_hot_mixed_labels():
    spec = AugmentSpec(**dict(OFF, cutmix_prob=1.0, mixup_prob=1.0))
    out, labels = _run(spec, random_images(16), np.arange(16, dtype=np.int32) % 10)
    assert labels.shape == (16, 10)
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    assert np.any((labels > 0) & (labels < 1))  # mixed targets


# ------------------------------------------- the two forms: tf.data (keras-cv) vs Keras layers
def _both_forms(spec, images, seed=0):
    """The same batch through the tf.data form and the Keras-layer form."""
    tf_out, _ = _run(spec, images, seed=seed)
    layers_out = augment.apply_keras_layers(augment.keras_layers(spec, seed=seed + 1), images)
    return tf_out, layers_out


def _coordinate_images(n):
    """Channel 0 holds the column (0..255 across the width), channel 1 the row."""
    ramp = np.linspace(0.0, 255.0, 32, dtype=np.float32)
    image = np.stack([np.tile(ramp[None, :], (32, 1)), np.tile(ramp[:, None], (1, 32)),
                      np.full((32, 32), 128.0, np.float32)], axis=-1)
    return np.repeat(image[None], n, axis=0)


def _crop_and_flip(out):
    """Per image: the crop's area fraction and whether it is mirrored, read off the
    column ramp (its span over the output is the crop side as a fraction)."""
    span = out[:, 16, -1, 0] - out[:, 16, 0, 0]
    return (np.abs(span) / 255.0) ** 2, span < 0


def test_forms_agree_on_crop_scale_and_flip_rate():
    spec = AugmentSpec(**dict(OFF, crop_scale=(0.75, 1.0), flip=True))
    images = _coordinate_images(600)
    forms = [_crop_and_flip(out) for out in _both_forms(spec, images)]
    for area, flipped in forms:
        assert area.min() > 0.74 and area.max() < 1.0 + 1e-3
        assert abs(area.mean() - 0.875) < 0.012  # uniform on (0.75, 1): mean 0.875
        assert abs(flipped.mean() - 0.5) < 0.07
    (area_a, flip_a), (area_b, flip_b) = forms
    # The crop's side is whole pixels (28 to 32): the area's distribution has steps, at
    # cumulative 0.17, 0.40, 0.63, 0.88. Quantiles inside the steps, 0.05 or more from an
    # edge (over 3.5 standard errors of 600 draws), are the same for the same draws.
    np.testing.assert_allclose(np.quantile(area_a, [0.1, 0.5, 0.95]),
                               np.quantile(area_b, [0.1, 0.5, 0.95]), atol=0.025)
    assert abs(flip_a.mean() - flip_b.mean()) < 0.09


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_both_forms_erase_with_the_datasets_own_mean(dataset):
    """Erased pixels are the run's dataset's mean colour (torchvision's value 0 after
    Normalize with that dataset's statistics), not CIFAR-10's for every dataset."""
    from cmxl_keras.architecture import DATASETS

    cfg = Config(dataset=dataset, num_classes=DATASETS[dataset]["num_classes"])
    spec = dataclasses.replace(AugmentSpec.from_config(cfg), crop_scale=None, flip=False,
                               randaugment_ops=0, jitter=(0.0, 0.0, 0.0), erase_prob=1.0)
    mean = [255 * m for m in DATASETS[dataset]["mean"]]
    images = np.zeros((64, 32, 32, 3), np.float32)
    for out in _both_forms(spec, images):
        out = np.asarray(out)
        erased = np.any(out != 0, axis=-1)
        assert erased.any(axis=(1, 2)).mean() > 0.9  # p = 1: every box that fits is erased
        np.testing.assert_allclose(out[erased], np.broadcast_to(mean, out[erased].shape),
                                   atol=1e-3)


def test_forms_agree_on_erase_rate_and_area():
    spec = AugmentSpec(**dict(OFF, erase_prob=0.2))
    images = np.zeros((1500, 32, 32, 3), np.float32)
    stats = []
    for out in _both_forms(spec, images):
        erased = np.any(out != 0, axis=-1).mean(axis=(1, 2))  # fraction of pixels erased
        fill = out[erased > 0][0][np.any(out[erased > 0][0] != 0, axis=-1)][0]
        np.testing.assert_allclose(fill, [255 * m for m in augment.CIFAR_MEAN], atol=1e-3)
        stats.append(((erased > 0).mean(), erased[erased > 0].mean()))
    (rate_a, area_a), (rate_b, area_b) = stats
    assert abs(rate_a - 0.2) < 0.035 and abs(rate_b - 0.2) < 0.035
    assert abs(rate_a - rate_b) < 0.05
    assert 0.1 < area_a < 0.2 and abs(area_a - area_b) < 0.025


def test_forms_agree_on_colour_ranges():
    spec = AugmentSpec(**dict(OFF, jitter=(0.2, 0.2, 0.2)))
    # 4,000 images: the 5 % quantiles of 800 differed by 0.041 between the forms' draws
    images = random_images(4000, seed=3).astype(np.float32) * 0.6 + 40  # room both ways
    summaries = []
    for out in _both_forms(spec, images):
        assert out.min() >= 0.0 and out.max() <= 255.0
        brightness = out.mean(axis=(1, 2, 3)) / images.mean(axis=(1, 2, 3))
        spread = out.std(axis=(1, 2, 3)) / images.std(axis=(1, 2, 3))
        gray = out.mean(axis=-1, keepdims=True)
        saturation = np.abs(out - gray).mean(axis=(1, 2, 3)) / np.abs(
            images - images.mean(axis=-1, keepdims=True)).mean(axis=(1, 2, 3))
        summaries.append(np.stack([np.quantile(v, [0.05, 0.5, 0.95])
                                   for v in (brightness, spread, saturation)]))
    # brightness alone spans 0.8..1.2; the three together a little wider
    assert summaries[0][0, 0] < 0.85 and summaries[0][0, 2] > 1.15
    np.testing.assert_allclose(summaries[0], summaries[1], atol=0.03)


def test_keras_layer_form_is_identity_at_inference_and_draws_per_image():
    stages = augment.keras_layers(AugmentSpec(), seed=5)
    images = random_images(16).astype(np.float32)
    x = images
    for stage in stages:
        x = stage(x, training=False)
    np.testing.assert_array_equal(np.asarray(x), images)
    out = augment.apply_keras_layers(stages, np.repeat(images[:1], 16, axis=0))
    assert out.shape == (16, 32, 32, 3) and out.min() >= 0.0 and out.max() <= 255.0
    assert len({out[i].tobytes() for i in range(16)}) == 16


def test_keras_layer_form_refuses_label_mixing():
    with pytest.raises(ValueError, match="CutMix/MixUp"):
        augment.keras_layers(AugmentSpec(cutmix_prob=0.5))


# One stage on, every other off: a stage that drew once per batch would turn 64 copies
# of one image into one output; the crop alone would hide that in the full pipeline.
ALONE = {
    "crop": dict(OFF, crop_scale=(0.75, 1.0)),
    "flip": dict(OFF, flip=True),
    "randaugment": dict(OFF, randaugment_ops=2),
    "jitter": dict(OFF, jitter=(0.2, 0.2, 0.2)),
    "erasing": dict(OFF, erase_prob=0.2),
}


@pytest.mark.parametrize("form", ["tf.data", "keras_layers"])
@pytest.mark.parametrize("stage", list(ALONE))
def test_every_stage_draws_per_image_on_its_own(stage, form):
    spec = AugmentSpec(**ALONE[stage])
    image = random_images(1, seed=7)
    batch = np.repeat(image, 64, axis=0)
    if form == "tf.data":
        out, _ = _run(spec, batch)
    else:
        out = augment.apply_keras_layers(augment.keras_layers(spec, seed=3),
                                         batch.astype(np.float32))
    changed = int(sum(not np.allclose(o, image[0]) for o in out))
    distinct = len({o.tobytes() for o in out})
    if stage == "flip":  # p = 0.5 per image: both outcomes, about half each
        assert distinct == 2 and 16 <= changed <= 48, (distinct, changed)
    elif stage == "erasing":  # p = 0.2 per image, each box its own
        assert 3 <= changed <= 30 and distinct == changed + 1, (distinct, changed)
    elif stage == "randaugment":  # 2 of 14 ops per image (some pairs coincide)
        assert distinct >= 32, distinct
    elif stage == "crop":  # 55 boxes in whole pixels: about 31 distinct in 64 draws (fewer
        assert distinct >= 20, distinct  # than 21 in none of 20,000 simulated batches)
    else:  # continuous draws: every image its own
        assert distinct >= 62, distinct


def test_the_device_pipelines_grid_shows_the_first_batch_not_the_first_images(monkeypatch):
    """The device pipeline's augmentation grid shows 64 images drawn across the split by
    the seed (``NumpyOrder``'s first batch), not the split's first 64, which a
    class-sorted image folder fills with one class."""
    from cmxl_keras import augment as augment_lib, splitting

    labels = np.repeat(np.arange(10), 20).astype(np.int32)  # sorted by class
    images = np.broadcast_to(labels[:, None, None, None].astype(np.uint8) * 20,
                             (200, 8, 8, 3)).copy()  # each image's pixels name its class
    splits = splitting.Splits(Split(images, labels), Split(images[:20], labels[:20]), None,
                              tuple(str(i) for i in range(10)), "sorted", {})
    cfg = Config(image_size=8, pipeline="device", batch_size=16, epochs=1, seed=3)
    spec = augment_lib.AugmentSpec.none(8, 10)
    grid = pipeline.fit_inputs(cfg, splits, spec, False, (), 13)["grid"]
    sample = next(iter(grid))[0]
    shown = np.unique(np.asarray(sample)[:, 0, 0, 0] // 20)
    assert len(sample) == 64 and len(shown) >= 8, shown
    order = pipeline.NumpyOrder(200, 3).batch(0, 64)
    assert np.array_equal(np.asarray(sample), images[order].astype(np.float32))
