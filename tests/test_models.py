"""Model builder: shapes, exact parameter counts, layer semantics, save/load, gradients."""

import math
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from cmxl_keras import models
from conftest import random_images, run_process

PAPER_COUNTS = {"cm_vanilla": 594_186, "cm_xl": 4_855_562}


@pytest.mark.parametrize("variant", list(models.VARIANTS))
def test_every_variant_builds_and_returns_logits(variant):
    model = models.build_variant(variant)
    out = model(random_images(2))
    assert tuple(out.shape) == (2, 10)
    assert out.dtype == "float32"
    assert np.all(np.isfinite(np.asarray(out)))
    spec = models.VARIANTS[variant]
    expected = PAPER_COUNTS["cm_xl" if spec["depth"] == 66 else "cm_vanilla"]
    assert models.trainable_param_count(model) == expected


def test_closed_form_counts_match_paper():
    assert models.count_params(256, 8, 2, 5) == 594_186
    assert models.count_params(256, 66, 2, 5) == 4_855_562
    assert models.count_params(256, 8, 2, 5, num_classes=100) == 594_186 + 256 * 90 + 90


def test_layers_are_named_by_position_and_long_skips_are_add():
    model = models.build_variant("cm_xl")
    names = {layer.name for layer in model.layers}
    for expected in ("stem_conv", "layer_1_depthwise", "layer_12_depthwise",
                     "layer_66_pointwise_bn", "head_logits", "normalize"):
        assert expected in names
    skips = [model.get_layer(f"group_{g}_skip") for g in (1, 2, 3)]
    assert all(isinstance(layer, keras.layers.Add) for layer in skips)
    # group 2's skip adds the output of layer 22 (end of group 1's skip) to layer 44's.
    inputs = [t._keras_history.operation.name for t in skips[1].input]
    assert inputs == ["group_1_skip", "layer_44_pointwise_bn"]
    # No long skips at all without skip_period.
    noskip = models.build_variant("cm_xl_noskip")
    assert not [l for l in noskip.layers if l.name.startswith("group_")]


def test_mixer_layer_matches_the_paper_formula():
    """Recompute one layer by hand: x + BN(act(dw(x))) -> 1x1 -> act -> BN (inference mode)."""
    model = models.build_convmixer(width=8, depth=1, patch_size=4, kernel_size=3,
                                   activation="relu")
    rng = np.random.default_rng(1)
    for weight in model.weights:  # non-trivial BN statistics and affine parameters
        shape = tuple(weight.shape)
        value = rng.uniform(0.5, 1.5, shape) if "variance" in weight.path else rng.normal(0, 0.5, shape)
        weight.assign(value.astype("float32"))
    x = random_images(2).astype("float32")
    stem_out = keras.Model(model.input, model.get_layer("stem_bn").output)(x)
    got = keras.Model(model.input, model.get_layer("layer_1_pointwise_bn").output)(x)

    def bn(name, v):
        layer = model.get_layer(name)
        gamma, beta, mean, var = (np.asarray(w) for w in layer.weights)
        return gamma * (v - mean) / np.sqrt(var + 1e-5) + beta

    relu = lambda v: np.maximum(v, 0)
    s = np.asarray(stem_out)
    dw = np.asarray(model.get_layer("layer_1_depthwise")(stem_out))
    y = s + bn("layer_1_depthwise_bn", relu(dw))
    pw = np.asarray(model.get_layer("layer_1_pointwise")(y))
    want = bn("layer_1_pointwise_bn", relu(pw))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_batchnorm_uses_pytorch_momentum_and_epsilon():
    model = models.build_variant("cm_vanilla")
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bns) == 1 + 2 * 8
    assert {(l.momentum, l.epsilon) for l in bns} == {(0.9, 1e-5)}


