"""The GPU queue's comparison jobs (``jpeg-cost-*`` in ``campaign.QUEUE``): what the
JPEG images cost at the paper's model, ``python -m reproduce compare`` on the GPU host.

A comparison job is ``python -m reproduce compare`` with both loops and every seed of
``--comparison-args``: trained on the carried lossless images (``--lossless`` of
``--plan``) or on their JPEG twins among the training images, every final model scored
on both forms; ``python -m reproduce cross`` reads the two as one 2 x 2. Its folder holds
the comparison's files in ``comparison/`` and its runs in ``runs/``; ``results.json``
beside them marks it finished. Finished, it packs only ``comparison/`` (no model).
"""

import glob
import json
import os
import sys

import reproduce
from cmxl_keras.children import read_record

OUT, RUNS = "comparison", "runs"
FORMS = {"lossless": "jpeg", "jpeg": "lossless"}  # a training form: the other scoring form


def state(run_dir):
    """Where a comparison job's folder stands: the runs its ``results.json`` records, and
    the epochs of those and of the one under way (its folder's ``metrics.json``)."""
    results = read_record(os.path.join(run_dir, OUT, "results.json"), {}) or {}
    config = results.get("config", {})
    done = {(side, r["seed"]): len(r["epochs"]) for side, runs in
            results.get("runs", {}).items() for r in runs}
    epochs, steps = sum(done.values()), 0
    for folder in glob.glob(os.path.join(run_dir, RUNS, "*-*")):
        side, _, seed = os.path.basename(folder).rpartition("-")
        if seed.isdigit() and (side, int(seed)) not in done:
            epochs += len(read_record(os.path.join(folder, "metrics.json"), []) or [])
            saved = read_record(os.path.join(folder, "checkpoints", "state.json"), {}) or {}
            steps += saved.get("step") or 0  # ours, cut off mid-epoch
    total = len(config.get("seeds", [])) * 2
    finished = os.path.exists(os.path.join(run_dir, "results.json"))
    progress = f"{len(done)} of {total or '?'} runs finished, {epochs} epochs trained"
    # "step": one number that grows with every epoch and every saved step of ours.
    return {"progress": "finished" if finished else progress, "epochs_done": epochs,
            "epochs": None, "step": epochs * 10**6 + steps, "finished": finished,
            "last": None, "runs_done": sorted(done), "runs": total}


def command(queue, job, seconds):
    """``equivalence.py`` for a comparison job: its training form's images, scored on
    the other form too, resuming what its folder holds, stopped before ``seconds``."""
    run_dir = queue.run_dir(job)
    jpeg, lossless = queue.period.data_dir, queue.period.lossless
    data = {"lossless": ["--data-dir", lossless, "--score-data", jpeg],
            "jpeg": ["--data-dir", jpeg, "--names-from", lossless, "--score-data", lossless]}
    return reproduce.command("compare", *data[job.form]) + [
        "--forms", f"{job.form},{FORMS[job.form]}", "--backend", "jax",
        "--device", "auto", "--workers", str(queue.args.ref_workers), "--resume",
        "--out", os.path.join(run_dir, OUT),
        "--work", os.path.join(run_dir, RUNS),
        "--time-limit", f"{seconds:g}", "--timeout", f"{seconds + 60:g}",
    ] + queue.args.comparison_args.split()

def finish(queue, job):
    """Marks a comparison job finished (its ``results.json``: the reading so far)."""
    run_dir = queue.run_dir(job)
    results = read_record(os.path.join(run_dir, OUT, "results.json"), {})
    with open(os.path.join(run_dir, "results.json.tmp"), "w") as f:
        json.dump({"loop": "comparison", "form": job.form,
                   "summary": results.get("summary")}, f, indent=1)
    os.replace(os.path.join(run_dir, "results.json.tmp"),
               os.path.join(run_dir, "results.json"))
