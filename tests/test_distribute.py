"""tf.distribute on the CPU: two logical devices (mirrored) and two worker processes
(multi-worker over 127.0.0.1), through the library and the real CLI."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, run_cli

# One training step on the same batch and weights: a single device, two mirrored
# replicas with synchronized BatchNorm (what `train` builds), and, as a control that the
# comparison can fail, two replicas with per-replica BatchNorm statistics.
STEP_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["CMXL_CPU_DEVICES"] = "2"
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import tensorflow as tf
    from cmxl_keras import config, distribute, train

    cfg = config.load("smoke").replace(aug="none")
    strategy = distribute.make_strategy("mirrored", log=lambda *a: None)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, 32)
    batch = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)

    def one_step(model):
        loss = model.fit(batch, epochs=1, verbose=0).history["loss"][0]
        return loss, model.get_weights()

    single = train.compile_model(train.build_model(cfg), cfg, 10)
    init = single.get_weights()
    out = {"replicas": strategy.num_replicas_in_sync}
    out["single_loss"], single_w = one_step(single)
    for name, sync in (("mirrored", True), ("unsynced", False)):
        with strategy.scope():
            model = train.compile_model(train.build_model(cfg, sync_bn=sync), cfg, 10)
        model.set_weights(init)
        loss, weights = one_step(model)
        out[name + "_loss"] = loss
        out[name + "_weight_diff"] = max(float(np.max(np.abs(a - b)))
                                         for a, b in zip(weights, single_w))
    out["update"] = max(float(np.max(np.abs(a - b))) for a, b in zip(single_w, init))
    print("RESULT " + json.dumps(out))
""")


def test_mirrored_step_matches_single_device(tmp_path):
    script = tmp_path / "step.py"
    script.write_text(STEP_SCRIPT)
    result = subprocess.run([sys.executable, str(script), ROOT], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    assert out["replicas"] == 2
    assert out["update"] > 1e-2  # the step really moved the weights
    assert abs(out["mirrored_loss"] - out["single_loss"]) < 1e-5, out
    assert out["mirrored_weight_diff"] < 1e-4, out
    # Per-replica BatchNorm statistics give another step: the tolerance above is tight
    # enough to tell.
    assert out["unsynced_weight_diff"] > 10 * out["mirrored_weight_diff"], out


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_cli_mirrored_train_and_resume(cifar_dir, tmp_path):
    run_dir = str(tmp_path / "run")
    env = {"CMXL_CPU_DEVICES": "2"}
    first = run_cli("train", "--config", "smoke", "--data-dir", cifar_dir, "--run-dir", run_dir,
                    "--strategy", "mirrored", "--epochs", "1", env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "mirrored over 2 device(s)" in first.stdout
    assert "(16 per replica on 2)" in first.stdout
    again = run_cli("train", "--resume", run_dir, "--strategy", "mirrored", "--epochs", "2",
                    env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [m["epoch"] for m in _metrics(run_dir)] == [1, 2]
    with open(os.path.join(run_dir, "checkpoints", "state.json")) as f:
        assert json.load(f)["step"] == 2 * 8
    # The saved models carry no synchronized BatchNorm: they load and run anywhere.
    check = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import keras, numpy as np
        for name in ("model.keras", "checkpoints/best.keras"):
            m = keras.saving.load_model({run_dir!r} + "/" + name)
            assert not any(getattr(l, "synchronized", False) for l in m.layers), name
            assert m.predict(np.zeros((2, 32, 32, 3)), verbose=0).shape == (2, 10)
        print("LOADED")
        """)], capture_output=True, text=True, timeout=120,
        env=dict(os.environ, KERAS_BACKEND="jax"))
    assert "LOADED" in check.stdout, check.stderr[-3000:]


def _free_ports(n):
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run_workers(args, cwd, scratch, timeout=300):
    """Starts one `cli.py train` per worker with TF_CONFIG (and TMPDIR=scratch);
    returns their (exit code, stdout, stderr)."""
    os.makedirs(scratch, exist_ok=True)
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TMPDIR=str(scratch), TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        env.pop("CMXL_CPU_DEVICES", None)
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "cli.py"), "train", *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd))
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            outputs.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return outputs


def _epoch_lines(text):
    return [line for line in text.splitlines() if line.startswith("epoch ")]


@pytest.mark.slow
def test_cli_multi_worker_one_run_folder_and_resume(cifar_dir, tmp_path):
    runs = tmp_path / "runs"
    run_dir = runs / "mw"
    scratch = tmp_path / "tmp"
    outputs = _run_workers(["--config", "smoke", "--data-dir", cifar_dir, "--run-dir", run_dir,
                            "--strategy", "multi_worker", "--epochs", "1"], cwd=str(tmp_path),
                           scratch=scratch)
    for code, out, err in outputs:
        assert code == 0, err[-3000:]
    (_, chief_out, _), (_, worker_out, _) = outputs
    assert "task worker 0" in chief_out and "2 replicas in the cluster" in chief_out
    assert "worker 1: the chief writes the run folder" in worker_out
    # Both workers took the same synchronized steps, so they report the same epoch.
    assert _epoch_lines(chief_out)[0].split("|")[:2] == _epoch_lines(worker_out)[0].split("|")[:2]
    # One run folder, written by the chief; the worker's scratch copies are gone.
    assert os.listdir(runs) == ["mw"]
    for name in ("model.keras", "metrics.json", "checkpoints/last.weights.h5",
                 "checkpoints/best.keras", "tensorboard"):
        assert os.path.exists(run_dir / name), name
    assert "/cmxl-worker1-" in worker_out
    assert not [n for n in os.listdir(scratch) if n.startswith("cmxl-")]

    outputs = _run_workers(["--resume", run_dir, "--strategy", "multi_worker", "--epochs", "2"],
                           cwd=str(tmp_path), scratch=scratch)
    for code, out, err in outputs:
        assert code == 0, err[-3000:]
        assert "resuming" in out and "at epoch 2, step 0 of 8" in out
    assert [m["epoch"] for m in _metrics(run_dir)] == [1, 2]
    assert os.listdir(runs) == ["mw"]


@pytest.mark.slow
def test_jax_mirrored_is_keras_data_parallel(cifar_dir, tmp_path):
    # Two virtual CPU devices meet in every all-reduce; on a loaded 2-core machine one
    # of them can arrive more than XLA's default 40 s late, which aborts the process.
    env = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
                        "--xla_cpu_collective_call_terminate_timeout_seconds=600 "
                        "--xla_cpu_collective_timeout_seconds=600"}
    uneven = run_cli("train", "--config", "smoke", "--data-dir", cifar_dir, "--strategy",
                     "mirrored", "--batch-size", "31", "--run-dir", tmp_path / "no", env=env)
    assert uneven.returncode == 2
    assert "batch_size 31 does not split evenly over the 2 devices" in uneven.stderr
    assert "--batch-size 32" in uneven.stderr and not os.path.exists(tmp_path / "no")
    run_dir = str(tmp_path / "run")
    result = run_cli("train", "--config", "smoke", "--data-dir", cifar_dir, "--strategy",
                     "mirrored", "--run-dir", run_dir, "--epochs", "1", "--steps-per-epoch",
                     "3", env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "keras.distribution.DataParallel over 2 JAX device(s)" in result.stdout
    assert "(16 per replica on 2)" in result.stdout
    assert [m["epoch"] for m in _metrics(run_dir)] == [1]
    assert os.path.exists(os.path.join(run_dir, "model.keras"))
