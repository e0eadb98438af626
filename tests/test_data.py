"""Datasets on disk: every official layout, the split protocol, and named errors for bad data."""

import dataclasses
import os
import pickle
import shutil
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from cmxl_keras import cifar, data, splitting
from cmxl_keras.config import Config
from cmxl_keras.errors import DataError
from conftest import SHARED_DATA, random_images


def _write_bin(path, images, labels):
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    np.concatenate([labels[:, None].astype(np.uint8), planes], 1).tofile(path)


def _bin_dataset(root, n=50, test=0, seed=0):
    folder = os.path.join(root, "cifar-10-batches-bin")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(1, 6):
        _write_bin(os.path.join(folder, f"data_batch_{i}.bin"), random_images(n, seed=i),
                   rng.integers(0, 10, n))
    if test:
        _write_bin(os.path.join(folder, "test_batch.bin"), random_images(test, seed=9),
                   rng.integers(0, 10, test))
    return folder


def test_all_three_layouts_read_the_same_images(cifar_dir):
    reads = {sub: data.read_data_dir(os.path.join(cifar_dir, sub))
             for sub in ("cifar-10-batches-bin", "cifar-10-batches-py", "images")}
    binary, python, folder = reads.values()
    assert binary.train.images.shape == (2000, 32, 32, 3) and binary.train.images.dtype == np.uint8
    np.testing.assert_array_equal(binary.train.images, python.train.images)
    np.testing.assert_array_equal(binary.train.labels, python.train.labels)
    assert binary.class_names == python.class_names == folder.class_names == cifar.CIFAR10_CLASSES
    # The folder tree is ordered by class, not by batch: compare as sorted multisets per class.
    for label in range(10):
        a = binary.train.images[binary.train.labels == label].reshape(-1, 3072)
        b = folder.train.images[folder.train.labels == label].reshape(-1, 3072)
        np.testing.assert_array_equal(np.unique(a, axis=0), np.unique(b, axis=0))
    assert binary.test is None
    assert "CIFAR-10 binary" in binary.description
    assert "CIFAR-10 python" in python.description
    assert "image folder" in folder.description


def test_parent_folder_and_tar_gz_are_detected(cifar_dir, tmp_path):
    parent = data.read_data_dir(cifar_dir)
    assert parent.description.startswith("CIFAR-10 binary")
    assert "also present" in parent.description
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(os.path.join(cifar_dir, "cifar-10-batches-py"), arcname="cifar-10-batches-py")
    packed = data.read_data_dir(str(archive))
    np.testing.assert_array_equal(packed.train.images, parent.train.images)
    assert "CIFAR-10 python" in packed.description


def write_cifar100(root, layouts=("python", "binary"), n_train=300, n_test=100):
    """A small CIFAR-100 in the official layouts (the same images in each): python
    pickles (fine and coarse labels, meta) and binary records (coarse byte, fine byte,
    planes; label-name text files)."""
    names = [f"class{i:02d}" for i in range(100)]
    splits = {"train": n_train, "test": n_test}
    for layout in layouts:
        folder = os.path.join(root, f"cifar-100-{layout}")
        os.makedirs(folder, exist_ok=True)
        for seed, (name, n) in enumerate(splits.items()):
            planes = random_images(n, seed=seed).transpose(0, 3, 1, 2).reshape(n, 3072)
            fine = (np.arange(n) * 7 + seed) % 100
            coarse = fine // 5
            if layout == "python":
                with open(os.path.join(folder, name), "wb") as f:
                    pickle.dump({b"data": planes, b"fine_labels": list(fine),
                                 b"coarse_labels": list(coarse)}, f)
            else:
                np.concatenate([coarse[:, None], fine[:, None], planes], 1).astype(
                    np.uint8).tofile(os.path.join(folder, f"{name}.bin"))
        if layout == "python":
            with open(os.path.join(folder, "meta"), "wb") as f:
                pickle.dump({b"fine_label_names": [c.encode() for c in names],
                             b"coarse_label_names": [f"s{i}".encode() for i in range(20)]}, f)
        else:
            with open(os.path.join(folder, "fine_label_names.txt"), "w") as f:
                f.write("\n".join(names) + "\n")
            with open(os.path.join(folder, "coarse_label_names.txt"), "w") as f:
                f.write("\n".join(f"s{i}" for i in range(20)) + "\n")
    return root


