"""The reproduction's command line: ``python -m reproduce ...`` from the repository's root.

A thin front end, as ``cli.py`` is to the library: each command parses its flags and calls
the module that does the work (``equivalence.py`` and its report, ``ref_train.py``,
``table1.py``, ``gpu/``). Errors caused by input are one paragraph naming the value and
the fix, with a non-zero exit and no traceback, as ``cli.py`` prints them.
"""

import os
import sys
import types

import click

from cmxl_keras.cli_support import stops_as_errors
from reproduce.equivalence_sides import STAGES
from reproduce.gpu.run import gpu

EXIT_CODES = ("Exit codes: 0 done; 1 a run failed (its last output is shown); 2 bad flag "
              "or value; 3 bad or missing data; 7 stopped at --time-limit (saved, "
              "resumable: run the same command again).")


def _folders(ctx, param, value):
    for folder in value:
        if not os.path.isfile(os.path.join(folder, "results.json")):
            raise click.BadParameter(f"{folder!r} holds no results.json; give a folder that "
                                     f"a compare command wrote (its --out).", ctx, param)
    return list(value)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
def cli():
    """The reproduction of the paper against its own code: whole runs of ours and of the
    reference's loop compared, the reference's loop as a run, the Table-1 page, and the
    GPU campaign's queue (reproduce/README.md)."""


# compare's defaults are the committed run's (results/equivalence/torchvision-crop-5120/).
@cli.command(epilog="Reading and records: docs/fidelity.md, \"Whole training runs "
                    "against the reference\" and \"What the JPEG images cost\".")
@click.option("--data-dir", "--data", "data", required=True,
              help="The images both sides train on, as cli.py's --data-dir takes them "
                   "(official CIFAR-10 files or archive, train/<class>/ images, or their "
                   ".tar.gz).")
@click.option("--names-from", metavar="D",
              help="Train on --data-dir's images named as D's (image folders: the same "
                   "train/<class>/NNNN in another form, e.g. the JPEG twins of lossless "
                   "PNGs); copied as they are into a .tar under --work.")
@click.option("--score-data", metavar="D",
              help="Also score every final model on D's twins of the validation images (the "
                   "same names in another form; D may hold more).")
@click.option("--forms", default="data,score", show_default=True,
              help="Names of --data-dir's form and --score-data's, comma-separated (e.g. "
                   "lossless,jpeg): the keys of each run's scores.")
@click.option("--train", type=click.IntRange(1), default=5120, show_default=True,
              help="Training images.")
@click.option("--val", type=click.IntRange(1), default=2500, show_default=True,
              help="Validation images.")
@click.option("--split-seed", type=int, default=0, show_default=True)
@click.option("--seeds", default="1204,1205,1206,1207,1208", show_default=True,
              help="Comma-separated; each trains both sides once.")
@click.option("--epochs", type=click.IntRange(1), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.005,
              show_default=True, help="The one-cycle's peak.")
@click.option("--width", type=click.IntRange(1), default=64, show_default=True)
@click.option("--depth", type=click.IntRange(1), default=8, show_default=True)
@click.option("--patch-size", type=click.IntRange(1), default=4, show_default=True)
@click.option("--kernel-size", type=click.IntRange(1), default=5, show_default=True)
@click.option("--activation", type=click.Choice(["gelu", "relu", "silu", "swish"]),
              default="gelu", show_default=True)
@click.option("--skip-period", type=click.IntRange(0), default=0, show_default=True)
@click.option("--backend", type=click.Choice(["tensorflow", "jax"]), default="tensorflow",
              show_default=True, help="Ours: the Keras backend (jax: the GPU runs' path).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu",
              show_default=True, help="The reference: where it trains (fp16 autocast on "
                                      "cuda; auto: cuda where there is one).")
@click.option("--workers", type=click.IntRange(0), default=1, show_default=True,
              help="The reference's DataLoader workers (its script: 8).")
@click.option("--threads", type=click.IntRange(0), default=0, show_default=True,
              help="The reference's torch threads (0: torch's default); with a second "
                   "command running the other side beside it.")
@click.option("--drop", default="",
              help=f"Augmentation stages left out on both sides, comma-separated: "
                   f"{', '.join(STAGES)} (all: no augmentation); to find which stage a "
                   f"difference comes from.")
@click.option("--sides", default="ours,reference", show_default=True,
              help="ours, reference, or both (two commands side by side, read as one by "
                   "join).")
@click.option("--out", help="The comparison's folder (default: results/equivalence/<time>).")
@click.option("--work", default=".equivalence", show_default=True,
              help="Our runs' folders (kept; git-ignored).")
