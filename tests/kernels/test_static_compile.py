"""Every Triton kernel compiles for sm_80 and sm_90 with its launchers' configurations: no compile error, no register
spill, shared memory within the architecture's limit, tensor-core instructions in 16-bit tl.dot kernels.

The compile runs in a subprocess with TRITON_INTERPRET unset (conftest sets it on CPU machines, and interpreted
kernels cannot be compiled). All 84 configurations (7 kernels x 2 archs x 3 dtypes x 2 shapes): 45-80 s on 2
cores with an empty Triton cache, about 20 s with a warm one.
"""
import json
import os
import subprocess
import sys

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_check(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "kernels_static.json"
    proc = subprocess.run([sys.executable, "-m", "bench.kernels_static", "--out", str(out), *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_every_kernel_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    proc, report = run_check(tmp_path)
    failed = [r for r in report["rows"] if r["violations"]]
    assert not failed, "\n".join(line for line in proc.stdout.splitlines() if "FAIL" in line)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = report["rows"]
    assert {r["kernel"] for r in rows} == {"rms_norm", "typed_qkv_rope", "typed_qkv_rope_interleaved",
                                           "interleave_add", "window_attention", "decode_partition", "decode_merge"}
    assert len(rows) == 7 * 2 * 3 * 2
    assert report["env"]["triton"] and report["env"]["commit"]
    # fp16/bf16 tl.dot kernels take the tensor cores: wgmma on sm_90 (checked in the PTX by the check itself)
    dot_rows = [r for r in rows if r["kernel"] in ("typed_qkv_rope", "window_attention", "decode_partition")]
    assert all(r["tensor_cores"] for r in dot_rows if r["dtype"] != "float32")


def test_launcher_configs_come_from_one_function_per_launcher():
    """The static check compiles what the launchers pass: the launchers read the same config functions."""
    from vxl.kernels import decode_attention, static_check, typed_qkv, window_attention
    for shape in static_check.SHAPES:
        for dtype in static_check.DTYPES:
            for arch in static_check.ARCHS:
                by_name = {c.kernel: c.meta for c in static_check.cases(arch, dtype, shape)}
                group = shape.num_heads // shape.num_kv_heads
                assert by_name["typed_qkv_rope"].items() >= typed_qkv.qkv_config(arch, dtype).items()
                assert by_name["window_attention"].items() >= \
                    window_attention.window_attention_config(arch, dtype, shape.head_dim).items()
                assert by_name["decode_partition"].items() >= \
                    decode_attention.decode_partition_meta(arch, dtype, group, shape.head_dim).items()


def test_device_arch():
    """The launchers pick tiles by compute capability on CUDA and the interpreter's tiles elsewhere."""
    from vxl.kernels.arch import device_arch
    assert device_arch(torch.device("cpu")) is None
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        assert device_arch(torch.device("cuda")) == major * 10 + minor
