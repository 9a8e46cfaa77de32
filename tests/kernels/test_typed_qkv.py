"""Triton typed QKV + RoPE (+ paged K/V write) against `reference.typed_qkv_rope`, on the interleave patterns."""
from __future__ import annotations

import pytest
import torch

from vxl.kernels import reference
from vxl.kernels.typed_qkv import typed_qkv_rope

THETA = 1e6


def interleave_is_vst(num_raw: int, ratio: int, rem: int) -> torch.Tensor:
    """is_vst of one window's slots by the Video-XL rule: slot j is a VST iff j % (r+1) == r - rem."""
    num_vst = (num_raw + rem) // ratio
    is_vst = torch.arange(num_raw + num_vst) % (ratio + 1) == ratio - rem
    assert int(is_vst.sum()) == num_vst
    return is_vst


def make_case(is_vst, hidden_size=48, num_heads=4, num_kv_heads=2, head_dim=16, page_size=16,
              dtype=torch.float32, index_dtype=torch.int64, bias=(True, True), num_kept_before=11, seed=0):
    """Random inputs of one window whose VST rows are kept: (args tuple, k_cache, v_cache)."""
    gen = torch.Generator().manual_seed(seed)
    num_tokens = is_vst.shape[0]
    num_cols = (num_heads + 2 * num_kv_heads) * head_dim

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=gen) * std).to(dtype)

    positions = num_kept_before + torch.arange(num_tokens)
    unused = torch.randint(0, 99, (num_tokens,), generator=gen)  # kept_positions of rows that are not kept
    kept_positions = torch.where(is_vst, num_kept_before + is_vst.cumsum(0) - 1, unused)
    num_pages = num_tokens // page_size + 3
    free_slots = torch.randperm(num_pages * page_size, generator=gen)[:num_tokens]
    slot_mapping = torch.where(is_vst, free_slots, -1)
    k_cache = randn(num_pages, page_size, num_kv_heads, head_dim)
    v_cache = randn(num_pages, page_size, num_kv_heads, head_dim)
    args = (randn(num_tokens, hidden_size, std=3.0), 1.0 + randn(hidden_size, std=0.2), 1e-6,
            randn(num_cols, hidden_size, std=hidden_size ** -0.5), randn(num_cols) if bias[0] else None,
            randn(num_cols, hidden_size, std=hidden_size ** -0.5), randn(num_cols) if bias[1] else None,
            is_vst, positions.to(index_dtype), kept_positions.to(index_dtype), slot_mapping.to(index_dtype))
    return args, k_cache, v_cache


def run_both(args, k_cache, v_cache, num_heads, num_kv_heads):
    """(kernel q, k, v, k_cache, v_cache), (reference ...), each on its own copy of the caches."""
    kc, vc, kc_ref, vc_ref = k_cache.clone(), v_cache.clone(), k_cache.clone(), v_cache.clone()
    out = typed_qkv_rope(*args, kc, vc, num_heads, num_kv_heads, THETA)
    ref = reference.typed_qkv_rope(*args, kc_ref, vc_ref, num_heads, num_kv_heads, THETA)
    return (*out, kc, vc), (*ref, kc_ref, vc_ref)


