"""The shipped model (exported/cm_vanilla) as a user meets it: its card and metadata, the
Python entry point in keras.applications' convention (equal to the SavedModel on real
images), and the SavedModel refusing images it should not decode."""

import json
import os
import re

import numpy as np
import pytest

from conftest import ROOT, SHARED_DATA, png_bomb

SHIPPED = os.path.join(ROOT, "exported", "cm_vanilla")
JPEG_TAR = os.path.join(SHARED_DATA, "cifar10-train-jpeg.tar.gz")


@pytest.fixture(scope="module")
def real_images():
    """200 real CIFAR-10 training images (quality-75 JPEG files), 20 of each class, as
    ``predict`` decodes them, with their labels."""
    from cmxl_keras import archives, images, serving

    files = archives.Files(JPEG_TAR)
    classes = files.listdir("train")
    pixels, labels = [], []
    for label, name in enumerate(classes):
        for fname in files.listdir(f"train/{name}")[:20]:
            pixels.append(images.decode_image(files.read(f"train/{name}/{fname}"), fname, 32,
                                              fix=serving.GIVE_IMAGES))
            labels.append(label)
    return np.stack(pixels), np.array(labels)


@pytest.fixture(scope="module")
def served():
    import tensorflow as tf

    return tf.saved_model.load(os.path.join(SHIPPED, "saved_model", "1"))


def test_the_card_says_what_the_metadata_records():
    """The model card's figures are metadata.json's (written by the export from the run's
    own records), and the metadata says what the model was trained on."""
    from cmxl_keras import export

    meta = json.load(open(os.path.join(SHIPPED, "metadata.json")))
    training = meta["training"]
    assert meta["config"]["name"] == "cm_vanilla" and meta["config"]["epochs"] == 100
    assert training["epochs"] == 100 and training["train_images"] == 49000
    assert training["validation_images"] == 1000 and training["validation_from"] == "train"
    assert re.fullmatch(r"[0-9a-f]{40}", training["code_version"])
    assert export.parity_failures(meta["parity"]) == [] and meta["parity"]["images"] == 1000
    assert set(meta["formats"]) == set(export.FORMATS)
    card = open(os.path.join(SHIPPED, "MODEL_CARD.md")).read()
    for figure in (f"{100 * training['final_validation_accuracy']:.2f} %",
                   f"{100 * training['best_validation_accuracy']:.2f} %",
                   f"{100 * meta['parity']['tflite_int8_top1_agreement']:.1f} %",
                   f"{100 * meta['parity']['tflite_fp16_top1_agreement']:.1f} %",
                   training["code_version"][:10], "49,000", "quality 75"):
        assert figure in card, figure


def test_from_preset_is_the_shipped_saved_model_on_real_images(real_images, served):
    """One call gives the shipped model as a float32 Keras model whose probabilities are
    the SavedModel's on real images (within the SavedModel's parity target), and it
    classifies them."""
    import keras

    from cmxl_keras import applications

    images, labels = real_images
    model = applications.from_preset("cm_vanilla")
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    got = np.asarray(model.predict(images, batch_size=100, verbose=0))
    expected = served.signatures["serving_default"](images=images)["probabilities"].numpy()
    assert np.abs(got - expected).max() < 1e-5
    assert (got.argmax(-1) == labels).mean() > 0.9  # training images: it learned them
    same = applications.ConvMixer(weights="cifar10")
    assert np.array_equal(np.asarray(same(images[:8])), np.asarray(model(images[:8])))
    logits = applications.from_preset("cm_vanilla", classifier_activation=None)
    assert np.allclose(keras.ops.softmax(logits(images[:8])), got[:8], atol=1e-6)
    assert "cm_vanilla" in applications.presets()
    assert applications.from_preset(SHIPPED).count_params() == model.count_params()


def test_the_backbone_is_the_shipped_model_without_its_head(real_images):
    """include_top=False gives the last layer's feature map, and pooling="avg" the
    pooled features the head classifies: the full model's own intermediate outputs."""
    import keras

    from cmxl_keras import applications

    images = real_images[0][:16]
    full = applications.ConvMixer(weights="cifar10")
    inner = keras.Model(full.input, [full.get_layer("head_pool").output,
                                     full.get_layer("layer_8_pointwise_bn").output])
    pooled, features = (np.asarray(t) for t in inner(images))
    avg = applications.ConvMixer(weights="cifar10", include_top=False, pooling="avg")
    maps = applications.ConvMixer(weights="cifar10", include_top=False)
    top = applications.ConvMixer(weights="cifar10", include_top=False, pooling="max")
    assert np.array_equal(np.asarray(avg(images)), pooled)
    assert maps.output_shape == (None, 16, 16, 256)
    assert np.array_equal(np.asarray(maps(images)), features)
    assert np.allclose(np.asarray(top(images)), features.max(axis=(1, 2)))