def test_cifar100_python_and_binary_layouts_read_the_same(tmp_path):
    write_cifar100(str(tmp_path))
    python = data.read_data_dir(str(tmp_path / "cifar-100-python"))
    binary = data.read_data_dir(str(tmp_path / "cifar-100-binary"))
    for raw in (python, binary):
        assert raw.dataset == "cifar100" and len(raw.class_names) == 100
        assert raw.class_names[:2] == ("class00", "class01")
        assert len(raw.train) == 300 and len(raw.test) == 100
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(python, split).images, getattr(binary, split).images)
        np.testing.assert_array_equal(getattr(python, split).labels, getattr(binary, split).labels)
    assert sorted(set(binary.train.labels)) == list(range(100))  # the fine labels
    assert "CIFAR-100 binary" in binary.description
    truncated = tmp_path / "cut" / "cifar-100-binary"
    shutil.copytree(tmp_path / "cifar-100-binary", truncated)
    with open(truncated / "train.bin", "r+b") as f:
        f.truncate(3074 * 5 + 100)
    with pytest.raises(DataError, match="not a whole number of 3074-byte CIFAR-100 records"):
        data.read_data_dir(str(truncated))


def test_the_config_and_the_files_must_name_the_same_dataset(tmp_path, cifar_dir):
    write_cifar100(str(tmp_path), layouts=("binary",))
    with pytest.raises(DataError, match="holds CIFAR-100 but the config says dataset='cifar10'.*"
                                        "--set dataset=cifar100"):
        splitting.load_splits(Config(data_dir=str(tmp_path), val_from_train=50, num_classes=100),
                         log=lambda m: None)
    with pytest.raises(DataError, match="holds CIFAR-10 but the config says "
                                        "dataset='cifar100'.*--set dataset=cifar10"):
        splitting.load_splits(Config(data_dir=cifar_dir, val_from_train=50, dataset="cifar100",
                                num_classes=100), log=lambda m: None)
    splits = splitting.load_splits(Config(data_dir=str(tmp_path), val_from_train=50,
                                     dataset="cifar100", num_classes=100), log=lambda m: None)
    assert len(splits.class_names) == 100 and len(splits.val) == 50


@pytest.mark.slow
def test_channel_stats_give_the_cifar10_constants_on_the_shipped_images(tmp_path_factory):
    """The normalization constants are the mean and std over every training pixel; on
    12,000 shipped training images (JPEG-decoded) they come within 0.003 of the official
    figures computed on all 50,000."""
    from cmxl_keras import architecture
    from conftest import shipped_cifar

    raw = data.read_data_dir(shipped_cifar(tmp_path_factory, 12000, suffix="-12k"))
    mean, std = data.channel_stats(raw.train.images)
    np.testing.assert_allclose(mean, architecture.CIFAR_MEAN, atol=3e-3)
    np.testing.assert_allclose(std, architecture.CIFAR_STD, atol=3e-3)


def test_paper_split_protocol_uses_the_test_set(tmp_path):
    _bin_dataset(str(tmp_path), n=20, test=30)
    raw = data.read_data_dir(str(tmp_path))
    splits = splitting.make_splits(raw, val_size=12, seed=1024)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 12, 18)
    assert splits.info["val_from"] == "test"
    again = splitting.make_splits(raw, val_size=12, seed=1024)
    np.testing.assert_array_equal(again.val.images, splits.val.images)
    other = splitting.make_splits(raw, val_size=12, seed=7)
    assert other.info["val_indices"] != splits.info["val_indices"]
    # val and test halves are disjoint and together the whole test split
    both = np.concatenate([splits.val.images, splits.test.images]).reshape(30, -1)
    assert len(np.unique(both, axis=0)) == 30


