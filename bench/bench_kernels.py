"""Benchmark of the three Triton kernels on Qwen2-7B shapes against the peers they replace.

Writes bench/results/kernels_<gpu>.json and .md (GPU, versions, commit). Without CUDA it runs a small
correctness pre-check through the Triton interpreter and exits 0: timings need a GPU.
Usage: python -m bench.bench_kernels [--quick]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():  # must precede the first triton import
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton
from triton.testing import do_bench

from vxl.kernels import reference
from vxl.kernels.decode_attention import decode_attention
from vxl.kernels.interleave import interleave_add, typed_qkv_rope_interleaved
from vxl.kernels.typed_qkv import typed_qkv_rope
from vxl.kernels.window_attention import window_attention
from vxl.vst import interleave

HIDDEN, NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, THETA, WINDOW, PAGE_SIZE = 3584, 28, 4, 128, 1e6, 1440, 16
RESULTS = Path(__file__).resolve().parent / "results"
PEAK_GBS = {"H100 80GB HBM3": 3350, "H100 NVL": 3900, "H100 PCIe": 2000, "H200": 4800, "A100-SXM4-80GB": 2039}


def interleave_is_vst(num_raw: int, ratio: int, rem: int = 0) -> torch.Tensor:
    """is_vst of one window (`vxl.vst.interleave`, the Video-XL interleave rule)."""
    return interleave(num_raw, ratio, rem)[0]


def paged(lens, num_kv_heads, head_dim, page_size, dtype, device):
    """Random paged caches holding len entries per sequence, permuted pages. -> k_cache, v_cache, block_tables."""
    pages_per_seq = max(1, max(-(-n // page_size) for n in lens))
    num_pages = len(lens) * pages_per_seq
    shape = (num_pages, page_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, dtype=dtype, device=device)
    v_cache = torch.randn(shape, dtype=dtype, device=device)
    block_tables = torch.randperm(num_pages, device=device).to(torch.int32).reshape(len(lens), pages_per_seq)
    return k_cache, v_cache, block_tables


def typed_inputs(is_vst, hidden, num_heads, num_kv_heads, head_dim, dtype, device):
    """Rows typed by is_vst [T]; VST rows kept (all rows when there is no VST, as for text)."""
    num_tokens, num_cols = is_vst.shape[0], (num_heads + 2 * num_kv_heads) * head_dim
    k_cache, v_cache, _ = paged([num_tokens], num_kv_heads, head_dim, PAGE_SIZE, dtype, device)
    slots = torch.randperm(num_tokens)
    slots = torch.where(is_vst, slots, -1) if is_vst.any() else slots
    w = lambda *s: torch.randn(*s, dtype=dtype, device=device) / math.sqrt(s[-1])
    positions = torch.arange(num_tokens, device=device)
    return (torch.randn(num_tokens, hidden, dtype=dtype, device=device), 1 + 0.1 * w(hidden), 1e-6,
            w(num_cols, hidden), w(num_cols), w(num_cols, hidden), w(num_cols), is_vst.to(device),
            positions, positions, slots.to(device), k_cache, v_cache, num_heads, num_kv_heads, THETA)


def interleaved_inputs(num_windows, num_raw, ratio, rem, hidden, num_heads, num_kv_heads, head_dim, dtype, device):
    """First-layer inputs of windows of num_raw raw rows each: typed_inputs with (src [S, H], beacon [H]) for
    the hidden rows and the slot layout (cu_seqlens, cu_src, ratios, rems) for is_vst."""
    is_vst = interleave_is_vst(num_raw, ratio, rem).repeat(num_windows)
    args = typed_inputs(is_vst, hidden, num_heads, num_kv_heads, head_dim, dtype, device)
    per_window = torch.arange(num_windows + 1, dtype=torch.int32, device=device)
    full = torch.full((num_windows,), 1, dtype=torch.int32, device=device)
    layout = (per_window * (is_vst.shape[0] // num_windows), per_window * num_raw, full * ratio, full * rem)
    src = torch.randn(num_windows * num_raw, hidden, dtype=dtype, device=device)
    return (src, torch.randn(hidden, dtype=dtype, device=device), *args[1:7], *layout, *args[8:])


def window_inputs(num_windows, ratio, kept, num_heads, num_kv_heads, head_dim, dtype, device, window=WINDOW):
    n = window + window // ratio
    q = torch.randn(num_windows * n, num_heads, head_dim, dtype=dtype, device=device)
    k = torch.randn(num_windows * n, num_kv_heads, head_dim, dtype=dtype, device=device)
    v = torch.randn_like(k)
    k_cache, v_cache, block_tables = paged([kept] * num_windows, num_kv_heads, head_dim, PAGE_SIZE, dtype, device)
    kept_lens = torch.full((num_windows,), kept, dtype=torch.int32, device=device)
    cu_seqlens = torch.arange(num_windows + 1, device=device, dtype=torch.int32) * n
    return q, k, v, k_cache, v_cache, block_tables, kept_lens, cu_seqlens


def decode_inputs(batch, seq_len, num_heads, num_kv_heads, head_dim, dtype, device):
    q = torch.randn(batch, num_heads, head_dim, dtype=dtype, device=device)
    k_cache, v_cache, block_tables = paged([seq_len] * batch, num_kv_heads, head_dim, PAGE_SIZE, dtype, device)
    return q, k_cache, v_cache, block_tables, torch.full((batch,), seq_len, dtype=torch.int32, device=device)


def precheck(device: str, dtype: torch.dtype, tol: float) -> None:
    """Small shapes (through the interpreter on CPU): each launcher against the reference."""
    torch.manual_seed(0)
    first = interleaved_inputs(2, 29, 4, 1, 64, 4, 2, 16, dtype, device)   # two windows, their slots read by index
    residual = torch.randn(first[12].shape[0], 64, dtype=dtype, device=device)
    checks = {
        "typed_qkv_rope": (typed_qkv_rope, reference.typed_qkv_rope,
                           typed_inputs(interleave_is_vst(29, 4, 1), 64, 4, 2, 16, dtype, device)),
        "typed_qkv_rope_interleaved": (typed_qkv_rope_interleaved, reference.typed_qkv_rope_interleaved, first),
        "interleave_add": (interleave_add, reference.interleave_add, (residual, *first[:2], *first[8:12])),
        "window_attention": (window_attention, reference.window_attention,
                             window_inputs(2, 4, 21, 4, 2, 16, dtype, device, window=24)),
        "decode_attention": (decode_attention, reference.decode_attention,
                             decode_inputs(3, 77, 4, 2, 16, dtype, device)),
    }
    fresh = lambda args: tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)  # noqa: E731
    for name, (kernel, ref, args) in checks.items():  # each on its own copy: some write their inputs in place
        out, expected = kernel(*fresh(args)), ref(*fresh(args))
        out, expected = (out, expected) if isinstance(out, tuple) else ((out,), (expected,))
        err = max((a.float() - b.float()).abs().max().item() for a, b in zip(out, expected))
        print(f"precheck {name} ({device}, {dtype}): max abs error vs reference {err:.2e}")
        assert err < tol, f"{name} disagrees with the reference"


def bench(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def bench_peer(fn) -> float | None:
    try:
        return bench(fn)
    except Exception as exc:  # noqa: BLE001 - a peer that does not run here is reported missing, not fatal
        print(f"  peer failed: {type(exc).__name__}: {str(exc)[:120]}")
        return None


def dense_peers(q, k, v, causal: bool):
    """Peers on the equivalent dense problem: q [B, nh, n, hd], k/v [B, nkv, kept + n, hd] (no paging).

    causal: the window mask (kept entries visible, window causal) = causal aligned to the bottom right.
    "sdpa" repeats K/V to all heads outside the timing, as HF's repeat_kv does; "sdpa_gqa" reads them once.
    """
    from torch.nn.attention.bias import causal_lower_right
    peers = {}
    group = q.shape[1] // k.shape[1]
    k_rep, v_rep = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    n, total = q.shape[2], k.shape[2]
    mask = causal_lower_right(n, total) if causal else None
    sdpa = torch.nn.functional.scaled_dot_product_attention
    peers["sdpa"] = bench_peer(lambda: sdpa(q, k_rep, v_rep, attn_mask=mask))
    peers["sdpa_gqa"] = bench_peer(lambda: sdpa(q, k, v, attn_mask=mask, enable_gqa=True))
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex = torch.compile(flex_attention)
        block_mask = create_block_mask(lambda b, h, qi, ki: ki <= qi + (total - n), q.shape[0], None, n, total) \
            if causal else None
        peers["flex"] = bench_peer(lambda: flex(q, k, v, block_mask=block_mask, enable_gqa=True))
    except Exception as exc:
        print(f"  flex unavailable: {type(exc).__name__}")
    try:
        from xformers.ops import fmha, memory_efficient_attention
        bias = fmha.attn_bias.LowerTriangularFromBottomRightMask() if causal else None
        qx, kx, vx = (t.transpose(1, 2) for t in (q, k_rep, v_rep))
        peers["xformers"] = bench_peer(lambda: memory_efficient_attention(qx, kx, vx, attn_bias=bias))
    except ImportError:
        pass  # xformers is optional
    except Exception as exc:
        print(f"  xformers failed: {type(exc).__name__}")
    return peers


def bench_typed_qkv(quick: bool, dtype: torch.dtype) -> list[dict]:
    rows = []
    cases = [(1, 8)] if quick else [(1, 2), (1, 8), (1, 16), (4, 8), (16, 8), (16, 0)]
    for num_windows, ratio in cases:  # ratio 0: 16 decode rows of text, no VST
        is_vst = interleave_is_vst(WINDOW, ratio).repeat(num_windows) if ratio else torch.zeros(16, dtype=torch.bool)
        args = typed_inputs(is_vst, HIDDEN, NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, dtype, "cuda")
        num_tokens, num_cols = args[0].shape[0], args[3].shape[0]
        flops = 2 * num_tokens * HIDDEN * num_cols
        ms = bench(lambda a=args: typed_qkv_rope(*a))
        matmul_ms = bench_peer(lambda x=args[0], w=args[3]: torch.matmul(x, w.t()))
        rows.append({"kernel": "typed_qkv_rope", "shape": f"T={num_tokens} r={ratio or '-'}", "ms": ms,
                     "tflops": flops / ms * 1e-9, "peers": {"torch.matmul": matmul_ms}})
    return rows


def bench_first_layer(quick: bool, dtype: torch.dtype) -> list[dict]:
    """The first layer's typed QKV read by slot index vs materialising the interleaved window first."""
    rows = []
    for num_windows, ratio in [(1, 8)] if quick else [(1, 2), (1, 8), (4, 8), (16, 16)]:
        args = interleaved_inputs(num_windows, WINDOW, ratio, 0, HIDDEN, NUM_HEADS, NUM_KV_HEADS, HEAD_DIM,
                                  dtype, "cuda")
        num_tokens = args[12].shape[0]
        is_vst = interleave_is_vst(WINDOW, ratio).repeat(num_windows).cuda()

        def materialised(a=args, is_vst=is_vst):  # the engine's path before: build the slots, then project
            hidden = torch.empty(is_vst.shape[0], HIDDEN, dtype=dtype, device="cuda")
            hidden[~is_vst], hidden[is_vst] = a[0], a[1]
            return typed_qkv_rope(hidden, *a[2:8], is_vst, *a[12:])

        flops = 2 * num_tokens * HIDDEN * args[4].shape[0]
        ms = bench(lambda a=args: typed_qkv_rope_interleaved(*a))
        peers = {"materialised + typed_qkv_rope": bench_peer(materialised)}
        rows.append({"kernel": "typed_qkv_rope_interleaved", "shape": f"T={num_tokens} r={ratio}", "ms": ms,
                     "tflops": flops / ms * 1e-9, "peers": peers})
    return rows


