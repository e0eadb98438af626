"""Export for serving: a TF-Serving SavedModel and TFLite files that take raw uint8 images.

    exported/<name>/
      saved_model/1/            serving_default: uint8 images [None, H, W, 3] ->
                                {"probabilities": float32 [None, C], "class_id": int32 [None]}
      model_fp32.tflite         same signature, builtin ops only
      model_fp16.tflite         float16 weights
      model_int8.tflite         full-integer, uint8 input, calibrated on training images
      model.keras               the Keras model in float32 (logits), for Python and fine-tuning
      metadata.json             class names, input spec, config, source, accuracy, sizes,
                                parity, and the training run's record (data, split, code)

The export is written to a temporary folder beside the target and renamed into place
at the end, so an interrupted export never leaves a half-written model; every format is
then compared with the Keras model (``parity``). The parts: ``folding.py`` (the graph the
TFLite files come from), ``savedmodel.py`` (the served SavedModel), ``tflite.py`` (the
conversions and the int8 calibration).
"""

import os
import shutil
import tempfile
import time

import numpy as np

from cmxl_keras import folding, inference, onnx_export, runs, runtime, savedmodel, tflite
from cmxl_keras.errors import ParityMiss, RunError
from cmxl_keras.inference import KERAS_FILE, TFLITE_FILES

FORMATS = ("saved_model", "tflite", "tflite_fp16", "tflite_int8", "keras", "onnx")
# Parity targets checked (and printed) after every export; ONNX's are the fp32 TFLite
# file's (the same folded float32 graph): 1e-4, and every top-1 the same.
PARITY_TARGETS = {"saved_model_max_abs_diff": 1e-5, "keras_max_abs_diff": 1e-6,
                  "tflite_max_abs_diff": 1e-4, "onnx_max_abs_diff": 1e-4,
                  "tflite_fp16_top1_agreement": 0.99, "tflite_int8_top1_agreement": 0.97}


def parity(model, folder, images, formats):
    """Agreement of every exported format with the Keras model on ``images``."""
    reference = inference.keras_predict(model, images, desc="parity: Keras model")
    top1 = reference.argmax(-1)
    report = {"images": int(len(images))}
    if "saved_model" in formats:
        got = inference.saved_model_predict(os.path.join(folder, inference.SAVED_MODEL), images,
                                  desc="parity: SavedModel")
        report["saved_model_max_abs_diff"] = float(np.abs(got - reference).max())
        report["saved_model_top1_agreement"] = float((got.argmax(-1) == top1).mean())
    if "keras" in formats:
        saved = inference.load(os.path.join(folder, KERAS_FILE), precision="saved")
        got = saved(images, desc="parity: model.keras")
        report["keras_max_abs_diff"] = float(np.abs(got - reference).max())
        report["keras_top1_agreement"] = float((got.argmax(-1) == top1).mean())
    runners = {kind: (name, inference.TFLiteRunner) for kind, name in TFLITE_FILES.items()}
    runners["onnx"] = (inference.ONNX_FILE, inference.OnnxRunner)
    for kind, (name, runner) in runners.items():
        if kind in formats:
            got = runner(os.path.join(folder, name))(images, desc=f"parity: {kind}")
            report[f"{kind}_max_abs_diff"] = float(np.abs(got - reference).max())
            report[f"{kind}_top1_agreement"] = float((got.argmax(-1) == top1).mean())
    return report


def parity_failures(report):
    failures = []
    for key, target in PARITY_TARGETS.items():
        if key not in report:
            continue
        value = report[key]
        bad = value > target if key.endswith("diff") else value < target
        if bad:
            failures.append(f"{key} {value:.3g} (target {'<' if key.endswith('diff') else '>='} "
                            f"{target})")
    for kind in ("tflite", "onnx"):  # the float32 files: every top-1 the Keras model's
        if report.get(f"{kind}_top1_agreement", 1.0) < 1.0:
            failures.append(f"{kind}_top1_agreement {report[f'{kind}_top1_agreement']:.4f} "
                            f"(target 1.0)")
    return failures