def test_val_from_train_is_carved_and_disjoint(cifar_dir):
    raw = data.read_data_dir(cifar_dir)
    logged = []
    splits = splitting.make_splits(raw, val_from_train=300, limit_train=500, seed=3,
                              log=logged.append)
    assert (len(splits.train), len(splits.val), splits.test) == (500, 300, None)
    train_rows = {r.tobytes() for r in splits.train.images.reshape(500, -1)}
    assert not any(r.tobytes() in train_rows for r in splits.val.images.reshape(300, -1))
    assert splits.info["train"] == 500 and splits.info["val_from"] == "train"
    # No test split and no val_from_train: carve val_size from train, and say so.
    splits = splitting.make_splits(raw, val_size=200, seed=3, log=logged.append)
    assert len(splits.val) == 200 and "carving 200 validation images" in logged[-1]


def test_the_split_follows_split_seed_not_the_training_seed(cifar_dir):
    """Runs with other training seeds are scored on the same images; split_seed moves them."""
    from cmxl_keras import config

    def val_indices(**changes):
        cfg = Config(data_dir=cifar_dir, val_from_train=100, **changes)
        splits = splitting.load_splits(cfg, log=lambda m: None)
        assert splits.info["split_seed"] == cfg.split_seed
        return splits.info["val_indices"], splits.info["train_indices_sha256"]

    paper = val_indices()
    assert val_indices(seed=1025) == val_indices(seed=7) == paper
    assert val_indices(split_seed=1025)[0] != paper[0]
    assert val_indices(seed=1025, split_seed=1025) == val_indices(split_seed=1025)
    # A config saved before split_seed existed split with its seed, and keeps that split.
    saved = Config(seed=7).to_dict()
    del saved["split_seed"]
    assert config.from_dict(saved).split_seed == 7
    assert config.from_dict(Config(seed=7).to_dict()).split_seed == 1024


def test_load_splits_checks_class_count_and_size(cifar_dir):
    cfg = Config(data_dir=cifar_dir, val_from_train=100, num_classes=100)
    with pytest.raises(DataError, match="has 10 classes but the config says num_classes 100"):
        splitting.load_splits(cfg, log=lambda m: None)


@pytest.mark.parametrize("case,quoted", [
    ("missing", "does not exist"),
    ("empty", "no known dataset layout"),
    ("unknown", "no known dataset layout"),
    ("truncated", "is truncated or not a CIFAR-10 binary batch"),
    ("partial", "lacks data_batch_3.bin: the dataset is partial"),
    ("label", "holds label 12 at record 3"),
    ("corrupt_png", "cannot be decoded"),
    ("zero_byte", "the file is empty"),
    ("empty_class", "holds no images"),
    ("bad_pickle", "cannot be unpickled"),
    ("not_tar", "not a readable .tar.gz archive"),
])
def test_bad_data_is_named(tmp_path, case, quoted):
    root = tmp_path / "d"
    root.mkdir()
    target = str(root)
    if case == "missing":
        target = str(tmp_path / "nope")
    elif case == "unknown":
        (root / "readme.txt").write_text("hello")
    elif case in ("truncated", "partial", "label"):
        folder = _bin_dataset(target, n=10)
        batch = os.path.join(folder, "data_batch_3.bin")
        if case == "truncated":
            with open(batch, "r+b") as f:
                f.truncate(3073 * 5 + 100)
        elif case == "partial":
            os.remove(batch)
        else:
            raw = bytearray(open(batch, "rb").read())
            raw[3 * 3073] = 12
            open(batch, "wb").write(bytes(raw))
    elif case in ("corrupt_png", "zero_byte", "empty_class"):
        for cls in ("cat", "dog"):
            (root / "train" / cls).mkdir(parents=True)
            from PIL import Image
            Image.fromarray(random_images(1)[0]).save(root / "train" / cls / "a.png")
        if case == "corrupt_png":
            (root / "train" / "dog" / "b.png").write_bytes(b"\x89PNG garbage")
        elif case == "zero_byte":
            (root / "train" / "dog" / "b.png").write_bytes(b"")
        else:
            (root / "train" / "bird").mkdir()
    elif case == "bad_pickle":
        shutil.copytree(_py_dir(tmp_path), root / "cifar-10-batches-py")
        path = root / "cifar-10-batches-py" / "data_batch_2"
        path.write_bytes(path.read_bytes()[:1000])
    elif case == "not_tar":
        target = str(root / "x.tar.gz")
        open(target, "wb").write(b"not an archive")
    with pytest.raises(DataError) as info:
        data.read_data_dir(target)
    message = str(info.value)
    assert quoted in message
    if case in ("corrupt_png", "zero_byte"):
        assert "b.png" in message and "skip_corrupt" in message
    if case == "truncated":
        assert "data_batch_3.bin" in message