def bench_window_attention(quick: bool, dtype: torch.dtype) -> list[dict]:
    rows = []
    cases = [(1, 8, 0)] if quick else [(1, 8, 0), (1, 8, 1000), (1, 8, 10000), (1, 8, 40000), (1, 2, 10000),
                                       (1, 16, 40000), (4, 8, 10000), (16, 8, 10000), (16, 16, 0)]
    for num_windows, ratio, kept in cases:
        args = window_inputs(num_windows, ratio, kept, NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, dtype, "cuda")
        n = args[0].shape[0] // num_windows
        flops = 4 * NUM_HEADS * HEAD_DIM * num_windows * (n * kept + n * (n + 1) / 2)
        ms = bench(lambda a=args: window_attention(*a))
        q = args[0].view(num_windows, n, NUM_HEADS, HEAD_DIM).transpose(1, 2).contiguous()  # (B, nh, n, hd)
        k, v = (torch.randn(num_windows, NUM_KV_HEADS, kept + n, HEAD_DIM, dtype=dtype, device="cuda")
                for _ in range(2))
        rows.append({"kernel": "window_attention", "shape": f"B={num_windows} r={ratio} n={n} kept={kept}",
                     "ms": ms, "tflops": flops / ms * 1e-9, "peers": dense_peers(q, k, v, causal=True)})
        del args, q, k, v
    return rows


