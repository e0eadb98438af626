"""The reproduction of the paper against its own code: the reference's network and
training loop, the whole-run comparisons of ours with it, the Table-1 page, and the GPU
campaign's queue (``reproduce/gpu/``). One command runs all of it: ``python -m reproduce``
from the repository's root (``reproduce/README.md``)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
# The command as a user types it, for help texts, errors and the records a run writes.
COMMAND = "python -m reproduce"


def command(*args):
    """The child process that runs one of this command's subcommands (from the
    repository's root: ``cwd=ROOT`` or a process already there)."""
    import sys

    return [sys.executable, "-m", "reproduce", *args]


def command_line():
    """This process's command line as a user types it, for a run's records."""
    import shlex
    import sys

    return " ".join([COMMAND] + [shlex.quote(a) for a in sys.argv[1:]])

