"""Typed QKV: RMSNorm -> per-row (ordinary | VST) projection -> bias -> RoPE, and the paged write of kept K/V.

Rows are grouped by type (raw rows first, then VST rows, by a stable sort of `is_vst`), so every tile of
the gathered GEMM uses one weight matrix and no row is projected twice. The first layer of a step with
VSTs (`interleave.typed_qkv_rope_interleaved`) shares the GEMM, epilogue and launch helpers defined here.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from vxl.kernels.arch import device_arch


@triton.jit
def _rms_norm_kernel(hidden_ptr, norm_weight_ptr, x_ptr, hidden_size, eps,
                     stride_hidden_t, stride_x_t, BLOCK_H: tl.constexpr):
    # Same rounding order as reference.rms_norm: normalise in fp32, cast, then scale in the input dtype.
    row = tl.program_id(0).to(tl.int64)
    sum_sq = tl.zeros([BLOCK_H], dtype=tl.float32)
    for h0 in range(0, hidden_size, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        h = tl.load(hidden_ptr + row * stride_hidden_t + offs_h, mask=offs_h < hidden_size, other=0.0)
        sum_sq += h.to(tl.float32) * h.to(tl.float32)
    rstd = 1.0 / tl.sqrt_rn(tl.sum(sum_sq, axis=0) / hidden_size + eps)
    for h0 in range(0, hidden_size, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        h_mask = offs_h < hidden_size
        h = tl.load(hidden_ptr + row * stride_hidden_t + offs_h, mask=h_mask, other=0.0)
        w = tl.load(norm_weight_ptr + offs_h, mask=h_mask, other=0.0)
        x = (h.to(tl.float32) * rstd).to(x_ptr.dtype.element_ty).to(tl.float32) * w.to(tl.float32)
        tl.store(x_ptr + row * stride_x_t + offs_h, x.to(x_ptr.dtype.element_ty), mask=h_mask)


@triton.jit
def _rope(lo, hi, pos, inv_freq, DTYPE: tl.constexpr):
    # NeoX half-split rotation; cos/sin in fp32, then rounded to the model dtype as HF does.
    freqs = pos.to(tl.float32)[:, None] * inv_freq[None, :]
    cos = tl.cos(freqs).to(DTYPE).to(tl.float32)
    sin = tl.sin(freqs).to(DTYPE).to(tl.float32)
    return lo * cos - hi * sin, hi * cos + lo * sin


@triton.jit
def _store_halves(ptr, row_offs, offs_d, lo, hi, mask, HALF: tl.constexpr):
    dst = ptr + row_offs[:, None] + offs_d[None, :]
    tl.store(dst, lo.to(ptr.dtype.element_ty), mask=mask)
    tl.store(dst + HALF, hi.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _typed_tile(num_raw_ptr, num_tokens, pid_m, BLOCK_M: tl.constexpr):
    # Tiles 0 .. cdiv(num_raw)-1 cover the raw rows of the sorted order, the next ones the VST rows.
    num_raw = tl.load(num_raw_ptr).to(tl.int32)
    num_raw_tiles = tl.cdiv(num_raw, BLOCK_M)
    is_vst_tile = pid_m >= num_raw_tiles
    start = tl.where(is_vst_tile, num_raw + (pid_m - num_raw_tiles) * BLOCK_M, pid_m * BLOCK_M)
    end = tl.where(is_vst_tile, num_tokens, num_raw)
    return is_vst_tile, start, end


@triton.jit
def _gathered_gemm_halves(x_ptr, w_ptr, rows, row_mask, col_lo, d_mask, hidden_size, stride_x_t, stride_w_n,
                          HALF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_HALF: tl.constexpr,
                          BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # x[rows] @ w[cols].T for the lo and hi halves of one head, accumulated in fp32.
    acc_lo = tl.zeros([BLOCK_M, BLOCK_HALF], dtype=tl.float32)
    acc_hi = tl.zeros([BLOCK_M, BLOCK_HALF], dtype=tl.float32)
    for k0 in range(0, hidden_size, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < hidden_size
        x = tl.load(x_ptr + rows[:, None] * stride_x_t + offs_k[None, :],
                    mask=row_mask[:, None] & k_mask[None, :], other=0.0)  # (BLOCK_M, BLOCK_K)
        w_ptrs = w_ptr + col_lo[None, :] * stride_w_n + offs_k[:, None]  # (BLOCK_K, BLOCK_HALF)
        w_mask = k_mask[:, None] & d_mask[None, :]
        w_lo = tl.load(w_ptrs, mask=w_mask, other=0.0)
        w_hi = tl.load(w_ptrs + HALF * stride_w_n, mask=w_mask, other=0.0)
        acc_lo = tl.dot(x, w_lo, acc_lo, input_precision=DOT_PRECISION)
        acc_hi = tl.dot(x, w_hi, acc_hi, input_precision=DOT_PRECISION)
    return acc_lo, acc_hi


@triton.jit
def _bias_rope_store(acc_lo, acc_hi, b_base, rows, row_mask, col_lo, offs_d, d_mask, head,
                     positions_ptr, kept_positions_ptr, slot_mapping_ptr, inv_freq_ptr,
                     q_ptr, k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, stride_q_t, stride_k_t, stride_v_t,
                     stride_k_cache_page, stride_k_cache_slot, stride_v_cache_page, stride_v_cache_slot,
                     NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                     HALF: tl.constexpr, PAGE_SIZE: tl.constexpr, HAS_BIAS: tl.constexpr):
    # Epilogue of one (tile, head): `rows` are the output rows (slots of the step), masked by row_mask.
    if HAS_BIAS:
        acc_lo += tl.load(b_base + col_lo, mask=d_mask, other=0.0).to(tl.float32)[None, :]
        acc_hi += tl.load(b_base + col_lo + HALF, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    # The projection's output is rounded to the model dtype before RoPE, as in the reference.
    dtype = q_ptr.dtype.element_ty
    lo = acc_lo.to(dtype).to(tl.float32)
    hi = acc_hi.to(dtype).to(tl.float32)

    out_mask = row_mask[:, None] & d_mask[None, :]
    slots = tl.load(slot_mapping_ptr + rows, mask=row_mask, other=-1).to(tl.int32)
    keep_mask = out_mask & (slots >= 0)[:, None]
    slots = tl.maximum(slots, 0)
    if head < NUM_HEADS + NUM_KV_HEADS:
        inv_freq = tl.load(inv_freq_ptr + offs_d, mask=d_mask, other=0.0)
        pos = tl.load(positions_ptr + rows, mask=row_mask, other=0)
        rot_lo, rot_hi = _rope(lo, hi, pos, inv_freq, dtype)
        if head < NUM_HEADS:
            _store_halves(q_ptr + head * HEAD_DIM, rows * stride_q_t, offs_d, rot_lo, rot_hi, out_mask, HALF)
        else:
            kv_head = head - NUM_HEADS
            _store_halves(k_ptr + kv_head * HEAD_DIM, rows * stride_k_t, offs_d, rot_lo, rot_hi, out_mask, HALF)
            # The cached K is a second rotation of the same pre-RoPE values, at the kept position.
            kept_pos = tl.load(kept_positions_ptr + rows, mask=row_mask, other=0)
            kept_lo, kept_hi = _rope(lo, hi, kept_pos, inv_freq, dtype)
            cache_offs = (slots // PAGE_SIZE) * stride_k_cache_page + (slots % PAGE_SIZE) * stride_k_cache_slot
            _store_halves(k_cache_ptr + kv_head * HEAD_DIM, cache_offs, offs_d, kept_lo, kept_hi, keep_mask, HALF)
    else:
        kv_head = head - NUM_HEADS - NUM_KV_HEADS
        _store_halves(v_ptr + kv_head * HEAD_DIM, rows * stride_v_t, offs_d, lo, hi, out_mask, HALF)
        cache_offs = (slots // PAGE_SIZE) * stride_v_cache_page + (slots % PAGE_SIZE) * stride_v_cache_slot
        _store_halves(v_cache_ptr + kv_head * HEAD_DIM, cache_offs, offs_d, lo, hi, keep_mask, HALF)


@triton.jit
def _typed_qkv_rope_kernel(
        x_ptr, w_qkv_ptr, b_qkv_ptr, w_qkv_vst_ptr, b_qkv_vst_ptr,
        row_order_ptr, num_raw_ptr, positions_ptr, kept_positions_ptr, slot_mapping_ptr, inv_freq_ptr,
        q_ptr, k_ptr, v_ptr, k_cache_ptr, v_cache_ptr,
        num_tokens, hidden_size,
        stride_x_t, stride_w_n, stride_q_t, stride_k_t, stride_v_t,
        stride_k_cache_page, stride_k_cache_slot, stride_v_cache_page, stride_v_cache_slot,
        NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
        HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, PAGE_SIZE: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # Program (tile, head): BLOCK_M rows of one type x one head (q, k or v), the head as lo / hi halves.
    head = tl.program_id(1)
    is_vst_tile, start, end = _typed_tile(num_raw_ptr, num_tokens, tl.program_id(0), BLOCK_M)
    if start >= end:
        return
    w_base = w_qkv_ptr
    b_base = b_qkv_ptr
    if is_vst_tile:
        w_base = w_qkv_vst_ptr
        b_base = b_qkv_vst_ptr
    offs_m = start + tl.arange(0, BLOCK_M)
    row_mask = offs_m < end
    rows = tl.load(row_order_ptr + offs_m, mask=row_mask, other=0).to(tl.int32)  # original row ids
    offs_d = tl.arange(0, BLOCK_HALF)
    d_mask = offs_d < HALF
    col_lo = head * HEAD_DIM + offs_d
    acc_lo, acc_hi = _gathered_gemm_halves(x_ptr, w_base, rows, row_mask, col_lo, d_mask, hidden_size,
                                           stride_x_t, stride_w_n, HALF, BLOCK_M, BLOCK_HALF, BLOCK_K,
                                           DOT_PRECISION)
    _bias_rope_store(acc_lo, acc_hi, b_base, rows, row_mask, col_lo, offs_d, d_mask, head,
                     positions_ptr, kept_positions_ptr, slot_mapping_ptr, inv_freq_ptr,
                     q_ptr, k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, stride_q_t, stride_k_t, stride_v_t,
                     stride_k_cache_page, stride_k_cache_slot, stride_v_cache_page, stride_v_cache_slot,
                     NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, HALF, PAGE_SIZE, HAS_BIAS)


def rms_norm_config(arch: int | None, hidden_size: int) -> dict:
    """Launch options of `_rms_norm_kernel` on `arch` (`vxl.kernels.arch`; None: the interpreter)."""
    # One row per program, 1024 columns per step at most: 4 warps x 32 lanes x 8 values, no spills on sm_80 and
    # sm_90 (bench/results/kernels_static.json); the same on every arch and in the interpreter.
    return dict(BLOCK_H=min(1024, triton.next_power_of_2(hidden_size)), num_warps=4)


def qkv_config(arch: int | None, dtype: torch.dtype) -> dict:
    """Tiles of both typed QKV kernels (`_typed_qkv_rope_kernel`, `_typed_qkv_rope_interleaved_kernel`) on `arch`.

    Registers and shared memory of every choice are in bench/results/kernels_static.json (checked by
    tests/kernels/test_static_compile.py). A program holds two fp32 (BLOCK_M, 64) accumulators (the lo / hi
    halves of a head) and, for a K head, two RoPE epilogues over them.
    """
    if arch is None:  # the interpreter: small tiles keep the CPU tests fast
        return dict(BLOCK_M=16, BLOCK_K=64, num_warps=8, num_stages=3)
    if dtype == torch.float32:
        # FMA, no tensor cores: (64, 64) tiles spill kilobytes on sm_80 and sm_90, (32, 32) still spills on sm_90;
        # (16, 32) at 2 stages: 64 registers, 18 KiB shared, no spills on both.
        return dict(BLOCK_M=16, BLOCK_K=32, num_warps=8, num_stages=2)
    if arch < 90:
        # sm_80 (mma.sync): at BLOCK_M 64 the bf16 RoPE epilogues need 255 registers and spill (32 bytes; 16 warps,
        # 2 stages or BLOCK_K 32 spill too); BLOCK_M 32: 80-96 registers, 40 KiB shared (fits sm_86/89's
        # 99 KiB too), at the price of reading each weight column twice as often.
        return dict(BLOCK_M=32, BLOCK_K=64, num_warps=8, num_stages=3)
    # sm_90 (wgmma): 64 rows, 8 warps: 116-140 registers, 72 KiB shared, no spills (at 4 warps the two RoPE
    # epilogues of a K head take 252 of the 255 registers).
    return dict(BLOCK_M=64, BLOCK_K=64, num_warps=8, num_stages=3)


def qkv_meta(arch: int | None, dtype: torch.dtype, head_dim: int, has_bias: bool) -> dict:
    """Constexprs and launch options of both typed QKV kernels, except the counts read off the tensors
    (NUM_HEADS, NUM_KV_HEADS, PAGE_SIZE): what the launchers pass and what the static check compiles."""
    half = head_dim // 2
    # fp32 stays fp32 ("ieee"): the fp32 path is the exact one; 16-bit inputs take the tensor cores.
    return dict(HEAD_DIM=head_dim, HALF=half, BLOCK_HALF=max(16, triton.next_power_of_2(half)), HAS_BIAS=has_bias,
                DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32", **qkv_config(arch, dtype))


def check_qkv_args(hidden, norm_weight, w_qkv, b_qkv, w_qkv_vst, b_qkv_vst, positions, kept_positions,
                   slot_mapping, k_cache, v_cache, num_heads, num_kv_heads) -> int:
    """Asserts the contract shared by the typed QKV launchers (T = len(positions)); returns head_dim."""
    num_tokens, hidden_size = positions.shape[0], hidden.shape[1]
    num_cols = w_qkv.shape[0]
    head_dim = num_cols // (num_heads + 2 * num_kv_heads)
    dtype = hidden.dtype
    assert dtype in (torch.float32, torch.float16, torch.bfloat16), f"unsupported dtype {dtype}"
    assert head_dim * (num_heads + 2 * num_kv_heads) == num_cols and head_dim % 2 == 0, "bad w_qkv rows"
    assert num_heads % num_kv_heads == 0, "num_heads must be a multiple of num_kv_heads"
    assert norm_weight.shape == (hidden_size,) and norm_weight.dtype == dtype, "norm_weight: bad shape/dtype"
    for name, w in (("w_qkv", w_qkv), ("w_qkv_vst", w_qkv_vst)):
        assert w.shape == (num_cols, hidden_size) and w.dtype == dtype, f"{name}: bad shape/dtype"
    for name, b in (("b_qkv", b_qkv), ("b_qkv_vst", b_qkv_vst)):
        assert b is None or (b.shape == (num_cols,) and b.dtype == dtype), f"{name}: bad shape/dtype"
    for name, t in (("positions", positions), ("kept_positions", kept_positions), ("slot_mapping", slot_mapping)):
        assert t.shape == (num_tokens,), f"{name}: expected shape ({num_tokens},), got {tuple(t.shape)}"
        assert t.dtype in (torch.int32, torch.int64), f"{name}: expected int32 or int64, got {t.dtype}"
    assert k_cache.dim() == 4 and k_cache.shape[2:] == (num_kv_heads, head_dim) and v_cache.shape == k_cache.shape
    assert k_cache.stride()[2:] == (head_dim, 1) and v_cache.stride()[2:] == (head_dim, 1), \
        "cache pages must be contiguous within a slot"
    # The kernels use int32 offsets.
    assert max(hidden.numel(), w_qkv.numel(), num_tokens * num_cols, k_cache.numel()) < 2 ** 31, \
        "tensor too large for int32 offsets"
    return head_dim


def rms_norm_rows(hidden: torch.Tensor, norm_weight: torch.Tensor, eps: float, out: torch.Tensor) -> None:
    """out[i] = reference.rms_norm(hidden[i]) for every row of hidden [n, H] (out: [>= n, H], written in place)."""
    if hidden.shape[0]:
        _rms_norm_kernel[(hidden.shape[0],)](hidden, norm_weight, out, hidden.shape[1], eps, hidden.stride(0),
                                             out.stride(0), **rms_norm_config(device_arch(hidden.device),
                                                                              hidden.shape[1]))


def qkv_launch_args(w_qkv, b_qkv, w_qkv_vst, b_qkv_vst, head_dim: int, rope_theta: float) -> tuple[list, dict]:
    """Kernel arguments shared by the typed QKV launchers: ([w_qkv, b_qkv, w_qkv_vst, b_qkv_vst, inv_freq],
    constexprs + launch options). A missing bias of one row type is replaced by zeros."""
    w_qkv, w_qkv_vst = w_qkv.contiguous(), w_qkv_vst.contiguous()
    if (b_qkv is None) != (b_qkv_vst is None):
        b_qkv = b_qkv if b_qkv is not None else torch.zeros_like(b_qkv_vst)
        b_qkv_vst = b_qkv_vst if b_qkv_vst is not None else torch.zeros_like(b_qkv)
    has_bias = b_qkv is not None
    # Same float32 expression as reference.rope_cos_sin, so the angles match bit for bit.
    inv_freq = 1.0 / (rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=w_qkv.device)
                                     .float() / head_dim))
    meta = qkv_meta(device_arch(w_qkv.device), w_qkv.dtype, head_dim, has_bias)
    weights = [w_qkv, b_qkv if has_bias else w_qkv, w_qkv_vst, b_qkv_vst if has_bias else w_qkv_vst, inv_freq]
    return weights, meta


def typed_qkv_rope(hidden: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                   w_qkv: torch.Tensor, b_qkv: torch.Tensor | None,
                   w_qkv_vst: torch.Tensor, b_qkv_vst: torch.Tensor | None,
                   is_vst: torch.Tensor, positions: torch.Tensor,
                   kept_positions: torch.Tensor, slot_mapping: torch.Tensor,
                   k_cache: torch.Tensor, v_cache: torch.Tensor,
                   num_heads: int, num_kv_heads: int, rope_theta: float,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RMSNorm -> per-row typed QKV projection -> RoPE; kept rows also written to the paged cache.

    hidden [T, H]; norm_weight [H]; w_qkv, w_qkv_vst [(nh + 2 nkv) hd, H] (q rows, then k, then v);
    b_qkv, b_qkv_vst [(nh + 2 nkv) hd] or None. All in one float dtype (the model dtype).
    is_vst [T] bool: the row uses the VST ("beacon") weights, else the ordinary ones (one GEMV per row).
    positions [T], kept_positions [T], slot_mapping [T]: int32 or int64. positions: the row's RoPE
    position for this step's attention; slot_mapping: flat cache slot (page * page_size + offset) of a
    kept row, -1 for a row that is not kept; kept_positions: the position the cached K is rotated to.
    k_cache, v_cache [num_pages, page_size, nkv, hd], any float dtype (values are cast on store).
    Returns q [T, nh, hd], k [T, nkv, hd] (rotated at `positions`), v [T, nkv, hd], contiguous.
    Writes in place: k_cache/v_cache at slot_mapping >= 0 (K rotated at kept_positions); nothing else.
    """
    head_dim = check_qkv_args(hidden, norm_weight, w_qkv, b_qkv, w_qkv_vst, b_qkv_vst, positions,
                              kept_positions, slot_mapping, k_cache, v_cache, num_heads, num_kv_heads)
    num_tokens, dtype = hidden.shape[0], hidden.dtype
    assert is_vst.shape == (num_tokens,) and is_vst.dtype == torch.bool, "is_vst: expected bool [T]"
    assert positions.shape[0] == num_tokens, "positions: one per hidden row"
    q = torch.empty(num_tokens, num_heads, head_dim, dtype=dtype, device=hidden.device)
    k = torch.empty(num_tokens, num_kv_heads, head_dim, dtype=dtype, device=hidden.device)
    v = torch.empty_like(k)
    if num_tokens == 0:
        return q, k, v
    hidden, norm_weight = hidden.contiguous(), norm_weight.contiguous()
    weights, meta = qkv_launch_args(w_qkv, b_qkv, w_qkv_vst, b_qkv_vst, head_dim, rope_theta)
    x = torch.empty_like(hidden)
    rms_norm_rows(hidden, norm_weight, eps, x)
    # Raw rows first, then VST rows; counted on the device so no host sync is needed.
    row_order = torch.sort(is_vst.to(torch.int8), stable=True).indices
    num_raw = (~is_vst).sum().reshape(1)
    grid = (triton.cdiv(num_tokens, meta["BLOCK_M"]) + 1, num_heads + 2 * num_kv_heads)  # +1: a partial tile per type
    _typed_qkv_rope_kernel[grid](
        x, *weights[:4], row_order, num_raw, positions.contiguous(), kept_positions.contiguous(),
        slot_mapping.contiguous(), weights[4], q, k, v, k_cache, v_cache,
        num_tokens, hidden.shape[1],
        x.stride(0), weights[0].stride(0), q.stride(0), k.stride(0), v.stride(0),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, PAGE_SIZE=k_cache.shape[1], **meta)
    return q, k, v
