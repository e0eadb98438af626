"""Datasets as read from their sources: tfds CIFAR, the official CIFAR files on disk (a
folder or the .tar.gz as downloaded), or an image-folder tree.

Everything is decoded once into uint8 numpy arrays ``[N, H, W, 3]`` with int32 labels,
so the same arrays feed the tf.data pipeline (TensorFlow backend) and the on-device
pipeline of other backends. This module finds the layout and reads image folders and
tfds; the official CIFAR files' formats are ``cifar.py``'s, and the splits into train,
validation and test are ``splitting.py``'s.

Every problem with the data (a missing folder, an unknown layout, a truncated batch
file, a label out of range, a corrupt image) is a ``DataError`` naming the file.
"""

import collections
import dataclasses
import hashlib
import io
import os
import tarfile
import socket

import numpy as np

from cmxl_keras import archives, cifar, images as images_lib, progress
from cmxl_keras.errors import DataError

# What keras.utils.image_dataset_from_directory reads.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"  # the official CIFAR archives

# Layout folder names, in the order they are preferred when several are present
# (the CIFAR ones are ``cifar.READERS``').
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
    # Each image's name in an image folder, "<class>/<file name without extension>": what
    # pairs an image with its twin in another form (train/cat/0042.png, train/cat/0042.jpg).
    # None for the CIFAR files, whose images are known by their index.
    names: tuple | None = None

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
    images, labels, image_names, skipped = [], [], [], 0
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
                images.append(images_lib.decode_image(files.read(rel), files.describe(rel),
                                                      image_size))
            except DataError:
                if not skip_corrupt:
                    raise
                skipped += 1
                continue
            labels.append(label)
            image_names.append(f"{name}/{os.path.splitext(fname)[0]}")
    if not images:
        raise DataError(f"no readable images under {files.describe(folder)!r}.")
    if len(set(image_names)) < len(image_names):
        twice = sorted(n for n, k in collections.Counter(image_names).items() if k > 1)
        raise DataError(
            f"image folder {files.describe(folder)!r} holds {len(twice)} name(s) twice with "
            f"other extensions ({', '.join(twice[:3])}{', ...' if len(twice) > 3 else ''}): "
            f"an image is known by its class and file name without the extension. Keep one "
            f"file of each name.")
    return (Split(np.stack(images), np.asarray(labels, np.int32), tuple(image_names)),
            classes, skipped)


def _read_image_folder(files, prefix, image_size, skip_corrupt):
    train, classes, skipped = _read_image_split(
        files, os.path.join(prefix, "train"), image_size, skip_corrupt)
    test, _, skipped_test = _read_image_split(
        files, os.path.join(prefix, "test"), image_size, skip_corrupt, classes)
    return train, test, classes, skipped + skipped_test


def read_data_dir(path, image_size=32, skip_corrupt=False):
    """Reads a dataset from a folder or a .tar.gz, detecting its layout."""
    if not os.path.exists(path):
        raise DataError(
            f"--data-dir {path!r} does not exist. Give the folder that holds "
            f"cifar-10-batches-bin, cifar-10-batches-py, cifar-100-python, cifar-100-binary "
            f"or train/<class>/ images (or the official .tar.gz from {OFFICIAL_URL}, as "
            f"downloaded).")
    files = archives.Files(path)
    found = _find_layout(files)
    if not found:
        listing = files.listdir("")[:8] if files.isdir("") or files.archive else []
        raise DataError(
            f"no known dataset layout in --data-dir {path!r} (it holds: "
            f"{', '.join(listing) if listing else 'nothing'}). Expected one of: "
            f"cifar-10-batches-bin/, cifar-10-batches-py/, cifar-100-python/, "
            f"cifar-100-binary/, or an image folder train/<class>/*.png|jpg (optional test/), "
            f"or the official .tar.gz.")
    key, prefix = found[0]
    skipped = 0
    if key in cifar.READERS:
        train, test, classes = cifar.READERS[key](files, prefix)
        train, test = Split(*train), test and Split(*test)
    else:
        train, test, classes, skipped = _read_image_folder(files, prefix, image_size,
                                                           skip_corrupt)
    also = [FORMATS[k] for k, _ in found[1:]]
    description = f"{FORMATS[key]} in {path}" + (f" (also present: {'; '.join(also)})"
                                                 if also else "")
    dataset = "cifar100" if key.startswith("cifar-100") else (
        "cifar10" if key.startswith("cifar-10") else None)
    return RawData(train, test, tuple(classes), description, skipped, dataset)


