"""The GPU command (``python -m reproduce gpu``) rehearsed on this CPU, in a Python shaped
like the GPU host: TensorFlow, keras-cv and tensorflow-datasets hidden (tests/gpu_host/),
the carried wheels installed by the command itself, Keras on JAX. Tiny sizes and short
caps; the same phases, files and resume path as a real period."""

import json
import os
import signal
import sys
import tarfile

import pytest

from conftest import REPRODUCE, ROOT, SHARED_DATA, Child, run_cli, run_process

SCRIPT = REPRODUCE + ["gpu"]
GPU_HOST = {"PYTHONPATH": os.path.join(ROOT, "tests", "gpu_host")}
# A rehearsal's sizes: every job a two-layer ConvMixer of 2 epochs on 250 images (4
# batches of 64, the last one partial); the bench's model two layers wide 32.
TINY = ["--set", "width=16", "--set", "depth=2", "--set", "patch_size=4", "--set",
        "kernel_size=3", "--set", "epochs=2", "--set", "batch_size=64", "--val-from-train",
        "50", "--ref-workers", "2", "--min-job-seconds", "5",
        "--bench-models", "vanilla", "--arch", "width=32,depth=2",
        "--bench-args", "--batch 16 --steps 2 --infer-batches 2 --workers 2",
        "--equivalence-args", "--width 16 --depth 2 --patch-size 4 --train 150 --val 60 "
                              "--epochs 2 --seeds 1 --workers 0 --batch-size 32",
        "--variants-args", "--arch width=32,depth=3 --batch 16 --steps 2 "
                           "--variants shifted-depthwise",
        "--profile-args", "--model vanilla --arch width=16,depth=2,patch_size=4 --batch 16 "
                          "--steps 2 --top 5"]
JOBS = ["--jobs", "reference-1204,cm_vanilla-1204"]


