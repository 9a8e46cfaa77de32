"""The first layer of a step with VSTs, read by slot index: the interleaved window is never materialised.

A step packs B chunks. Chunk b owns slots [cu_seqlens[b], cu_seqlens[b+1]) and source rows
[cu_src[b], cu_src[b+1]) of `src` (its text embeddings, or its window's raw visual embeddings); with
ratio r = ratios[b] > 0 and carried remainder rem = rems[b], slot j of the chunk is a VST iff
j % (r+1) == r - rem (r = 0: no VSTs). The VSTs before slot j number (j + rem) // (r+1), hence

    raw row k  (src row cu_src[b] + k)  ->  slot  k + (k + rem) // r
    VST v      (the beacon row)         ->  slot  (r - rem) + v (r+1)
    r = 4, rem = 2:   src  a b c d e f          slots  a b V c d e f V

Both kernels tile rows by type, not by slot: raw tiles walk `src` in order (contiguous loads, each raw row
normalised once), VST tiles read the one normalised beacon row; each row is then written to its slot.
The residual stream needs the interleaved embeddings once, after attention: `interleave_add` adds each
slot's source row into the attention output in place, so the first interleaved tensor that exists is
already layer 0's residual (same traffic as a plain residual add, no [T, H] copy before layer 0).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from vxl.kernels.arch import device_arch
from vxl.kernels.typed_qkv import (_bias_rope_store, _gathered_gemm_halves, check_qkv_args, qkv_launch_args,
                                   rms_norm_rows)


@triton.jit
def _slot_rows(tile, num_src, num_tokens, cu_seqlens_ptr, cu_src_ptr, ratios_ptr, rems_ptr, num_chunks,
               BLOCK_M: tl.constexpr):
    # Tiles 0 .. cdiv(num_src)-1 cover the raw rows (= src rows), the next ones the VST rows of the step.
    # Returns (is_vst_tile, slots, src_rows, row_mask); src_rows of VST rows is num_src (the beacon row).
    num_src_tiles = tl.cdiv(num_src, BLOCK_M)
    is_vst_tile = tile >= num_src_tiles
    first = tl.where(is_vst_tile, tile - num_src_tiles, tile) * BLOCK_M
    offs = first + tl.arange(0, BLOCK_M)
    row_mask = offs < tl.where(is_vst_tile, num_tokens - num_src, num_src)
    chunk = tl.zeros([BLOCK_M], dtype=tl.int32)
    for b in range(1, num_chunks):  # chunk of each row: chunk starts at or below it (few chunks per step)
        src_start = tl.load(cu_src_ptr + b).to(tl.int32)
        vst_start = tl.load(cu_seqlens_ptr + b).to(tl.int32) - src_start
        chunk += (offs >= tl.where(is_vst_tile, vst_start, src_start)).to(tl.int32)
    slot_start = tl.load(cu_seqlens_ptr + chunk).to(tl.int32)
    src_start = tl.load(cu_src_ptr + chunk).to(tl.int32)
    ratio = tl.load(ratios_ptr + chunk).to(tl.int32)
    rem = tl.load(rems_ptr + chunk).to(tl.int32)
    if is_vst_tile:
        vst_idx = offs - (slot_start - src_start)        # the k-th VST sits at slot r - rem + k (r + 1): vxl.vst
        slots = slot_start + ratio - rem + vst_idx * (ratio + 1)
        src_rows = tl.zeros([BLOCK_M], dtype=tl.int32) + num_src
    else:
        raw_idx = offs - src_start
        slots = slot_start + raw_idx + tl.where(ratio > 0, (raw_idx + rem) // tl.maximum(ratio, 1), 0)
        src_rows = offs
    return is_vst_tile, slots, src_rows, row_mask


@triton.jit
def _typed_qkv_rope_interleaved_kernel(
        x_ptr, w_qkv_ptr, b_qkv_ptr, w_qkv_vst_ptr, b_qkv_vst_ptr,
        cu_seqlens_ptr, cu_src_ptr, ratios_ptr, rems_ptr,
        positions_ptr, kept_positions_ptr, slot_mapping_ptr, inv_freq_ptr,
        q_ptr, k_ptr, v_ptr, k_cache_ptr, v_cache_ptr,
        num_src, num_tokens, num_chunks, hidden_size,
        stride_x_t, stride_w_n, stride_q_t, stride_k_t, stride_v_t,
        stride_k_cache_page, stride_k_cache_slot, stride_v_cache_page, stride_v_cache_slot,
        NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
        HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, PAGE_SIZE: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # Program (tile, head): BLOCK_M rows of one type x one head; x = normalised [src ; beacon].
    head = tl.program_id(1)
    is_vst_tile, slots, src_rows, row_mask = _slot_rows(
        tl.program_id(0), num_src, num_tokens, cu_seqlens_ptr, cu_src_ptr, ratios_ptr, rems_ptr, num_chunks,
        BLOCK_M)
    w_base = w_qkv_ptr
    b_base = b_qkv_ptr
    if is_vst_tile:
        w_base = w_qkv_vst_ptr
        b_base = b_qkv_vst_ptr
    offs_d = tl.arange(0, BLOCK_HALF)
    d_mask = offs_d < HALF
    col_lo = head * HEAD_DIM + offs_d
    acc_lo, acc_hi = _gathered_gemm_halves(x_ptr, w_base, src_rows, row_mask, col_lo, d_mask, hidden_size,
                                           stride_x_t, stride_w_n, HALF, BLOCK_M, BLOCK_HALF, BLOCK_K,
                                           DOT_PRECISION)
    _bias_rope_store(acc_lo, acc_hi, b_base, slots, row_mask, col_lo, offs_d, d_mask, head,
                     positions_ptr, kept_positions_ptr, slot_mapping_ptr, inv_freq_ptr,
                     q_ptr, k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, stride_q_t, stride_k_t, stride_v_t,
                     stride_k_cache_page, stride_k_cache_slot, stride_v_cache_page, stride_v_cache_slot,
                     NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, HALF, PAGE_SIZE, HAS_BIAS)


@triton.jit
def _interleave_add_kernel(out_ptr, src_ptr, beacon_ptr, cu_seqlens_ptr, cu_src_ptr, ratios_ptr, rems_ptr,
                           num_src, num_tokens, num_chunks, hidden_size, stride_out_t, stride_src_t,
                           BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    # Program (tile, column block): out[slot] += its source row, added in fp32 and rounded once (= torch's add).
    is_vst_tile, slots, src_rows, row_mask = _slot_rows(
        tl.program_id(0), num_src, num_tokens, cu_seqlens_ptr, cu_src_ptr, ratios_ptr, rems_ptr, num_chunks,
        BLOCK_M)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = row_mask[:, None] & (offs_h < hidden_size)[None, :]
    base = src_ptr
    stride = stride_src_t
    if is_vst_tile:  # every VST row reads the beacon row
        base = beacon_ptr
        stride = stride_src_t * 0
    x = tl.load(base + src_rows[:, None] * stride + offs_h[None, :], mask=mask, other=0.0)
    out_ptrs = out_ptr + slots[:, None] * stride_out_t + offs_h[None, :]
    out = tl.load(out_ptrs, mask=mask, other=0.0)
    tl.store(out_ptrs, (out.to(tl.float32) + x.to(tl.float32)).to(out_ptr.dtype.element_ty), mask=mask)


def interleave_add_config(arch: int | None, hidden_size: int) -> dict:
    """Tiles of `_interleave_add_kernel` on `arch` (`vxl.kernels.arch`; None: the interpreter)."""
    # An elementwise add: 16 rows x 256 columns per program is 32 values per thread at 4 warps, no spills and
    # no shared memory on sm_80 / sm_90 (bench/results/kernels_static.json); the same everywhere.
    return dict(BLOCK_M=16, BLOCK_H=min(256, triton.next_power_of_2(hidden_size)), num_warps=4)


def _check_layout(src, beacon, cu_seqlens, cu_src, ratios, rems, num_tokens: int) -> None:
    num_chunks = ratios.shape[0]
    assert src.dim() == 2 and beacon.shape == (src.shape[1],) and beacon.dtype == src.dtype, \
        "src [S, H] and beacon [H] in one dtype"
    assert num_tokens >= src.shape[0], "fewer slots than source rows"
    for name, t, n in (("cu_seqlens", cu_seqlens, num_chunks + 1), ("cu_src", cu_src, num_chunks + 1),
                       ("rems", rems, num_chunks)):
        assert t.shape == (n,), f"{name}: expected shape ({n},), got {tuple(t.shape)}"
    for name, t in (("cu_seqlens", cu_seqlens), ("cu_src", cu_src), ("ratios", ratios), ("rems", rems)):
        assert t.dtype in (torch.int32, torch.int64) and t.device == src.device, f"{name}: int32/int64 on src's device"


def typed_qkv_rope_interleaved(src: torch.Tensor, beacon: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                               w_qkv: torch.Tensor, b_qkv: torch.Tensor | None,
                               w_qkv_vst: torch.Tensor, b_qkv_vst: torch.Tensor | None,
                               cu_seqlens: torch.Tensor, cu_src: torch.Tensor,
                               ratios: torch.Tensor, rems: torch.Tensor, positions: torch.Tensor,
                               kept_positions: torch.Tensor, slot_mapping: torch.Tensor,
                               k_cache: torch.Tensor, v_cache: torch.Tensor,
                               num_heads: int, num_kv_heads: int, rope_theta: float,
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`typed_qkv_rope` of the interleaved slots, read from the source rows and the beacon row by slot index.

    src [S, H] (chunk b's rows at cu_src[b]:cu_src[b+1]); beacon [H] (every VST slot's input row).
    cu_seqlens [B+1] (slot boundaries, T = cu_seqlens[-1] = len(positions)), cu_src [B+1], ratios [B]
    (0: the chunk has no VSTs), rems [B]: the layout in the module docstring; the caller guarantees
    cu_seqlens[b+1] - cu_seqlens[b] = n_b + (n_b + rems[b]) // ratios[b] with n_b the chunk's source rows.
    The other arguments, the outputs q, k, v [T, ...] (slot order) and the in-place cache writes are those
    of `typed_qkv_rope`. No [T, H] tensor is built: RMSNorm runs on the S source rows and the beacon row.
    """
    num_tokens, num_src = positions.shape[0], src.shape[0]
    head_dim = check_qkv_args(src, norm_weight, w_qkv, b_qkv, w_qkv_vst, b_qkv_vst, positions,
                              kept_positions, slot_mapping, k_cache, v_cache, num_heads, num_kv_heads)
    _check_layout(src, beacon, cu_seqlens, cu_src, ratios, rems, num_tokens)
    dtype, device = src.dtype, src.device
    q = torch.empty(num_tokens, num_heads, head_dim, dtype=dtype, device=device)
    k = torch.empty(num_tokens, num_kv_heads, head_dim, dtype=dtype, device=device)
    v = torch.empty_like(k)
    if num_tokens == 0:
        return q, k, v
    src, norm_weight = src.contiguous(), norm_weight.contiguous()
    weights, meta = qkv_launch_args(w_qkv, b_qkv, w_qkv_vst, b_qkv_vst, head_dim, rope_theta)
    x = torch.empty(num_src + 1, src.shape[1], dtype=dtype, device=device)   # (S + 1, H): [src ; beacon], normalised
    rms_norm_rows(src, norm_weight, eps, x)
    rms_norm_rows(beacon.reshape(1, -1), norm_weight, eps, x[num_src:])
    block_m = meta["BLOCK_M"]
    grid = (triton.cdiv(num_src, block_m) + triton.cdiv(num_tokens - num_src, block_m),
            num_heads + 2 * num_kv_heads)
    _typed_qkv_rope_interleaved_kernel[grid](
        x, *weights[:4], cu_seqlens, cu_src, ratios, rems,
        positions.contiguous(), kept_positions.contiguous(), slot_mapping.contiguous(), weights[4],
        q, k, v, k_cache, v_cache,
        num_src, num_tokens, ratios.shape[0], src.shape[1],
        x.stride(0), weights[0].stride(0), q.stride(0), k.stride(0), v.stride(0),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, PAGE_SIZE=k_cache.shape[1], **meta)
    return q, k, v


