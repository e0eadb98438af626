"""torchvision's ``ColorJitter(brightness, contrast, saturation)`` on a batch of 8-bit
images, written once for both pipeline forms (``ops``: ``keras.ops``, or keras-cv's
TensorFlow namespace inside tf.data), from uniform draws in [0, 1) per image.

The reference jitters the PIL image that RandAugment returns. torchvision draws, per
image, each factor uniform in ``[1 - s, 1 + s]`` and an order of the adjustments (a
random permutation), then applies them in that order with ``PIL.ImageEnhance``: each a
blend truncated to 8 bits (``pil.py``). Written here because keras-cv's and Keras'
colour layers have other semantics (additive brightness, per-channel contrast,
saturation in HSV) and draw no order.
"""

import itertools

from cmxl_keras import pil

ADJUSTMENTS = ("brightness", "contrast", "saturation")  # torchvision's fn_idx 0, 1, 2
ORDERS = tuple(itertools.permutations(range(len(ADJUSTMENTS))))  # the 6 orders


def draw_shapes(batch):
    """The uniform draws of one batch: a factor per adjustment, an order, per image."""
    return {"factor": (len(ADJUSTMENTS), batch), "order": (batch,)}


def factors(ops, factor_u, strengths):
    """[3, B] factors uniform in ``[1 - s, 1 + s]`` from the draws (1 where s is 0)."""
    return ops.stack([1.0 - s + 2.0 * s * factor_u[k] for k, s in enumerate(strengths)])


def orders(ops, order_u):
    """The order of each image, an index into ``ORDERS`` (each 1/6 of the time)."""
    return ops.minimum(ops.cast(ops.floor(order_u * len(ORDERS)), "int32"), len(ORDERS) - 1)


def run(ops, images, factor_u, order_u, strengths):
    """ColorJitter of every image of ``images`` (float [B, H, W, 3] in [0, 255]), rounded
    to 8 bits first as the reference's PIL image is; whole numbers come out."""
    x = pil.to_8bit(ops, images)
    if not any(strengths):
        return x
    f = factors(ops, factor_u, strengths)[:, :, None, None, None]  # 3 x B x 1 x 1 x 1
    order = ops.take(ops.convert_to_tensor(ORDERS, "int32"), orders(ops, order_u), axis=0)
    adjust = (pil.brightness, pil.contrast, pil.saturation)
    for step in range(len(ADJUSTMENTS)):
        # Every adjustment of every image, then each image's own: 3x the arithmetic of
        # one, which is small beside the model and keeps the batch vectorized.
        candidates = ops.stack([fn(ops, x, f[k]) for k, fn in enumerate(adjust)])
        x = ops.einsum("kbhwc,bk->bhwc", candidates, ops.one_hot(order[:, step], 3))
    return x
