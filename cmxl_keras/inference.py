"""Models to run: ``load(source)`` for every form a model takes here (a run folder, a
``.keras`` file, an exported folder, a SavedModel, a TFLite file), and the functions that
give probabilities for raw uint8 images from each. Evaluate, predict, the export's parity
check and the benchmarks all load and run models through here."""

import json
import os

import numpy as np

from cmxl_keras import progress, runtime
from cmxl_keras.errors import DataError, RunError

# The files of an exported model folder (export.py writes them).
SAVED_MODEL = os.path.join("saved_model", "1")
TFLITE_FILES = {"tflite": "model_fp32.tflite", "tflite_fp16": "model_fp16.tflite",
                "tflite_int8": "model_int8.tflite"}
KERAS_FILE = "model.keras"  # the float32 Keras model (applications' presets load it)
ONNX_FILE = "model.onnx"  # for ONNX Runtime (onnx_export.py writes it)


class Loaded:
    """A model loaded by ``load``: called on uint8 images ``[N, H, W, 3]``, it gives
    softmax probabilities ``[N, C]``.

    ``kind`` is "keras", "saved_model" or "tflite"; ``path`` the file or folder run;
    ``cfg`` the run's config and ``class_names`` the classes where the source records
    them (else None); ``image_size`` the side of the images it takes; ``model`` the Keras
    model (kind "keras" only) and ``precision`` the dtype policy it runs in, and
    ``saved_precision`` the one it was saved with (kind "keras" only: the exported forms
    compute in float32, or int8/float16 as their files say)."""

    def __init__(self, kind, path, run, image_size, cfg=None, class_names=None, model=None,
                 precision=None, saved_precision=None):
        self.kind, self.path, self._run = kind, path, run
        self.image_size, self.cfg, self.class_names, self.model = (image_size, cfg,
                                                                   class_names, model)
        self.precision, self.saved_precision = precision, saved_precision

    def __call__(self, images, batch=256, desc=None):
        return self._run(images, batch, desc)


def _saved_model_dir(path):
    for candidate in (path, os.path.join(path, SAVED_MODEL)):
        if os.path.isfile(os.path.join(candidate, "saved_model.pb")):
            return candidate
    return None


def load(source, fmt=None, metadata=None, precision="auto"):
    """``source`` as a ``Loaded`` model, whatever it is: a run folder or ``.keras`` file
    (the Keras model, with the run's config, run in ``precision``: see ``runnable``), an
    exported folder (its SavedModel, or with ``fmt="tflite"`` or no SavedModel its fp32
    TFLite file; ``"tflite_fp16"``, ``"tflite_int8"``: those files; ``"onnx"``: its
    ``model.onnx`` on ONNX Runtime), a SavedModel folder, a ``.onnx`` file, or a ``.tflite`` file; those of an exported folder
    come with the classes and config of its ``metadata.json`` (``metadata``, where the
    caller has read it already)."""
    from cmxl_keras import config as config_lib

    check_precision(precision)

    exported = os.path.isfile(os.path.join(source, "metadata.json"))
    if fmt is not None and not exported:
        raise RunError(f"{source!r} is not an exported model folder (no metadata.json). "
                       f"Make one with 'python cli.py export RUN_DIR'.")
    if not os.path.exists(source):
        raise RunError(f"{source!r} does not exist. Give a run folder, a .keras file, an "
                       f"exported model folder (exported/<name>) or a .tflite file.")
    saved_model = _saved_model_dir(source)
    # The exported folder's metadata.json, whichever of its files or folders is named.
    folder = (source if exported else os.path.dirname(os.path.abspath(source))
              if source.endswith((".tflite", ".onnx")) else
              os.path.dirname(os.path.dirname(os.path.abspath(saved_model)))
              if saved_model else None)
    if metadata is None and folder and os.path.isfile(os.path.join(folder, "metadata.json")):
        metadata = read_metadata(folder)
    meta = metadata or {}
    cfg = config_lib.from_dict(meta["config"]) if meta.get("config") else None
    if fmt == "onnx" or (fmt is None and source.endswith(".onnx")):
        return _file_model("onnx", "onnx", ONNX_FILE, OnnxRunner, source, exported, cfg, meta)
    if fmt in TFLITE_FILES or (fmt is None and (source.endswith(".tflite") or (
            exported and saved_model is None))):
        return _file_model("tflite", fmt or "tflite", TFLITE_FILES[fmt or "tflite"],
                           TFLiteRunner, source, exported, cfg, meta)
    if fmt == "saved_model" and saved_model is None:
        raise DataError(f"{source!r} has no {SAVED_MODEL}; export it with --formats "
                        f"saved_model, or use --format tflite.")
    if saved_model:
        import tensorflow as tf

        serve = guarded(saved_model, lambda: tf.saved_model.load(saved_model).signatures[
            "serving_default"])
        size = int(serve.structured_input_signature[1]["images"].shape[1])
        return Loaded("saved_model", saved_model,
                      lambda x, batch, desc: saved_model_predict(serve, x, batch,
                                                                 desc or "SavedModel"),
                      size, cfg, meta.get("class_names"))
    model, cfg, path = load_keras(source)
    saved = saved_precision(model)
    model, runs_in = runnable(model, precision)
    return Loaded("keras", path, lambda x, batch, desc: keras_predict(model, x, batch,
                                                                      desc or "Keras model"),
                  int(model.input_shape[1]), cfg, model=model, precision=runs_in,
                  saved_precision=saved)


