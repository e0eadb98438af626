"""PIL's 8-bit arithmetic, in any op namespace (``keras.ops`` on the device, keras-cv's
TensorFlow ops inside tf.data), for the torchvision transforms that act on PIL images
(RandAugment's colour ops, ColorJitter).

torchvision's colour adjustments on PIL images are ``PIL.ImageEnhance``: a blend of the
image with a "degenerate" image (black for brightness, the grey of PIL's luma for
saturation, the rounded mean of that luma for contrast), computed in float32 and truncated
to 8 bits. Float images in [0, 255] go in; whole numbers come out.
"""

LUMA = (19595.0, 38470.0, 7471.0)  # PIL's ITU-R 601-2 weights, in 1/65536


def to_8bit(ops, images):
    """Float pixels rounded to whole numbers in [0, 255]: a PIL image's values."""
    return ops.clip(ops.round(ops.cast(images, "float32")), 0.0, 255.0)


def blend(ops, degenerate, images, factor):
    """PIL's ``Image.blend(degenerate, images, factor)`` on 8-bit pixels: computed in
    float, clipped to [0, 255] and truncated."""
    return ops.floor(ops.clip(degenerate + factor * (images - degenerate), 0.0, 255.0))


def luma(ops, images):
    """PIL's ``convert("L")``: ``(19595 R + 38470 G + 7471 B + 2**15) >> 16`` (exact in
    float32 for 8-bit pixels), [B, H, W, 1]."""
    weights = ops.convert_to_tensor(LUMA, "float32")
    return ops.floor((ops.sum(images * weights, axis=-1, keepdims=True) + 32768.0) / 65536.0)


def mean_luma(ops, gray):
    """What ``ImageEnhance.Contrast`` blends with: ``int(mean(luma) + 0.5)``, [B, 1, 1, 1]."""
    return ops.floor(ops.mean(gray, axis=(1, 2, 3), keepdims=True) + 0.5)


def brightness(ops, images, factor):
    """``ImageEnhance.Brightness(image).enhance(factor)``; ``factor`` [B, 1, 1, 1]."""
    return blend(ops, ops.zeros_like(images), images, factor)


def saturation(ops, images, factor):
    """``ImageEnhance.Color(image).enhance(factor)``."""
    return blend(ops, luma(ops, images), images, factor)


def contrast(ops, images, factor):
    """``ImageEnhance.Contrast(image).enhance(factor)``."""
    return blend(ops, mean_luma(ops, luma(ops, images)), images, factor)
