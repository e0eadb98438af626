"""TensorFlow Serving's REST API for this project's exported models (its REST API
reference): a ``:predict`` body parsed into the model's inputs and checked, the answer in
row (``predictions``) or columnar (``outputs``) format, the signatures as its metadata
call gives them. ``server.py`` serves them."""

import base64
import binascii
import json

import numpy as np

from cmxl_keras.errors import DataError
from cmxl_keras.images import check_image
from cmxl_keras.serving import GIVE_IMAGES

SIGNATURES = {"serving_default": "images", "serving_bytes": "image_bytes"}


class BadRequest(Exception):
    """A request the server refuses; ``status`` is its HTTP status."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def parse_predict(body, served):
    """A ``:predict`` body -> (signature, inputs, columnar). ``inputs`` is a uint8 array
    [N, H, W, 3] for ``serving_default`` and a list of encoded images for
    ``serving_bytes``. Raises ``BadRequest`` naming what is wrong and the fix."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"the body is not JSON ({error}). Send a JSON object such as "
                         f"{{\"instances\": [...]}}.") from None
    except RecursionError:  # Python's parser gives up on arrays nested a thousand deep
        raise BadRequest("the body's JSON nests arrays or objects more deeply than the "
                         "parser follows (about a thousand levels); an image is 4 levels "
                         "deep in \"instances\". Send [N, H, W, 3] pixels or {\"b64\": ...} "
                         "images.") from None
    if not isinstance(request, dict):
        raise BadRequest(f"the body is a JSON {type(request).__name__}, not an object. Send "
                         f"{{\"instances\": [...]}} or {{\"inputs\": ...}}.")
    signature = request.get("signature_name", "serving_default")
    if signature not in SIGNATURES:
        raise BadRequest(f"Serving signature name: {signature!r} not found in signature def. "
                         f"This model has {', '.join(SIGNATURES)}.")
    if ("instances" in request) == ("inputs" in request):
        raise BadRequest("the body must have exactly one of \"instances\" (row format) and "
                         "\"inputs\" (columnar format).")
    name = SIGNATURES[signature]
    columnar = "inputs" in request
    value = request["inputs" if columnar else "instances"]
    if columnar and isinstance(value, dict):
        if set(value) != {name}:
            raise BadRequest(f"\"inputs\" names {sorted(value)}; {signature} takes one input, "
                             f"{name!r}.")
        value = value[name]
    if not isinstance(value, list) or not value:
        raise BadRequest(f"{'inputs' if columnar else 'instances'} must be a non-empty list "
                         f"(one entry per image).")
    if not columnar:  # row format: each instance the input itself, or {name: input}
        value = [item[name] if isinstance(item, dict) and set(item) == {name} else item
                 for item in value]
    if signature == "serving_bytes":
        return signature, [_b64(item, i, served) for i, item in enumerate(value)], columnar
    return signature, _pixels(value, served.size), columnar


def _b64(item, i, served):
    if not (isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str)):
        raise BadRequest(f"instance {i}: serving_bytes takes each image as {{\"b64\": \"<base64 "
                         f"of the encoded file>\"}}, got {json.dumps(item)[:80]}.")
    try:
        data = base64.b64decode(item["b64"], validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadRequest(f"instance {i}: its \"b64\" is not base64 ({error}). Encode the file's "
                         f"bytes with standard base64.") from None
    check_bytes(data, f"instance {i}", served.size)
    return data


def _pixels(value, size):
    try:
        array = np.asarray(value)
    except (ValueError, RecursionError):  # ragged, or nested past what NumPy follows
        array = None
    want = f"[N, {size}, {size}, 3]"
    if array is None or array.dtype == object or array.ndim != 4 or \
            array.shape[1:] != (size, size, 3):
        shape = "ragged" if array is None or array.dtype == object else list(array.shape)
        raise BadRequest(f"serving_default takes uint8 images {want}; got shape {shape}. "
                         f"Send each image as {size} rows of {size} [R, G, B] pixels, or "
                         f"use serving_bytes for image files of any size.")
    if array.dtype.kind not in "iuf" or (array.dtype.kind == "f" and not np.all(
            np.isfinite(array) & (array == np.round(array)))):
        raise BadRequest(f"serving_default takes uint8 pixels: whole numbers 0 to 255; got "
                         f"{array.dtype} values. Send integers.")
    if array.min() < 0 or array.max() > 255:
        raise BadRequest(f"serving_default takes uint8 pixels 0 to 255; got values from "
                         f"{array.min()} to {array.max()}.")
    return array.astype(np.uint8)


def respond(probabilities, columnar):
    """TensorFlow Serving's answer: row format ``predictions``, columnar ``outputs``."""
    class_id = np.argmax(probabilities, axis=-1)
    if columnar:
        return {"outputs": {"probabilities": probabilities.tolist(),
                            "class_id": class_id.tolist()}}
    return {"predictions": [{"probabilities": p.tolist(), "class_id": int(c)}
                            for p, c in zip(probabilities, class_id)]}


def check_bytes(data, where, size):
    """Refuses, from the header, what is no image or declares too many pixels."""
    try:
        check_image(data, where, size, fix=GIVE_IMAGES)
    except DataError as error:
        raise BadRequest(str(error)) from None


def signature_defs(served):
    """The two signatures in TensorFlow Serving's metadata JSON."""
    size = str(served.size)
    out = {"probabilities": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [
        {"size": "-1"}, {"size": str(len(served.class_names))}]}, "name": "probabilities"},
           "class_id": {"dtype": "DT_INT32", "tensor_shape": {"dim": [{"size": "-1"}]},
                        "name": "class_id"}}
    return {"signature_def": {
        "serving_default": {"inputs": {"images": {"dtype": "DT_UINT8", "tensor_shape": {
            "dim": [{"size": "-1"}, {"size": size}, {"size": size}, {"size": "3"}]},
            "name": "images"}}, "outputs": out, "method_name": "tensorflow/serving/predict"},
        "serving_bytes": {"inputs": {"image_bytes": {"dtype": "DT_STRING", "tensor_shape": {
            "dim": [{"size": "-1"}]}, "name": "image_bytes"}}, "outputs": out,
            "method_name": "tensorflow/serving/predict"}}}
