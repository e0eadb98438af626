#!/usr/bin/env python3
"""cmxl-keras command line, run from a clone: ``python cli.py --help``.

The commands live in ``cmxl_keras/cli.py``; ``pip install .`` installs the same as the
``cmxl`` command.
"""

from cmxl_keras.cli import *  # noqa: F401,F403  (the exit codes, for scripts and tests)
from cmxl_keras.cli import cli, main  # noqa: F401

if __name__ == "__main__":
    main()
