"""The GPU command (bench/gpu_run.py) rehearsed on this CPU, in a Python shaped like the GPU
host: TensorFlow, keras-cv and tensorflow-datasets hidden (tests/gpu_host/), the carried
wheels installed by the command itself, Keras on JAX. Tiny sizes and short caps; the same
phases, files and resume path as a real period."""

import json
import os
import signal
import sys
import tarfile

import pytest

from conftest import ROOT, SHARED_DATA, Child, run_process

SCRIPT = os.path.join(ROOT, "bench", "gpu_run.py")
GPU_HOST = {"PYTHONPATH": os.path.join(ROOT, "tests", "gpu_host")}
# A rehearsal's sizes: the smoke config, 2 epochs of 3 steps; a two-layer bench model.
TINY = ["--config", "smoke", "--set", "epochs=2", "--set", "steps_per_epoch=3",
        "--val-from-train", "50", "--bench-models", "vanilla", "--arch", "width=32,depth=2",
        "--bench-args", "--batch 16 --steps 2 --infer-batches 2 --workers 2",
        "--equivalence-args", "--width 16 --depth 2 --patch-size 4 --train 150 --val 60 "
                              "--epochs 2 --seeds 1,2 --workers 0 --batch-size 32"]


def gpu_run(*args, env=None, timeout=600):
    return run_process([sys.executable, SCRIPT, *map(str, args)], timeout,
                       env=dict(GPU_HOST, **(env or {})))


def summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory):
    """30 shipped training images per class as a .tar.gz of train/<class>/*.jpg."""
    path = tmp_path_factory.mktemp("gpu-data") / "train-images.tar.gz"
    counts = {}
    with tarfile.open(os.path.join(SHARED_DATA, "cifar10-train-jpeg.tar.gz")) as src, \
            tarfile.open(path, "w:gz") as dst:
        for member in src:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and counts.get(parts[1], 0) < 30:
                counts[parts[1]] = counts.get(parts[1], 0) + 1
                dst.addfile(member, src.extractfile(member))
    assert len(counts) == 10
    return str(path)