def test_gelu_is_exact_erf_form_and_swish_is_silu():
    x = np.linspace(-4, 4, 101).astype("float32")
    exact = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    gelu = models._activation("gelu", "g")(x)
    np.testing.assert_allclose(np.asarray(gelu), exact, atol=1e-6)
    silu = np.asarray(models._activation("silu", "s")(x))
    swish = np.asarray(models._activation("swish", "w")(x))
    np.testing.assert_allclose(silu, x / (1 + np.exp(-x)), atol=1e-6)
    np.testing.assert_array_equal(silu, swish)
    leaky = np.asarray(models._activation("leaky_relu", "l")(x))
    np.testing.assert_allclose(leaky, np.where(x > 0, x, 0.01 * x), atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gelu_gradient_is_the_exact_derivative_and_saves_as_keras_gelu(dtype, tmp_path):
    # Our GELU writes its gradient out on TensorFlow (for speed): it must be the
    # derivative of the exact erf form, Phi(x) + x * phi(x), the gradient autodiff takes
    # through Keras' own gelu, in float32 and in float16 (mixed precision).
    x = np.linspace(-6, 6, 241)
    phi = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    xt = tf.constant(x, dtype)
    grads = {}
    for name, fn in (("ours", models.gelu),
                     ("keras", lambda v: keras.activations.gelu(v, approximate=False))):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = fn(xt)
            upstream = tf.cast(tf.linspace(0.5, 1.5, 241), dtype)
            loss = tf.reduce_sum(y * upstream)
        grads[name] = np.asarray(tape.gradient(loss, xt), np.float64)
        assert y.dtype == dtype
        tol = 1e-6 if dtype == "float32" else 5e-3
        np.testing.assert_allclose(np.asarray(y, np.float64), x * cdf, atol=tol, rtol=tol)
    upstream = np.linspace(0.5, 1.5, 241)
    tol = 2e-6 if dtype == "float32" else 8e-3
    np.testing.assert_allclose(grads["ours"], upstream * (cdf + x * phi), atol=tol, rtol=tol)
    np.testing.assert_allclose(grads["ours"], grads["keras"], atol=tol, rtol=tol)
    # Saved as Keras' "gelu": the .keras file needs nothing of ours to load.
    layer = models._activation("gelu", "g")
    assert layer.get_config()["activation"] == "gelu"
    model = keras.Sequential([keras.Input((241,)), layer])
    model.save(tmp_path / "gelu.keras")
    code = ("import keras, numpy as np, sys; m = keras.saving.load_model(sys.argv[1]); "
            "f = m.layers[-1].activation; print(f.__module__, "
            "float(np.abs(np.asarray(m(np.linspace(-6, 6, 241)[None])) - "
            "np.asarray(keras.activations.gelu(np.linspace(-6, 6, 241)[None]))).max()))")
    out = run_process([sys.executable, "-c", code, str(tmp_path / "gelu.keras")], timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    module, diff = out.stdout.split()[-2:]
    assert module.startswith("keras.") and float(diff) < 1e-6, out.stdout


def test_normalizes_raw_pixels_inside_and_accepts_uint8(tiny_kwargs):
    model = models.build_convmixer(**tiny_kwargs)
    images = random_images(3)
    normalize = keras.Model(model.input, model.get_layer("normalize").output)
    got = np.asarray(normalize(images.astype("float32")))
    mean = np.array(models.CIFAR_MEAN) * 255
    std = np.array(models.CIFAR_STD) * 255
    np.testing.assert_allclose(got, (images - mean) / std, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(model(images)),
                               np.asarray(model(images.astype("float32"))), atol=1e-6)


@pytest.mark.parametrize("num_classes,size,patch", [(100, 32, 2), (10, 64, 4), (10, 24, 3)])
def test_other_class_counts_and_square_sizes(num_classes, size, patch):
    model = models.build_convmixer(width=16, depth=2, patch_size=patch, kernel_size=3,
                                   num_classes=num_classes, input_shape=(size, size, 3))
    assert tuple(model(random_images(2, size=size)).shape) == (2, num_classes)


@pytest.mark.parametrize("kwargs,quoted", [
    (dict(depth=8, skip_period=3), "depth 8 is not divisible by skip_period 3"),
    (dict(width=0), "width must be an integer >= 1, got 0"),
    (dict(depth=-1), "depth must be an integer >= 1, got -1"),
    (dict(depth=2.5), "depth must be an integer >= 1, got 2.5"),
    (dict(patch_size=0), "patch_size must be an integer >= 1, got 0"),
    (dict(kernel_size=0), "kernel_size must be an integer >= 1, got 0"),
    (dict(patch_size=5), "image size 32 is not divisible by patch_size 5"),
    (dict(activation="tanh"), "activation 'tanh' is not supported"),
    (dict(input_shape=(32, 30, 3)), "images must be square"),
    (dict(num_classes=1), "num_classes must be an integer >= 2, got 1"),
])
def test_invalid_hyper_parameters_raise_value_error_quoting_the_value(kwargs, quoted):
    with pytest.raises(ValueError) as info:
        models.build_convmixer(**kwargs)
    assert quoted in str(info.value)


def test_keras_save_load_gives_identical_outputs(tmp_path, tiny_kwargs):
    model = models.build_convmixer(**tiny_kwargs)
    images = random_images(4)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, np.arange(4) % 10, epochs=1, verbose=0)  # move BN statistics off init
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom objects needed
    np.testing.assert_array_equal(np.asarray(model(images)), np.asarray(loaded(images)))
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]