def bench_decode_attention(quick: bool, dtype: torch.dtype) -> list[dict]:
    rows = []
    cases = [(1, 1000)] if quick else [(1, 1000), (1, 10000), (1, 40000), (4, 10000), (16, 10000), (16, 40000)]
    peak = next((v for k, v in PEAK_GBS.items() if k in torch.cuda.get_device_name()), None)
    for batch, seq_len in cases:
        args = decode_inputs(batch, seq_len, NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, dtype, "cuda")
        num_bytes = 2 * batch * seq_len * NUM_KV_HEADS * HEAD_DIM * args[1].element_size()
        ms = bench(lambda a=args: decode_attention(*a))
        q = args[0][:, :, None]  # (B, nh, 1, hd)
        k, v = (torch.randn(batch, NUM_KV_HEADS, seq_len, HEAD_DIM, dtype=dtype, device="cuda") for _ in range(2))
        row = {"kernel": "decode_attention", "shape": f"B={batch} len={seq_len}", "ms": ms,
               "gbs": num_bytes / ms * 1e-6, "peers": dense_peers(q, k, v, causal=False)}
        if peak:
            row["peak_fraction"] = row["gbs"] / peak
        rows.append(row)
        del args, q, k, v
    return rows


def run_cuda(quick: bool) -> list[dict]:
    dtype = torch.bfloat16
    rows = bench_typed_qkv(quick, dtype) + bench_first_layer(quick, dtype) + bench_window_attention(quick, dtype)
    rows += bench_decode_attention(quick, dtype)
    for row in rows:
        row["ratio"] = {name: (t / row["ms"] if t else None) for name, t in row["peers"].items()}
    return rows


