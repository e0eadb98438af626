"""The paper's split protocol: training, validation and test arrays from a dataset.

The official test set is halved into validation and test images (``split =
"reference"``: the reference code's own halves; ``"random"``: drawn with
``split_seed``); where there is no test split (or ``val_from_train`` is set) validation
images are carved from train instead. ``limit_train`` keeps a stratified random subset.
Which images went where is recorded (``Splits.info``, the run's ``split.json``).
"""

import dataclasses
import hashlib
import os

import numpy as np

from cmxl_keras.data import Split, names_digest, read_data_dir, read_tfds
from cmxl_keras.errors import DataError


@dataclasses.dataclass
class Splits:
    """Train / validation / test arrays and how they were made."""

    train: Split
    val: Split
    test: Split | None
    class_names: tuple
    description: str
    info: dict  # recorded in the run folder: source, seed, sizes, index digests
    raw: object = None  # the RawData split (load_splits)


def _digest(indices):
    return hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest()[:16]


def _take(split, indices):
    names = split.names and tuple(split.names[i] for i in indices)
    return Split(split.images[indices], split.labels[indices], names)


def pixels_digest(images):
    """A short digest of images' pixels: the same images in another form (a JPEG of a PNG)
    have the same names but not the same digest."""
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]


def record_names(info, splits):
    """Adds to ``info`` what each part's images are: their pixels' digest, and where the
    source names them (an image folder) their names' digest and the validation images'
    names themselves, which find the same images in another form or folder (``evaluate
    --data-dir``)."""
    for part, split in splits:
        if split is not None:
            info[f"{part}_pixels_sha256"] = pixels_digest(split.images)
        if split is not None and split.names is not None:
            info[f"{part}_names_sha256"] = names_digest(split.names)
            if part == "val":
                info["val_names"] = list(split.names)


def _carve(rng, total, count):
    """Sorted indices of ``count`` random items of ``total``, and of the rest."""
    order = rng.permutation(total)
    return np.sort(order[:count]), np.sort(order[count:])


def _stratified(rng, labels, indices, count):
    """Sorted ``count`` of ``indices`` drawn at random within each class, each class
    keeping its share of ``indices`` (rounded by largest remainder): a subset of a
    class-ordered image folder holds every class, as the whole does."""
    classes, sizes = np.unique(labels[indices], return_counts=True)
    quota = sizes * count / len(indices)
    take = np.floor(quota).astype(np.int64)
    extra = np.argsort(-(quota - take), kind="stable")[:count - int(take.sum())]
    take[extra] += 1
    chosen = [rng.choice(indices[labels[indices] == c], k, replace=False)
              for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


def reference_split():
    """The reference code's (validation, test) indices into the official 10,000 test
    images (``reference_split.json``, made by torch and checked against it by a test)."""
    import json

    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "reference_split.json")) as f:
        halves = json.load(f)
    return np.array(halves["val"], np.int64), np.array(halves["test"], np.int64)


def _use_reference(raw, split, val_size):
    """Whether the test set is halved as the reference code halves it; refuses
    ``split = "reference"`` on a test set that is not the official one."""
    official = raw.dataset is not None and len(raw.test) == 10000 and val_size == 5000
    if split == "reference" and not official:
        why = ("an image folder's test/ has no official order" if raw.dataset is None else
               f"the test split has {len(raw.test):,} images, not the official 10,000"
               if len(raw.test) != 10000 else f"val_size is {val_size}, not 5,000")
        raise DataError(
            f"split = \"reference\" takes the reference code's halves of the official 10,000 "
            f"CIFAR test images, by their index in the official test files' order, but "
            f"{why} ({raw.description}). Use --set split=random (halves drawn with "
            f"split_seed), or --data-dir with the official test batch.")
    return split == "reference" or (split == "auto" and official)


