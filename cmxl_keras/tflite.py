"""TFLite files from a SavedModel: float32, float16 weights, and full-integer int8
calibrated here (see ``calibrated_int8`` for why not by the converter), builtin ops only:
a model that would need Flex ops fails to convert."""

import warnings

import numpy as np

from cmxl_keras import inference, progress
from cmxl_keras.errors import RunError

PINNED_TENSORFLOW = "2.20.0"  # the version the int8 path's internals were verified with
CALIBRATION_PERCENTILE = 99.99  # int8 activation ranges: this percentile and its mirror
CALIBRATION_SAMPLE = 20000  # values drawn per tensor and calibration batch


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
        interpreter = inference.interpreter(model_content=bytes(calibrated),
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