def test_the_builders_take_weights_as_keras_applications_do(tmp_path):
    from cmxl_keras import applications
    from cmxl_keras.errors import RunError

    fresh = applications.ConvMixerXL(weights=None, depth=6, skip_period=2, classes=4,
                                     input_shape=(16, 16, 3))
    assert fresh.output_shape == (None, 4)
    path = str(tmp_path / "xl.weights.h5")
    fresh.save_weights(path)
    again = applications.ConvMixerXL(weights=path, depth=6, skip_period=2, classes=4,
                                     input_shape=(16, 16, 3))
    x = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3)).astype(np.float32)
    assert np.array_equal(np.asarray(again(x)), np.asarray(fresh(x)))
    for call, quoted in (
            (lambda: applications.ConvMixerXL(weights="cifar10"), "no trained cm_xl ships"),
            (lambda: applications.ConvMixer(weights="cifar10", classes=100), "classes=100"),
            (lambda: applications.ConvMixer(weights="cifar10", depth=4), "'depth': 4"),
            (lambda: applications.ConvMixer(weights="imagenet"), "weights='imagenet'"),
            (lambda: applications.ConvMixer(weights=None, dpeth=4), "dpeth"),
            (lambda: applications.from_preset("cm_huge"), "no preset 'cm_huge'"),
            (lambda: applications.from_preset(str(tmp_path)), "has no model.keras")):
        with pytest.raises(RunError, match=re.escape(quoted)):
            call()


def test_the_shipped_saved_model_refuses_a_decompression_bomb_and_serves_on(served):
    """The served signature reads each image's declared size from its header and refuses
    one over the limit before decoding it (TF-Serving answers 400 with the reason); the
    next request is served."""
    import tensorflow as tf

    serve = served.signatures["serving_bytes"]
    cat = open(os.path.join(ROOT, "docs", "examples", "cat.png"), "rb").read()
    with pytest.raises(tf.errors.InvalidArgumentError, match="declares more than 40000000"):
        serve(image_bytes=tf.constant([cat, png_bomb(20000, 20000)]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="JPEG, PNG, GIF or BMP"):
        serve(image_bytes=tf.constant([b"RIFF\x00\x00\x00\x00WEBPVP8 "]))
    probabilities = serve(image_bytes=tf.constant([cat]))["probabilities"].numpy()
    assert probabilities.shape == (1, 10) and abs(probabilities.sum() - 1) < 1e-5


def test_a_preset_name_is_the_shipped_preset_and_a_path_is_a_folder(tmp_path, monkeypatch):
    """A folder named like a shipped preset in the working folder does not shadow it; the
    same folder written as a path is taken."""
    from cmxl_keras import applications

    local = tmp_path / "cm_vanilla"
    local.mkdir()
    (local / "model.keras").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert os.path.samefile(applications.preset_dir("cm_vanilla"), SHIPPED)
    assert applications.preset_dir("./cm_vanilla") == "./cm_vanilla"
    assert applications.preset_dir(str(local)) == str(local)


def test_the_tflite_runner_runs_the_batches_it_is_given(real_images):
    from cmxl_keras import inference

    runner = inference.TFLiteRunner(os.path.join(SHIPPED, "model_fp32.tflite"))
    sizes, run = [], runner.runner
    runner.runner = lambda **kw: sizes.append(len(next(iter(kw.values())))) or run(**kw)
    images = real_images[0][:20]
    whole = runner(images)
    assert sizes == [20]
    sizes.clear()
    np.testing.assert_allclose(runner(images, batch=7), whole, atol=1e-6)
    assert sizes == [7, 7, 6]
    sizes.clear()
    # The exported folder loaded as predict and evaluate load it honours its batch too.
    calls = []
    loaded = inference.load(SHIPPED, "tflite")
    real = inference.TFLiteRunner.__call__
    inference.TFLiteRunner.__call__ = lambda self, x, desc=None, batch=None: (
        calls.append(batch) or real(self, x, desc, batch))
    try:
        np.testing.assert_allclose(loaded(images, batch=8), whole, atol=1e-6)
    finally:
        inference.TFLiteRunner.__call__ = real
    assert calls == [8]
