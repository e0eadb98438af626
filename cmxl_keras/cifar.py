"""The official CIFAR-10 and CIFAR-100 files (python pickles and binary records) read into
uint8 images ``[N, 32, 32, 3]`` and int32 labels, with their class names.

Each reader takes an ``archives.Files`` and the layout folder inside it, and returns
``(train, test, class_names)``: ``train`` and ``test`` are ``(images, labels)`` pairs
(``test`` None where the test batch is absent). A truncated batch, a label out of range
or a missing batch is a ``DataError`` naming the file.
"""

import os
import pickle

import numpy as np

from cmxl_keras.errors import DataError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
RECORD_BYTES = 1 + 32 * 32 * 3  # official CIFAR-10 binary record: label byte + R, G, B planes
CIFAR100_RECORD_BYTES = 2 + 32 * 32 * 3  # coarse label byte, fine label byte, R, G, B planes


def _check_labels(labels, num_classes, where):
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(
            f"{where} holds label {int(labels[bad[0]])} at record {int(bad[0])} "
            f"({bad.size} such record(s)), outside 0..{num_classes - 1} for {num_classes} "
            f"classes. The file is corrupt or from another dataset: prepare it again.")


def _planes_to_images(planes):
    return planes.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def _concat(pairs):
    return (np.concatenate([images for images, _ in pairs]),
            np.concatenate([labels for _, labels in pairs]))


def _require_batches(files, prefix, names, layout, archive):
    missing = [n for n in names if not files.exists(os.path.join(prefix, n))]
    if missing:
        raise DataError(
            f"{files.describe(prefix or '.')!r} looks like {layout} but lacks "
            f"{', '.join(missing)}: the dataset is partial. Extract the full {archive} again.")


def _records(files, rel, record_bytes, name):
    """The fixed-size records of a binary batch file, ``[N, record_bytes]`` uint8."""
    raw = np.frombuffer(files.read(rel), np.uint8)
    if raw.size == 0 or raw.size % record_bytes:
        size = "no bytes" if raw.size == 0 else (
            f"{raw.size:,} bytes, not a whole number of {record_bytes}-byte {name} records")
        raise DataError(
            f"batch file {files.describe(rel)!r} is truncated or not a {name} binary batch: "
            f"it holds {size} (label byte(s), then 3,072 pixel bytes per image). Extract or "
            f"prepare the dataset again.")
    return raw.reshape(-1, record_bytes)


def _names_file(files, rel):
    return tuple(n.strip() for n in files.read(rel).decode().splitlines() if n.strip())


def read_cifar10_bin(files, prefix):
    names = [f"data_batch_{i}.bin" for i in range(1, 6)]
    _require_batches(files, prefix, names, "cifar-10-batches-bin", "cifar-10-binary.tar.gz")
    meta = os.path.join(prefix, "batches.meta.txt")
    class_names = (files.exists(meta) and _names_file(files, meta)) or CIFAR10_CLASSES

    def read(name):
        rel = os.path.join(prefix, name)
        records = _records(files, rel, RECORD_BYTES, "CIFAR-10")
        labels = records[:, 0].astype(np.int32)
        _check_labels(labels, len(class_names), f"batch file {files.describe(rel)!r}")
        return _planes_to_images(records[:, 1:]), labels

    test = read("test_batch.bin") if files.exists(os.path.join(prefix, "test_batch.bin")) else None
    return _concat([read(n) for n in names]), test, class_names


def read_cifar100_bin(files, prefix):
    _require_batches(files, prefix, ["train.bin", "fine_label_names.txt"], "cifar-100-binary",
                     "cifar-100-binary.tar.gz")
    class_names = _names_file(files, os.path.join(prefix, "fine_label_names.txt"))

    def read(name):
        rel = os.path.join(prefix, name)
        records = _records(files, rel, CIFAR100_RECORD_BYTES, "CIFAR-100")
        labels = records[:, 1].astype(np.int32)  # the fine label: the 100 classes
        _check_labels(labels, len(class_names), f"batch file {files.describe(rel)!r}")
        return _planes_to_images(records[:, 2:]), labels

    test = read("test.bin") if files.exists(os.path.join(prefix, "test.bin")) else None
    return read("train.bin"), test, class_names


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


def _pickled_batch(files, rel, label_key, num_classes):
    batch = _unpickle(files, rel)
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
    return _planes_to_images(data), labels.astype(np.int32)


def read_cifar10_py(files, prefix):
    names = [f"data_batch_{i}" for i in range(1, 6)]
    _require_batches(files, prefix, names, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    class_names = CIFAR10_CLASSES
    meta_rel = os.path.join(prefix, "batches.meta")
    if files.exists(meta_rel):
        meta = _unpickle(files, meta_rel)
        if isinstance(meta, dict) and b"label_names" in meta:
            class_names = tuple(n.decode() for n in meta[b"label_names"])

    def read(name):
        return _pickled_batch(files, os.path.join(prefix, name), b"labels", len(class_names))

    test = read("test_batch") if files.exists(os.path.join(prefix, "test_batch")) else None
    return _concat([read(n) for n in names]), test, class_names


def read_cifar100_py(files, prefix):
    meta = _unpickle(files, os.path.join(prefix, "meta"))
    class_names = tuple(n.decode() for n in meta.get(b"fine_label_names", [])) or tuple(
        str(i) for i in range(100))

    def read(name):
        return _pickled_batch(files, os.path.join(prefix, name), b"fine_labels",
                              len(class_names))

    test = read("test") if files.exists(os.path.join(prefix, "test")) else None
    return read("train"), test, class_names


# Layout folder name -> its reader, in the order layouts are preferred when several are present.
READERS = {
    "cifar-10-batches-bin": read_cifar10_bin,
    "cifar-10-batches-py": read_cifar10_py,
    "cifar-100-python": read_cifar100_py,
    "cifar-100-binary": read_cifar100_bin,
}