def write_results(rows: list[dict]) -> None:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=RESULTS.parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    gpu = torch.cuda.get_device_name()
    meta = {"gpu": gpu, "torch": torch.__version__, "triton": triton.__version__, "commit": commit,
            "dtype": "bfloat16", "model": "Qwen2-7B heads: 28 q / 4 kv, head_dim 128, hidden 3584, page_size 16"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / ("kernels_" + "".join(c if c.isalnum() else "-" for c in gpu))
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    header = (f"torch {meta['torch']}, triton {meta['triton']}, commit {commit}, bf16; {meta['model']}. "
              "ratio = peer time / vxl time (> 1: vxl faster).")
    lines = [f"# vxl kernels on {gpu}", "", header, "",
             "| kernel | shape | ms | TFLOP/s or GB/s | ratio vs peers |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        speed = f"{r['tflops']:.1f} TFLOP/s" if "tflops" in r else f"{r['gbs']:.0f} GB/s"
        speed += f" ({r['peak_fraction']:.0%} of peak)" if "peak_fraction" in r else ""
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in r["ratio"].items() if v)
        lines.append(f"| {r['kernel']} | {r['shape']} | {r['ms']:.3f} | {speed} | {ratios} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one shape per kernel")
    quick = parser.parse_args().quick
    if not torch.cuda.is_available():
        precheck("cpu", torch.float32, 1e-4)
        print("No CUDA device: correctness pre-check passed on CPU (Triton interpreter); timings need CUDA.")
        return 0
    precheck("cuda", torch.float16, 1e-2)
    write_results(run_cuda(quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