# How ``load`` runs a Keras model: ``auto`` in float32 where no GPU is visible and as
# saved where one is; ``saved`` as saved; ``float32`` always in float32.
PRECISIONS = ("auto", "saved", "float32")


def check_precision(precision):
    if precision not in PRECISIONS:
        raise RunError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}: "
                       f"'auto' runs a model saved under mixed precision in float32 on a "
                       f"CPU, 'saved' runs it as saved, 'float32' always in float32.")


def saved_precision(model):
    """The dtype policy a Keras model was saved with: a mixed policy where any layer
    has one (mixed precision keeps the logits' layer in float32), else ``float32``."""
    return next((layer.dtype_policy.name for layer in model.layers
                 if layer.dtype_policy.name != "float32"), "float32")


def runnable(model, precision="auto"):
    """(model, the policy it runs in): a model saved under mixed precision
    (``mixed_float16``, ``mixed_bfloat16``) keeps that policy when loaded, and float16
    on a CPU is slow (the GPU-trained CM-Vanilla on 2 cores: 4.1x slower than float32,
    and bfloat16 2.6x, bench/RESULTS.md); with ``precision="auto"`` and no GPU visible,
    it runs as a float32 copy with the same weights, which computes the function the
    mixed model approximates (there: probabilities at most 7e-3 apart on 1,000 real
    images, the same top-1)."""
    check_precision(precision)
    saved = saved_precision(model)
    if saved == "float32" or precision == "saved" or (precision == "auto"
                                                     and runtime.gpu_visible()):
        return model, saved
    return runtime.float32_model(model), "float32"


def guarded(path, action, doing="loaded"):
    """``action()`` on the exported file ``path``; its failure (a damaged file) a clear
    error naming the file, ``doing`` saying what failed ("loaded", "run")."""
    try:
        return action()
    except Exception as error:  # TensorFlow and LiteRT raise many types for a damaged file
        raise RunError(
            f"the exported model {path!r} cannot be {doing} ({type(error).__name__}: "
            f"{str(error)[:300]}); the file is damaged or not an export of this project. "
            f"Export it again (python cli.py export RUN_DIR), restore it from a copy, or try "
            f"the other --format.") from None


def _file_model(kind, flag, file, runner_class, source, exported, cfg, meta):
    """A ``Loaded`` model on a runtime without TensorFlow: ``file`` of an exported folder
    (or ``source`` itself) run by ``runner_class`` (LiteRT's, ONNX Runtime's)."""
    path = os.path.join(source, file) if exported else source
    if not os.path.isfile(path):
        raise DataError(f"{source!r} has no {file}; export it with --formats {flag}, or use "
                        f"another --format.")
    runner = guarded(path, lambda: runner_class(path))
    return Loaded(kind, path, lambda x, batch, desc: runner(x, desc or None, batch),
                  runner.image_size, cfg,
                  meta.get("class_names") or getattr(runner, "class_names", None))


def load_keras(source=None, checkpoint=None):
    """(keras model, config or None, description) from a run folder or a .keras file."""
    import keras

    from cmxl_keras import checkpoints, settings

    path = checkpoint or source
    if not path:
        raise RunError("export needs a run folder (python cli.py export runs/<dir>) or "
                       "--checkpoint FILE.keras.")
    if not os.path.exists(path):
        raise RunError(f"{path!r} does not exist. Give a run folder made by 'python cli.py "
                       f"train' (look under runs/) or a .keras model file.")
    cfg = None
    if os.path.isdir(path):
        cfg_path = os.path.join(path, "config.json")
        model_path = next((p for p in (os.path.join(path, "model.keras"),
                                       checkpoints.checkpoint_paths(path)["best"])
                           if os.path.isfile(p)), None)
        if model_path is None or not os.path.isfile(cfg_path):
            raise RunError(
                f"{path!r} is not a finished run folder: it has no model.keras or "
                f"checkpoints/best.keras and config.json. Finish the run first "
                f"(python cli.py train --resume {path}) or pass --checkpoint FILE.keras.")
        cfg = settings.load_saved(path)
    else:
        model_path = path
        # A .keras file inside a run folder (model.keras, checkpoints/best.keras) keeps
        # the run's config, and with it the run's data and split protocol.
        here = os.path.dirname(os.path.abspath(path))
        for folder in (here, os.path.dirname(here)):
            if os.path.isfile(os.path.join(folder, "config.json")):
                cfg = settings.load_saved(folder)
                break
    if not model_path.endswith(".keras"):
        raise RunError(f"{model_path!r} is not a Keras model file (.keras). Give a run "
                       f"folder or a .keras file saved by this project.")
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as error:  # zip, h5 and deserialization errors all mean the same here
        raise RunError(f"cannot load {model_path!r} as a Keras model ({type(error).__name__}: "
                       f"{str(error)[:200]}). Give a .keras file saved by this project.") from None
    shape = tuple(model.input_shape[1:])
    if len(shape) != 3 or shape[-1] != 3:
        raise RunError(f"{model_path!r} takes inputs of shape {shape}, not RGB images.")
    return model, cfg, model_path


