"""cmxl-keras command line: a thin front end over the cmxl_keras library.

Run as ``python cli.py ...`` from a clone (``python cli.py train --depth 66 --skip-period
3 --act swish``), or as ``cmxl ...`` after ``pip install .``. Every command parses its flags, resolves the config and calls the library.
Errors caused by input (a flag, a config value, a file) are printed as one
paragraph naming the value and the fix, with a non-zero exit and no traceback.
"""

import os
import sys

import click

from cmxl_keras import __version__
from cmxl_keras.config import CHOICES
from cmxl_keras.cli_support import (EXIT_CODES_HELP, TFLITE_INT8_TRADE, echo_json, fail,
                                    model_options, quiet_tensorflow, user_errors)

# Keep TensorFlow's C++ start-up chatter (including "failed call to cuInit" on
# machines without a GPU) out of the user's terminal; set it to 0 to debug.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

def _set_backend(ctx, param, value):
    # The backend must be chosen before Keras is imported; commands import the
    # library lazily for that reason.
    if value:
        os.environ["KERAS_BACKEND"] = value
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
@click.option("--backend", type=click.Choice(["tensorflow", "jax", "torch"]),
              callback=_set_backend, expose_value=False, is_eager=True,
              help="Keras backend (default: $KERAS_BACKEND, else tensorflow).")
@click.version_option(__version__, prog_name="cmxl-keras")
@user_errors
def cli():
    """ConvMixer / ConvMixer-XL on CIFAR in Keras 3: train, evaluate, export, serve."""
    from cmxl_keras import recipe

    recipe.check_backend(os.environ.get("KERAS_BACKEND", "tensorflow"))


