"""The Table-1 ablation runner: trains the paper's seven configurations in sequence with the
same split, for one or several training seeds, and tabulates them (``results.json``,
``results.md``, the curves).

Two scales: ``paper`` (``architecture.VARIANTS``, which ``configs/cm_*.toml`` hold: the
paper's models and recipe) and ``cpu`` (``CPU_SCALE``, the same seven contrasts scaled down
alike to run on a laptop CPU in about an hour). Resumable: a finished run is not redone,
an interrupted one resumes from its checkpoint. Figures are drawn by ``report``.
"""

import datetime
import os
import platform
import sys
import time

import numpy as np

from cmxl_keras import checkpoints, config, report, runs, settings
from cmxl_keras.architecture import ARCH_KEYS, VARIANTS
from cmxl_keras.config import parse_seeds
from cmxl_keras.errors import ConfigError, RunError, TrainingInterrupted

TABLE1 = tuple(VARIANTS)  # Table 1's rows, in its order
SCALES = ("paper", "cpu")
# The CPU scale: the one change made to every Table-1 row, so that the seven run on a
# laptop CPU in about an hour; the recipe, the seed and the split stay the paper's.
# ConvMixer-64 with 4x4 patches (8x8 tokens), 20 epochs on 5,000 training images with
# 2,500 validation images carved from train; the deep rows at half the paper's depth
# (33 = 3 groups of 11 layers, against 66 = 3 x 22), the vanilla rows keep their 8.
CPU_SCALE = dict(width=64, patch_size=4, epochs=20, limit_train=5000, val_from_train=2500)
CPU_DEPTH = {66: 33}
# The paper's three findings, as (what, better row, worse row): the better row's top-1
# minus the worse row's is the finding's gap.
FINDINGS = (
    ("depth without long skips collapses", "cm_xl_skip", "cm_xl_noskip"),
    ("with long skips, SiLU edges out GELU at depth", "cm_xl", "cm_xl_skip"),
    ("augmentation lifts CM-Vanilla", "cm_vanilla", "cm_vanilla_noaug"),
)

# What a finished run must share with the config the runner asks for, to be reused.
RUN_KEYS = ARCH_KEYS + ("dataset", "num_classes", "aug", "epochs", "batch_size", "lr_max",
                        "weight_decay", "seed", "split_seed", "val_size", "val_from_train",
                        "limit_train", "steps_per_epoch")


def training_seeds(seeds, changes):
    """``--seeds``' list (None where not given), checked against the other options'
    ``changes``: a ConfigError where ``--set seed=`` sets the seed as well."""
    if seeds is None:
        return None
    seed_list = parse_seeds(seeds)
    if "seed" in changes:
        raise ConfigError(
            f"--seeds {seeds} and --set seed={changes['seed']} both set the training seed. "
            f"Give one: --seeds S for a single seed, or several to average.")
    return seed_list


def scaled_config(variant, scale):
    """Table 1's row ``variant`` (``architecture.VARIANTS`` with the reference's seed and
    split: ``config.variant_config``, which ``configs/<variant>.toml`` holds) at ``scale``."""
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}.")
    cfg = config.variant_config(variant)
    if scale == "cpu":
        cfg = config.merge(cfg, dict(CPU_SCALE, name=f"cpu_{variant}",
                                     depth=CPU_DEPTH.get(cfg.depth, cfg.depth)),
                           source="the CPU scale")
    return cfg


def run_folder(out_dir, variant, seed=None):
    """``<out>/<variant>`` for the config's own seed, ``<out>/<variant>-seed<seed>`` for each
    seed of ``--seeds``."""
    return os.path.join(out_dir, variant if seed is None else f"{variant}-seed{seed}")


def check_finished(run_dir, cfg):
    """Refuses to reuse a finished run made with other settings (say an earlier ablation
    with other --epochs in the same --out): it is neither counted nor overwritten."""
    saved = settings.load_saved(run_dir)
    diffs = [f"{key} {was!r} (asked: {now!r})"
             for key, was, now in config.differing(saved, cfg, RUN_KEYS)]
    if diffs:
        raise RunError(
            f"{run_dir!r} holds a finished run made with other settings: {', '.join(diffs)}. "
            f"The ablation does not overwrite finished work: give another --out, or move "
            f"that folder away and run the same command again.")


def mean_std(values):
    """The mean and the sample standard deviation (n - 1) of per-seed figures; the
    deviation is None for one seed, where there is no spread to measure."""
    values = np.asarray(values, np.float64)
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else None)


