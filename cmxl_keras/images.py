"""Image files decoded as TensorFlow's decoders decode them: any mode (grey, palette,
RGBA, CMYK, 16-bit) to uint8 RGB, resized to the model's side. Training images from a
folder and the images handed to ``predict`` are read the same way."""

import io

import numpy as np

from cmxl_keras.errors import DataError


def rgb8(image):
    """A PIL image of any mode as uint8 RGB ``[H, W, 3]``, as TensorFlow's decoders give it
    (``tf.io.decode_image(channels=3)``). PIL's ``convert("RGB")`` is that conversion for
    every mode but 16-bit grey, which it clips at 255 where TensorFlow's PNG decoder keeps
    the high byte of each sample."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        grey = (np.asarray(image).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"), np.uint8)


def image_pixels(image, size):
    """``rgb8(image)`` resized to ``size`` x ``size`` (bilinear): how training images from
    a folder and the images handed to ``predict`` are both read."""
    from PIL import Image

    pixels = rgb8(image)
    if pixels.shape[:2] != (size, size):
        pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR),
                            np.uint8)
    return pixels


# What the image-folder reader suggests for an image it cannot decode.
SKIP_CORRUPT = ("Delete or replace it, or pass --set skip_corrupt=true to drop unreadable "
                "images (they are counted).")


def decode_image(data, where, size, fix=SKIP_CORRUPT):
    """The encoded image ``data`` (the file ``where``) as ``image_pixels`` at ``size``; a
    ``DataError`` naming the file, and suggesting ``fix``, where it does not decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # the first frame of an animation
            return image_pixels(image, size)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DataError(
            f"image {where!r} cannot be decoded: it is not a readable image "
            f"({type(error).__name__}: {error}{'; the file is empty' if not data else ''}). "
            f"{fix}") from None
