"""Triton building blocks shared by the attention kernels: one tile of K/V gathered from the paged cache
through a block table, and one online-softmax update (fp32 `m_i`, `l_i`, `acc`; scores in log2 units)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_paged_kv_tile(k_cache_ptr, v_cache_ptr, block_table_row_ptr, offs_n, n_mask, offs_d, d_mask, kv_head,
                       stride_k_cache_page, stride_k_cache_slot, stride_k_cache_head,
                       stride_v_cache_page, stride_v_cache_slot, stride_v_cache_head,
                       PAGE_SIZE: tl.constexpr, DTYPE: tl.constexpr):
    # entry j lives in page block_table[j // PAGE_SIZE], slot j % PAGE_SIZE; int32 offsets: fewer registers
    page = tl.load(block_table_row_ptr + offs_n // PAGE_SIZE, mask=n_mask, other=0).to(tl.int32)
    slot = offs_n % PAGE_SIZE
    kv_mask = n_mask[:, None] & d_mask[None, :]
    k_offs = page * stride_k_cache_page + slot * stride_k_cache_slot + kv_head * stride_k_cache_head
    v_offs = page * stride_v_cache_page + slot * stride_v_cache_slot + kv_head * stride_v_cache_head
    k = tl.load(k_cache_ptr + k_offs[:, None] + offs_d[None, :], mask=kv_mask, other=0.0).to(DTYPE)
    v = tl.load(v_cache_ptr + v_offs[:, None] + offs_d[None, :], mask=kv_mask, other=0.0).to(DTYPE)
    return k, v                                                            # (BLOCK_N, BLOCK_D) each


@triton.jit
def online_softmax_step(acc, m_i, l_i, qk, v, DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # qk is already in log2 units and masked with -inf; every row has seen a visible column before or here.
    m_ij = tl.maximum(m_i, tl.max(qk, axis=1))
    p = tl.exp2(qk - m_ij[:, None])
    alpha = tl.exp2(m_i - m_ij)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = tl.dot(p.to(DTYPE), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
    return acc, m_ij, l_i
