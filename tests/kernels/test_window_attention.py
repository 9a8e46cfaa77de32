"""Triton window attention against `reference.window_attention` and a dense float64 attention of the same mask."""
from __future__ import annotations

import math

import pytest
import torch

from helpers import assert_half_error_within_twice_torch, paged_cache

from vxl.kernels import reference
from vxl.kernels.window_attention import window_attention


def make_case(chunk_lens, kept_lens, num_heads, num_kv_heads, head_dim, dtype, seed=0):
    """Random chunks and kept entries: q, k, v [T, ...], cu_seqlens, and the kept K/V per sequence."""
    gen = torch.Generator().manual_seed(seed)
    num_tokens = sum(chunk_lens)
    q = torch.randn(num_tokens, num_heads, head_dim, generator=gen).to(dtype)
    k = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(dtype)
    v = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(dtype)
    kept_k = [torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype) for n in kept_lens]
    kept_v = [torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype) for n in kept_lens]
    cu_seqlens = torch.tensor([0, *chunk_lens]).cumsum(0)
    return q, k, v, cu_seqlens, kept_k, kept_v


def dense_float64(q, k, v, cu_seqlens, kept_k, kept_v):
    """Independent float64 attention from the contiguous kept K/V: [kept (all visible) ; chunk (causal)]."""
    out = torch.empty(q.shape, dtype=torch.float64)
    group = q.shape[1] // k.shape[1]
    for b in range(len(kept_k)):
        s, e = int(cu_seqlens[b]), int(cu_seqlens[b + 1])
        m = kept_k[b].shape[0]
        keys = torch.cat([kept_k[b], k[s:e]]).double().repeat_interleave(group, 1)
        values = torch.cat([kept_v[b], v[s:e]]).double().repeat_interleave(group, 1)
        scores = torch.einsum("nhd,mhd->hnm", q[s:e].double(), keys) / math.sqrt(q.shape[-1])
        visible = torch.ones(e - s, m + e - s, dtype=torch.bool)
        visible[:, m:] = torch.ones(e - s, e - s, dtype=torch.bool).tril()
        probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        out[s:e] = torch.einsum("hnm,mhd->nhd", probs, values)
    return out


def run(chunk_lens, kept_lens, num_heads, num_kv_heads, head_dim, page_size, dtype, permute=True, seed=0):
    q, k, v, cu_seqlens, kept_k, kept_v = make_case(chunk_lens, kept_lens, num_heads, num_kv_heads, head_dim,
                                                    dtype, seed)
    k_cache, v_cache, block_tables = paged_cache(kept_k, kept_v, page_size, permute, seed=seed)
    cache_before = (k_cache.clone(), v_cache.clone())
    args = (q, k, v, k_cache, v_cache, block_tables, torch.tensor(kept_lens), cu_seqlens)
    out = window_attention(*args)
    assert torch.equal(k_cache, cache_before[0]) and torch.equal(v_cache, cache_before[1]), "cache was written"
    return out, reference.window_attention(*args), dense_float64(q, k, v, cu_seqlens, kept_k, kept_v)


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("group,num_kv_heads", [(1, 2), (2, 2), (7, 1)])
def test_fp32_pages_and_groups(page_size, group, num_kv_heads):
    # cache lengths 0, 1 and odd; a one-token chunk; a chunk spanning several query tiles
    out, ref, ref64 = run([5, 1, 37, 18], [0, 1, 23, 40], group * num_kv_heads, num_kv_heads, 16,
                          page_size, torch.float32)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), ref64, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ratio,head_dim", [(2, 32), (16, 24)])
def test_video_window_other_head_dims(ratio, head_dim):
    """One interleaved window (raw + VST slots) over a long kept cache; head_dim 32, and 24 (not a power of 2)."""
    window = 40 + 40 // ratio
    out, ref, ref64 = run([window], [71], 6, 2, head_dim, 16, torch.float32, seed=ratio)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), ref64, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("page_size", [1, 16])
def test_permuted_block_table_matches_contiguous(page_size):
    args = ([9, 26], [17, 33], 4, 2, 16, page_size, torch.float32)
    out_permuted = run(*args, permute=True)[0]
    out_contiguous = run(*args, permute=False)[0]
    assert torch.equal(out_permuted, out_contiguous)


def test_int64_index_tensors():
    q, k, v, cu_seqlens, kept_k, kept_v = make_case([6, 11], [3, 20], 4, 2, 16, torch.float32)
    k_cache, v_cache, block_tables = paged_cache(kept_k, kept_v, 16, True)
    kept_lens = torch.tensor([3, 20])
    out32 = window_attention(q, k, v, k_cache, v_cache, block_tables, kept_lens.int(), cu_seqlens.int())
    out64 = window_attention(q, k, v, k_cache, v_cache, block_tables.long(), kept_lens, cu_seqlens.long())
    assert torch.equal(out32, out64)


@pytest.mark.parametrize("page_size,group", [(1, 7), (16, 2)])
def test_fp16_error_vs_float64(page_size, group):
    """The kernel's fp16 error is at most twice that of the fp16 torch reference (both vs float64)."""
    out, ref16, ref64 = run([7, 30], [1, 45], group * 2, 2, 32, page_size, torch.float16, seed=7)
    assert_half_error_within_twice_torch(out, ref16, ref64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot is wrong in the Triton CPU interpreter")
def test_bf16_cuda():
    q, k, v, cu_seqlens, kept_k, kept_v = make_case([300, 17], [1000, 0], 28, 4, 128, torch.bfloat16)
    k_cache, v_cache, block_tables = paged_cache(kept_k, kept_v, 16, True)
    args = (q, k, v, k_cache, v_cache, block_tables, torch.tensor([1000, 0]), cu_seqlens)
    args = tuple(a.cuda() for a in args)
    out = window_attention(*args)
    ref64 = dense_float64(q, k, v, cu_seqlens, kept_k, kept_v)
    ref16 = reference.window_attention(*args)
    err = (out.cpu().double() - ref64).abs().max().item()
    err_torch = (ref16.cpu().double() - ref64).abs().max().item()
    assert err <= 2 * err_torch + 1e-6
