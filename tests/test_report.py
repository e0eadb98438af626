"""Curves of many runs (Figures 3 and 4); the ablation runner is tested in test_ablation.py."""

import numpy as np
import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


def _not_blank(path):
    from PIL import Image

    with Image.open(path) as image:
        assert image.size[0] >= 400 and image.size[1] >= 300
        assert np.asarray(image.convert("L")).std() > 5


def test_report_draws_curves_of_several_runs(trained_run, tmp_path):
    result = run_cli("report", trained_run, trained_run, "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("val_accuracy.png", "val_accuracy_zoom.png"):
        _not_blank(tmp_path / name)
