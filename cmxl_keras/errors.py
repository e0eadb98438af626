"""Errors a user can act on. The CLI prints their message as one paragraph, no traceback."""


class CmxlError(Exception):
    """Base of every error caused by user input (a value, a file, a folder)."""


class ConfigError(CmxlError, ValueError):
    """A bad configuration value; the message names key, value and what is allowed."""


class DataError(CmxlError):
    """A dataset that is missing, unreadable or inconsistent; the message names the file."""


class RunError(CmxlError):
    """A run folder, checkpoint or exported model that cannot be used as asked."""


class RunInUse(RunError):
    """Another live process holds the run folder's lock."""


class DamagedCheckpoint(RunError):
    """A checkpoint file that is truncated, bit-flipped or not a checkpoint at all."""


class ParityMiss(RunError):
    """An exported format disagrees with the Keras model beyond its target."""


class TrainingDiverged(RunError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(RunError):
    """SIGINT or SIGTERM arrived; the state was saved."""


class TimeLimitReached(TrainingInterrupted):
    """Training reached its ``--time-limit``; the state was saved."""


# The command line's exit code for each kind of error, so that scripts and schedulers
# can tell outcomes apart (docs/troubleshooting.md): the first kind an error is an
# instance of gives its code. 2 is also what click uses for a usage error.
EXIT_CODES = (
    (TimeLimitReached, 7),  # train --time-limit passed; every finished step is saved
    (TrainingInterrupted, 130),  # SIGINT/SIGTERM; every finished step is saved
    (DataError, 3),  # a missing, partial or unreadable dataset
    (TrainingDiverged, 4),  # the loss became NaN or infinite; the last good checkpoint kept
    (ParityMiss, 5),  # an export missed a parity target (files kept only on request)
    (RunInUse, 6),  # another live process trains in the run folder (its PID is named)
    (CmxlError, 2),  # a bad flag, config value, run folder or checkpoint
)


def exit_code(error):
    return next(code for kind, code in EXIT_CODES if isinstance(error, kind))
