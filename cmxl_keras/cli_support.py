"""The command line's plumbing, shared by its commands: the library's user-facing errors
as one paragraph and an exit code, JSON on stdout, TensorFlow's logger quieted."""

import functools
import sys

import click

EXIT_USER_ERROR = 2  # errors.EXIT_CODES has the code of each kind of error

# The int8 TFLite file's trade, measured on a 2-core CPU (bench/RESULTS.md, the serve
# bench): said in predict's and serve's --help.
TFLITE_INT8_TRADE = ("served at 1.6x to 1.9x the fp32 file's images/s on a 2-core CPU, "
                     "at 98.3 % top-1 agreement with it on the shipped model's held-out "
                     "images")
EXIT_CODES_HELP = (
    "Exit codes: 0 done; 2 bad flag, config value, run folder or checkpoint; 3 bad or "
    "missing data; 4 training diverged (NaN); 5 export parity below target; 6 run "
    "folder in use by another process; 7 stopped at --time-limit (saved, resumable); "
    "130 interrupted (saved, resumable).")


def fail(message, code=EXIT_USER_ERROR):
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def user_errors(command):
    """Turns the library's user-facing errors into one paragraph and an exit code; a run
    stopped and saved (interrupted, or at its time limit) is said without "Error:"."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from cmxl_keras import errors

        try:
            return command(*args, **kwargs)
        except errors.CmxlError as error:
            if isinstance(error, errors.TrainingInterrupted):  # stopped and saved
                click.echo(str(error), err=True)
                sys.exit(errors.exit_code(error))
            fail(str(error), errors.exit_code(error))

    return wrapper


def stops_as_errors(command):
    """``user_errors``, and a step that stops the command with a message
    (``sys.exit("...")``: a child run failed, a record disagrees) said the same way, exit 1
    (the reproduction's command, whose steps run as scripts too)."""

    said = user_errors(command)

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return said(*args, **kwargs)
        except SystemExit as stop:
            if isinstance(stop.code, str):
                fail(stop.code, 1)
            raise

    return wrapper


def quiet_tensorflow():
    """keras-cv's vectorized augmentations log a warning per op they cannot vectorize."""
    try:
        import tensorflow as tf
    except ImportError:
        return
    tf.get_logger().setLevel("ERROR")


def echo_json(data):
    """One JSON object on stdout (numpy scalars and arrays as plain numbers and lists)."""
    import json

    from cmxl_keras.runs import json_default

    click.echo(json.dumps(data, indent=2, default=json_default))


def model_options(command):
    """Architecture flags shared by train and info; None means 'not given'."""
    options = [
        click.option("--config", "config_file", metavar="FILE|NAME",
                     help="TOML config file, or a name in configs/ (e.g. smoke, cm_xl)."),
        click.option("--width", type=int, help="Channels h of every layer (paper: 256)."),
        click.option("--depth", type=int, help="Number of ConvMixer layers (8, or 66 for XL)."),
        click.option("--patch-size", type=int, help="Stem patch size p (paper: 2)."),
        click.option("--kernel-size", type=int, help="Depthwise kernel size k (paper: 5)."),
        click.option("--act", "--activation", "activation",
                     help="gelu, relu, silu (= swish) or leaky_relu."),
        click.option("--skip-period", type=int,
                     help="Long-skip groups; depth must divide by it; 0 = none."),
        click.option("--num-classes", type=int, help="10 for CIFAR-10, 100 for CIFAR-100."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override any config key; repeatable."),
    ]
    for option in reversed(options):
        command = option(command)
    return command