# ----------------------------------------------------------------------------- twins
# One image in two forms (a lossless PNG and its JPEG, say) has one name in both image
# folders: "<class>/<file name without extension>". These find an image's twin by it.
def names_digest(names):
    """A short digest of image names in their order (as ``splitting``'s index digests)."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def select_names(raw, names, where):
    """The images named ``names`` (in that order) among ``raw``'s training and test images,
    as a ``Split``; a ``DataError`` naming ``where`` (the source asked for them) where
    ``raw`` has no names or lacks some."""
    pools = [s for s in (raw.train, raw.test) if s is not None]
    if any(s.names is None for s in pools):
        raise DataError(
            f"{raw.description} is not an image folder, so its images have no names to pair "
            f"with {where}'s; images are paired by class and file name "
            f"(train/<class>/NNNN.png with train/<class>/NNNN.jpg). Give an image folder or "
            f"its .tar.gz.")
    at = {}
    for s in pools:
        at.update((name, (s, i)) for i, name in enumerate(s.names))
    missing = [n for n in names if n not in at]
    if missing:
        raise DataError(
            f"{raw.description} lacks {len(missing):,} of the {len(names):,} images of "
            f"{where} ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): each "
            f"image is looked up by its class and file name without the extension. Give the "
            f"same images in the other form, with the same names.")
    images = np.stack([at[n][0].images[at[n][1]] for n in names])
    labels = np.asarray([at[n][0].labels[at[n][1]] for n in names], np.int32)
    return Split(images, labels, tuple(names))


def image_files(path):
    """(``{"<split>/<class>/<name>": relative path}`` of every image file of the image
    folder, or its .tar.gz, at ``path``, its train/ and test/ both, without decoding any;
    the ``archives.Files`` that reads them)."""
    files = archives.Files(path)
    found = [prefix for key, prefix in _find_layout(files) if key == "images"]
    if not found:
        raise DataError(f"{path!r} is not an image folder (train/<class>/*.png|jpg) nor its "
                        f".tar.gz; only an image folder's images have names to pair.")
    out = {}
    for part in ("train", "test"):
        folder = os.path.join(found[0], part)
        if not files.isdir(folder):
            continue
        for name in files.listdir(folder):
            if files.isdir(os.path.join(folder, name)):
                for fname in files.listdir(os.path.join(folder, name)):
                    if fname.lower().endswith(IMAGE_EXTENSIONS):
                        out[f"{part}/{name}/{os.path.splitext(fname)[0]}"] = os.path.join(
                            folder, name, fname)
    return out, files


def write_twins(names_from, source, out):
    """Writes to ``out`` (an uncompressed .tar, replaced whole) the image files of
    ``source`` named as ``names_from``'s images, each as it is (no decoding, no
    re-encoding) at its own name in ``names_from``'s layout: the same images in
    ``source``'s form, which ``read_data_dir`` reads in the same order. Returns how many."""
    wanted, _ = image_files(names_from)
    have, files = image_files(source)
    missing = sorted(set(wanted) - set(have))
    if missing:
        raise DataError(
            f"{source!r} lacks {len(missing):,} of the {len(wanted):,} images of "
            f"{names_from!r} ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
            f"twins are paired by split, class and file name without the extension.")
    tmp = f"{out}.tmp{os.getpid()}"
    with tarfile.open(tmp, "w") as tar:
        for key in sorted(wanted):
            data = files.read(have[key])
            info = tarfile.TarInfo(key + os.path.splitext(have[key])[1])
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, out)
    return len(wanted)


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
        f"'python cli.py train --data-dir "
        f"/path/to/{name.replace('cifar', 'cifar-')}-python.tar.gz' "
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