def run(overrides, out_dir="ablation", scale="paper", seeds=None, argv=(), log=print):
    """Trains the seven configurations of ``scale`` once per seed in ``seeds`` (None: each
    config's own seed) with ``overrides``, then writes the table and the figures.

    Returns ``(rows, figure paths)``. Each run is ``<out>/<variant>`` (the config's own
    seed) or ``<out>/<variant>-seed<seed>``; ``<out>/log.txt`` keeps every invocation's log.
    """
    plan = planned_runs(overrides, out_dir, scale, seeds)  # refusals come before any write
    os.makedirs(out_dir, exist_ok=True)
    with runs.RunLock(out_dir):  # a second runner on this folder is refused, not interleaved
        log_path = os.path.join(out_dir, "log.txt")
        with open(log_path, "a") as log_file:
            def tee(message):
                log(message)
                log_file.write(f"{message}\n")
                log_file.flush()

            tee(f"# {datetime.datetime.now().isoformat(timespec='seconds')}: "
                f"{' '.join(argv) or 'ablation'}")
            try:
                return _run(plan, overrides, out_dir, scale, seeds, list(argv), tee)
            except TrainingInterrupted as error:  # every finished step and run is saved
                raise TrainingInterrupted(
                    f"{error} Then run the same ablation command again.") from None


def planned_runs(overrides, out_dir, scale, seeds):
    """``{variant: [(seed or None, config, run folder), ...]}`` in Table 1's order. Every
    config is made, and every finished run checked, before the first run starts."""
    plan = {}
    for variant in TABLE1:
        base = config.merge(scaled_config(variant, scale), overrides,
                            source="the ablation options")
        plan[variant] = []
        for seed in seeds or (None,):
            cfg = base if seed is None else base.replace(seed=seed)
            run_dir = run_folder(out_dir, variant, seed)
            if os.path.isfile(os.path.join(run_dir, "results.json")):
                check_finished(run_dir, cfg)
            plan[variant].append((seed, cfg, run_dir))
    return plan


def _run(plan, overrides, out_dir, scale, seeds, argv, log):
    import keras

    from cmxl_keras import architecture, evaluate, progress, train

    started = time.time()
    seed_list = tuple(seeds) if seeds else None
    trained, rows = 0, []
    for variant in progress.bar(TABLE1, desc="ablation", unit="config", leave=True):
        per_seed, train_seconds, folders = [], 0.0, []
        for seed, cfg, run_dir in plan[variant]:
            label = variant if seed is None else f"{variant} seed {seed}"
            if os.path.isfile(os.path.join(run_dir, "results.json")):
                log(f"ablation: {label} is finished; not redone")
            elif checkpoints.has_checkpoint(run_dir):
                log(f"ablation: resuming {label}")
                train.train(cfg, resume=run_dir, argv=["ablation"], log=log)
                trained += 1
            else:
                log(f"ablation: training {label}")
                train.train(cfg, run_dir=run_dir, overwrite=True, argv=["ablation"], log=log)
                trained += 1
            keras.backend.clear_session()
            has_test = runs.read_json(os.path.join(run_dir, "split.json"), {}).get("test", 0) > 0
            split = "test" if has_test else "val"
            result = runs.read_json(os.path.join(run_dir, f"eval_{split}.json"))
            if result is None:
                result = evaluate.evaluate(run_dir, split=split, log=lambda m: None)
            per_seed.append(100 * result["top1"])
            train_seconds += runs.read_json(os.path.join(run_dir, "results.json"), {}).get(
                "train_seconds_total", 0.0)
            folders.append(run_dir)
        cfg = plan[variant][0][1]
        top1, std = mean_std(per_seed)
        paper = architecture.VARIANTS[variant]["paper_top1"]
        rows.append({
            "name": variant, "config": cfg.name,
            "params": architecture.count_params(cfg.width, cfg.depth, cfg.patch_size,
                                                cfg.kernel_size, cfg.num_classes),
            "width": cfg.width, "depth": cfg.depth, "skip_period": cfg.skip_period,
            "activation": cfg.activation, "aug": cfg.aug, "epochs": cfg.epochs,
            "split": split, "seeds": list(seed_list or (cfg.seed,)),
            "top1_per_seed": [round(value, 2) for value in per_seed],
            "top1": round(top1, 2), "std": None if std is None else round(std, 2),
            "paper_top1": paper, "difference": round(top1 - paper, 2),
            "train_minutes": round(train_seconds / 60, 1), "runs": folders})
    summary = {
        "scale": scale, "command": argv, "seeds": list(seed_list or ()),
        "overrides": dict(overrides), "machine": machine(), "versions": versions(),
        "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "wall_minutes_this_invocation": round((time.time() - started) / 60, 1),
        "runs_trained_this_invocation": trained,
        "train_minutes_total": round(sum(row["train_minutes"] for row in rows), 1),
        "rows": rows, "findings": findings(rows)}
    runs.write_json(os.path.join(out_dir, "results.json"), summary)
    runs.write_text(os.path.join(out_dir, "results.md"), markdown(summary))
    curves = {row["name"]: mean_curve(report.load_curves(row["runs"]).values())
              for row in rows}
    figures = report.draw(curves, out_dir)
    return rows, figures


