"""Export for serving: a TF-Serving SavedModel and TFLite files that take raw uint8 images.

    exported/<name>/
      saved_model/1/            serving_default: uint8 images [None, H, W, 3] ->
                                {"probabilities": float32 [None, C], "class_id": int32 [None]}
      model_fp32.tflite         same signature, builtin ops only
      model_fp16.tflite         float16 weights
      model_int8.tflite         full-integer, uint8 input, calibrated on training images
      metadata.json             class names, input spec, config, source, accuracy, sizes, parity

The export is written to a temporary folder beside the target and renamed into place
at the end, so an interrupted export never leaves a half-written model. TFLite files
are converted from a SavedModel (``TFLiteConverter.from_keras_model`` does not support
Keras 3 models) with builtin ops only: a model that would need Flex ops fails to convert.

That SavedModel holds ``inference_graph(model)``: the same function with its affine
layers folded away (the input normalization into the stem convolution, every
BatchNormalization into a per-channel 1x1 depthwise convolution). In float this changes
only rounding (~1e-5 on the probabilities); in int8 it removes two requantizations per
BatchNormalization and gives its per-channel scale int8 weights of its own. The int8 file
is calibrated with ``calibrated_int8`` (see there for why not the converter's own pass).
"""

import json
import os
import shutil
import tempfile
import time
import warnings

import numpy as np

from cmxl_keras import progress, runs
from cmxl_keras.errors import ParityMiss, RunError

PINNED_TENSORFLOW = "2.20.0"  # the version the int8 path's internals were verified with
CALIBRATION_PERCENTILE = 99.99  # int8 activation ranges: this percentile and its mirror
CALIBRATION_SAMPLE = 20000  # values drawn per tensor and calibration batch
FORMATS = ("saved_model", "tflite", "tflite_fp16", "tflite_int8")
TFLITE_FILES = {"tflite": "model_fp32.tflite", "tflite_fp16": "model_fp16.tflite",
                "tflite_int8": "model_int8.tflite"}
# Parity targets checked (and printed) after every export.
PARITY_TARGETS = {"saved_model_max_abs_diff": 1e-5, "tflite_max_abs_diff": 1e-4,
                  "tflite_fp16_top1_agreement": 0.99, "tflite_int8_top1_agreement": 0.97}


def load_source(source=None, checkpoint=None):
    """(keras model, config or None, description) from a run folder or a .keras file."""
    import keras

    from cmxl_keras import config as config_lib

    path = checkpoint or source
    if not path:
        raise RunError("export needs a run folder (python cli.py export runs/<dir>) or "
                       "--checkpoint FILE.keras.")
    if not os.path.exists(path):
        raise RunError(f"{path!r} does not exist. Give a run folder made by 'python cli.py "
                       f"train' (look under runs/) or a .keras model file.")
    cfg = None
    if os.path.isdir(path):
        cfg_path = os.path.join(path, "config.json")
        model_path = next((p for p in (os.path.join(path, "model.keras"),
                                       runs.checkpoint_paths(path)["best"])
                           if os.path.isfile(p)), None)
        if model_path is None or not os.path.isfile(cfg_path):
            raise RunError(
                f"{path!r} is not a finished run folder: it has no model.keras or "
                f"checkpoints/best.keras and config.json. Finish the run first "
                f"(python cli.py train --resume {path}) or pass --checkpoint FILE.keras.")
        cfg = config_lib.from_dict(runs.read_json(cfg_path), source=cfg_path)
    else:
        model_path = path
        # A .keras file inside a run folder (model.keras, checkpoints/best.keras) keeps
        # the run's config, and with it the run's data and split protocol.
        here = os.path.dirname(os.path.abspath(path))
        for folder in (here, os.path.dirname(here)):
            cfg_path = os.path.join(folder, "config.json")
            if os.path.isfile(cfg_path):
                cfg = config_lib.from_dict(runs.read_json(cfg_path), source=cfg_path)
                break
    if not model_path.endswith(".keras"):
        raise RunError(f"{model_path!r} is not a Keras model file (.keras). Give a run "
                       f"folder or a .keras file saved by this project.")
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as error:  # zip, h5 and deserialization errors all mean the same here
        raise RunError(f"cannot load {model_path!r} as a Keras model ({type(error).__name__}: "
                       f"{str(error)[:200]}). Give a .keras file saved by this project.") from None
    shape = tuple(model.input_shape[1:])
    if len(shape) != 3 or shape[-1] != 3:
        raise RunError(f"{model_path!r} takes inputs of shape {shape}, not RGB images.")
    return model, cfg, model_path


