"""torchvision's ``RandomResizedCrop(size, scale, ratio=(1, 1))`` on a batch of square
images, written once for both pipeline forms (``ops``: ``keras.ops``, or keras-cv's
TensorFlow namespace inside tf.data), from uniform draws in [0, 1) per image.

torchvision draws the crop in whole pixels: side ``round(sqrt(U(scale) * H * W))``, top
and left ``randint(0, H - side + 1)``; then PIL crops that box and resizes it bilinearly
to the full size. PIL's bilinear filter, when it enlarges, samples the crop at
``top + (y + 0.5) * side / H - 0.5``, and at the crop's edges uses only the crop's own
pixels: the same as clamping that coordinate to the crop. Here the two resampling passes
are weight matrices (two non-zero weights a row) applied with ``einsum``, so the pixels
equal torchvision's to within PIL's 8-bit rounding, and the crop's size and place are
drawn as torchvision draws them.
"""


def boxes(ops, area_u, top_u, left_u, scale, size):
    """The crop (side, top, left) in whole pixels, float32 [B] each, from the draws."""
    area = (scale[0] + area_u * (scale[1] - scale[0])) * float(size * size)
    side = ops.clip(ops.round(ops.sqrt(area)), 1.0, float(size))  # Python's round: to even
    top = ops.floor(top_u * (float(size) - side + 1.0))
    left = ops.floor(left_u * (float(size) - side + 1.0))
    return side, top, left


def _weights(ops, start, side, size):
    """[B, size (out), size (in)]: the bilinear weights of PIL's resize of the crop
    ``[start, start + side)`` to ``size`` pixels along one axis."""
    start, side = start[:, None], side[:, None]
    out = ops.cast(ops.arange(size), "float32")[None, :]
    last = start + side - 1.0
    src = ops.clip(start + (out + 0.5) * side / float(size) - 0.5, start, last)
    low = ops.floor(src)
    frac = (src - low)[..., None]
    high = ops.minimum(low + 1.0, last)
    return (ops.one_hot(ops.cast(low, "int32"), size) * (1.0 - frac)
            + ops.one_hot(ops.cast(high, "int32"), size) * frac)


def run(ops, images, area_u, top_u, left_u, scale):
    """The crop of every image of ``images`` (float [B, S, S, C], S static), resized back
    to S x S."""
    size = images.shape[1]
    side, top, left = boxes(ops, area_u, top_u, left_u, scale, size)
    x = ops.einsum("byh,bhwc->bywc", _weights(ops, top, side, size), images)
    return ops.einsum("bxw,bywc->byxc", _weights(ops, left, side, size), x)
