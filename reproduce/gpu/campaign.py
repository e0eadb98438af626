"""The GPU campaign's queue (``python -m reproduce gpu``'s ``queue`` phase): the jobs that
Table 1 needs, in order, run one after another within a command, each resumed wherever it
stopped.

A job is the reference's own training loop (``python -m reproduce reference-loop``) or
ours (``cli.py --backend jax train``, the augmentation on the device), on one config and seed, always on
the same images and split (the carried training images less the same carved 1,000). Its
state is, by preference, the folder an earlier command left on this machine while it was
still warm (``<work>/jobs/<job>/``: no unpacking, nothing carried), else the committed
``results/gpu/<job>/state.tgz`` (a fresh machine), else nothing (a new run). A finished
job is committed as ``results/gpu/<job>/run.tgz`` holding only what a user needs (the
final ``model.keras``, the records, the TensorBoard logs; no checkpoint) and its small
records beside it, and is never run, packed or carried again.
"""

import dataclasses
import glob
import hashlib
import io
import os
import shutil
import sys
import tarfile
import time

import reproduce
from cmxl_keras.children import read_record
from reproduce import ROOT
from reproduce.gpu import comparison
EXIT_TIME_LIMIT = 7  # cli.py train and reference-loop: stopped before the time limit, saved
EXIT_INTERRUPTED = 130  # cli.py train: stopped by SIGTERM, saved
PART_SIZE = 15 * 2**20  # a file that comes back holds at most 16 MiB
FILES_BACK = 8  # files that come back: the phases' logs, summary.json and the jobs' parts
STATE, FINISHED = "state.tgz", "run.tgz"  # a job's committed archive, unfinished / finished
RECORDS = ("config.toml", "metrics.json", "results.json", "env.json",  # kept unpacked
           "comparison/results.json", "comparison/log.txt", "comparison/machine.json")
# Never packed: copies a resume rebuilds (good.weights.h5 is last's copy), the best
# epoch's model (Table 1 scores the last weights), a dead process's lock.
NEVER = {"good.weights.h5", "best.keras", ".lock", "augmentations.png"}


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    side: str  # "reference" (the reference-loop command), "ours" (cli.py train), "comparison"
    config: str
    seed: int
    gated: bool = False  # run only when named in --jobs
    form: str = ""  # a comparison's training form: "lossless" or "jpeg"


# The order of the campaign: the reference's 100 epochs beside ours first (where do the
# paper's points go), the spread of each, then the other rows. CM-XL's rows are gated:
# at today's speed a CM-XL run does not finish inside one GPU period, and its resumable
# state does not fit in what travels (docs/gpus.md).
QUEUE = (
    Job("reference-1204", "reference", "cm_vanilla", 1204),
    # What the JPEG images cost at the paper's model: its 2 x 2 (docs/fidelity.md).
    Job("jpeg-cost-lossless", "comparison", "cm_vanilla", 0, form="lossless"),
    Job("jpeg-cost-jpeg", "comparison", "cm_vanilla", 0, form="jpeg"),
    Job("cm_vanilla-1204", "ours", "cm_vanilla", 1204),
    Job("cm_vanilla-1205", "ours", "cm_vanilla", 1205),
    Job("reference-1205", "reference", "cm_vanilla", 1205),
    Job("cm_vanilla_noaug-1204", "ours", "cm_vanilla_noaug", 1204),
    Job("cm_vanilla_relu-1204", "ours", "cm_vanilla_relu", 1204),
    Job("cm_vanilla_silu-1204", "ours", "cm_vanilla_silu", 1204),
    Job("cm_xl_noskip-1204", "ours", "cm_xl_noskip", 1204, gated=True),
    Job("cm_xl_skip-1204", "ours", "cm_xl_skip", 1204, gated=True),
    Job("cm_xl-1204", "ours", "cm_xl", 1204, gated=True),
)


