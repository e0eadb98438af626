"""Every kind of bad input to the CLI (``cli.py`` and ``python -m reproduce``): a clear
one-paragraph error, no traceback, no change.

Each row runs the real CLI in a scratch folder and checks: a non-zero exit, the bad value
and the fix named in the message, no Python traceback, and no file created or changed.
"""

import json
import os

import numpy as np
import pytest

from conftest import ROOT, png_bomb, random_images, run_cli, run_reproduce

RESULTS = []


def _write_bin(path, n=10, bad_label_at=None):
    images = random_images(n)
    labels = np.arange(n, dtype=np.uint8) % 10
    if bad_label_at is not None:
        labels[bad_label_at] = 12
    planes = images.transpose(0, 3, 1, 2).reshape(n, 3072)
    np.concatenate([labels[:, None], planes], 1).tofile(path)


def _bin_dir(root, truncate=False, bad_label=False):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _write_bin(folder / f"data_batch_{i}.bin", bad_label_at=3 if bad_label and i == 2 else None)
    if truncate:
        with open(folder / "data_batch_4.bin", "r+b") as f:
            f.truncate(3073 * 2 + 7)
    return root


def _image_dir(root, bad=None):
    from PIL import Image

    for cls in ("cat", "dog"):
        (root / "train" / cls).mkdir(parents=True)
        Image.fromarray(random_images(1)[0]).save(root / "train" / cls / "ok.png")
    if bad == "corrupt":
        (root / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif bad == "empty":
        (root / "train" / "dog" / "zero.jpg").write_bytes(b"")
    elif bad == "bomb":
        (root / "train" / "dog" / "bomb.png").write_bytes(png_bomb(20000, 20000))
    return root


def _bomb(root, width=20000, height=20000):
    (root / "bomb.png").write_bytes(png_bomb(width, height))
    return root / "bomb.png"


def _run_folder(root, depth=4):
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    from cmxl_keras import settings

    cfg = settings.load("smoke").replace(depth=depth)
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run / "checkpoints" / "state.json").write_text(json.dumps({"step": 8}))
    (run / "metrics.json").write_text("[]")
    return run


def _bare_run(root):
    """A run folder killed before its first write: only the folder and checkpoints/."""
    run = root / "bare"
    (run / "checkpoints").mkdir(parents=True)
    return run


def _finished_ablation(root):
    """An ablation folder whose first run finished with other epochs than the CPU scale's."""
    from cmxl_keras import ablation

    run = root / "ablation" / "cm_vanilla_noaug"
    run.mkdir(parents=True)
    cfg = ablation.scaled_config("cm_vanilla_noaug", "cpu").replace(epochs=1)
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run / "results.json").write_text("{}")
    return root / "ablation"


def _cifar100_dir(root):
    from test_data import write_cifar100

    return write_cifar100(str(root / "c100"), layouts=("binary",), n_train=20, n_test=10)


def _trained_keras(root):
    """A .keras model file (a tiny smoke model, never trained), outside any run folder."""
    from cmxl_keras import models

    path = root / "tiny.keras"
    models.build_convmixer(width=8, depth=1, patch_size=4, kernel_size=3).save(path)
    return path


def _damaged_run(root):
    """A run folder (with its data) whose only checkpoint is cut short (a full disk at
    copy time)."""
    run = _run_folder(root)
    from cmxl_keras import settings

    cfg = settings.load("smoke").replace(data_dir=str(_bin_dir(root / "d")), limit_train=32,
                                       val_from_train=10)
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run / "checkpoints" / "last.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    return run


def _exported(root, metadata=None, damage=None):
    """An exported folder: a made-up metadata.json (or ``metadata``'s text), and with
    ``damage`` the shipped model's files with that one overwritten by garbage."""
    folder = root / "exported" / "m"
    if damage:
        import shutil

        shutil.copytree(os.path.join(ROOT, "exported", "cm_vanilla"), folder)
        (folder / damage).write_bytes(b"\x00garbage" * 100)
        return folder
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(metadata or json.dumps({
        "class_names": [str(i) for i in range(10)], "input": {"shape": [None, 32, 32, 3]}}))
    return folder


