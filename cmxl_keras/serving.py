"""Serving helpers for ``cli.py predict``: read image files, run an exported model."""

import os

import numpy as np

from cmxl_keras.errors import DataError


def load_images(paths, size):
    """Decodes PNG/JPEG files of any size into a uint8 batch ``[N, size, size, 3]``."""
    from PIL import Image, UnidentifiedImageError

    batch = []
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"image {path!r} does not exist. Check the path.")
        try:
            with Image.open(path) as image:
                image.load()
                if image.mode != "RGB":
                    raise DataError(
                        f"image {path!r} has mode {image.mode} ({len(image.getbands())} "
                        f"channel(s)); the model takes RGB images with 3 channels. Convert it, "
                        f"e.g. with PIL: Image.open(path).convert('RGB').save(new_path).")
                # Same bilinear resize as the image-folder reader uses for training.
                batch.append(np.asarray(image.resize((size, size), Image.BILINEAR), np.uint8))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise DataError(f"{path!r} is not a readable image ({type(error).__name__}: "
                            f"{error}). Give PNG or JPEG files.") from None
    return np.stack(batch)


def predict(model_dir, images, fmt="saved_model"):
    """Probabilities from the exported SavedModel or the fp32 TFLite file."""
    from cmxl_keras import export

    if fmt == "saved_model":
        path = os.path.join(model_dir, "saved_model", "1")
        if not os.path.isdir(path):
            raise DataError(f"{model_dir!r} has no saved_model/1; export it with "
                            f"--formats saved_model, or use --format tflite.")
        return export.saved_model_predict(path, images)
    path = os.path.join(model_dir, export.TFLITE_FILES["tflite"])
    if not os.path.isfile(path):
        raise DataError(f"{model_dir!r} has no {export.TFLITE_FILES['tflite']}; export it with "
                        f"--formats tflite, or use --format saved_model.")
    return export.TFLiteRunner(path)(images)


def rest_request(paths, signature="serving_bytes"):
    """The JSON body of a TF-Serving REST ``:predict`` call for image files, sent as
    they are (encoded bytes, base64): ``POST http://HOST:8501/v1/models/NAME:predict``."""
    import base64

    instances = []
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"image {path!r} does not exist. Check the path.")
        with open(path, "rb") as f:
            instances.append({"image_bytes": {"b64": base64.b64encode(f.read()).decode()}})
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
