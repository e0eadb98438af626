"""Image files decoded as TensorFlow's decoders decode them: any mode (grey, palette,
RGBA, CMYK, 16-bit) to uint8 RGB, resized to the model's side. Training images from a
folder and the images handed to ``predict`` are read the same way."""

import io
import warnings

import numpy as np

from cmxl_keras.errors import DataError

# The most pixels (width x height, as the file's header declares them) an image may have
# to be decoded here: 40 megapixels, more than a 7,300 x 5,460 camera photo. A file past
# it is refused from its header, before a pixel is decoded: a 388 KB PNG can declare
# 20,000 x 20,000 pixels, 1.2 GB of RGB once decoded (a decompression bomb), where the
# model looks at 32 x 32. The SavedModel's ``serving_bytes`` signature has the same limit.
MAX_PIXELS = 40_000_000


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


def _open(data, where, size, fix, action):
    """``action(image)`` on the image ``data`` opened by PIL (which reads only its header
    until asked for pixels), its declared size checked against ``MAX_PIXELS`` first."""
    from PIL import Image, UnidentifiedImageError

    sees = f": the model sees {size} x {size} pixels" if size else ""
    refused = (f"it was not decoded, so that memory stays bounded (a small file can declare "
               f"this many pixels: a decompression bomb). Downscale it first{sees}. {fix}")
    try:
        with warnings.catch_warnings():  # PIL warns past 89 megapixels: refused here anyway
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise DataError(
                        f"image {where!r} declares {width:,} x {height:,} pixels "
                        f"({width * height / 1e6:,.1f} megapixels), more than the "
                        f"{MAX_PIXELS / 1e6:g} megapixels an image may have here; {refused}")
                return action(image)
    except Image.DecompressionBombError as error:  # PIL's own refusal, past 179 megapixels
        raise DataError(f"image {where!r} declares more than {MAX_PIXELS / 1e6:g} megapixels "
                        f"({error}); {refused}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DataError(
            f"image {where!r} cannot be decoded: it is not a readable image "
            f"({type(error).__name__}: {error}{'; the file is empty' if not data else ''}). "
            f"{fix}") from None


def decode_image(data, where, size, fix=SKIP_CORRUPT):
    """The encoded image ``data`` (the file ``where``) as ``image_pixels`` at ``size``; a
    ``DataError`` naming the file, and suggesting ``fix``, where it does not decode or
    declares more than ``MAX_PIXELS`` (refused before decoding)."""

    def pixels(image):
        image.load()  # the first frame of an animation
        return image_pixels(image, size)

    return _open(data, where, size, fix, pixels)


def check_image(data, where, size, fix=SKIP_CORRUPT):
    """``decode_image``'s refusals without decoding: ``data`` is an image whose header
    PIL reads, and it declares at most ``MAX_PIXELS``. Returns its (width, height);
    ``size`` (the model's side, or None) is named in the error."""
    return _open(data, where, size, fix, lambda image: image.size)
