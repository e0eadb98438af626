"""Run folders: what a run writes so that it can be understood, resumed and reproduced.

    runs/<name>-<YYYYmmdd-HHMMSS>/
      config.toml, config.json   resolved config
      command.txt                the command line
      env.json                   git commit, package versions, backend, devices
      split.json                 the data split (source, seed, sizes, index digests)
      metrics.json               one entry per finished epoch
      results.json               final results
      checkpoints/last.weights.h5  model + optimizer state, for --resume
      checkpoints/good.weights.h5  the last finished epoch's copy (kept after a NaN)
      checkpoints/state.json     where last.weights.h5 stands (epoch, step, best)
      checkpoints/best.keras     best validation accuracy so far
      model.keras                final model, uncompiled, built-in layers only
      augmentations.png          a grid of augmented training images
      tensorboard/               logs for `tensorboard --logdir runs`

Every file is written to a temporary name in the same folder and renamed into place,
so a crash leaves either the old file or the new one, never half a file.
"""

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile

from cmxl_keras.errors import RunError

PACKAGES = ("tensorflow", "keras", "keras-cv", "tensorflow-datasets", "tensorboard",
            "numpy", "jax", "jaxlib", "click")
TMP_SUFFIX = ".partial"  # temporary files are hidden and marked: no loader picks them up


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside ``path``; renames it onto ``path`` on success.

    The temporary name keeps the extension (Keras checks it) and ends in a marker no
    loader picks up. On error the temporary file is removed and ``path`` is untouched.
    """
    folder, name = os.path.split(os.path.abspath(path))
    root, _, ext = name.partition(".")  # keep compound extensions: last.weights.h5
    fd, tmp = tempfile.mkstemp(prefix=f".{root}{TMP_SUFFIX}-", suffix=f".{ext}" if ext else "",
                               dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make run files private
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the bytes are on disk before the rename makes them visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_partials(folder):
    """Deletes temporary files a killed process left behind in ``folder``; returns them."""
    removed = []
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(".") and TMP_SUFFIX + "-" in name:
                os.remove(os.path.join(folder, name))
                removed.append(name)
    return removed


def copy_atomic(source, destination):
    import shutil

    with atomic_path(destination) as tmp:
        shutil.copyfile(source, tmp)


def write_json(path, data):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")


def write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def read_json(path, default=None):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def new_run_dir(runs_dir, name, run_dir=None, overwrite=False):
    """Creates the folder of a new run; refuses to reuse a folder unless asked."""
    if run_dir is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = os.path.join(runs_dir, f"{name}-{stamp}")
    if os.path.exists(run_dir) and os.listdir(run_dir):
        if not overwrite:
            raise RunError(
                f"run folder {run_dir!r} already exists and is not empty. Resume it with "
                f"--resume {run_dir}, choose another --run-dir, or pass --overwrite to "
                f"replace it.")
        import shutil

        shutil.rmtree(run_dir)
    try:
        os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
        probe = os.path.join(run_dir, ".write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise RunError(
            f"cannot write the run folder {run_dir!r} ({error.strerror or error}). Choose a "
            f"writable place with --runs-dir DIR or --run-dir DIR.") from None
    return run_dir


def git_commit():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment():
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    import keras

    return {"git_commit": git_commit(), "python": sys.version.split()[0],
            "platform": platform.platform(), "keras_backend": keras.backend.backend(),
            "packages": versions, "started": datetime.datetime.now().isoformat()}


def write_run_metadata(run_dir, cfg, argv, split_info):
    write_text(os.path.join(run_dir, "config.toml"), cfg.to_toml())
    write_json(os.path.join(run_dir, "config.json"), cfg.to_dict())
    write_text(os.path.join(run_dir, "command.txt"), " ".join(argv) + "\n")
    write_json(os.path.join(run_dir, "env.json"), environment())
    write_json(os.path.join(run_dir, "split.json"), split_info)


def checkpoint_paths(run_dir):
    folder = os.path.join(run_dir, "checkpoints")
    return {"last": os.path.join(folder, "last.weights.h5"),
            "good": os.path.join(folder, "good.weights.h5"),
            "best": os.path.join(folder, "best.keras"),
            "state": os.path.join(folder, "state.json")}