@cli.command()
@model_options
@click.option("--variant", help="A Table-1 model: cm_vanilla, cm_xl, ... (see docs/fidelity.md).")
@click.option("--summary/--no-summary", default=False, help="Print the layer-by-layer summary.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@user_errors
def info(config_file, overrides, variant, summary, as_json, **flags):
    """Model summary, parameter counts and FLOPs of a config or Table-1 variant."""
    from cmxl_keras import config, settings

    base = config.variant_config(variant) if variant else None  # checks the name
    cfg = settings.resolve(None if variant else config_file, overrides, base=base, **flags)

    from cmxl_keras import models

    model = models.from_config(cfg)
    if summary:
        model.summary(line_length=110)
    figures = models.describe(cfg, model)
    if as_json:
        echo_json(figures)
    else:
        click.echo(models.description_text(cfg, figures))


@cli.command()
@model_options
@click.option("--epochs", type=int, help="Training epochs (paper: 100).")
@click.option("--batch-size", type=int, help="Global batch size (paper: 128).")
@click.option("--lr", "lr_max", type=float, help="Peak learning rate of the one-cycle (0.005).")
@click.option("--data-dir", type=str, help="Official CIFAR files, their .tar.gz, or images.")
@click.option("--val-from-train", type=int, help="Carve N validation images from train.")
@click.option("--limit-train", type=int,
              help="Train on N images only, drawn at random per class (split_seed).")
@click.option("--steps-per-epoch", type=int, help="Cap the steps of each epoch.")
@click.option("--seed", type=int,
              help="Random seed (the paper configs: 1204, the reference code's).")
@click.option("--name", type=str, help="Run name (the run folder is runs/<name>-<time>).")
@click.option("--precision", type=click.Choice(CHOICES["precision"]),
              help="auto = mixed_float16 on a GPU, float32 on a CPU.")
@click.option("--strategy", type=click.Choice(CHOICES["strategy"]),
              help="tf.distribute: auto, one_device, mirrored, multi_worker (TF_CONFIG).")
@click.option("--runs-dir", default="runs", show_default=True,
              help="Parent folder of new run folders.")
@click.option("--run-dir", type=str, help="Exact folder of this run (default runs/<name>-<time>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --run-dir.")
@click.option("--resume", type=str, metavar="RUN_DIR",
              help="Continue a run from its last checkpoint (its config, plus any overrides).")
@click.option("--replan", is_flag=True,
              help="With --resume: accept new epochs / lr_max and follow the re-planned "
                   "one-cycle from the current step.")
@click.option("--time-limit", type=float, metavar="SECONDS",
              help="Stop after this many seconds (start-up included), saving the current "
                   "step; continue with --resume. Exit code 7.")
@click.option("--dry-run", is_flag=True,
              help="Resolve and check the config, print it as TOML, and exit.")
@user_errors
def train(config_file, overrides, dry_run, runs_dir, run_dir, overwrite, resume, replan,
          time_limit, **flags):
    """Train a model with the paper's recipe (model.fit, one-cycle, AdamW)."""
    from cmxl_keras import settings

    base = None
    if resume:  # the saved config, under the options given now
        from cmxl_keras import checkpoints  # (imports Keras: not for a new run's --dry-run)

        given = bool(config_file or overrides or any(v is not None for v in flags.values()))
        base = checkpoints.saved_config(resume, given, runs_dir)
    cfg = settings.resolve(config_file, overrides, base=base, **flags)
    if dry_run:
        click.echo(cfg.to_toml(), nl=False)
        return
    from cmxl_keras import train as train_lib

    quiet_tensorflow()
    try:
        train_lib.train(cfg, runs_dir=runs_dir, run_dir=run_dir, resume=resume,
                        overwrite=overwrite, argv=["python"] + sys.argv, replan=replan,
                        time_limit=time_limit)
    except KeyboardInterrupt:
        fail("interrupted before training started; nothing was trained.")


@cli.command()
@click.argument("source")
@click.option("--data-dir", type=str, help="Data to evaluate on (default: the run's own).")
@click.option("--split", type=click.Choice(["val", "test", "all"]), default="val",
              show_default=True, help="Which half of the split protocol to evaluate.")
@click.option("--tta", is_flag=True, help="Also report horizontal-flip test-time augmentation.")
@click.option("--out", "out_dir", type=str,
              help="Where JSON and figures go (default: the run folder, else evaluations/).")
@click.option("--precision", type=click.Choice(["auto", "saved", "float32"]), default="auto",
              show_default=True, help="A Keras model saved under mixed precision: auto runs "
              "it in float32 where no GPU is visible (fast on a CPU), saved as saved.")
@click.option("--format", "fmt", type=click.Choice(["saved_model", "tflite", "tflite_fp16",
              "tflite_int8", "onnx"]), help="Of an exported folder: the file run (default: "
              "its SavedModel).")
@click.option("--other-images", is_flag=True,
              help="Score --data-dir's images even where they are not the run's split (the "
              "JSON says so); without it they must be the run's, by name or index.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@user_errors
def evaluate(source, data_dir, split, tta, out_dir, precision, fmt, other_images, as_json):
    """Evaluate a run, .keras, exported folder, SavedModel, .tflite or .onnx file on the
    run's split of its data or of --data-dir (the same images in any form), checked."""
    if fmt is None or fmt == "saved_model":  # LiteRT and ONNX Runtime need no TensorFlow
        quiet_tensorflow()
    from cmxl_keras import evaluate as evaluate_lib

    results = evaluate_lib.evaluate(source, data_dir, split, tta, out_dir, precision=precision,
                                    log=lambda m: click.echo(m, err=True),
                                    other_images=other_images, fmt=fmt)
    if as_json:
        echo_json(results)
        return
    click.echo(evaluate_lib.format_table(results))
    for path in results["figures"].values():
        click.echo(f"  figure: {path}")


@cli.command()
@click.argument("source", required=False)
@click.option("--checkpoint", type=str, help="A .keras file instead of a run folder.")
@click.option("--formats", show_default=True, help="Comma-separated, any of the default's.",
              default="saved_model,tflite,tflite_fp16,tflite_int8,keras,onnx")
@click.option("--out", "out_dir", default="exported", show_default=True,
              help="Parent folder; the export goes to OUT/<name>/.")
@click.option("--name", type=str, help="Export name (default: the run's config name).")
@click.option("--data-dir", type=str,
              help="Images for int8 calibration and parity checks (default: the run's data).")
@click.option("--parity-images", type=int, default=512, show_default=True,
              help="Validation images compared across formats.")
@click.option("--allow-parity-miss", is_flag=True,
              help="Keep the export even if a format misses its parity target.")
@click.option("--runs-dir", default="runs", show_default=True,
              help="Without SOURCE: export the newest finished run in this folder.")
@click.option("--add", is_flag=True,
              help="Add --formats to OUT/NAME, an export of the same model, keeping its "
                   "other files (e.g. --formats onnx --add).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (folder and metadata) on stdout; logs go to stderr.")
@user_errors
def export(source, checkpoint, formats, out_dir, name, data_dir, parity_images,
           allow_parity_miss, runs_dir, add, as_json):
    """Export a run (or .keras file) to SavedModel, TFLite and ONNX, with parity checks.

    SOURCE defaults to the newest finished run in --runs-dir."""
    from cmxl_keras import export as export_lib

    quiet_tensorflow()
    folder, metadata = export_lib.export_run(
        source, checkpoint, tuple(f.strip() for f in formats.split(",") if f.strip()), out_dir,
        name, data_dir, parity_images, allow_parity_miss, runs_dir,
        log=lambda message: click.echo(message, err=as_json), add=add)  # --json: stdout: JSON
    failures = export_lib.parity_failures(metadata["parity"])
    if as_json:
        echo_json(dict(folder=folder, parity_failures=failures, **metadata))
    else:
        click.echo(export_lib.report_text(folder, metadata))
    if failures:
        click.echo("parity below target: " + "; ".join(failures), err=True)


@cli.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--model", "model_dir", required=True, help="An exported folder (exported/<name>).")
@click.option("--top-k", type=int, default=3, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["saved_model", "tflite", "tflite_fp16",
                                                    "tflite_int8", "onnx"]),
              default="saved_model", show_default=True, help=f"The file run: tflite* on "
              f"LiteRT without TensorFlow; tflite_int8 {TFLITE_INT8_TRADE}.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@user_errors
def predict(images, model_dir, top_k, fmt, as_json):
    """Classify PNG/JPEG files (any size) with an exported model."""
    if fmt == "saved_model":  # --format tflite runs on LiteRT alone: no TensorFlow import
        quiet_tensorflow()
    from cmxl_keras import serving

    results = serving.predict_files(images, model_dir, top_k, fmt)
    if as_json:
        echo_json(results)
        return
    for item in results:
        click.echo(item["image"])
        for guess in item["top_k"]:
            click.echo(f"  {guess['class']:<12} {guess['probability']:.4f}")


@cli.command()
@click.argument("model_dir", required=False)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=int, default=8501, show_default=True,
              help="TensorFlow Serving's REST port; 0 picks a free one.")
@click.option("--runtime", type=click.Choice(["tflite", "tflite_int8", "tflite_fp16", "onnx",
                                              "saved_model"]), default="tflite",
              show_default=True, help=f"LiteRT on the fp32 TFLite file (no TensorFlow), on "
              f"the int8 one ({TFLITE_INT8_TRADE}) or the fp16 one; ONNX Runtime on "
              f"model.onnx; or the SavedModel's own signatures.")
@click.option("--name", help="The model's name in the URLs (default: its config's name).")
@click.option("--max-batch", type=int, default=64, show_default=True,
              help="Images per model call when concurrent requests are batched (1: none).")
@click.option("--batch-wait-ms", type=float, default=0.0, show_default=True,
              help="How long a batch waits for more requests; 0: it takes those that "
                   "arrived while the model ran, and waits for none.")
@click.option("--max-queue", type=int, default=1024, show_default=True,
              help="Images that may wait; past that a request gets 503 (busy: retry), and "
                   "a request with more images than this gets 413.")
@click.option("--max-body-mb", type=float, default=8.0, show_default=True,
              help="The largest request body read; past that 413.")
@click.option("--access-log", default="-", show_default=True, metavar="PATH|-|off",
              help="One line per request (time, client, method, path, status, images, "
                   "bytes, ms): - is stderr, a path is appended to, off is none.")
@click.option("--access-log-format", type=click.Choice(["common", "json"]), default="common",
              show_default=True, help="The common log format with images= and ms= after "
                                      "it, or one JSON object per line.")
@click.option("--drain-seconds", type=float, default=30.0, show_default=True,
              help="On SIGTERM or Ctrl-C: how long requests already accepted may take to "
                   "be answered; new ones get 503 with Retry-After meanwhile.")
@user_errors
def serve(model_dir, host, port, runtime, name, max_batch, batch_wait_ms, max_queue,
          max_body_mb, access_log, access_log_format, drain_seconds):
    """Serve an exported model over TensorFlow Serving's REST API, with a page to try it
    (default MODEL_DIR: the shipped exported/cm_vanilla), Prometheus metrics at
    /monitoring/prometheus/metrics and an access log."""
    from cmxl_keras import server

    if runtime == "saved_model":
        quiet_tensorflow()
    server.serve(model_dir, host, port, runtime, name, log=lambda m: click.echo(m, err=True),
                 max_body=int(max_body_mb * 2**20), max_batch=max_batch,
                 wait=batch_wait_ms / 1000, max_queue=max_queue, access_log=access_log,
                 access_log_format=access_log_format, drain_seconds=drain_seconds)


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True)
@click.option("--out", "out_dir", default="report", show_default=True)
@user_errors
def report(run_dirs, out_dir):
    """Validation-accuracy curves of runs (the paper's Figures 3 and 4)."""
    from cmxl_keras import report as report_lib

    for path in report_lib.report(run_dirs, out_dir):
        click.echo(f"figure: {path}")