def check_formats(formats):
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise RunError(f"unknown export format(s) {', '.join(unknown) or '(none)'}; choose "
                       f"from {', '.join(FORMATS)} (comma-separated).")
    return tuple(formats)


def export(loaded, source=None, formats=FORMATS, out_dir="exported", name=None,
           calibration_images=None, parity_images=None, class_names=None, log=print,
           allow_parity_miss=False, add=False):
    """Exports ``loaded = inference.load_keras(...)``; returns (folder, metadata). With
    ``add``, ``formats`` are added to the existing export of the same model (its other
    files, and their parity and sizes in ``metadata.json``, are kept).

    Raises:
        ParityMiss: a format missed its parity target (``PARITY_TARGETS``); nothing is
            written unless ``allow_parity_miss``.
    """
    check_formats(formats)
    if "tflite_int8" in formats and calibration_images is None:
        raise RunError("int8 export needs calibration images: pass --data-dir (or export a "
                       "run folder whose data is still there).")
    model, cfg, model_path = loaded
    model = runtime.float32_model(model)
    name = name or (cfg.name if cfg else os.path.splitext(os.path.basename(model_path))[0])
    target = os.path.join(out_dir, name)
    before = _added_to(target, cfg) if add else None
    try:
        os.makedirs(out_dir, exist_ok=True)
        for stale in os.listdir(out_dir):  # left by an export that was killed
            if stale.startswith(f".{name}{runs.TMP_SUFFIX}-"):
                shutil.rmtree(os.path.join(out_dir, stale), ignore_errors=True)
        staging = tempfile.mkdtemp(prefix=f".{name}{runs.TMP_SUFFIX}-", dir=out_dir)
    except OSError as error:
        raise RunError(f"cannot write to the output folder {out_dir!r} "
                       f"({error.strerror or error}). Choose a writable --out DIR.") from None
    try:
        started = time.time()
        if before is not None:
            shutil.copytree(target, staging, dirs_exist_ok=True)  # what the export keeps
        sizes = {}
        if "saved_model" in formats:
            log(f"export: SavedModel -> {target}/saved_model/1")
            savedmodel.write_saved_model(model, os.path.join(staging, "saved_model", "1"))
            sizes["saved_model"] = sum(
                os.path.getsize(os.path.join(root, f))
                for root, _, files in os.walk(os.path.join(staging, "saved_model"))
                for f in files)
        if "keras" in formats:
            log(f"export: Keras model (float32) -> {target}/{KERAS_FILE}")
            model.save(os.path.join(staging, KERAS_FILE))
            sizes[KERAS_FILE] = os.path.getsize(os.path.join(staging, KERAS_FILE))
        tflite_source = os.path.join(staging, "tflite_source")
        for kind, fname in TFLITE_FILES.items():
            if kind not in formats:
                continue
            if not os.path.isdir(tflite_source):
                # The TFLite files are converted from a SavedModel of the folded graph;
                # the served SavedModel keeps the model's own graph, exact to float
                # rounding (folding the normalization into the stem moves the
                # probabilities by ~1e-5, within the TFLite targets but not below 1e-5).
                savedmodel.write_saved_model(folding.inference_graph(model), tflite_source,
                                             serving=False)
            log(f"export: {kind} -> {target}/{fname}")
            data = tflite.convert_tflite(tflite_source, kind, calibration_images)
            flex = [op for op in tflite.tflite_ops(data) if op.lower().startswith("flex")]
            if flex:
                raise RunError(f"{kind} needs TensorFlow (Flex) ops {flex}; not exported.")
            with open(os.path.join(staging, fname), "wb") as f:
                f.write(data)
            sizes[fname] = len(data)
        if "onnx" in formats:
            log(f"export: onnx -> {target}/{inference.ONNX_FILE}")
            sizes[inference.ONNX_FILE] = onnx_export.write_onnx(
                model, os.path.join(staging, inference.ONNX_FILE),
                class_names or [str(i) for i in range(int(model.output_shape[-1]))])
        report = parity(model, staging, parity_images, formats) if parity_images is not None else {}
        failures = parity_failures(report)
        if failures and not allow_parity_miss:
            raise ParityMiss(
                f"export parity below target on {report['images']} images: "
                f"{'; '.join(failures)}. Nothing was written to {target}. A model that "
                f"barely learned has margins that rounding flips (int8, fp16); train it "
                f"longer, compare on more images (--parity-images), or keep the files "
                f"anyway with --allow-parity-miss.")
        metadata = _metadata(model, cfg, model_path, source, class_names, sizes, report, formats)
        if before is not None:  # the formats added beside what the folder held
            metadata["formats"] = [f for f in FORMATS if f in formats
                                   or f in before["formats"]]
            metadata["file_sizes"] = dict(before["file_sizes"], **sizes)
            metadata["parity"] = dict(before["parity"], **report)
            for key in ("source_checkpoint", "training", "validation_accuracy"):
                metadata[key] = before.get(key)
        runs.write_json(os.path.join(staging, "metadata.json"), metadata)
        shutil.rmtree(tflite_source, ignore_errors=True)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(staging, target)
        log(f"export: done in {time.time() - started:.0f} s")
        return target, metadata
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _added_to(target, cfg):
    """``export --add``: the existing export's metadata; refused unless it is an export
    of the same model (its config)."""
    if not os.path.isfile(os.path.join(target, "metadata.json")):
        raise RunError(f"--add: {target!r} is no export to add to (no metadata.json). Export "
                       f"every format first (without --add).")
    before = inference.read_metadata(target)
    if cfg is None or before.get("config") != cfg.to_dict():
        raise RunError(f"--add: {target!r} is the export of another model (its config "
                       f"differs from this run's); give the run it was exported from, or "
                       f"another --out/--name.")
    return before


