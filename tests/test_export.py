"""Export and serving: SavedModel and TFLite from a trained run, parity, predict."""

import json
import os
import sys

import numpy as np
import pytest

from conftest import random_images, run_cli, run_process, shipped_cifar

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(trained_run, cifar_dir, tmp_path_factory):
    # The smoke model's int8 agreement sits near its 97 % target (see below): keep the
    # files whatever it measures.
    out = str(tmp_path_factory.mktemp("exported"))
    result = run_cli("export", trained_run, "--out", out, "--allow-parity-miss")
    assert result.returncode == 0, result.stderr[-3000:]
    return os.path.join(out, "smoke"), result


def test_export_writes_the_serving_layout_and_metadata(exported, trained_run):
    folder, result = exported
    for name in ("saved_model/1/saved_model.pb", "model_fp32.tflite", "model_fp16.tflite",
                 "model_int8.tflite", "metadata.json"):
        assert os.path.isfile(os.path.join(folder, name)), name
    assert not [n for n in os.listdir(os.path.dirname(folder)) if n.startswith(".")]
    meta = json.load(open(os.path.join(folder, "metadata.json")))
    assert meta["class_names"][:2] == ["airplane", "automobile"]
    assert meta["input"]["shape"] == [None, 32, 32, 3] and meta["input"]["dtype"] == "uint8"
    # The model file within its run, named by the run's folder name: no absolute path.
    assert meta["source_checkpoint"] == "model.keras", meta["source_checkpoint"]
    assert meta["training"]["run"] == os.path.basename(trained_run)
    run_dir = trained_run
    run_results = json.load(open(os.path.join(run_dir, "results.json")))
    assert meta["config"]["name"] == "smoke"
    assert meta["validation_accuracy"] == run_results["best_val_accuracy"]
    sizes = meta["file_sizes"]
    for name in ("model_fp32.tflite", "model_fp16.tflite", "model_int8.tflite"):
        assert sizes[name] == os.path.getsize(os.path.join(folder, name)), name
    # Each file holds every convolution/dense kernel at its precision: 4, 2 and 1 bytes.
    import keras

    model = keras.saving.load_model(os.path.join(run_dir, meta["source_checkpoint"]))
    kernels = sum(int(np.prod(w.shape)) for w in model.weights if w.name == "kernel"
                  or w.path.endswith("kernel"))
    assert kernels > 5000  # the smoke model: ~10k parameters, nearly all in kernels
    assert sizes["model_fp32.tflite"] >= 4 * kernels
    assert 2 * kernels <= sizes["model_fp16.tflite"] < sizes["model_fp32.tflite"]
    assert kernels <= sizes["model_int8.tflite"] < sizes["model_fp32.tflite"]
    assert "parity on 128 images" in result.stdout  # the smoke run has 128 validation images
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=os.path.join(folder, "model_int8.tflite")).get_signature_runner()
    (spec,) = runner.get_input_details().values()
    assert spec["dtype"] == np.uint8 and spec["quantization"] == (1.0, 0)  # raw pixels


def test_parity_meets_the_targets(exported):
    folder, result = exported
    parity = json.load(open(os.path.join(folder, "metadata.json")))["parity"]
    assert parity["saved_model_max_abs_diff"] < 1e-5
    assert parity["tflite_max_abs_diff"] < 1e-4 and parity["tflite_top1_agreement"] == 1.0
    assert parity["tflite_fp16_top1_agreement"] >= 0.99
    # The smoke model (10k parameters, 6 epochs on 256 images, ~25 % validation top-1)
    # predicts with margins so small that int8 rounding flips some (measured 0.96 here);
    # the 97 % target is tested on a model that learned something, below.
    assert parity["tflite_int8_top1_agreement"] >= 0.9


