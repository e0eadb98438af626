"""``python -m reproduce gpu``'s work here, before and after a GPU period: filling the carry folder
(``--plan``), counting what travels, part by part, and filing what came back
(``--collect``)."""

import glob
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

from cmxl_keras.children import read_record
from reproduce import ROOT, equivalence_report, table1
from reproduce.gpu import campaign
# What the GPU host lacks (keras 3.15.1 as requirements.txt pins it; optree and namex, its
# dependencies, as the test environment resolves them).
WHEELS = ("keras==3.15.1", "optree==0.20.0", "namex==0.1.0")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
TRANSFER_LIMIT_MIB = 64  # what travels to the GPU host: the repository and the carry
# The code that the smoke step and the bench measure (the compiled training step: the
# model, its optimizer and schedule, the device augmentation; the bench itself and the
# reference): they run again when it changes, and not for changes elsewhere.
BENCHED_CODE = tuple(f"cmxl_keras/{m}.py" for m in (
    "architecture", "models", "recipe", "optimizers", "schedules", "augment", "transforms",
    "crop", "erasing", "jitter", "randaugment", "pil")) + (
    "bench/bench_train.py", "bench/bench_forms.py", "reproduce/ref_torch.py",
    "reproduce/gpu/probe.py")
BENCH_RECORD = "bench.json"  # under --results: the code the last filed bench measured


def code_digest():
    digest = hashlib.sha256()
    for pattern in BENCHED_CODE:
        for path in sorted(glob.glob(os.path.join(ROOT, pattern))):
            digest.update(os.path.relpath(path, ROOT).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]


def plan(args):
    wheels = os.path.join(args.carry, "wheels")
    data = os.path.join(args.carry, "data")
    if args.data and not os.path.exists(args.data):
        sys.exit(f"gpu --plan: --data {args.data!r} does not exist. Give the training "
                 f"images: a .tar.gz of train/<class>/* images, an official CIFAR-10 "
                 f"archive, or a folder holding train/<class>/.")
    if args.data and os.path.isdir(args.data) and not os.path.isdir(
            os.path.join(args.data, "train")):
        sys.exit(f"gpu --plan: --data {args.data!r} has no train/ folder; give the "
                 f"folder that holds train/<class>/ images.")
    if not args.data and not (os.path.isdir(data) and os.listdir(data)):
        sys.exit("gpu --plan: the carry folder holds no training images yet: pass --data "
                 "(a .tar.gz of train/<class>/* images, an official CIFAR-10 archive, or a "
                 "folder holding train/<class>/).")
    os.makedirs(wheels, exist_ok=True)
    os.makedirs(data, exist_ok=True)
    tag = args.python_version.replace(".", "")
    for spec in WHEELS:
        name, version = spec.split("==")
        have = [w for w in glob.glob(os.path.join(wheels, f"{name}-{version}-*.whl"))
                if "-none-any" in w or f"cp{tag}" in w]
        if have:
            continue
        for stale in glob.glob(os.path.join(wheels, f"{name}-*.whl")):
            os.remove(stale)  # one version of each: two stop the install
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--only-binary=:all:", "--python-version", args.python_version,
                   "--implementation", "cp", "-d", wheels, spec]
        command += [x for platform in PLATFORMS for x in ("--platform", platform)]
        print(f"plan: downloading {spec} for Python {args.python_version}", flush=True)
        out = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if out.returncode:
            sys.exit(f"gpu --plan: pip could not download {spec} for Python "
                     f"{args.python_version} on x86-64 Linux:\n{out.stderr[-2000:]}")
    if args.data:
        for old in os.listdir(data):
            os.remove(os.path.join(data, old))
        if os.path.isdir(args.data):
            with tarfile.open(os.path.join(data, "images.tar.gz"), "w:gz") as tar:
                tar.add(os.path.join(args.data, "train"), arcname="train")
        else:
            shutil.copyfile(args.data, os.path.join(data, os.path.basename(args.data)))
    carry_forms(args)
    parts = transfer_parts(args.carry, args.results)
    total = sum(parts.values())
    limit = args.transfer_limit * 2**20
    print("plan: what travels, part by part (MiB):")
    for part, size in parts.items():
        print(f"  {size / 2**20:7.1f}  {part}")
    print(f"  {total / 2**20:7.1f}  in all, of {args.transfer_limit:g} MiB")
    if total > limit:
        sys.exit(f"gpu --plan: {total / 2**20:.1f} MiB would travel, over the "
                 f"{args.transfer_limit:g} MiB limit (parts above). Finish or drop a running "
                 f"job's state, carry smaller images (JPEG, as a .tar.gz of "
                 f"train/<class>/), or remove large untracked files.")
    for job in campaign.QUEUE:
        folder = os.path.join(args.results, job.name)
        if os.path.exists(os.path.join(folder, campaign.FINISHED)):
            print(f"plan: {job.name}: finished")
        elif os.path.exists(os.path.join(folder, campaign.STATE)):
            print(f"plan: {job.name}: resumes its committed state "
                  f"({describe(os.path.join(folder, campaign.STATE))})")
    benched = read_record(os.path.join(args.results, BENCH_RECORD)) or {}
    print("plan: the smoke step and the bench " + (
        "are skipped: the code they measure is the code of the filed bench"
        if benched.get("code") == code_digest() else
        "run: the code they measure changed since the filed bench"))
    print("plan: run from the repository root, carrying the folder above:\n"
          f"  command:  python3 -m reproduce gpu    (OUT set to the output folder)\n"
          f"  carry:    {args.carry}   (a second command on the still-warm machine needs "
          f"none)\n"
          f"  timeout:  600 s (the command stops itself after --budget {args.budget:g} s)\n"
          f"then: python -m reproduce gpu --collect <the returned files' folder>, and "
          f"commit {args.results}/")


