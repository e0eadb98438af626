"""``python -m reproduce compare`` and its readings: the reading (final top-1, the gap epoch by epoch), comparisons
that span commands (``--resume``) and sides run as separate commands (``join``)."""

import json
import math
import os

import numpy as np
import pytest

from conftest import REPRODUCE, Child
from reproduce import equivalence, equivalence_cross, equivalence_report


def test_equivalence_reading_is_welchs_standard_error_of_the_difference():
    summary = equivalence_report.summarize({"ours": [0.80, 0.82, 0.84],
                                     "reference": [0.83, 0.84, 0.85]})
    ours, ref = summary["sides"]["ours"], summary["sides"]["reference"]
    assert ours["mean"] == pytest.approx(0.82) and ours["sd"] == pytest.approx(0.02)
    assert ref["mean"] == pytest.approx(0.84) and ref["sd"] == pytest.approx(0.01)
    assert summary["difference"] == pytest.approx(-0.02)
    se = (0.02 ** 2 / 3 + 0.01 ** 2 / 3) ** 0.5  # 0.0129: -0.02 is within two
    assert summary["standard_error"] == pytest.approx(se)
    assert summary["within_two_standard_errors"] is True
    apart = equivalence_report.summarize({"ours": [0.80, 0.81], "reference": [0.86, 0.87]})
    assert apart["within_two_standard_errors"] is False
    assert "outside two standard errors (8.5 SE)" in equivalence_report.reading(apart)[-1]
    # One run a side has no spread: no verdict is drawn.
    assert "difference" not in equivalence_report.summarize({"ours": [0.8], "reference": [0.9]})
    one = equivalence_report.reading(equivalence_report.summarize({"ours": [0.8], "reference": [0.9, 0.8]}))
    assert one == ["ours: final top-1 80.00 % mean, one seed (no spread yet) (80.00)",
                   "reference: final top-1 85.00 % mean, 7.07 sd over 2 seeds (90.00, 80.00)"]


def runs_of(curves, first_seed=1):
    return [{"seed": first_seed + i, "seconds": 1.0,
             "epochs": [{"epoch": e + 1, "val_accuracy": v} for e, v in enumerate(curve)]}
            for i, curve in enumerate(curves)]


def test_the_gap_is_read_epoch_by_epoch_and_shows_where_it_opens():
    """The gap at every epoch is the difference of the sides' means there, with Welch's
    standard error over the seeds; a gap that opens late is seen opening late."""
    curve = 0.3 + 0.5 * np.linspace(0, 1, 10)
    ref = curve + np.array([[-0.01], [0.0], [0.01]])
    ours = curve + np.array([[-0.02], [0.002], [0.02]])
    ours[:, 7:] -= 0.05  # opens at epoch 8
    rows = equivalence_report.gap({"ours": runs_of(ours), "reference": runs_of(ref)})
    assert [r["epoch"] for r in rows] == list(range(1, 11))
    for e, row in enumerate(rows):
        a, b = ours[:, e], ref[:, e]
        assert row["difference"] == pytest.approx(a.mean() - b.mean())
        assert row["standard_error"] == pytest.approx(
            math.sqrt(a.var(ddof=1) / 3 + b.var(ddof=1) / 3))
    outside = [r["epoch"] for r in rows if abs(r["difference"]) > 2 * r["standard_error"]]
    assert outside == [8, 9, 10]
    results = {"config": {}, "runs": {"ours": runs_of(ours), "reference": runs_of(ref)}}
    summary = equivalence_report.summary_of(results)
    line = equivalence_report.reading(summary)[-1]
    assert line.startswith("gap by epoch") and "8: -4.93 (1.29); 10: -4.93" in line, line
    # One side alone has no gap.
    assert equivalence_report.gap({"ours": runs_of(ours)}) == []