def make_splits(raw, val_size=5000, val_from_train=0, limit_train=0, seed=1024, log=print,
                split="auto"):
    """Applies the paper's split protocol to ``raw`` (deterministic for ``seed``, the
    config's ``split_seed``; ``split``: see ``Config.split``)."""
    rng = np.random.default_rng(seed)
    info = {"source": raw.description, "split_seed": seed, "skipped_corrupt": raw.skipped}
    train, test = raw.train, raw.test
    if test is not None and not val_from_train:
        if val_size >= len(test):
            raise DataError(
                f"val_size {val_size} leaves no test images: the test split has only "
                f"{len(test)}. Use a smaller --set val_size=N.")
        if _use_reference(raw, split, val_size):
            val_idx, test_idx = (np.sort(half) for half in reference_split())
            info.update(split="reference")
        else:
            val_idx, test_idx = _carve(rng, len(test), val_size)
            info.update(split="random")
        val, test = _take(test, val_idx), _take(test, test_idx)
        info.update(val_from="test", val_indices_sha256=_digest(val_idx),
                    test_indices_sha256=_digest(test_idx), val_indices=val_idx.tolist())
        train_idx = np.arange(len(train))
    else:
        count = val_from_train or val_size
        if test is None and not val_from_train:
            log(f"no test split in {raw.description}: carving {count:,} validation images "
                f"from train (set --val-from-train N to choose how many).")
        if count >= len(train):
            raise DataError(
                f"cannot carve {count:,} validation images from a training split of "
                f"{len(train):,}. Use a smaller --val-from-train N.")
        val_idx, train_idx = _carve(rng, len(train), count)
        val = _take(train, val_idx)
        info.update(val_from="train", val_indices_sha256=_digest(val_idx),
                    val_indices=val_idx.tolist())
    if limit_train and limit_train < len(train_idx):
        train_idx = _stratified(rng, train.labels, train_idx, limit_train)
        info.update(limit_train={"images": int(limit_train), "drawn": "stratified at random "
                                 "with split_seed", "per_class": {
                                     str(c): int(n) for c, n in zip(*np.unique(
                                         train.labels[train_idx], return_counts=True))}})
    train = _take(train, train_idx)
    info.update(train=len(train), val=len(val), test=len(test) if test is not None else 0,
                train_indices_sha256=_digest(train_idx))
    record_names(info, (("train", train), ("val", val), ("test", test)))
    return Splits(train, val, test, raw.class_names, raw.description, info)


def load_splits(cfg, log=print):
    """Reads the dataset named by ``cfg`` and splits it; logs which source was found."""
    if cfg.data_dir:
        raw = read_data_dir(cfg.data_dir, cfg.image_size, cfg.skip_corrupt)
    else:
        raw = read_tfds(cfg.dataset)
    log(f"data: {raw.description}")
    if raw.skipped:
        log(f"data: skipped {raw.skipped} corrupt image(s) (skip_corrupt is on)")
    if raw.dataset is not None and raw.dataset != cfg.dataset:
        raise DataError(
            f"--data-dir {cfg.data_dir!r} holds {raw.dataset.upper().replace('CIFAR', 'CIFAR-')} "
            f"but the config says dataset={cfg.dataset!r}. Pass --set dataset={raw.dataset} "
            f"(it sets the number of classes and the dataset's normalization), or point "
            f"--data-dir at {cfg.dataset.upper().replace('CIFAR', 'CIFAR-')}'s files.")
    if len(raw.class_names) != cfg.num_classes:
        raise DataError(
            f"the dataset has {len(raw.class_names)} classes but the config says num_classes "
            f"{cfg.num_classes}. Pass --num-classes {len(raw.class_names)}.")
    size = raw.train.images.shape[1:3]
    if tuple(size) != (cfg.image_size, cfg.image_size):
        raise DataError(
            f"the dataset's images are {size[0]}x{size[1]} but the config says image_size "
            f"{cfg.image_size}. Pass --set image_size={size[0]}.")
    splits = make_splits(raw, cfg.val_size, cfg.val_from_train, cfg.limit_train,
                         cfg.split_seed, log, split=cfg.split)
    splits.raw = raw  # every image read, for picking a run's images by name (evaluate)
    return splits
