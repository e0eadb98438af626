"""The 2 x 2 of two ``equivalence.py`` comparisons on one split: trained on one form of the
images and on another (lossless and JPEG, say), every final model scored on both.

    python -m reproduce cross TRAINED_ON_A TRAINED_ON_B --out DIR

Each loop (ours, the reference's) is read alone, then the two are compared:

- **the cost at training time**, on each scoring form: the models trained on the first
  form against those trained on the second, paired by seed (the same seed draws the same
  initialization, order and augmentation on both forms: only the pixels differ), with the
  standard error of the per-seed differences, Welch's beside it, and McNemar's exact test
  on the images that one model of a pair gets right and the other wrong (summed over
  the pairs);
- **the cost at test time**, for each training form: every model on the same images in
  both forms (paired per image), the mean per-model difference with its standard error
  over the models, and McNemar's test on the discordant images summed over the models;
- **the loops against each other**: each cost's difference between ours and the
  reference's, with the standard error of that difference.

A difference is called significant where it lies beyond two standard errors, and a
McNemar test where its two-sided p is under 0.05. Writes ``results.json``, ``log.txt``
and ``cross.png`` (each cell's mean top-1 with two standard errors, per loop).
"""

import json
import math
import os

import numpy as np

from cmxl_keras.runs import write_text

SIDES = ("ours", "reference")
# What must be the same in the two comparisons (the other keys: the forms and the data).
SAME = ("train", "val", "split_seed", "epochs", "batch_size", "lr", "width", "depth",
        "patch_size", "kernel_size", "activation", "skip_period", "drop",
        "train_indices_sha256", "val_indices_sha256", "train_names_sha256",
        "val_names_sha256")  # not the pixels: the forms differ in them


def mcnemar(b, c):
    """Two-sided exact p of McNemar's test: ``b`` images right only under the first
    condition, ``c`` only under the second (a binomial test of b against b + c at 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def mean_se(values):
    values = np.asarray(values, np.float64)
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return float(values.mean()), se


def _bits(record):
    return np.frombuffer(record["correct"].encode(), np.uint8) == ord("1")


def _difference(pairs):
    """Points and paired test of (a, b) score records: per-pair top-1 differences, their
    mean and standard error, and McNemar's test on the discordant images of all pairs."""
    diffs = [100 * (a["top1"] - b["top1"]) for a, b in pairs]
    only_a = sum(int((_bits(a) & ~_bits(b)).sum()) for a, b in pairs)
    only_b = sum(int((_bits(b) & ~_bits(a)).sum()) for a, b in pairs)
    mean, se = mean_se(diffs)
    p = mcnemar(only_a, only_b)
    return {"points": mean, "standard_error": se, "pairs": len(pairs), "per_pair": diffs,
            "right_only_first": only_a, "right_only_second": only_b, "mcnemar_p": p,
            "beyond_two_standard_errors": bool(abs(mean) > 2 * se) if se == se else None,
            "mcnemar_significant": bool(p < 0.05)}


def read_side(trained, side, forms):
    """One loop's 2 x 2: ``trained[form]`` is the comparison trained on ``form``."""
    runs = {t: {r["seed"]: r["scores"] for r in trained[t]["runs"].get(side, [])
                if "scores" in r} for t in forms}
    cells = {t: {s: dict(zip(("mean", "standard_error"), mean_se(
        [100 * sc[s]["top1"] for sc in runs[t].values()])), runs=len(runs[t]))
        for s in forms} for t in forms if runs[t]}
    out = {"cells": cells, "seeds": {t: sorted(runs[t]) for t in forms}}
    a, b = forms
    seeds = sorted(set(runs[a]) & set(runs[b]))
    if seeds:
        out["training_cost"] = {s: _difference([(runs[a][k][s], runs[b][k][s]) for k in seeds])
                                for s in forms}
        for s in forms:
            x = [100 * runs[a][k][s]["top1"] for k in runs[a]]
            y = [100 * runs[b][k][s]["top1"] for k in runs[b]]
            if min(len(x), len(y)) > 1:
                out["training_cost"][s]["welch_standard_error"] = math.sqrt(
                    np.var(x, ddof=1) / len(x) + np.var(y, ddof=1) / len(y))
        out["end_to_end"] = _difference([(runs[a][k][a], runs[b][k][b]) for k in seeds])
    out["test_cost"] = {t: _difference([(sc[a], sc[b]) for sc in runs[t].values()])
                        for t in forms if runs[t]}
    return out


