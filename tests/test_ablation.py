"""The Table-1 ablation runner: its two scales of configs, several seeds with their mean and
standard deviation, the findings' reading, and (slow) a whole resumable CPU-scale run."""

import json
import os
import statistics
import sys

import numpy as np
import pytest

from cmxl_keras import ablation, architecture, settings
from cmxl_keras.errors import ConfigError
from conftest import ROOT, Child, run_cli

# What the CPU scale changes, for every row alike; and the deep rows' depth.
CPU_SCALE = dict(width=64, patch_size=4, epochs=20, limit_train=5000, val_from_train=2500)
CPU_DEEP = 33


def test_parse_seeds():
    assert ablation.parse_seeds("1024,1025,1026") == (1024, 1025, 1026)
    assert ablation.parse_seeds("7") == (7,)
    for bad in ("", "1,x", "1,1", "-1", "1.5"):
        with pytest.raises(ConfigError, match="--seeds"):
            ablation.parse_seeds(bad)


def test_mean_and_sample_std_of_the_seeds():
    values = [91.2, 93.5, 92.05]
    mean, std = ablation.mean_std(values)
    assert mean == pytest.approx(statistics.mean(values))
    assert std == pytest.approx(statistics.stdev(values))  # n - 1, as the table says
    assert ablation.mean_std([90.0]) == (90.0, None)  # one seed: no spread to report


def test_every_scale_has_the_seven_rows_and_the_cpu_scale_shrinks_them_alike():
    assert ablation.TABLE1 == ("cm_vanilla_noaug", "cm_vanilla", "cm_vanilla_relu",
                               "cm_vanilla_silu", "cm_xl_noskip", "cm_xl_skip", "cm_xl")
    for variant in ablation.TABLE1:
        paper = ablation.scaled_config(variant, "paper")
        assert paper == settings.load(variant)  # configs/<variant>.toml
        cpu = ablation.scaled_config(variant, "cpu")
        spec = architecture.VARIANTS[variant]
        assert {key: getattr(paper, key) for key in architecture.ARCH_KEYS} == {
            key: spec[key] for key in architecture.ARCH_KEYS} and paper.aug == spec["aug"]
        # The CPU row is the paper's row with the same scale-down as every other row: only
        # the scale keys, the deep rows' depth (66 -> 33, the same three skip groups) and the
        # name differ. Seeds, split and the rest of the recipe stay the paper's.
        depth = CPU_DEEP if paper.depth == 66 else paper.depth
        expected = paper.replace(**CPU_SCALE, depth=depth, name=f"cpu_{variant}")
        assert cpu == expected, variant
        assert cpu.seed == cpu.split_seed == 1204 and cpu.split == "reference"


def _summary(per_seed):
    """A results.json-like summary of seven rows with these per-seed top-1 figures."""
    rows = []
    for name, values in zip(ablation.TABLE1, per_seed):
        mean, std = ablation.mean_std(values)
        rows.append(dict(name=name, width=64, depth=8, skip_period=0, activation="gelu",
                         aug="paper", params=1, epochs=1, split="val", seeds=[1, 2, 3][:len(values)],
                         top1=round(mean, 2), std=None if std is None else round(std, 2),
                         paper_top1=architecture.VARIANTS[name]["paper_top1"], difference=0.0))
    return rows


def test_each_finding_is_read_against_its_seed_noise():
    # noaug, vanilla, relu, silu, noskip, skip, xl
    rows = _summary([[60, 61, 62], [64, 65, 66], [65, 65, 65], [65, 65, 65],
                     [40, 41, 42], [60, 60.5, 61], [60.2, 60.7, 61.2]])
    found = {f["better"]: f for f in ablation.findings(rows)}
    depth, silu, aug = found["cm_xl_skip"], found["cm_xl"], found["cm_vanilla"]
    assert depth["gap"] == pytest.approx(19.5) and depth["paper_gap"] == pytest.approx(45.54)
    # The gap's standard error: sqrt(s1^2/n1 + s2^2/n2) with each row's sample std.
    assert depth["gap_std"] == pytest.approx(np.sqrt(0.5 ** 2 / 3 + 1.0 ** 2 / 3), abs=0.01)
    assert depth["reading"] == "appears" and aug["reading"] == "appears"
    assert silu["gap"] == pytest.approx(0.2) and silu["reading"] == "within seed noise"
    reversed_rows = _summary([[66], [60], [60], [60], [40], [60], [61]])
    one_seed = {f["better"]: f["reading"] for f in ablation.findings(reversed_rows)}
    assert one_seed["cm_vanilla"] == "does not appear (one seed: noise unknown)"
    assert one_seed["cm_xl"] == "appears (one seed: noise unknown)"


