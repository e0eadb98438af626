"""Datasets as read from their sources: tfds CIFAR, the official CIFAR files on disk (a
folder or the .tar.gz as downloaded), or an image-folder tree.

Everything is decoded once into uint8 numpy arrays ``[N, H, W, 3]`` with int32 labels,
so the same arrays feed the tf.data pipeline (TensorFlow backend) and the on-device
pipeline of other backends. The splits into train, validation and test are
``splitting.py``'s.

Every problem with the data (a missing folder, an unknown layout, a truncated batch
file, a label out of range, a corrupt image) is a ``DataError`` naming the file.
"""

import dataclasses
import os
import pickle
import socket
import tarfile

import numpy as np

from cmxl_keras import images as images_lib, progress
from cmxl_keras.errors import DataError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
RECORD_BYTES = 1 + 32 * 32 * 3  # official CIFAR-10 binary record: label byte + R, G, B planes
# What keras.utils.image_dataset_from_directory reads.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"  # the official CIFAR archives

# Layout folder names, in the order they are preferred when several are present.
FORMATS = {
    "cifar-10-batches-bin": "CIFAR-10 binary (cifar-10-batches-bin)",
    "cifar-10-batches-py": "CIFAR-10 python (cifar-10-batches-py)",
    "cifar-100-python": "CIFAR-100 python (cifar-100-python)",
    "cifar-100-binary": "CIFAR-100 binary (cifar-100-binary)",
    "images": "image folder (train/<class>/*.png|jpg)",
}


@dataclasses.dataclass
class Split:
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int32 [N]

    def __len__(self):
        return len(self.labels)


@dataclasses.dataclass
class RawData:
    """A dataset as read from its source, before the validation split."""

    train: Split
    test: Split | None
    class_names: tuple
    description: str  # which source and format was found, for the user
    skipped: int = 0  # corrupt images dropped with skip_corrupt
    dataset: str | None = None  # "cifar10" / "cifar100" when the layout says; None: images


# ----------------------------------------------------------------------------- files
class _Files:
    """Read access to the files of a folder or of a .tar.gz, by relative path."""

    def __init__(self, root):
        self.root = root
        self.archive = None
        if os.path.isfile(root):
            try:
                self.archive = tarfile.open(root)
            except (tarfile.TarError, OSError) as error:
                raise DataError(
                    f"--data-dir {root!r} is a file but not a readable .tar.gz archive "
                    f"({error}). Point --data-dir at the official CIFAR archive "
                    f"(cifar-10-python.tar.gz, cifar-10-binary.tar.gz, "
                    f"cifar-100-python.tar.gz, cifar-100-binary.tar.gz) or at the folder it "
                    f"extracts to.") from None
            self.members = {m.name.lstrip("./"): m for m in self.archive.getmembers()
                            if m.isfile()}
            self.dirs = {os.path.dirname(n) for n in self.members}
            for name in list(self.dirs):  # every ancestor is a folder too
                while name:
                    name = os.path.dirname(name)
                    self.dirs.add(name)

    def describe(self, rel):
        return f"{self.root}:{rel}" if self.archive else os.path.join(self.root, rel)

    def isdir(self, rel):
        if self.archive:
            return rel.strip("/") in self.dirs
        return os.path.isdir(os.path.join(self.root, rel))

    def exists(self, rel):
        if self.archive:
            return rel in self.members
        return os.path.isfile(os.path.join(self.root, rel))

    def listdir(self, rel):
        if self.archive:
            prefix = rel.strip("/") + "/" if rel.strip("/") else ""
            names = {n[len(prefix):].split("/")[0] for n in self.members
                     if n.startswith(prefix)}
            names |= {d[len(prefix):].split("/")[0] for d in self.dirs
                      if d.startswith(prefix) and d != rel.strip("/")}
            return sorted(n for n in names if n)
        return sorted(os.listdir(os.path.join(self.root, rel)))

    def read(self, rel):
        try:
            if self.archive:
                return self.archive.extractfile(self.members[rel]).read()
            with open(os.path.join(self.root, rel), "rb") as f:
                return f.read()
        except (OSError, tarfile.TarError, EOFError, KeyError) as error:
            raise DataError(f"cannot read {self.describe(rel)!r} ({error}); the file is "
                            f"damaged or unreadable: download or prepare it again.") from None