def carry_forms(args):
    """The lossless images for the comparison jobs (``--lossless``) into ``forms/`` of the
    carry folder while one of them is unfinished; once both are, ``forms/`` is emptied
    (10.8 MiB that no job needs any more)."""
    forms = os.path.join(args.carry, "forms")
    jobs = [job for job in campaign.QUEUE if job.side == "comparison"]
    if all(os.path.exists(os.path.join(args.results, job.name, campaign.FINISHED))
           for job in jobs):
        shutil.rmtree(forms, ignore_errors=True)
        print("plan: the comparison jobs are finished: no lossless images carried")
        return
    if args.lossless:
        if not os.path.isfile(args.lossless):
            sys.exit(f"gpu --plan: --lossless {args.lossless!r} is not a file. Give the "
                     f"lossless images as a .tar.gz of train/<class>/*.png, named as their "
                     f"JPEG twins in --data.")
        shutil.rmtree(forms, ignore_errors=True)
        os.makedirs(forms)
        shutil.copyfile(args.lossless, os.path.join(forms, "lossless.tar.gz"))
    if not os.path.isdir(forms) or not os.listdir(forms):
        print("plan: no lossless images carried (--lossless): the comparison jobs "
              f"({', '.join(j.name for j in jobs)}) will not start")


def transfer_parts(carry, results):
    """Bytes that travel, by part: the repository's files (tracked, and untracked but not
    ignored) by what they are, and each folder of the carry folder."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, text=True,
                            timeout=60, check=True).stdout.split("\0")
    carry_abs = os.path.abspath(carry) + os.sep
    results_abs = os.path.abspath(results) + os.sep
    parts = {"repository: running jobs' state (results/gpu/*/state.tgz)": 0,
             "repository: finished runs (results/gpu/*/run.tgz)": 0,
             "repository: the shipped model (exported/)": 0,
             "repository: everything else": 0}
    names = list(parts)
    for path in set(listed):
        if not path or not os.path.isfile(path):
            continue
        full = os.path.abspath(path)
        if full.startswith(carry_abs):
            continue
        size = os.path.getsize(path)
        if full.startswith(results_abs) and path.endswith(campaign.STATE):
            parts[names[0]] += size
        elif full.startswith(results_abs) and path.endswith(campaign.FINISHED):
            parts[names[1]] += size
        elif path.startswith("exported/"):
            parts[names[2]] += size
        else:
            parts[names[3]] += size
    for entry in sorted(os.listdir(carry)) if os.path.isdir(carry) else []:
        size = 0
        for folder, _, files in os.walk(os.path.join(carry, entry)):
            size += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
        parts[f"carry: {entry}/"] = size
    return parts


def describe(path):
    """Where a committed job archive stands (``run_state``'s progress)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        try:
            with tarfile.open(path) as tar:
                tar.extractall(folder, filter=lambda m, _: m if m.name.endswith(".json")
                               else None)
        except (OSError, tarfile.TarError) as error:
            return f"unreadable: {error}"
        runs = os.listdir(folder)
        return campaign.run_state(os.path.join(folder, runs[0]))["progress"] if runs \
            else "empty"


def collect(args, phases):
    back = args.collect
    summary = read_record(os.path.join(back, "summary.json"))
    if summary is None:
        sys.exit(f"gpu --collect: {back!r} has no readable summary.json; give the folder "
                 f"the period's files came back to.")
    stamp = summary.get("started", time.strftime("%Y-%m-%d %H:%M:%S")).replace(" ", "_")
    period = os.path.join(args.results, "periods", stamp.replace(":", "")[:17])
    os.makedirs(period, exist_ok=True)
    for name in ("summary.json",) + tuple(f"{p}.txt" for p in phases):
        if os.path.exists(os.path.join(back, name)):
            shutil.copyfile(os.path.join(back, name), os.path.join(period, name))
    if "equivalence" in summary:  # python -m reproduce compare's files, from summary.json
        folder = os.path.join(period, "equivalence")
        os.makedirs(folder, exist_ok=True)
        for name, data in summary["equivalence"].items():
            with open(os.path.join(folder, f"{name}.json"), "w") as f:
                json.dump(data, f, indent=1)
        if os.path.exists(os.path.join(back, "equivalence.txt")):
            shutil.copyfile(os.path.join(back, "equivalence.txt"),
                            os.path.join(folder, "log.txt"))
        equivalence_report.redraw(folder)
    if summary.get("profile"):  # bench/bench_profile.py's JSON, from summary.json
        with open(os.path.join(period, "profile.json"), "w") as f:
            json.dump(summary["profile"], f, indent=1)
    bench = summary.get("phases", {}).get("bench", {})
    if bench.get("status", "").startswith("ok") and summary.get("bench_code"):
        with open(os.path.join(args.results, BENCH_RECORD), "w") as f:
            json.dump({"code": summary["bench_code"], "period": os.path.basename(period)}, f)
    pack = summary.get("pack")
    if isinstance(pack, dict):
        missing = [p for p in pack["parts"] if not os.path.isfile(os.path.join(back, p))]
        if missing:
            sys.exit(f"gpu --collect: {back!r} lacks {', '.join(missing)} of the jobs' "
                     f"archive (a file that did not come back); nothing was filed. The jobs "
                     f"resume from their committed state next time.")
        joined = io.BytesIO()
        for part in pack["parts"]:
            with open(os.path.join(back, part), "rb") as f:
                joined.write(f.read())
        if hashlib.sha256(joined.getvalue()).hexdigest() != pack["sha256"]:
            sys.exit(f"gpu --collect: the parts of the jobs' archive in {back!r} do not "
                     f"add up to it (sha256 differs); nothing was filed.")
        joined.seek(0)
        with tarfile.open(fileobj=joined) as jobs:
            known = {job.name for job in campaign.QUEUE}
            for member in jobs.getmembers():
                name = member.name.split("/")[0]
                if name not in known or not member.isfile():
                    sys.exit(f"gpu --collect: the jobs' archive holds {member.name!r}, "
                             f"no job of the queue; nothing more was filed.")
                target, _ = campaign.file_job(jobs.extractfile(member).read(), name,
                                               args.results)
                print(f"collect: {target} ({describe(target)})")
    # The Table-1 page, from the committed runs (``table1``; commit it with them):
    # docs/table1.md for the repository's results/gpu, else beside the results given.
    committed = os.path.abspath(args.results) == os.path.join(ROOT, "results", "gpu")
    page = (os.path.join(ROOT, "docs", "table1.md") if committed
            else os.path.join(args.results, "table1.md"))
    table1.main(args.results, page)
    print(f"collect: the period's logs are in {period}/")
    for phase, result in summary.get("phases", {}).items():
        print(f"  {phase}: {result['status']} ({result['seconds']} s)")
