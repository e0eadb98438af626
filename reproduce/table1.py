"""The Table-1 page (``docs/table1.md``), generated from the committed GPU runs, never
written by hand: per row of the paper's Table 1, the paper's figure, the reference's own
training loop on these images (``python -m reproduce reference-loop``), ours (``cli.py
train``), each seed, the epochs done and the training time; then the whole-run comparisons
with the reference's loop at CPU scale (``results/equivalence/``, ``python -m reproduce
compare``).

    python -m reproduce table1 [--results results/gpu] [--out docs/table1.md] [--check]

A run is a folder ``results/gpu/<run>/`` with its ``config.toml`` (which row: the
architecture and the augmentation; the seed; the split), ``results.json`` once finished
(the reference's says ``"loop": "reference"``), ``metrics.json`` (the epochs done so far)
and ``env.json`` (the code version). The figure is the last epoch's validation top-1:
Table 1 scores the last weights. ``python -m reproduce gpu --collect`` writes the page
after filing a period's runs; ``--check`` exits 1 if the page differs from what the runs
give.
"""

import os

from cmxl_keras.architecture import ARCH_KEYS, VARIANTS
from cmxl_keras.children import read_record
from reproduce import ROOT

PAGE = os.path.join(ROOT, "docs", "table1.md")
RESULTS = os.path.join(ROOT, "results", "gpu")
EQUIVALENCE = os.path.join(ROOT, "results", "equivalence")


def _read(folder, name, default=None):
    return read_record(os.path.join(folder, name), default)


def variant_of(cfg):
    """The Table-1 row a run's config is: its architecture and whether it augments."""
    for name, variant in VARIANTS.items():
        same = all(cfg.get(key) == variant[key] for key in ARCH_KEYS)
        if same and (cfg.get("aug") == "none") == (variant["aug"] == "none"):
            return name
    return None


def runs(results=RESULTS):
    """Every committed run under ``results``: its row, side, seed, epochs, figure."""
    found = []
    for name in sorted(os.listdir(results)) if os.path.isdir(results) else []:
        folder = os.path.join(results, name)
        cfg = _read(folder, "config.toml")
        if not cfg:
            continue
        done = _read(folder, "results.json")
        metrics = _read(folder, "metrics.json", []) or []
        env = _read(folder, "env.json", {}) or {}
        last = (done or {}).get("final") or (metrics[-1] if metrics else {})
        found.append({
            "run": name, "variant": variant_of(cfg), "seed": cfg.get("seed"),
            "side": "reference" if (done or {}).get("loop") == "reference" or
                    "reference_packages" in env else "ours",
            "epochs": cfg.get("epochs"), "epochs_done": len(metrics),
            "finished": done is not None, "top1": last.get("val_accuracy"),
            "seconds": (done or {}).get("train_seconds_total") or sum(
                m.get("epoch_seconds", m.get("seconds", 0)) for m in metrics),
            "code": (env.get("git_commit") or "?")[:10],
            "validation": cfg.get("val_from_train") or cfg.get("val_size")})
    return found


def _top1(run):
    return "-" if run["top1"] is None else f"{100 * run['top1']:.2f} %"


def _figure(run):
    top1 = _top1(run)
    if not run["finished"]:
        top1 += f" (epoch {run['epochs_done']}, running)"
    return f"{run['seed']}: {top1}"


