"""Triton split-K paged decode attention against `reference.decode_attention` and a dense float64 attention.

On CPU the launcher uses 32-entry partitions, so the lengths below span one to several partitions.
"""
from __future__ import annotations

import math

import pytest
import torch

from helpers import assert_half_error_within_twice_torch, paged_cache
from vxl.kernels import reference
from vxl.kernels.decode_attention import decode_attention


def dense_float64(q, kept_k, kept_v):
    group = q.shape[1] // kept_k[0].shape[1]
    out = torch.empty(q.shape, dtype=torch.float64)
    for b, (k, v) in enumerate(zip(kept_k, kept_v)):
        k, v = k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
        probs = (torch.einsum("hd,mhd->hm", q[b].double(), k) / math.sqrt(q.shape[-1])).softmax(-1)
        out[b] = torch.einsum("hm,mhd->hd", probs, v)
    return out


def run(seq_lens, num_heads, num_kv_heads, head_dim, page_size, dtype, permute=True, spare_pages=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(len(seq_lens), num_heads, head_dim, generator=gen).to(dtype)
    kept_k = [torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype) for n in seq_lens]
    kept_v = [torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype) for n in seq_lens]
    k_cache, v_cache, block_tables = paged_cache(kept_k, kept_v, page_size, permute, spare_pages, seed)
    cache_before = (k_cache.clone(), v_cache.clone())
    args = (q, k_cache, v_cache, block_tables, torch.tensor(seq_lens, dtype=torch.int32))
    out = decode_attention(*args)
    assert torch.equal(k_cache, cache_before[0]) and torch.equal(v_cache, cache_before[1]), "cache was written"
    return out, reference.decode_attention(*args), dense_float64(q, kept_k, kept_v)


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("group,num_kv_heads", [(1, 2), (2, 2), (7, 1)])
def test_fp32_pages_and_groups(page_size, group, num_kv_heads):
    # lengths 1, odd, exactly one partition, and several partitions with a partial last one
    out, ref, ref64 = run([1, 19, 32, 101], group * num_kv_heads, num_kv_heads, 16, page_size, torch.float32)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), ref64, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_heads,head_dim", [(8, 32), (6, 24)])
def test_single_long_sequence(num_heads, head_dim):
    """One sequence split over many partitions (the flash-decoding case), spare block-table capacity;
    head_dim 32, and 24 (not a power of 2)."""
    out, ref, ref64 = run([1111], num_heads, 2, head_dim, 16, torch.float32, spare_pages=5, seed=1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), ref64, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("page_size", [1, 16])
def test_permuted_block_table_matches_contiguous(page_size):
    args = ([3, 77], 4, 2, 16, page_size, torch.float32)
    assert torch.equal(run(*args, permute=True)[0], run(*args, permute=False)[0])


def test_int64_index_tensors():
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(2, 4, 16, generator=gen)
    kept = [torch.randn(n, 2, 16, generator=gen) for n in (5, 40)]
    k_cache, v_cache, block_tables = paged_cache(kept, kept, 16, True)
    seq_lens = torch.tensor([5, 40])
    out32 = decode_attention(q, k_cache, v_cache, block_tables, seq_lens.int())
    out64 = decode_attention(q, k_cache, v_cache, block_tables.long(), seq_lens)
    assert torch.equal(out32, out64)


@pytest.mark.parametrize("page_size,group", [(1, 7), (16, 2)])
def test_fp16_error_vs_float64(page_size, group):
    """The kernel's fp16 error is at most twice that of the fp16 torch reference (both vs float64)."""
    out, ref16, ref64 = run([1, 45, 130], group * 2, 2, 32, page_size, torch.float16, seed=3)
    assert_half_error_within_twice_torch(out, ref16, ref64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot is wrong in the Triton CPU interpreter")
def test_bf16_cuda():
    gen = torch.Generator().manual_seed(4)
    seq_lens = [1, 700, 5000]
    q = torch.randn(3, 28, 128, generator=gen).to(torch.bfloat16)
    kept_k = [torch.randn(n, 4, 128, generator=gen).to(torch.bfloat16) for n in seq_lens]
    kept_v = [torch.randn(n, 4, 128, generator=gen).to(torch.bfloat16) for n in seq_lens]
    k_cache, v_cache, block_tables = paged_cache(kept_k, kept_v, 16, True)
    args = tuple(a.cuda() for a in (q, k_cache, v_cache, block_tables, torch.tensor(seq_lens)))
    ref64 = dense_float64(q, kept_k, kept_v)
    err = (decode_attention(*args).cpu().double() - ref64).abs().max().item()
    err_torch = (reference.decode_attention(*args).cpu().double() - ref64).abs().max().item()
    assert err <= 2 * err_torch + 1e-6
