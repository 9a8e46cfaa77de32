"""Pure-PyTorch specification of every vxl kernel: the `torch` backend, and the reference of the tests.

Each function has the same signature as its Triton launcher. Shapes use T = packed tokens of a step,
B = sequences in the step, H = hidden size, nh / nkv = query / KV heads, hd = head dim.
Paged KV cache (one layer): k_cache, v_cache [num_pages, page_size, nkv, hd], K stored after RoPE at
the entry's kept position. A sequence's block table row lists its page ids; entry i lives in page
block_table[i // page_size] at offset i % page_size; the flat slot id is page * page_size + offset.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vxl.vst import is_vst_slot


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2 RMSNorm: normalise in float32, cast back, then scale (same rounding order as HF)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, hd] in float32 for integer positions [T] (Qwen2 / NeoX half-split layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate x [T, heads, hd] by its row's position. cos/sin are cast to x's dtype first, as HF does."""
    cos, sin = rope_cos_sin(positions, x.shape[-1], theta)
    return rotate_with(x, cos[:, None, :], sin[:, None, :])


def rotate_with(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE of x [..., T, heads, hd] with float32 tables cos, sin [T, 1, hd] (rope_cos_sin of the rows'
    positions), cast to x's dtype first."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def typed_qkv_rope(hidden: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                   w_qkv: torch.Tensor, b_qkv: torch.Tensor | None,
                   w_qkv_vst: torch.Tensor, b_qkv_vst: torch.Tensor | None,
                   is_vst: torch.Tensor, positions: torch.Tensor,
                   kept_positions: torch.Tensor, slot_mapping: torch.Tensor,
                   k_cache: torch.Tensor, v_cache: torch.Tensor,
                   num_heads: int, num_kv_heads: int, rope_theta: float,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RMSNorm -> per-row typed QKV projection -> RoPE; kept rows also written to the paged cache.

    hidden [T, H]; w_qkv, w_qkv_vst [(nh + 2 nkv) hd, H] (q rows, then k, then v); biases [(nh+2nkv) hd].
    is_vst [T] bool: row uses the VST ("beacon") weights, else the ordinary ones (each row does one GEMV).
    positions [T]: the row's RoPE position for this step's attention.
    slot_mapping [T] int: flat cache slot of a kept row, -1 for a row that is not kept (raw visual).
    kept_positions [T]: the position a kept row's K is rotated to in the cache (its kept index).
    Returns q [T, nh, hd], k [T, nkv, hd] (rotated at `positions`), v [T, nkv, hd].
    Writes in place: k_cache/v_cache at slot_mapping >= 0 (K rotated at kept_positions).
    """
    hd = w_qkv.shape[0] // (num_heads + 2 * num_kv_heads)
    x = rms_norm(hidden, norm_weight, eps)
    out = torch.empty(x.shape[0], w_qkv.shape[0], dtype=x.dtype, device=x.device)
    vst_idx = is_vst.nonzero().squeeze(1)
    raw_idx = (~is_vst).nonzero().squeeze(1)
    out[raw_idx] = F.linear(x[raw_idx], w_qkv, b_qkv)
    out[vst_idx] = F.linear(x[vst_idx], w_qkv_vst, b_qkv_vst)
    q, k_pre, v = out.split([num_heads * hd, num_kv_heads * hd, num_kv_heads * hd], dim=-1)
    q = apply_rope(q.reshape(-1, num_heads, hd), positions, rope_theta)
    k_pre = k_pre.reshape(-1, num_kv_heads, hd)
    v = v.reshape(-1, num_kv_heads, hd)
    k = apply_rope(k_pre, positions, rope_theta)
    keep = (slot_mapping >= 0).nonzero().squeeze(1)
    if keep.numel():
        store_kv(apply_rope(k_pre[keep], kept_positions[keep], rope_theta), v[keep], k_cache, v_cache,
                 slot_mapping[keep])
    return q, k, v


def interleave_slots(src: torch.Tensor, beacon: torch.Tensor, cu_seqlens: torch.Tensor, cu_src: torch.Tensor,
                     ratios: torch.Tensor, rems: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's slots, materialised: hidden [T, H] and is_vst [T] (T = cu_seqlens[-1]).

    Chunk b owns slots cu_seqlens[b]:cu_seqlens[b+1] and source rows src[cu_src[b]:cu_src[b+1]] (text
    embeddings, or a window's raw visual embeddings). Its slot j is a VST iff ratios[b] > 0 and
    j % (r+1) == r - rems[b]; VST slots take `beacon` [H], the other slots the chunk's source rows in order.
    """
    num_tokens = int(cu_seqlens[-1])
    is_vst = torch.zeros(num_tokens, dtype=torch.bool, device=src.device)
    for b in range(ratios.shape[0]):
        start, end, ratio, rem = int(cu_seqlens[b]), int(cu_seqlens[b + 1]), int(ratios[b]), int(rems[b])
        if ratio > 0:
            is_vst[start:end] = is_vst_slot(torch.arange(end - start, device=src.device), ratio, rem)
        num_raw = end - start - int(is_vst[start:end].sum())
        assert num_raw == int(cu_src[b + 1]) - int(cu_src[b]), f"chunk {b}: slots and source rows disagree"
    hidden = torch.empty(num_tokens, src.shape[1], dtype=src.dtype, device=src.device)
    hidden[~is_vst] = src
    hidden[is_vst] = beacon
    return hidden, is_vst


def typed_qkv_rope_interleaved(src: torch.Tensor, beacon: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                               w_qkv: torch.Tensor, b_qkv: torch.Tensor | None,
                               w_qkv_vst: torch.Tensor, b_qkv_vst: torch.Tensor | None,
                               cu_seqlens: torch.Tensor, cu_src: torch.Tensor,
                               ratios: torch.Tensor, rems: torch.Tensor, positions: torch.Tensor,
                               kept_positions: torch.Tensor, slot_mapping: torch.Tensor,
                               k_cache: torch.Tensor, v_cache: torch.Tensor,
                               num_heads: int, num_kv_heads: int, rope_theta: float,
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`typed_qkv_rope` of the slots `interleave_slots(src, beacon, ...)` (a step's first layer): this
    reference materialises them; the Triton kernel reads each slot's row from src / beacon by slot index."""
    hidden, is_vst = interleave_slots(src, beacon, cu_seqlens, cu_src, ratios, rems)
    return typed_qkv_rope(hidden, norm_weight, eps, w_qkv, b_qkv, w_qkv_vst, b_qkv_vst, is_vst, positions,
                          kept_positions, slot_mapping, k_cache, v_cache, num_heads, num_kv_heads, rope_theta)


def interleave_add(out: torch.Tensor, src: torch.Tensor, beacon: torch.Tensor, cu_seqlens: torch.Tensor,
                   cu_src: torch.Tensor, ratios: torch.Tensor, rems: torch.Tensor) -> torch.Tensor:
    """out [T, H] += interleave_slots(src, beacon, ...) in place (the first layer's residual); returns out."""
    out += interleave_slots(src, beacon, cu_seqlens, cu_src, ratios, rems)[0]
    return out


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write k, v [n, nkv, hd] to flat slots [n] of the paged caches (in place)."""
    page_size = k_cache.shape[1]
    pages, offsets = slot_mapping // page_size, slot_mapping % page_size
    k_cache[pages, offsets] = k.to(k_cache.dtype)
    v_cache[pages, offsets] = v.to(v_cache.dtype)


def gather_pages(cache: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
    """Every page of each block table row, padded rows included: [B, max_pages * page_size, nkv, hd].

    Entry i of row b is the sequence's kept entry i for i < its length; the rest (spare capacity, and the
    -1 padding of shorter rows, read as page 0) is garbage the caller masks out."""
    num_seqs, max_pages = block_tables.shape
    pages = block_tables.clamp(min=0).long().flatten()                       # (B * max_pages,)
    # index_select, not cache[pages]: the same copy, several times faster on the CPU
    return cache.index_select(0, pages).view(num_seqs, max_pages * cache.shape[1], *cache.shape[2:])


def _attend_batched(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """q [B, n, nh, hd], k/v [B, m, nkv, hd], mask [B, n, m] bool (True = visible; every row sees at
    least one entry) -> [B, n, nh, hd]: B independent problems in one SDPA call (native GQA: its fused kernels
    keep the softmax in float32 and never materialise the score matrix, so memory stays flat as the cache grows)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask[:, None], scale=scale, enable_gqa=True)   # (B, nh, n, hd)
    return out.transpose(1, 2)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, kept_lens: torch.Tensor, cu_seqlens: torch.Tensor,
                     scale: float | None = None) -> torch.Tensor:
    """Attention of packed chunks over [their sequence's kept pages ; the chunk itself, causally].

    q [T, nh, hd]; k, v [T, nkv, hd] (the chunks' own keys/values, work buffer); cu_seqlens [B+1];
    block_tables [B, max_pages]; kept_lens [B] (kept entries each chunk sees; all fully visible).
    Mask of a chunk of 3 slots with 2 kept entries (rows: chunk slots; columns: kept | chunk):
        1 1 | 1 0 0
        1 1 | 1 1 0
        1 1 | 1 1 1
    Returns out [T, nh, hd] in q's dtype. Reads the cache only; writes nothing.

    Batched over chunks: chunks of one row (decode tokens in a prefill step) form one group, the longer
    ones another, so that a window in the step does not pad every decode token to its length; each group
    is padded to its longest chunk and its kept pages, and runs as one masked SDPA call. Reads the chunk
    lengths on the host once.
    """
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    out = torch.empty_like(q)
    cu = cu_seqlens.tolist()
    lens = [e - s for s, e in zip(cu[:-1], cu[1:])]
    for group in ([b for b, n in enumerate(lens) if n == 1], [b for b, n in enumerate(lens) if n > 1]):
        if group:
            _window_group(q, k, v, k_cache, v_cache, block_tables, kept_lens, cu, lens, group, scale, out)
    return out