# The test's depth for every row: divisible by the skip rows' period of 3.
DEPTH = 3


def row_activation(name):
    """Each Table-1 row's activation, from its CPU-scale config."""
    return ablation.scaled_config(name, "cpu").activation


@pytest.mark.slow
def test_cpu_scale_with_seeds_resumes_and_tabulates_mean_and_std(cifar_dir, tmp_path):
    """The CPU-scale set (its seven configs, every row at 3 layers through --set: the
    runner's seeds, resume and table do not need the deep rows' 33, whose graphs take over
    a minute each to build; the configs themselves are checked above) with two seeds and
    tiny epochs: killed after the first row, run again, it does not redo finished runs,
    and each row is the mean and sample std of its seeds' own evaluations."""
    out = tmp_path / "ablation"
    args = [sys.executable, os.path.join(ROOT, "cli.py"), "ablation", "--scale", "cpu",
            "--seeds", "1,2", "--data-dir", cifar_dir, "--out", str(out), "--epochs", "1",
            "--limit-train", "64", "--val-from-train", "32", "--set", "batch_size=32",
            "--set", "steps_per_epoch=1", "--set", f"depth={DEPTH}"]
    child = Child(args)
    finished = [out / f"cm_vanilla_noaug-seed{seed}" / "results.json" for seed in (1, 2)]
    child.wait_until(lambda: all(p.exists() for p in finished), 600, "the first row's runs")
    child.kill()  # somewhere in the second row
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    assert not (out / "results.json").exists()

    result = run_cli(*args[2:], timeout=2400)
    assert result.returncode == 0, result.stderr[-3000:]
    for seed in (1, 2):
        assert f"cm_vanilla_noaug seed {seed} is finished; not redone" in result.stdout
    assert {p: p.stat().st_mtime_ns for p in finished} == stamps
    summary = json.load(open(out / "results.json"))
    assert summary["scale"] == "cpu" and summary["seeds"] == [1, 2]
    assert summary["machine"]["cores"] == os.cpu_count()
    assert summary["versions"]["backend"] == "tensorflow" and "keras" in summary["versions"]
    rows = summary["rows"]
    assert [r["name"] for r in rows] == list(ablation.TABLE1)
    table = (out / "results.md").read_text()
    for row in rows:
        own = []
        for seed in (1, 2):
            run = out / f"{row['name']}-seed{seed}"
            saved = json.load(open(run / "config.json"))
            assert saved["seed"] == seed and saved["split_seed"] == 1204
            assert saved["depth"] == DEPTH and saved["skip_period"] == (
                3 if row["name"] in ("cm_xl_skip", "cm_xl") else 0)
            assert saved["activation"] == row_activation(row["name"])
            result_file = json.load(open(run / "eval_val.json"))
            assert result_file["images"] == 32
            own.append(100 * result_file["top1"])
        # Both seeds were scored on the same 32 images (split_seed), trained from their own.
        splits = [json.load(open(out / f"{row['name']}-seed{s}" / "split.json")) for s in (1, 2)]
        assert splits[0]["val_indices"] == splits[1]["val_indices"]
        assert row["top1_per_seed"] == [round(v, 2) for v in own]
        assert row["top1"] == round(statistics.mean(own), 2)
        assert row["std"] == round(statistics.stdev(own), 2)
        std = f"{row['std']:.2f}"
        assert f"| {row['top1']:.2f} (val) | {std} | {row['paper_top1']:.2f} |" in table
    assert table.count("\n| cm_") == 7 and "| finding |" in table
    assert [f["better"] for f in summary["findings"]] == ["cm_xl_skip", "cm_xl", "cm_vanilla"]
    log = (out / "log.txt").read_text()
    headers = [line for line in log.splitlines() if line.startswith("# ")]
    assert len(headers) == 2 and all("--scale cpu --seeds 1,2" in h for h in headers)
    from test_report import _not_blank

    _not_blank(out / "val_accuracy.png")
