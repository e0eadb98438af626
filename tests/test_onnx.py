"""The ONNX form: ``model.onnx`` written by Keras' own exporter from the folded float32
graph (exact GELU through ``erf``), checked by ``onnx.checker``, named as documented, run
by ONNX Runtime without TensorFlow for predict, evaluate and serve, and equal to the
Keras model within the fp32 TFLite file's targets."""

import json
import os
import sys

import numpy as np
import pytest

from conftest import ROOT, SHARED_DATA, run_cli, run_process
from test_export import NO_TENSORFLOW
from test_serve import EXAMPLES, SHIPPED, Server


def test_the_shipped_onnx_file_passes_the_checker_and_names_its_input_and_output():
    import onnx

    model = onnx.load(os.path.join(SHIPPED, "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    (given,), (answer,) = model.graph.input, model.graph.output
    assert given.name == "images" and answer.name == "probabilities"
    assert given.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_value or None for d in given.type.tensor_type.shape.dim]
    assert dims == [None, 32, 32, 3], dims
    assert [d.dim_value or None for d in answer.type.tensor_type.shape.dim] == [None, 10]
    meta = json.load(open(os.path.join(SHIPPED, "metadata.json")))
    names = {p.key: p.value for p in model.metadata_props}["class_names"]
    assert json.loads(names) == meta["class_names"]
    ops = {node.op_type for node in model.graph.node}
    assert "Erf" in ops and not ops & {"Erfc", "Normalization"}, ops
    assert meta["parity"]["onnx_top1_agreement"] == 1.0
    assert meta["parity"]["onnx_max_abs_diff"] < 1e-4 and meta["parity"]["images"] == 1000


def test_onnx_runtime_gives_the_keras_models_probabilities_on_real_images():
    import keras

    from cmxl_keras import inference, serving

    images = serving.load_images(EXAMPLES, 32)
    model = keras.saving.load_model(os.path.join(SHIPPED, "model.keras"), compile=False)
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(model(images.astype(np.float32))))
    got = inference.load(SHIPPED, "onnx")(images, batch=3)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).all()


@pytest.mark.slow
def test_predict_evaluate_and_serve_run_onnx_without_tensorflow(tmp_path):
    command = [sys.executable, "-c", NO_TENSORFLOW.replace("--format tflite", "onnx"),
               os.path.join(ROOT, "cli.py"), "predict", *EXAMPLES, "--model", SHIPPED,
               "--format", "onnx", "--json"]
    alone = run_process(command, timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]
    with_tf = run_cli("predict", *EXAMPLES, "--model", SHIPPED, "--format", "tflite",
                      "--json", timeout=300)
    onnx_top = [item["top_k"][0] for item in json.loads(alone.stdout)]
    tflite_top = [item["top_k"][0] for item in json.loads(with_tf.stdout)]
    assert [t["class"] for t in onnx_top] == [t["class"] for t in tflite_top]
    np.testing.assert_allclose([t["probability"] for t in onnx_top],
                               [t["probability"] for t in tflite_top], atol=1e-4)
    # evaluate, by its exported folder's config, on the lossless training images.
    evaluated = run_process([sys.executable, "-c", NO_TENSORFLOW, os.path.join(ROOT, "cli.py"),
                             "evaluate", SHIPPED, "--format", "onnx", "--data-dir",
                             os.path.join(SHARED_DATA, "cifar10-train-lossless-subset.tar.gz"),
                             "--out", tmp_path / "eval", "--json"], timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads(evaluated.stdout)
    assert result["form"] == "onnx", result
    assert result["images"] == 1000 and result["top1"] > 0.85, result["top1"]
    server = Server("onnx")
    try:
        status, answer = server.predict({"signature_name": "serving_bytes", "instances": [
            {"b64": __import__("base64").b64encode(open(p, "rb").read()).decode()}
            for p in EXAMPLES]})
    finally:
        ended = server.stop()
    assert status == 200 and ended.returncode == 0, ended.stderr[-2000:]
    assert [p["class_id"] for p in answer["predictions"]] == [0, 3, 7, 8]


@pytest.mark.slow
def test_export_adds_onnx_to_an_export_of_the_same_model_only(trained_run, tmp_path):
    out = tmp_path / "out"
    first = run_cli("export", trained_run, "--out", out, "--formats", "saved_model", "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    added = run_cli("export", trained_run, "--out", out, "--formats", "onnx", "--add",
                    "--json")
    assert added.returncode == 0, added.stderr[-3000:]
    meta = json.loads(added.stdout)
    assert meta["formats"] == ["saved_model", "onnx"], meta["formats"]
    assert set(meta["file_sizes"]) == {"saved_model", "model.onnx"}
    assert meta["parity"]["saved_model_max_abs_diff"] == \
        json.loads(first.stdout)["parity"]["saved_model_max_abs_diff"]
    assert meta["parity"]["onnx_top1_agreement"] == 1.0, meta["parity"]
    assert meta["parity"]["onnx_max_abs_diff"] < 1e-4, meta["parity"]
    assert sorted(os.listdir(out / "smoke")) == ["metadata.json", "model.onnx", "saved_model"]
    other = run_cli("export", os.path.join(SHIPPED, "model.keras"), "--out", out, "--name",
                    "smoke", "--formats", "onnx", "--add", env={"CMXL_OFFLINE": "1"})
    assert other.returncode == 2 and "is the export of another model" in other.stderr, \
        other.stderr[-2000:]