def cross(folders):
    """The 2 x 2 reading of the two comparisons in ``folders``."""
    results = []
    for folder in folders:
        with open(os.path.join(folder, "results.json")) as f:
            results.append(json.load(f))
    configs = [r["config"] for r in results]
    for c, folder in zip(configs, folders):
        if not c.get("forms") or not (c.get("paths") or {}).get("score_data"):
            raise SystemExit(f"cross: {folder} was not scored on a second form "
                             f"(run it with --score-data and --forms)")
    forms = configs[0]["forms"]
    if configs[1]["forms"] != forms[::-1]:
        raise SystemExit(f"cross: {folders[0]} trained on {forms[0]} (scored on {forms[1]}),"
                         f" so {folders[1]} must train on {forms[1]} and score on "
                         f"{forms[0]}; its --forms are {configs[1]['forms']}")
    differ = [k for k in SAME if configs[0].get(k) != configs[1].get(k)]
    if differ:
        raise SystemExit(f"cross: the two comparisons differ in {', '.join(differ)}: not the "
                         f"same split and model")
    for a, b, folder in zip(configs, configs[::-1], folders):
        if a.get("score_pixels_sha256") != b.get("val_pixels_sha256"):
            raise SystemExit(f"cross: {folder} scored other validation pixels than the "
                             f"other comparison trained beside (pixel digests "
                             f"{a.get('score_pixels_sha256')} and {b.get('val_pixels_sha256')})"
                             f": not the same images in the two forms")
    trained = {forms[0]: results[0], forms[1]: results[1]}
    sides = {side: read_side(trained, side, forms) for side in SIDES
             if any(r["runs"].get(side) for r in results)}
    loops = {}
    if set(sides) == set(SIDES):
        for name in ("training_cost", "test_cost"):
            ours, ref = sides["ours"].get(name, {}), sides["reference"].get(name, {})
            for key in sorted(set(ours) & set(ref)):
                d = ours[key]["points"] - ref[key]["points"]
                se = math.hypot(ours[key]["standard_error"], ref[key]["standard_error"])
                loops[f"{name} {key}"] = {"points": d, "standard_error": se,
                                          "beyond_two_standard_errors":
                                              bool(abs(d) > 2 * se) if se == se else None}
    return {"forms": forms, "folders": list(folders), "config": configs[0],
            "sides": sides, "ours_minus_reference": loops}


def _say(d):
    se = "n/a" if d["standard_error"] != d["standard_error"] else f"{d['standard_error']:.2f}"
    word = ("significant" if d.get("beyond_two_standard_errors") else "not significant"
            if d.get("beyond_two_standard_errors") is False else "one pair: no standard error")
    text = f"{d['points']:+.2f} points (standard error {se}; {word})"
    if "mcnemar_p" in d:
        text += (f"; McNemar over {d['pairs']} pair(s): {d['right_only_first']} images right "
                 f"only in the first, {d['right_only_second']} only in the second, p "
                 f"{d['mcnemar_p']:.3g}")
    return text


def reading(result):
    a, b = result["forms"]
    lines = [f"2 x 2: trained on {a} or {b}, each model scored on both forms of the same "
             f"{result['config']['val']:,} validation images"]
    for side, r in result["sides"].items():
        lines.append(f"{side}:")
        for t, row in r["cells"].items():
            runs = row[a]["runs"]
            lines.append(f"  trained on {t} ({runs} seed{'s' * (runs != 1)}): " + "; ".join(
                f"on {s} {row[s]['mean']:.2f} % (se {row[s]['standard_error']:.2f})"
                for s in (a, b)))
        for s, d in r.get("training_cost", {}).items():
            lines.append(f"  training cost on {s} images ({a}-trained - {b}-trained): "
                         + _say(d))
        for t, d in r["test_cost"].items():
            lines.append(f"  test cost, {t}-trained models ({a} - {b} images): " + _say(d))
        if "end_to_end" in r:
            lines.append(f"  end to end ({a} throughout - {b} throughout): "
                         + _say(r["end_to_end"]))
    for key, d in result["ours_minus_reference"].items():
        lines.append(f"ours - reference, {key}: " + _say(d))
    return lines


def draw(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = result["forms"]
    fig, axes = plt.subplots(1, len(result["sides"]), figsize=(5 * len(result["sides"]), 4),
                             sharey=True, squeeze=False)
    for ax, (side, r) in zip(axes[0], result["sides"].items()):
        for i, t in enumerate(r["cells"]):
            for j, s in enumerate((a, b)):
                cell = r["cells"][t][s]
                err = 2 * cell["standard_error"] if cell["standard_error"] == \
                    cell["standard_error"] else 0
                ax.bar(i * 3 + j, cell["mean"], yerr=err, capsize=4,
                       color=("tab:blue", "tab:orange")[j], label=f"scored on {s}" if i == 0
                       else None)
        ax.set_xticks([0.5, 3.5], [f"trained on {t}" for t in r["cells"]])
        ax.set_title(f"{side} (bars: 2 standard errors over seeds)")
        ax.set_ylabel("final top-1 (%)")
        lows = [c["mean"] for row in r["cells"].values() for c in row.values()]
        ax.set_ylim(min(lows) - 5, max(lows) + 3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_cross(folders, out):
    result = cross(folders)
    lines = reading(result)
    os.makedirs(out, exist_ok=True)
    write_text(os.path.join(out, "results.json"), json.dumps(result, indent=1))
    write_text(os.path.join(out, "log.txt"), "\n".join(lines) + "\n")
    try:
        draw(result, os.path.join(out, "cross.png"))
    except ImportError:  # a host without matplotlib
        pass
    for line in lines:
        print(line)
    return result
