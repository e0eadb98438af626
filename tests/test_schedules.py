"""The one-cycle schedule against the reference's own expression (integer knots)."""

import numpy as np
import pytest

from cmxl_keras.schedules import OneCycle, one_cycle_lr


def reference(step, steps_per_epoch, epochs, lr_max):
    """The reference code's lr_schedule, verbatim, at the step's fractional epoch."""
    lr_schedule = lambda t: np.interp([t], [0, epochs * 2 // 5, epochs * 4 // 5, epochs],  # noqa: E731
                                      [0, lr_max, lr_max / 20.0, 0])[0]
    epoch, i = divmod(step, steps_per_epoch)
    return lr_schedule(epoch + (i + 1) / steps_per_epoch)


@pytest.mark.parametrize("epochs,spe,lr_max", [(100, 391, 0.005), (7, 391, 0.005),
                                               (10, 7, 0.01), (3, 5, 1.0), (2, 4, 1.0),
                                               (1, 6, 1.0)])
def test_every_step_matches_the_reference(epochs, spe, lr_max):
    schedule = OneCycle(lr_max, epochs, spe)
    steps = np.arange(epochs * spe + spe)  # one epoch past the end: lr 0
    if len(steps) > 5000:
        steps = np.unique(np.concatenate([steps[:spe * 2], np.linspace(0, steps[-1], 3000)
                                          .astype(int)]))
    want = np.array([reference(int(s), spe, epochs, lr_max) for s in steps])
    got = np.asarray(schedule(steps))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7 * lr_max)
    np.testing.assert_array_equal([one_cycle_lr(int(s), spe, epochs, lr_max) for s in steps],
                                  want)


@pytest.mark.parametrize("epochs,peak,anneal", [(100, 40, 80), (7, 2, 5), (12, 4, 9)])
def test_knots_are_integer_epochs(epochs, peak, anneal):
    spe = 10
    schedule = OneCycle(1.0, epochs, spe)
    # The step that ends epoch `peak` runs at lr_max, the one ending `anneal` at lr_max/20.
    assert float(schedule(peak * spe - 1)) == pytest.approx(1.0, rel=1e-6)
    assert float(schedule(anneal * spe - 1)) == pytest.approx(1 / 20, rel=1e-5)
    assert float(schedule(epochs * spe - 1)) == 0.0
    # The 2E/5 float knot would put the peak elsewhere whenever 2E/5 is not whole.
    if 2 * epochs % 5:
        assert float(schedule(round(2 * epochs / 5 * spe) - 1)) < 1.0 - 1e-3


def test_schedule_serializes():
    schedule = OneCycle(0.005, 100, 391)
    clone = OneCycle.from_config(schedule.get_config())
    assert float(clone(1234)) == float(schedule(1234))
