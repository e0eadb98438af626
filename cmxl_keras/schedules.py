"""The reference one-cycle learning-rate schedule, updated every optimizer step.

The reference sets, before optimizer step ``i`` of epoch ``epoch``::

    lr_schedule = lambda t: np.interp([t], [0, epochs*2//5, epochs*4//5, epochs],
                                      [0, lr_max, lr_max/20.0, 0])[0]
    lr = lr_schedule(epoch + (i + 1) / len(trainloader))

The knots are integer epochs (``//``): at 100 epochs 40 and 80, at 7 epochs 2 and 5
(not 2.8 and 5.6). With few epochs two knots can coincide (``epochs < 5``); ``np.interp``
then takes the later segment, and so does ``OneCycle``.
"""

import keras
import numpy as np
from keras import ops


def knots(epochs, lr_max):
    """The reference's ``(xp, fp)``: integer epoch knots and their learning rates."""
    return ((0, epochs * 2 // 5, epochs * 4 // 5, epochs),
            (0.0, lr_max, lr_max / 20.0, 0.0))


def one_cycle_lr(step, steps_per_epoch, epochs, lr_max):
    """The reference expression itself, for tests and logs: the learning rate of the
    optimizer step ``step = epoch * steps_per_epoch + i`` (0 for the first)."""
    epoch, i = divmod(step, steps_per_epoch)
    return float(np.interp([epoch + (i + 1) / steps_per_epoch], *knots(epochs, lr_max))[0])


@keras.saving.register_keras_serializable(package="cmxl_keras")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """``one_cycle_lr`` as a Keras schedule of the optimizer's step count.

    Keras evaluates a schedule at ``optimizer.iterations`` (steps already taken), so
    the learning rate of step ``s`` is the reference's value at ``(s + 1) /
    steps_per_epoch`` epochs. Because the step count lives in the optimizer (and in its
    checkpoint), a resumed run continues the cycle where it stopped.

    Knots: ``0 -> lr_max`` at ``2E//5`` (warm-up, the peak of the reference one-cycle),
    ``-> lr_max/20`` at ``4E//5`` (anneal), ``-> 0`` at ``E`` (final decay).
    """

    def __init__(self, lr_max, epochs, steps_per_epoch):
        self.lr_max = float(lr_max)
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)

    def __call__(self, step):
        t = (ops.cast(step, "float32") + 1.0) / float(self.steps_per_epoch)
        xp, fp = knots(self.epochs, self.lr_max)
        lr = ops.zeros_like(t)  # past the last knot (t > E): np.interp's last value, 0
        # Each t > 0 (always the case) lies in one segment (x0, x1]; a segment of zero
        # length (coinciding knots) covers none, as in np.interp.
        for x0, x1, y0, y1 in zip(xp, xp[1:], fp, fp[1:]):
            if x1 > x0:
                value = y0 + (y1 - y0) * (t - x0) / (x1 - x0)
                lr = ops.where(ops.logical_and(t > x0, t <= x1), value, lr)
        return lr

    def get_config(self):
        return {"lr_max": self.lr_max, "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch}