def training_record(source):
    """What the run folder ``source`` records of how its model was trained: the data and
    split, the epochs and final figures, the code and backend (None for a bare file)."""
    if not (source and os.path.isdir(source)):
        return None
    read = lambda name: runs.read_json(os.path.join(source, name), {})  # noqa: E731
    results, split, env = read("results.json"), read("split.json"), read("env.json")
    final = results.get("final", {})
    return {
        "run": os.path.basename(os.path.normpath(source)),
        "data": split.get("source"), "train_images": split.get("train"),
        "validation_images": split.get("val"), "validation_from": split.get("val_from"),
        "split_seed": split.get("split_seed"), "epochs": results.get("epochs"),
        "final_validation_accuracy": final.get("val_accuracy"),
        "final_train_accuracy": final.get("accuracy"),
        "best_validation_accuracy": results.get("best_val_accuracy"),
        "best_epoch": results.get("best_epoch"),
        "train_seconds": results.get("train_seconds_total"),
        "code_version": env.get("git_commit"), "keras_backend": env.get("keras_backend"),
        "packages": env.get("packages"), "python": env.get("python"),
    }


def _metadata(model, cfg, model_path, source, class_names, sizes, report, formats):
    training = training_record(source)
    # The exported weights' own figure: the final epoch's for model.keras (the last
    # weights, which Table 1 scores), the best epoch's for checkpoints/best.keras.
    accuracy = training and training[
        "best_validation_accuracy" if os.path.basename(model_path) == "best.keras"
        else "final_validation_accuracy"]
    num_classes = int(model.output_shape[-1])
    return {
        "class_names": list(class_names or [str(i) for i in range(num_classes)]),
        "input": {"dtype": "uint8", "shape": [None, *model.input_shape[1:]],
                  "range": [0, 255], "normalization": "inside the model"},
        "outputs": {"probabilities": "float32 [batch, classes]", "class_id": "int32 [batch]"},
        "config": cfg.to_dict() if cfg else None,
        # The model file within its run folder (training.run names the run): no path of
        # the machine that exported it.
        "source_checkpoint": (os.path.relpath(model_path, source)
                              if source and os.path.isdir(source)
                              else os.path.basename(model_path)),
        "validation_accuracy": accuracy,
        "formats": list(formats),
        "file_sizes": sizes,
        "parity": report,
        "training": training,
    }


