"""The command line, run for real as a subprocess."""

import os
import sys
import tomllib

import pytest

from conftest import ROOT, run_cli, run_process


def test_info_prints_cm_xl_parameter_count():
    result = run_cli("info", "--variant", "cm_xl")
    assert result.returncode == 0, result.stderr
    assert "trainable parameters: 4,855,562" in result.stdout
    assert "3 long skips of 22 layers" in result.stdout


def test_info_for_a_config_file_and_summary():
    result = run_cli("info", "--config", "cm_vanilla", "--summary")
    assert result.returncode == 0, result.stderr
    assert "trainable parameters: 594,186" in result.stdout
    assert "layer_8_pointwise_bn" in result.stdout


def test_train_flags_map_onto_the_config():
    result = run_cli("train", "--depth", "66", "--skip-period", "3", "--act", "swish",
                     "--dry-run")
    assert result.returncode == 0, result.stderr
    resolved = tomllib.loads(result.stdout)
    assert (resolved["depth"], resolved["skip_period"], resolved["activation"]) == (66, 3, "swish")
    assert resolved["width"] == 256 and resolved["epochs"] == 100


def test_train_set_overrides_flags_and_file():
    result = run_cli("train", "--config", "smoke", "--epochs", "3", "--set", "epochs=4",
                     "--set", "lr_max=0.01", "--dry-run")
    assert result.returncode == 0, result.stderr
    resolved = tomllib.loads(result.stdout)
    assert resolved["epochs"] == 4 and resolved["lr_max"] == 0.01 and resolved["width"] == 32


@pytest.mark.parametrize("args,quoted", [
    (["train", "--depth", "65", "--skip-period", "3"], "depth 65 is not divisible"),
    (["train", "--act", "tanh"], "'activation' has value 'tanh'"),
    (["train", "--set", "epochs=ten"], "epochs='ten'"),
    (["train", "--depth", "eight"], "'eight' is not a valid integer"),
    (["info", "--variant", "cm_xxl"], "unknown variant 'cm_xxl'"),
    (["train", "--bogus"], "No such option '--bogus'"),
])
def test_bad_input_is_a_clear_error_without_traceback(args, quoted):
    result = run_cli(*args)
    assert result.returncode == 2
    assert quoted in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args,code", [
    (["train", "--precision", "float64"], 2),  # click's usage error: not a choice
    (["train", "--set", "jit_compile=maybe"], 2),  # a config value
    (["train", "--config", "smoke", "--data-dir", "/nonexistent/cifar"], 3),  # data
])
def test_exit_codes_tell_outcomes_apart(args, code):
    result = run_cli(*args)
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    help_text = run_cli("--help").stdout
    assert "Exit codes: 0 done" in help_text and "4 training diverged" in " ".join(
        help_text.split())


def test_version_and_a_backend_that_is_not_installed():
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.split()[-1] == __import__(
        "cmxl_keras").__version__
    # A Python where jax cannot be imported (as after 'pip install -r requirements.txt').
    code = ("import runpy, sys; sys.modules['jax'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    result = run_process([sys.executable, "-c", code, os.path.join(ROOT, "cli.py"), "--backend",
                          "jax", "info", "--variant", "cm_vanilla"], timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "the Keras backend 'jax'" in result.stderr and "pip install jax==" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_user_facing_text_points_outside_the_repository():
    """The data folder beside this repository exists for its tests and CI only; a user's
    clone has none, so the README, messages, configs and benchmarks never send a user
    there."""
    found = []
    for folder, _, files in os.walk(ROOT):
        if any(part in folder for part in (".git", "venv", "tests", "__pycache__")):
            continue
        for name in files:
            if name.endswith((".py", ".md", ".toml", ".txt")):
                path = os.path.join(folder, name)
                if "../shared" in open(path, encoding="utf-8", errors="replace").read():
                    found.append(os.path.relpath(path, ROOT))
    assert not found, found


