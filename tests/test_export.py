"""Export and serving: SavedModel and TFLite from a trained run, parity, predict."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import random_images, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(trained_run, cifar_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("exported"))
    result = run_cli("export", trained_run, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return os.path.join(out, "smoke"), result


def test_export_writes_the_serving_layout_and_metadata(exported):
    folder, result = exported
    for name in ("saved_model/1/saved_model.pb", "model_fp32.tflite", "model_fp16.tflite",
                 "model_int8.tflite", "metadata.json"):
        assert os.path.isfile(os.path.join(folder, name)), name
    assert not [n for n in os.listdir(os.path.dirname(folder)) if n.startswith(".")]
    meta = json.load(open(os.path.join(folder, "metadata.json")))
    assert meta["class_names"][:2] == ["airplane", "automobile"]
    assert meta["input"]["shape"] == [None, 32, 32, 3] and meta["input"]["dtype"] == "uint8"
    assert meta["config"]["name"] == "smoke" and meta["validation_accuracy"] > 0
    assert meta["file_sizes"]["model_fp32.tflite"] > meta["file_sizes"]["model_int8.tflite"]
    assert "parity on 128 images" in result.stdout  # the smoke run has 128 validation images


def test_parity_meets_the_targets(exported):
    folder, result = exported
    parity = json.load(open(os.path.join(folder, "metadata.json")))["parity"]
    assert parity["saved_model_max_abs_diff"] < 1e-5
    assert parity["tflite_max_abs_diff"] < 1e-4 and parity["tflite_top1_agreement"] == 1.0
    assert parity["tflite_fp16_top1_agreement"] >= 0.99
    # The smoke model (10k parameters, 6 epochs on 256 images) predicts with small
    # margins, which int8 rounding flips more often than on a trained model: measured
    # 0.875 here, against 0.970-0.974 for configs/cpu_quick (README, Export). This bound
    # only guards the int8 path against breaking; the 97 % target is not tested here.
    assert parity["tflite_int8_top1_agreement"] >= 0.8


def test_tflite_files_use_builtin_ops_only(exported):
    from cmxl_keras import export

    folder, _ = exported
    for name in export.TFLITE_FILES.values():
        ops = export.tflite_ops(open(os.path.join(folder, name), "rb").read())
        assert ops and not [op for op in ops if "flex" in op.lower()], (name, ops)


def test_plain_tensorflow_serves_the_saved_model_without_this_package(exported):
    folder, _ = exported
    code = (
        "import sys, numpy as np, tensorflow as tf\n"
        f"serve = tf.saved_model.load({os.path.join(folder, 'saved_model', '1')!r})"
        ".signatures['serving_default']\n"
        "for n in (1, 7):\n"
        "    out = serve(images=tf.constant(np.full((n, 32, 32, 3), 127, np.uint8)))\n"
        "    assert out['probabilities'].shape == (n, 10) and out['class_id'].shape == (n,)\n"
        "    np.testing.assert_allclose(out['probabilities'].numpy().sum(1), 1, atol=1e-5)\n"
        "assert not [m for m in sys.modules if m.startswith('cmxl_keras')]\n"
        "print('served')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd="/", timeout=300, env=dict(os.environ, PYTHONPATH=""))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("served")


def test_predict_any_size_png_and_jpeg_in_both_formats(exported, tmp_path):
    from PIL import Image

    folder, _ = exported
    png, jpg = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.fromarray(random_images(1, size=64)[0]).save(png)
    Image.fromarray(random_images(1, size=32)[0][:, :20]).save(jpg)
    for fmt in ("saved_model", "tflite"):
        result = run_cli("predict", png, jpg, "--model", folder, "--format", fmt, "--json",
                         "--top-k", "3")
        assert result.returncode == 0, result.stderr[-3000:]
        items = json.loads(result.stdout)
        assert [i["image"] for i in items] == [str(png), str(jpg)]
        for item in items:
            probs = [g["probability"] for g in item["top_k"]]
            assert len(probs) == 3 and probs == sorted(probs, reverse=True)
    text = run_cli("predict", png, "--model", folder)
    assert text.returncode == 0 and str(png) in text.stdout


@pytest.mark.parametrize("case,quoted", [
    ("missing", "does not exist"),
    ("not_image", "is not a readable image"),
    ("gray", "has mode L (1 channel(s)); the model takes RGB"),
])
def test_predict_bad_files(exported, tmp_path, case, quoted):
    from PIL import Image

    folder, _ = exported
    path = tmp_path / "x.png"
    if case == "not_image":
        path.write_text("hello")
    elif case == "gray":
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    result = run_cli("predict", path, "--model", folder)
    assert result.returncode == 2 and quoted in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_failed_export_leaves_nothing_half_written(trained_run, tmp_path, monkeypatch):
    from cmxl_keras import export

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure during TFLite conversion")

    monkeypatch.setattr(export, "convert_tflite", broken)
    loaded = export.load_source(trained_run)
    with pytest.raises(RuntimeError):
        export.export(loaded, trained_run, ("saved_model", "tflite"), str(tmp_path), "x",
                      log=lambda m: None)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args,quoted", [
    (["export", "/no/such/run"], "does not exist"),
    (["export", "--checkpoint", "README.md"], "is not a Keras model file"),
    (["export", ".", "--formats", "onnx"], "unknown export format(s) onnx"),
])
def test_export_bad_sources(args, quoted):
    result = run_cli(*args)
    assert result.returncode == 2 and quoted in result.stderr
    assert "Traceback" not in result.stderr
