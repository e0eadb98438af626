"""The reading of ``equivalence.py``'s runs: each side's final top-1, the difference with
its standard error, the gap epoch by epoch, the figure, and the join of runs made by
separate commands (one side each, or seeds split between machines) into one reading.

    python -m reproduce join DIR1 DIR2 --out DIR   # one results.json from two
    python -m reproduce redraw DIR                  # curves.png again
"""

import json
import math
import os

import numpy as np

from cmxl_keras.runs import write_text
from cmxl_keras.children import read_record

SIDES = ("ours", "reference")
# What may differ between the parts of a join: the seeds they ran and the sides.
JOIN_FREE = ("seeds", "sides")


def welch(ours, reference):
    """(mean difference ours - reference, Welch's standard error) of two samples; the
    standard error is NaN with fewer than two values a side."""
    a, b = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    diff = float(a.mean() - b.mean())
    if min(len(a), len(b)) < 2:
        return diff, float("nan")
    return diff, math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))


def summarize(finals):
    """Each side's mean and sample standard deviation of the final top-1, the difference
    (ours - reference) with its standard error, and whether it lies within two."""
    sides = {}
    for side, values in finals.items():
        values = np.asarray(values, np.float64)
        sd = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        sides[side] = {"runs": len(values), "mean": float(values.mean()), "sd": sd,
                       "values": values.tolist()}
    summary = {"sides": sides}
    if set(sides) == set(SIDES) and min(len(v) for v in finals.values()) > 1:
        diff, se = welch(finals["ours"], finals["reference"])
        summary.update(difference=diff, standard_error=se,
                       within_two_standard_errors=bool(abs(diff) <= 2 * se))
    return summary


def gap(runs):
    """Epoch by epoch, over the runs of both sides: each side's mean validation
    top-1, the difference and its standard error; [] unless both sides have runs."""
    curves = {side: np.array([[e["val_accuracy"] for e in r["epochs"]]
                              for r in runs.get(side, [])]) for side in SIDES}
    if any(c.size == 0 for c in curves.values()):
        return []
    epochs = min(c.shape[1] for c in curves.values())
    rows = []
    for e in range(epochs):
        diff, se = welch(curves["ours"][:, e], curves["reference"][:, e])
        rows.append({"epoch": e + 1, "ours": float(curves["ours"][:, e].mean()),
                     "reference": float(curves["reference"][:, e].mean()),
                     "difference": diff, "standard_error": se})
    return rows


def summary_of(results):
    """``results``' summary: the runs' final top-1 and the gap by epoch."""
    summary = summarize({side: [r["epochs"][-1]["val_accuracy"] for r in runs]
                         for side, runs in results["runs"].items() if runs})
    summary["gap"] = gap(results["runs"])
    return summary


def reading(summary):
    lines = [f"{side}: final top-1 {s['mean'] * 100:.2f} % mean, "
             + (f"{s['sd'] * 100:.2f} sd over {s['runs']} seeds" if s["runs"] > 1
                else "one seed (no spread yet)")
             + f" ({', '.join(f'{v * 100:.2f}' for v in s['values'])})"
             for side, s in summary["sides"].items()]
    if "difference" in summary:
        d, se = summary["difference"] * 100, summary["standard_error"] * 100
        lines.append(f"difference (ours - reference): {d:+.2f} points, standard error "
                     f"{se:.2f}: " + ("within two standard errors"
                                      if summary["within_two_standard_errors"] else
                                      f"outside two standard errors ({abs(d) / se:.1f} SE)"
                                      if se > 0 else "no spread to judge it by"))
    rows = summary.get("gap") or []
    if rows:
        marks = sorted({max(1, round(len(rows) * f)) for f in (0.1, 0.25, 0.4, 0.6, 0.8, 1)})
        gaps = [(m, rows[m - 1]["difference"] * 100, rows[m - 1]["standard_error"] * 100)
                for m in marks]
        lines.append("gap by epoch (ours - reference, points, standard error): " + "; ".join(
            f"{m}: {d:+.2f}" + ("" if math.isnan(se) else f" ({se:.2f})") for m, d, se in gaps))
    return lines


