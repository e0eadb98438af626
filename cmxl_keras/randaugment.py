"""torchvision's ``RandAugment(num_ops=2, magnitude=12)``, written once for both pipelines.

The reference runs ``torchvision.transforms.RandAugment`` on the PIL image that
``RandomResizedCrop`` and ``RandomHorizontalFlip`` return. For every image, ``num_ops``
times, it picks one of 14 ops uniformly (Identity among them) and applies it at the fixed
strength of ``magnitude`` of 31 levels, with a random sign where the op is signed.

``OPS`` below is torchvision's op table (``RandAugment._augmentation_space``): the
strength at the top level and whether it is signed. ``strengths`` evaluates it at a level
as torchvision does, and ``apply`` computes the ops on a batch with one op and sign per
image. Both pipeline forms are built from these two functions (``transforms.Stage``): the
keras-cv layer of the tf.data pipeline and the Keras layer that runs on the device; they
differ only in where the random draws come from.

Why the ops are written here rather than taken from keras-cv or Keras: keras-cv's
``RandAugment`` is another policy (no rotate, posterize or sharpness; additive
brightness; strengths drawn from a range, never a fixed value with a random sign) and
its geometric layers fill by reflection and interpolate bilinearly; Keras core's
``RandAugment`` picks its ops once per batch. torchvision's ops act on 8-bit PIL images,
with PIL's integer arithmetic (blends truncate, the grayscale of ``Color`` and
``Contrast`` is PIL's rounded luma, ``Sharpness`` keeps the border pixels), so the
functions below keep pixels integral and reproduce that arithmetic (``pil.py``); the
tests compare each op with torchvision's own on real CIFAR images.

Every function takes the op namespace ``ops`` (``keras.ops`` on the device, the
TensorFlow ops of keras-cv's tf.data scope in the input pipeline) and float32 images in
[0, 255].
"""

import math

from cmxl_keras import pil

LEVELS = 31  # torchvision's num_magnitude_bins: levels 0..30

# torchvision RandAugment._augmentation_space, in its order: name -> (strength at level
# 30, signed). Translations are a fraction of the image side; Posterize's value is the
# number of bits removed at level 30; Solarize's is how far the threshold falls from 255.
OPS = (
    ("Identity", 0.0, False),
    ("ShearX", 0.3, True),
    ("ShearY", 0.3, True),
    ("TranslateX", 150.0 / 331.0, True),
    ("TranslateY", 150.0 / 331.0, True),
    ("Rotate", 30.0, True),
    ("Brightness", 0.9, True),
    ("Color", 0.9, True),
    ("Contrast", 0.9, True),
    ("Sharpness", 0.9, True),
    ("Posterize", 4.0, False),
    ("Solarize", 255.0, False),
    ("AutoContrast", 0.0, False),
    ("Equalize", 0.0, False),
)
NAMES = tuple(name for name, _, _ in OPS)
NUM_OPS = len(OPS)
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def strengths(level, image_size):
    """``{name: (strength, signed)}`` at ``level`` (0..30) for square images of
    ``image_size`` pixels, as torchvision evaluates its table: ``linspace(0, max, 31)``
    at the level; TranslateX/Y in whole pixels (torchvision truncates with ``int``);
    Posterize as the bits kept, ``8 - round(4 * level / 30)``; Solarize as the
    threshold, ``255 * (1 - level / 30)``."""
    if not 0 <= level < LEVELS:
        raise ValueError(f"RandAugment magnitude {level!r} is outside 0..{LEVELS - 1}.")
    fraction = level / (LEVELS - 1)
    table = {}
    for name, top, signed in OPS:
        value = top * fraction
        if name.startswith("Translate"):
            value = float(int(value * image_size))
        elif name == "Posterize":
            value = 8.0 - round(top * fraction)
        elif name == "Solarize":
            value = 255.0 - value
        table[name] = (value, signed)
    return table


def _pil_to_sampling(a, b, c, d, e, f):
    """A PIL affine matrix (output pixel centre ``(x + .5, y + .5)`` -> input position,
    sampled by flooring) as the 8-parameter transform of ``ops.image.affine_transform``
    (output pixel index -> input position, sampled by rounding)."""
    return [a, b, c + 0.5 * a + 0.5 * b - 0.5, d, e, f + 0.5 * d + 0.5 * e - 0.5]