def _py_dir(tmp_path):
    folder = tmp_path / "py"
    folder.mkdir()
    for i in range(1, 6):
        planes = random_images(4, seed=i).transpose(0, 3, 1, 2).reshape(4, 3072)
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": planes, b"labels": [1, 2, 3, 4]}, f)
    return folder


def test_skip_corrupt_drops_and_counts(tmp_path):
    from PIL import Image
    for cls in ("cat", "dog"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for j in range(3):
            Image.fromarray(random_images(1, seed=j)[0]).save(tmp_path / "train" / cls / f"{j}.png")
    (tmp_path / "train" / "dog" / "bad.jpg").write_bytes(b"")
    raw = data.read_data_dir(str(tmp_path), skip_corrupt=True)
    assert raw.skipped == 1 and len(raw.train) == 6


def test_tfds_without_network_fails_fast_with_data_dir_advice(tmp_path, monkeypatch):
    # A closed local port stands in for the unreachable download hosts.
    monkeypatch.setattr(data, "TFDS_HOSTS", (("127.0.0.1", 9),))
    start = time.time()
    with pytest.raises(DataError) as info:
        data.read_tfds("cifar10", tfds_dir=str(tmp_path))
    assert time.time() - start < 30
    assert "no network" in str(info.value) and "--data-dir" in str(info.value)
    assert "cifar-10-python.tar.gz" in str(info.value) and "../" not in str(info.value)
    with pytest.raises(DataError, match="cifar-100-python.tar.gz"):
        data.read_tfds("cifar100", tfds_dir=str(tmp_path))


@pytest.mark.slow
def test_a_cifar100_smoke_run_has_its_classes_and_normalization(tmp_path):
    import json

    import keras

    from cmxl_keras import architecture
    from conftest import run_cli

    write_cifar100(str(tmp_path / "data"), layouts=("binary",), n_train=400, n_test=100)
    run_dir = tmp_path / "run"
    result = run_cli("train", "--config", "smoke", "--set", "dataset=cifar100", "--data-dir",
                     tmp_path / "data", "--run-dir", run_dir, "--epochs", "1",
                     "--steps-per-epoch", "2", "--set", "val_size=50", "--set", "val_from_train=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CIFAR-100 binary" in result.stdout
    saved = json.load(open(run_dir / "config.json"))
    assert saved["dataset"] == "cifar100" and saved["num_classes"] == 100
    model = keras.saving.load_model(run_dir / "model.keras")
    assert model.output_shape == (None, 100)
    normalize = model.get_layer("normalize")
    np.testing.assert_allclose(np.ravel(normalize.mean), np.multiply(
        255, architecture.CIFAR100_MEAN), rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.ravel(normalize.variance)), np.multiply(
        255, architecture.CIFAR100_STD), rtol=1e-6)
    split = json.load(open(run_dir / "split.json"))
    assert split["val"] == 50 and split["val_from"] == "test"


def test_limit_train_is_a_stratified_draw_fixed_by_split_seed(cifar_dir):
    """An image folder lists its files class by class: --limit-train N takes N at random
    within each class (each keeping its share), the same for the same split_seed."""
    raw = data.read_data_dir(os.path.join(cifar_dir, "images"))
    assert (np.diff(raw.train.labels) >= 0).all()  # the folder is ordered by class
    splits = splitting.make_splits(raw, val_from_train=100, limit_train=150, seed=5,
                              log=lambda m: None)
    counts = np.bincount(splits.train.labels, minlength=10)
    assert counts.sum() == 150 and counts.min() >= 10, counts
    # Each class keeps its share of the images left after the carve, to within one image.
    left = np.bincount(np.delete(raw.train.labels, splits.info["val_indices"]), minlength=10)
    assert (np.abs(counts - left * 150 / left.sum()) < 1).all(), (counts, left)
    assert splits.info["limit_train"]["per_class"] == {str(c): int(n)
                                                       for c, n in enumerate(counts)}
    again = splitting.make_splits(raw, val_from_train=100, limit_train=150, seed=5,
                             log=lambda m: None)
    assert again.info["train_indices_sha256"] == splits.info["train_indices_sha256"]
    other = splitting.make_splits(raw, val_from_train=100, limit_train=150, seed=6,
                             log=lambda m: None)
    assert other.info["train_indices_sha256"] != splits.info["train_indices_sha256"]
    # Not the first images of each class: a draw from all of them.
    first = {label: np.flatnonzero(raw.train.labels == label)[:20] for label in range(10)}
    train_rows = {r.tobytes() for r in splits.train.images.reshape(150, -1)}
    firsts = sum(raw.train.images[i].tobytes() in train_rows for idx in first.values() for i in idx)
    assert firsts < 100, firsts
    whole = splitting.make_splits(raw, val_from_train=100, limit_train=10**6, seed=5,
                             log=lambda m: None)
    assert len(whole.train) == len(raw.train) - 100 and "limit_train" not in whole.info


def _official_like(dataset="cifar10", test_size=10000):
    """A RawData shaped like the official files: each test image holds its own index."""
    index = np.arange(test_size)
    test = np.zeros((test_size, 2, 2, 3), np.uint8)
    test[:, 0, 0, 0], test[:, 0, 0, 1] = index // 256, index % 256
    train = data.Split(np.zeros((50, 2, 2, 3), np.uint8), np.arange(50, dtype=np.int32) % 10)
    return data.RawData(train, data.Split(test, (index % 10).astype(np.int32)),
                        tuple(cifar.CIFAR10_CLASSES), "official-like", dataset=dataset)


def _indices(split):
    return np.sort(split.images[:, 0, 0, 0].astype(int) * 256 + split.images[:, 0, 0, 1])


def test_the_reference_split_halves_the_official_test_set_as_the_reference_does():
    val, test = splitting.reference_split()
    assert sorted(np.concatenate([val, test]).tolist()) == list(range(10000))
    for split in ("reference", "auto"):
        splits = splitting.make_splits(_official_like(), split=split, log=lambda m: None)
        assert splits.info["split"] == "reference"
        np.testing.assert_array_equal(_indices(splits.val), np.sort(val))
        np.testing.assert_array_equal(_indices(splits.test), np.sort(test))
    drawn = splitting.make_splits(_official_like(), split="random", log=lambda m: None)
    assert drawn.info["split"] == "random" and len(drawn.val) == 5000
    assert not np.array_equal(_indices(drawn.val), np.sort(val))
    # auto draws at random where the reference halves cannot apply; reference refuses.
    for raw, val_size, why in ((_official_like(dataset=None), 5000, "no official order"),
                               (_official_like(test_size=4000), 2000, "not the official 10,000"),
                               (_official_like(), 2000, "val_size is 2000")):
        auto = splitting.make_splits(raw, val_size=val_size, split="auto", log=lambda m: None)
        assert auto.info["split"] == "random"
        with pytest.raises(DataError, match=why) as refused:
            splitting.make_splits(raw, val_size=val_size, split="reference", log=lambda m: None)
        assert "--set split=random" in str(refused.value)
    # No test split (the shipped images): validation is carved from train as before.
    carved = splitting.make_splits(dataclasses.replace(_official_like(), test=None),
                              split="reference", val_from_train=10, log=lambda m: None)
    assert carved.info["val_from"] == "train"


def test_paper_configs_use_the_reference_seed_and_split_and_old_runs_keep_theirs():
    from cmxl_keras import config, settings

    for name in ("cm_vanilla", "cm_xl", "cm_xl_noskip", "cm_vanilla_noaug"):
        cfg = settings.load(name)
        assert (cfg.seed, cfg.split_seed, cfg.split) == (1204, 1204, "reference"), name
    saved = Config(seed=7).to_dict()
    del saved["split"]  # a run saved before the key: its halves were drawn at random
    assert config.from_dict(saved).split == "random"
    assert config.from_dict(Config(seed=7).to_dict()).split == "auto"


def test_an_image_folder_reads_every_kind_of_image_as_tensorflow_decodes_it(tmp_path):
    """Training images from a folder are decoded as ``predict`` and the SavedModel's
    ``serving_bytes`` decode them: 16-bit grey keeps its high byte (PIL's own
    ``convert("RGB")`` would clip it to white), alpha is dropped, palettes expand."""
    import tensorflow as tf
    from test_cli import _image_kinds

    folder = tmp_path / "kinds"
    folder.mkdir()
    paths = [p for p in _image_kinds(folder) if p.name != "large.jpg"]  # resized: no exact twin
    for index, path in enumerate(paths):
        (tmp_path / "data" / "train" / f"c{index:02d}").mkdir(parents=True)
        os.replace(path, tmp_path / "data" / "train" / f"c{index:02d}" / path.name)
    raw = data.read_data_dir(str(tmp_path / "data"))
    assert len(raw.train) == len(paths)
    for image, label in zip(raw.train.images, raw.train.labels):
        path = paths[label]
        encoded = (tmp_path / "data" / "train" / f"c{label:02d}" / path.name).read_bytes()
        decoded = tf.io.decode_image(encoded, channels=3, expand_animations=False).numpy()
        diff = np.abs(image.astype(int) - decoded.astype(int))
        if path.suffix == ".jpg":
            # Two JPEG decoders (PIL's and TensorFlow's libjpeg builds) round the inverse
            # DCT and the chroma upsampling differently: measured here, at most 12 grey
            # levels at colour edges and 1.8 on average for 4:2:0 chroma.
            assert diff.max() <= 16 and diff.mean() < 3, (path.name, diff.max(), diff.mean())
        else:
            assert diff.max() == 0, (path.name, diff.max())


def test_a_tar_gz_of_images_is_read_in_one_pass_whatever_the_order_asked(tmp_path, monkeypatch):
    """A .tar.gz cannot seek back: a reader that asks for its members out of the archive's
    order (class by class, name by name) must not decompress it again for each. Every
    member is extracted once, in the archive's order, however they are asked for."""
    from PIL import Image

    from cmxl_keras import archives

    folder = tmp_path / "images"
    names = []
    for cls in ("dog", "cat"):
        (folder / "train" / cls).mkdir(parents=True)
        for j in (3, 1, 2):
            Image.fromarray(random_images(1, seed=j)[0]).save(folder / "train" / cls / f"{j}.png")
            names.append(f"train/{cls}/{j}.png")
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in names:  # stored in this order: dog before cat, 3 before 1
            tar.add(folder / name, arcname=name)
    extracted = []
    extract = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile",
                        lambda self, member: extracted.append(member.name) or extract(self, member))
    files = archives.Files(str(archive))
    asked = sorted(names)  # cat before dog, 1 before 3: the reader's order
    contents = [files.read(name) for name in asked]
    assert extracted == names  # once each, in the archive's order
    assert contents == [(folder / name).read_bytes() for name in asked]
    raw = data.read_data_dir(str(archive))
    assert raw.class_names == ("cat", "dog") and len(raw.train) == 6