def _float32_layer(layer):
    """A new layer like ``layer`` that computes in float32 (weights not copied)."""
    return layer.__class__.from_config(dict(layer.get_config(), dtype="float32"))


def float32_model(model):
    """``model`` with every layer computing in float32, same weights: what is exported
    and what the exports are compared with. A model trained under mixed precision keeps
    its float16 policy in its ``.keras`` file; served as it is, it would compute in
    float16 (slow on CPUs, and ~1e-3 off the float32 function that TFLite converts)."""
    import keras

    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    copy = keras.models.clone_model(model, clone_function=_float32_layer)
    copy.set_weights(model.get_weights())
    return copy


def inference_graph(model):
    """A copy of ``model`` that computes the same function with its affine layers folded.

    - The Normalization layer in front of a ``valid``-padded stem Conv2D (the builder's
      ``normalize`` -> ``stem_conv``) is folded into that convolution: without padding,
      conv(a * x + b) is exactly a convolution of x with kernel W * a and a new bias.
    - Every BatchNormalization (inference mode: y = s * x + t per channel) becomes a 1x1
      DepthwiseConv2D with kernel s and bias t.

    Why by hand: the TFLite converter keeps a BatchNormalization that follows an
    activation (ConvMixer's act -> BN order, which cannot fold into a convolution) as a
    MUL and an ADD. In int8 both constants then share one per-tensor scale and the
    activation is rounded twice; a depthwise convolution has per-channel int8 weights and
    one rounding. Scale and shift are read from float32 copies of the layers (their
    outputs on zeros and ones), so any centering/scaling options are honoured. The copy
    computes in float32 whatever the model's dtype policy: a model trained with mixed
    precision exports float32 TFLite files.
    """
    import keras

    def affine(layer, channels, **kwargs):
        probe, zeros = _float32_layer(layer), np.zeros((1, 1, 1, channels), np.float32)
        probe(zeros, **kwargs)  # builds it
        probe.set_weights(layer.get_weights())
        shift = np.asarray(probe(zeros, **kwargs), np.float64).reshape(-1)
        scale = np.asarray(probe(zeros + 1, **kwargs), np.float64).reshape(-1) - shift
        return scale, shift

    stem_fold = None
    names = {layer.name for layer in model.layers}
    if {"normalize", "stem_conv"} <= names:
        norm, conv = model.get_layer("normalize"), model.get_layer("stem_conv")
        if (conv.padding == "valid" and conv.input is norm.output
                and isinstance(norm, keras.layers.Normalization)):
            scale, shift = affine(norm, conv.kernel.shape[2])
            kernel, bias = (np.asarray(w, np.float64) for w in conv.get_weights())
            stem_fold = [(kernel * scale[None, None, :, None]).astype(np.float32),
                         (bias + np.einsum("hwio,i->o", kernel, shift)).astype(np.float32)]

    class FoldedBatchNorm(keras.layers.DepthwiseConv2D):
        def call(self, inputs, mask=None, training=None):  # BatchNormalization's signature
            return super().call(inputs)

    folded = {}

    def clone(layer):
        rank = len(getattr(layer.input, "shape", ()) or ())
        if (isinstance(layer, keras.layers.BatchNormalization) and rank == 4
                and layer.axis % rank == rank - 1):
            folded[layer.name] = affine(layer, layer.input.shape[-1], training=False)
            return FoldedBatchNorm(1, use_bias=True, name=layer.name, dtype="float32")
        if stem_fold and layer.name == "normalize":
            return keras.layers.Identity(name=layer.name, dtype="float32")
        return _float32_layer(layer)

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in copy.layers:
        if layer.name in folded:
            scale, shift = folded[layer.name]
            layer.set_weights([scale.reshape(1, 1, -1, 1).astype(np.float32),
                               shift.astype(np.float32)])
        elif layer.name == "stem_conv" and stem_fold:
            layer.set_weights(stem_fold)
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return copy


