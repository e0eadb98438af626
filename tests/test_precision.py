"""A model saved under mixed precision (a GPU run's) is run in float32 on a CPU by
``inference.load`` (and so by evaluate, predict and the benches), within the
mixed-precision tolerance of the policy it was saved with; ``precision="saved"`` keeps
that policy."""

import json
import os

import numpy as np
import pytest

from conftest import random_images, run_cli


@pytest.fixture(scope="module")
def mixed_model(tmp_path_factory):
    """A small ConvMixer built and saved under mixed_float16, as a GPU run saves it, with
    BatchNorm statistics and weights moved off their initial values so the outputs are
    not trivially equal."""
    import keras

    from cmxl_keras import models

    path = str(tmp_path_factory.mktemp("mixed") / "mixed.keras")
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = models.build_convmixer(width=32, depth=3, patch_size=4, kernel_size=3)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(0)
    model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) if "variance" not in
                       v.path else np.abs(w) + 0.5 for w, v in zip(model.get_weights(),
                                                                  model.weights)])
    model.save(path)
    return path


def test_a_mixed_precision_model_runs_in_float32_on_a_cpu(mixed_model):
    from cmxl_keras import inference

    auto = inference.load(mixed_model)
    saved = inference.load(mixed_model, precision="saved")
    assert (auto.saved_precision, auto.precision) == ("mixed_float16", "float32")
    assert (saved.saved_precision, saved.precision) == ("mixed_float16", "mixed_float16")
    assert {layer.dtype_policy.name for layer in auto.model.layers} == {"float32"}
    assert "mixed_float16" in {layer.dtype_policy.name for layer in saved.model.layers}
    images = random_images(64, seed=3)
    got, expected = auto(images), saved(images)
    difference = np.abs(got - expected).max()
    # float16's rounding, not another function: within the tolerance, but not identical.
    assert 0 < difference < 5e-3, difference
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.95
    forced = inference.load(mixed_model, precision="float32")
    assert np.array_equal(forced(images), got)


def test_a_float32_model_is_run_as_it_is(tmp_path):
    from cmxl_keras import inference, models

    path = str(tmp_path / "plain.keras")
    models.build_convmixer(width=8, depth=1, patch_size=4, kernel_size=3).save(path)
    loaded = inference.load(path)
    assert (loaded.saved_precision, loaded.precision) == ("float32", "float32")


def test_an_unknown_precision_is_named():
    from cmxl_keras import inference
    from cmxl_keras.errors import RunError

    with pytest.raises(RunError, match="precision 'half' is not one of auto, saved, float32"):
        inference.load("anything.keras", precision="half")


@pytest.mark.slow
def test_evaluate_says_in_which_precision_it_ran(mixed_model, cifar_dir, tmp_path):
    import shutil

    from cmxl_keras import settings

    run = tmp_path / "run"  # the model in a run folder, with a config naming its data
    run.mkdir()
    shutil.copy(mixed_model, run / "model.keras")
    cfg = settings.load("smoke").replace(width=32, depth=3, patch_size=4, kernel_size=3,
                                         skip_period=0, activation="gelu",
                                         data_dir=cifar_dir, val_from_train=256)
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    outputs = {}
    for precision in ("auto", "saved"):
        out = tmp_path / precision
        result = run_cli("evaluate", run / "model.keras", "--out", out, "--precision",
                         precision)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[precision] = json.load(open(os.path.join(out, "eval_val.json")))
        assert ("runs in float32 here" in result.stderr) == (precision == "auto")
    assert outputs["auto"]["precision"] == "float32"
    assert outputs["saved"]["precision"] == "mixed_float16"
    assert abs(outputs["auto"]["loss"] - outputs["saved"]["loss"]) < 1e-3