def interpreter(**kwargs):
    """A LiteRT interpreter (the ``ai-edge-litert`` runtime, which needs no TensorFlow;
    ``tf.lite.Interpreter`` is deprecated in TensorFlow 2.20)."""
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(**kwargs)


class TFLiteRunner:
    """Runs a TFLite file on raw uint8 images, any batch size; returns probabilities.
    LiteRT only: no TensorFlow is imported."""

    def __init__(self, path):
        self.interpreter = interpreter(model_path=str(path), num_threads=os.cpu_count())
        runner = self.interpreter.get_signature_runner()
        (self.input_name, details), = runner.get_input_details().items()
        self.input_dtype, self.image_size = details["dtype"], int(details["shape"][1])
        self.runner = runner

    def __call__(self, images, desc=None, batch=None):
        """Probabilities of ``images``, run ``batch`` images at a time (None: all at once,
        or 256 at a time behind a progress bar named ``desc``)."""
        images = np.asarray(images).astype(self.input_dtype)
        return in_batches(lambda x: self.runner(**{self.input_name: x})["probabilities"],
                          images, desc, batch)


def in_batches(run, images, desc=None, batch=None):
    """``run`` (a batch -> probabilities) over ``images``, ``batch`` at a time (None: all
    at once, or 256 at a time behind a progress bar named ``desc``)."""
    size = batch or (256 if desc else max(len(images), 1))
    starts = (progress.batches(len(images), size, desc) if desc
              else range(0, max(len(images), 1), size))
    return np.concatenate([np.asarray(run(images[i:i + size]), np.float32) for i in starts])


class OnnxRunner:
    """Runs ``model.onnx`` on ONNX Runtime (its GPU provider where it has one, else the
    CPU's): uint8 images in, probabilities out. No TensorFlow is imported."""

    def __init__(self, path):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in onnxruntime.get_available_providers()]
        self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        (given,) = self.session.get_inputs()
        self.input_name, self.image_size = given.name, int(given.shape[1])
        names = self.session.get_modelmeta().custom_metadata_map.get("class_names")
        self.class_names = json.loads(names) if names else None

    def __call__(self, images, desc=None, batch=None):
        images = np.asarray(images, np.uint8)
        return in_batches(lambda x: self.session.run(None, {self.input_name: x})[0],
                          images, desc, batch)


def saved_model_predict(path, images, batch=256, desc="SavedModel"):
    """Probabilities from a SavedModel's ``serving_default`` (``path``: its folder, or
    the signature already loaded)."""
    import tensorflow as tf

    serve = (tf.saved_model.load(path).signatures["serving_default"]
             if isinstance(path, (str, os.PathLike)) else path)
    return np.concatenate([serve(images=tf.constant(images[i:i + batch], tf.uint8))
                           ["probabilities"].numpy()
                           for i in progress.batches(len(images), batch, desc)])


def keras_predict(model, images, batch=256, desc="Keras model"):
    import keras

    logits = [model.predict_on_batch(images[i:i + batch].astype(np.float32))
              for i in progress.batches(len(images), batch, desc)]
    return np.asarray(keras.ops.softmax(np.concatenate(logits), axis=-1))


def read_metadata(folder):
    """An exported folder's ``metadata.json``, checked to hold what loading it reads."""
    path = os.path.join(folder, "metadata.json")
    if not os.path.isfile(path):
        raise RunError(f"{folder!r} is not an exported model folder (no metadata.json). "
                       f"Make one with 'python cli.py export RUN_DIR'.")
    try:
        with open(path) as f:
            metadata = json.load(f)
        metadata["input"]["shape"][1], metadata["class_names"][0]  # what predict reads
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise RunError(
            f"{path!r} is damaged ({type(error).__name__}: {error}); the exported model's "
            f"input size and class names are read from it. Export the model again (python "
            f"cli.py export RUN_DIR), or restore the folder from a copy.") from None
    return metadata