def _find_layout(files):
    """(format key, folder prefix) of the dataset layout found under ``files``."""
    found = []
    for key in FORMATS:
        if key == "images":
            for prefix in ("", "images"):
                if files.isdir(os.path.join(prefix, "train")):
                    found.append((key, prefix))
                    break
        elif files.isdir(key):
            found.append((key, key))
    if not found:  # the layout folder itself was given
        if files.exists("data_batch_1.bin"):
            found.append(("cifar-10-batches-bin", ""))
        elif files.exists("data_batch_1") and files.exists("batches.meta"):
            found.append(("cifar-10-batches-py", ""))
        elif files.exists("train") and files.exists("meta"):
            found.append(("cifar-100-python", ""))
        elif files.exists("train.bin") and files.exists("fine_label_names.txt"):
            found.append(("cifar-100-binary", ""))
    return found


# ----------------------------------------------------------------------------- readers
def _check_labels(labels, num_classes, where):
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(
            f"{where} holds label {int(labels[bad[0]])} at record {int(bad[0])} "
            f"({bad.size} such record(s)), outside 0..{num_classes - 1} for {num_classes} "
            f"classes. The file is corrupt or from another dataset: prepare it again.")


def _planes_to_images(planes):
    return planes.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def _require_batches(files, prefix, names, layout, archive):
    missing = [n for n in names if not files.exists(os.path.join(prefix, n))]
    if missing:
        raise DataError(
            f"{files.describe(prefix or '.')!r} looks like {layout} but lacks "
            f"{', '.join(missing)}: the dataset is partial. Extract the full {archive} again.")


def _read_cifar10_bin(files, prefix):
    names = [f"data_batch_{i}.bin" for i in range(1, 6)]
    class_names = CIFAR10_CLASSES
    meta = os.path.join(prefix, "batches.meta.txt")
    if files.exists(meta):
        listed = tuple(n.strip() for n in files.read(meta).decode().splitlines() if n.strip())
        class_names = listed or class_names

    def read(name):
        rel = os.path.join(prefix, name)
        raw = files.read(rel)
        if len(raw) == 0 or len(raw) % RECORD_BYTES:
            raise DataError(
                f"batch file {files.describe(rel)!r} is truncated or not a CIFAR-10 binary "
                f"batch: {len(raw):,} bytes is not a positive multiple of {RECORD_BYTES} "
                f"(1 label byte + 3,072 pixel bytes per image). Extract or prepare the "
                f"dataset again.")
        records = np.frombuffer(raw, np.uint8).reshape(-1, RECORD_BYTES)
        labels = records[:, 0].astype(np.int32)
        _check_labels(labels, len(class_names), f"batch file {files.describe(rel)!r}")
        return Split(_planes_to_images(records[:, 1:]), labels)

    _require_batches(files, prefix, names, "cifar-10-batches-bin", "cifar-10-binary.tar.gz")
    train = _concat([read(n) for n in names])
    test = read("test_batch.bin") if files.exists(os.path.join(prefix, "test_batch.bin")) else None
    return train, test, class_names


def _unpickle(files, rel):
    try:
        return pickle.loads(files.read(rel), encoding="bytes")
    except DataError:
        raise
    except Exception as error:  # a truncated pickle raises several kinds of errors
        raise DataError(
            f"batch file {files.describe(rel)!r} cannot be unpickled ({type(error).__name__}: "
            f"{error}); it is truncated or corrupt. Extract or prepare the dataset again."
        ) from None


def _batch_split(batch, label_key, rel, num_classes, files):
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"batch file {files.describe(rel)!r} lacks the official "
                        f"b'data'/{label_key!r} entries ({error}).") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(
            f"batch file {files.describe(rel)!r} holds data of shape {data.shape} for "
            f"{len(labels)} labels; expected [N, 3072]. Prepare the dataset again.")
    _check_labels(labels, num_classes, f"batch file {files.describe(rel)!r}")
    return Split(_planes_to_images(data), labels.astype(np.int32))