@pytest.mark.slow
def test_rehearsal_every_phase_then_resume_then_cut_off(tiny_images, tmp_path):
    carry, results = tmp_path / "carry", tmp_path / "results"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    planned = gpu_run("--plan", "--carry", carry, "--data", tiny_images, "--results", results,
                      "--python-version", python)
    assert planned.returncode == 0, planned.stderr[-3000:]
    wheels = sorted(os.listdir(carry / "wheels"))
    assert [w.split("-")[0] for w in wheels] == ["keras", "namex", "optree"], wheels
    assert "command:  python3 bench/gpu_run.py" in planned.stdout
    assert f"carry:    {carry}" in planned.stdout

    # Period 1, a fresh machine: every phase; the run stops at its time limit (1 s from the
    # start of training: after its first step) and comes back packed.
    out1 = tmp_path / "out1"
    first = gpu_run("--carry", carry, "--work", tmp_path / "work1", "--results", results,
                    "--train-seconds", "1", *TINY, env={"OUT": str(out1)})
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    phases = summary(out1)["phases"]
    assert all(phases[p]["status"].startswith("ok") for p in phases), phases
    assert "stopped at its time limit" in phases["train"]["status"]
    assert sorted(os.listdir(out1)) == ["bench.txt", "equivalence.txt", "run.tgz", "setup.txt",
                                        "smoke.txt", "summary.json", "train.txt"]
    machine = summary(out1)["machine"]
    assert machine["tensorflow"] is None and machine["keras"] == "3.15.1", machine
    # Keras from the carried wheel, which the command installed, not this Python's own.
    assert machine["keras_file"].startswith(str(tmp_path / "work1" / "site")), machine
    smoke = open(out1 / "smoke.txt").read()
    assert "SMOKE jax" in smoke and "mixed_float16" in smoke, smoke
    bench = open(out1 / "bench.txt").read()
    for form in ("keras_jax_aug", "keras_jax", "torch", "torch_loader"):
        assert f"train_images_per_second_vanilla_{form}=" in bench, bench[-3000:]
        assert f"train_first_call_seconds_vanilla_{form}=" in bench, bench[-3000:]
    assert summary(out1)["run"]["step"] == 1 and summary(out1)["run"]["epochs_done"] == 0

    # bench/equivalence.py, both sides, each seed: our run under JAX against the
    # reference's loop, on the images and split it drew.
    equivalence = summary(out1)["equivalence"]
    assert phases["equivalence"]["status"] == "ok: 2 ours, 2 reference runs", phases
    assert equivalence["results"]["config"]["backend"] == "jax"
    for side in ("ours", "reference"):
        runs = equivalence["results"]["runs"][side]
        assert [r["seed"] for r in runs] == [1, 2]
        assert all([e["epoch"] for e in r["epochs"]] == [1, 2] for r in runs), runs
    assert "standard_error" in equivalence["results"]["summary"]
    assert "training step: jax" in open(out1 / "equivalence.txt").read()

    collected = gpu_run("--collect", out1, "--results", results)
    assert collected.returncode == 0, collected.stderr[-3000:]
    assert "checkpoint at optimizer step 1" in collected.stdout, collected.stdout
    assert os.path.exists(results / "smoke" / "run.tgz")
    filed = [p for p in (results / "periods").iterdir()][0] / "equivalence"
    assert sorted(os.listdir(filed)) == ["curves.png", "log.txt", "machine.json",
                                         "results.json"]
    assert open(filed / "curves.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    # Period 2, another fresh machine: the committed run resumes mid-epoch and finishes.
    out2, work2 = tmp_path / "out2", tmp_path / "work2"
    second = gpu_run("--carry", carry, "--work", work2, "--results", results,
                     "--phases", "setup,train", *TINY, env={"OUT": str(out2)})
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert summary(out2)["phases"]["train"]["status"] == "ok: finished"
    train_log = open(out2 / "train.txt").read()
    assert "continuing the run packed in" in train_log
    assert "resuming" in train_log and "step 1 of 3" in train_log, train_log
    run_dir = work2 / "run" / "smoke"
    metrics = json.load(open(run_dir / "metrics.json"))
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert metrics[-1]["step"] == 6
    assert os.path.exists(run_dir / "results.json") and os.path.exists(run_dir / "model.keras")
    # TensorBoard logs, written without TensorFlow, read back by TensorBoard's own reader.
    from tensorboard.backend.event_processing import event_accumulator

    for folder in ("train", "validation"):
        events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard" / folder))
        events.Reload()
        assert [e.step for e in events.Scalars("epoch_loss")][-1] == 1, folder
    collected = gpu_run("--collect", out2, "--results", results)
    assert "(finished)" in collected.stdout, collected.stdout
    # The Table-1 page, written beside these results (not over docs/table1.md): the run
    # is no Table-1 row (the smoke model), and its line says where it stands.
    page = open(results / "table1.md").read()
    assert "Runs that are no Table-1 row: smoke." in page
    assert "- `smoke`: ours, None, seed 1024, 2/2 epochs" in page, page

    # Period 3, cut off in the middle of training (as a command past its limit is): the
    # phase before it has left its file, and the summary says it finished.
    out3 = tmp_path / "out3"
    child = Child([sys.executable, SCRIPT, "--carry", carry, "--work", tmp_path / "work3",
                   "--results", results, "--fresh", "--phases", "setup,train", *TINY,
                   "--set", "epochs=200"], env=dict(GPU_HOST, OUT=str(out3)))
    child.wait_until(lambda: "epoch 1/200" in _read(out3 / "train.txt"), 300,
                     "the first epoch of the cut-off period")
    killed = _kill_phases(child.proc.pid)
    child.kill()
    # What was killed: the training command the period had started, mid-run.
    assert any("cli.py" in command and "train" in command for command in killed), killed
    phases = summary(out3)["phases"]
    assert phases["setup"]["status"].startswith("ok"), phases
    assert "train" not in phases  # it never reported: it was killed, not finished
    assert "VERSIONS " in open(out3 / "setup.txt").read()
    # What it left: the run folder with its first epoch saved and resumable, unfinished.
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import gpu_run as gpu_run_module

    left = gpu_run_module.run_state(str(tmp_path / "work3" / "run" / "smoke"))
    assert left["epochs_done"] >= 1 and left["step"] >= 3 and not left["finished"], left


def _read(path):
    try:
        return open(path).read()
    except OSError:
        return ""


def _kill_phases(pid):
    """SIGKILL to the process groups that ``pid`` started (each phase's child leads one),
    as the end of a command kills everything it started; the command lines killed."""
    killed = []
    for stat in os.listdir("/proc"):
        if not stat.isdigit():
            continue
        try:
            with open(f"/proc/{stat}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                with open(f"/proc/{stat}/cmdline", "rb") as f:
                    command = f.read().replace(b"\0", b" ").decode(errors="replace")
                os.killpg(int(stat), signal.SIGKILL)
                killed.append(command)
        except (OSError, ValueError, IndexError):
            pass
    return killed


def test_plan_refuses_missing_data(tmp_path):
    missing = gpu_run("--plan", "--carry", tmp_path / "carry", "--data", tmp_path / "nope.tgz",
                      timeout=60)
    assert missing.returncode != 0
    assert "does not exist" in missing.stderr and "train/<class>/" in missing.stderr
    (tmp_path / "images").mkdir()
    no_train = gpu_run("--plan", "--carry", tmp_path / "carry", "--data", tmp_path / "images",
                       timeout=60)
    assert no_train.returncode != 0 and "has no train/ folder" in no_train.stderr
    nothing = gpu_run("--plan", "--carry", tmp_path / "carry2", timeout=60)
    assert nothing.returncode != 0 and "pass --data" in nothing.stderr


def test_run_needs_an_output_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    out = run_process([sys.executable, SCRIPT, "--carry", tmp_path], 60,
                      env=dict(env, **GPU_HOST))
    assert out.returncode != 0 and "set OUT" in out.stderr
    bad = gpu_run("--phases", "setup,fly", env={"OUT": str(tmp_path / "o")}, timeout=60)
    assert bad.returncode != 0 and "unknown fly" in bad.stderr