def written(folder, config, runs):
    os.makedirs(folder, exist_ok=True)
    results = {"config": config, "runs": runs}
    results["summary"] = equivalence_report.summary_of(results)
    for name, data in (("results.json", results), ("machine.json", {"seconds": 1})):
        with open(os.path.join(folder, name), "w") as f:
            json.dump(data, f)
    with open(os.path.join(folder, "log.txt"), "w") as f:
        f.write("an earlier command's log\n")
    return str(folder)


CONFIG = {"train": 512, "val": 256, "seeds": [1, 2], "epochs": 3, "width": 16,
          "train_indices_sha256": "aa", "val_indices_sha256": "bb"}


def test_join_reads_separate_commands_as_one_comparison_and_refuses_what_differs(tmp_path):
    ours = written(tmp_path / "ours", dict(CONFIG), {"ours": runs_of([[.3, .4, .5]] * 2)})
    ref = written(tmp_path / "ref", dict(CONFIG, seeds=[2, 1]),
                  {"reference": runs_of([[.3, .5, .6], [.3, .4, .6]])})
    more = written(tmp_path / "more", dict(CONFIG, seeds=[3]),
                   {"ours": runs_of([[.3, .4, .45]], first_seed=3)})
    joined = equivalence_report.join([ours, ref, more])
    assert [r["seed"] for r in joined["runs"]["ours"]] == [1, 2, 3]
    assert joined["config"]["seeds"] == [1, 2, 3]
    assert joined["summary"]["difference"] == pytest.approx((.5 + .5 + .45) / 3 - .6)
    assert len(joined["summary"]["gap"]) == 3
    other = written(tmp_path / "other", dict(CONFIG, epochs=4),
                    {"reference": runs_of([[.3, .5, .6, .7]] * 2)})
    with pytest.raises(SystemExit, match=r"different epochs \(4 vs 3\)"):
        equivalence_report.join([ours, other])
    with pytest.raises(SystemExit, match=r"ours seed\(s\) \[1, 2\] appear in two folders"):
        equivalence_report.join([ours, ours])
    with pytest.raises(SystemExit, match="cannot read .*nowhere"):
        equivalence_report.join([ours, str(tmp_path / "nowhere")])


def test_resume_keeps_the_runs_of_the_same_comparison_only(tmp_path):
    out = written(tmp_path / "out", dict(CONFIG), {"ours": runs_of([[.3, .4, .5]])})
    results = {"config": dict(CONFIG, seeds=[1, 2, 3]), "runs": {"ours": [], "reference": []}}
    log = equivalence.Log()
    log("this command's first line")
    earlier = equivalence_report.earlier(out, results, log)
    assert [r["seed"] for r in results["runs"]["ours"]] == [1]
    assert earlier == [{"seconds": 1}]
    assert log.lines[0] == "an earlier command's log"  # the log goes on after it
    assert log.lines[1] == "this command's first line"
    assert "holds {'ours': [1]}" in log.lines[-1]
    changed = {"config": dict(CONFIG, width=32), "runs": {"ours": []}}
    with pytest.raises(SystemExit, match="width: 16 there, 32 here"):
        equivalence_report.earlier(out, changed, log)
    with open(os.path.join(out, "results.json"), "w") as f:
        f.write('{"config": {"tr')  # cut off mid-write
    with pytest.raises(SystemExit, match="results.json is not readable JSON .* another --out"):
        equivalence_report.earlier(out, results, log)


def command(out, work, data, *more):
    return REPRODUCE + ["compare", "--data-dir", data, "--train", "256", "--val", "128",
            "--epochs", "2", "--seeds", "7", "--width", "16", "--depth", "2",
            "--out", out, "--work", work, *more]


def records(out, side):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)["runs"][side]


def strip_seconds(epochs):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in epochs]