def _window_group(q, k, v, k_cache, v_cache, block_tables, kept_lens, cu: list[int], lens: list[int],
                  group: list[int], scale: float, out: torch.Tensor) -> None:
    """window_attention of the chunks `group`, padded to the longest of them; writes their rows of out."""
    device = q.device
    max_len = max(lens[b] for b in group)
    starts, chunk_lens = torch.tensor([[cu[b], lens[b]] for b in group], device=device).unbind(1)
    is_real = torch.arange(max_len, device=device)[None] < chunk_lens[:, None]          # (G, n)
    # row j of chunk b is packed row cu[b] + j; padding rows repeat the chunk's first row and are dropped
    rows = starts[:, None] + torch.arange(max_len, device=device)[None] * is_real        # (G, n)
    idx = torch.tensor(group, device=device)
    tables = block_tables[idx]
    k_kept = gather_pages(k_cache, tables).to(k.dtype)                                   # (G, m, nkv, hd)
    v_kept = gather_pages(v_cache, tables).to(v.dtype)
    keys = torch.cat([k_kept, k[rows]], dim=1)                                          # (G, m + n, nkv, hd)
    values = torch.cat([v_kept, v[rows]], dim=1)
    kept_visible = torch.arange(k_kept.shape[1], device=device)[None] < kept_lens[idx][:, None]   # (G, m)
    causal = torch.ones(max_len, max_len, dtype=torch.bool, device=device).tril()         # (n, n)
    mask = torch.cat([kept_visible[:, None, :].expand(-1, max_len, -1),
                      causal[None] & is_real[:, None, :]], dim=-1)                       # (G, n, m + n)
    res = _attend_batched(q[rows], keys, values, mask, scale)                           # (G, n, nh, hd)
    out[rows[is_real]] = res[is_real]


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, seq_lens: torch.Tensor,
                     scale: float | None = None) -> torch.Tensor:
    """One query per sequence over all its kept entries (the new token's K/V already stored).

    q [B, nh, hd]; seq_lens [B] (entries to attend, >= 1). Returns out [B, nh, hd] in q's dtype.
    Batched: every sequence's pages are gathered into [B, max_pages * page_size] once and entries at or
    past seq_lens[b] are masked, in one SDPA call; nothing is read back to the host.
    """
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    keys = gather_pages(k_cache, block_tables).to(q.dtype)                              # (B, m, nkv, hd)
    values = gather_pages(v_cache, block_tables).to(q.dtype)
    mask = torch.arange(keys.shape[1], device=q.device)[None] < seq_lens[:, None]       # (B, m)
    return _attend_batched(q[:, None], keys, values, mask[:, None], scale)[:, 0]         # (B, nh, hd)
