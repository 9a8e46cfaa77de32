"""Paged decode attention, split-K (flash-decoding): one query token per sequence over its kept pages.

Pass 1: one program per (sequence, KV head, cache partition) attends the whole GQA group to its partition
and writes a normalised partial output with its log-sum-exp. Pass 2 merges the partitions of each head.
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
def _decode_partition_kernel(
        q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, partial_out_ptr, partial_lse_ptr,
        qk_scale,
        stride_q_b, stride_q_h, stride_k_cache_page, stride_k_cache_slot, stride_k_cache_head,
        stride_v_cache_page, stride_v_cache_slot, stride_v_cache_head, stride_block_tables_b,
        stride_partial_out_b, stride_partial_out_h, stride_partial_out_p, stride_partial_lse_b, stride_partial_lse_h,
        GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        PAGE_SIZE: tl.constexpr, PARTITION_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
        DOT_PRECISION: tl.constexpr):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq).to(tl.int32)
    part_start = part * PARTITION_SIZE
    if part_start >= seq_len:  # the merge ignores partitions past the sequence's end
        return
    part_end = tl.minimum(part_start + PARTITION_SIZE, seq_len)
    dtype = q_ptr.dtype.element_ty

    offs_g = tl.arange(0, BLOCK_G)  # the query heads of this KV head's group, padded for tl.dot
    offs_d = tl.arange(0, BLOCK_D)
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD_DIM
    heads = kv_head * GROUP + offs_g
    q = tl.load(q_ptr + seq * stride_q_b + heads[:, None] * stride_q_h + offs_d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_G, BLOCK_D)
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for n0 in range(part_start, part_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < part_end
        k, v = load_paged_kv_tile(k_cache_ptr, v_cache_ptr, block_tables_ptr + seq * stride_block_tables_b,
                                  offs_n, n_mask, offs_d, d_mask, kv_head,
                                  stride_k_cache_page, stride_k_cache_slot, stride_k_cache_head,
                                  stride_v_cache_page, stride_v_cache_slot, stride_v_cache_head, PAGE_SIZE, dtype)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_G, BLOCK_N), log2 units
        qk = tl.where(n_mask[None, :], qk, float("-inf"))
        acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, qk, v, dtype, DOT_PRECISION)

    out_offs = seq * stride_partial_out_b + heads * stride_partial_out_h + part * stride_partial_out_p
    tl.store(partial_out_ptr + out_offs[:, None] + offs_d[None, :], acc / l_i[:, None],
             mask=g_mask[:, None] & d_mask[None, :])
    tl.store(partial_lse_ptr + seq * stride_partial_lse_b + heads * stride_partial_lse_h + part,
             m_i + tl.log2(l_i), mask=g_mask)


@triton.jit
def _decode_merge_kernel(
        partial_out_ptr, partial_lse_ptr, seq_lens_ptr, out_ptr,
        stride_partial_out_b, stride_partial_out_h, stride_partial_out_p, stride_partial_lse_b, stride_partial_lse_h,
        stride_out_b, stride_out_h,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PARTITION_SIZE: tl.constexpr, BLOCK_P: tl.constexpr):
    # out = sum_p 2^(lse_p - lse) * out_p over the sequence's partitions, merged BLOCK_P at a time.
    seq = tl.program_id(0)
    head = tl.program_id(1)
    num_parts = tl.cdiv(tl.load(seq_lens_ptr + seq).to(tl.int32), PARTITION_SIZE)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    m = tl.full([1], float("-inf"), dtype=tl.float32)
    l = tl.zeros([1], dtype=tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for p0 in range(0, num_parts, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        p_mask = offs_p < num_parts
        lse = tl.load(partial_lse_ptr + seq * stride_partial_lse_b + head * stride_partial_lse_h + offs_p,
                      mask=p_mask, other=float("-inf"))
        part_out = tl.load(partial_out_ptr + seq * stride_partial_out_b + head * stride_partial_out_h
                           + offs_p[:, None] * stride_partial_out_p + offs_d[None, :],
                           mask=p_mask[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_P, BLOCK_D)
        m_new = tl.maximum(m, tl.max(lse, axis=0))
        alpha = tl.exp2(m - m_new)
        w = tl.exp2(lse - m_new)
        l = l * alpha + tl.sum(w, axis=0)
        acc = acc * alpha + tl.sum(w[:, None] * part_out, axis=0)
        m = m_new
    tl.store(out_ptr + seq * stride_out_b + head * stride_out_h + offs_d, (acc / l).to(out_ptr.dtype.element_ty),
             mask=d_mask)


def decode_partition_config(arch: int | None, dtype: torch.dtype, head_dim: int) -> dict:
    """Tiles of `_decode_partition_kernel` on `arch` (`vxl.kernels.arch`; None: the interpreter).

    Registers and shared memory of every choice: bench/results/kernels_static.json (checked by
    tests/kernels/test_static_compile.py). A program holds the group's q (16, hd), an fp32 acc (16, hd) and
    K/V tiles (BLOCK_N, hd); PARTITION_SIZE entries per program (split-K).
    """
    if arch is None:  # the interpreter: small partitions exercise the merge on short CPU test caches
        return dict(PARTITION_SIZE=32, BLOCK_N=16, num_warps=4, num_stages=2)
    if dtype == torch.float32:
        # FMA, no tensor cores: 64 keys at 4 warps spill on sm_80 (248 bytes) and sm_90 (816 bytes), 32 keys at 4
        # warps on sm_90; 32 keys at 8 warps: 62-64 registers, 42 KiB shared, no spills.
        return dict(PARTITION_SIZE=512, BLOCK_N=32, num_warps=8, num_stages=2)
    # bf16/fp16 on sm_80 (mma.sync) and sm_90 (wgmma): 64 keys per step at 4 warps, 92-128 registers, 38 KiB
    # shared, no spills; 512 entries per partition: a 16k-entry cache is 32 partitions per (sequence, KV head).
    return dict(PARTITION_SIZE=512, BLOCK_N=64, num_warps=4, num_stages=2)


def decode_partition_meta(arch: int | None, dtype: torch.dtype, group: int, head_dim: int) -> dict:
    """Constexprs and launch options of `_decode_partition_kernel`, except PAGE_SIZE (read off the cache):
    what the launcher passes and what the static check compiles."""
    # The group's query heads are padded to 16 rows, the smallest tl.dot tile; fp32 stays fp32 ("ieee").
    return dict(GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
                BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
                DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32",
                **decode_partition_config(arch, dtype, head_dim))


def decode_merge_meta(arch: int | None, head_dim: int, partition_size: int, num_parts: int) -> dict:
    """Constexprs and launch options of `_decode_merge_kernel` (fp32 partials whatever the model dtype)."""
    # BLOCK_P partitions (<= 32) x hd fp32 values per step: 32 x 128 is 32 values per thread at 4 warps, no spills
    # on sm_80 / sm_90 (bench/results/kernels_static.json).
    return dict(HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)), PARTITION_SIZE=partition_size,
                BLOCK_P=min(32, triton.next_power_of_2(num_parts)), num_warps=4)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, seq_lens: torch.Tensor,
                     scale: float | None = None) -> torch.Tensor:
    """One query per sequence over all its kept entries (the new token's K/V already stored).

    q [B, nh, hd]; k_cache, v_cache [num_pages, page_size, nkv, hd], nh % nkv == 0 (GQA);
    block_tables [B, max_pages]: entry i of sequence b lives in page block_tables[b, i // page_size] at
    offset i % page_size; seq_lens [B] (entries to attend, >= 1). Index tensors may be int32 or int64.
    Mask: every query sees all of its sequence's seq_lens[b] entries (a row of ones).
    Returns out [B, nh, hd] in q's dtype (fp32 accumulation). Reads the cache only; writes nothing.
    """
    num_seqs, num_heads, head_dim = q.shape
    num_pages, page_size, num_kv_heads = k_cache.shape[:3]
    assert q.dtype in (torch.float32, torch.float16, torch.bfloat16), f"unsupported dtype {q.dtype}"
    assert k_cache.shape == (num_pages, page_size, num_kv_heads, head_dim) and v_cache.shape == k_cache.shape
    assert num_heads % num_kv_heads == 0, "num_heads must be a multiple of num_kv_heads"
    assert block_tables.dim() == 2 and block_tables.shape[0] == num_seqs, "block_tables must be [B, max_pages]"
    assert seq_lens.shape == (num_seqs,), "seq_lens must be [B]"
    for name, t in (("block_tables", block_tables), ("seq_lens", seq_lens)):
        assert t.dtype in (torch.int32, torch.int64), f"{name}: expected int32 or int64, got {t.dtype}"
    scale = scale if scale is not None else 1.0 / math.sqrt(head_dim)
    q = q if q.stride(-1) == 1 else q.contiguous()
    k_cache, v_cache = (t if t.stride(-1) == 1 else t.contiguous() for t in (k_cache, v_cache))
    block_tables, seq_lens = block_tables.contiguous(), seq_lens.contiguous()
    out = torch.empty_like(q)
    if num_seqs == 0:
        return out

    assert max(q.numel(), k_cache.numel(), v_cache.numel()) < 2 ** 31, "tensor too large for int32 offsets"
    # Partitions are bounded by the block table's capacity, so no host sync reads seq_lens.
    group = num_heads // num_kv_heads
    meta = decode_partition_meta(device_arch(q.device), q.dtype, group, head_dim)
    partition_size = meta["PARTITION_SIZE"]
    max_len = max(1, block_tables.shape[1] * page_size)
    num_parts = triton.cdiv(max_len, partition_size)
    partial_out = torch.empty(num_seqs, num_heads, num_parts, head_dim, dtype=torch.float32, device=q.device)
    partial_lse = torch.empty(num_seqs, num_heads, num_parts, dtype=torch.float32, device=q.device)
    _decode_partition_kernel[(num_seqs, num_kv_heads, num_parts)](
        q, k_cache, v_cache, block_tables, seq_lens, partial_out, partial_lse,
        scale * LOG2E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        partial_out.stride(0), partial_out.stride(1), partial_out.stride(2), partial_lse.stride(0),
        partial_lse.stride(1),
        PAGE_SIZE=page_size, **meta)
    _decode_merge_kernel[(num_seqs, num_heads)](
        partial_out, partial_lse, seq_lens, out,
        partial_out.stride(0), partial_out.stride(1), partial_out.stride(2), partial_lse.stride(0),
        partial_lse.stride(1), out.stride(0), out.stride(1),
        **decode_merge_meta(device_arch(q.device), head_dim, partition_size, num_parts))
    return out
