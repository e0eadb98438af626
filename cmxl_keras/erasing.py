"""torchvision's ``RandomErasing(p, scale, ratio, value=0)`` on a batch, written once for
both pipeline forms (``ops``: ``keras.ops``, or keras-cv's TensorFlow namespace inside
tf.data), from uniform draws in [0, 1) per image.

torchvision erases with probability ``p``; then it tries up to 10 boxes, each of area
``U(scale) * H * W`` and aspect ratio ``exp(U(log ratio))``, sides rounded to whole
pixels (``round(sqrt(area * ratio))`` high, ``round(sqrt(area / ratio))`` wide), and
takes the first that fits inside the image strictly (``h < H`` and ``w < W``) at
``randint(0, H - h + 1)``, ``randint(0, W - w + 1)``; if none fits, the image is kept.
Here the 10 tries are drawn at once and the first that fits is picked. The reference
erases after Normalize with value 0, which is the dataset's mean colour in raw pixels:
the ``fill`` here. Written here because keras-cv's ``RandomCutout`` and Keras'
``RandomErasing`` draw height and width fractions independently and have no aspect ratio
on a log scale, no area range and no tries.
"""

import math

AREA = (0.02, 0.33)
ASPECT = (0.3, 3.3)
TRIES = 10  # torchvision tries 10 boxes before it gives up and returns the image


def draw_shapes(batch):
    """The uniform draws of one batch: whether to erase, the tries' areas and aspect
    ratios, and the place, per image."""
    return {"apply": (batch,), "area": (batch, TRIES), "ratio": (batch, TRIES),
            "top": (batch,), "left": (batch,)}


def boxes(ops, draws, prob, height, width, area=AREA, aspect=ASPECT):
    """The erased box of each image, (top, left, h, w) float32 [B] each in whole pixels,
    h and w 0 where nothing is erased (not drawn, or no try fits)."""
    target = (area[0] + draws["area"] * (area[1] - area[0])) * float(height * width)
    low, high = math.log(aspect[0]), math.log(aspect[1])
    ratio = ops.exp(low + draws["ratio"] * (high - low))
    box_h = ops.round(ops.sqrt(target * ratio))  # Python's round: to even, as here
    box_w = ops.round(ops.sqrt(target / ratio))
    fits = ops.logical_and(box_h < float(height), box_w < float(width))
    first = ops.argmax(ops.cast(fits, "int32"), axis=1)[:, None]  # the first that fits
    box_h = ops.take_along_axis(box_h, first, axis=1)[:, 0]
    box_w = ops.take_along_axis(box_w, first, axis=1)[:, 0]
    erase = ops.logical_and(draws["apply"] < prob, ops.any(fits, axis=1))
    top = ops.floor(draws["top"] * (float(height) - box_h + 1.0))
    left = ops.floor(draws["left"] * (float(width) - box_w + 1.0))
    keep = ops.cast(erase, "float32")
    return top, left, box_h * keep, box_w * keep


def run(ops, images, draws, prob, fill, area=AREA, aspect=ASPECT):
    """RandomErasing of every image of ``images`` (float [B, H, W, C], H and W static):
    the box of ``boxes`` filled with ``fill`` (C values)."""
    height, width = images.shape[1], images.shape[2]
    top, left, box_h, box_w = boxes(ops, draws, prob, height, width, area, aspect)
    rows = ops.cast(ops.arange(height), "float32")[None, :]
    cols = ops.cast(ops.arange(width), "float32")[None, :]
    in_rows = ops.logical_and(rows >= top[:, None], rows < (top + box_h)[:, None])
    in_cols = ops.logical_and(cols >= left[:, None], cols < (left + box_w)[:, None])
    inside = ops.logical_and(in_rows[:, :, None], in_cols[:, None, :])[..., None]
    return ops.where(inside, ops.convert_to_tensor(fill, "float32"), images)