def _affine_params(ops, name, m, size):
    """Per-image PIL matrices of one geometric op with signed strengths ``m`` [B]: the
    inverse matrices torchvision builds (``F.affine`` about the corner for shears, about
    the centre otherwise; ``F.rotate`` through PIL's ``Image.rotate``)."""
    one, zero = ops.ones_like(m), ops.zeros_like(m)
    if name == "ShearX":  # x_in = x + m * y
        return _pil_to_sampling(one, m, zero, zero, one, zero)
    if name == "ShearY":  # y_in = m * x + y
        return _pil_to_sampling(one, zero, zero, m, one, zero)
    if name == "TranslateX":  # the image moves m pixels right
        return _pil_to_sampling(one, zero, -m, zero, one, zero)
    if name == "TranslateY":
        return _pil_to_sampling(one, zero, zero, zero, one, -m)
    # Rotate: PIL turns counter-clockwise by m degrees about (w/2, h/2).
    theta = m * (math.pi / 180.0)
    cos, sin = ops.cos(theta), ops.sin(theta)
    centre = size / 2.0
    return _pil_to_sampling(cos, -sin, centre - centre * cos + centre * sin,
                            sin, cos, centre - centre * sin - centre * cos)


def _smooth(ops, images):
    """PIL's ``ImageFilter.SMOOTH`` (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, divided by 13,
    rounded) on the interior; the one-pixel border keeps its pixels, as PIL's filter."""
    kernel = ops.convert_to_tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]],
                                   "float32") / 13.0
    kernel = ops.tile(ops.reshape(kernel, (3, 3, 1, 1)), (1, 1, 3, 1))
    smoothed = ops.floor(ops.depthwise_conv(images, kernel, strides=1, padding="same") + 0.5)
    shape = ops.shape(images)
    rows = ops.arange(shape[1])
    cols = ops.arange(shape[2])
    inner_rows = ops.logical_and(rows > 0, rows < shape[1] - 1)
    inner_cols = ops.logical_and(cols > 0, cols < shape[2] - 1)
    inner = ops.logical_and(inner_rows[:, None], inner_cols[None, :])[None, :, :, None]
    return ops.where(inner, smoothed, images)


def _autocontrast(ops, images):
    """PIL's ``ImageOps.autocontrast``: each channel's [lo, hi] stretched to [0, 255]
    and truncated; a flat channel is kept."""
    lo = ops.min(images, axis=(1, 2), keepdims=True)
    hi = ops.max(images, axis=(1, 2), keepdims=True)
    spread = hi - lo
    scale = 255.0 / ops.maximum(spread, 1.0)
    # PIL truncates int(x * scale + offset); the small epsilon keeps values that are
    # whole numbers in exact arithmetic from falling one short in float32.
    stretched = ops.floor(ops.clip((images - lo) * scale + 1e-3, 0.0, 255.0))
    return ops.where(spread > 0, stretched, images)


def _equalize(ops, images):
    """PIL's ``ImageOps.equalize`` per channel: ``lut[i] = (step // 2 + #(pixels < i))
    // step`` with ``step = (pixels - #(brightest value)) // 255``; a channel with one
    value (step 0) is kept."""
    shape = ops.shape(images)
    batch = shape[0]
    pixels = shape[1] * shape[2]
    values = ops.cast(ops.clip(images, 0.0, 255.0), "int32")  # integral already
    values = ops.reshape(ops.transpose(values, (0, 3, 1, 2)), (batch * 3, pixels))
    rows = ops.arange(batch * 3, dtype="int32")[:, None]
    bins = ops.reshape(rows * 256 + values, (-1,))
    # A histogram per image and channel: segment sums, which compile on every backend
    # (a bincount's output size depends on the data, which JAX cannot trace).
    hist = ops.reshape(ops.segment_sum(ops.ones_like(bins, "float32"), bins,
                                       num_segments=batch * 3 * 256), (batch * 3, 256))
    brightest = ops.max(values, axis=1, keepdims=True)
    top_count = ops.take_along_axis(hist, brightest, axis=1)
    step = ops.floor((ops.cast(pixels, "float32") - top_count) / 255.0)
    below = ops.cumsum(hist, axis=1) - hist  # pixels strictly darker than each value
    lut = ops.floor((ops.floor(step / 2.0) + below) / ops.maximum(step, 1.0))
    lut = ops.clip(lut, 0.0, 255.0)
    out = ops.take_along_axis(lut, values, axis=1)
    out = ops.where(step > 0, out, ops.cast(values, "float32"))
    out = ops.reshape(out, (batch, 3, shape[1], shape[2]))
    return ops.transpose(out, (0, 2, 3, 1))