def interleave_add(out: torch.Tensor, src: torch.Tensor, beacon: torch.Tensor, cu_seqlens: torch.Tensor,
                   cu_src: torch.Tensor, ratios: torch.Tensor, rems: torch.Tensor) -> torch.Tensor:
    """out [T, H] += the interleaved slots of (src [S, H], beacon [H]) (layout as in
    `typed_qkv_rope_interleaved`), in place; returns out. Each sum is rounded once to out's dtype."""
    num_tokens, hidden_size = out.shape
    _check_layout(src, beacon, cu_seqlens, cu_src, ratios, rems, num_tokens)
    assert out.dtype == src.dtype and out.stride(1) == 1 and src.shape[1] == hidden_size, "out [T, H] in src's dtype"
    assert max(out.numel(), src.numel()) < 2 ** 31, "tensor too large for int32 offsets"
    if num_tokens == 0:
        return out
    src, beacon = src.contiguous(), beacon.contiguous()
    meta = interleave_add_config(device_arch(out.device), hidden_size)
    num_src = src.shape[0]
    grid = (triton.cdiv(num_src, meta["BLOCK_M"]) + triton.cdiv(num_tokens - num_src, meta["BLOCK_M"]),
            triton.cdiv(hidden_size, meta["BLOCK_H"]))
    _interleave_add_kernel[grid](out, src, beacon, cu_seqlens, cu_src, ratios, rems,
                                 num_src, num_tokens, ratios.shape[0], hidden_size, out.stride(0), src.stride(0),
                                 **meta)
    return out
