"""Curves of many runs (Figures 3 and 4) and the resumable Table-1 ablation runner."""

import json
import os
import sys

import numpy as np
import pytest

from conftest import ROOT, Child, run_cli

pytestmark = pytest.mark.slow

TINY = ["--epochs", "1", "--limit-train", "64", "--val-from-train", "32", "--set", "width=8",
        "--set", "depth=6",
        "--set", "batch_size=32", "--set", "steps_per_epoch=1"]


def _not_blank(path):
    from PIL import Image

    with Image.open(path) as image:
        assert image.size[0] >= 400 and image.size[1] >= 300
        assert np.asarray(image.convert("L")).std() > 5


def test_report_draws_curves_of_several_runs(trained_run, tmp_path):
    result = run_cli("report", trained_run, trained_run, "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("val_accuracy.png", "val_accuracy_zoom.png"):
        _not_blank(tmp_path / name)


def test_ablation_gives_seven_rows_and_resumes_without_redoing_finished_runs(cifar_dir, tmp_path):
    out = tmp_path / "ablation"
    args = [sys.executable, os.path.join(ROOT, "cli.py"), "ablation", "--data-dir", cifar_dir,
            "--out", str(out), *TINY]
    child = Child(args)
    finished = [out / name / "results.json" for name in ("cm_vanilla_noaug", "cm_vanilla")]
    child.wait_until(lambda: all(p.exists() for p in finished), 600,
                     "the first two runs' results")
    child.kill()  # somewhere in the third run
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    assert not (out / "results.json").exists()

    result = run_cli(*args[2:], timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cm_vanilla_noaug is finished; not redone" in result.stdout
    assert "cm_vanilla is finished; not redone" in result.stdout
    assert {p: p.stat().st_mtime_ns for p in finished} == stamps
    rows = json.load(open(out / "results.json"))
    assert [r["name"] for r in rows] == ["cm_vanilla_noaug", "cm_vanilla", "cm_vanilla_relu",
                                         "cm_vanilla_silu", "cm_xl_noskip", "cm_xl_skip", "cm_xl"]
    from cmxl_keras import architecture

    for row in rows:
        # Each row is its run's own evaluation of its 32 validation images, in percent.
        own = json.load(open(out / row["name"] / "eval_val.json"))
        assert row["split"] == "val" and own["images"] == 32
        assert row["top1"] == round(100 * own["top1"], 2)
        assert any(row["top1"] == round(100 * k / 32, 2) for k in range(33)), row  # k of 32
        assert row["paper_top1"] == architecture.VARIANTS[row["name"]]["paper_top1"]
        assert row["difference"] == pytest.approx(row["top1"] - row["paper_top1"], abs=0.011)
        assert row["epochs"] == 1 and f"| {row['name']} | {row['params']:,} | 1 | " in (
            out / "results.md").read_text()
    assert rows[-1]["paper_top1"] == 94.52
    table = (out / "results.md").read_text()
    assert table.count("\n| cm_") == 7
    _not_blank(out / "val_accuracy.png")