# Training images that calibrate the int8 file. Measured on the GPU-trained CM-Vanilla
# (its 1,000 validation images, top-1 agreement with the float model): 200 images 95.2 %,
# 500 98.1 %, 1,000 98.3 %, 2,000 97.9 % (each conversion 6 s to 27 s here). 200 sufficed
# for the smaller cpu_quick model (98.2 %).
CALIBRATION_IMAGES = 1000


def export_images(cfg, data_dir, count, size, log=print):
    """(calibration images, parity images, class names) from the run's data (``cfg``),
    or ``data_dir``: ``CALIBRATION_IMAGES`` training images drawn at random calibrate the
    int8 file, and the first ``count`` validation images check parity. Without data (and no
    ``data_dir``), all three are None: the export goes on without int8 and parity."""
    from cmxl_keras import config as config_lib, splitting
    from cmxl_keras.errors import DataError

    cfg = cfg or config_lib.Config(image_size=size)
    if data_dir:
        cfg = cfg.replace(data_dir=data_dir)
    try:
        splits = splitting.load_splits(cfg, log=lambda message: None)
    except DataError as error:
        if data_dir:
            raise
        log(f"export: no data for calibration and parity ({error}); pass --data-dir.")
        return None, None, None
    rng = np.random.default_rng(0)
    calibration = splits.train.images[rng.choice(len(splits.train),
                                                 min(CALIBRATION_IMAGES, len(splits.train)),
                                                 replace=False)]
    images = splits.val.images[:count]
    return calibration, images, splits.class_names


def export_run(source=None, checkpoint=None, formats=FORMATS, out_dir="exported", name=None,
               data_dir=None, parity_images=512, allow_parity_miss=False, runs_dir="runs",
               log=print, add=False):
    """``cli.py export``: a run folder or ``.keras`` file (without either, the newest
    finished run in ``runs_dir``) exported with its own data for calibration and parity
    (or ``data_dir``'s). Returns (folder, metadata)."""
    formats = check_formats(formats)
    if not source and not checkpoint:
        source = runs.newest_finished_run(runs_dir)
        if source is None:
            raise RunError(
                f"export needs a run: no finished run (model.keras and results.json) in "
                f"{runs_dir}/. Train one first (python cli.py train ...), or name it: python "
                f"cli.py export runs/<dir> (or --checkpoint FILE.keras, --runs-dir DIR).")
        log(f"export: no run given; taking the newest finished run in {runs_dir}/: {source}")
    loaded = inference.load_keras(source, checkpoint)
    model, cfg, _ = loaded
    calibration, images, class_names = export_images(cfg, data_dir, parity_images,
                                                     model.input_shape[1], log=log)
    return export(loaded, source, formats, out_dir, name, calibration, images, class_names,
                  allow_parity_miss=allow_parity_miss, log=log, add=add)


def report_text(folder, metadata):
    """The export's files, their sizes and its parity figures, as ``export`` prints them."""
    report = metadata["parity"]
    lines = [f"exported to {folder}"]
    lines += [f"  {fname}: {size / 1e6:.2f} MB" for fname, size in metadata["file_sizes"].items()]
    lines.append(f"parity on {report.get('images', 0)} images:")
    lines += [f"  {key} = {value:.6g}" for key, value in report.items() if key != "images"]
    return "\n".join(lines)
