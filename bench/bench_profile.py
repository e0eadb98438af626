#!/usr/bin/env python3
"""Where our training step's time goes: a profile of the compiled step under JAX, each
kernel attributed to the part of the recipe it computes.

    python bench/bench_profile.py [--model xl] [--batch 128] [--steps 20]
        [--precision mixed_float16] [--arch KEY=V,...] [--top 25] [--json FILE]

Runs the step ``cli.py train`` runs on a GPU (the paper's augmentation as Keras layers in
the compiled step, ``bench_forms.KerasDevice``: the batch already on the device), compiles
it, then records ``--steps`` steps with JAX's profiler. Each kernel of the trace (on a GPU
the device's own kernels; on a CPU the XLA runtime's) is matched by its HLO instruction to
the optimized ``train_step`` module, dumped by XLA, whose metadata names the Keras layer and
whether it is the forward pass (``jvp``), the backward pass (``transpose``) or the update.
XLA drops the metadata of some convolutions it rewrites, the weight gradients of grouped
convolutions among them: those are counted as "unnamed convolution" (backward), and their
output type (e.g. ``f32[64,5,5,64]``, a 5x5 depthwise kernel's gradient) is listed.

On a GPU, device kernels that match no instruction of the module (a library's own, if
the trace names them so) are summed apart, with the largest named.

Printed: the top kernels by time per step; the step's kernel time by part (augmentation,
depthwise and pointwise convolution, the stem, BatchNorm, activation, head, loss, optimizer,
other) and by pass; the wall time per step beside the kernels' sum. The last lines are
machine-readable (``profile_share_<part>=``); ``--json`` writes it all.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import bench_train  # noqa: E402  (its models and step arguments; imports no Keras)

# A kernel's part, by the first pattern its HLO metadata (op_name) matches: our layers'
# names (models.py: stem_conv, layer_N_depthwise[_bn|_act], ..., head_logits; augment.py:
# aug_<stage>), the optimizer (TorchAdamW, loss scaling) and the compiled loss.
PARTS = (("augmentation", r"aug_"), ("optimizer", r"adam|loss_scale|optimizer"),
         ("batchnorm", r"_bn\b|_bn/|batch_norm"), ("activation", r"_act\b|_act/"),
         ("depthwise convolution", r"_depthwise\b|_depthwise/"),
         ("pointwise convolution", r"_pointwise\b|_pointwise/"),
         ("stem", r"stem_|normalize"), ("head", r"head_"),
         ("loss", r"compile_loss|crossentropy"), ("residual", r"_residual|_skip"))
INSTRUCTION = re.compile(r"^\s*(ROOT )?%?([\w.\-]+) = (.*?) ([\w\-]+)\(")
OP_NAME = re.compile(r'op_name="([^"]*)"')
CALLS = re.compile(r"calls=%?([\w.\-]+)")
COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
# XLA drops the metadata of some convolutions it rewrites (the weight gradient of a
# grouped convolution among them): named by what they are.
UNNAMED_CONV = "unnamed convolution"
CONTROL = {"while", "conditional", "call", "async-start", "async-done"}  # time of their bodies


def part_of(op_name, opcode=""):
    if not op_name and opcode == "convolution":
        return UNNAMED_CONV
    for part, pattern in PARTS:
        if re.search(pattern, op_name):
            return part
    return "other"


def pass_of(op_name, opcode=""):
    return ("backward" if "transpose(" in op_name or (not op_name and opcode == "convolution")
            else "forward" if "jvp(" in op_name
            else "update and other")


def instructions(dump_dir):
    """The optimized ``train_step`` module's instructions: name -> (opcode, op_name,
    type); a fusion's opcode is its fused computation's root's (``convolution``, ...)."""
    found = sorted(glob.glob(os.path.join(dump_dir, "*train_step*after_optimizations.txt")))
    if not found:
        sys.exit(f"bench_profile: XLA dumped no train_step module into {dump_dir} (XLA_FLAGS "
                 f"{os.environ.get('XLA_FLAGS')!r}); is another --xla_dump_to set?")
    table, roots, computation = {}, {}, None
    with open(found[-1]) as f:
        for line in f:
            match = INSTRUCTION.match(line)
            if match:
                root, name, kind, opcode = match.groups()
                if opcode == "custom-call" and "cudnn$conv" in line:  # a GPU's convolution
                    opcode = "convolution"
                op_name, calls = OP_NAME.search(line), CALLS.search(line)
                table[name] = [opcode, op_name.group(1) if op_name else "", kind,
                               calls and calls.group(1)]
                if root and computation:
                    roots[computation] = opcode
            elif not line.startswith(" "):
                header = COMPUTATION.match(line)
                computation = header and header.group(1)
    for entry in table.values():
        if entry[0] == "fusion" and entry[3] in roots:
            entry[0] = roots[entry[3]]
    return {name: tuple(entry[:3]) for name, entry in table.items()}


