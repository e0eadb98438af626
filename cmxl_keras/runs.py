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
      checkpoints/state.json     where last.weights.h5 stands (epoch, step, best); a
                                 readable copy of what each checkpoint holds sealed inside
      checkpoints/damaged/       files a resume found damaged, set aside (never deleted)
      .lock                      the lock of the process training in it (while it runs)
      checkpoints/best.keras     best validation accuracy so far
      model.keras                final model, uncompiled, built-in layers only
      augmentations.png          a grid of augmented training images
      tensorboard/               logs for `tensorboard --logdir runs`

Every file is written to a temporary name in the same folder and renamed into place,
so a crash leaves either the old file or the new one, never half a file. A checkpoint
also carries its own position (step, epoch, best accuracy) and a SHA-256 digest of its
arrays inside the HDF5 file (``checkpoints.seal_checkpoint``), so a file truncated or bit-flipped
later (a full disk at copy time, a bad sync) is recognized as damaged instead of being
loaded, and each checkpoint says where it stands without trusting a second file.
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

from cmxl_keras.errors import RunError, RunInUse

PACKAGES = ("tensorflow", "keras", "keras-cv", "tensorflow-datasets", "tensorboard",
            "numpy", "jax", "jaxlib", "click")
TMP_SUFFIX = ".partial"  # temporary files are hidden and marked: no loader picks them up
LOCK_NAME = ".lock"


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
            json.dump(data, f, indent=2, sort_keys=False, default=json_default)
            f.write("\n")


def write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def write_png(path, array):
    """An image array (uint8 [H, W, C]) as a PNG file, written atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def read_json(path, default=None):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def json_default(value):
    """``json.dump``'s ``default``: numpy arrays and scalars as lists and numbers, anything
    else as its string."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


class RunLock:
    """An exclusive lock on a run folder for as long as one process trains in it.

    ``flock`` on ``<run>/.lock``: the kernel releases it when the process ends in any
    way (a SIGKILL or a crash included), so a dead process never leaves a stale lock,
    and a second process (a ``--resume`` started twice, a scheduler re-launching a job
    that is still running) is refused instead of overwriting the first one's
    checkpoints. The file holds the holder's PID and command for the refusal message.
    """

    def __init__(self, folder, argv=None):
        self.folder = folder
        self.argv = list(argv or sys.argv)
        self.fd = None

    def __enter__(self):
        import fcntl

        os.makedirs(self.folder, exist_ok=True)
        self.path = os.path.join(self.folder, LOCK_NAME)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunInUse(
                    f"run folder {self.folder!r} is in use by another process (PID "
                    f"{holder.get('pid', '?')} on {holder.get('host', '?')}, running: "
                    f"{holder.get('command', '?')}). Two processes training one folder "
                    f"overwrite each other's checkpoints. Wait for it to finish, stop it "
                    f"(kill {holder.get('pid', 'PID')}; it saves and can be resumed), or "
                    f"give this run another --run-dir.") from None
            # The holder before us removes the file as it lets go: a lock on a file that
            # is no longer at the path locks nothing, so take the one now there.
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": platform.node(),
                                 "command": " ".join(self.argv),
                                 "since": datetime.datetime.now().isoformat()}).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            # Removed while still held (a clean exit leaves the folder as it was; a
            # killed process leaves the file, unlocked, for the next one to take).
            with contextlib.suppress(OSError):
                os.remove(self.path)
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None


def _read_holder(fd):
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 65536).decode() or "{}")
    except (OSError, ValueError):
        return {}


def new_run_dir(runs_dir, name, run_dir=None, overwrite=False, held=None, argv=None):
    """Creates the folder of a new run; refuses to reuse a folder unless asked, and
    refuses a folder another process trains in even then. With ``held`` (an
    ``ExitStack``), the folder's ``RunLock`` is taken and stays held by it."""
    if run_dir is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = os.path.join(runs_dir, f"{name}-{stamp}")
    existing = ([n for n in os.listdir(run_dir) if n != LOCK_NAME]
                if os.path.isdir(run_dir) else [])
    if existing and not overwrite:
        raise RunError(
            f"run folder {run_dir!r} already exists and is not empty. Resume it with "
            f"--resume {run_dir}, choose another --run-dir, or pass --overwrite to "
            f"replace it.")
    try:
        if held is not None:
            held.enter_context(RunLock(run_dir, argv))  # before anything is removed
        import shutil

        for entry in existing:  # the lock file stays: removing it would split the lock
            path = os.path.join(run_dir, entry)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
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


def newest_finished_run(runs_dir):
    """The run folder under ``runs_dir`` that finished last (it has model.keras and
    results.json), or None."""
    finished = []
    if os.path.isdir(runs_dir):
        for name in os.listdir(runs_dir):
            folder = os.path.join(runs_dir, name)
            results = os.path.join(folder, "results.json")
            if os.path.isfile(results) and os.path.isfile(os.path.join(folder, "model.keras")):
                finished.append((os.path.getmtime(results), folder))
    return max(finished)[1] if finished else None


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


def package_versions(packages=PACKAGES):
    """``{package: installed version, or None}``."""
    versions = {}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def environment():
    versions = package_versions()
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


def set_aside(path, damaged_dir):
    """Moves a damaged file into ``damaged_dir`` under a timestamped name; returns it."""
    os.makedirs(damaged_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = os.path.join(damaged_dir, f"{stamp}-{os.path.basename(path)}")
    os.replace(path, target)
    return target
