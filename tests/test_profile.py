"""bench/bench_profile.py's reading of a trace: each kernel placed by its HLO instruction
in the optimized train_step module, on a GPU's trace as on a CPU's (the real profile on a
CPU runs in the GPU rehearsal, tests/test_gpu_run.py)."""

import gzip
import json
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench_profile  # noqa: E402

# A GPU's optimized module, cut to what the reading uses: a cuDNN convolution (a custom
# call), a fusion whose root is a convolution XLA left without metadata, a BatchNorm
# reduction in the backward pass, an augmentation gather, and a while loop (whose time
# is its body's, so never counted itself).
MODULE = """HloModule jit_train_step, entry_computation_layout={(f32[2]{0})->f32[2]{0}}

%fused_computation.1 (param_0: f32[2]) -> f32[2] {
  %param_0 = f32[2]{0} parameter(0)
  ROOT %convolution.9 = f32[2]{0} convolution(%param_0, %param_0), dim_labels=b01f_01io->b01f
}

ENTRY %main.1 (p: f32[2]) -> f32[2] {
  %p = f32[2]{0} parameter(0)
  %custom-call.3 = (f32[2]{0}, u8[0]{0}) custom-call(%p, %p), custom_call_target="__cudnn$convForward", metadata={op_name="jit(train_step)/jvp(cm_xl)/layer_1_depthwise/conv_general_dilated"}
  %loop_conv_fusion = f32[2]{0} fusion(%p), kind=kLoop, calls=%fused_computation.1
  %fusion.7 = f32[2]{0} fusion(%p), kind=kInput, calls=%fused_computation.2, metadata={op_name="jit(train_step)/transpose(jvp(cm_xl))/layer_1_depthwise_bn/reduce_sum"}
  %gather_fusion = f32[2]{0} fusion(%p), kind=kLoop, calls=%fused_computation.3, metadata={op_name="jit(train_step)/jvp(aug_randaugment)/gather"}
  %while.2 = (s32[]) while(%t), condition=%c, body=%b, metadata={op_name="jit(train_step)/jvp(aug_crop)/while"}
  ROOT %out = f32[2]{0} add(%p, %p)
}
"""


def kernel(name, op, dur, pid=2):
    return {"ph": "X", "pid": pid, "tid": 1, "ts": 0, "dur": dur, "name": name,
            "args": {"hlo_op": op, "hlo_module": "jit_train_step"} if op else {}}


def test_a_gpu_trace_is_read_by_instruction_and_part(tmp_path):
    dump, trace = tmp_path / "hlo", tmp_path / "trace" / "plugins" / "profile" / "x"
    dump.mkdir()
    trace.mkdir(parents=True)
    (dump / "module_0007.jit_train_step.gpu_after_optimizations.txt").write_text(MODULE)
    events = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        kernel("sm90_xmma_fprop_depthwise", "custom-call.3", 600),
        kernel("loop_conv_fusion", "loop_conv_fusion", 200),
        kernel("input_reduce_fusion", "fusion.7", 100),
        kernel("gather_fusion", "gather_fusion", 100),
        kernel("while.2", "while.2", 5000),  # its body's kernels are counted, not it
        kernel("MemcpyH2D", None, 50),  # a device kernel no instruction names
        kernel("custom-call.3", "custom-call.3", 9999, pid=1),  # the host's side: not counted
    ]
    with gzip.open(trace / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)

    table = bench_profile.instructions(str(dump))
    assert table["custom-call.3"][0] == "convolution"
    assert table["loop_conv_fusion"][0] == "convolution"  # its fused computation's root
    times, unmatched, where = bench_profile.kernel_times(str(tmp_path / "trace"), table)
    assert where == "device"
    result = bench_profile.report(times, unmatched, table, steps=2, wall=0.001, where=where,
                                  top=5)
    assert result["kernel_ms_per_step"] == pytest.approx(1000 / 2 / 1000)
    assert result["parts"] == pytest.approx({
        "depthwise convolution": 0.6, bench_profile.UNNAMED_CONV: 0.2, "batchnorm": 0.1,
        "augmentation": 0.1})
    assert result["passes"] == pytest.approx({"forward": 0.7, "backward": 0.3})
    assert result["unmatched_ms_per_step"] == pytest.approx(50 / 2 / 1000)
    assert list(result["unmatched_largest"]) == ["MemcpyH2D"]
    assert [k["instruction"] for k in result["kernels"]] == [
        "custom-call.3", "loop_conv_fusion", "fusion.7", "gather_fusion"]


def test_a_module_that_was_not_dumped_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="XLA dumped no train_step module"):
        bench_profile.instructions(str(tmp_path))
