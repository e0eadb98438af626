"""Evaluation: top-1, top-5, loss, per-class accuracy and the confusion matrix, with figures.

The same numbers come from any form of a model that ``inference.load`` takes: a run
folder, a ``.keras`` file, an exported SavedModel or TFLite file (all compute softmax
probabilities from the same weights; the loss is the cross-entropy of those
probabilities). Test-time augmentation
(the average of an image's and its mirror's probabilities) is reported separately.
"""

import os

import numpy as np

from cmxl_keras import inference, runs
from cmxl_keras.errors import DataError, RunError

SPLITS = ("val", "test", "all")


def metrics(probabilities, labels, num_classes):
    """Top-1, top-5, loss, per-class accuracy and the confusion matrix."""
    labels = np.asarray(labels, np.int64)
    predicted = probabilities.argmax(-1)
    top5 = np.argsort(-probabilities, axis=-1)[:, :5]
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    picked = probabilities[np.arange(len(labels)), labels]
    return {
        "images": int(len(labels)),
        "top1": float((predicted == labels).mean()),
        "top5": float((top5 == labels[:, None]).any(1).mean()),
        "loss": float(-np.log(np.clip(picked, 1e-12, 1.0)).mean()),
        "per_class_accuracy": per_class.tolist(),
        "confusion_matrix": confusion.tolist(),
    }


def run_split_of(source):
    """(path, contents) of the ``split.json`` of the run that ``source`` belongs to (a run
    folder, or a ``.keras`` file in one or in its ``checkpoints/``); (None, None) if none."""
    here = os.path.abspath(source)
    folders = [here] if os.path.isdir(here) else [os.path.dirname(here),
                                                  os.path.dirname(os.path.dirname(here))]
    for folder in folders:
        path = os.path.join(folder, "split.json")
        if os.path.isfile(path):
            return path, runs.read_json(path, None)
    return None, None


def _check_part(part, drawn, splits, run_split, where, other_images):
    """``drawn`` (the ``part`` images that the run's split protocol draws from the data)
    checked against the run's ``split.json``: returns (the images to score, how they were
    checked). Where the names differ but the run recorded its validation images' names,
    those images are picked by name from the data (a folder of the same images in another
    form, or a larger one holding them)."""
    from cmxl_keras import data

    if run_split is None:
        return drawn, "not checked: the model has no run folder with a split.json"
    key = f"{part}_names_sha256"
    if run_split.get(key) and drawn.names is not None:
        if data.names_digest(drawn.names) == run_split[key]:
            return drawn, "the run's split: the same images by name (names digest)"
        if part == "val" and run_split.get("val_names") and splits.raw is not None:
            try:
                picked = data.select_names(splits.raw, run_split["val_names"], where)
                return picked, "the run's split: its validation images, picked by name"
            except DataError as error:
                if not other_images:
                    raise DataError(f"{error} Or pass --other-images to score the run's split "
                                    f"protocol of these images anyway.") from None
    elif run_split.get(f"{part}_indices_sha256") == splits.info.get(f"{part}_indices_sha256"):
        return drawn, "the run's split: the same images by index (index digest)"
    if other_images:
        return drawn, "other images: not the run's split (--other-images)"
    raise DataError(
        f"the {part} images that the run's split protocol draws from {splits.description} are "
        f"not the images the run was split into ({where}: names or index digests differ), "
        f"so the figure would not be the run's. Point --data-dir at the run's images, in any "
        f"form with the same names (train/<class>/NNNN.png or .jpg), or pass --other-images "
        f"to score these images anyway.")


