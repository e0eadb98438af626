"""The served SavedModel: uint8 images (``serving_default``), float pixels
(``serving_float``, where the int8 conversion starts) and encoded image bytes
(``serving_bytes``), with TF-Serving's warmup requests."""

import os

import numpy as np

from cmxl_keras.images import MAX_PIXELS


def _serving_fn(model):
    import tensorflow as tf

    def serve(images):
        logits = model(tf.cast(images, tf.float32), training=False)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        return {"probabilities": probabilities,
                "class_id": tf.argmax(probabilities, axis=-1, output_type=tf.int32)}

    return serve


def declared_size(data):
    """(height, width) that the encoded image ``data`` (a scalar string tensor) declares in
    its header, read without decoding it: JPEG by TensorFlow's own header reader, PNG,
    GIF and BMP from their fixed header fields; (-1, -1) for any other content.

    Why by hand: TensorFlow reads only a JPEG's size without decoding it
    (``extract_jpeg_shape``); ``decode_image`` allocates whatever size a file declares."""
    import tensorflow as tf

    # The first 32 bytes, zero-padded: a short file reads as zeros, never out of range.
    head = tf.io.decode_raw(tf.strings.substr(
        tf.strings.join([tf.strings.substr(data, 0, 32), b"\0" * 32]), 0, 32), tf.uint8)
    head = tf.cast(head, tf.int64)

    def number(offset, size, big_endian):
        digits = [head[offset + i] for i in range(size)]
        value = tf.constant(0, tf.int64)
        for digit in digits if big_endian else digits[::-1]:
            value = value * 256 + digit
        return value

    def signed32(value):  # BMP stores a top-down image's height as a negative number
        return tf.abs(tf.where(value >= 2 ** 31, value - 2 ** 32, value))

    def starts(prefix):
        return tf.strings.substr(data, 0, len(prefix)) == prefix

    unknown = lambda: tf.constant([-1, -1], tf.int64)  # noqa: E731
    return tf.case([
        (tf.io.is_jpeg(data),
         lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)),
        (starts(b"\x89PNG\r\n\x1a\n"), lambda: tf.stack([number(20, 4, True),
                                                          number(16, 4, True)])),
        (starts(b"GIF8"), lambda: tf.stack([number(8, 2, False), number(6, 2, False)])),
        (starts(b"BM"), lambda: tf.stack([signed32(number(22, 4, False)),
                                          signed32(number(18, 4, False))])),
    ], default=unknown, exclusive=False)


def _bytes_serving_fn(serve, height, width, max_pixels):
    """``serving_bytes``: encoded images (JPEG, PNG, GIF, BMP; up to ``max_pixels``) ->
    ``serve``. Each image's declared size is checked from its header first: a larger
    one (a decompression bomb among them) or another format fails the request with
    the reason (TF-Serving answers 400 with it), before anything is decoded.
    ``max_pixels=None`` leaves the check out (for the bench's before-and-after only)."""
    import tensorflow as tf

    def checked(data):
        if max_pixels is None:
            return data
        size = declared_size(data)
        pixels = size[0] * size[1]
        known = tf.debugging.Assert(size[0] >= 0, [
            "serving_bytes takes JPEG, PNG, GIF or BMP images; this one is none of them "
            "(its first bytes follow)", tf.strings.substr(data, 0, 8)])
        small = tf.debugging.Assert(pixels <= max_pixels, [
            f"the image declares more than {max_pixels} pixels (height and width follow), "
            f"the most this model decodes: a decompression bomb, or an image to downscale "
            f"before sending", size])
        with tf.control_dependencies([known, small]):
            return tf.identity(data)

    def decode(data):
        data = checked(data)
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


def write_saved_model(model, path, serving=True, max_pixels=MAX_PIXELS):
    """A SavedModel whose ``serving_default`` takes uint8 images of any batch size.

    ``serving_float`` takes float32 pixels in [0, 255]; the int8 TFLite conversion
    starts from it so the converter can make its input uint8 itself. With ``serving``
    (the served copy), ``serving_bytes`` takes encoded images (``image_bytes``: a batch
    of JPEG/PNG strings, what TF-Serving clients send, base64 over REST) that declare at
    most ``max_pixels`` each, and
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
            name="serving_bytes", fn=_bytes_serving_fn(serve, height, width, max_pixels),
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