def apply(ops, images, op_index, sign, level, image_size):
    """One RandAugment round: image ``i`` gets op ``NAMES[op_index[i]]`` at ``level``,
    negated where ``sign[i] < 0`` and the op is signed.

    Args:
        ops: the op namespace (``keras.ops`` or keras-cv's tf.data ops).
        images: float32 [B, H, W, 3], whole numbers in [0, 255].
        op_index: int32 [B] in 0..13.
        sign: float32 [B] of +1 / -1.
        level: torchvision magnitude (0..30).
        image_size: H (= W).

    Returns:
        The float32 batch, whole numbers in [0, 255].
    """
    table = strengths(level, image_size)
    size = float(image_size)

    def signed(name):
        value, is_signed = table[name]
        return value * sign if is_signed else value * ops.ones_like(sign)

    def chosen(name):
        return ops.equal(op_index, NAMES.index(name))

    # Geometric ops: one nearest-neighbour resampling per image, with the identity
    # matrix for the images whose op is not geometric; the outside is filled with 0.
    params = [ops.ones_like(sign) * p for p in _pil_to_sampling(1.0, 0.0, 0.0, 0.0, 1.0, 0.0)]
    for name in GEOMETRIC:
        op_params = _affine_params(ops, name, signed(name), size)
        params = [ops.where(chosen(name), p_op, p) for p_op, p in zip(op_params, params)]
    zeros = ops.zeros_like(sign)
    transform = ops.stack(params + [zeros, zeros], axis=1)
    x = ops.image.affine_transform(images, transform, interpolation="nearest",
                                   fill_mode="constant", fill_value=0.0)

    factor = lambda name: (1.0 + signed(name))[:, None, None, None]  # noqa: E731
    bits = table["Posterize"][0]
    step = float(2 ** (8 - int(bits)))
    threshold = table["Solarize"][0]
    results = {
        "Brightness": lambda: pil.brightness(ops, images, factor("Brightness")),
        "Color": lambda: pil.saturation(ops, images, factor("Color")),
        "Contrast": lambda: pil.contrast(ops, images, factor("Contrast")),
        "Sharpness": lambda: pil.blend(ops, _smooth(ops, images), images, factor("Sharpness")),
        "Posterize": lambda: ops.floor(images / step) * step,
        "Solarize": lambda: ops.where(images < threshold, images, 255.0 - images),
        "AutoContrast": lambda: _autocontrast(ops, images),
        "Equalize": lambda: _equalize(ops, images),
    }
    for name, compute in results.items():
        x = ops.where(chosen(name)[:, None, None, None], compute(), x)
    return x


def run(ops, images, op_u, sign_u, level, image_size):
    """All rounds of RandAugment on a batch, from uniform draws ``op_u``, ``sign_u``
    [num_ops, B] in [0, 1) (torchvision's ``randint(14)`` for the op and ``randint(2)``
    for the sign, per image and round). Pixels are rounded to whole numbers first: the
    reference's PIL image is 8-bit."""
    x = pil.to_8bit(ops, images)
    for i in range(op_u.shape[0]):
        op_index, sign = choices(ops, op_u[i], sign_u[i])
        x = apply(ops, x, op_index, sign, level, image_size)
    return x


def choices(ops, op_u, sign_u):
    """Uniform draws in [0, 1) -> (op index in 0..13, sign +-1): each op and sign equally
    likely, as torchvision's ``randint(14)`` and ``randint(2)``."""
    op_index = ops.minimum(ops.cast(ops.floor(op_u * NUM_OPS), "int32"), NUM_OPS - 1)
    return op_index, ops.where(sign_u < 0.5, -1.0, 1.0)
