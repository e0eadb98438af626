"""``python -m reproduce gpu``'s work there: the phases of one command on the GPU host, each
with its own time cap and its own file in ``OUT``, against one deadline."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import traceback

import reproduce
from cmxl_keras.children import read_record
from reproduce.gpu import campaign, carry
from reproduce.gpu.probe import PROBE

PHASES = ("setup", "smoke", "bench", "profile", "variants", "queue", "equivalence")
AUTO = ("setup", "smoke", "bench", "queue")  # smoke and bench only when the code changed
# Each phase's cap in seconds; the queue and the equivalence runs take what is left.
CAPS = {"setup": 120, "smoke": 150, "bench": 300, "profile": 150, "variants": 240}
# The bench's forms: ours with the device augmentation, fed from the host, and from
# device arrays (the model-only figure beside the reference's GPU tensors); the reference
# as the paper runs it, tuned (torch.compile, channels_last, ...), and fed by its loader.
BENCH_FORMS = ("keras-jax-aug", "keras-jax", "keras-jax-device", "torch", "torch-tuned",
               "torch-loader")
# The bench's time by model: CM-XL's 66 layers take longer to compile and to step.
BENCH_SHARE = {"vanilla": 2, "xl": 3}
PACK_MARGIN = 30  # seconds kept after the queue to pack the jobs and exit


class PhaseFailed(Exception):
    pass


class Period:
    """The phases of one command on the GPU host, against one deadline."""

    def __init__(self, args):
        self.args = args
        self.start = time.monotonic()
        self.deadline = self.start + args.budget
        self.out = args.out
        os.makedirs(self.out, exist_ok=True)
        os.makedirs(args.work, exist_ok=True)
        self.site = os.path.abspath(os.path.join(args.work, "site"))
        self.summary = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "phases": {},
                        "budget_seconds": args.budget}
        self.env = dict(os.environ, KERAS_BACKEND="jax", PYTHONUNBUFFERED="1",
                        TF_CPP_MIN_LOG_LEVEL="3")
        self.data_dir = self.lossless = None
        self.queue = None
        self.stopped = None

    def left(self):
        return self.deadline - time.monotonic()

    def wanted(self):
        """The phases to run, and why each other one is skipped."""
        if self.args.phases != "auto":
            return self.args.phases.split(","), "not asked for"
        code = self.summary["bench_code"]
        filed = read_record(os.path.join(self.args.results, carry.BENCH_RECORD))
        here = read_record(os.path.join(self.args.work, carry.BENCH_RECORD))
        if code in ((filed or {}).get("code"), (here or {}).get("code")):
            # this code's bench is filed, or ran on this machine already
            return ["setup", "queue"], "not asked for, and the code it measures was measured"
        return list(AUTO), "not asked for"

    def run(self):
        self.summary["bench_code"] = carry.code_digest()
        wanted, why = self.wanted()
        for phase in PHASES:
            if phase not in wanted:
                self.record(phase, f"skipped ({why})", 0)
                continue
            if phase in ("queue", "equivalence"):  # these take what is left
                cap = self.left() - PACK_MARGIN
            else:
                cap = min(CAPS[phase], self.left() - PACK_MARGIN)
            if cap <= 5:
                self.record(phase, "skipped (no time left)", 0)
                continue
            began = time.monotonic()
            with open(os.path.join(self.out, f"{phase}.txt"), "a") as log:
                try:
                    status = getattr(self, f"phase_{phase}")(log, began + cap)
                except (PhaseFailed, campaign.QueueFailed) as error:
                    status = f"failed: {error}"
                    log.write(f"\n{phase}: {status}\n")
                except Exception as error:  # a fault of this script: the next phases still run
                    status = f"failed: {type(error).__name__}: {error}"
                    log.write(f"\n{phase}: {status}\n{traceback.format_exc()}")
            self.record(phase, status, time.monotonic() - began)
            if phase == "setup" and not status.startswith("ok"):
                break  # nothing after it can run
        if self.queue is not None:
            self.summary["jobs"] = self.queue.states
            try:
                packed = self.queue.pack_into(self.out)
                if packed is not None:
                    self.summary["pack"] = packed
            except (OSError, tarfile.TarError) as error:
                self.summary["pack"] = f"failed: {type(error).__name__}: {error}"
        self.summary["seconds"] = round(time.monotonic() - self.start, 1)
        self.write_summary()
        print(json.dumps(self.summary, indent=2))
        failed = [p for p, r in self.summary["phases"].items() if r["status"].startswith("failed")]
        return 1 if failed or str(self.summary.get("pack", "")).startswith("failed") else 0

    def record(self, phase, status, seconds):
        self.summary["phases"][phase] = {"status": status, "seconds": round(seconds, 1)}
        print(f"gpu: {phase}: {status} ({seconds:.0f} s)", flush=True)
        self.write_summary()

    def write_summary(self):
        path = os.path.join(self.out, "summary.json")
        with open(path + ".tmp", "w") as f:
            json.dump(self.summary, f, indent=2)
        os.replace(path + ".tmp", path)

    def child(self, command, log, until, label, shown=None):
        """Runs ``command`` with its output streamed into ``log`` (under the name ``shown``,
        if given); past ``until`` it is sent SIGTERM (saving what it can), then SIGKILL 20 s
        later. Returns its exit code, or None if it had to be stopped (``self.stopped``
        then holds the exit code it ended with, which says whether it saved)."""
        log.write(f"$ {shown or ' '.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)
        self.stopped = None
        try:
            return proc.wait(timeout=max(1.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        log.write(f"\ngpu: {label} ran past its time cap; stopping it (SIGTERM)\n")
        log.flush()
        for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.stopped = proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        return None

    # -- phases: each returns a status line ("ok ...") or raises PhaseFailed

    def phase_setup(self, log, until):
        reused = []
        wheels = sorted(glob.glob(os.path.join(self.args.carry, "wheels", "*.whl")))
        stamp = os.path.join(self.site, ".installed")
        installed = open(stamp).read().split() if os.path.exists(stamp) else None
        if wheels and installed != [os.path.basename(w) for w in wheels]:
            shutil.rmtree(self.site, ignore_errors=True)
            code = self.child([sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
                               "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
                               "--target", self.site] + wheels, log, until, "pip install")
            if code != 0:
                raise PhaseFailed(f"installing the carried wheels failed (exit {code})")
            with open(stamp, "w") as f:
                f.write("\n".join(os.path.basename(w) for w in wheels))
        elif installed is not None:
            reused.append("wheels installed")
            log.write(f"setup: the wheels installed on this machine: {' '.join(installed)}\n")
        if os.path.exists(stamp):
            self.env["PYTHONPATH"] = os.pathsep.join(
                [self.site] + [p for p in [self.env.get("PYTHONPATH")] if p])
        self.data_dir, unpacked = self.unpack_data()
        if not unpacked:
            reused.append("images unpacked")
        log.write(f"data: {self.data_dir}\n")
        self.lossless = self.keep_forms()
        log.write(f"lossless images (comparison jobs): {self.lossless or 'none carried'}\n")
        machine = os.path.join(self.args.work, "machine.json")
        if len(reused) == 2 and os.path.exists(machine):
            self.summary["machine"] = read_record(machine)
            log.write("setup: a warm machine: the versions probed by its first command\n")
            gpu = self.summary["machine"].get("gpu") or "no GPU"
            return f"ok (warm: {', '.join(reused)}; {gpu})"
        if shutil.which("nvidia-smi"):
            self.child(["nvidia-smi"], log, min(until, time.monotonic() + 30), "nvidia-smi")
        code = self.child([sys.executable, "-c", PROBE], log, until, "the version probe",
                          shown="python3 -c <print the versions, devices and memory>")
        if code != 0:
            raise PhaseFailed(f"the version probe failed (exit {code}): see setup.txt")
        log.flush()
        with open(log.name) as f:
            line = [l for l in f if l.startswith("VERSIONS ")][-1]
        self.summary["machine"] = json.loads(line[len("VERSIONS "):])
        with open(machine, "w") as f:
            json.dump(self.summary["machine"], f)
        return f"ok ({self.summary['machine'].get('gpu') or 'no GPU'})"

    def keep_forms(self):
        """The carried lossless images (``--plan --lossless``), copied into the work folder
        so that a later command on this warm machine has them without carrying; None
        where none were ever carried."""
        kept = os.path.join(self.args.work, "forms", "lossless.tar.gz")
        carried = sorted(glob.glob(os.path.join(self.args.carry, "forms", "*")))
        if carried:
            os.makedirs(os.path.dirname(kept), exist_ok=True)
            shutil.copyfile(carried[0], kept + ".partial")
            os.replace(kept + ".partial", kept)
        return os.path.abspath(kept) if os.path.exists(kept) else None

    def unpack_data(self):
        """The images' folder (or archive), and whether this command unpacked them."""
        target = os.path.join(self.args.work, "data")
        carried = sorted(glob.glob(os.path.join(self.args.carry, "data", "*")))
        if not carried:
            if os.path.isdir(os.path.join(target, "train")):
                return target, False  # a warm machine, nothing carried this time
            raise PhaseFailed(f"no training images in {self.args.carry}/data/: run "
                              f"'python -m reproduce gpu --plan --data ...' first")
        source = carried[0]
        if os.path.isdir(source):
            return source, False
        if os.path.isdir(os.path.join(target, "train")):
            return target, False
        try:
            with tarfile.open(source) as tar:
                members = tar.getmembers()
                if any(m.name.split("/")[0].startswith("cifar-10-batches") for m in members):
                    return source, False  # an official archive: cli.py reads it as it is
                shutil.rmtree(target + ".partial", ignore_errors=True)
                tar.extractall(target + ".partial", filter="data")
                os.replace(target + ".partial", target)
        except (OSError, tarfile.TarError) as error:
            raise PhaseFailed(f"cannot unpack {source}: {error}") from None
        if not os.path.isdir(os.path.join(target, "train")):
            raise PhaseFailed(f"{source} holds no train/ folder of class folders")
        return target, True

    def phase_smoke(self, log, until):
        command = reproduce.command("gpu", "--smoke-step") + [
            "--precision", self.args.precision, "--arch", self.args.arch]
        code = self.child(command, log, until, "the smoke step")
        if code != 0:
            raise PhaseFailed("the smoke step " + ("ran past its cap" if code is None
                                                   else f"failed (exit {code})"))
        log.flush()
        with open(log.name) as f:
            line = [l for l in f if l.startswith("SMOKE ")][-1]
        return "ok " + line[len("SMOKE "):].strip()

    def phase_bench(self, log, until):
        models = [m for m in self.args.bench_models.split(",") if m]
        done = []
        for i, model in enumerate(models):
            weights = [BENCH_SHARE.get(m, 1) for m in models[i:]]
            share = (until - time.monotonic()) * weights[0] / sum(weights)
            command = [sys.executable, os.path.join("bench", "bench_train.py"),
                       "--frameworks", ",".join(BENCH_FORMS),
                       "--models", model, "--repeats", "1", "--infer-batch-sizes", "128",
                       "--precision", self.args.precision, "--timeout", f"{max(share, 1):.0f}"]
            if self.args.arch:
                command += ["--arch", self.args.arch]
            command += self.args.bench_args.split()
            if "--batch" in command:  # a rehearsal's smaller batch: infer at it
                command[command.index("--infer-batch-sizes") + 1] = \
                    command[command.index("--batch") + 1]
            code = self.child(command, log, time.monotonic() + share, f"bench {model}")
            done.append(f"{model} " + ("ok" if code == 0 else "cut off" if code is None
                                        else f"failed (exit {code})"))
        if not any(d.endswith(" ok") for d in done):
            raise PhaseFailed("; ".join(done))
        with open(os.path.join(self.args.work, carry.BENCH_RECORD), "w") as f:
            json.dump({"code": self.summary["bench_code"]}, f)
        return "ok: " + "; ".join(done)

    def phase_profile(self, log, until):  # only when asked: bench_profile.py
        # Its JSON travels inside summary.json (few files come back); --collect writes it.
        path = os.path.join(self.args.work, "profile.json")
        if os.path.exists(path):
            os.remove(path)
        command = [sys.executable, os.path.join("bench", "bench_profile.py"), "--json", path,
                   "--precision", self.args.precision] + self.args.profile_args.split()
        code = self.child(command, log, until, "the profile")
        if code != 0:
            raise PhaseFailed("the profile " + ("ran past its cap" if code is None
                                                else f"failed (exit {code})"))
        profile = read_record(path)
        if profile is None:
            raise PhaseFailed(f"the profile wrote no readable {path}: see profile.txt")
        self.summary["profile"] = profile
        top = max(profile["parts"].items(), key=lambda kv: kv[1])
        return (f"ok: {profile['kernel_ms_per_step']:.2f} ms of kernels a step, "
                f"{top[0]} {top[1] * 100:.0f} %: see profile.txt")

    def phase_variants(self, log, until):  # only when asked: bench_variants.py
        command = [sys.executable, os.path.join("bench", "bench_variants.py"),
                   "--timeout", f"{max((until - time.monotonic()) / 6, 10):.0f}"]
        code = self.child(command + self.args.variants_args.split(), log, until, "variants")
        if code != 0:
            raise PhaseFailed("the variants bench " + ("ran past its cap" if code is None
                                                       else f"failed (exit {code})"))
        return "ok: see variants.txt"

    def phase_queue(self, log, until):
        if self.data_dir is None:
            raise PhaseFailed("setup did not run, so there are no images")
        jobs = campaign.select([j for j in self.args.jobs.split(",") if j])
        self.queue = campaign.Queue(self, jobs)
        return "ok: " + self.queue.run(log, until)

    def phase_equivalence(self, log, until):
        if self.data_dir is None:
            raise PhaseFailed("setup did not run, so there are no images")
        # Its files travel inside summary.json (few files come back); --collect writes them.
        out = os.path.join(self.args.work, "equivalence-out")
        shutil.rmtree(out, ignore_errors=True)
        command = reproduce.command("compare", "--data-dir", self.data_dir) + [
            "--backend", "jax", "--device", "auto", "--out", out,
            "--work", os.path.join(self.args.work, "equivalence"),
            "--timeout", f"{max(until - time.monotonic(), 1):.0f}"]
        command += self.args.equivalence_args.split()
        code = self.child(command, log, until, "the equivalence runs")
        results = read_record(os.path.join(out, "results.json"))
        if results is None:
            raise PhaseFailed("no run finished " + ("before the phase's cap" if code is None
                                                     else f"(exit {code}): see equivalence.txt"))
        self.summary["equivalence"] = {
            "results": results, "machine": read_record(os.path.join(out, "machine.json"))}
        done = {side: len(runs) for side, runs in results["runs"].items()}
        status = ", ".join(f"{n} {side}" for side, n in done.items()) + " runs"
        if code == 0:
            return f"ok: {status}"
        return f"ok: cut off with {status} finished" if code is None else \
            f"failed (exit {code}) after {status}: see equivalence.txt"
