"""The reference one-cycle learning-rate schedule, updated every optimizer step."""

import keras
from keras import ops


def one_cycle_lr(step, steps_per_epoch, epochs, lr_max):
    """The reference formula in plain Python, for tests and logs.

    ``np.interp(epoch + (i + 1) / steps_per_epoch, [0, 2E/5, 4E/5, E],
    [0, lr_max, lr_max / 20, 0])`` where ``step = epoch * steps_per_epoch + i`` counts
    the optimizer steps already taken (0 for the first).
    """
    t = (step + 1) / steps_per_epoch
    knots = (0.0, 2 * epochs / 5, 4 * epochs / 5, float(epochs))
    values = (0.0, lr_max, lr_max / 20, 0.0)
    if t <= knots[0]:
        return values[0]
    for (x0, x1), (y0, y1) in zip(zip(knots, knots[1:]), zip(values, values[1:])):
        if t <= x1:
            return y0 + (y1 - y0) * (t - x0) / (x1 - x0)
    return values[-1]


@keras.saving.register_keras_serializable(package="cmxl_keras")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise-linear one-cycle over epochs, evaluated at fractional epochs.

    Keras evaluates a schedule at ``optimizer.iterations`` (steps already taken), so the
    learning rate of step ``i`` is the reference's value at ``(i + 1) / steps_per_epoch``.
    Because the step count lives in the optimizer, a resumed run continues the cycle
    where it stopped.

    Knots: ``0 -> lr_max`` at ``2E/5`` (warm-up, the peak of the reference one-cycle),
    ``-> lr_max/20`` at ``4E/5`` (anneal), ``-> 0`` at ``E`` (final decay).
    """

    def __init__(self, lr_max, epochs, steps_per_epoch):
        self.lr_max = float(lr_max)
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)

    def __call__(self, step):
        t = (ops.cast(step, "float32") + 1.0) / float(self.steps_per_epoch)
        e = float(self.epochs)
        peak, anneal = 2.0 * e / 5.0, 4.0 * e / 5.0
        lr_end_anneal = self.lr_max / 20.0
        warmup = self.lr_max * t / peak
        middle = self.lr_max + (lr_end_anneal - self.lr_max) * (t - peak) / (anneal - peak)
        decay = lr_end_anneal * (e - t) / (e - anneal)
        lr = ops.where(t <= peak, warmup, ops.where(t <= anneal, middle, decay))
        return ops.clip(lr, 0.0, self.lr_max)

    def get_config(self):
        return {"lr_max": self.lr_max, "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch}