@pytest.fixture(scope="module")
def learned_export(tmp_path_factory):
    """The export of a model trained long enough for int8 agreement to mean something:
    configs/cpu_quick for 4 epochs on 10,000 of the shipped images (57 % validation
    top-1, 2-4 minutes here), exported with parity on 2,000 validation images.

    Deterministic training: the same model in every CI run (two runs here gave the same
    weights and figures). Its int8 agreement was measured 97.7 % on these 2,000 images
    (97.0 % with min/max ranges, exactly the target: with a model that changed from run
    to run and 512 images, a fresh-clone CI run measured 96.9 % and failed)."""
    data_dir = shipped_cifar(tmp_path_factory, 12000, suffix="-12k")
    run_dir = str(tmp_path_factory.mktemp("learned") / "run")
    result = run_cli("train", "--config", "cpu_quick", "--epochs", "4", "--data-dir", data_dir,
                     "--val-from-train", "2000", "--run-dir", run_dir, "--set",
                     "deterministic=true", timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    out = str(tmp_path_factory.mktemp("exported"))
    result = run_cli("export", run_dir, "--out", out, "--parity-images", "2000")
    assert result.returncode == 0, result.stderr[-3000:]
    return os.path.join(out, "cpu_quick"), result


def test_parity_targets_on_a_model_that_learned(learned_export):
    folder, result = learned_export
    meta = json.load(open(os.path.join(folder, "metadata.json")))
    parity = meta["parity"]
    print(f"validation top-1 {meta['validation_accuracy']:.4f}; parity {parity}")
    assert meta["validation_accuracy"] > 0.45  # it learned: chance is 0.10
    assert parity["images"] == 2000 and "parity on 2000 images" in result.stdout
    assert parity["saved_model_max_abs_diff"] < 1e-5
    assert parity["tflite_max_abs_diff"] < 1e-4 and parity["tflite_top1_agreement"] == 1.0
    assert parity["tflite_fp16_top1_agreement"] >= 0.99
    assert parity["tflite_int8_top1_agreement"] >= 0.97
    assert "parity below target" not in result.stderr


def test_int8_ranges_are_the_activations_own(learned_export):
    """Each GELU output's int8 range starts near GELU's minimum (-0.17), as calibrated
    by ``tflite.calibrated_int8``; the converter's own calibration stretches these
    ranges over the following op's output (tensors reused in place), measured
    down to -1.1 and several times too wide."""
    from ai_edge_litert.interpreter import Interpreter

    folder, _ = learned_export
    interpreter = Interpreter(model_path=os.path.join(folder, "model_int8.tflite"))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    gelus = [op for op in interpreter._get_ops_details() if op["op_name"] == "GELU"]
    assert len(gelus) == 1 + 2 * 5  # stem + depthwise and pointwise of 5 layers
    for op in gelus:
        scale, zero_point = tensors[op["outputs"][0]]["quantization"]
        lowest = (-128 - zero_point) * scale
        assert -0.17 - scale <= lowest <= -0.16 + scale, (op, scale, zero_point, lowest)


def test_tflite_files_use_builtin_ops_only(exported):
    from cmxl_keras import inference, tflite

    folder, _ = exported
    for name in inference.TFLITE_FILES.values():
        ops = tflite.tflite_ops(open(os.path.join(folder, name), "rb").read())
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
    result = run_process([sys.executable, "-c", code], timeout=300, cwd="/",
                         env={"PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("served")


SERVE_AS_TF_SERVING = """
import base64, json, sys
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

folder, request_path, response_path = sys.argv[1:4]
loaded = tf.saved_model.load(folder)
# TF-Serving's warmup: each logged request runs through the signature it names.
ran = []
for record in tf.data.TFRecordDataset(f"{folder}/assets.extra/tf_serving_warmup_requests"):
    request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
    serve = loaded.signatures[request.model_spec.signature_name]
    out = serve(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
    assert out["probabilities"].shape == (1, 10) and out["class_id"].shape == (1,)
    ran.append(request.model_spec.signature_name)
# A REST :predict call with base64 images, answered in TF-Serving's row format.
request = json.load(open(request_path))
serve = loaded.signatures[request["signature_name"]]
data = [base64.b64decode(i["image_bytes"]["b64"]) for i in request["instances"]]
out = serve(image_bytes=tf.constant(data))
rows = [{"probabilities": p.tolist(), "class_id": int(c)}
        for p, c in zip(out["probabilities"].numpy(), out["class_id"].numpy())]
json.dump({"predictions": rows}, open(response_path, "w"))
assert not [m for m in sys.modules if m.startswith("cmxl_keras")]
print("served", *ran)
"""


def test_plain_tensorflow_serves_encoded_images_and_runs_the_warmup(exported, tmp_path):
    """serving_bytes and the warmup file, used the way TF-Serving uses them, by plain
    TensorFlow; the REST response gives the same results as ``predict --json``."""
    from PIL import Image

    from cmxl_keras import serving

    folder, _ = exported
    same, big = tmp_path / "same.png", tmp_path / "big.jpg"
    Image.fromarray(random_images(1, seed=3)[0]).save(same)  # the model's size: no resize
    # A smooth 64x48 photo-like image (noise blown up from 8x6), saved as JPEG.
    Image.fromarray(random_images(1, size=8, seed=4)[0][:6]).resize(
        (64, 48), Image.BICUBIC).save(big, quality=95)
    paths = [str(same), str(big)]
    request, response = tmp_path / "request.json", tmp_path / "response.json"
    request.write_text(json.dumps(serving.rest_request(paths)))
    result = run_process([sys.executable, "-c", SERVE_AS_TF_SERVING,
                          os.path.join(folder, "saved_model", "1"), request, response],
                         timeout=300, cwd="/", env={"PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["served", "serving_default", "serving_bytes"]
    class_names = json.load(open(os.path.join(folder, "metadata.json")))["class_names"]
    served = serving.results_from_rest(json.loads(response.read_text()), class_names, paths, 10)
    local = run_cli("predict", *paths, "--model", folder, "--json", "--top-k", "10")
    assert local.returncode == 0, local.stderr[-3000:]
    local = json.loads(local.stdout)

    def by_class(item):
        return {g["class"]: g["probability"] for g in item["top_k"]}

    assert [i["image"] for i in served] == [i["image"] for i in local] == paths
    # Same decoded pixels: the same probabilities.
    assert served[0]["top_k"][0]["class"] == local[0]["top_k"][0]["class"]
    exact = by_class(served[0])
    assert max(abs(exact[c] - p) for c, p in by_class(local[0]).items()) < 1e-5
    # Decoded and resized by TensorFlow and by PIL: within one grey level of each other
    # (measured 6e-4 on the probabilities; with TensorFlow's default fast JPEG IDCT, up
    # to 11 grey levels and 9e-3).
    near = by_class(served[1])
    assert max(abs(near[c] - p) for c, p in by_class(local[1]).items()) < 2e-3


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


NO_TENSORFLOW = """
import runpy, sys


class NoTensorFlow:
    \"\"\"Any import of TensorFlow (or of Keras, which would load it) fails loudly.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            raise RuntimeError(f"imported {name}: predict --format tflite must not")


sys.meta_path.insert(0, NoTensorFlow())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_predict_tflite_runs_with_no_tensorflow(exported, tmp_path):
    from PIL import Image

    from conftest import ROOT

    folder, _ = exported
    png = tmp_path / "a.png"
    Image.fromarray(random_images(1, size=48)[0]).save(png)
    command = [sys.executable, "-c", NO_TENSORFLOW, os.path.join(ROOT, "cli.py"), "predict",
               str(png), "--model", folder, "--format", "tflite", "--json"]
    result = run_process(command, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = run_cli("predict", png, "--model", folder, "--format", "tflite", "--json")
    assert json.loads(result.stdout) == json.loads(expected.stdout)
    # The guard is real: the SavedModel form needs TensorFlow and is stopped by it.
    blocked = run_process(command[:-3] + ["--format", "saved_model"], timeout=300)
    assert blocked.returncode != 0 and "must not" in blocked.stderr


@pytest.mark.parametrize("case,quoted", [
    ("missing", "does not exist"),
    ("not_image", "is not a readable image"),
])
def test_predict_bad_files(exported, tmp_path, case, quoted):
    folder, _ = exported
    path = tmp_path / "x.png"
    if case == "not_image":
        path.write_text("hello")
    result = run_cli("predict", path, "--model", folder)
    assert result.returncode == 3 and quoted in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_failed_export_leaves_nothing_half_written(trained_run, tmp_path, monkeypatch):
    from cmxl_keras import export, inference, tflite

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure during TFLite conversion")

    monkeypatch.setattr(tflite, "convert_tflite", broken)
    loaded = inference.load_keras(trained_run)
    with pytest.raises(RuntimeError):
        export.export(loaded, trained_run, ("saved_model", "tflite"), str(tmp_path), "x",
                      log=lambda m: None)
    assert os.listdir(tmp_path) == []


def test_export_without_a_source_takes_the_newest_finished_run(trained_run, tmp_path):
    import shutil

    runs_dir = tmp_path / "runs"
    older, newer, unfinished = runs_dir / "a-older", runs_dir / "b-newer", runs_dir / "c-running"
    for folder in (older, newer, unfinished):
        shutil.copytree(trained_run, folder)
    os.remove(unfinished / "results.json")  # still training: not a candidate
    os.utime(older / "results.json", (1, 1))
    result = run_cli("export", "--runs-dir", runs_dir, "--out", tmp_path / "out", "--formats",
                     "saved_model", "--json", cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"taking the newest finished run in {runs_dir}/: {newer}" in result.stderr
    meta = json.load(open(tmp_path / "out" / "smoke" / "metadata.json"))
    assert meta["source_checkpoint"] == "model.keras" and meta["training"]["run"] == "b-newer"
    printed = json.loads(result.stdout)  # --json: the folder and its metadata, nothing else
    assert printed.pop("folder") == str(tmp_path / "out" / "smoke")
    assert printed.pop("parity_failures") == [] and printed == meta


@pytest.mark.parametrize("args,quoted", [
    (["export", "/no/such/run"], "does not exist"),
    (["export", "--checkpoint", "README.md"], "is not a Keras model file"),
    (["export", ".", "--formats", "pmml"], "unknown export format(s) pmml"),
])
def test_export_bad_sources(args, quoted):
    result = run_cli(*args)
    assert result.returncode == 2 and quoted in result.stderr
    assert "Traceback" not in result.stderr


def test_a_parity_miss_exits_5_and_writes_nothing_unless_allowed(cifar_dir, tmp_path):
    """An untrained model: its ten logits are nearly equal, so int8 rounding reorders
    them for many images and the int8 agreement misses its 97 % target."""
    import keras

    from cmxl_keras import recipe, settings

    # In a folder with the smoke run's config: its split carves 128 validation images.
    (tmp_path / "untrained").mkdir()
    model_path = tmp_path / "untrained" / "untrained.keras"
    cfg = settings.load("smoke")
    (tmp_path / "untrained" / "config.json").write_text(json.dumps(cfg.to_dict()))
    keras.utils.set_random_seed(0)
    recipe.build_model(cfg).save(model_path)
    out = tmp_path / "exported"
    args = ["export", "--checkpoint", model_path, "--data-dir", cifar_dir, "--out", out,
            "--formats", "tflite_int8", "--name", "untrained"]
    missed = run_cli(*args)
    assert missed.returncode == 5, missed.stderr[-3000:]
    assert "tflite_int8_top1_agreement" in missed.stderr and "(target >= 0.97)" in missed.stderr
    assert "--allow-parity-miss" in missed.stderr and "Traceback" not in missed.stderr
    assert not (out / "untrained").exists() and not [n for n in os.listdir(out)
                                                     if not n.startswith(".")]
    kept = run_cli(*args, "--allow-parity-miss")
    assert kept.returncode == 0, kept.stderr[-3000:]
    assert "parity below target" in kept.stderr
    assert (out / "untrained" / "model_int8.tflite").is_file()


def test_a_mixed_precision_model_exports_float32_files_that_meet_the_targets(cifar_dir,
                                                                           tmp_path):
    """Trained under mixed_float16 (its model.keras keeps the float16 policy), exported
    and compared against a float32 copy with the same weights."""
    import keras

    run_dir = tmp_path / "run"
    trained = run_cli("train", "--config", "smoke", "--data-dir", cifar_dir, "--run-dir",
                      run_dir, "--epochs", "6", "--set", "aug=none", "--lr", "0.01",
                      "--precision", "mixed_float16")
    assert trained.returncode == 0, trained.stderr[-3000:]
    model = keras.saving.load_model(run_dir / "model.keras")
    assert model.get_layer("stem_conv").dtype_policy.name == "mixed_float16"
    out = tmp_path / "exported"
    result = run_cli("export", run_dir, "--out", out, "--allow-parity-miss")
    assert result.returncode == 0, result.stderr[-3000:]
    parity = json.load(open(out / "smoke" / "metadata.json"))["parity"]
    # A SavedModel computing in float16 would be ~1e-3 off the float32 reference.
    assert parity["saved_model_max_abs_diff"] < 1e-5
    assert parity["tflite_max_abs_diff"] < 1e-4 and parity["tflite_top1_agreement"] == 1.0
    assert parity["tflite_fp16_top1_agreement"] >= 0.99
    assert parity["tflite_int8_top1_agreement"] >= 0.9  # the smoke bound, as above


def test_parity_measured_from_outside(exported, cifar_dir, trained_run):
    """Parity as a user would measure it, not as metadata.json reports it: the Keras
    checkpoint, the SavedModel loaded by plain TensorFlow and each TFLite file run by
    LiteRT's own interpreter, on images this test picks (real training images and random
    ones), compared output against output."""
    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from cmxl_keras import data

    folder, _ = exported
    meta = json.load(open(os.path.join(folder, "metadata.json")))
    real = data.read_data_dir(cifar_dir).train.images[-300:]  # the images the smoke run did not see last
    images = np.concatenate([real, random_images(20, seed=7)]).astype(np.uint8)
    model = keras.saving.load_model(os.path.join(trained_run, meta["source_checkpoint"]))
    reference = keras.ops.convert_to_numpy(
        keras.ops.softmax(model.predict(images.astype(np.float32), verbose=0)))
    served = tf.saved_model.load(os.path.join(folder, "saved_model", "1"))
    saved = served.signatures["serving_default"](images=tf.constant(images))
    assert np.abs(saved["probabilities"].numpy() - reference).max() < 1e-5
    assert (saved["class_id"].numpy() == reference.argmax(1)).all()

    def litert(name):
        runner = Interpreter(model_path=os.path.join(folder, name)).get_signature_runner()
        (input_name, spec), = runner.get_input_details().items()
        out = runner(**{input_name: images.astype(spec["dtype"])})["probabilities"]
        details = runner.get_output_details()["probabilities"]
        scale, zero = details["quantization"]
        return (out.astype(np.float32) - zero) * scale if scale else out.astype(np.float32)

    top1 = reference.argmax(1)
    fp32, fp16, int8 = (litert(f"model_{kind}.tflite") for kind in ("fp32", "fp16", "int8"))
    assert np.abs(fp32 - reference).max() < 1e-4 and (fp32.argmax(1) == top1).all()
    assert (fp16.argmax(1) == top1).mean() >= 0.99
    # The smoke model's margins are small (see test_parity_meets_the_targets): its bound.
    assert (int8.argmax(1) == top1).mean() >= 0.9
    # The control: a model with other weights is told apart.
    other = keras.models.clone_model(model)
    assert np.abs(keras.ops.convert_to_numpy(keras.ops.softmax(
        other.predict(images.astype(np.float32), verbose=0))) - reference).max() > 1e-3
