"""The benchmarks' child-process runner and time-to-accuracy arithmetic (bench/ itself is
run by hand, not by CI; these are the parts of it that decide what a run reports)."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench_tta  # noqa: E402
from runner import run_or_exit  # noqa: E402


def test_run_or_exit_returns_the_finished_process():
    out = run_or_exit([sys.executable, "-c", "print('fine')"], "child", timeout=60)
    assert out.stdout.strip() == "fine"


def test_a_hung_child_is_stopped_and_its_last_output_reported():
    code = ("import sys, time; print('epoch 3 of 5', flush=True); "
            "sys.stderr.write('still working\\n'); sys.stderr.flush(); time.sleep(60)")
    with pytest.raises(SystemExit) as error:
        run_or_exit([sys.executable, "-c", code], "train seed 7", timeout=3)
    message = str(error.value)
    assert "train seed 7 ran past 3 s" in message
    assert "epoch 3 of 5" in message and "still working" in message


def test_a_failed_child_reports_its_exit_status_and_last_output():
    code = "import sys; print('loading data'); sys.exit('no such folder: data/x')"
    with pytest.raises(SystemExit) as error:
        run_or_exit([sys.executable, "-c", code], "evaluate", timeout=60)
    message = str(error.value)
    assert "evaluate failed (exit 1)" in message
    assert "loading data" in message and "no such folder: data/x" in message


def test_minutes_to_target_counts_training_time_up_to_the_first_epoch_at_target():
    epochs = [{"epoch_seconds": 120.0, "val_accuracy": 0.5},
              {"epoch_seconds": 90.0, "val_accuracy": 0.76},
              {"epoch_seconds": 90.0, "val_accuracy": 0.74},
              {"epoch_seconds": 90.0, "val_accuracy": 0.80}]
    assert bench_tta.minutes_to(epochs, 0.75) == pytest.approx(3.5)
    assert bench_tta.minutes_to(epochs, 0.80) == pytest.approx(6.5)
    assert bench_tta.minutes_to(epochs, 0.81) is None