def kernel_times(trace_dir, table):
    """{instruction: total microseconds} over the trace's kernels of the module: the
    device's own (a GPU) where the trace has them, else the host runtime's (a CPU)."""
    found = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not found:
        sys.exit(f"bench_profile: the profiler wrote no perfetto_trace.json.gz in {trace_dir}")
    with gzip.open(found[0]) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = {e["pid"]: e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    devices = {pid for pid, name in names.items() if "/device:" in name}
    times, unmatched = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("ph") != "X" or (devices and event.get("pid") not in devices):
            continue
        args = event.get("args") or {}
        module = args.get("hlo_module", "train_step")
        op = args.get("hlo_op") or event["name"]
        if "train_step" in module and op in table:
            if table[op][0] not in CONTROL:
                times[op] += event.get("dur", 0.0)
        elif devices:  # a device kernel this profile cannot place (on a CPU: host work)
            unmatched[event["name"]] += event.get("dur", 0.0)
    return times, unmatched, ("device" if devices else "host runtime")


def report(times, unmatched, table, steps, wall, where, top):
    per_step = {op: us / steps / 1000 for op, us in times.items()}  # ms
    total = sum(per_step.values())
    other = {name: us / steps / 1000 for name, us in unmatched.most_common(10)}
    if unmatched:  # on a device: kernels the module's names do not cover
        print(f"device kernels not matched to the train_step module: "
              f"{sum(unmatched.values()) / steps / 1000:.2f} ms a step; the largest: "
              + ", ".join(f"{name} {ms:.3f} ms" for name, ms in other.items()))
    if not total:
        sys.exit("bench_profile: no kernel of the train_step module was found in the trace")
    parts, passes = collections.Counter(), collections.Counter()
    for op, ms in per_step.items():
        parts[part_of(table[op][1], table[op][0])] += ms
        passes[pass_of(table[op][1], table[op][0])] += ms
    kernels = [{"instruction": op, "opcode": table[op][0], "ms": round(ms, 4),
                "share": round(ms / total, 4), "part": part_of(table[op][1], table[op][0]),
                "pass": pass_of(table[op][1], table[op][0]), "op_name": table[op][1],
                "type": table[op][2]}
               for op, ms in sorted(per_step.items(), key=lambda kv: -kv[1])]
    print(f"{where} kernels of train_step: {total:.2f} ms a step; the step's wall time "
          f"{wall * 1000:.2f} ms ({len(per_step)} kernels)")
    print(f"\ntop {top} kernels (ms a step, share, part, pass, HLO op_name):")
    for k in kernels[:top]:
        short = k["op_name"].replace("jit(train_step)/", "") or k["type"]
        print(f"  {k['ms']:9.3f}  {k['share'] * 100:5.1f} %  {k['part'][:22]:22s} "
              f"{k['pass']:9s} {k['opcode']:12s} {short[:90]}")
    print("\nby part:")
    for part, ms in parts.most_common():
        print(f"  {part:22s} {ms:9.3f} ms  {ms / total * 100:5.1f} %")
    print("by pass:")
    for name, ms in passes.most_common():
        print(f"  {name:22s} {ms:9.3f} ms  {ms / total * 100:5.1f} %")
    for part, ms in parts.most_common():
        key = re.sub(r"\W", "_", part)
        print(f"profile_share_{key}={ms / total:.4f}")
    print(f"profile_kernel_ms_per_step={total:.4f}")
    print(f"profile_wall_ms_per_step={wall * 1000:.4f}")
    return {"where": where, "kernel_ms_per_step": total, "wall_ms_per_step": wall * 1000,
            "unmatched_ms_per_step": sum(unmatched.values()) / steps / 1000,
            "unmatched_largest": other,
            "parts": {p: ms / total for p, ms in parts.items()},
            "passes": {p: ms / total for p, ms in passes.items()}, "kernels": kernels[:100]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    bench_train.add_step_arguments(parser)
    parser.add_argument("--precision", default="mixed_float16",
                        choices=("mixed_float16", "mixed_bfloat16", "float32"))
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", help="write the profile here as JSON")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench_profile-")
    dump, trace = os.path.join(work, "hlo"), os.path.join(work, "trace")
    # Set before JAX starts: XLA reads its flags once.
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [
        os.environ.get("XLA_FLAGS"), f"--xla_dump_to={dump}", "--xla_dump_hlo_as_text",
        "--xla_dump_hlo_module_re=train_step"]))
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import jax
    import keras
    import numpy as np

    import bench_forms

    class Augmented(bench_forms.KerasDevice):
        augment = True

    keras.mixed_precision.set_global_policy(args.precision)
    arch = dict(bench_train.MODELS[args.model], **bench_train.parse_arch(args.arch))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, args.batch).astype("int32")
    form = Augmented(arch, args.batch, x, y)
    form.train(2)  # compiles (and dumps the module)
    jax.profiler.start_trace(trace, create_perfetto_trace=True)
    start = time.perf_counter()
    form.train(args.steps)
    wall = (time.perf_counter() - start) / args.steps
    jax.profiler.stop_trace()
    print(f"profile: {args.model} {arch}, batch {args.batch}, {args.precision}, {args.steps} "
          f"steps on {jax.devices()[0].device_kind}")
    try:
        table = instructions(dump)
        times, unmatched, where = kernel_times(trace, table)
        result = report(times, unmatched, table, args.steps, wall, where, args.top)
    finally:  # the dumped modules and the trace (tens of MB for CM-XL) are read once
        shutil.rmtree(work, ignore_errors=True)
    result.update(model=args.model, arch=arch, batch=args.batch, precision=args.precision,
                  steps=args.steps, device=jax.devices()[0].device_kind)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
