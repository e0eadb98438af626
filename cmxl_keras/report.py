"""Validation-accuracy curves of one or many runs (the paper's Figures 3 and 4), and the
Table-1 ablation runner that trains the seven configurations and tabulates them.
"""

import os

from cmxl_keras import runs
from cmxl_keras.errors import RunError

# Table 1's order and the paper's top-1 (%).
TABLE1 = ("cm_vanilla_noaug", "cm_vanilla", "cm_vanilla_relu", "cm_vanilla_silu",
          "cm_xl_noskip", "cm_xl_skip", "cm_xl")


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
    curves = load_curves(run_dirs)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise RunError(f"cannot write to {out_dir!r} ({error.strerror or error}).") from None
    return [plot_curves(curves, os.path.join(out_dir, "val_accuracy.png"),
                        "validation accuracy per epoch"),
            plot_curves(curves, os.path.join(out_dir, "val_accuracy_zoom.png"),
                        "validation accuracy per epoch (best runs)", zoom=True)]


def ablation(overrides, out_dir="ablation", log=print):
    """Trains the seven Table-1 configurations in sequence with the same seed and data.

    Resumable: a configuration with results is not redone, an interrupted one resumes
    from its checkpoint. Writes ``results.json``, ``results.md`` and the curves.
    """
    with runs.RunLock(out_dir):  # a second runner on this folder is refused, not interleaved
        return _ablation(overrides, out_dir, log)


def _ablation(overrides, out_dir, log):
    import keras

    from cmxl_keras import architecture, config, evaluate, train

    from cmxl_keras import progress

    rows = []
    for variant in progress.bar(TABLE1, desc="ablation", unit="run", leave=True):
        cfg = config.merge(config.load(variant), overrides, source="the ablation options")
        run_dir = os.path.join(out_dir, variant)
        paths = runs.checkpoint_paths(run_dir)
        if os.path.isfile(os.path.join(run_dir, "results.json")):
            log(f"ablation: {variant} is finished; not redone")
        elif any(os.path.isfile(paths[k]) for k in ("last", "good", "state")):
            log(f"ablation: resuming {variant}")
            train.train(cfg, resume=run_dir, argv=["ablation"], log=log)
        else:
            log(f"ablation: training {variant}")
            train.train(cfg, run_dir=run_dir, overwrite=True, argv=["ablation"], log=log)
        keras.backend.clear_session()
        has_test = runs.read_json(os.path.join(run_dir, "split.json"), {}).get("test", 0) > 0
        split = "test" if has_test else "val"
        result = runs.read_json(os.path.join(run_dir, f"eval_{split}.json"))
        if result is None:
            result = evaluate.evaluate(run_dir, split=split, log=lambda m: None)
        paper = architecture.VARIANTS[variant]["paper_top1"]
        top1 = 100 * result["top1"]
        rows.append({"name": variant, "params": architecture.count_params(
            cfg.width, cfg.depth, cfg.patch_size, cfg.kernel_size, cfg.num_classes),
            "epochs": cfg.epochs, "split": split, "top1": round(top1, 2), "paper_top1": paper,
            "difference": round(top1 - paper, 2)})
    runs.write_json(os.path.join(out_dir, "results.json"), rows)
    lines = ["| name | params | epochs | our top-1 % (split) | paper top-1 % | difference |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['params']:,} | {r['epochs']} | {r['top1']:.2f} "
              f"({r['split']}) | {r['paper_top1']:.2f} | {r['difference']:+.2f} |" for r in rows]
    runs.write_text(os.path.join(out_dir, "results.md"), "\n".join(lines) + "\n")
    figures = report([os.path.join(out_dir, v) for v in TABLE1], out_dir)
    return rows, figures
