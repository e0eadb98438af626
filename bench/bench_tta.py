#!/usr/bin/env python3
"""Time to accuracy on this machine, the way airbench reports CIFAR-10 speed: one recipe,
several seeds, the training minutes until validation top-1 first reaches the target, and
their mean and spread.

    python bench/bench_tta.py --config cpu_quick --data-dir data/cifar10 \\
        --seeds 1024,1025,1026 --target 0.75 --out runs/tta-cpu_quick [--set key=value ...]

Each seed is a real ``cli.py train`` run (``--seed S --run-dir <out>/seed-S``), so the
recipe is exactly the config's; ``--set`` overrides keys as ``train --set`` does (the
levers: width, depth, patch_size, epochs, lr_max, label_smoothing, ...). Validation is
what the config says (``cpu_quick``: 5,000 images carved from train). Training minutes are
the sum of the epochs' ``epoch_seconds`` in the run's metrics.json up to the first epoch at
the target (the first epoch's includes building the step). ``--tta`` also evaluates the
finished model with flip test-time augmentation. An existing ``--out`` is refused: each
bench run gets its own folder, and nothing finished is overwritten.

The last lines are machine-readable: ``minutes_to_target_mean=...``, ``..._std=...``,
``final_top1_mean=...`` and so on (std is the sample standard deviation, n-1).
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from cmxl_keras.ablation import mean_std  # noqa: E402  (the runner's own)
from cmxl_keras.config import parse_seeds  # noqa: E402
from cmxl_keras.errors import ConfigError  # noqa: E402
from cmxl_keras.children import run_or_exit  # noqa: E402


def minutes_to(epochs, target):
    """Training minutes up to the first epoch whose val_accuracy reaches ``target``, or
    None where none does."""
    seconds = 0.0
    for epoch in epochs:
        seconds += epoch["epoch_seconds"]
        if epoch["val_accuracy"] >= target:
            return seconds / 60
    return None


def spread(values):
    """Mean and sample std as the ablation runner reports them; NaN std for one run."""
    mean, std = mean_std(values)
    return mean, float("nan") if std is None else std


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu_quick")
    parser.add_argument("--data-dir", required=True,
                        help="CIFAR-10 training images in an official layout")
    parser.add_argument("--seeds", default="1024,1025,1026")
    parser.add_argument("--target", type=float, default=0.75, help="validation top-1, 0-1")
    parser.add_argument("--budget-minutes", type=float, default=10.0)
    parser.add_argument("--out", required=True, help="a new folder for the runs")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override, as train --set")
    parser.add_argument("--tta", action="store_true", help="also flip test-time augmentation")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    args = parser.parse_args()
    try:
        seeds = parse_seeds(args.seeds)
    except ConfigError as error:
        sys.exit(str(error))
    if not 0 < args.target <= 1:
        sys.exit(f"--target {args.target}: a validation top-1 between 0 and 1, e.g. 0.75")
    if os.path.exists(args.out):
        sys.exit(f"--out {args.out} exists: give a new folder (finished runs are never "
                 f"overwritten).")

    rows = []
    for seed in seeds:
        run_dir = os.path.join(args.out, f"seed-{seed}")
        command = [sys.executable, "cli.py", "train", "--config", args.config,
                   "--data-dir", args.data_dir, "--seed", str(seed), "--run-dir", run_dir]
        for override in args.overrides:
            command += ["--set", override]
        start = time.perf_counter()
        run_or_exit(command, args.timeout, cwd=ROOT)
        wall = (time.perf_counter() - start) / 60
        with open(os.path.join(run_dir, "metrics.json")) as f:
            epochs = json.load(f)
        row = {"seed": seed, "minutes_to_target": minutes_to(epochs, args.target),
               "training_minutes": sum(e["epoch_seconds"] for e in epochs) / 60,
               "wall_minutes": wall, "final_top1": epochs[-1]["val_accuracy"]}
        if args.tta:
            out = run_or_exit([sys.executable, "cli.py", "evaluate", run_dir, "--data-dir",
                               args.data_dir, "--tta", "--json"], args.timeout, cwd=ROOT)
            row["final_top1_tta"] = json.loads(out.stdout)["tta_flip"]["top1"]
        rows.append(row)
        reached = row["minutes_to_target"]
        print(f"seed {seed}: top-1 {100 * row['final_top1']:.2f} % after "
              f"{row['training_minutes']:.2f} min of training ({wall:.2f} min wall); "
              + (f"{100 * args.target:g} % at {reached:.2f} min" if reached is not None
                 else f"never reached {100 * args.target:g} %"), flush=True)

    with open(os.path.join(args.out, "tta.json"), "w") as f:
        json.dump({"config": args.config, "overrides": args.overrides, "target": args.target,
                   "runs": rows}, f, indent=2)
    lines = []
    reached = [r["minutes_to_target"] for r in rows if r["minutes_to_target"] is not None]
    lines.append(f"reached_target={len(reached)}/{len(rows)}")
    within = sum(m <= args.budget_minutes for m in reached)
    lines.append(f"reached_within_{args.budget_minutes:g}_minutes={within}/{len(rows)}")
    if reached:
        mean, std = spread(reached)
        lines += [f"minutes_to_target_mean={mean:.2f}", f"minutes_to_target_std={std:.2f}"]
    for key in ("final_top1", "final_top1_tta", "training_minutes", "wall_minutes"):
        if key in rows[0]:
            mean, std = spread([r[key] for r in rows])
            lines += [f"{key}_mean={mean:.4f}", f"{key}_std={std:.4f}"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