def evaluation_split(cfg, split, data_dir=None, log=print, run_split=None, where=None,
                     other_images=False):
    """The images and labels of ``split`` under the run's own split protocol, checked
    against the run's ``split.json`` (``run_split``, read from ``where``), and a record of
    which images they are."""
    from cmxl_keras import data, splitting

    if split not in SPLITS:
        raise RunError(f"--split {split!r}: choose one of {', '.join(SPLITS)}.")
    if data_dir:
        cfg = cfg.replace(data_dir=data_dir)
    splits = splitting.load_splits(cfg, log=log)
    if split != "val" and splits.test is None:
        raise DataError(
            f"--split {split}: the data ({splits.description}) has no test split, so "
            f"validation was carved from train. Use --split val, or a --data-dir with the "
            f"official test batch.")
    parts = {"val": ("val",), "test": ("test",), "all": ("val", "test")}[split]
    chosen, checks = [], {}
    for part in parts:
        images, checks[part] = _check_part(part, getattr(splits, part), splits, run_split,
                                           where, other_images)
        chosen.append(images)
    names = None if any(c.names is None for c in chosen) else sum((c.names for c in chosen), ())
    record = {"source": splits.description, "images": sum(len(c) for c in chosen),
              "names_sha256": names and data.names_digest(names),
              "pixels_sha256": splitting.pixels_digest(
                  np.concatenate([c.images for c in chosen])),
              "run_split": checks, "run_split_file": where}
    record.update({f"{part}_indices_sha256": splits.info.get(f"{part}_indices_sha256")
                   for part in parts})
    if len(chosen) == 1:
        return chosen[0], splits.class_names, record
    return data.Split(np.concatenate([c.images for c in chosen]),
                      np.concatenate([c.labels for c in chosen]), names), \
        splits.class_names, record


def evaluate(source, data_dir=None, split="val", tta=False, out_dir=None, log=print,
             precision="auto", other_images=False, fmt=None):
    """Evaluates ``source`` on ``split``; writes JSON and figures; returns the results.
    A Keras model runs in ``precision`` (``inference.runnable``). The images are the run's
    split of its own data or of ``data_dir`` (the same images, by name or index: checked
    against the run's ``split.json``; ``other_images`` scores others, said so); the
    results say which (``data``) and give each image's predicted class (``predicted``)."""
    from cmxl_keras import config as config_lib

    predictor = inference.load(source, fmt, precision=precision)
    if predictor.precision != predictor.saved_precision:
        log(f"evaluate: the model was saved under {predictor.saved_precision}; it runs in "
            f"{predictor.precision} here (no GPU visible; --precision saved keeps its own)")
    cfg = predictor.cfg or config_lib.Config(image_size=predictor.image_size)
    if not predictor.cfg and not data_dir:
        raise RunError(f"{source!r} carries no config to find its data: pass --data-dir.")
    where, run_split = run_split_of(source)
    images_split, class_names, record = evaluation_split(cfg, split, data_dir, log, run_split,
                                                         where, other_images)
    class_names = list(predictor.class_names or class_names)
    probabilities = predictor(images_split.images, desc="evaluate")
    results = {"source": os.path.abspath(source), "form": predictor.kind, "split": split}
    if predictor.kind == "keras":
        results.update(precision=predictor.precision, saved_precision=predictor.saved_precision)
    results.update(metrics(probabilities, images_split.labels, len(class_names)))
    results["class_names"] = class_names
    results["data"] = record
    results["predicted"] = probabilities.argmax(-1).tolist()
    if tta:
        flipped = predictor(images_split.images[:, :, ::-1], desc="evaluate")
        tta_metrics = metrics((probabilities + flipped) / 2, images_split.labels,
                              len(class_names))
        results["tta_flip"] = {k: tta_metrics[k] for k in ("top1", "top5", "loss")}
    if out_dir is None:
        out_dir = source if os.path.isdir(source) and predictor.kind == "keras" else (
            os.path.join("evaluations", os.path.basename(os.path.normpath(source))))
    try:
        os.makedirs(out_dir, exist_ok=True)
        runs.write_json(os.path.join(out_dir, f"eval_{split}.json"), results)
        figures = write_figures(out_dir, split, images_split, probabilities, class_names)
    except OSError as error:
        raise RunError(f"cannot write the evaluation to {out_dir!r} ({error.strerror or error})"
                       f". Choose a writable --out DIR.") from None
    results["figures"] = figures
    if os.path.isdir(os.path.join(out_dir, "tensorboard")):
        figures_to_tensorboard(os.path.join(out_dir, "tensorboard", "eval"), figures)
    return results


def figures_to_tensorboard(log_dir, figures):
    """The PNG figures as TensorBoard images (the run's ``tensorboard/eval``)."""
    import tensorflow as tf
    from PIL import Image

    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        for name, path in figures.items():
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            tf.summary.image(os.path.splitext(os.path.basename(path))[0], pixels[None], step=0)
    writer.flush()


HALVES = {"val": "the validation half (what training watched; Table 1 reports the test "
                 "half: --split test)",
          "test": "the test half (the figure Table 1 reports)",
          "all": "both halves (validation and test)"}