def test_info_json_is_one_object_with_the_counts():
    from cmxl_keras import architecture

    result = run_cli("info", "--variant", "cm_xl", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    info = __import__("json").loads(result.stdout)
    cfg = info["config"]
    assert cfg["name"] == "cm_xl" and cfg["depth"] == 66 and cfg["skip_period"] == 3
    assert info["trainable_params"] == architecture.count_params(
        cfg["width"], cfg["depth"], cfg["patch_size"], cfg["kernel_size"], cfg["num_classes"])
    assert info["non_trainable_params"] == 2 * cfg["width"] * (1 + 2 * cfg["depth"])  # BN stats
    assert info["trainable_params"] < 5_000_000 and info["flops_per_image"] == 2 * info[
        "macs_per_image"]


# docs/examples/<class>.png: the first validation image of each class in the shipped
# model's split (the 1,000 images its run held out).
EXAMPLES = ["airplane", "cat", "horse", "ship"]


def test_the_shipped_model_classifies_the_shipped_examples():
    """exported/cm_vanilla (the paper's CM-Vanilla, trained on a GPU) works from a clone,
    as the README's command runs it, in both formats."""
    import json

    plain = run_cli("predict", "docs/examples/cat.png", "--model", "exported/cm_vanilla",
                    cwd=ROOT)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert plain.stdout.splitlines()[1].split()[0] == "cat"
    paths = [f"docs/examples/{name}.png" for name in EXAMPLES]
    for fmt in ("saved_model", "tflite"):
        result = run_cli("predict", *paths, "--model", "exported/cm_vanilla", "--format", fmt,
                         "--json", cwd=ROOT)
        assert result.returncode == 0, result.stderr[-2000:]
        assert [item["top_k"][0]["class"] for item in json.loads(result.stdout)] == EXAMPLES
    meta = json.load(open(os.path.join(ROOT, "exported", "cm_vanilla", "metadata.json")))
    assert meta["config"]["name"] == "cm_vanilla" and meta["validation_accuracy"] > 0.9
    from cmxl_keras import export

    assert meta["parity"]["images"] == 1000 and export.parity_failures(meta["parity"]) == []


def _image_kinds(folder):
    """The shipped cat (32x32 RGB) saved as every kind of image file a user may have."""
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    cat = Image.open(os.path.join(ROOT, "docs", "examples", "cat.png")).convert("RGB")
    pixels = np.asarray(cat)
    kinds = {
        "gray.png": cat.convert("L"),
        "gray_alpha.png": cat.convert("LA"),
        "rgba.png": cat.convert("RGBA"),
        "palette.gif": cat.convert("P"),
        "palette_transparent.png": cat.quantize(64),
        "cmyk.jpg": cat.convert("CMYK"),
        "gray16.png": Image.fromarray((np.asarray(cat.convert("L")).astype(np.uint16) * 257
                                       + 100).astype(np.uint16)),
        "large.jpg": cat.resize((100, 80), Image.BICUBIC),
        "plain.bmp": cat,
    }
    paths = []
    for name, image in kinds.items():
        options = {"transparency": 0} if name == "palette_transparent.png" else {}
        image.save(folder / name, **options)
        paths.append(folder / name)
    # 16-bit RGB (PIL cannot write it): TensorFlow's encoder.
    (folder / "rgb16.png").write_bytes(tf.io.encode_png(
        tf.constant(pixels.astype(np.uint16) * 257)).numpy())
    # EXIF orientation 6 (rotate on display): stored pixels are classified as stored.
    exif = Image.Exif()
    exif[0x0112] = 6
    cat.save(folder / "exif_rotated.jpg", exif=exif, quality=95)
    # Animated: the first frame counts.
    frames = [cat.convert("P"), Image.fromarray(255 - pixels).convert("P")]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    return paths + [folder / "rgb16.png", folder / "exif_rotated.jpg", folder / "animated.gif"]


def test_every_kind_of_image_is_classified_as_serving_bytes_classifies_it(tmp_path):
    """Grey, grey+alpha, RGBA, palette (and with transparency), CMYK, 16-bit grey and RGB,
    EXIF-rotated, animated, BMP, another size: ``predict`` (both formats) gives what the
    SavedModel's ``serving_bytes`` signature gives for the same file's bytes."""
    import json

    import numpy as np
    import tensorflow as tf

    paths = _image_kinds(tmp_path)
    model = os.path.join(ROOT, "exported", "cm_vanilla")
    served = tf.saved_model.load(os.path.join(model, "saved_model", "1"))
    serve_bytes = served.signatures["serving_bytes"]
    expected = serve_bytes(image_bytes=tf.constant(
        [open(p, "rb").read() for p in paths]))["probabilities"].numpy()
    # The control: the kinds are not all the same image after decoding (compared in log
    # probabilities: the shipped model is sure of this cat whatever its colours).
    assert len({tuple(np.round(np.log(np.maximum(row, 1e-30)), 1)) for row in expected}) > 3
    for fmt, tolerance in (("saved_model", 1e-5), ("tflite", 1e-4)):
        result = run_cli("predict", *paths, "--model", model, "--format", fmt, "--json",
                         "--top-k", "10")
        assert result.returncode == 0, result.stderr[-3000:]
        got = np.zeros_like(expected)
        for row, item in enumerate(json.loads(result.stdout)):
            for guess in item["top_k"]:
                got[row, guess["class_id"]] = guess["probability"]
        worst = np.abs(got - expected).max(axis=1)
        # Decoding is exact; another size goes through PIL's and TensorFlow's bilinear
        # resizes, equal to within one grey level (the rounding), so its bound is wider.
        bounds = np.array([1e-2 if p.name == "large.jpg" else tolerance for p in paths])
        assert (worst < bounds).all(), dict(zip(map(os.path.basename, paths), worst))
        assert (got.argmax(1) == expected.argmax(1)).all()