def _serving_fn(model):
    import tensorflow as tf

    def serve(images):
        logits = model(tf.cast(images, tf.float32), training=False)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        return {"probabilities": probabilities,
                "class_id": tf.argmax(probabilities, axis=-1, output_type=tf.int32)}

    return serve


def _bytes_serving_fn(serve, height, width):
    """``serving_bytes``: encoded images (JPEG, PNG, GIF, BMP; any size) -> ``serve``."""
    import tensorflow as tf

    def decode(data):
        # JPEG with the accurate integer IDCT, as PIL (and so `predict`) decodes it: the
        # default fast IDCT differs by up to 11 grey levels (measured).
        image = tf.cond(
            tf.io.is_jpeg(data),
            lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
        image.set_shape([None, None, 3])
        # Bilinear with antialiasing is PIL's BILINEAR resize, which `predict` uses, to
        # within one grey level (the rounding); an image of the model's size is unchanged.
        resized = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    def serve_bytes(image_bytes):
        images = tf.map_fn(decode, image_bytes,
                           fn_output_signature=tf.TensorSpec([height, width, 3], tf.uint8))
        return serve(images)

    return serve_bytes


def write_saved_model(model, path, serving=True):
    """A SavedModel whose ``serving_default`` takes uint8 images of any batch size.

    ``serving_float`` takes float32 pixels in [0, 255]; the int8 TFLite conversion
    starts from it so the converter can make its input uint8 itself. With ``serving``
    (the served copy), ``serving_bytes`` takes encoded images (``image_bytes``: a batch
    of JPEG/PNG strings, what TF-Serving clients send, base64 over REST), and
    ``assets.extra/tf_serving_warmup_requests`` holds one request per signature so
    TF-Serving runs each graph once before it reports the model ready.
    """
    import keras
    import tensorflow as tf

    height, width, channels = model.input_shape[1:]
    serve = _serving_fn(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default", fn=serve,
        input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8, "images")])
    archive.add_endpoint(
        name="serving_float", fn=serve,
        input_signature=[tf.TensorSpec([None, height, width, channels], tf.float32, "images")])
    if serving:
        archive.add_endpoint(
            name="serving_bytes", fn=_bytes_serving_fn(serve, height, width),
            input_signature=[tf.TensorSpec([None], tf.string, "image_bytes")])
    archive.write_out(path, verbose=False)
    if serving:
        write_warmup_requests(path, (height, width, channels))


WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def write_warmup_requests(saved_model_dir, shape):
    """TF-Serving's warmup file: a TFRecord of ``PredictionLog`` protos, one per
    signature (a mid-grey image, raw and PNG-encoded)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    grey = np.full((1, *shape), 128, np.uint8)
    inputs = {"serving_default": ("images", grey),
              "serving_bytes": ("image_bytes", np.array([tf.io.encode_png(grey[0]).numpy()],
                                                        dtype=object))}
    path = os.path.join(saved_model_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, (name, value) in inputs.items():
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def convert_tflite(saved_model_dir, kind, calibration=None):
    """TFLite bytes from the SavedModel; builtin ops only (conversion fails otherwise)."""
    import tensorflow as tf

    if kind == "tflite_int8":
        return calibrated_int8(saved_model_dir, calibration)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir,
                                                         signature_keys=["serving_default"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if kind == "tflite_fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def calibrated_int8(saved_model_dir, calibration, batch=8):
    """Full-integer TFLite bytes (uint8 input) calibrated on ``calibration`` images.

    Why not the converter's own calibration: its logging interpreter records every op's
    inputs again *after* the op has run (for LSTM state), and TFLite runs elementwise ops
    such as MUL and ADD in place, so an activation's recorded range also takes in the
    values of the op that overwrote it (a GELU output, whose true minimum is -0.17, was
    recorded down to -1.1 and up to the following BatchNormalization's maximum, a range
    3.4x too wide). Here the converter only lays out the calibration fields (on one
    image); the ranges are then measured on all images with the float model run with
    ``experimental_preserve_all_tensors`` (no buffer is reused), written into those
    fields, and the model is quantized by the same MLIR quantizer the converter calls.
    Each range runs from the 0.01th to the 99.99th percentile of the tensor's values over
    the calibration images (``CALIBRATION_PERCENTILE``), not from its minimum to its
    maximum: a few extreme activations otherwise widen an int8 step for every value.
    Measured through ``cli.py export``, top-1 agreement with the float model, min/max ->
    percentiles: a 57 % cpu_quick model 97.0 % -> 97.7 % (2,000 validation images), the
    shipped 75.7 % model 97.06 % -> 98.16 % (5,000). In a side experiment (2,000 images),
    99.9 % clipped too much (95.5 %), and min/max over 1,000 calibration images instead
    of 200 was worse (96.0 %) where the percentile ranges were not (97.95 %).
    The uint8 input's scale and zero point are pinned to the full 0..255 pixel range
    (scale 1, zero point 0: raw pixels), whatever range the calibration images cover.

    ``_experimental_calibrate_only``, ``convert.mlir_quantize`` and ``flatbuffer_utils``
    are TensorFlow internals (the path ``tf.lite.experimental.QuantizationDebugger``
    takes). The supported quantizer, ai-edge-quantizer 0.10.0 (``static_wi8_ai8``,
    min-max calibration on the same 200 images, run on the fp32 file), keeps the uint8
    input but agreed with the fp32 model on 93.6 % of 512 images where this path agreed
    on 96.9 % (a cpu_quick model, same images, this path still with min/max ranges),
    below the 97 % target, so the internals stay, pinned with TensorFlow in
    requirements.txt: ``INT8_INTERNALS`` names them and tests/test_export.py fails
    loudly if an upgrade removes one. The calibrator bug worked around:
    tensorflow/tensorflow#127842.
    """
    import tensorflow as tf

    tflite_convert, flatbuffer_utils = _int8_internals()

    images = np.asarray(calibration, np.float32)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir,
                                                         signature_keys=["serving_float"])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.representative_dataset = lambda: iter([[images[:1]]])
    converter._experimental_calibrate_only = True
    calibrated = converter.convert()

    tflite_model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    tensors = tflite_model.subgraphs[0].tensors
    logged = [i for i, t in enumerate(tensors) if t.quantization is not None
              and t.quantization.min is not None and len(t.quantization.min) == 1]
    with warnings.catch_warnings():  # "for debugging only": keeping every tensor is the point
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        interpreter = _interpreter(model_content=bytes(calibrated),
                                   experimental_preserve_all_tensors=True)
    index = interpreter.get_input_details()[0]["index"]
    samples = {i: [] for i in logged}
    for start in progress.batches(len(images), batch, "int8 calibration"):
        chunk = images[start:start + batch]
        interpreter.resize_tensor_input(index, chunk.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, chunk)
        interpreter.invoke()
        draw = np.random.default_rng(start)  # the same sample every export
        for i in logged:
            try:
                value = interpreter.get_tensor(i).ravel()
            except ValueError:  # not materialized by this interpreter: keep its stats
                continue
            if value.size > CALIBRATION_SAMPLE:
                value = draw.choice(value, CALIBRATION_SAMPLE, replace=False)
            samples[i].append(value.astype(np.float32))
    low, high = {}, {}
    for i, values in samples.items():
        if values:
            values = np.concatenate(values)
            low[i] = min(0.0, float(np.percentile(values, 100 - CALIBRATION_PERCENTILE)))
            high[i] = max(0.0, float(np.percentile(values, CALIBRATION_PERCENTILE)))
    # The input takes raw pixels 0..255 (uint8, scale 1, zero point 0) like the other
    # formats, not the calibration images' own range (a set with no 0 or 255 pixel
    # would otherwise rescale every served image).
    low[index], high[index] = 0.0, 255.0
    for i in low:
        tensors[i].quantization.min = np.array([low[i]], np.float32)
        tensors[i].quantization.max = np.array([high[i]], np.float32)
    fixed = bytes(flatbuffer_utils.convert_object_to_bytearray(tflite_model))
    return tflite_convert.mlir_quantize(fixed, input_data_type=tf.uint8,
                                        output_data_type=tf.float32)


# The TensorFlow internals the int8 calibration needs (module, attribute), checked by
# tests/test_export.py so that a TensorFlow upgrade that drops one fails loudly there.
INT8_INTERNALS = (("tensorflow.lite.python.convert", "mlir_quantize"),
                  ("tensorflow.lite.tools.flatbuffer_utils", "convert_bytearray_to_object"),
                  ("tensorflow.lite.tools.flatbuffer_utils", "convert_object_to_bytearray"),
                  ("tensorflow.lite.python.lite", "TFLiteConverterBaseV2"))


def _int8_internals():
    import importlib

    import tensorflow as tf

    try:
        modules = [importlib.import_module(module) for module, _ in INT8_INTERNALS]
        for module, (_, attribute) in zip(modules, INT8_INTERNALS):
            getattr(module, attribute)
    except (ImportError, AttributeError) as error:
        raise RunError(
            f"the int8 export needs TensorFlow {PINNED_TENSORFLOW}'s TFLite internals, and "
            f"this TensorFlow ({tf.__version__}) lacks one ({error}). Install the pinned "
            f"version (pip install -r requirements.txt), or export without tflite_int8 "
            f"(--formats saved_model,tflite,tflite_fp16).") from None
    return modules[0], modules[1]  # convert, flatbuffer_utils


def _interpreter(**kwargs):
    """A LiteRT interpreter (the ``ai-edge-litert`` runtime, which needs no TensorFlow;
    ``tf.lite.Interpreter`` is deprecated in TensorFlow 2.20)."""
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(**kwargs)


def tflite_ops(model_bytes):
    """The operator names of a TFLite model (a Flex op shows as ``Flex...``), read from
    the flatbuffer with the schema LiteRT ships."""
    from ai_edge_litert import schema_py_generated as schema

    names = {code: name for name, code in vars(schema.BuiltinOperator).items()
             if not name.startswith("_")}
    model = schema.Model.GetRootAs(model_bytes, 0)
    ops = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        ops.add(custom.decode() if custom else names.get(builtin, str(builtin)))
    return sorted(ops)


class TFLiteRunner:
    """Runs a TFLite file on raw uint8 images, any batch size; returns probabilities.
    LiteRT only: no TensorFlow is imported."""

    def __init__(self, path):
        self.interpreter = _interpreter(model_path=str(path), num_threads=os.cpu_count())
        runner = self.interpreter.get_signature_runner()
        self.input_name = next(iter(runner.get_input_details()))
        self.input_dtype = runner.get_input_details()[self.input_name]["dtype"]
        self.runner = runner

    def __call__(self, images, desc=None):
        images = np.asarray(images).astype(self.input_dtype)
        if desc is None:
            out = self.runner(**{self.input_name: images})
            return np.asarray(out["probabilities"], np.float32)
        return np.concatenate([
            np.asarray(self.runner(**{self.input_name: images[i:i + 256]})["probabilities"],
                       np.float32) for i in progress.batches(len(images), 256, desc)])


def saved_model_predict(path, images, batch=256, desc="SavedModel"):
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    return np.concatenate([serve(images=tf.constant(images[i:i + batch], tf.uint8))
                           ["probabilities"].numpy()
                           for i in progress.batches(len(images), batch, desc)])


def keras_predict(model, images, batch=256, desc="Keras model"):
    import keras

    logits = [model.predict_on_batch(images[i:i + batch].astype(np.float32))
              for i in progress.batches(len(images), batch, desc)]
    return np.asarray(keras.ops.softmax(np.concatenate(logits), axis=-1))


def parity(model, folder, images, formats):
    """Agreement of every exported format with the Keras model on ``images``."""
    reference = keras_predict(model, images, desc="parity: Keras model")
    top1 = reference.argmax(-1)
    report = {"images": int(len(images))}
    if "saved_model" in formats:
        got = saved_model_predict(os.path.join(folder, "saved_model", "1"), images,
                                  desc="parity: SavedModel")
        report["saved_model_max_abs_diff"] = float(np.abs(got - reference).max())
        report["saved_model_top1_agreement"] = float((got.argmax(-1) == top1).mean())
    for kind, name in TFLITE_FILES.items():
        if kind in formats:
            got = TFLiteRunner(os.path.join(folder, name))(images, desc=f"parity: {kind}")
            report[f"{kind}_max_abs_diff"] = float(np.abs(got - reference).max())
            report[f"{kind}_top1_agreement"] = float((got.argmax(-1) == top1).mean())
    return report


def parity_failures(report):
    failures = []
    for key, target in PARITY_TARGETS.items():
        if key not in report:
            continue
        value = report[key]
        bad = value > target if key.endswith("diff") else value < target
        if bad:
            failures.append(f"{key} {value:.3g} (target {'<' if key.endswith('diff') else '>='} "
                            f"{target})")
    if "tflite_top1_agreement" in report and report["tflite_top1_agreement"] < 1.0:
        failures.append(f"tflite_top1_agreement {report['tflite_top1_agreement']:.4f} "
                        f"(target 1.0)")
    return failures


def check_formats(formats):
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise RunError(f"unknown export format(s) {', '.join(unknown) or '(none)'}; choose "
                       f"from {', '.join(FORMATS)} (comma-separated).")
    return tuple(formats)


def export(loaded, source=None, formats=FORMATS, out_dir="exported", name=None,
           calibration_images=None, parity_images=None, class_names=None, log=print,
           allow_parity_miss=False):
    """Exports ``loaded = load_source(...)``; returns (folder, metadata).

    Raises:
        ParityMiss: a format missed its parity target (``PARITY_TARGETS``); nothing is
            written unless ``allow_parity_miss``.
    """
    check_formats(formats)
    if "tflite_int8" in formats and calibration_images is None:
        raise RunError("int8 export needs calibration images: pass --data-dir (or export a "
                       "run folder whose data is still there).")
    model, cfg, model_path = loaded
    model = float32_model(model)
    name = name or (cfg.name if cfg else os.path.splitext(os.path.basename(model_path))[0])
    target = os.path.join(out_dir, name)
    try:
        os.makedirs(out_dir, exist_ok=True)
        for stale in os.listdir(out_dir):  # left by an export that was killed
            if stale.startswith(f".{name}{runs.TMP_SUFFIX}-"):
                shutil.rmtree(os.path.join(out_dir, stale), ignore_errors=True)
        staging = tempfile.mkdtemp(prefix=f".{name}{runs.TMP_SUFFIX}-", dir=out_dir)
    except OSError as error:
        raise RunError(f"cannot write to the output folder {out_dir!r} "
                       f"({error.strerror or error}). Choose a writable --out DIR.") from None
    try:
        started = time.time()
        sizes = {}
        if "saved_model" in formats:
            log(f"export: SavedModel -> {target}/saved_model/1")
            write_saved_model(model, os.path.join(staging, "saved_model", "1"))
            sizes["saved_model"] = sum(
                os.path.getsize(os.path.join(root, f))
                for root, _, files in os.walk(os.path.join(staging, "saved_model"))
                for f in files)
        tflite_source = os.path.join(staging, "tflite_source")
        for kind, fname in TFLITE_FILES.items():
            if kind not in formats:
                continue
            if not os.path.isdir(tflite_source):
                # The TFLite files are converted from a SavedModel of the folded graph;
                # the served SavedModel keeps the model's own graph, exact to float
                # rounding (folding the normalization into the stem moves the
                # probabilities by ~1e-5, within the TFLite targets but not below 1e-5).
                write_saved_model(inference_graph(model), tflite_source, serving=False)
            log(f"export: {kind} -> {target}/{fname}")
            data = convert_tflite(tflite_source, kind, calibration_images)
            flex = [op for op in tflite_ops(data) if op.lower().startswith("flex")]
            if flex:
                raise RunError(f"{kind} needs TensorFlow (Flex) ops {flex}; not exported.")
            with open(os.path.join(staging, fname), "wb") as f:
                f.write(data)
            sizes[fname] = len(data)
        report = parity(model, staging, parity_images, formats) if parity_images is not None else {}
        failures = parity_failures(report)
        if failures and not allow_parity_miss:
            raise ParityMiss(
                f"export parity below target on {report['images']} images: "
                f"{'; '.join(failures)}. Nothing was written to {target}. A model that "
                f"barely learned has margins that rounding flips (int8, fp16); train it "
                f"longer, compare on more images (--parity-images), or keep the files "
                f"anyway with --allow-parity-miss.")
        metadata = _metadata(model, cfg, model_path, source, class_names, sizes, report, formats)
        runs.write_json(os.path.join(staging, "metadata.json"), metadata)
        shutil.rmtree(tflite_source, ignore_errors=True)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(staging, target)
        log(f"export: done in {time.time() - started:.0f} s")
        return target, metadata
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _metadata(model, cfg, model_path, source, class_names, sizes, report, formats):
    best = None
    if source and os.path.isdir(source):
        results = runs.read_json(os.path.join(source, "results.json"), {})
        best = results.get("best_val_accuracy")
    num_classes = int(model.output_shape[-1])
    return {
        "class_names": list(class_names or [str(i) for i in range(num_classes)]),
        "input": {"dtype": "uint8", "shape": [None, *model.input_shape[1:]],
                  "range": [0, 255], "normalization": "inside the model"},
        "outputs": {"probabilities": "float32 [batch, classes]", "class_id": "int32 [batch]"},
        "config": cfg.to_dict() if cfg else None,
        "source_checkpoint": os.path.abspath(model_path),
        "validation_accuracy": best,
        "formats": list(formats),
        "file_sizes": sizes,
        "parity": report,
    }


def read_metadata(folder):
    path = os.path.join(folder, "metadata.json")
    if not os.path.isfile(path):
        raise RunError(f"{folder!r} is not an exported model folder (no metadata.json). "
                       f"Make one with 'python cli.py export RUN_DIR'.")
    try:
        with open(path) as f:
            metadata = json.load(f)
        metadata["input"]["shape"][1], metadata["class_names"][0]  # what predict reads
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise RunError(
            f"{path!r} is damaged ({type(error).__name__}: {error}); predict reads the input "
            f"size and class names from it. Export the model again (python cli.py export "
            f"RUN_DIR), or restore the folder from a copy.") from None
    return metadata