def _read_cifar10_py(files, prefix):
    names = [f"data_batch_{i}" for i in range(1, 6)]
    _require_batches(files, prefix, names, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    class_names = CIFAR10_CLASSES
    meta_rel = os.path.join(prefix, "batches.meta")
    if files.exists(meta_rel):
        meta = _unpickle(files, meta_rel)
        if isinstance(meta, dict) and b"label_names" in meta:
            class_names = tuple(n.decode() for n in meta[b"label_names"])
    split = lambda n: _batch_split(_unpickle(files, os.path.join(prefix, n)), b"labels",
                                   os.path.join(prefix, n), len(class_names), files)
    train = _concat([split(n) for n in names])
    test = split("test_batch") if files.exists(os.path.join(prefix, "test_batch")) else None
    return train, test, class_names


def _read_cifar100_py(files, prefix):
    meta = _unpickle(files, os.path.join(prefix, "meta"))
    class_names = tuple(n.decode() for n in meta.get(b"fine_label_names", [])) or tuple(
        str(i) for i in range(100))
    split = lambda n: _batch_split(_unpickle(files, os.path.join(prefix, n)), b"fine_labels",
                                   os.path.join(prefix, n), len(class_names), files)
    test = split("test") if files.exists(os.path.join(prefix, "test")) else None
    return split("train"), test, class_names


CIFAR100_RECORD_BYTES = 2 + 32 * 32 * 3  # coarse label byte, fine label byte, R, G, B planes


def _read_cifar100_bin(files, prefix):
    names_rel = os.path.join(prefix, "fine_label_names.txt")
    _require_batches(files, prefix, ["train.bin", "fine_label_names.txt"], "cifar-100-binary",
                     "cifar-100-binary.tar.gz")
    class_names = tuple(n.strip() for n in files.read(names_rel).decode().splitlines()
                        if n.strip())

    def read(name):
        rel = os.path.join(prefix, name)
        data = np.frombuffer(files.read(rel), dtype=np.uint8)
        if data.size == 0 or data.size % CIFAR100_RECORD_BYTES:
            raise DataError(
                f"batch file {files.describe(rel)!r} has {data.size} bytes, not a whole "
                f"number of {CIFAR100_RECORD_BYTES}-byte CIFAR-100 records (coarse label, fine "
                f"label, 3072 pixels): it is truncated. Extract the dataset again.")
        records = data.reshape(-1, CIFAR100_RECORD_BYTES)
        labels = records[:, 1].astype(np.int32)  # the fine label: the 100 classes
        _check_labels(labels, len(class_names), f"batch file {files.describe(rel)!r}")
        return Split(_planes_to_images(records[:, 2:]), labels)

    test = read("test.bin") if files.exists(os.path.join(prefix, "test.bin")) else None
    return read("train.bin"), test, class_names


def channel_stats(images):
    """Per-channel mean and standard deviation, in [0, 1], over every pixel of ``images``
    (uint8 ``[N, H, W, 3]``): the normalization statistics, as the reference's
    ``Normalize`` constants are defined. Accumulated in float64, one chunk at a time."""
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    for start in range(0, len(images), 4096):
        chunk = images[start:start + 4096].reshape(-1, 3).astype(np.float64) / 255.0
        total += chunk.sum(0)
        squares += (chunk ** 2).sum(0)
        count += len(chunk)
    mean = total / count
    return mean, np.sqrt(squares / count - mean ** 2)


def _read_image_split(files, folder, image_size, skip_corrupt, class_names=None):
    if not files.isdir(folder):
        return None, (), 0
    classes = class_names or tuple(c for c in files.listdir(folder)
                                   if files.isdir(os.path.join(folder, c)))
    if not classes:
        raise DataError(
            f"image folder {files.describe(folder)!r} has no class sub-folders; expected "
            f"{folder}/<class name>/*.png|jpg, one folder per class.")
    images, labels, skipped = [], [], 0
    for label, name in enumerate(classes):
        class_dir = os.path.join(folder, name)
        if not files.isdir(class_dir):
            raise DataError(
                f"{files.describe(folder)!r} has no folder for class {name!r}, which the "
                f"training split has; every split needs the same class folders.")
        names = [n for n in files.listdir(class_dir) if n.lower().endswith(IMAGE_EXTENSIONS)]
        if not names:
            raise DataError(
                f"class folder {files.describe(class_dir)!r} holds no images (.png, .jpg, "
                f".jpeg, .bmp). Remove the empty class folder or add its images.")
        for fname in progress.bar(names, desc=f"decode {name}", unit="image"):
            rel = os.path.join(class_dir, fname)
            try:
                images.append(images_lib.decode_image(files.read(rel), files.describe(rel), image_size))
            except DataError:
                if not skip_corrupt:
                    raise
                skipped += 1
                continue
            labels.append(label)
    if not images:
        raise DataError(f"no readable images under {files.describe(folder)!r}.")
    return Split(np.stack(images), np.asarray(labels, np.int32)), classes, skipped


def _read_image_folder(files, prefix, image_size, skip_corrupt):
    train, classes, skipped = _read_image_split(
        files, os.path.join(prefix, "train"), image_size, skip_corrupt)
    test, _, skipped_test = _read_image_split(
        files, os.path.join(prefix, "test"), image_size, skip_corrupt, classes)
    return train, test, classes, skipped + skipped_test


def _concat(splits):
    return Split(np.concatenate([s.images for s in splits]),
                 np.concatenate([s.labels for s in splits]))


def read_data_dir(path, image_size=32, skip_corrupt=False):
    """Reads a dataset from a folder or a .tar.gz, detecting its layout."""
    if not os.path.exists(path):
        raise DataError(
            f"--data-dir {path!r} does not exist. Give the folder that holds "
            f"cifar-10-batches-bin, cifar-10-batches-py, cifar-100-python, cifar-100-binary or train/<class>/ "
            f"images (or the official .tar.gz from {OFFICIAL_URL}, as downloaded).")
    files = _Files(path)
    found = _find_layout(files)
    if not found:
        listing = files.listdir("")[:8] if files.isdir("") or files.archive else []
        raise DataError(
            f"no known dataset layout in --data-dir {path!r} (it holds: "
            f"{', '.join(listing) if listing else 'nothing'}). Expected one of: "
            f"cifar-10-batches-bin/, cifar-10-batches-py/, cifar-100-python/, cifar-100-binary/, or an image "
            f"folder train/<class>/*.png|jpg (optional test/), or the official .tar.gz.")
    key, prefix = found[0]
    skipped = 0
    if key == "cifar-10-batches-bin":
        train, test, classes = _read_cifar10_bin(files, prefix)
    elif key == "cifar-10-batches-py":
        train, test, classes = _read_cifar10_py(files, prefix)
    elif key == "cifar-100-python":
        train, test, classes = _read_cifar100_py(files, prefix)
    elif key == "cifar-100-binary":
        train, test, classes = _read_cifar100_bin(files, prefix)
    else:
        train, test, classes, skipped = _read_image_folder(files, prefix, image_size,
                                                           skip_corrupt)
    also = [FORMATS[k] for k, _ in found[1:]]
    description = f"{FORMATS[key]} in {path}" + (f" (also present: {'; '.join(also)})"
                                                 if also else "")
    dataset = "cifar100" if key.startswith("cifar-100") else (
        "cifar10" if key.startswith("cifar-10") else None)
    return RawData(train, test, tuple(classes), description, skipped, dataset)


# ----------------------------------------------------------------------------- tfds
# tfds downloads prepared data from Google Cloud Storage, else the CIFAR archive from its
# homepage. Without a network its download path retries for minutes: probe both hosts with
# a short timeout first and fail fast with the --data-dir advice.
TFDS_HOSTS = (("storage.googleapis.com", 443), ("www.cs.toronto.edu", 443))


def _network_reachable(timeout=3.0):
    # CMXL_OFFLINE=1 says there is no network without probing (air-gapped machines, tests).
    if os.environ.get("CMXL_OFFLINE", "") not in ("", "0"):
        return False
    for host, port in TFDS_HOSTS:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        except OSError:
            continue
    return False


def read_tfds(name, tfds_dir=None):
    """Reads a tfds dataset (cifar10, cifar100) into numpy, downloading it if needed."""
    import tensorflow_datasets as tfds

    offline_advice = (
        f"Point --data-dir at the official files instead: download the python version "
        f"of the archive from {OFFICIAL_URL} where there is a network, then e.g. "
        f"'python cli.py train --data-dir /path/to/{name.replace('cifar', 'cifar-')}-python.tar.gz' "
        f"(the .tar.gz as it is, or the folder it unpacks to).")
    try:
        builder = tfds.builder(name, data_dir=tfds_dir)
    except Exception as error:
        raise DataError(f"tensorflow-datasets has no dataset {name!r} ({error}). Use "
                        f"cifar10 or cifar100, or --data-dir.") from None
    if not builder.is_prepared():
        if not _network_reachable():
            raise DataError(
                f"dataset {name!r} is not in the tensorflow-datasets cache "
                f"({builder.data_dir}) and there is no network to download it. "
                + offline_advice)
        try:
            builder.download_and_prepare()
        except Exception as error:  # network errors come in many types
            raise DataError(f"downloading {name!r} with tensorflow-datasets failed "
                            f"({type(error).__name__}: {error}). " + offline_advice) from None
    arrays = tfds.as_numpy(builder.as_dataset(split=["train", "test"], as_supervised=True,
                                              batch_size=-1))
    (train_x, train_y), (test_x, test_y) = arrays
    classes = tuple(builder.info.features["label"].names)
    return RawData(Split(train_x.astype(np.uint8), train_y.astype(np.int32)),
                   Split(test_x.astype(np.uint8), test_y.astype(np.int32)), classes,
                   f"tensorflow-datasets {name!r} ({builder.data_dir})", dataset=name)


