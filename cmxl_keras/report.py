"""Validation-accuracy curves of one or many runs (the paper's Figures 3 and 4).

This module only draws; the Table-1 runner that trains the runs is ``ablation``.
"""

import os

from cmxl_keras import runs
from cmxl_keras.errors import RunError

def load_curves(run_dirs):
    """``{label: (epochs, val_accuracy)}`` from each run folder's metrics.json."""
    curves = {}
    for run_dir in run_dirs:
        metrics = runs.read_json(os.path.join(run_dir, "metrics.json"))
        if metrics is None:
            raise RunError(f"{run_dir!r} has no metrics.json: give run folders made by "
                           f"'python cli.py train'.")
        cfg = runs.read_json(os.path.join(run_dir, "config.json"), {})
        label = cfg.get("name") or os.path.basename(os.path.normpath(run_dir))
        if label in curves:
            label = os.path.basename(os.path.normpath(run_dir))
        curves[label] = ([m["epoch"] for m in metrics if "val_accuracy" in m],
                         [100 * m["val_accuracy"] for m in metrics if "val_accuracy" in m])
    return curves


def plot_curves(curves, path, title, zoom=False):
    """One line per run; ``zoom`` limits the y axis to the best runs (the paper's Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    finals = {label: acc[-1] for label, (_, acc) in curves.items() if acc}
    for label, (epochs, acc) in curves.items():
        ax.plot(epochs, acc, marker="o" if len(epochs) < 20 else None, label=label)
    if zoom and finals:
        best = max(finals.values())
        good = [v for v in finals.values() if v >= best - 5]
        ax.set_ylim(min(good) - 2, best + 1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with runs.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def report(run_dirs, out_dir):
    """Figures 3 and 4 for ``run_dirs``; returns the PNG paths."""
    if not run_dirs:
        raise RunError("report needs at least one run folder: python cli.py report runs/*")
    return draw(load_curves(run_dirs), out_dir)


def draw(curves, out_dir):
    """Both figures of ``{label: (epochs, accuracy)}`` in ``out_dir``; returns the paths."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise RunError(f"cannot write to {out_dir!r} ({error.strerror or error}).") from None
    return [plot_curves(curves, os.path.join(out_dir, "val_accuracy.png"),
                        "validation accuracy per epoch"),
            plot_curves(curves, os.path.join(out_dir, "val_accuracy_zoom.png"),
                        "validation accuracy per epoch (best runs)", zoom=True)]
