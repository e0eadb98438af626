"""Predictions for image files from an exported model (``predict``), and the request and
response of TF Serving's REST API for the same files."""

import os

import numpy as np

from cmxl_keras import inference
from cmxl_keras.images import check_image, decode_image
from cmxl_keras.errors import DataError

# What predict suggests for an image it cannot use.
GIVE_IMAGES = "Give PNG, JPEG, GIF or BMP files."


def load_images(paths, size):
    """Decodes image files of any kind and size into a uint8 batch ``[N, size, size, 3]``,
    as the SavedModel's ``serving_bytes`` signature (``tf.io.decode_image(channels=3)``)
    decodes them: grey replicated to RGB, alpha dropped (not composited), palettes
    expanded, CMYK converted, 16-bit samples reduced to their high byte, an animation's
    first frame; the stored pixel grid as it is (no EXIF rotation, which TensorFlow's
    decoders do not apply either). Each of these is tested equal to ``serving_bytes``."""
    return np.stack([decode_image(image_bytes(path), path, size, fix=GIVE_IMAGES)
                     for path in paths])


def image_bytes(path):
    """The encoded bytes of the image file ``path``, or a ``DataError`` naming it."""
    if not os.path.isfile(path):
        raise DataError(f"image {path!r} does not exist. Check the path.")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise DataError(f"image {path!r} cannot be read ({error.strerror or error}). Check "
                        f"its permissions.") from None


def predict_files(paths, model_dir, k=3, fmt="saved_model"):
    """``predict``'s results for image files: the ``k`` likeliest classes of each, by the
    exported SavedModel or a TFLite file (``fmt``: tflite, tflite_fp16, tflite_int8) of
    ``model_dir``."""
    metadata = inference.read_metadata(model_dir)  # the images are checked before the load
    images = load_images(paths, metadata["input"]["shape"][1])
    loaded = inference.load(model_dir, fmt, metadata)
    probabilities = inference.guarded(loaded.path, lambda: loaded(images), doing="run")
    return top_k(probabilities, loaded.class_names, paths, k)


def rest_request(paths, signature="serving_bytes", size=None):
    """The JSON body of a TF-Serving REST ``:predict`` call for image files, sent as
    they are (encoded bytes, base64): ``POST http://HOST:8501/v1/models/NAME:predict``.
    Each file is checked first as ``predict`` checks it (an image, at most
    ``images.MAX_PIXELS`` declared), from its header, without decoding it; ``size``, the
    model's input side where known, is named in the error."""
    import base64

    instances = []
    for path in paths:
        data = image_bytes(path)
        check_image(data, path, size, fix=GIVE_IMAGES)
        instances.append({"image_bytes": {"b64": base64.b64encode(data).decode()}})
    return {"signature_name": signature, "instances": instances}


def results_from_rest(response, class_names, paths, k):
    """``predict --json``'s results from a TF-Serving REST response (row format:
    ``{"predictions": [{"probabilities": [...], "class_id": i}, ...]}``)."""
    try:
        rows = response["predictions"]
        probabilities = np.array([row["probabilities"] for row in rows], np.float32)
    except (KeyError, TypeError) as error:
        got = sorted(response) if isinstance(response, dict) else type(response).__name__
        raise DataError(f"not a TF-Serving predict response in row format "
                        f"({type(error).__name__}: {error}; got {got}). Send the request "
                        f"with \"instances\", as rest_request builds it.") from None
    return top_k(probabilities, class_names, paths, k)


def top_k(probabilities, class_names, paths, k):
    k = max(1, min(k, probabilities.shape[1]))
    results = []
    for path, probs in zip(paths, probabilities):
        order = np.argsort(-probs)[:k]
        results.append({"image": path, "top_k": [
            {"class": class_names[i], "class_id": int(i), "probability": float(probs[i])}
            for i in order]})
    return results
