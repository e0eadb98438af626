"""Progress bars for long work outside ``model.fit`` (evaluation, int8 calibration, parity,
image-folder decoding, the ablation runner).

tqdm rather than ``keras.utils.Progbar``: Progbar writes to stdout, which ``--json`` keeps
for the one JSON object, and has no off switch for logs. These bars go to stderr and only
to a terminal (``disable=None``), so logs, pipes and CI stay clean.
"""

import sys


def bar(iterable=None, total=None, desc=None, unit="batch", leave=False):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr,
                disable=None, dynamic_ncols=True)


def batches(count, size, desc):
    """``range(0, count, size)`` with a bar counting the batches."""
    return bar(range(0, count, size), total=-(-count // size), desc=desc)