def select(names):
    """The jobs to work through, in the queue's order: every ungated one by default
    (``names`` empty), else exactly those named."""
    if not names:
        return [job for job in QUEUE if not job.gated]
    known = {job.name for job in QUEUE}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--jobs {','.join(names)}: no job {', '.join(unknown)} in the "
                         f"queue; the jobs are {', '.join(j.name for j in QUEUE)}.")
    return [job for job in QUEUE if job.name in names]


def run_state(run_dir):
    """Where a run folder stands, for either loop: the epochs finished (metrics.json; the
    reference writes it when it stops), the optimizer step of our checkpoint
    (checkpoints/state.json), finished or not; a comparison's (``comparison.state``)."""
    if os.path.isdir(os.path.join(run_dir, comparison.OUT)):
        return comparison.state(run_dir)

    def read(*path, default=None):
        return read_record(os.path.join(run_dir, *path), default)

    metrics = read("metrics.json", default=[]) or []
    epochs = (read("config.json", default={}) or {}).get("epochs")
    step = (read("checkpoints", "state.json", default={}) or {}).get("step")
    done = metrics[-1]["epoch"] if metrics else 0
    finished = os.path.exists(os.path.join(run_dir, "results.json"))
    saved = (f", checkpoint at optimizer step {step}" if step is not None else
             ", checkpoint after it" if os.path.exists(os.path.join(run_dir, "checkpoint.pt"))
             else ", no checkpoint")
    progress = f"epoch {done} of {epochs} finished" + saved
    return {"progress": "finished" if finished else progress, "epochs_done": done,
            "epochs": epochs, "step": step, "finished": finished,
            "last": metrics[-1] if metrics else None}


def _ahead(state):
    """How far a run folder is, comparable between two folders of one job."""
    return (state["finished"], state["step"] if state["step"] is not None
            else state["epochs_done"])


def pack(run_dir, arcname):
    """The run folder as .tgz bytes: resumable while unfinished, lean once finished. A
    comparison's runs recorded in its results (and its copy of the images) never go."""
    finished = os.path.exists(os.path.join(run_dir, "results.json"))
    recorded = {f"{side}-{seed}" for side, seed in
                comparison.state(run_dir)["runs_done"]} if os.path.isdir(
        os.path.join(run_dir, comparison.OUT)) else set()

    def keep(member):
        base = os.path.basename(member.name)
        parts = member.name.split("/")
        if base in NEVER or ".partial" in member.name or base.endswith(".tmp"):
            return None
        if finished and (base == "checkpoint.pt" or "checkpoints" in parts[1:2]
                         or comparison.RUNS in parts[1:2]):
            return None
        if parts[1:2] == [comparison.RUNS] and len(parts) > 2 and (
                parts[2] in recorded or parts[2].startswith("twins-")):
            return None
        return member

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(run_dir, arcname=arcname, filter=keep)
    return buffer.getvalue(), finished


def file_job(archive_bytes, name, results):
    """Commits one job's archive (from ``pack``) under ``results/<name>/``: ``run.tgz``
    once finished (and its state.tgz goes), else ``state.tgz``; its records beside it."""
    folder = os.path.join(results, name)
    os.makedirs(folder, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive_bytes)) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        finished = f"{name}/results.json" in members
        for record in RECORDS:
            member = members.get(f"{name}/{record}")
            if member is not None:
                os.makedirs(os.path.dirname(os.path.join(folder, record)), exist_ok=True)
                with open(os.path.join(folder, record), "wb") as f:
                    f.write(tar.extractfile(member).read())
    target = os.path.join(folder, FINISHED if finished else STATE)
    with open(target + ".tmp", "wb") as f:
        f.write(archive_bytes)
    os.replace(target + ".tmp", target)
    if finished and os.path.exists(os.path.join(folder, STATE)):
        os.remove(os.path.join(folder, STATE))
    return target, finished


