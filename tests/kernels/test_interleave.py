"""The first layer read by slot index (`vxl.kernels.interleave`): the typed QKV over (source rows, beacon)
and the residual gather-add, against the references built from the materialised interleave."""
from __future__ import annotations

import pytest
import torch
from helpers import assert_half_error_within_twice_torch

from vxl.vst import interleave
from vxl.kernels import reference
from vxl.kernels.interleave import interleave_add, typed_qkv_rope_interleaved

THETA = 1e6
ALL_RATIOS = [(1, 0), (2, 0), (2, 1), (4, 0), (4, 3), (8, 0), (8, 5), (12, 0), (12, 7), (16, 0), (16, 9)]


def chunk_is_vst(num_src: int, ratio: int, rem: int) -> torch.Tensor:
    """Slots of one chunk by the engine's rule (ratio 0: text, no VSTs)."""
    return interleave(num_src, ratio, rem)[0] if ratio else torch.zeros(num_src, dtype=torch.bool)


def layout(chunks, index_dtype=torch.int32):
    """chunks: (num_src, ratio, rem) each -> (cu_seqlens, cu_src, ratios, rems), is_vst [T], is_text [T]."""
    slot_types = [chunk_is_vst(*c) for c in chunks]
    cu_seqlens = torch.tensor([0] + [len(t) for t in slot_types]).cumsum(0)
    cu_src = torch.tensor([0] + [c[0] for c in chunks]).cumsum(0)
    ratios, rems = torch.tensor([c[1] for c in chunks]), torch.tensor([c[2] for c in chunks])
    is_text = torch.cat([torch.full((len(t),), c[1] == 0) for c, t in zip(chunks, slot_types)])
    desc = tuple(t.to(index_dtype) for t in (cu_seqlens, cu_src, ratios, rems))
    return desc, torch.cat(slot_types), is_text


def make_step(chunks, hidden_size=40, num_heads=4, num_kv_heads=2, head_dim=16, page_size=16,
              dtype=torch.float32, index_dtype=torch.int32, seed=0, num_kept_before=13):
    """Random first-layer inputs of a packed step: (args without the caches, k_cache, v_cache).
    VST rows and text rows are kept (random free slots), raw visual rows are not."""
    gen = torch.Generator().manual_seed(seed)
    desc, is_vst, is_text = layout(chunks, index_dtype)
    num_tokens, num_src = is_vst.shape[0], int(desc[1][-1])
    num_cols = (num_heads + 2 * num_kv_heads) * head_dim

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=gen) * std).to(dtype)

    keep = is_vst | is_text
    positions = num_kept_before + torch.arange(num_tokens)
    kept_positions = torch.where(keep, num_kept_before + keep.cumsum(0) - 1,
                                 torch.randint(0, 99, (num_tokens,), generator=gen))
    num_pages = num_tokens // page_size + 3
    slot_mapping = torch.where(keep, torch.randperm(num_pages * page_size, generator=gen)[:num_tokens], -1)
    args = (randn(num_src, hidden_size, std=3.0), randn(hidden_size, std=3.0), 1.0 + randn(hidden_size, std=0.2),
            1e-6, randn(num_cols, hidden_size, std=hidden_size ** -0.5), randn(num_cols),
            randn(num_cols, hidden_size, std=hidden_size ** -0.5), randn(num_cols), *desc,
            positions.to(index_dtype), kept_positions.to(index_dtype), slot_mapping.to(index_dtype))
    caches = (randn(num_pages, page_size, num_kv_heads, head_dim), randn(num_pages, page_size, num_kv_heads, head_dim))
    return args, *caches


def run_both(args, k_cache, v_cache, num_heads=4, num_kv_heads=2):
    """(kernel q, k, v, k_cache, v_cache), (reference ...), each on its own copy of the caches."""
    kc, vc, kc_ref, vc_ref = k_cache.clone(), v_cache.clone(), k_cache.clone(), v_cache.clone()
    out = typed_qkv_rope_interleaved(*args, kc, vc, num_heads, num_kv_heads, THETA)
    ref = reference.typed_qkv_rope_interleaved(*args, kc_ref, vc_ref, num_heads, num_kv_heads, THETA)
    return (*out, kc, vc), (*ref, kc_ref, vc_ref)