def check_untouched(k_cache_before, k_cache_after, slot_mapping):
    """Slots not named by slot_mapping keep their old values bit for bit."""
    page_size = k_cache_before.shape[1]
    written = torch.zeros(k_cache_before.shape[:2], dtype=torch.bool)
    kept = slot_mapping[slot_mapping >= 0].long()
    written[kept // page_size, kept % page_size] = True
    assert torch.equal(k_cache_before[~written], k_cache_after[~written])


@pytest.mark.parametrize("ratio,rem", [(1, 0), (2, 0), (2, 1), (4, 0), (4, 3), (8, 0), (8, 5),
                                       (12, 0), (12, 7), (16, 0), (16, 9)])
def test_interleave_fp32(ratio, rem):
    is_vst = interleave_is_vst(29, ratio, rem)
    args, k_cache, v_cache = make_case(is_vst)
    out, ref = run_both(args, k_cache, v_cache, 4, 2)
    for name, a, b in zip(("q", "k", "v", "k_cache", "v_cache"), out, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    check_untouched(k_cache, out[3], args[-1])
    check_untouched(v_cache, out[4], args[-1])


@pytest.mark.parametrize("pattern", ["no_vst", "all_vst", "text_all_kept"])
def test_row_type_extremes(pattern):
    num_tokens = 21
    is_vst = torch.full((num_tokens,), pattern == "all_vst")
    args, k_cache, v_cache = make_case(is_vst, seed=1)
    if pattern == "text_all_kept":  # text / decode rows: ordinary weights, every row kept
        args = (*args[:-2], args[8], torch.randperm(k_cache.shape[0] * k_cache.shape[1])[:num_tokens])
    out, ref = run_both(args, k_cache, v_cache, 4, 2)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    check_untouched(k_cache, out[3], args[-1])


@pytest.mark.parametrize("group,num_kv_heads,head_dim,page_size", [(1, 3, 16, 1), (2, 2, 32, 16), (7, 1, 16, 16),
                                                                   (7, 2, 32, 1), (3, 1, 24, 16)])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_heads_pages_index_dtypes(group, num_kv_heads, head_dim, page_size, index_dtype):
    is_vst = interleave_is_vst(33, 4, 2)
    num_heads = group * num_kv_heads
    args, k_cache, v_cache = make_case(is_vst, hidden_size=100, num_heads=num_heads, num_kv_heads=num_kv_heads,
                                       head_dim=head_dim, page_size=page_size, index_dtype=index_dtype, seed=2)
    out, ref = run_both(args, k_cache, v_cache, num_heads, num_kv_heads)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_long_context_positions():
    """Positions near 40k (a long kept cache): the in-kernel fp32 angles match the reference's."""
    args, k_cache, v_cache = make_case(interleave_is_vst(27, 16, 0), num_kept_before=40_011, seed=6)
    out, ref = run_both(args, k_cache, v_cache, 4, 2)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [(False, False), (True, False), (False, True)])
def test_optional_biases(bias):
    args, k_cache, v_cache = make_case(interleave_is_vst(25, 2, 1), bias=bias, seed=3)
    out, ref = run_both(args, k_cache, v_cache, 4, 2)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _to(args, dtype):
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


@pytest.mark.parametrize("ratio,rem", [(2, 0), (8, 3), (16, 0)])
def test_fp16_error_vs_float64(ratio, rem):
    """The kernel's fp16 error (vs a float64 reference) is at most twice torch's own fp16 error."""
    args, k_cache, v_cache = make_case(interleave_is_vst(37, ratio, rem), dtype=torch.float16, seed=4)
    out, ref16 = run_both(args, k_cache, v_cache, 4, 2)
    kc64, vc64 = k_cache.double(), v_cache.double()
    ref64 = (*reference.typed_qkv_rope(*_to(args, torch.float64), kc64, vc64, 4, 2, THETA), kc64, vc64)
    for name, a, r16, r64 in zip(("q", "k", "v", "k_cache", "v_cache"), out, ref16, ref64):
        err = (a.double() - r64).abs().max().item()
        err_torch = (r16.double() - r64).abs().max().item()
        assert err <= 2 * err_torch + 1e-6, f"{name}: kernel error {err:.2e} vs torch fp16 error {err_torch:.2e}"
        assert err <= 1e-3 * max(1.0, r64.abs().max().item()), f"{name}: error {err:.2e} above 1e-3 of the scale"
    check_untouched(k_cache, out[3], args[-1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot is wrong in the Triton CPU interpreter")
def test_bf16_cuda():
    args, k_cache, v_cache = make_case(interleave_is_vst(300, 8, 0), hidden_size=256, num_heads=8,
                                       num_kv_heads=2, head_dim=64, dtype=torch.bfloat16, seed=5)
    args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    out, ref = run_both(args, k_cache.cuda(), v_cache.cuda(), 8, 2)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a.float(), b.float(), atol=3e-2, rtol=2e-2)