def comparisons(folder=EQUIVALENCE):
    """The page's lines on the committed whole-run comparisons at CPU scale
    (``python -m reproduce compare``, ``results/equivalence/<name>/results.json``): each with
    both sides, its path of ours, epochs, seeds a side, means, difference and error."""
    rows, notes = [], []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        results = _read(os.path.join(folder, name), "results.json")
        summary = (results or {}).get("summary", {})
        if "difference" not in summary:
            continue
        c, sides = results["config"], summary["sides"]
        path = ("JAX, augmentation in the compiled step" if c.get("backend") == "jax"
                else "TensorFlow, tf.data")
        d, se = summary["difference"] * 100, summary["standard_error"] * 100
        rows.append(f"| `{name}` | ConvMixer-{c['width']}/{c['depth']}, patch "
                    f"{c['patch_size']}, {c['train']:,} images | {path} | {c['epochs']} | "
                    f"{sides['ours']['runs']} / {sides['reference']['runs']} | "
                    f"{sides['ours']['mean'] * 100:.2f} % | "
                    f"{sides['reference']['mean'] * 100:.2f} % | {d:+.2f} ({se:.2f}) |")
        if results.get("note"):
            notes.append(f"- `{name}`: {results['note']}.")
    if not rows:
        return []
    return ["", "## Whole runs against the reference's loop, at CPU scale", "",
            "The same comparison on a model and data a CPU trains (`python -m reproduce compare`,",
            "`results/equivalence/`; docs/fidelity.md): both loops on the same images and",
            "split, over seeds; the figure is the mean final validation top-1, and the",
            "difference is ours less the reference's, in points, with its standard error.",
            "", "| comparison | model and data | ours runs on | epochs | seeds (ours / "
            "reference) | ours | reference | difference (SE) |", "|---|---|---|---|---|---|---|---|"
            ] + rows + ([""] + notes if notes else [])


def page(results=RESULTS, equivalence=EQUIVALENCE):
    """The page's text."""
    found = runs(results)
    lines = [
        "# Table 1 on a GPU",
        "",
        "Generated by `python -m reproduce table1` from the committed runs in",
        "`results/gpu/` (`python -m reproduce gpu --collect` writes it after each GPU",
        "period); not edited by hand.",
        "",
        "Every run here trains on 49,000 CIFAR-10 training images stored as JPEG files of",
        "quality 75 (the paper's were lossless) and is scored, with its last weights as",
        "Table 1 scores them, on the 1,000 training images carved out for validation (the",
        "same images for every run); the paper scored its runs on the official test half.",
        "\"reference\" is the paper's own training loop (`python -m reproduce",
        "reference-loop`), \"ours\" is `cli.py train`; each figure is seed: top-1.",
        "",
        "| Table 1 row | paper | reference's loop, these images | ours, these images | "
        "epochs | training time | code |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, spec in VARIANTS.items():
        rows = sorted((r for r in found if r["variant"] == variant),
                      key=lambda r: (r["side"] != "reference", r["seed"] or 0))
        sides = {side: "; ".join(_figure(r) for r in rows if r["side"] == side) or "not run"
                 for side in ("reference", "ours")}
        epochs = ", ".join(sorted({f"{r['epochs_done']}/{r['epochs']}" for r in rows})) or "-"
        seconds = "; ".join(f"{r['side']} {r['seed']}: {r['seconds'] / 60:.1f} min"
                            for r in rows) or "-"
        code = ", ".join(sorted({r["code"] for r in rows})) or "-"
        lines.append(f"| {variant} | {spec['paper_top1']:.2f} % | {sides['reference']} | "
                     f"{sides['ours']} | {epochs} | {seconds} | {code} |")
    strays = [r["run"] for r in found if r["variant"] is None]
    if strays:
        lines += ["", f"Runs that are no Table-1 row: {', '.join(strays)}."]
    lines += ["", "The runs, one line each (folder: side, row, seed, epochs done, top-1, "
              "validation images, code):", ""]
    lines += [f"- `{r['run']}`: {r['side']}, {r['variant']}, seed {r['seed']}, "
              f"{r['epochs_done']}/{r['epochs']} epochs, {_top1(r)}, "
              f"{r['validation']} images, code {r['code']}" for r in found]
    lines += comparisons(equivalence)
    return "\n".join(lines) + "\n"


def main(results=RESULTS, out=PAGE, check=False):
    """Writes the page ``out`` from the runs in ``results``; with ``check``, only says
    whether ``out`` is what they give. Returns 0 when written or up to date, 1 when not."""
    text = page(results)
    if check:
        try:
            with open(out) as f:
                same = f.read() == text
        except OSError:
            same = False
        print(f"{out}: {'up to date' if same else 'differs from the runs: regenerate it'}")
        return 0 if same else 1
    from cmxl_keras.runs import write_text

    write_text(out, text)
    print(f"wrote {out}")
    return 0
