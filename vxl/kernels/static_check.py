"""Ahead-of-time compilation of every Triton kernel for real GPUs (sm_80, sm_90) with no GPU present.

Each kernel is compiled with the constexprs and launch options its launcher picks on that architecture (the
launchers' `*_meta` / `*_config` functions), specialised as Triton's launcher would specialise the arguments
(16-byte aligned pointers, integers divisible by 16 or not), then ptxas (from the triton wheel) reports
registers and spills. A configuration fails on a compile error, a spill, shared memory over the architecture's
per-block limit, or a 16-bit `tl.dot` kernel whose PTX has no tensor-core instruction (mma / wgmma).
Needs a process where TRITON_INTERPRET is unset (the kernels must be JIT functions, not interpreted ones).
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch

from vxl.kernels import decode_attention as decode
from vxl.kernels import interleave, typed_qkv
from vxl.kernels import window_attention as window

# Opt-in shared memory per block (CUDA programming guide, compute capabilities table).
MAX_SHARED_BYTES = {80: 163 * 1024, 90: 227 * 1024}
ARCHS = tuple(MAX_SHARED_BYTES)
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@dataclass(frozen=True)
class Shape:
    name: str
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    has_bias: bool = True


SHAPES = (Shape("videoxl-7b", 3584, 28, 4, 128, 16),   # Qwen2-7B: q/k/v biases, GQA group 7
          Shape("small", 128, 4, 2, 32, 16))           # the tiny test model

# Runtime counts are compiled at values not divisible by 16 (the general specialisation); strides follow the shapes.
NUM_TOKENS, NUM_SRC, NUM_CHUNKS, MAX_PAGES, NUM_PARTS = 1037, 981, 3, 1031, 27
SPECIALISATION = ("pointers 16-byte aligned; index tensors int64 (as the engine builds them); token, chunk, page "
                  "and partition counts not divisible by 16; strides of contiguous tensors of the shape")


@dataclass(frozen=True)
class Case:
    kernel: str
    fn: object          # the JITFunction
    args: tuple         # positional arguments: MockTensor for pointers, ints / floats for scalars
    meta: dict          # constexprs + launch options, as the launcher passes them
    uses_dot: bool


def _ptr(dtype: torch.dtype):
    from triton.runtime.jit import MockTensor   # data_ptr() == 0: 16-byte aligned, as torch allocations are
    return MockTensor(dtype)


def _qkv_cases(arch: int, dtype: torch.dtype, s: Shape) -> list[Case]:
    t, i64, f32 = _ptr(dtype), _ptr(torch.int64), _ptr(torch.float32)
    meta = dict(NUM_HEADS=s.num_heads, NUM_KV_HEADS=s.num_kv_heads, PAGE_SIZE=s.page_size,
                **typed_qkv.qkv_meta(arch, dtype, s.head_dim, s.has_bias))
    kv_t = s.num_kv_heads * s.head_dim
    strides = (s.hidden_size, s.hidden_size, s.num_heads * s.head_dim, kv_t, kv_t,   # x, w, q, k, v rows
               s.page_size * kv_t, kv_t, s.page_size * kv_t, kv_t)                   # k / v cache page, slot
    plain = (t, t, t, t, t, i64, i64, i64, i64, i64, f32, t, t, t, t, t, NUM_TOKENS, s.hidden_size) + strides
    inter = ((t, t, t, t, t, i64, i64, i64, i64, i64, i64, i64, f32, t, t, t, t, t,
              NUM_SRC, NUM_TOKENS, NUM_CHUNKS, s.hidden_size) + strides)
    norm = (t, t, t, s.hidden_size, 1e-6, s.hidden_size, s.hidden_size)
    add = (t, t, t, i64, i64, i64, i64, NUM_SRC, NUM_TOKENS, NUM_CHUNKS, s.hidden_size, s.hidden_size, s.hidden_size)
    return [Case("rms_norm", typed_qkv._rms_norm_kernel, norm, typed_qkv.rms_norm_config(arch, s.hidden_size), False),
            Case("typed_qkv_rope", typed_qkv._typed_qkv_rope_kernel, plain, meta, True),
            Case("typed_qkv_rope_interleaved", interleave._typed_qkv_rope_interleaved_kernel, inter, meta, True),
            Case("interleave_add", interleave._interleave_add_kernel, add,
                 interleave.interleave_add_config(arch, s.hidden_size), False)]


def _attention_cases(arch: int, dtype: torch.dtype, s: Shape) -> list[Case]:
    t, i64, f32 = _ptr(dtype), _ptr(torch.int64), _ptr(torch.float32)
    group, hd = s.num_heads // s.num_kv_heads, s.head_dim
    q_t, q_h, kv_t = s.num_heads * hd, hd, s.num_kv_heads * hd
    cache = (s.page_size * kv_t, kv_t, hd)
    win = (t, t, t, t, t, i64, i64, i64, t, NUM_CHUNKS, 0.125,
           q_t, q_h, kv_t, hd, kv_t, hd, q_t, q_h, *cache, *cache, MAX_PAGES)
    win_meta = dict(PAGE_SIZE=s.page_size, **window.window_attention_meta(arch, dtype, group, hd))
    part_meta = dict(PAGE_SIZE=s.page_size, **decode.decode_partition_meta(arch, dtype, group, hd))
    out_strides = (s.num_heads * NUM_PARTS * hd, NUM_PARTS * hd, hd, s.num_heads * NUM_PARTS, NUM_PARTS)
    part = (t, t, t, i64, i64, f32, f32, 0.125, q_t, q_h, *cache, *cache, MAX_PAGES, *out_strides)
    merge = (f32, f32, i64, t, *out_strides, q_t, q_h)
    merge_meta = decode.decode_merge_meta(arch, hd, part_meta["PARTITION_SIZE"], NUM_PARTS)
    return [Case("window_attention", window._window_attention_kernel, win, win_meta, True),
            Case("decode_partition", decode._decode_partition_kernel, part, part_meta, True),
            Case("decode_merge", decode._decode_merge_kernel, merge, merge_meta, False)]


def cases(arch: int, dtype: torch.dtype, shape: Shape) -> list[Case]:
    """Every kernel launch of a model step at (arch, dtype, shape), with its launcher's configuration."""
    return _qkv_cases(arch, dtype, shape) + _attention_cases(arch, dtype, shape)


