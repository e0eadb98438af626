"""Shared test helpers: the CLI as a subprocess, small models, real data on demand."""

import functools
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench_bomb  # noqa: E402
import forked  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))


class Child:
    """A child process that no test can wait on forever.

    Its output is collected as it comes (one thread per stream), so a test can wait for a
    line, a file or the end with a deadline. Past the deadline the child gets SIGABRT
    (Python's fault handler, on in every child, then prints where each thread was
    waiting) and the test fails with the child's last output, not a bare timeout.

    The CLI's commands are forked from the tests' fork server where ``forked.forkable``
    allows (tests/forked.py); other commands start a fresh interpreter.
    """

    def __init__(self, command, env=None, cwd=None, fork=None):
        command = list(map(str, command))
        self.command = " ".join(command)
        with forked.ENVIRON:
            full_env = dict(os.environ, PYTHONFAULTHANDLER="1", PYTHONUNBUFFERED="1")
        full_env.update(env or {})
        self.out, self.err = [], []
        # fork: None, where forked.forkable allows (unless CMXL_TEST_FORK=0); True, always
        # (the harness's own tests); False, never.
        if fork is None and os.environ.get("CMXL_TEST_FORK") == "0":
            fork = False
        server_env = forked.server_env(TESTS) if fork is not False else None
        if server_env is not None and (fork or forked.forkable(command, full_env, server_env)):
            self.proc = forked.Forked(command, full_env, cwd or ROOT)
            sources = ((self.proc.tail(self.proc.out_path), self.out),
                       (self.proc.tail(self.proc.err_path), self.err))
        else:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, env=full_env,
                                         cwd=cwd or ROOT)
            sources = ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        self._pumps = [threading.Thread(target=self._pump, args=source, daemon=True)
                       for source in sources]
        for pump in self._pumps:
            pump.start()

    @staticmethod
    def _pump(lines_in, lines):
        for line in lines_in:
            lines.append(line)

    @property
    def stdout(self):
        return "".join(self.out)

    @property
    def stderr(self):
        return "".join(self.err)

    def _drain(self):
        for pump in self._pumps:
            pump.join(timeout=30)

    def _fail(self, why):
        self._drain()
        pytest.fail(f"{self.command}: {why}. Its last output:\n--- stdout ---\n"
                    f"{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-8000:]}",
                    pytrace=False)

    def _hang(self, timeout, what):
        self.proc.send_signal(signal.SIGABRT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._fail(f"{what} did not happen within {timeout} s (a hang, or far slower than "
                   f"usual)")

    def wait_until(self, condition, timeout, what):
        """Polls ``condition()`` until it holds; fails if the child ends first or the
        deadline passes."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                self._fail(f"it ended (exit {self.proc.returncode}) before {what}")
            if time.monotonic() > deadline:
                self._hang(timeout, what)
            time.sleep(0.2)

    def lines_starting(self, prefix):
        return sum(1 for line in list(self.out) if line.startswith(prefix))

    def wait(self, timeout):
        """Waits for the end; returns a CompletedProcess."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._hang(timeout, "the end of the process")
        self._drain()
        return subprocess.CompletedProcess(self.command, self.proc.returncode, self.stdout,
                                           self.stderr)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        self._drain()


def run_process(command, timeout, env=None, cwd=None):
    """Runs ``command`` (a list) to its end and returns its CompletedProcess; a run past
    ``timeout`` seconds fails the test with the process's last output."""
    return Child(command, env=env, cwd=cwd).wait(timeout)


REPRODUCE = [sys.executable, "-m", "reproduce"]  # the reproduction's command


def run_reproduce(*args, env=None, timeout=600, cwd=None):
    """Runs ``python -m reproduce ARGS`` for real (from ``cwd``, the repository on its
    path) and returns the CompletedProcess."""
    env = dict(env or {}, PYTHONPATH=ROOT)
    return run_process(REPRODUCE + [str(a) for a in args], timeout, env=env, cwd=cwd)


def run_cli(*args, env=None, timeout=600, cwd=None):
    """Runs ``python cli.py ARGS`` for real and returns the CompletedProcess."""
    return run_process([sys.executable, os.path.join(ROOT, "cli.py"), *map(str, args)],
                       timeout, env=env, cwd=cwd)


def random_images(n, size=32, seed=0):
    """Raw uint8 RGB images, never all-zero."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# A decompression bomb, made once per size: ``bench/bench_bomb.py``'s.
png_bomb = functools.lru_cache(maxsize=None)(bench_bomb.png_bomb)


@pytest.fixture
def tiny_kwargs():
    """Builder arguments of a small ConvMixer-XL (long skips on) for fast tests."""
    return dict(width=16, depth=4, patch_size=4, kernel_size=3, activation="gelu",
                skip_period=2)


def shipped_cifar(tmp_path_factory, limit, *layouts, suffix=""):
    """The first ``limit`` shipped CIFAR-10 training images written by
    ../shared/data/prepare_cifar10.py (binary layout, plus ``layouts`` such as
    "--python"); CMXL_DATA_CACHE (+ ``suffix``) names a folder to reuse across sessions."""
    cache = os.environ.get("CMXL_DATA_CACHE")
    out = cache + suffix if cache else str(tmp_path_factory.mktemp(f"cifar10-{limit}"))
    done = "cifar-10-batches-py" if "--python" in layouts else "cifar-10-batches-bin"
    if not os.path.isdir(os.path.join(out, done)):
        script = os.path.join(SHARED_DATA, "prepare_cifar10.py")
        assert os.path.isfile(script), f"shipped data missing: {script}"
        made = run_process([sys.executable, script, out, *layouts, "--limit", str(limit)],
                           timeout=600)
        assert made.returncode == 0, made.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    """The shipped CIFAR-10 training images in all three official on-disk layouts,
    limited to 2,000 images to keep it quick; made once per test session."""
    return shipped_cifar(tmp_path_factory, 2000, "--python", "--folder")


@pytest.fixture(scope="session")
def trained_run(cifar_dir, tmp_path_factory):
    """A real run folder from `cli.py train`: the smoke model, trained a little longer
    (no augmentation, 6 epochs) so its predictions are confident enough for parity checks."""
    run_dir = str(tmp_path_factory.mktemp("trained") / "run")
    result = run_cli("train", "--config", "smoke", "--data-dir", cifar_dir, "--run-dir", run_dir,
                     "--epochs", "6", "--set", "aug=none", "--lr", "0.01")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


# Test files by the time they take (slowest first, as a fresh clone's CI measured them):
# they are handed to the two workers (-n 2 --dist loadfile) in this order, so that the
# longest start first and the workers end together, instead of one running a long file
# alone at the end. Files not named keep their order, after these.
LONGEST_FIRST = ("test_crash.py", "test_export.py", "test_gpu_run.py", "test_distribute.py",
                 "test_train.py", "test_ablation.py", "test_backends.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.path)), len(rank)))


def pytest_terminal_summary(terminalreporter):
    """One line on the bad-input table, when its rows ran (tests/test_bad_inputs.py)."""
    table = sys.modules.get("test_bad_inputs")
    results = getattr(table, "RESULTS", None)
    if results:
        clear = sum(1 for _, ok, _ in results if ok)
        tracebacks = sum(1 for _, _, tb in results if tb)
        terminalreporter.write_line(f"bad inputs: {len(results)} tried, {clear} clear errors, "
                                    f"{tracebacks} tracebacks")