@click.option("--resume", is_flag=True,
              help="Go on with --out's runs: the seeds finished there are kept, a run cut "
                   "off resumes from its folder under --work.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=3600,
              show_default=True, help="Seconds one run of ours may take.")
@click.option("--time-limit", type=click.FloatRange(0, min_open=True),
              help="Seconds this command may take: a run still training then stops where it "
                   "can resume from (ours at a step, the reference after an epoch) and the "
                   "command exits 7; --resume goes on.")
@stops_as_errors
def compare(**options):
    """Whole training runs, ours against the reference's loop, on the same images and split.

    For each seed, trains the same model twice (ours: cli.py train as a user runs it; the
    reference: the paper's train.py loop transcribed, on torchvision's transforms), scores
    both each epoch on the same validation images, and writes to --out results.json (each
    side's final top-1, the difference and its standard error, the gap epoch by epoch),
    curves.png, log.txt and machine.json, again after every run, so a command cut off keeps
    the runs it finished.
    """
    from reproduce import equivalence

    equivalence.main(equivalence.check(types.SimpleNamespace(**options)))


@cli.command()
@click.argument("folders", nargs=-1, required=True, callback=_folders)
@click.option("--out", required=True, help="The folder for the joined comparison.")
@stops_as_errors
def join(folders, out):
    """Reads comparisons of the same images, split and model (other seeds, or one side each,
    run side by side) as one, written to --out."""
    from reproduce.equivalence_report import write_join

    write_join(folders, out)


@cli.command()
@click.argument("folders", nargs=2, callback=_folders)
@click.option("--out", required=True, help="The folder for the 2 x 2's reading.")
@stops_as_errors
def cross(folders, out):
    """Two comparisons of one split trained on two forms of the images, each scored on both
    (compare --score-data), read as one 2 x 2: each cost paired by seed and per image,
    McNemar's exact test, the loops against each other (docs/fidelity.md)."""
    from reproduce.equivalence_cross import write_cross

    write_cross(folders, out)


@cli.command()
@click.argument("folder", callback=lambda ctx, param, value: _folders(ctx, param, [value])[0])
@stops_as_errors
def redraw(folder):
    """Draws FOLDER/curves.png again from FOLDER/results.json (written where matplotlib was
    missing)."""
    from reproduce.equivalence_report import redraw as draw_again

    draw_again(folder)


@cli.command("reference-loop", epilog="The loop and its resumption: docs/gpus.md, \"The "
                                      "reference's own loop, resumable\".")
@click.option("--data-dir", "--data", "data", required=True,
              help="The images, as cli.py's --data-dir takes them.")
@click.option("--run-dir", required=True, help="The run folder (resumed if it holds a run).")
@click.option("--config", default="cm_vanilla", show_default=True,
              help="A config name or file, as cli.py train's --config.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Config overrides, as cli.py train's; repeatable.")
@click.option("--val-from-train", type=click.IntRange(1), default=1000, show_default=True,
              help="Validation images carved from the training images.")
@click.option("--workers", type=click.IntRange(0), default=8, show_default=True,
              help="DataLoader workers (the paper's script: 8).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="auto",
              show_default=True)
@click.option("--time-limit", type=click.FloatRange(0, min_open=True),
              help="Seconds: stop, saved, before them (exit 7).")
@click.option("--stop-after", type=click.IntRange(1), help="Epochs of this command at most.")
@click.option("--drop", default="", help="torchvision transforms left out, comma-separated "
                                         "(their class names).")
@stops_as_errors
def reference_loop(**options):
    """The paper's own training loop as a run on our split: checkpointed every epoch with
    every random state, resumed where it stopped, its last weights converted into our
    model.keras with metrics.json and results.json, so cli.py evaluate scores it as it
    scores ours."""
    from reproduce import ref_train

    args = types.SimpleNamespace(**options)
    args.overrides = list(args.overrides)
    code = ref_train.main(args)
    if code:
        sys.exit(code)


@cli.command(epilog="The page: docs/table1.md.")
@click.option("--results", type=click.Path(exists=True, file_okay=False),
              help="The committed runs (default: results/gpu).")
@click.option("--out", type=click.Path(dir_okay=False), help="The page (default: docs/table1.md).")
@click.option("--check", is_flag=True, help="Exit 1 if --out differs from what the runs give.")
@stops_as_errors
def table1(results, out, check):
    """The Table-1 page from the committed GPU runs and the comparisons at CPU scale, never
    written by hand."""
    from reproduce import table1 as page

    code = page.main(results or page.RESULTS, out or page.PAGE, check)
    if code:
        sys.exit(code)


cli.add_command(gpu)


def main():
    cli()
