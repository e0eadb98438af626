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