# ----------------------------------------------------------------------------- twins
LOSSLESS = os.path.join(SHARED_DATA, "cifar10-train-lossless-subset.tar.gz")
JPEG = os.path.join(SHARED_DATA, "cifar10-train-jpeg.tar.gz")


def test_the_lossless_archive_pairs_each_image_with_its_jpeg_twin(tmp_path):
    """The 5,085 lossless training images read as --data-dir takes them, each found by its
    name among the JPEG training images with the same label and only JPEG's error."""
    lossless, jpeg = data.read_data_dir(LOSSLESS), data.read_data_dir(JPEG)
    assert len(lossless.train) == 5085 and lossless.test is None
    assert lossless.class_names == jpeg.class_names and len(jpeg.train) == 50000
    per_class = np.bincount(lossless.train.labels, minlength=10)
    assert per_class.tolist() == [517, 524, 490, 493, 537, 475, 503, 516, 529, 501]
    twins = data.select_names(jpeg, lossless.train.names, LOSSLESS)
    assert twins.names == lossless.train.names
    assert (twins.labels == lossless.train.labels).all()
    error = np.abs(twins.images.astype(np.int16) - lossless.train.images).mean(axis=(1, 2, 3))
    assert 0 < error.min() and error.max() < 13.5 and 4 < np.median(error) < 7.5, (
        error.min(), np.median(error), error.max())
    # Written out as files, the twins read back as the same images in the same order:
    # the same split by index, as the digests check.
    assert data.write_twins(LOSSLESS, JPEG, str(tmp_path / "twins.tar")) == 5085
    written = data.read_data_dir(str(tmp_path / "twins.tar"))
    assert written.train.names == lossless.train.names
    assert (written.train.images == twins.images).all()
    one, other = (splitting.make_splits(raw, val_from_train=989, seed=0, log=lambda m: None)
                  for raw in (lossless, written))
    for key in ("train_indices_sha256", "val_indices_sha256", "val_names_sha256"):
        assert one.info[key] == other.info[key], key
    assert one.info["val_pixels_sha256"] != other.info["val_pixels_sha256"]