def assert_all_close(out, ref, atol=1e-5):
    for name, a, b in zip(("q", "k", "v", "k_cache", "v_cache"), out, ref):
        torch.testing.assert_close(a, b, atol=atol, rtol=atol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("ratio,rem", ALL_RATIOS)
def test_one_window_fp32(ratio, rem):
    args, k_cache, v_cache = make_step([(29, ratio, rem)])
    out, ref = run_both(args, k_cache, v_cache)
    assert_all_close(out, ref)
    written = args[-1][args[-1] >= 0].long()
    untouched = torch.ones(k_cache.shape[:2], dtype=torch.bool)
    untouched[written // k_cache.shape[1], written % k_cache.shape[1]] = False
    assert torch.equal(out[3][untouched], k_cache[untouched]) and torch.equal(out[4][untouched], v_cache[untouched])


@pytest.mark.parametrize("chunks", [[(5, 8, 2)], [(11, 16, 4), (3, 12, 0)], [(9, 0, 0)], [(7, 0, 0), (1, 0, 0)]],
                         ids=["window_without_vst", "two_windows_without_vst", "text", "text_and_decode"])
def test_steps_without_vst(chunks):
    """No VST slot at all: a plain fused norm + QKV + RoPE over the source rows (S == T, no VST tile)."""
    args, k_cache, v_cache = make_step(chunks, seed=1)
    assert args[0].shape[0] == args[-1].shape[0]
    out, ref = run_both(args, k_cache, v_cache)
    assert_all_close(out, ref)


PACKED = [(6, 0, 0), (29, 4, 2), (1, 0, 0), (13, 16, 9), (5, 12, 3), (40, 1, 0), (17, 2, 1)]


@pytest.mark.parametrize("group,num_kv_heads,head_dim,page_size", [(1, 3, 16, 1), (2, 2, 32, 16), (7, 1, 16, 16),
                                                                   (3, 1, 24, 1)])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_packed_step(group, num_kv_heads, head_dim, page_size, index_dtype):
    """Text, decode and windows (with and without VSTs) in one step; GQA groups, page sizes, index dtypes."""
    num_heads = group * num_kv_heads
    args, k_cache, v_cache = make_step(PACKED, hidden_size=37, num_heads=num_heads, num_kv_heads=num_kv_heads,
                                       head_dim=head_dim, page_size=page_size, index_dtype=index_dtype, seed=2)
    out, ref = run_both(args, k_cache, v_cache, num_heads, num_kv_heads)
    assert_all_close(out, ref)


def _to(args, dtype):
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


@pytest.mark.parametrize("chunks", [[(37, 2, 0)], [(37, 8, 3)], [(23, 16, 0), (4, 0, 0), (31, 12, 5)]])
def test_fp16_error_vs_float64(chunks):
    """fp16: the kernel's error vs a float64 reference is at most twice torch's own fp16 error (and < 1e-3)."""
    args, k_cache, v_cache = make_step(chunks, dtype=torch.float16, seed=4)
    out, ref16 = run_both(args, k_cache, v_cache)
    kc64, vc64 = k_cache.double(), v_cache.double()
    ref64 = (*reference.typed_qkv_rope_interleaved(*_to(args, torch.float64), kc64, vc64, 4, 2, THETA), kc64, vc64)
    for a, r16, r64 in zip(out, ref16, ref64):
        assert_half_error_within_twice_torch(a, r16, r64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("chunks", [[(29, r, rem)] for r, rem in ALL_RATIOS[::2]] + [PACKED, [(9, 0, 0)]])
def test_interleave_add(chunks, dtype):
    """The residual gather-add equals out + the materialised slots, bit for bit (one rounding per element)."""
    gen = torch.Generator().manual_seed(5)
    desc, is_vst, _ = layout(chunks)
    hidden_size = 300   # more than one column block
    src = torch.randn(int(desc[1][-1]), hidden_size, generator=gen).to(dtype)
    beacon = torch.randn(hidden_size, generator=gen).to(dtype)
    out = torch.randn(is_vst.shape[0], hidden_size, generator=gen).to(dtype)
    expected = reference.interleave_add(out.clone(), src, beacon, *desc)
    got = interleave_add(out.clone(), src, beacon, *desc)
    assert torch.equal(got, expected)
    assert torch.equal(expected[is_vst], out[is_vst] + beacon) and torch.equal(expected[~is_vst], out[~is_vst] + src)


@pytest.mark.parametrize("chunks", [[(29, r, rem)] for r, rem in ALL_RATIOS] + [PACKED])
def test_reference_slots_follow_the_rule(chunks):
    """reference.interleave_slots places the source rows and the beacon exactly where vst.interleave says."""
    gen = torch.Generator().manual_seed(6)
    desc, is_vst, _ = layout(chunks)
    src, beacon = torch.randn(int(desc[1][-1]), 8, generator=gen), torch.randn(8, generator=gen)
    hidden, ref_is_vst = reference.interleave_slots(src, beacon, *desc)
    assert torch.equal(ref_is_vst, is_vst)
    assert torch.equal(hidden[~is_vst], src) and bool((hidden[is_vst] == beacon).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot is wrong in the Triton CPU interpreter")
def test_bf16_cuda():
    args, k_cache, v_cache = make_step([(300, 8, 0), (5, 0, 0), (1440, 16, 7)], hidden_size=256, num_heads=8,
                                       num_kv_heads=2, head_dim=64, dtype=torch.bfloat16, seed=7)
    args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    out, ref = run_both(args, k_cache.cuda(), v_cache.cuda(), 8, 2)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a.float(), b.float(), atol=3e-2, rtol=2e-2)