def gpu_run(*args, env=None, timeout=600):
    return run_process([*SCRIPT, *map(str, args)], timeout,
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


def _state(results, job):
    """The committed archives of a job, and the files its archive holds."""
    folder = results / job
    archives = sorted(p for p in os.listdir(folder) if p.endswith(".tgz"))
    with tarfile.open(folder / archives[0]) as tar:
        return archives, {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}


@pytest.mark.slow
def test_rehearsal_of_the_queue_across_periods_and_a_warm_machine(tiny_images, tmp_path):
    carry, results = tmp_path / "carry", tmp_path / "results"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    planned = gpu_run("--plan", "--carry", carry, "--data", tiny_images, "--results", results,
                      "--python-version", python)
    assert planned.returncode == 0, planned.stderr[-3000:]
    wheels = sorted(os.listdir(carry / "wheels"))
    assert [w.split("-")[0] for w in wheels] == ["keras", "namex", "optree"], wheels
    assert "command:  python3 -m reproduce gpu" in planned.stdout
    assert f"carry:    {carry}" in planned.stdout
    # What travels, part by part, and the sum against the limit.
    for part in ("repository: everything else", "repository: the shipped model",
                 "carry: wheels/", "carry: data/", "in all, of 64 MiB"):
        assert part in planned.stdout, planned.stdout
    assert "the smoke step and the bench run" in planned.stdout  # no bench filed yet

    # Period 1, command 1, a fresh machine: setup, then the smoke step and the bench (no
    # bench of this code is filed), then the queue: the reference's loop stops at its time
    # limit after its first epoch and comes back resumable; ours is not reached.
    out1, work1 = tmp_path / "out1", tmp_path / "work1"
    first = gpu_run("--carry", carry, "--work", work1, "--results", results,
                    "--train-seconds", "1", *TINY, *JOBS, env={"OUT": str(out1)})
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    phases = summary(out1)["phases"]
    assert [p for p in phases if phases[p]["status"].startswith("ok")] == [
        "setup", "smoke", "bench", "queue"], phases
    assert phases["equivalence"]["status"].startswith("skipped"), phases
    assert phases["queue"]["status"] == (
        "ok: reference-1204 stopped and saved, epoch 1 of 2 finished, checkpoint after it")
    assert sorted(os.listdir(out1)) == ["bench.txt", "jobs.tar", "queue.txt", "setup.txt",
                                        "smoke.txt", "summary.json"]
    machine = summary(out1)["machine"]
    assert machine["tensorflow"] is None and machine["keras"] == "3.15.1", machine
    # Keras from the carried wheel, which the command installed, not this Python's own.
    assert machine["keras_file"].startswith(str(work1 / "site")), machine
    smoke = open(out1 / "smoke.txt").read()
    assert "SMOKE jax" in smoke and "mixed_float16" in smoke, smoke
    bench = open(out1 / "bench.txt").read()
    for form in ("keras_jax_aug", "keras_jax", "keras_jax_device", "torch", "torch_tuned",
                 "torch_loader"):
        assert f"train_images_per_second_vanilla_{form}=" in bench, bench[-3000:]
        assert f"train_first_call_seconds_vanilla_{form}=" in bench, bench[-3000:]
    assert list(summary(out1)["pack"]["jobs"]) == ["reference-1204"]
    collected = gpu_run("--collect", out1, "--results", results)
    assert collected.returncode == 0, collected.stderr[-3000:]
    archives, files = _state(results, "reference-1204")
    assert archives == ["state.tgz"] and "checkpoint.pt" in files, files
    assert json.load(open(results / "bench.json"))["code"] == summary(out1)["bench_code"]

    # Command 2, the same machine still warm, nothing carried: setup reuses the wheels,
    # the images and the probe; no bench (it ran here); the reference resumes from the
    # folder it left here and finishes; ours starts and stops after its first step.
    os.rename(carry, tmp_path / "carry-not-carried")
    out2 = tmp_path / "out2"
    second = gpu_run("--carry", carry, "--work", work1, "--results", results,
                     "--train-seconds", "1", *TINY, *JOBS, env={"OUT": str(out2)})
    os.rename(tmp_path / "carry-not-carried", carry)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    phases = summary(out2)["phases"]
    assert phases["setup"]["status"].startswith(
        "ok (warm: wheels installed, images unpacked"), phases
    assert "$ " not in open(out2 / "setup.txt").read()  # nothing installed, nothing probed
    assert phases["smoke"]["status"] == phases["bench"]["status"] == (
        "skipped (not asked for, and the code it measures was measured)"), phases
    queue = open(out2 / "queue.txt").read()
    assert "reference-1204: continuing the folder left on this machine" in queue, queue
    assert "resumed" in queue and "after epoch 1 of 2" in queue, queue
    assert phases["queue"]["status"] == (
        "ok: reference-1204 finished here; cm_vanilla-1204 stopped and saved, epoch 0 of 2 "
        "finished, checkpoint at optimizer step 1"), phases
    collected = gpu_run("--collect", out2, "--results", results)
    assert collected.returncode == 0, collected.stderr[-3000:]
    # The finished reference: only what a user needs, its state gone.
    archives, files = _state(results, "reference-1204")
    assert archives == ["run.tgz"], archives
    assert "model.keras" in files and "checkpoint.pt" not in files, files
    assert json.load(open(results / "reference-1204" / "results.json"))["loop"] == "reference"
    archives, files = _state(results, "cm_vanilla-1204")
    assert archives == ["state.tgz"] and "checkpoints/last.weights.h5" in files, files
    assert not {"checkpoints/best.keras", "checkpoints/good.weights.h5"} & files, files
    # The converted reference model, scored as our runs are, gives the reference's own
    # last validation top-1 on the same carved images.
    with tarfile.open(results / "reference-1204" / "run.tgz") as tar:
        tar.extractall(tmp_path / "filed", filter="data")
    scored = run_cli("evaluate", tmp_path / "filed" / "reference-1204" / "model.keras",
                     "--data-dir", work1 / "data", "--out", tmp_path / "scored", "--json",
                     timeout=300)
    assert scored.returncode == 0, scored.stderr[-3000:]
    ref_final = json.load(open(results / "reference-1204" / "results.json"))["final"]
    scored = json.loads(scored.stdout)
    assert scored["images"] == 50 and scored["top1"] == ref_final["val_accuracy"], scored

    # Period 2, a fresh machine: the reference is finished in the repository (not run,
    # not packed); ours resumes from its committed state mid-epoch and finishes; the
    # equivalence phase asked for runs after it.
    out3, work3 = tmp_path / "out3", tmp_path / "work3"
    third = gpu_run("--carry", carry, "--work", work3, "--results", results, "--phases",
                    "setup,profile,variants,queue,equivalence", *TINY, *JOBS,
                    env={"OUT": str(out3)})
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    phases = summary(out3)["phases"]
    assert phases["queue"]["status"] == ("ok: reference-1204 finished (committed, "
                                         "finished); cm_vanilla-1204 finished here"), phases
    assert phases["equivalence"]["status"] == "ok: 1 ours, 1 reference runs", phases
    # The variants bench: the baseline around the shifted-add depthwise convolution, whose
    # logits equal the built-in layer's (float32, the same weights).
    variants = open(out3 / "variants.txt").read()
    assert phases["variants"]["status"] == "ok: see variants.txt", phases
    assert "variant_ratio_shifted_depthwise=" in variants, variants[-3000:]
    difference = float(variants.split("variant_logits_max_difference_shifted_depthwise=")[1]
                       .split()[0])
    assert difference < 1e-5, variants[-2000:]
    # The profile: the step's kernels, each given to a part of the recipe, the device
    # augmentation and the depthwise convolutions among them.
    assert phases["profile"]["status"].startswith("ok: "), phases
    profile = summary(out3)["profile"]
    assert sum(profile["parts"].values()) == pytest.approx(1.0), profile["parts"]
    assert profile["parts"]["augmentation"] > 0.01, profile["parts"]
    assert profile["parts"]["depthwise convolution"] > 0.01, profile["parts"]
    assert set(profile["passes"]) >= {"forward", "backward"}, profile["passes"]
    assert "profile_share_depthwise_convolution=" in open(out3 / "profile.txt").read()
    queue = open(out3 / "queue.txt").read()
    assert "cm_vanilla-1204: continuing the committed" in queue, queue
    assert "resuming" in queue and "step 1 of 4" in queue, queue
    assert list(summary(out3)["pack"]["jobs"]) == ["cm_vanilla-1204"]
    run_dir = work3 / "jobs" / "cm_vanilla-1204"
    metrics = json.load(open(run_dir / "metrics.json"))
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[-1]["step"] == 8, metrics
    # TensorBoard logs, written without TensorFlow, read back by TensorBoard's own reader.
    from tensorboard.backend.event_processing import event_accumulator

    for folder in ("train", "validation"):
        events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard" / folder))
        events.Reload()
        assert [e.step for e in events.Scalars("epoch_loss")][-1] == 1, folder
    collected = gpu_run("--collect", out3, "--results", results)
    assert collected.returncode == 0, collected.stderr[-3000:]
    archives, files = _state(results, "cm_vanilla-1204")
    assert archives == ["run.tgz"] and "model.keras" in files, archives
    assert not any(f.startswith("checkpoints/") for f in files), files
    period = [p for p in sorted((results / "periods").iterdir())][-1]
    assert sorted(os.listdir(period / "equivalence")) == ["curves.png", "log.txt",
                                                          "machine.json", "results.json"]
    assert json.load(open(period / "profile.json"))["parts"] == profile["parts"]
    # The Table-1 page, written beside these results (not over docs/table1.md): the
    # two-layer rehearsal models are no Table-1 row; each run's line says where it stands.
    page = open(results / "table1.md").read()
    assert "Runs that are no Table-1 row: cm_vanilla-1204, reference-1204." in page, page
    assert "- `reference-1204`: reference, None, seed 1204, 2/2 epochs" in page, page
    assert "- `cm_vanilla-1204`: ours, None, seed 1204, 2/2 epochs" in page, page
    # A finished job never travels or runs again: the plan says so.
    replanned = gpu_run("--plan", "--carry", carry, "--results", results,
                        "--python-version", python)
    assert "plan: reference-1204: finished" in replanned.stdout, replanned.stdout
    assert "plan: cm_vanilla-1204: finished" in replanned.stdout, replanned.stdout
    assert "are skipped: the code they measure" in replanned.stdout, replanned.stdout

    # A command cut off in the middle of a job (as a command past its limit is): the
    # phase before it has left its file, and the job its saved, resumable state.
    out4 = tmp_path / "out4"
    child = Child([*SCRIPT, "--carry", carry, "--work", tmp_path / "work4",
                   "--results", results, "--phases", "setup,queue", *TINY,
                   "--jobs", "cm_vanilla-1205", "--set", "epochs=200"],
                  env=dict(GPU_HOST, OUT=str(out4)))
    child.wait_until(lambda: "epoch 1/200" in _read(out4 / "queue.txt"), 300,
                     "the first epoch of the cut-off command")
    killed = _kill_phases(child.proc.pid)
    child.kill()
    # What was killed: the training command the queue had started, mid-run.
    assert any("cli.py" in command and "train" in command for command in killed), killed
    phases = summary(out4)["phases"]
    assert phases["setup"]["status"].startswith("ok"), phases
    assert "queue" not in phases  # it never reported: it was killed, not finished
    from reproduce.gpu import campaign

    left = campaign.run_state(str(tmp_path / "work4" / "jobs" / "cm_vanilla-1205"))
    assert left["epochs_done"] >= 1 and left["step"] >= 4 and not left["finished"], left


@pytest.fixture(scope="module")
def tiny_forms(tmp_path_factory):
    """8 lossless images per class (PNG, from the shared archive) and the training images
    that hold their JPEG twins (the same names) and 4 more JPEG images per class."""
    folder = tmp_path_factory.mktemp("gpu-forms")
    lossless, jpeg = folder / "lossless.tar.gz", folder / "train-images.tar.gz"
    names = {}
    with tarfile.open(os.path.join(SHARED_DATA, "cifar10-train-lossless-subset.tar.gz")) as src, \
            tarfile.open(lossless, "w:gz") as dst:
        for member in src:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and len(names.setdefault(parts[1], [])) < 8:
                names[parts[1]].append(parts[2].rsplit(".", 1)[0])
                dst.addfile(member, src.extractfile(member))
    extra = {}
    with tarfile.open(os.path.join(SHARED_DATA, "cifar10-train-jpeg.tar.gz")) as src, \
            tarfile.open(jpeg, "w:gz") as dst:
        for member in src:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3:
                continue
            twin = parts[2].rsplit(".", 1)[0] in names[parts[1]]
            if twin or extra.get(parts[1], 0) < 4:
                extra[parts[1]] = extra.get(parts[1], 0) + (not twin)
                dst.addfile(member, src.extractfile(member))
    return str(jpeg), str(lossless)


# The comparison jobs at a rehearsal's size: one seed, 60 training and 20 validation images.
COMPARISON = ["--comparison-args", "--width 16 --depth 2 --patch-size 4 --kernel-size 3 "
              "--train 60 --val 20 --epochs 2 --seeds 1 --batch-size 32",
              "--ref-workers", "0", "--min-job-seconds", "5", "--phases", "setup,queue",
              "--jobs", "jpeg-cost-lossless,jpeg-cost-jpeg"]


@pytest.mark.slow
def test_rehearsal_of_the_comparison_jobs(tiny_forms, tmp_path):
    """What the JPEG images cost at the paper's scale, queued: both comparison jobs stop,
    travel as state, resume on a fresh machine, finish lean and read as one 2 x 2."""
    jpeg, lossless = tiny_forms
    carry, results = tmp_path / "carry", tmp_path / "results"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    planned = gpu_run("--plan", "--carry", carry, "--data", jpeg, "--lossless", lossless,
                      "--results", results, "--python-version", python)
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "carry: forms/" in planned.stdout, planned.stdout
    assert os.listdir(carry / "forms") == ["lossless.tar.gz"]

    # Period 1: the first job's first run (ours) stops after a step; nothing else starts.
    out1 = tmp_path / "out1"
    first = gpu_run("--carry", carry, "--work", tmp_path / "work1", "--results", results,
                    "--train-seconds", "1", *COMPARISON, env={"OUT": str(out1)})
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert summary(out1)["phases"]["queue"]["status"] == (
        "ok: jpeg-cost-lossless stopped and saved, 0 of 2 runs finished, 0 epochs trained")
    assert list(summary(out1)["pack"]["jobs"]) == ["jpeg-cost-lossless"]
    assert gpu_run("--collect", out1, "--results", results).returncode == 0
    archives, files = _state(results, "jpeg-cost-lossless")
    assert archives == ["state.tgz"], archives
    assert "runs/ours-1/checkpoints/last.weights.h5" in files, files
    assert not any("twins-" in f for f in files), files

    # Period 2, a fresh machine: the first job continues from its committed state (ours
    # mid-run), both finish, and each comes back lean: records, no run folders.
    out2 = tmp_path / "out2"
    second = gpu_run("--carry", carry, "--work", tmp_path / "work2", "--results", results,
                     *COMPARISON, env={"OUT": str(out2)})
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert summary(out2)["phases"]["queue"]["status"] == (
        "ok: jpeg-cost-lossless finished here; jpeg-cost-jpeg finished here")
    queue = open(out2 / "queue.txt").read()
    assert "jpeg-cost-lossless: continuing the committed" in queue, queue
    assert "resuming" in queue and "ours-1" in queue, queue
    assert gpu_run("--collect", out2, "--results", results).returncode == 0
    for job, forms in (("jpeg-cost-lossless", ["lossless", "jpeg"]),
                       ("jpeg-cost-jpeg", ["jpeg", "lossless"])):
        archives, files = _state(results, job)
        assert archives == ["run.tgz"], archives
        assert not any(f.startswith("runs/") for f in files), files
        filed = json.load(open(results / job / "comparison" / "results.json"))
        assert filed["config"]["forms"] == forms
        for side in ("ours", "reference"):
            (run,) = filed["runs"][side]
            assert set(run["scores"]) == set(forms), run["scores"]
            assert all(len(v["correct"]) == 20 for v in run["scores"].values())
    # The two read as one 2 x 2, from the committed records.
    crossed = run_process(REPRODUCE + ["cross", results / "jpeg-cost-lossless" / "comparison",
                                       results / "jpeg-cost-jpeg" / "comparison",
                                       "--out", tmp_path / "cross"], 120)
    assert crossed.returncode == 0, crossed.stderr[-3000:]
    reading = json.load(open(tmp_path / "cross" / "results.json"))
    assert set(reading["sides"]) == {"ours", "reference"}
    assert set(reading["sides"]["ours"]["cells"]) == {"lossless", "jpeg"}
    # Finished, the lossless images no longer travel.
    replanned = gpu_run("--plan", "--carry", carry, "--results", results,
                        "--python-version", python)
    assert "the comparison jobs are finished: no lossless images carried" in replanned.stdout
    assert not os.path.exists(carry / "forms")


def test_the_plan_fails_loudly_when_what_travels_is_over_the_limit(tmp_path):
    data = tmp_path / "images" / "train" / "cat"
    data.mkdir(parents=True)
    (data / "0.jpg").write_bytes(b"\xff" * 2**20)
    over = gpu_run("--plan", "--carry", tmp_path / "carry", "--data", tmp_path / "images",
                   "--results", tmp_path / "results", "--transfer-limit", "1", timeout=120)
    assert over.returncode != 0
    assert "MiB would travel, over the 1 MiB limit" in over.stderr, over.stderr
    assert "carry: data/" in over.stdout, over.stdout


def test_an_unknown_job_is_refused_with_the_queue(tmp_path):
    refused = gpu_run("--jobs", "reference-1204,cm_vanila-1204", "--out", tmp_path, timeout=60)
    assert refused.returncode != 0
    assert "no job cm_vanila-1204 in the queue" in refused.stderr, refused.stderr
    assert "cm_vanilla-1204" in refused.stderr


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
    out = run_process([*SCRIPT, "--carry", tmp_path], 60,
                      env=dict(env, **GPU_HOST))
    assert out.returncode != 0 and "set OUT" in out.stderr
    bad = gpu_run("--phases", "setup,fly", env={"OUT": str(tmp_path / "o")}, timeout=60)
    assert bad.returncode != 0 and "unknown fly" in bad.stderr


def test_the_bench_runs_again_only_when_the_code_it_measures_changes(tmp_path, monkeypatch):
    from reproduce.gpu import carry as gpu_carry

    for path in gpu_carry.BENCHED_CODE:  # each names a file that is there
        assert os.path.isfile(os.path.join(ROOT, path)), path
    for path in gpu_carry.BENCHED_CODE + ("cmxl_keras/serving.py",):
        os.makedirs(tmp_path / os.path.dirname(path), exist_ok=True)
        with open(os.path.join(ROOT, path), "rb") as f:
            (tmp_path / path).write_bytes(f.read())
    monkeypatch.setattr(gpu_carry, "ROOT", str(tmp_path))
    before = gpu_carry.code_digest()
    with open(tmp_path / "cmxl_keras" / "serving.py", "a") as f:
        f.write("\n# not the training step\n")
    assert gpu_carry.code_digest() == before
    with open(tmp_path / "cmxl_keras" / "models.py", "a") as f:
        f.write("\n# the model\n")
    assert gpu_carry.code_digest() != before


def test_collect_refuses_a_pack_that_did_not_all_come_back(tmp_path):
    back = tmp_path / "back"
    back.mkdir()
    (back / "summary.json").write_text(json.dumps({
        "started": "2026-12-06 10:00:00 UTC", "phases": {},
        "pack": {"jobs": {"cm_vanilla-1204": {}}, "parts": ["jobs.tar.00", "jobs.tar.01"],
                 "bytes": 2, "sha256": "0"}}))
    (back / "jobs.tar.00").write_bytes(b"x")
    refused = gpu_run("--collect", back, "--results", tmp_path / "results", timeout=60)
    assert refused.returncode != 0
    assert "lacks jobs.tar.01 of the jobs' archive" in refused.stderr, refused.stderr
    assert "nothing was filed" in refused.stderr
    assert not (tmp_path / "results" / "cm_vanilla-1204").exists()
