"""The Table-1 page is what the committed runs give (``python -m reproduce table1``), never
edited by hand, and each run lands in its row, on its side, with its seed and its state."""

import json
import os

from conftest import run_reproduce
from reproduce import equivalence_report, table1


def test_the_committed_page_is_what_the_committed_runs_give():
    assert table1.main(check=True) == 0
    with open(table1.PAGE) as f:
        text = f.read()
    assert text == table1.page()
    assert ("| cm_vanilla | 93.78 % | not run | 1204: 90.50 % | 100/100 | ours 1204: 9.7 min "
            "| 533d966ce0 |") in text
    # The command a user runs says the same, from another folder too.
    checked = run_reproduce("table1", "--check", timeout=120, cwd=os.path.dirname(table1.PAGE))
    assert checked.returncode == 0 and "up to date" in checked.stdout, checked.stderr[-2000:]


def _run(folder, name, variant, seed, epochs_done, finished, loop=None, aug="paper"):
    from cmxl_keras import config

    run = folder / name
    run.mkdir(parents=True)
    cfg = config.variant_config(variant).replace(seed=seed, aug=aug, val_from_train=1000)
    (run / "config.toml").write_text(cfg.to_toml())
    metrics = [{"epoch": e + 1, "val_accuracy": 0.5 + e / 1000, "epoch_seconds": 60.0}
               for e in range(epochs_done)]
    (run / "metrics.json").write_text(json.dumps(metrics))
    env = {"git_commit": "0123456789abcdef"}
    if loop:
        env["reference_packages"] = {"torch": "2.14.1"}
    (run / "env.json").write_text(json.dumps(env))
    if finished:
        results = {"epochs": cfg.epochs, "final": metrics[-1], "train_seconds_total": 600.0}
        if loop:
            results["loop"] = loop
        (run / "results.json").write_text(json.dumps(results))


def test_each_run_lands_in_its_row_and_side(tmp_path):
    _run(tmp_path, "reference-1204", "cm_vanilla", 1204, 100, True, loop="reference")
    _run(tmp_path, "cm_vanilla-1204", "cm_vanilla", 1204, 100, True)
    _run(tmp_path, "cm_vanilla-1205", "cm_vanilla", 1205, 37, False)
    _run(tmp_path, "noaug", "cm_vanilla", 1204, 3, False, aug="none")
    _run(tmp_path, "xl", "cm_xl", 1204, 100, True)
    text = table1.page(str(tmp_path))
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines()
            if line.startswith("| cm_")}
    assert rows["cm_vanilla"].startswith(
        "| cm_vanilla | 93.78 % | 1204: 59.90 % | 1204: 59.90 %; 1205: 53.60 % (epoch 37, "
        "running) | 100/100, 37/100 | reference 1204: 10.0 min; ours 1204: 10.0 min; ours "
        "1205: 37.0 min | 0123456789 |")
    assert "1204: 50.20 % (epoch 3, running)" in rows["cm_vanilla_noaug"]
    assert "| not run | 1204: 59.90 % |" in rows["cm_xl"]
    assert "not run | not run" in rows["cm_xl_skip"]
    assert "- `reference-1204`: reference, cm_vanilla, seed 1204" in text
    # --check tells a page that differs from the runs.
    out = tmp_path / "page.md"
    assert table1.main(str(tmp_path), str(out), check=True) == 1
    assert table1.main(str(tmp_path), str(out)) == 0
    assert table1.main(str(tmp_path), str(out), check=True) == 0


def test_the_whole_run_comparisons_are_listed_with_both_sides_only(tmp_path):
    """Each committed comparison of ``python -m reproduce compare`` with both sides gets a row
    (its path of ours, epochs, seeds, means, difference and standard error); one side
    alone gets none; a comparison's note is printed under the table."""
    def comparison(name, backend, sides, note=None):
        runs = {side: [{"seed": seed, "epochs": [{"epoch": 1, "val_accuracy": 0.5},
                                                  {"epoch": 2, "val_accuracy": value}]}
                       for seed, value in values] for side, values in sides.items()}
        results = {"config": {"width": 64, "depth": 8, "patch_size": 4, "train": 5120,
                              "epochs": 2, "backend": backend}, "runs": runs}
        results["summary"] = equivalence_report.summary_of(results)
        if note:
            results["note"] = note
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(results))

    # SE: sqrt(0.02^2 / 3 + sqrt(0.0007)^2 / 3) = 1.91 points
    comparison("jax-100", "jax", {"ours": [(1, 0.60), (2, 0.62), (3, 0.64)],
                                  "reference": [(1, 0.61), (2, 0.62), (3, 0.66)]},
               note="a note")
    comparison("ours-only", "tensorflow", {"ours": [(1, 0.6), (2, 0.7)]})
    lines = table1.comparisons(str(tmp_path))
    rows = [line for line in lines if line.startswith("| `")]
    assert rows == ["| `jax-100` | ConvMixer-64/8, patch 4, 5,120 images | JAX, augmentation "
                    "in the compiled step | 2 | 3 / 3 | 62.00 % | 63.00 % | -1.00 (1.91) |"]
    assert lines[-1] == "- `jax-100`: a note."
    assert table1.comparisons(str(tmp_path / "none")) == []
