"""The CLI's test processes, forked from one that has already imported the libraries.

A ``python cli.py ...`` spends much of a small test run importing TensorFlow, Keras,
keras-cv and what they pull in (about 6 s of CPU each time on a 2-core machine; a smoke
training of one step took 14 s started fresh and 8.5 s forked, side by side with a
training on the other core). The tests start many of them, so ``conftest.Child`` starts
the CLI's processes through Python's own fork server (``multiprocessing``'s
``forkserver`` context), which imports this module, and with it what the CLI's commands
import, once per test worker, then forks a child per command.

Each child is a real process, with its own pid, killed for real by the tests' signals; it
is given what a fresh ``python cli.py ARGS`` (or ``python -c CODE ARGS``) would have: its
``sys.argv``, its environment (including the defaults that importing ``cmxl_keras`` and
``cli`` set), its working directory, standard streams on files the test reads as they
grow, unbuffered as under ``PYTHONUNBUFFERED``, the fault handler, fresh random states,
and ``atexit`` handlers and a final flush at its end. What it cannot be given is anything
read while importing: the Keras backend (TensorFlow here), TensorFlow's C++ start-up
settings and ``PYTHONHASHSEED``. ``conftest.Child`` therefore forks only when the command
asks for nothing of the kind (``forkable``), and starts a fresh interpreter otherwise;
``CMXL_TEST_FORK=0`` starts a fresh interpreter for every command (but the harness's own
tests, tests/test_forked.py, which compare the two).
"""

import os
import signal
import subprocess
import sys
import threading
import time

START_ENVIRON = dict(os.environ)  # as the fork server was started

# What the server imports (Keras on the TensorFlow backend: see forkable): what the CLI's
# commands import, and with them keras-cv, tensorflow-datasets, JAX, ...
PRELOAD = ("keras", "tensorflow", "cli", "cmxl_keras.augment", "cmxl_keras.evaluate",
           "cmxl_keras.export", "cmxl_keras.pipeline", "cmxl_keras.train")

if os.environ.get("CMXL_FORK_SERVER") == "1":  # only in the server: the parent needs none
    import importlib

    for _name in PRELOAD:
        importlib.import_module(_name)

# A fresh interpreter's sys.path after its first entry and $PYTHONPATH's (the parent's,
# which multiprocessing gives the child, holds the tests' own folders too).
_PYTHONPATH = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
               if p]
BASE_PATH = [p for p in sys.path[1:] if p and os.path.abspath(p) not in _PYTHONPATH]

# What the imports above set in the environment (cmxl_keras's TF_CPU_ALLOCATOR_USE_BFC,
# TensorFlow's TF2_BEHAVIOR, ...): a fresh CLI process's imports set them too. A value
# the command is given wins, as with cmxl_keras's setdefault.
IMPORT_DEFAULTS = {key: value for key, value in os.environ.items()
                   if START_ENVIRON.get(key) != value}

# Read at run time, after the imports: a child may be given any value of these.
RUNTIME_ENV = {"WRITE_LOG", "RUN_DIR", "KILL_AT", "TF_CONFIG", "CMXL_CPU_DEVICES", "TMPDIR",
               "PYTHONPATH", "CMXL_OFFLINE", "PYTHONFAULTHANDLER", "PYTHONUNBUFFERED",
               "PYTEST_CURRENT_TEST", "TF_CPU_ALLOCATOR_USE_BFC"}


def forkable(command, env, server_env):
    """Whether ``command`` (an argv list) with environment ``env`` may be forked from a
    server started with ``server_env``: this Python running the CLI (``cli.py ARGS``, or
    ``-c CODE ARGS`` where CODE ends by running it, as the crash tests' harnesses do) on
    the TensorFlow backend, its environment the server's but for variables read at run
    time. Other code, which may test what is imported, starts fresh."""
    args = [str(a) for a in command[1:]]
    if str(command[0]) != sys.executable or not args:
        return False
    if not (os.path.basename(args[0]) == "cli.py"
            or (args[0] == "-c" and args[1:2] and args[1].rstrip().endswith("cli.main()"))):
        return False
    if "--backend" in args and args[args.index("--backend") + 1:][:1] != ["tensorflow"]:
        return False
    if env.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return False
    differ = {key for key in set(env) | set(server_env) if env.get(key) != server_env.get(key)}
    return differ <= RUNTIME_ENV


def _stream(fd, path, errors):
    import io

    handle = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.dup2(handle, fd)
    os.close(handle)
    # As under PYTHONUNBUFFERED: the text layer writes through to the unbuffered file.
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                            errors=errors, write_through=True)