class Queue:
    """Works through ``jobs`` until each is finished or ``until`` (monotonic) comes.

    ``period`` gives the images (``data_dir``), the environment, the child-process runner
    (``child(command, log, until, label)``) and the arguments: ``work``, ``results``,
    ``val_from_train``, ``precision``, ``overrides`` (for every job, before its seed),
    ``ref_workers``, ``min_job_seconds``, ``train_seconds``."""

    def __init__(self, period, jobs):
        self.period, self.args, self.jobs = period, period.args, jobs
        self.states, self.committed = {}, {}

    def run_dir(self, job):
        return os.path.join(self.args.work, "jobs", job.name)

    def prepare(self, job, log):
        """The state this job continues from; returns where it came from."""
        run_dir = self.run_dir(job)
        here = run_state(run_dir) if os.path.isdir(run_dir) else None
        committed = os.path.join(self.args.results, job.name)
        if os.path.exists(os.path.join(committed, FINISHED)):
            return "committed, finished"
        state_file = os.path.join(committed, STATE)
        if os.path.exists(state_file):
            staging = run_dir + ".partial"
            shutil.rmtree(staging, ignore_errors=True)
            with tarfile.open(state_file) as tar:
                tar.extractall(staging, filter="data")
            there = run_state(os.path.join(staging, job.name))
            self.committed[job.name] = _ahead(there)
            if here is None or _ahead(there) > _ahead(here):
                shutil.rmtree(run_dir, ignore_errors=True)
                os.replace(os.path.join(staging, job.name), run_dir)
                shutil.rmtree(staging, ignore_errors=True)
                log.write(f"queue: {job.name}: continuing the committed {state_file} "
                          f"({there['progress']})\n")
                return "committed state"
            shutil.rmtree(staging, ignore_errors=True)
        if here is not None and (here["finished"] or here["epochs_done"] or here["step"]
                                 or os.path.exists(os.path.join(run_dir, "checkpoint.pt"))):
            log.write(f"queue: {job.name}: continuing the folder left on this machine "
                      f"({here['progress']})\n")
            return "left on this machine"
        return "new"

    def to_pack(self):
        """The jobs whose folder here is ahead of what is committed: trained by this
        command, or by an earlier one on this warm machine (packed again in case its
        files did not come back)."""
        ahead = []
        for job in self.jobs:
            state = self.states.get(job.name)
            if state is None or "epochs_done" not in state:
                continue  # not reached, or finished in the repository
            if job.name not in self.committed or _ahead(state) > self.committed[job.name]:
                if state["finished"] or state["epochs_done"] or state["step"] or \
                        os.path.exists(os.path.join(self.run_dir(job), "checkpoint.pt")):
                    ahead.append(job)
        return ahead

    def command(self, job, fresh, seconds):
        if job.side == "comparison":
            return comparison.command(self, job, seconds)
        run_dir, data = self.run_dir(job), self.period.data_dir
        settings = [x for item in self.args.overrides for x in ("--set", item)]
        settings += ["--set", f"seed={job.seed}"]
        if job.side == "reference":
            # reference-loop resumes by itself when the folder holds a run.
            return reproduce.command("reference-loop", "--data-dir", data) + [
                "--run-dir", run_dir, "--config", job.config, "--val-from-train",
                str(self.args.val_from_train), "--workers", str(self.args.ref_workers),
                "--time-limit", f"{seconds:g}"] + settings
        command = [sys.executable, "cli.py", "--backend", "jax", "train"]
        if fresh:
            command += ["--config", job.config, "--data-dir", data, "--val-from-train",
                        str(self.args.val_from_train), "--precision", self.args.precision,
                        "--set", "pipeline=device", "--run-dir", run_dir,
                        "--overwrite"] + settings
        else:  # the saved config stands; the images may lie elsewhere on this machine
            command += ["--resume", run_dir, "--data-dir", data]
        return command + ["--time-limit", f"{seconds:g}"]

    def run(self, log, until):
        """Returns a status line; ``self.states`` holds each job's state afterwards (the
        jobs not reached have none)."""
        done = []
        for job in self.jobs:
            where = self.prepare(job, log)
            if where == "committed, finished":
                self.states[job.name] = {"progress": "finished", "finished": True}
                done.append(f"{job.name} finished ({where})")
                continue
            if job.side == "comparison" and not self.period.lossless:
                done.append(f"{job.name} not started: no lossless images carried "
                            f"(gpu --plan --lossless)")
                continue
            if job.side == "comparison":
                os.makedirs(os.path.join(self.run_dir(job), comparison.OUT), exist_ok=True)
            state = self.states[job.name] = run_state(self.run_dir(job))
            if state["finished"]:
                done.append(f"{job.name} finished ({where})")
                continue
            seconds = until - time.monotonic()
            if seconds < self.args.min_job_seconds:
                done.append(f"{job.name} not started ({seconds:.0f} s left)")
                break
            # The job's own time limit stops it at a step (ours) or an epoch (the
            # reference) and saves; the phase's cap, 20 s later, is the backstop.
            limit = max(seconds - 20, 1)
            if self.args.train_seconds:
                limit = min(limit, self.args.train_seconds)
            fresh = where == "new"
            log.write(f"queue: {job.name} ({job.side}, {job.config}, seed {job.seed}): "
                      f"{'starting' if fresh else 'resuming'} with {limit:.0f} s\n")
            log.flush()
            code = self.period.child(self.command(job, fresh, limit), log, until,
                                     f"job {job.name}")
            if code == 0 and job.side == "comparison":
                comparison.finish(self, job)
            state = self.states[job.name] = run_state(self.run_dir(job))
            if code == 0 and state["finished"]:
                done.append(f"{job.name} finished here")
                continue
            if code not in (EXIT_TIME_LIMIT, None):
                raise QueueFailed("; ".join(done + [f"{job.name} failed (exit {code}): "
                                                    f"see queue.txt"]))
            # Stopped by its time limit, saved; or cut off at the cap, where its last
            # checkpoint stands (every checkpoint is replaced whole, so a kill leaves the
            # one before: ours saves on SIGTERM too, exit 130).
            how = ("stopped and saved" if code == EXIT_TIME_LIMIT else
                   "cut off at the cap and saved" if self.period.stopped == EXIT_INTERRUPTED
                   else "cut off at the cap")
            done.append(f"{job.name} {how}, {state['progress']}")
            break  # its time is up, so the command's is
        return "; ".join(done)


    def pack_into(self, out):
        """Each job ahead of its committed state, packed (``pack``: resumable, or lean once
        finished), in one tar ``jobs.tar`` in ``out`` (in parts past PART_SIZE); returns
        what the summary records of it (None when there is nothing to pack)."""
        jobs = self.to_pack()
        for old in glob.glob(os.path.join(out, "jobs.tar*")):
            os.remove(old)
        if not jobs:
            return None
        target = os.path.join(self.args.work, "jobs.tar")
        packed = {}
        with tarfile.open(target, "w") as tar:
            for job in jobs:
                data, finished = pack(self.run_dir(job), job.name)
                name = f"{job.name}/{FINISHED if finished else STATE}"
                member = tarfile.TarInfo(name)
                member.size, member.mtime = len(data), int(time.time())
                tar.addfile(member, io.BytesIO(data))
                packed[job.name] = {"archive": name, "bytes": len(data)}
        size = os.path.getsize(target)
        parts = max(1, -(-size // PART_SIZE))
        room = FILES_BACK - len(os.listdir(out))
        if parts > room:
            return (f"failed: {size} bytes would need {parts} parts, and {room} more files "
                    f"can come back")
        names = []
        digest = hashlib.sha256()
        with open(target, "rb") as f:
            for i in range(parts):
                name = "jobs.tar" if parts == 1 else f"jobs.tar.{i:02d}"
                chunk = f.read(PART_SIZE)
                digest.update(chunk)
                with open(os.path.join(out, name), "wb") as part:
                    part.write(chunk)
                names.append(name)
        return {"jobs": packed, "parts": names, "bytes": size, "sha256": digest.hexdigest()}


class QueueFailed(Exception):
    pass