def _assert_all_gradients_finite_and_nonzero(model):
    images = random_images(4)
    labels = np.array([0, 1, 2, 3])
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        loss = tf.reduce_mean(loss)
    grads = tape.gradient(loss, model.trainable_weights)
    for weight, grad in zip(model.trainable_weights, grads):
        assert grad is not None, weight.path
        grad = np.asarray(grad)
        assert np.all(np.isfinite(grad)), weight.path
        assert np.any(grad != 0), weight.path


def test_every_trainable_weight_gets_a_gradient_cm_vanilla():
    _assert_all_gradients_finite_and_nonzero(models.build_variant("cm_vanilla"))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["cm_xl_noskip", "cm_xl"])
def test_every_trainable_weight_gets_a_gradient_cm_xl(variant):
    _assert_all_gradients_finite_and_nonzero(models.build_variant(variant))


def test_model_builds_and_runs_under_jax_backend():
    """The same builder under KERAS_BACKEND=jax, in a fresh interpreter."""
    code = (
        "import numpy as np, keras\n"
        "from cmxl_keras import models\n"
        "assert keras.backend.backend() == 'jax'\n"
        "m = models.build_variant('cm_vanilla')\n"
        "x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype('uint8')\n"
        "y = np.asarray(m(x))\n"
        "assert y.shape == (2, 10) and np.isfinite(y).all()\n"
        "print(models.trainable_param_count(m))\n")
    result = run_process([sys.executable, "-c", code], timeout=300,
                         env={"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "594186"


@pytest.mark.parametrize("activation,skip_period,policy", [
    ("gelu", 2, "float32"), ("relu", 0, "float32"), ("gelu", 2, "mixed_float16")])
def test_inference_graph_folds_affine_layers_and_computes_the_same(tiny_kwargs, activation,
                                                                   skip_period, policy):
    """folding.inference_graph: normalization folded into the stem, every BatchNorm a 1x1
    depthwise convolution, float32 throughout, and the same logits as a float32 model with
    the same (non-trivial) weights, also for a model built for mixed precision."""
    from cmxl_keras import folding

    kwargs = dict(tiny_kwargs, activation=activation, skip_period=skip_period)
    try:
        keras.mixed_precision.set_global_policy(policy)
        model = models.build_convmixer(**kwargs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 2, gamma.shape), rng.normal(0, 0.5, beta.shape),
                               rng.normal(0, 0.5, mean.shape), rng.uniform(0.2, 3, var.shape)])
    reference = models.build_convmixer(**kwargs)
    reference.set_weights(model.get_weights())
    folded = folding.inference_graph(model)
    kinds = {type(layer).__name__ for layer in folded.layers}
    assert not kinds & {"BatchNormalization", "Normalization"}, kinds
    assert {layer.dtype_policy.name for layer in folded.layers} == {"float32"}
    bn_count = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    depthwise_1x1 = [layer for layer in folded.layers
                     if isinstance(layer, keras.layers.DepthwiseConv2D)
                     and tuple(layer.kernel_size) == (1, 1)]
    assert len(depthwise_1x1) == bn_count == 1 + 2 * tiny_kwargs["depth"]
    assert [layer.name for layer in folded.layers] == [layer.name for layer in model.layers]
    images = random_images(16)
    expected = np.asarray(reference(images, training=False))
    got = np.asarray(folded(images, training=False))
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    assert not np.allclose(got, 0)


