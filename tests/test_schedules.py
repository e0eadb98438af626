"""The one-cycle schedule against the reference formula, at its knots and at random steps."""

import numpy as np
import pytest

from cmxl_keras.schedules import OneCycle, one_cycle_lr


def reference(step, steps_per_epoch, epochs, lr_max):
    """The reference code's expression, verbatim."""
    epoch, i = divmod(step, steps_per_epoch)
    return np.interp([epoch + (i + 1) / steps_per_epoch],
                     [0, 2 * epochs / 5, 4 * epochs / 5, epochs], [0, lr_max, lr_max / 20.0, 0])[0]


@pytest.mark.parametrize("epochs,spe,lr_max", [(100, 391, 0.005), (10, 7, 0.01), (3, 5, 1.0)])
def test_knots(epochs, spe, lr_max):
    schedule = OneCycle(lr_max, epochs, spe)
    for t, want in ((2 * epochs / 5, lr_max), (4 * epochs / 5, lr_max / 20), (epochs, 0.0)):
        step = round(t * spe) - 1  # the step whose fractional epoch is exactly t
        if abs((step + 1) / spe - t) > 1e-12:
            continue  # knot not on a step boundary for this spe
        assert float(schedule(step)) == pytest.approx(want, rel=1e-5, abs=1e-9)
        assert one_cycle_lr(step, spe, epochs, lr_max) == pytest.approx(want, abs=1e-12)
    assert float(schedule(0)) == pytest.approx(lr_max / (spe * 2 * epochs / 5), rel=1e-5)


def test_many_random_points_match_the_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        epochs, spe = int(rng.integers(1, 120)), int(rng.integers(1, 500))
        lr_max = float(rng.uniform(1e-4, 0.1))
        schedule = OneCycle(lr_max, epochs, spe)
        steps = rng.integers(0, epochs * spe, 50)
        got = np.array([float(schedule(int(s))) for s in steps])
        want = np.array([reference(int(s), spe, epochs, lr_max) for s in steps])
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-9)
        np.testing.assert_allclose([one_cycle_lr(int(s), spe, epochs, lr_max) for s in steps],
                                   want, rtol=1e-12, atol=1e-15)


def test_schedule_serializes():
    schedule = OneCycle(0.005, 100, 391)
    clone = OneCycle.from_config(schedule.get_config())
    assert float(clone(1234)) == float(schedule(1234))