def _folder(root, files):
    for rel, pixels in files.items():
        path = os.path.join(root, "train", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(pixels).save(path)
    return str(root)


def test_twins_are_refused_by_name_where_they_are_missing_or_ambiguous(tmp_path):
    images = random_images(3)
    a = _folder(tmp_path / "a", {"cat/1.png": images[0], "cat/2.png": images[1],
                                 "dog/3.png": images[2]})
    b = _folder(tmp_path / "b", {"cat/1.jpg": images[0], "dog/3.jpg": images[2]})
    with pytest.raises(DataError, match=r"lacks 1 of the 3 images .*train/cat/2"):
        data.write_twins(a, b, str(tmp_path / "twins.tar"))
    assert not os.path.exists(tmp_path / "twins.tar")
    with pytest.raises(DataError, match=r"lacks 1 of the 3 images .*cat/2"):
        data.select_names(data.read_data_dir(b), data.read_data_dir(a).train.names, a)
    _folder(tmp_path / "b", {"cat/1.png": images[0]})
    with pytest.raises(DataError, match=r"holds 1 name\(s\) twice .*cat/1"):
        data.read_data_dir(b)
    binary = data.read_data_dir(os.path.dirname(_bin_dataset(str(tmp_path / "bin"))))
    assert binary.train.names is None
    with pytest.raises(DataError, match="is not an image folder, so its images have no names"):
        data.select_names(binary, ("cat/1",), a)