def main(command, env, cwd, out_path, err_path):
    """The child: runs ``command`` (``[python, script, *args]`` or ``[python, "-c", code,
    *args]``) as a fresh interpreter would, then exits with its code."""
    import atexit
    import faulthandler
    import runpy
    import tempfile
    import traceback

    import numpy as np

    sys.stdout = sys.__stdout__ = _stream(1, out_path, "strict")
    sys.stderr = sys.__stderr__ = _stream(2, err_path, "backslashreplace")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.environ.clear()
    os.environ.update({**IMPORT_DEFAULTS, **env})
    os.chdir(cwd)
    tempfile.tempdir = None  # TMPDIR is read again
    np.random.seed()  # Python's own generators reseed at a fork; NumPy's global one does not
    if env.get("PYTHONFAULTHANDLER"):
        faulthandler.enable()
    first = "" if command[1] == "-c" else os.path.dirname(os.path.abspath(command[1]))
    sys.path[:] = [first, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p],
                   *BASE_PATH]
    code = 0
    try:
        if command[1] == "-c":
            sys.argv = ["-c", *command[3:]]
            exec(compile(command[2], "<string>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = command[1:]
            runpy.run_path(command[1], run_name="__main__")
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:  # as the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        atexit._run_exitfuncs()  # a fresh interpreter runs them at its end; os._exit does not
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)


# The parent's side.

ENVIRON = threading.RLock()  # held while os.environ is read for a child or changed
_MULTIPROCESSING = threading.Lock()  # one thread at a time reads a child's exit code
_SERVER = {}


def server_env(tests_dir):
    """The environment the fork server was started with (started on the first call), or
    None where the tests run on another Keras backend."""
    with ENVIRON:
        if "env" not in _SERVER:
            env = dict(os.environ, PYTHONFAULTHANDLER="1", PYTHONUNBUFFERED="1")
            off = env.get("KERAS_BACKEND", "tensorflow") != "tensorflow"
            _SERVER["env"] = None if off else env
            if not off:
                import multiprocessing
                import multiprocessing.forkserver

                _SERVER["context"] = multiprocessing.get_context("forkserver")
                _SERVER["context"].set_forkserver_preload(["forked"])
                root = os.path.dirname(os.path.abspath(tests_dir))
                saved = dict(os.environ)
                os.environ.update(env, CMXL_FORK_SERVER="1",
                                  PYTHONPATH=os.pathsep.join([root, tests_dir]))
                try:
                    multiprocessing.forkserver.ensure_running()
                finally:
                    os.environ.clear()
                    os.environ.update(saved)
        return _SERVER["env"]


class Forked:
    """A forked child, with the part of ``subprocess.Popen``'s interface that
    ``conftest.Child`` uses; its output goes to two files that ``tail`` reads as they grow."""

    def __init__(self, command, env, cwd):
        import tempfile

        self.args, self._folder = command, tempfile.mkdtemp(prefix="cmxl-forked-")
        self.out_path, self.err_path = (os.path.join(self._folder, name)
                                        for name in ("stdout", "stderr"))
        for path in (self.out_path, self.err_path):
            open(path, "w").close()
        self._done, self._code = threading.Event(), None
        self.process = _SERVER["context"].Process(
            target=main, args=(command, env, cwd, self.out_path, self.err_path), daemon=True)
        with _MULTIPROCESSING:  # start() polls the other children (multiprocessing's cleanup)
            self.process.start()
        self.pid = self.process.pid
        threading.Thread(target=self._wait_for_exit, daemon=True).start()

    def _wait_for_exit(self):
        from multiprocessing.connection import wait

        wait([self.process.sentinel])  # readable at the exit; read under the lock below
        with _MULTIPROCESSING:
            self._code = self.process.exitcode
        self._done.set()

    @property
    def returncode(self):
        return self._code

    def poll(self):
        return self._code

    def wait(self, timeout=None):
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._code

    def send_signal(self, sig):
        if not self._done.is_set():
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def tail(self, path):
        """The lines of ``path`` as the child writes them, to the last after its exit."""
        with open(path, errors="replace") as stream:
            partial = ""
            while True:
                ended = self._done.is_set()
                partial += stream.readline()
                if partial.endswith("\n"):
                    yield partial
                    partial = ""
                elif ended:
                    break
                else:
                    time.sleep(0.05)
            if partial:
                yield partial
        os.remove(path)
        try:
            os.rmdir(self._folder)  # by the second of the two tails
        except OSError:
            pass