def format_table(results):
    lines = [f"{results['form']} {results['source']} on {results['split']}, "
             f"{HALVES[results['split']]} ({results['images']:,} images)",
             f"  top-1 {100 * results['top1']:.2f} %   top-5 {100 * results['top5']:.2f} %   "
             f"loss {results['loss']:.4f}"]
    if results.get("data"):
        checks = sorted(set(results["data"]["run_split"].values()))
        lines.insert(1, f"  images: {results['data']['source']}; {'; '.join(checks)}")
    if "tta_flip" in results:
        t = results["tta_flip"]
        lines.append(f"  with flip TTA: top-1 {100 * t['top1']:.2f} %   top-5 "
                     f"{100 * t['top5']:.2f} %   loss {t['loss']:.4f}")
    lines.append("  per class:")
    for name, acc in zip(results["class_names"], results["per_class_accuracy"]):
        lines.append(f"    {name:<14} {100 * acc:6.2f} %")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures
def _figure_to_png(fig, path):
    with runs.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def pick_examples(probabilities, labels, correct=True, count=16):
    """Indices of the most confident correct (or wrong) predictions, spread across
    classes: the most confident of each predicted class first (classes in order of that
    confidence), then each class's second, and so on."""
    predicted = probabilities.argmax(-1)
    confidence = probabilities.max(-1)
    pool = np.flatnonzero((predicted == labels) if correct else (predicted != labels))
    per_class = {}
    for index in pool[np.argsort(-confidence[pool], kind="stable")]:
        per_class.setdefault(int(predicted[index]), []).append(int(index))
    queues = sorted(per_class.values(), key=lambda q: -confidence[q[0]])
    chosen = []
    for rank in range(max(map(len, queues), default=0)):
        for queue in queues:
            if rank < len(queue) and len(chosen) < count:
                chosen.append(queue[rank])
    return chosen


def confusion_figure(confusion, class_names, subtitle):
    """The confusion matrix with each cell's count and row percentage (up to 20 classes;
    beyond that the cells are too small to read and only the colours are drawn)."""
    import matplotlib.pyplot as plt

    n = len(class_names)
    rows = np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(8, 7) if n <= 20 else (12, 11))
    im = ax.imshow(confusion, cmap="Blues")
    ticks = dict(fontsize=7 if n <= 20 else 4)
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", **ticks)
    ax.set_yticks(range(n), class_names, **ticks)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (row % of the true class)")
    ax.set_title(f"confusion matrix ({subtitle})")
    if n <= 20:
        dark = confusion.max() / 2
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{confusion[i, j]}\n{100 * confusion[i, j] / rows[i, 0]:.0f}%",
                        ha="center", va="center", fontsize=6,
                        color="white" if confusion[i, j] > dark else "black")
    fig.colorbar(im)
    fig.tight_layout()
    return fig


def write_figures(out_dir, split, images_split, probabilities, class_names):
    """Confusion matrix, 4x4 correct (paper Figure 5) and wrong (Figure 6) grids, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = images_split.labels
    predicted = probabilities.argmax(-1)
    confidence = probabilities.max(-1)
    confusion = np.asarray(metrics(probabilities, labels, len(class_names))["confusion_matrix"])
    paths = {}
    fig = confusion_figure(confusion, class_names, f"{split}, {len(labels):,} images")
    paths["confusion_matrix"] = os.path.join(out_dir, f"confusion_matrix_{split}.png")
    _figure_to_png(fig, paths["confusion_matrix"])
    plt.close(fig)
    for kind in ("correct", "wrong"):
        chosen = pick_examples(probabilities, labels, correct=kind == "correct")
        fig, axes = plt.subplots(4, 4, figsize=(6, 6.6))
        for ax, index in zip(axes.flat, list(chosen) + [None] * 16):
            ax.axis("off")
            if index is None:
                continue
            ax.imshow(images_split.images[index], interpolation="nearest")
            title = f"pred: {class_names[predicted[index]]} ({confidence[index]:.2f})"
            if kind == "wrong":
                title += f"\ntrue: {class_names[labels[index]]}"
            ax.set_title(title, fontsize=7)
        fig.suptitle(f"{'correctly' if kind == 'correct' else 'wrongly'} classified ({split})")
        fig.tight_layout()
        paths[kind] = os.path.join(out_dir, f"{kind}_{split}.png")
        _figure_to_png(fig, paths[kind])
        plt.close(fig)
    return paths
