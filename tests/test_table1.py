"""The Table-1 page is what the committed runs give (bench/table1.py), never edited by
hand, and each run lands in its row, on its side, with its seed and its state."""

import json
import os
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import table1  # noqa: E402


def test_the_committed_page_is_what_the_committed_runs_give():
    assert table1.main(["--check"]) == 0
    with open(table1.PAGE) as f:
        text = f.read()
    assert text == table1.page()
    assert ("| cm_vanilla | 93.78 % | not run | 1204: 90.50 % | 100/100 | ours 1204: 9.7 min "
            "| 533d966ce0 |") in text


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
    assert table1.main(["--results", str(tmp_path), "--out", str(out), "--check"]) == 1
    assert table1.main(["--results", str(tmp_path), "--out", str(out)]) == 0
    assert table1.main(["--results", str(tmp_path), "--out", str(out), "--check"]) == 0
