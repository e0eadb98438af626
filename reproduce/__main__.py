"""``python -m reproduce``: the reproduction's command (``reproduce/cli.py``)."""

from reproduce.cli import main

main()
