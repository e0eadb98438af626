"""Child processes of the scripts around the library (the benchmarks of ``bench/``, the
reproduction of ``reproduce/``): each run with a timeout, and on failure or a hang an exit
naming the command and showing the child's last output, so a stuck worker never hangs a
script and never fails silently; and their records, read where they may be torn."""

import json
import subprocess
import sys
import tomllib


def read_record(path, default=None):
    """A JSON (or ``.toml``) record, or ``default`` where it is missing or unreadable: the
    scripts' records may be cut off mid-write by a killed machine, and a missing or torn
    record means "not there yet" to every reader of them."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f) if path.endswith(".toml") else json.load(f)
    except (OSError, ValueError):
        return default


def tail(text, limit=3000):
    """The last ``limit`` characters of a child's output (bytes or text; None is empty)."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-limit:]


def run_or_exit(command, timeout, label=None, ok=(0,), **kwargs):
    """Runs ``command`` (``subprocess.run`` keyword arguments pass through) and returns the
    completed process; exits with ``label`` (by default the command line) and the last
    output if it fails (an exit code not in ``ok``) or runs past ``timeout`` seconds."""
    label = label or " ".join(command)
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                             **kwargs)
    except subprocess.TimeoutExpired as error:
        sys.exit(f"{label} ran past --timeout {timeout:g} s; its last output:\n"
                 f"{tail(error.stdout)}{tail(error.stderr)}")
    if out.returncode not in ok:
        sys.exit(f"{label} failed (exit {out.returncode}); its last output:\n"
                 f"{tail(out.stdout)}{tail(out.stderr)}")
    return out
