"""Evaluation: the same numbers from a run folder, a .keras file, a SavedModel and a
TFLite file; figures."""

import json
import os

import numpy as np
import pytest

from conftest import SHARED_DATA, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def three_forms(trained_run, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("exp"))
    result = run_cli("export", trained_run, "--out", out, "--formats", "saved_model,tflite")
    assert result.returncode == 0, result.stderr[-3000:]
    return {"run": trained_run, "keras": os.path.join(trained_run, "model.keras"),
            "saved_model": os.path.join(out, "smoke"),
            "tflite": os.path.join(out, "smoke", "model_fp32.tflite")}


def test_evaluate_agrees_across_the_model_forms(three_forms, cifar_dir, tmp_path):
    results = {}
    for form, source in three_forms.items():
        out = tmp_path / form
        result = run_cli("evaluate", source, "--data-dir", cifar_dir, "--out", out, "--tta")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "top-1" in result.stdout and "with flip TTA" in result.stdout
        assert "on val, the validation half" in result.stdout and "--split test" in result.stdout
        results[form] = json.load(open(out / "eval_val.json"))
    ref = results["run"]
    assert ref["images"] == 128 and 0 <= ref["top1"] <= ref["top5"] <= 1
    assert np.sum(ref["confusion_matrix"]) == 128
    assert results["saved_model"]["form"] == "saved_model"
    assert results["tflite"]["form"] == "tflite"  # run by LiteRT
    for form in ("keras", "saved_model", "tflite"):
        got = results[form]
        assert got["top1"] == ref["top1"] and got["top5"] == ref["top5"]
        # The TFLite file is converted from the folded graph: float rounding apart.
        assert got["loss"] == pytest.approx(ref["loss"], abs=1e-4 if form == "tflite" else 1e-5)
        assert got["confusion_matrix"] == ref["confusion_matrix"]
        assert got["tta_flip"]["top1"] == ref["tta_flip"]["top1"]


def test_evaluate_matches_an_independent_forward_pass(three_forms, cifar_dir, tmp_path):
    """The figures evaluate reports, recomputed here from the run's validation images and
    a plain Keras forward pass of model.keras (numpy softmax, no evaluate code)."""
    import keras

    from cmxl_keras import config, splitting

    run = three_forms["run"]
    cfg = config.from_dict(json.load(open(os.path.join(run, "config.json"))))
    splits = splitting.load_splits(cfg.replace(data_dir=cifar_dir), log=lambda m: None)
    images, labels = splits.val.images, splits.val.labels.astype(int)
    model = keras.saving.load_model(three_forms["keras"])
    logits = np.asarray(model.predict(images.astype(np.float32), verbose=0), np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ranked = np.argsort(-probabilities, axis=1)
    confusion = np.zeros((10, 10), int)
    np.add.at(confusion, (labels, ranked[:, 0]), 1)

    result = run_cli("evaluate", run, "--data-dir", cifar_dir, "--out", tmp_path, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout)  # --json: one JSON object on stdout, nothing else
    assert got == json.load(open(tmp_path / "eval_val.json")) | {"figures": got["figures"]}
    assert got["images"] == len(labels) == 128
    assert got["top1"] == pytest.approx(np.mean(ranked[:, 0] == labels), abs=1e-9)
    assert got["top5"] == pytest.approx(np.mean([y in r[:5] for y, r in zip(labels, ranked)]),
                                        abs=1e-9)
    expected_loss = -np.mean(np.log(probabilities[np.arange(len(labels)), labels]))
    assert got["loss"] == pytest.approx(expected_loss, rel=1e-4)
    assert np.array_equal(got["confusion_matrix"], confusion)


def test_flip_tta_averages_the_probabilities_of_the_horizontal_mirror(three_forms, cifar_dir,
                                                                      tmp_path):
    """--tta's figures recomputed from plain forward passes: the probabilities of each
    image and of its left-right mirror, averaged. A vertical flip, or logits averaged
    instead of probabilities, gives other figures on this model (checked), so either
    would fail here."""
    import shutil

    import keras

    from cmxl_keras import config, splitting

    run = three_forms["run"]
    cfg = config.from_dict(json.load(open(os.path.join(run, "config.json"))))
    splits = splitting.load_splits(cfg.replace(data_dir=cifar_dir), log=lambda m: None)
    images, labels = splits.val.images.astype(np.float32), splits.val.labels.astype(int)
    model = keras.saving.load_model(three_forms["keras"])
    # Sharper logits (the classifier scaled by 8): with the small model's soft outputs
    # the two wrong averages can come within float32 rounding of the right one.
    head = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    head.set_weights([w * 8 for w in head.get_weights()])
    sharp = str(tmp_path / "run" / "model.keras")  # a .keras file in a copy of the run
    shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("model.keras"))
    model.save(sharp)

    def logits(x):
        return np.asarray(model.predict(x, verbose=0), np.float64)

    def softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)

    def figures(probabilities):
        picked = probabilities[np.arange(len(labels)), labels]
        return np.mean(probabilities.argmax(1) == labels), -np.mean(np.log(picked))

    plain, mirrored = logits(images), logits(images[:, :, ::-1])
    expected = figures((softmax(plain) + softmax(mirrored)) / 2)
    vertical = figures((softmax(plain) + softmax(logits(images[:, ::-1]))) / 2)
    averaged_logits = figures(softmax((plain + mirrored) / 2))
    for wrong in (vertical, averaged_logits):
        assert abs(wrong[1] - expected[1]) > 1e-4, (wrong, expected)
    result = run_cli("evaluate", sharp, "--data-dir", cifar_dir, "--out", tmp_path / "eval",
                     "--tta", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout)["tta_flip"]
    assert got["top1"] == pytest.approx(expected[0], abs=1e-9)
    assert got["loss"] == pytest.approx(expected[1], rel=1e-4)