def draw(results, path):
    """The validation curves of every run, both sides on one panel, and the gap between
    the sides' means (with two standard errors) on a second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colors = {"ours": "tab:blue", "reference": "tab:orange"}
    rows = gap(results["runs"])
    fig, axes = plt.subplots(2 if rows else 1, 1, figsize=(7, 7 if rows else 4.5), dpi=120,
                             squeeze=False, sharex=True,
                             gridspec_kw={"height_ratios": [2, 1] if rows else [1]})
    ax = axes[0, 0]
    for side, runs in results["runs"].items():
        for run in runs:
            curve = [r["val_accuracy"] * 100 for r in run["epochs"]]
            ax.plot(range(1, len(curve) + 1), curve, color=colors[side], alpha=0.3,
                    linewidth=0.8)
        if runs:
            mean = np.array([[r["val_accuracy"] for r in run["epochs"]] for run in runs]).mean(0)
            ax.plot(range(1, len(mean) + 1), mean * 100, color=colors[side], linewidth=2,
                    label=f"{side} (mean of {len(runs)})")
    c = results["config"]
    ax.set(ylabel="validation top-1 (%)",
           title=f"ConvMixer-{c['width']}/{c['depth']}, patch {c['patch_size']}: "
                 f"{c['train']:,} training, {c['val']:,} validation images")
    ax.grid(alpha=0.3)
    ax.legend()
    if rows:
        g = axes[1, 0]
        epochs = [r["epoch"] for r in rows]
        diff = np.array([r["difference"] for r in rows]) * 100
        se = np.array([r["standard_error"] for r in rows]) * 100
        g.plot(epochs, diff, color="black", linewidth=1.5, label="ours - reference")
        if np.isfinite(se).all():
            g.fill_between(epochs, diff - 2 * se, diff + 2 * se, color="gray", alpha=0.3,
                           label="two standard errors")
        g.axhline(0, color="gray", linewidth=0.8)
        g.set(ylabel="gap (points)")
        g.grid(alpha=0.3)
        g.legend()
    axes[-1, 0].set(xlabel="epoch")
    axes[-1, 0].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def join(folders):
    """One results dict from the ``results.json`` of ``folders`` (made by separate
    commands on the same images, split and model): their runs, side by side. Refuses
    parts whose config differs beyond the seeds and sides, and a seed run twice."""
    parts = []
    for folder in folders:
        path = os.path.join(folder, "results.json")
        try:
            with open(path) as f:
                parts.append(json.load(f))
        except (OSError, ValueError) as error:
            raise SystemExit(f"join: cannot read {path} ({error}); give folders that "
                             f"python -m reproduce compare wrote") from None
    config = {k: v for k, v in parts[0]["config"].items() if k not in JOIN_FREE}
    runs = {side: [] for side in SIDES}
    for folder, part in zip(folders, parts):
        other = {k: v for k, v in part["config"].items() if k not in JOIN_FREE}
        if other != config:
            keys = sorted(k for k in set(config) | set(other) if config.get(k) != other.get(k))
            values = ", ".join(f"{other.get(k)!r} vs {config.get(k)!r}" for k in keys)
            raise SystemExit(f"join: {folder} was run with a different {', '.join(keys)} "
                             f"({values}); only runs of the same images, split and model "
                             f"can be joined")
        for side, side_runs in part["runs"].items():
            seen = {r["seed"] for r in runs[side]}
            twice = sorted(seen & {r["seed"] for r in side_runs})
            if twice:
                raise SystemExit(f"join: {side} seed(s) {twice} appear in two folders; "
                                 f"leave one of them out")
            runs[side].extend(side_runs)
    for side_runs in runs.values():
        side_runs.sort(key=lambda r: r["seed"])
    seeds = sorted({r["seed"] for side_runs in runs.values() for r in side_runs})
    config.update(seeds=seeds, sides=[s for s in SIDES if runs[s]], joined=list(folders))
    results = {"config": config, "runs": {s: r for s, r in runs.items() if r}}
    results["summary"] = summary_of(results)
    return results


def earlier(out, results, log):
    """``--resume``: adds to ``results`` and ``log`` the runs and log lines that ``out``
    holds from earlier commands, when they compare the same images, split and model;
    returns the earlier commands' machine records."""
    path = os.path.join(out, "results.json")
    if not os.path.exists(path):
        log(f"--resume: {path} does not exist yet; starting the comparison")
        return []
    try:
        with open(path) as f:
            before = json.load(f)
    except ValueError as error:
        raise SystemExit(f"--resume: {path} is not readable JSON ({error}); its runs cannot be "
                         f"kept: restore it, or give another --out") from None
    free = ("seeds", "data", "paths") if "forms" in results["config"] else ("seeds",)
    keep = {k: v for k, v in before["config"].items() if k not in free}
    now = {k: v for k, v in results["config"].items() if k not in free}
    if keep != now:
        keys = sorted(k for k in set(keep) | set(now) if keep.get(k) != now.get(k))
        differ = ", ".join(f"{k}: {keep.get(k)!r} there, {now.get(k)!r} here" for k in keys)
        raise SystemExit(f"--resume: {out} compares another setup ({differ}); give the same "
                         f"arguments, or another --out")
    for side, side_runs in before["runs"].items():
        results["runs"].setdefault(side, []).extend(side_runs)
    with open(os.path.join(out, "log.txt")) as f:
        log.lines[:0] = f.read().splitlines()
    machine_before = read_record(os.path.join(out, "machine.json"), {})
    done = {side: [r["seed"] for r in side_runs] for side, side_runs in before["runs"].items()}
    log(f"--resume: {out} holds {done}; going on")
    return machine_before.pop("earlier", []) + [machine_before]


def write_join(folders, out):
    """``join``: the joined reading written to ``out``."""
    results = join(folders)
    os.makedirs(out, exist_ok=True)
    write_text(os.path.join(out, "results.json"), json.dumps(results, indent=1))
    draw(results, os.path.join(out, "curves.png"))
    lines = reading(results["summary"])
    write_text(os.path.join(out, "log.txt"), "\n".join(
        [f"joined {', '.join(folders)} (each folder's log.txt has its runs)"] + lines) + "\n")
    for line in lines:
        print(line)
    print(f"wrote {out}/: results.json, curves.png, log.txt")
    return results


def redraw(folder):
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    draw(results, os.path.join(folder, "curves.png"))
    for line in reading(summary_of(results)):
        print(line)