@cli.command()
@click.option("--scale", type=click.Choice(["paper", "cpu"]), default="paper", show_default=True,
              help="paper: the paper's seven models (configs/cm_*.toml); cpu: the same seven "
                   "contrasts scaled down alike to about an hour on a laptop CPU (64 wide, "
                   "4x4 patches, the deep rows 33 layers, 20 epochs on 5,000 images).")
@click.option("--seeds", type=str, metavar="S1,S2,...",
              help="Train every config once per seed and report mean and std (the data "
                   "split stays split_seed's).")
@click.option("--epochs", type=int, help="Epochs of every run (paper: 100).")
@click.option("--limit-train", type=int,
              help="Train on N images only, drawn at random per class (split_seed).")
@click.option("--data-dir", type=str, help="Official CIFAR files, their .tar.gz, or images.")
@click.option("--val-from-train", type=int, help="Carve N validation images from train.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key in all seven configs; repeatable.")
@click.option("--out", "out_dir", default="ablation", show_default=True)
@user_errors
def ablation(scale, seeds, epochs, limit_train, data_dir, val_from_train, overrides, out_dir):
    """Train the seven Table-1 configurations; resumable; writes results.md/json."""
    from cmxl_keras import ablation as ablation_lib, config, settings

    changes = settings.command_line_changes(overrides, epochs=epochs, limit_train=limit_train,
                                          data_dir=data_dir, val_from_train=val_from_train)
    config.merge(config.Config(), changes, source="the ablation options")  # fail fast
    seed_list = ablation_lib.training_seeds(seeds, changes)
    quiet_tensorflow()
    rows, figures = ablation_lib.run(changes, out_dir, scale=scale, seeds=seed_list,
                                     argv=["ablation", *sys.argv[2:]])
    click.echo(open(os.path.join(out_dir, "results.md")).read())
    for path in figures:
        click.echo(f"figure: {path}")


def main():
    """The ``cmxl`` console command and ``python cli.py``."""
    cli(prog_name=os.path.basename(sys.argv[0]) if sys.argv[0].endswith("cli.py") else "cmxl")


if __name__ == "__main__":
    main()