def test_evaluate_writes_figures_that_are_real_images(three_forms, cifar_dir, tmp_path):
    from PIL import Image

    result = run_cli("evaluate", three_forms["keras"], "--data-dir", cifar_dir, "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("confusion_matrix_val.png", "correct_val.png", "wrong_val.png"):
        with Image.open(tmp_path / name) as image:
            pixels = np.asarray(image.convert("L"))
            assert image.size[0] >= 400 and image.size[1] >= 400, name
        assert pixels.std() > 10, f"{name} looks blank"


def test_evaluate_run_folder_writes_into_the_run_and_tensorboard(three_forms, cifar_dir):
    run = three_forms["run"]
    result = run_cli("evaluate", run, "--data-dir", cifar_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.isfile(os.path.join(run, "eval_val.json"))
    assert os.listdir(os.path.join(run, "tensorboard", "eval"))


def test_test_split_without_test_data_is_a_clear_error(three_forms, cifar_dir, tmp_path):
    result = run_cli("evaluate", three_forms["run"], "--data-dir", cifar_dir, "--split", "test",
                     "--out", tmp_path)
    assert result.returncode == 3 and "has no test split" in result.stderr  # a data error
    assert "--split val" in result.stderr and "Traceback" not in result.stderr


def test_progress_bars_show_on_a_terminal_only(three_forms, cifar_dir, tmp_path):
    """On a terminal, evaluate shows a progress bar on stderr; with stderr in a pipe (logs,
    CI) it shows none; stdout holds the JSON either way."""
    import pty
    import subprocess
    import sys
    import threading

    from conftest import ROOT

    args = [sys.executable, os.path.join(ROOT, "cli.py"), "evaluate", three_forms["keras"],
            "--data-dir", cifar_dir, "--out", str(tmp_path), "--json"]
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))  # 100 columns
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave, cwd=ROOT)
    os.close(slave)
    terminal = []

    def read():
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed its end
                return
            if not chunk:
                return
            terminal.append(chunk.decode(errors="replace"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        stdout, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("evaluate on a terminal did not end within 300 s; its terminal output:\n"
                    + "".join(terminal)[-3000:])
    reader.join(timeout=30)
    os.close(master)
    assert proc.returncode == 0, "".join(terminal)[-3000:]
    assert json.loads(stdout)["images"] == 128
    shown = "".join(terminal)
    assert "evaluate:" in shown and "batch" in shown, shown[-2000:]
    piped = run_cli(*args[2:])
    assert piped.returncode == 0 and "evaluate:" not in piped.stderr
    assert json.loads(piped.stdout)["images"] == 128



# ----------------------------------------------------------------------------- other forms
@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    """A run trained on 20 lossless images a class (PNG, named as their JPEG twins), and
    folders of the same images as JPEG, of those and 5 more a class, and of others."""
    import tarfile

    root = tmp_path_factory.mktemp("forms")
    chosen = {}
    with tarfile.open(os.path.join(SHARED_DATA, "cifar10-train-lossless-subset.tar.gz")) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(chosen.setdefault(parts[1], [])) < 20:
                chosen[parts[1]].append(parts[2][:-4])
                tar.extract(member, root / "lossless", filter="data")
    extra = {}
    with tarfile.open(os.path.join(SHARED_DATA, "cifar10-train-jpeg.tar.gz")) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile():
                continue
            if parts[2][:-4] in chosen[parts[1]]:
                tar.extract(member, root / "jpeg", filter="data")
                tar.extract(member, root / "more", filter="data")
            elif extra.get(parts[1], 0) < 25:
                extra[parts[1]] = extra.get(parts[1], 0) + 1
                tar.extract(member, root / ("more" if extra[parts[1]] <= 5 else "others"),
                            filter="data")
    run_dir = str(root / "run")
    trained = run_cli("train", "--config", "smoke", "--data-dir", root / "lossless",
                      "--run-dir", run_dir, "--epochs", "1", "--val-from-train", "50",
                      "--set", "aug=none")
    assert trained.returncode == 0, trained.stderr[-3000:]
    return {"run": run_dir, **{k: str(root / k) for k in ("lossless", "jpeg", "more",
                                                          "others")}}


def test_evaluate_scores_the_runs_images_in_another_form_and_says_which(forms, tmp_path):
    scored = {}
    for form in ("lossless", "jpeg", "more"):
        result = run_cli("evaluate", forms["run"], "--data-dir", forms[form], "--out",
                         tmp_path / form, "--json")
        assert result.returncode == 0, result.stderr[-3000:]
        scored[form] = json.loads(result.stdout)
    split = json.load(open(os.path.join(forms["run"], "split.json")))
    for form, how in (("lossless", "the same images by name"), ("jpeg", "the same images by "
                                                                "name"), ("more", "picked by name")):
        record = scored[form]["data"]
        assert how in record["run_split"]["val"], record
        assert record["names_sha256"] == split["val_names_sha256"], record
        assert record["run_split_file"] == os.path.join(forms["run"], "split.json")
        assert record["images"] == 50 and len(scored[form]["predicted"]) == 50
    # The run's own pixels where they are its own images; the JPEG twins' elsewhere, the
    # same in a folder of the twins alone and in a larger one.
    assert scored["lossless"]["data"]["pixels_sha256"] == split["val_pixels_sha256"]
    assert scored["jpeg"]["data"]["pixels_sha256"] == scored["more"]["data"]["pixels_sha256"]
    assert scored["jpeg"]["data"]["pixels_sha256"] != split["val_pixels_sha256"]
    assert scored["jpeg"]["predicted"] == scored["more"]["predicted"]
    labels = [scored["jpeg"]["class_names"].index(n.split("/")[0]) for n in split["val_names"]]
    top1 = np.mean(np.asarray(scored["jpeg"]["predicted"]) == labels)
    assert top1 == pytest.approx(scored["jpeg"]["top1"])


def test_evaluate_refuses_images_that_are_not_the_runs_unless_asked(forms, tmp_path):
    refused = run_cli("evaluate", forms["run"], "--data-dir", forms["others"], "--out",
                      tmp_path / "refused")
    assert refused.returncode == 3, refused.stderr[-3000:]  # a data error
    assert "lacks 50 of the 50 images of" in refused.stderr, refused.stderr
    assert "--other-images" in refused.stderr and "Traceback" not in refused.stderr
    assert not os.path.exists(tmp_path / "refused" / "eval_val.json")
    asked = run_cli("evaluate", forms["run"], "--data-dir", forms["others"], "--out",
                    tmp_path / "asked", "--other-images", "--json")
    assert asked.returncode == 0, asked.stderr[-3000:]
    assert json.loads(asked.stdout)["data"]["run_split"]["val"].startswith("other images")