def children_running(text):
    """The pids of processes whose command line holds ``text``."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


@pytest.mark.slow
def test_a_comparison_cut_off_resumes_each_side_where_it_stopped(tmp_path, cifar_dir):
    """Each side is cut off in its first run (the reference's loop killed after its first
    epoch's checkpoint; our ``cli.py train`` killed after its first checkpoint) and goes
    on with ``--resume``: the reference's resumed run equals the one left alone, record
    for record; ours resumes its run folder and finishes; the two join as one reading."""
    work = str(tmp_path / "work")
    alone = str(tmp_path / "alone")
    done = Child(command(alone, str(tmp_path / "work-alone"), cifar_dir,
                         "--sides", "reference")).wait(300)
    assert done.returncode == 0, done.stderr[-3000:]

    ref = str(tmp_path / "ref")
    cut = Child(command(ref, work, cifar_dir, "--sides", "reference"))
    cut.wait_until(lambda: os.path.exists(os.path.join(work, "reference-7", "metrics.json")),
                   300, "the reference's first epoch saved")
    cut.kill()
    again = Child(command(ref, work, cifar_dir, "--sides", "reference", "--resume")).wait(300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed" in again.stdout and "after epoch 1 of 2" in again.stdout, again.stdout
    assert strip_seconds(records(ref, "reference")[0]["epochs"]) == \
        strip_seconds(records(alone, "reference")[0]["epochs"])

    ours = str(tmp_path / "ours")
    state = os.path.join(work, "ours-7", "checkpoints", "state.json")
    cut = Child(command(ours, work, cifar_dir, "--sides", "ours"))
    cut.wait_until(lambda: os.path.exists(state), 300, "our run's first checkpoint")
    for pid in children_running(os.path.join(work, "ours-7")):
        os.kill(pid, 9)
    assert cut.wait(120).returncode != 0
    assert not os.path.exists(os.path.join(ours, "results.json")) or \
        not records(ours, "ours")
    again = Child(command(ours, work, cifar_dir, "--sides", "ours", "--resume")).wait(300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming {os.path.join(work, 'ours-7')}" in again.stdout
    assert [e["epoch"] for e in records(ours, "ours")[0]["epochs"]] == [1, 2]
    # Run again with --resume, a finished seed is kept, not trained again.
    kept = Child(command(ours, work, cifar_dir, "--sides", "ours", "--resume")).wait(120)
    assert "holds {'ours': [7]}" in kept.stdout and "ours, seed 7:" not in kept.stdout
    changed = Child(command(ours, work, cifar_dir, "--sides", "ours", "--resume",
                            "--lr", "0.01")).wait(120)
    assert changed.returncode != 0 and "lr: 0.005 there, 0.01 here" in changed.stderr

    joined = Child(REPRODUCE + ["join", ours, ref, "--out", tmp_path / "joined"]).wait(120)
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert "ours: final top-1" in joined.stdout and "reference: final top-1" in joined.stdout
    assert os.path.getsize(tmp_path / "joined" / "curves.png") > 10_000


# ----------------------------------------------------------------------------- the 2 x 2


def test_mcnemars_exact_test_is_the_binomial_on_the_discordant_images():
    assert equivalence_cross.mcnemar(0, 0) == 1.0
    assert equivalence_cross.mcnemar(0, 6) == pytest.approx(2 / 64)
    assert equivalence_cross.mcnemar(6, 0) == pytest.approx(2 / 64)
    assert equivalence_cross.mcnemar(3, 3) == 1.0
    # 10 against 2: P(X <= 2) for X ~ Bin(12, 1/2) is 79/4096, doubled.
    assert equivalence_cross.mcnemar(10, 2) == pytest.approx(2 * 79 / 4096)


def _scores(right):
    return {"top1": sum(map(int, right)) / len(right), "correct": right}


def _comparison(folder, forms, scores, digests):
    """A comparison's results.json trained on forms[0]: per side, per seed, the two
    forms' correct strings."""
    config = dict(CONFIG, forms=forms, paths={"data": "d", "score_data": "s"},
                  val_pixels_sha256=digests[0], score_pixels_sha256=digests[1],
                  val_names_sha256="names")
    runs = {side: [{"seed": seed, "epochs": [], "scores": {
        form: _scores(right) for form, right in zip(forms, pair)}}
        for seed, pair in by_seed.items()] for side, by_seed in scores.items()}
    os.makedirs(folder)
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({"config": config, "runs": runs}, f)
    return str(folder)


def test_the_2x2_reads_each_cost_paired_and_the_loops_against_each_other(tmp_path):
    # Lossless-trained models: seed 1 right on images 0-7 losslessly, 0-5 as JPEG; seed 2
    # right on 0-6 and 0-5. JPEG-trained: seed 1 right on 0-5 both ways, seed 2 on 0-4
    # losslessly and 0-5 as JPEG. The reference's the same, but one image better
    # losslessly when lossless-trained.
    ours_l = {1: ("1111111100", "1111110000"), 2: ("1111111000", "1111110000")}
    ours_j = {1: ("1111110000", "1111110000"), 2: ("1111110000", "1111100000")}
    ref_l = {1: ("1111111110", "1111110000"), 2: ("1111111100", "1111110000")}
    a = _comparison(tmp_path / "a", ["lossless", "jpeg"],
                    {"ours": ours_l, "reference": ref_l}, ("L", "J"))
    b = _comparison(tmp_path / "b", ["jpeg", "lossless"],
                    {"ours": ours_j, "reference": ours_j}, ("J", "L"))
    result = equivalence_cross.cross([a, b])
    ours = result["sides"]["ours"]
    assert ours["cells"]["lossless"]["lossless"]["mean"] == pytest.approx(75)
    assert ours["cells"]["jpeg"]["lossless"]["mean"] == pytest.approx(55)
    # The cost at training time on lossless images: per seed +20 and +20 points, right
    # only in the lossless-trained model on images 6, 7 (seed 1) and 5, 6 (seed 2).
    cost = ours["training_cost"]["lossless"]
    assert cost["per_pair"] == pytest.approx([20, 20])
    assert cost["standard_error"] == pytest.approx(0, abs=1e-9)
    assert (cost["right_only_first"], cost["right_only_second"]) == (4, 0)
    assert cost["mcnemar_p"] == pytest.approx(2 / 16)
    # At test time, each lossless-trained model on both forms: +20 and +10 points.
    test = ours["test_cost"]["lossless"]
    assert test["per_pair"] == pytest.approx([20, 10])
    assert test["standard_error"] == pytest.approx(5) and test["points"] == pytest.approx(15)
    assert (test["right_only_first"], test["right_only_second"]) == (3, 0)
    assert ours["end_to_end"]["per_pair"] == pytest.approx([20, 10])
    # The reference's lossless-trained models gain one image more losslessly.
    loops = result["ours_minus_reference"]
    assert loops["test_cost lossless"]["points"] == pytest.approx(-10)
    assert loops["training_cost lossless"]["points"] == pytest.approx(-10)
    lines = equivalence_cross.reading(result)
    assert any(line.startswith("  test cost, lossless-trained models (lossless - jpeg "
                               "images): +15.00 points (standard error 5.00; significant)")
               for line in lines), lines

    with pytest.raises(SystemExit, match="must train on jpeg and score on lossless"):
        equivalence_cross.cross([a, a])
    c = _comparison(tmp_path / "c", ["jpeg", "lossless"], {"ours": ours_j}, ("J2", "L"))
    with pytest.raises(SystemExit, match="scored other validation pixels"):
        equivalence_cross.cross([a, c])
    d = _comparison(tmp_path / "d", ["jpeg", "lossless"], {"ours": ours_j}, ("J", "L"))
    with open(os.path.join(d, "results.json")) as f:
        moved = json.load(f)
    moved["config"]["val_indices_sha256"] = "elsewhere"
    with open(os.path.join(d, "results.json"), "w") as f:
        json.dump(moved, f)
    with pytest.raises(SystemExit, match="differ in val_indices_sha256"):
        equivalence_cross.cross([a, d])