def _truncated_png(root):
    from PIL import Image

    path = root / "cut.png"
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:60])
    return path


def _gray_png(root):
    from PIL import Image

    path = root / "gray.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(path)
    return path


def _toml(root, text):
    path = root / "c.toml"
    path.write_text(text)
    return path


# (id, setup(root) -> args or (args, environment), substrings the message must contain: the value and the fix)
CASES = [
    ("depth zero", lambda r: ["train", "--depth", "0"], ["got 0", "--depth"]),
    ("depth negative", lambda r: ["train", "--depth", "-3"], ["got -3"]),
    ("depth not an integer", lambda r: ["train", "--depth", "2.5"], ["'2.5' is not a valid integer"]),
    ("width zero", lambda r: ["train", "--width", "0"], ["width must be an integer >= 1, got 0"]),
    ("width negative", lambda r: ["info", "--width", "-8"], ["got -8"]),
    ("width not an integer", lambda r: ["train", "--width", "1.5"],
     ["'1.5' is not a valid integer"]),
    ("patch zero", lambda r: ["train", "--patch-size", "0"], ["patch_size", "got 0"]),
    ("patch negative", lambda r: ["train", "--patch-size", "-2"], ["patch_size", "got -2"]),
    ("patch not an integer", lambda r: ["train", "--set", "patch_size=two"],
     ["patch_size='two'", "integer"]),
    ("kernel negative", lambda r: ["info", "--kernel-size", "-5"], ["kernel_size", "got -5"]),
    ("kernel zero", lambda r: ["train", "--kernel-size", "0"], ["kernel_size", "got 0"]),
    ("kernel not an integer", lambda r: ["train", "--set", "kernel_size=3.5"],
     ["kernel_size='3.5'", "integer"]),
    ("depth vs skip_period", lambda r: ["train", "--depth", "65", "--skip-period", "3"],
     ["depth 65 is not divisible by skip_period 3", "Use a skip_period in"]),
    ("patch vs image size", lambda r: ["train", "--patch-size", "5"],
     ["image size 32 is not divisible by patch_size 5", "Choose a patch_size"]),
    ("unknown activation", lambda r: ["train", "--act", "tanh"], ["'tanh'", "gelu, relu"]),
    ("unknown variant", lambda r: ["info", "--variant", "cm_huge"], ["'cm_huge'", "cm_xl"]),
    ("malformed config", lambda r: ["train", "--config", _toml(r, "depth = [8")],
     ["not valid TOML", "key = value"]),
    ("empty config", lambda r: ["train", "--config", _toml(r, "")], ["is empty"]),
    ("unknown config key", lambda r: ["train", "--config", _toml(r, "dpeth = 8\n")],
     ["unknown config key 'dpeth'", "Did you mean 'depth'"]),
    ("config key wrong type", lambda r: ["train", "--config", _toml(r, 'epochs = "ten"\n')],
     ["'epochs'", "'ten'", "must be an integer"]),
    ("missing config file", lambda r: ["train", "--config", "nope_cfg"],
     ["'nope_cfg' not found", "smoke"]),
    ("--set wrong type", lambda r: ["train", "--set", "lr_max=fast"], ["lr_max='fast'", "number"]),
    ("--set unknown key", lambda r: ["train", "--set", "lr=0.1"], ["unknown config key 'lr'"]),
    ("--set without =", lambda r: ["train", "--set", "epochs"], ["expects key=value"]),
    ("value out of range", lambda r: ["train", "--set", "erase_prob=2"],
     ["'erase_prob' has value 2.0", "between 0.0 and 1.0"]),
    ("missing data dir", lambda r: ["train", "--config", "smoke", "--data-dir", r / "nodata"],
     ["does not exist", "www.cs.toronto.edu/~kriz/cifar.html"]),
    ("empty data dir", lambda r: ["train", "--config", "smoke", "--data-dir", r],
     ["no known dataset layout", "cifar-10-batches-bin"]),
    ("unknown data format", lambda r: ["train", "--config", "smoke", "--data-dir",
                                       (r / "x.csv").write_text("a,b") and r],
     ["no known dataset layout", "x.csv"]),
    ("truncated batch file", lambda r: ["train", "--config", "smoke", "--data-dir",
                                        _bin_dir(r, truncate=True)],
     ["data_batch_4.bin", "truncated", "prepare the dataset again"]),
    ("labels out of range", lambda r: ["train", "--config", "smoke", "--data-dir",
                                       _bin_dir(r, bad_label=True)],
     ["label 12 at record 3", "data_batch_2.bin"]),
    ("corrupt image", lambda r: ["train", "--config", "smoke", "--data-dir",
                                 _image_dir(r, "corrupt")], ["broken.png", "skip_corrupt"]),
    ("zero-byte image", lambda r: ["train", "--config", "smoke", "--data-dir",
                                   _image_dir(r, "empty")], ["zero.jpg", "the file is empty"]),
    ("no network for tfds", lambda r: ["train", "--config", "smoke"],
     ["no network", "--data-dir"]),
    ("run dir exists", lambda r: ["train", "--config", "smoke", "--data-dir",
                                  _bin_dir(r / "d"), "--val-from-train", "10",
                                  "--run-dir", _run_folder(r)],
     ["already exists", "--overwrite"]),
    ("resume with no whole checkpoint", lambda r: ["train", "--resume", _damaged_run(r)],
     ["no checkpoint in it loads", "last.weights.h5", "Start a new run"]),
    ("evaluate missing source", lambda r: ["evaluate", r / "none"],
     ["none' does not exist", "a run folder, a .keras file"]),
    ("evaluate unknown split", lambda r: ["evaluate", r, "--split", "train"],
     ["'train' is not one of 'val', 'test', 'all'"]),
    ("report of a non-run", lambda r: ["report", r / "norun", "--out", r / "rep"],
     ["norun' has no metrics.json", "cli.py train"]),
    ("ablation bad override", lambda r: ["ablation", "--set", "depth=0"], ["depth", "got 0"]),
    ("ablation bad seeds", lambda r: ["ablation", "--seeds", "1024,x"],
     ["--seeds '1024,x'", "--seeds 1024,1025,1026"]),
    ("ablation seeds twice", lambda r: ["ablation", "--seeds", "1,2", "--set", "seed=3"],
     ["--seeds 1,2 and --set seed=3", "Give one"]),
    ("ablation unknown scale", lambda r: ["ablation", "--scale", "gpu"],
     ["'gpu' is not one of 'paper', 'cpu'"]),
    ("ablation over other finished runs", lambda r: ["ablation", "--scale", "cpu",
                                                     "--out", _finished_ablation(r)],
     ["holds a finished run made with other settings", "epochs 1 (asked: 20)",
      "give another --out"]),
    ("time limit not positive", lambda r: ["train", "--config", "smoke", "--time-limit", "-5"],
     ["--time-limit -5.0", "positive number of seconds"]),
    ("time limit with several workers", lambda r: ["train", "--config", "smoke", "--strategy",
                                                   "multi_worker", "--time-limit", "60"],
     ["--time-limit with --strategy multi_worker", "SIGTERM saves the run"]),
    ("resume a run killed before its config", lambda r: ["train", "--resume", _bare_run(r)],
     ["stopped before it saved its config or any checkpoint", "--overwrite"]),
    ("resume missing dir", lambda r: ["train", "--resume", r / "gone"],
     ["gone'", "runs/"]),
    ("resume another architecture", lambda r: ["train", "--resume", _run_folder(r), "--depth", "6",
                                               "--skip-period", "0"],
     ["trained with another model", "depth: saved 4, now 6"]),
    ("export missing run", lambda r: ["export", r / "norun"], ["does not exist", "runs/"]),
    ("export with no finished run", lambda r: ["export", "--runs-dir", r / "runs"],
     ["no finished run", "runs/", "python cli.py train"]),
    ("export non-model file", lambda r: ["export", "--checkpoint",
                                         (r / "m.keras").write_text("no") and r / "m.keras"],
     ["cannot load", "m.keras"]),
    ("export unknown format", lambda r: ["export", r, "--formats", "pmml"], ["pmml"]),
    ("export --add to no export", lambda r: ["export", _trained_keras(r), "--formats", "onnx",
                                             "--add", "--out", r / "none"],
     ["--add", "is no export to add to", "without --add"]),
    ("serve negative drain", lambda r: ["serve", "--drain-seconds", "-1"],
     ["--drain-seconds -1", "at least 0"]),
    ("serve access log nowhere", lambda r: ["serve", "--access-log", r / "no" / "a.log"],
     ["--access-log", "a.log", "cannot be opened", "- for stderr, or off"]),
    ("predict missing image", lambda r: ["predict", r / "none.png", "--model", _exported(r)],
     ["none.png", "does not exist"]),
    ("predict non-image", lambda r: ["predict", (r / "t.png").write_text("x") and r / "t.png",
                                     "--model", _exported(r)], ["t.png", "not a readable image"]),
    ("predict decompression bomb", lambda r: ["predict", _bomb(r), "--model", _exported(r)],
     ["bomb.png", "400000000 pixels", "more than 40 megapixels", "not decoded", "Downscale"]),
    ("predict image over the pixel limit", lambda r: ["predict", _bomb(r, 8000, 6000),
                                                      "--model", _exported(r)],
     ["bomb.png", "declares 8,000 x 6,000 pixels", "48.0 megapixels", "Downscale"]),
    ("decompression bomb in the training images", lambda r: [
        "train", "--config", "smoke", "--data-dir", _image_dir(r, "bomb")],
     ["bomb.png", "more than 40 megapixels", "skip_corrupt"]),
    ("serve a folder that is not there", lambda r: ["serve", r / "gone"],
     ["gone'", "does not exist", "cli.py export"]),
    ("serve a folder that is no export", lambda r: ["serve", (r / "run").mkdir() or r / "run"],
     ["run'", "is not an exported model folder", "cli.py export"]),
    ("serve without room to batch", lambda r: ["serve", "--max-batch", "0"],
     ["--max-batch 0", "at least 1"]),
    ("serve a queue smaller than a batch", lambda r: ["serve", "--max-queue", "8"],
     ["--max-queue 8", "--max-batch 64", "Raise --max-queue"]),
    ("serve a model name no URL takes", lambda r: ["serve", "--name", "my model"],
     ["'my model'", "letters, digits"]),
    ("predict truncated PNG", lambda r: ["predict", _truncated_png(r), "--model", _exported(r)],
     ["cut.png", "not a readable image"]),
    ("predict damaged metadata", lambda r: ["predict", _gray_png(r), "--model", _exported(
        r, metadata="{not json")], ["metadata.json", "is damaged", "Export the model again"]),
    ("predict metadata without classes", lambda r: ["predict", _gray_png(r), "--model",
                                                    _exported(r, metadata='{"input": {}}')],
     ["metadata.json", "is damaged", "KeyError"]),
    ("predict damaged SavedModel", lambda r: ["predict", _gray_png(r), "--model",
                                              _exported(r, damage="saved_model/1/saved_model.pb")],
     ["saved_model/1", "cannot be loaded", "Export it again"]),
    ("predict damaged TFLite file", lambda r: ["predict", _gray_png(r), "--model",
                                               _exported(r, damage="model_fp32.tflite"),
                                               "--format", "tflite"],
     ["model_fp32.tflite", "cannot be loaded", "the other --format"]),
    ("predict not an export", lambda r: ["predict", _gray_png(r), "--model", r / "nomodel"],
     ["not an exported model folder", "cli.py export"]),
    ("unknown strategy", lambda r: ["train", "--config", "smoke", "--strategy", "tpu"],
     ["'tpu'", "multi_worker"]),
    ("multi_worker without TF_CONFIG", lambda r: (["train", "--config", "smoke", "--strategy",
                                                   "multi_worker"], {"TF_CONFIG": ""}),
     ["needs the TF_CONFIG environment variable", '"task": {"type": "worker"']),
    ("TF_CONFIG not JSON", lambda r: (["train", "--config", "smoke", "--strategy",
                                       "multi_worker"], {"TF_CONFIG": "{cluster: 1}"}),
     ["TF_CONFIG='{cluster: 1}' is not a valid cluster description", "host:port"]),
    ("TF_CONFIG task outside cluster", lambda r: (
        ["train", "--config", "smoke", "--strategy", "multi_worker"],
        {"TF_CONFIG": json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                  "task": {"type": "worker", "index": 3}})}),
     ["is not a valid cluster description (IndexError", "'index'"]),
    ("bad CMXL_CPU_DEVICES", lambda r: (["train", "--config", "smoke", "--strategy", "mirrored"],
                                        {"CMXL_CPU_DEVICES": "two"}),
     ["CMXL_CPU_DEVICES='two' is not a positive integer", "unset it"]),
    ("unknown dataset", lambda r: ["train", "--set", "dataset=imagenet"],
     ["'imagenet'", "cifar100"]),
    ("CIFAR-100 files for a CIFAR-10 run", lambda r: [
        "train", "--config", "smoke", "--data-dir", _cifar100_dir(r)],
     ["holds CIFAR-100", "--set dataset=cifar100"]),
    ("unknown pipeline", lambda r: ["train", "--config", "smoke", "--set", "pipeline=gpu"],
     ["'gpu'", "tf.data"]),
    ("CutMix on the device pipeline", lambda r: ["train", "--config", "smoke", "--set",
                                                 "pipeline=device", "--set", "cutmix_prob=0.5"],
     ["cutmix_prob=0.5", "--set pipeline=tf.data"]),
    ("unwritable output dir", lambda r: ["train", "--config", "smoke", "--data-dir",
                                         _bin_dir(r / "d"), "--val-from-train", "10",
                                         "--runs-dir",
                                         (r / "file").write_text("x") and r / "file" / "runs"],
     ["cannot write the run folder", "--runs-dir"]),
    # The reproduction's command (python -m reproduce), its errors said as cli.py's.
    ("reproduce: seeds not numbers", lambda r: ["reproduce", "compare", "--data-dir", r,
                                                "--seeds", "1204,x"],
     ["--seeds '1204,x'", "e.g. --seeds 1024,1025,1026"]),
    ("reproduce: an unknown side", lambda r: ["reproduce", "compare", "--data-dir", r, "--sides",
                                              "ours,theirs"], ["theirs", "ours,reference"]),
    ("reproduce: an unknown stage to drop", lambda r: ["reproduce", "compare", "--data-dir", r,
                                                       "--drop", "blur"], ["blur", "crop, flip"]),
    ("reproduce: one form named", lambda r: ["reproduce", "compare", "--data-dir", r, "--forms",
                                             "lossless"], ["--forms 'lossless'", "lossless,jpeg"]),
    ("reproduce: no images to compare on", lambda r: ["reproduce", "compare", "--data-dir",
                                                      r / "nodata", "--out", r / "o"],
     ["nodata"]),
    ("reproduce: a width of zero", lambda r: ["reproduce", "compare", "--data-dir", r, "--width",
                                              "0"], ["'--width'", "0 is not in the range x>=1"]),
    ("reproduce: join a folder no comparison wrote", lambda r: ["reproduce", "join", r, r,
                                                                "--out", r / "j"],
     ["holds no results.json", "a compare command wrote"]),
    ("reproduce: cross a folder no comparison wrote", lambda r: ["reproduce", "cross", r, r,
                                                                 "--out", r / "c"],
     ["holds no results.json"]),
    ("reproduce: redraw a folder no comparison wrote", lambda r: ["reproduce", "redraw", r],
     ["holds no results.json"]),
    ("reproduce: the reference's loop on no images", lambda r: [
        "reproduce", "reference-loop", "--data-dir", r / "nodata", "--run-dir", r / "ref"],
     ["nodata"]),
    ("reproduce: the reference's loop with a bad setting", lambda r: [
        "reproduce", "reference-loop", "--data-dir", _bin_dir(r / "d"), "--run-dir", r / "ref",
        "--set", "depth=0"], ["depth", "got 0"]),
    ("reproduce: the Table-1 page from no runs", lambda r: [
        "reproduce", "table1", "--results", r / "none", "--out", r / "page.md"],
     ["'--results'", "none", "does not exist"]),
    ("reproduce: gpu with an unknown phase", lambda r: ["reproduce", "gpu", "--phases",
                                                        "setup,fly", "--out", r / "o"],
     ["unknown fly", "auto, or any of setup"]),
    ("reproduce: gpu --plan without the images", lambda r: [
        "reproduce", "gpu", "--plan", "--carry", r / "carry", "--data", r / "nope.tgz"],
     ["does not exist", "train/<class>/"]),
    ("reproduce: gpu --plan and --collect", lambda r: ["reproduce", "gpu", "--plan",
                                                        "--collect", r],
     ["--plan and --collect", "give one of them"]),
]


