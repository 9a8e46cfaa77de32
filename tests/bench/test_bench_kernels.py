"""The kernel benchmark's correctness pre-check (what `python -m bench.bench_kernels` runs without CUDA) on its tiny
shapes, so the script is exercised by CI."""
import os
import sys

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from bench import bench_kernels  # noqa: E402
from vxl.vst import interleave  # noqa: E402


def test_precheck_fp32_cpu(capsys):
    bench_kernels.precheck("cpu", torch.float32, 1e-4)
    out = capsys.readouterr().out
    for name in ("typed_qkv_rope", "typed_qkv_rope_interleaved", "interleave_add", "window_attention",
                 "decode_attention"):
        assert f"precheck {name} (cpu, torch.float32)" in out


def test_benchmark_inputs_follow_the_interleave_rule():
    for ratio, rem in [(1, 0), (4, 1), (12, 7), (16, 0)]:
        assert torch.equal(bench_kernels.interleave_is_vst(29, ratio, rem), interleave(29, ratio, rem)[0])
    args = bench_kernels.interleaved_inputs(3, 29, 4, 1, 64, 4, 2, 16, torch.float32, "cpu")
    src, cu_seqlens, cu_src, positions = args[0], args[8], args[9], args[12]
    assert src.shape[0] == int(cu_src[-1]) == 3 * 29 and positions.shape[0] == int(cu_seqlens[-1]) == 3 * 36