def _ptxas_report(ptx: str, arch: int) -> tuple[int, int]:
    # The flags of triton's own ptxas step (backends/nvidia/compiler.py, make_cubin) plus -v: (registers, spill bytes).
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
               f"--gpu-name={sm_arch_from_capability(arch)}", src, "-o", os.path.join(tmp, "kernel.cubin")]
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    registers = int(re.search(r"Used (\d+) registers", log).group(1))
    stores, loads = map(int, re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log).groups())
    return registers, max(stores, loads)


def compile_case(case: Case, arch: int):
    """triton.compile of one case for `arch`, specialised as `fn[grid](*args, **meta)` would be on that GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature
    if not isinstance(case.fn, JITFunction):
        raise RuntimeError("the kernels are interpreted (TRITON_INTERPRET is set): run the static check in a "
                           "process without it")
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    # The launcher's own binder and argument packing (JITFunction.run), minus the driver queries.
    binder = create_function_from_signature(case.fn.signature, case.fn.params, backend)
    bound, specialization, options = binder(*case.args, **case.meta)
    options, signature, constexprs, attrs = case.fn._pack_args(backend, case.meta, bound, specialization, options)
    return triton.compile(ASTSource(case.fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def check_case(case: Case, arch: int, dtype: torch.dtype, shape: Shape) -> dict:
    """One row of the report: the configuration, registers, spills, shared memory, tensor cores and violations."""
    config = {k: v for k, v in case.meta.items() if k.startswith("BLOCK_") or k in
              ("PARTITION_SIZE", "num_warps", "num_stages")}
    row = dict(kernel=case.kernel, arch=f"sm_{arch}", dtype=str(dtype).removeprefix("torch."), shape=shape.name,
               config=config, registers=None, spill_bytes=None, shared_bytes=None, tensor_cores=None, violations=[])
    try:
        compiled = compile_case(case, arch)
    except Exception as e:   # noqa: BLE001 - any compiler failure is a reported violation
        row["violations"].append(f"compile error: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}")
        return row
    ptx = compiled.asm["ptx"]
    row["registers"], row["spill_bytes"] = _ptxas_report(ptx, arch)
    row["shared_bytes"] = compiled.metadata.shared
    config.update(num_warps=compiled.metadata.num_warps, num_stages=compiled.metadata.num_stages)
    row["tensor_cores"] = bool(re.search(r"\bmma\.sync\.|\bwgmma\.mma_async\.", ptx))
    if row["spill_bytes"]:
        row["violations"].append(f"register spills: {row['spill_bytes']} bytes")
    if row["shared_bytes"] > MAX_SHARED_BYTES[arch]:
        row["violations"].append(f"shared memory {row['shared_bytes']} > {MAX_SHARED_BYTES[arch]} bytes")
    if case.uses_dot and dtype != torch.float32 and not row["tensor_cores"]:
        row["violations"].append("tl.dot in 16-bit without tensor-core instructions in the PTX")
    return row


def _check_one(key: tuple) -> dict:
    arch, dtype, shape, kernel = key
    case = next(c for c in cases(arch, dtype, shape) if c.kernel == kernel)
    return check_case(case, arch, dtype, shape)


def check_all(archs=ARCHS, dtypes=DTYPES, shapes=SHAPES, kernels: set[str] | None = None,
              jobs: int = 1) -> list[dict]:
    """check_case over archs x dtypes x shapes x kernels (None: all), in `jobs` processes; rows in that order."""
    keys = [(arch, dtype, shape, case.kernel) for arch in archs for dtype in dtypes for shape in shapes
            for case in cases(arch, dtype, shape) if kernels is None or case.kernel in kernels]
    if jobs <= 1:
        return [_check_one(key) for key in keys]
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_check_one, keys))