def _snapshot(root):
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            stat = os.stat(path)
            out[path] = (stat.st_size, stat.st_mtime_ns)
    return out


@pytest.mark.parametrize("name,setup,quoted", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, setup, quoted, tmp_path):
    args, env = setup(tmp_path), {"CMXL_OFFLINE": "1"}
    if isinstance(args, tuple):  # (arguments, extra environment)
        args, extra = args
        env.update(extra)
    before = _snapshot(tmp_path)
    run = run_reproduce if args[0] == "reproduce" else run_cli
    result = run(*args[args[0] == "reproduce":], cwd=str(tmp_path), env=env, timeout=300)
    after = _snapshot(tmp_path)
    message = result.stderr.strip()
    clear = result.returncode != 0 and all(q in message for q in quoted)
    traceback = "Traceback" in result.stderr
    RESULTS.append((name, clear, traceback))
    assert result.returncode != 0, result.stdout[-2000:]
    for q in quoted:
        assert q in message, f"{q!r} not in {message!r}"
    assert not traceback, message
    # One paragraph: the error itself is a single line (click's usage lines may precede it).
    assert len([line for line in message.splitlines() if line.startswith("Error")]) == 1
    assert after == before, "files changed"


def test_the_table_covers_every_command(tmp_path):
    """Stands alone: which commands the rows above exercise, from their arguments (the
    summary line of the rows that ran is printed by conftest's terminal summary)."""
    import cli
    from reproduce.cli import cli as reproduce

    commands = set()
    for i, (name, setup, quoted) in enumerate(CASES):
        root = tmp_path / str(i)
        root.mkdir()
        args = setup(root)
        args = args[0] if isinstance(args, tuple) else args
        commands.add(" ".join(map(str, args[:2])) if args[0] == "reproduce" else str(args[0]))
        assert quoted, name
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)
    every = set(cli.cli.commands) | {f"reproduce {c}" for c in reproduce.commands}
    assert commands == every, sorted(every - commands)