def mean_curve(curves):
    """The epoch-by-epoch mean of several runs' ``(epochs, accuracy)`` curves (over the
    epochs they all reached)."""
    curves = list(curves)
    length = min(len(acc) for _, acc in curves)
    return (list(curves[0][0][:length]),
            [float(np.mean([acc[i] for _, acc in curves])) for i in range(length)])


def findings(rows):
    """Each of the paper's three findings: the gap between its two rows, here and in the
    paper, the gap's standard error over the seeds, and how it reads (``reading``)."""
    by_name = {row["name"]: row for row in rows}
    out = []
    for what, better, worse in FINDINGS:
        ours = by_name[better]["top1"] - by_name[worse]["top1"]
        paper = by_name[better]["paper_top1"] - by_name[worse]["paper_top1"]
        spreads = [by_name[name]["std"] for name in (better, worse)]
        # The two rows' standard deviations combined: the standard error of a difference of
        # two means is sqrt(s1^2/n1 + s2^2/n2).
        noise = (None if None in spreads else float(np.sqrt(
            sum(s * s / len(by_name[name]["seeds"]) for s, name in zip(spreads, (better, worse))))))
        out.append({"finding": what, "better": better, "worse": worse,
                    "gap": round(ours, 2), "paper_gap": round(paper, 2),
                    "gap_std": None if noise is None else round(noise, 2),
                    "reading": reading(ours, noise)})
    return out


def reading(gap, noise):
    """Whether a finding appears: its gap is positive, and (with several seeds) more than
    twice the gap's standard error; with one seed the spread is unknown, and it says so."""
    if noise is None:
        return ("appears" if gap > 0 else "does not appear") + " (one seed: noise unknown)"
    if abs(gap) <= 2 * noise:
        return "within seed noise"
    return "appears" if gap > 0 else "reversed"


def markdown(summary):
    """results.md: the table (mean and std over seeds), the findings, and where it ran."""
    rows = summary["rows"]
    seeds = summary["seeds"] or rows[0]["seeds"]
    paper_scale = summary["scale"] == "paper"
    lines = [f"# Table 1 ({summary['scale']} scale), seeds {', '.join(map(str, seeds))}", "",
             "| name | width/depth/skips/act | params | epochs | our top-1 % (split) | std | "
             "paper top-1 % |" + (" difference |" if paper_scale else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if paper_scale else "")]
    for r in rows:
        std = "–" if r["std"] is None else f"{r['std']:.2f}"
        lines.append(
            f"| {r['name']} | {r['width']}/{r['depth']}/{r['skip_period']}/{r['activation']}"
            f"{'' if r['aug'] == 'paper' else ', no aug'} | {r['params']:,} | {r['epochs']} | "
            f"{r['top1']:.2f} ({r['split']}) | {std} | {r['paper_top1']:.2f} |"
            + (f" {r['difference']:+.2f} |" if paper_scale else ""))
    lines += ["", f"std: the sample standard deviation over the {len(seeds)} seed(s) "
              f"({'one seed: not measured' if len(seeds) == 1 else 'n - 1'}). A finding's gap "
              f"is its first row's top-1 minus its second's; ± is the gap's standard error.", "",
              "| finding | rows | our gap (points) | paper gap | reading |",
              "|---|---|---|---|---|"]
    for f in summary["findings"]:
        noise = "" if f["gap_std"] is None else f" ± {f['gap_std']:.2f}"
        lines.append(f"| {f['finding']} | {f['better']} - {f['worse']} | {f['gap']:+.2f}{noise} "
                     f"| {f['paper_gap']:+.2f} | {f['reading']} |")
    machine_text = summary["machine"]
    lines += ["", f"Machine: {machine_text['cpu']}, {machine_text['cores']} cores, "
              f"{machine_text['platform']}.",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()) + ".",
              f"Training time of the {sum(len(r['seeds']) for r in rows)} runs (model.fit): "
              f"{summary['train_minutes_total']} min; this invocation took "
              f"{summary['wall_minutes_this_invocation']} min and trained "
              f"{summary['runs_trained_this_invocation']} run(s).",
              f"Command: `{' '.join(summary['command']) or 'ablation'}`."]
    return "\n".join(lines) + "\n"


def machine():
    """Where the runs were made: the CPU model, its core count and the OS."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}


def versions():
    """Python, the Keras backend and the libraries the runs depend on."""
    import keras

    found = {"python": sys.version.split()[0], "keras": keras.__version__,
             "backend": keras.backend.backend(), "numpy": np.__version__}
    for name in ("tensorflow", "keras_cv") + (("jax",) if found["backend"] == "jax" else ()):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            found[name] = module.__version__
    return found