def test_int8_input_takes_raw_pixels_whatever_the_calibration_range(tiny_kwargs, tmp_path):
    """The int8 file's uint8 input has scale 1 and zero point 0 (raw pixels 0..255), also
    when no calibration image reaches 0 or 255 (all clipped to 20..230), and it runs on
    the LiteRT runtime."""
    from ai_edge_litert.interpreter import Interpreter

    from cmxl_keras import folding, savedmodel, tflite

    model = models.build_convmixer(**tiny_kwargs)
    source = str(tmp_path / "source")
    savedmodel.write_saved_model(folding.inference_graph(model), source)
    clipped = np.clip(random_images(16), 20, 230)
    data = tflite.calibrated_int8(source, clipped)
    runner = Interpreter(model_content=data).get_signature_runner()
    (name, spec), = runner.get_input_details().items()
    assert spec["dtype"] == np.uint8 and spec["quantization"] == (1.0, 0), spec
    probabilities = runner(**{name: random_images(3)})["probabilities"]
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(-1), 1, atol=0.02)


def test_the_int8_export_runs_on_the_tensorflow_whose_internals_it_uses():
    """calibrated_int8 uses TensorFlow internals (tflite.INT8_INTERNALS and the
    converter's ``_experimental_calibrate_only``), verified with one TensorFlow version.
    A TensorFlow upgrade fails here first: re-verify the int8 path (the int8 parity
    tests), then move the pin."""
    import tensorflow as tf

    from cmxl_keras import tflite

    assert tf.__version__ == tflite.PINNED_TENSORFLOW, (
        f"TensorFlow {tf.__version__} is not {tflite.PINNED_TENSORFLOW}, the version "
        f"whose TFLite internals the int8 export was verified with")
    convert, flatbuffer_utils = tflite._int8_internals()
    assert callable(convert.mlir_quantize)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([], None)
    assert converter._experimental_calibrate_only is False


BACKBONE_CHECK = """
import numpy as np, keras
from cmxl_keras import models

kwargs = dict(width=16, depth=4, patch_size=4, kernel_size=3, skip_period=2)
full = models.build_convmixer(**kwargs)
x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype("float32")
logits = np.asarray(full(x, training=False))
features = models.build_convmixer(include_top=False, **kwargs)
avg = models.build_convmixer(include_top=False, pooling="avg", **kwargs)
peak = models.build_convmixer(include_top=False, pooling="max", **kwargs)
probs = models.build_convmixer(classifier_activation="softmax", **kwargs)
for model in (features, avg, peak, probs):  # the backbone's weights are the full model's
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(full.get_layer(layer.name).get_weights())
fmap = np.asarray(features(x, training=False))
assert fmap.shape == (3, 8, 8, 16), fmap.shape
assert "head_logits" not in [layer.name for layer in features.layers]
np.testing.assert_allclose(np.asarray(avg(x, training=False)), fmap.mean(axis=(1, 2)),
                           rtol=1e-5, atol=1e-5)
np.testing.assert_allclose(np.asarray(peak(x, training=False)), fmap.max(axis=(1, 2)),
                           rtol=1e-5, atol=1e-5)
# The pooled features through the full model's classifier give its logits.
dense = full.get_layer("head_logits")
np.testing.assert_allclose(np.asarray(dense(avg(x, training=False))), logits, rtol=1e-4,
                           atol=1e-4)
p = np.asarray(probs(x, training=False))
e = np.exp(logits - logits.max(axis=1, keepdims=True))
np.testing.assert_allclose(p, e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
try:
    models.build_convmixer(include_top=False, pooling="mean", **kwargs)
    raise SystemExit("pooling='mean' was accepted")
except ValueError as error:
    assert "pooling 'mean'" in str(error)
print("backbone ok on", keras.backend.backend())
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_the_builder_gives_a_backbone_like_keras_applications(backend):
    """include_top=False (feature map, or pooled with pooling='avg'|'max') and
    classifier_activation, checked against the full model's own computation."""
    result = run_process([sys.executable, "-c", BACKBONE_CHECK], timeout=300,
                         env={"KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f"backbone ok on {backend}"
