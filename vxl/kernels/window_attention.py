"""Window attention: packed chunks over [their sequence's kept pages ; the chunk itself, causally].

Flash-style online softmax (fp32 `m_i`, `l_i`, `acc`; exp2 with log2(e) folded into the scale), one program
per (query tile, query head); kept entries are gathered through the block table, so any page size works.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from vxl.kernels.arch import device_arch
from vxl.kernels.paged import load_paged_kv_tile, online_softmax_step

LOG2E = 1.4426950408889634


@triton.jit
def _find_tile(cu_seqlens_ptr, num_seqs, tile, BLOCK_M: tl.constexpr):
    # Tiles are numbered sequence by sequence; returns (sequence, first row of the tile in it), seq -1 if none.
    seq = tile * 0 - 1
    tile_m = tile * 0
    tiles_before = tile * 0
    for b in range(num_seqs):
        num_rows = tl.load(cu_seqlens_ptr + b + 1).to(tl.int32) - tl.load(cu_seqlens_ptr + b).to(tl.int32)
        num_tiles = tl.cdiv(num_rows, BLOCK_M)
        hit = (tile >= tiles_before) & (tile < tiles_before + num_tiles)
        seq = tl.where(hit, b, seq)
        tile_m = tl.where(hit, tile - tiles_before, tile_m)
        tiles_before += num_tiles
    return seq, tile_m * BLOCK_M


@triton.jit
def _window_attention_kernel(
        q_ptr, k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, kept_lens_ptr, cu_seqlens_ptr, out_ptr,
        num_seqs, qk_scale,
        stride_q_t, stride_q_h, stride_k_t, stride_k_h, stride_v_t, stride_v_h, stride_out_t, stride_out_h,
        stride_k_cache_page, stride_k_cache_slot, stride_k_cache_head,
        stride_v_cache_page, stride_v_cache_slot, stride_v_cache_head, stride_block_tables_b,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PAGE_SIZE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    head = tl.program_id(1)
    seq, row0 = _find_tile(cu_seqlens_ptr, num_seqs, tl.program_id(0), BLOCK_M)
    if seq < 0:
        return
    kv_head = head // GROUP
    chunk_start = tl.load(cu_seqlens_ptr + seq).to(tl.int32)
    num_rows = tl.load(cu_seqlens_ptr + seq + 1).to(tl.int32) - chunk_start
    num_kept = tl.load(kept_lens_ptr + seq).to(tl.int32)
    dtype = q_ptr.dtype.element_ty

    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    m_mask = offs_m < num_rows
    q = tl.load(q_ptr + (chunk_start + offs_m)[:, None] * stride_q_t + head * stride_q_h + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # 1) kept entries, all visible, gathered through the block table
    for n0 in range(0, num_kept, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < num_kept
        k, v = load_paged_kv_tile(k_cache_ptr, v_cache_ptr, block_tables_ptr + seq * stride_block_tables_b,
                                  offs_n, n_mask, offs_d, d_mask, kv_head,
                                  stride_k_cache_page, stride_k_cache_slot, stride_k_cache_head,
                                  stride_v_cache_page, stride_v_cache_slot, stride_v_cache_head, PAGE_SIZE, dtype)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        qk = tl.where(n_mask[None, :], qk, float("-inf"))
        acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, qk, v, dtype, DOT_PRECISION)

    # 2) the chunk itself, causal: columns before the tile need no mask, the diagonal tile does.
    row_end = tl.minimum(row0 + BLOCK_M, num_rows)
    for n0 in range(0, row_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < num_rows
        kv_mask = n_mask[:, None] & d_mask[None, :]
        rows_n = (chunk_start + offs_n)[:, None]
        k = tl.load(k_ptr + rows_n * stride_k_t + kv_head * stride_k_h + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + rows_n * stride_v_t + kv_head * stride_v_h + offs_d[None, :], mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if n0 + BLOCK_N > row0:
            qk = tl.where((offs_n[None, :] <= offs_m[:, None]) & n_mask[None, :], qk, float("-inf"))
        acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, qk, v, dtype, DOT_PRECISION)

    out = acc / l_i[:, None]
    tl.store(out_ptr + (chunk_start + offs_m)[:, None] * stride_out_t + head * stride_out_h + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def window_attention_config(arch: int | None, dtype: torch.dtype, head_dim: int) -> dict:
    """Tiles of `_window_attention_kernel` on `arch` (`vxl.kernels.arch`; None: the interpreter).

    Registers and shared memory of every choice: bench/results/kernels_static.json (checked by
    tests/kernels/test_static_compile.py). A program holds q (BLOCK_M, hd), an fp32 acc (BLOCK_M, hd) and the
    (BLOCK_M, BLOCK_N) scores; K/V tiles (BLOCK_N, hd) are staged in shared memory.
    """
    if arch is None:  # the interpreter: small tiles keep the CPU tests fast
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=2)
    if dtype == torch.float32:
        # FMA, no tensor cores: (64, 32) spills on sm_80 (40 bytes) and sm_90 (1.2 KiB), as do (32, 32) and
        # (64, 16) on sm_90; (32, 16): 76-79 registers, 34 KiB shared, no spills.
        return dict(BLOCK_M=32, BLOCK_N=16, num_warps=8, num_stages=2)
    # bf16/fp16 on sm_80 (mma.sync) and sm_90 (wgmma): 128 query rows x 32 keys (64 for hd <= 64), 8 warps:
    # hd 128 takes 204 registers on sm_80, 160 on sm_90, 57-64 KiB shared, no spills.
    return dict(BLOCK_M=128, BLOCK_N=32 if head_dim > 64 else 64, num_warps=8, num_stages=2)


def window_attention_meta(arch: int | None, dtype: torch.dtype, group: int, head_dim: int) -> dict:
    """Constexprs and launch options of `_window_attention_kernel`, except PAGE_SIZE (read off the cache):
    what the launcher passes and what the static check compiles."""
    # fp32 stays fp32 ("ieee"): the fp32 path is the exact one; 16-bit inputs take the tensor cores.
    return dict(GROUP=group, HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
                DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32",
                **window_attention_config(arch, dtype, head_dim))


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, kept_lens: torch.Tensor, cu_seqlens: torch.Tensor,
                     scale: float | None = None) -> torch.Tensor:
    """Attention of packed chunks over [their sequence's kept pages ; the chunk itself, causally].

    q [T, nh, hd]; k, v [T, nkv, hd] (the chunks' own keys/values, work buffer), nh % nkv == 0 (GQA);
    cu_seqlens [B+1] (chunk b is rows cu_seqlens[b]:cu_seqlens[b+1]); kept_lens [B] (kept entries each
    chunk sees, all fully visible); block_tables [B, max_pages]: entry i of sequence b lives in page
    block_tables[b, i // page_size] at offset i % page_size of k_cache, v_cache [num_pages, page_size, nkv, hd].
    Index tensors may be int32 or int64. Mask of a chunk of 3 slots with 2 kept entries
    (rows: chunk slots; columns: kept | chunk):
        1 1 | 1 0 0
        1 1 | 1 1 0
        1 1 | 1 1 1
    Returns out [T, nh, hd] in q's dtype (fp32 accumulation). Reads the cache only; writes nothing.
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    num_seqs = cu_seqlens.shape[0] - 1
    assert q.dtype in (torch.float32, torch.float16, torch.bfloat16), f"unsupported dtype {q.dtype}"
    assert k.shape == (num_tokens, num_kv_heads, head_dim) and v.shape == k.shape, "k/v must be [T, nkv, hd]"
    assert k.dtype == q.dtype and v.dtype == q.dtype, "q, k, v must share a dtype"
    assert num_heads % num_kv_heads == 0, "num_heads must be a multiple of num_kv_heads"
    assert k_cache.dim() == 4 and k_cache.shape[2:] == (num_kv_heads, head_dim) and v_cache.shape == k_cache.shape
    assert block_tables.dim() == 2 and block_tables.shape[0] == num_seqs, "block_tables must be [B, max_pages]"
    assert kept_lens.shape == (num_seqs,), "kept_lens must be [B]"
    for name, t in (("block_tables", block_tables), ("kept_lens", kept_lens), ("cu_seqlens", cu_seqlens)):
        assert t.dtype in (torch.int32, torch.int64), f"{name}: expected int32 or int64, got {t.dtype}"
    scale = scale if scale is not None else 1.0 / math.sqrt(head_dim)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    k_cache, v_cache = (t if t.stride(-1) == 1 else t.contiguous() for t in (k_cache, v_cache))
    block_tables, kept_lens, cu_seqlens = block_tables.contiguous(), kept_lens.contiguous(), cu_seqlens.contiguous()
    out = torch.empty_like(q)
    if num_tokens == 0 or num_seqs == 0:
        return out

    # int32 offsets in the kernel (checked here).
    assert max(q.numel(), k.numel(), k_cache.numel(), v_cache.numel()) < 2 ** 31, "tensor too large for int32 offsets"
    meta = window_attention_meta(device_arch(q.device), q.dtype, num_heads // num_kv_heads, head_dim)
    num_tiles = triton.cdiv(num_tokens, meta["BLOCK_M"]) + num_seqs  # upper bound; programs past the last tile exit
    _window_attention_kernel[(num_tiles, num_heads)](
        q, k, v, k_cache, v_cache, block_tables, kept_lens, cu_seqlens, out,
        num_seqs, scale * LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        PAGE_SIZE=k_cache.shape[1], **meta)
    return out
