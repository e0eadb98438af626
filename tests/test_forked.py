"""The tests' forked CLI processes (tests/forked.py) against fresh interpreters: each
child sees what a fresh ``python -c``/``python cli.py`` would, exits with the same code,
streams its output as it comes, and is forked only where that holds."""

import os
import signal
import sys

import pytest

import forked
from conftest import ROOT, TESTS, Child
from forked import Forked

# After the imports that the fork server makes (tests/forked.py), as the CLI's commands
# make them: TensorFlow sets a few variables of its own (TF2_BEHAVIOR, ...).
PROBE = """
import importlib, json, os, sys, tempfile
for name in PRELOAD:
    importlib.import_module(name)
import numpy as np
print(json.dumps({"path": sys.path, "argv": sys.argv, "cwd": os.getcwd(),
                  "environ": dict(os.environ), "tmp": tempfile.gettempdir(),
                  "main": __name__}))
print(np.random.randint(1 << 30), file=sys.stderr)
""".replace("PRELOAD", repr(forked.PRELOAD))


def _both(command, env=None, cwd=None):
    """``command`` run forked and in a fresh interpreter: their CompletedProcesses."""
    child = Child(command, env=env, cwd=cwd, fork=True)
    fresh = Child(command, env=env, cwd=cwd, fork=False)
    assert isinstance(child.proc, Forked), "the command was not forked"
    assert not isinstance(fresh.proc, Forked)
    return child.wait(120), fresh.wait(120)


@pytest.fixture(scope="module", autouse=True)
def server():
    env = forked.server_env(TESTS)
    assert env is not None, "no fork server on another KERAS_BACKEND than tensorflow"


def test_a_forked_child_sees_what_a_fresh_interpreter_sees(tmp_path):
    import json

    got, fresh = _both([sys.executable, "-c", PROBE, "a", "--b"],
                       env={"PYTHONPATH": ROOT, "TMPDIR": str(tmp_path)}, cwd=tmp_path)
    assert got.returncode == fresh.returncode == 0, (got.stderr, fresh.stderr)
    got_info, fresh_info = json.loads(got.stdout), json.loads(fresh.stdout)
    assert got_info == fresh_info
    assert got_info["tmp"] == str(tmp_path) and got_info["argv"] == ["-c", "a", "--b"]
    # The defaults that importing cmxl_keras sets are there, as in a fresh process that
    # imports it (TF_CPU_ALLOCATOR_USE_BFC: read when TensorFlow makes its allocator).
    assert got_info["environ"]["TF_CPU_ALLOCATOR_USE_BFC"] == "true"
    assert "CMXL_FORK_SERVER" not in got_info["environ"]
    # NumPy's global generator is reseeded in each child, not the server's state copied.
    draws = {Child([sys.executable, "-c", PROBE], fork=True).wait(60).stderr
             for _ in range(3)}
    assert len(draws) == 3, draws


@pytest.mark.parametrize("code,expected", [
    ("import sys; sys.exit(3)", 3),
    ("import sys; sys.exit('stopped by the probe')", 1),
    ("raise ValueError('the probe failed')", 1),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL),
    ("import atexit; atexit.register(lambda: print('at exit'))", 0),
])
def test_a_forked_child_ends_as_a_fresh_one(code, expected):
    got, fresh = _both([sys.executable, "-c", code])
    assert got.returncode == fresh.returncode == expected
    assert got.stdout == fresh.stdout
    last = [line for line in got.stderr.splitlines() if line][-1:]
    assert last == [line for line in fresh.stderr.splitlines() if line][-1:]


def test_the_cli_forked_prints_and_exits_as_the_cli_fresh(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("width = 'wide'\n")
    got, fresh = _both([sys.executable, os.path.join(ROOT, "cli.py"), "info", "--config",
                        str(bad)])
    assert got.returncode == fresh.returncode != 0
    assert got.stderr == fresh.stderr and "wide" in got.stderr
    got, fresh = _both([sys.executable, os.path.join(ROOT, "cli.py"), "info", "--variant",
                        "cm_xl"])
    assert got.returncode == fresh.returncode == 0 and got.stdout == fresh.stdout


def test_output_streams_as_it_comes_and_a_hang_gets_the_fault_handler():
    child = Child([sys.executable, "-c",
                   "import time; print('first', flush=True); time.sleep(600)"], fork=True)
    assert isinstance(child.proc, Forked)
    child.wait_until(lambda: child.lines_starting("first"), 60, "the first line")
    with pytest.raises(pytest.fail.Exception) as failed:
        child.wait(2)
    # SIGABRT, and Python's fault handler printed where the main thread was waiting.
    assert child.proc.returncode == -signal.SIGABRT
    assert "Fatal Python error: Aborted" in str(failed.value)
    assert 'File "<string>", line 1 in <module>' in str(failed.value), str(failed.value)


@pytest.mark.parametrize("args,env", [
    (["cli.py", "--backend", "jax", "info"], {}),
    (["cli.py", "info"], {"KERAS_BACKEND": "jax"}),
    (["cli.py", "info"], {"TF_CPP_MIN_LOG_LEVEL": "0"}),  # read when TensorFlow loads
    (["cli.py", "info"], {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}),
    (["bench/bench_data.py", "--help"], {}),  # not the CLI
    (["-c", "import sys; print(sorted(sys.modules))"], {}),  # code that does not run it
])
def test_what_is_read_while_importing_gets_a_fresh_interpreter(args, env):
    command = [sys.executable, *([args[0]] if args[0] == "-c" else [os.path.join(ROOT, args[0])]),
               *args[1:]]
    child = Child(command, env=env)
    assert not isinstance(child.proc, Forked)
    child.wait(120)
    assert not forked.forkable(command, dict(os.environ, **env),
                               forked.server_env(TESTS))


def test_the_crash_harnesses_and_the_cli_are_forked(tmp_path):
    harness = "import sys\nsys.argv = ['cli.py'] + sys.argv[1:]\nimport cli\ncli.main()\n"
    env = {"PYTHONPATH": ROOT, "RUN_DIR": str(tmp_path)}
    server_env = forked.server_env(TESTS)
    for command in ([sys.executable, os.path.join(ROOT, "cli.py"), "info"],
                    [sys.executable, "-c", harness, "info"]):
        assert forked.forkable(command, dict(os.environ, **env), server_env), command
        child = Child(command, env=env)
        # Forked unless the switch says otherwise.
        assert isinstance(child.proc, Forked) == (os.environ.get("CMXL_TEST_FORK") != "0")
        assert child.wait(120).returncode == 0
    # Another Python (a virtual environment's) is never this one forked.
    assert not forked.forkable(["/usr/bin/python3", os.path.join(ROOT, "cli.py"), "info"],
                               dict(os.environ), server_env)
