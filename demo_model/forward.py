"""Differentiable training forward of Video-XL (DESIGN.md section 1), batched over B videos of the same
length, through the model's own modules: prefix text, then windows with interleaved VSTs (beacon q/k/v
and embedding; attention over kept K/V + the causal window; only VSTs' K/V kept), then question + answer
rows that attend to their video's kept K/V. Each window may have its own ratio; loss on answers only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vxl.vst import interleave, window_lengths
from vxl.kernels.reference import rope_cos_sin, rotate_with
from vxl.model.video_llm import VideoXLForCausalLM

KV = tuple[torch.Tensor, torch.Tensor]      # (k post-RoPE at kept positions, v), each [B, M, nkv, hd]


def window_slots(num_raw: int, ratio: int, rem: int) -> tuple[torch.Tensor, int]:
    """is_vst [num_raw + nb] of one window and the remainder carried on (the engine's interleave rule),
    refusing a remainder that the next window's ratio cannot place (rem >= ratio)."""
    if ratio < 1 or rem >= ratio:
        raise ValueError(f"ratio {ratio} cannot follow a carried remainder of {rem} tokens")
    return interleave(num_raw, ratio, rem)


class Fused:
    """Each layer's q/k/v weights and biases concatenated (ordinary and beacon), made once per forward and
    shared by every window and the text: the concatenations' backward then runs once, not once a window."""

    def __init__(self, model: VideoXLForCausalLM):
        self.qkv, self.beacon_qkv = [], []
        for layer in model.model.layers:
            attn = layer.self_attn
            self.qkv.append(_cat_qkv(attn, ""))
            self.beacon_qkv.append(_cat_qkv(attn, "beacon_"))


def _cat_qkv(attn, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    mods = [getattr(attn, f"{prefix}{n}_proj") for n in "qkv"]
    return torch.cat([m.weight for m in mods]), torch.cat([m.bias for m in mods])


def typed_linear(x: torch.Tensor, is_vst: torch.Tensor | None, ordinary: tuple, beacon: tuple) -> torch.Tensor:
    """x [B, n, Hin] -> [B, n, Hout]: VST slots (is_vst [n]) use `beacon` (w, b), the others `ordinary`."""
    if is_vst is None:
        return F.linear(x, *ordinary)
    raw_idx, vst_idx = (~is_vst).nonzero()[:, 0], is_vst.nonzero()[:, 0]
    out_raw = F.linear(x[:, raw_idx], *ordinary)
    out = x.new_zeros(x.shape[0], x.shape[1], out_raw.shape[-1]).index_copy(1, raw_idx, out_raw)
    return out.index_copy(1, vst_idx, F.linear(x[:, vst_idx], *beacon))


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [n, 1, hd] float32 of positions [n], ready to broadcast over [B, n, heads, hd]."""
    cos, sin = rope_cos_sin(positions, head_dim, theta)
    return cos[:, None, :], sin[:, None, :]


def rotate(x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """RoPE of x [B, n, heads, hd] (float32) with rope_tables: the engine's reference arithmetic."""
    return rotate_with(x, *tables)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The float mask SDPA makes of a boolean one (0 where allowed, -inf elsewhere), made once: SDPA would
    convert a boolean mask again in every layer's forward and backward. The same attention bit for bit."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


def layer_forward(layer, x: torch.Tensor, kept: KV, rope: tuple, mask: torch.Tensor, is_vst: torch.Tensor | None,
                  qkv: tuple, beacon_qkv: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoder layer on slots x [B, n, H] attending to kept (k, v) [B, M, nkv, hd] (all visible) and
    to themselves causally (additive mask [n, M + n]), RoPE tables `rope` of the slots' positions. Returns
    (x out, k before RoPE, v) of the slots, each [B, n, nkv, hd] for k/v."""
    attn = layer.self_attn
    nh, nkv, hd = attn.num_heads, attn.num_kv_heads, attn.head_dim
    b, n, _ = x.shape
    h = layer.input_layernorm(x)
    q, k_pre, v = typed_linear(h, is_vst, qkv, beacon_qkv).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
    q = rotate(q.reshape(b, n, nh, hd), rope)
    k_pre, v = k_pre.reshape(b, n, nkv, hd), v.reshape(b, n, nkv, hd)
    keys = torch.cat([kept[0], rotate(k_pre, rope)], 1).transpose(1, 2)      # (B, nkv, M+n, hd)
    values = torch.cat([kept[1], v], 1).transpose(1, 2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask,
                                         scale=1.0 / math.sqrt(hd), enable_gqa=True)
    return layer_tail(layer, x, out.transpose(1, 2).reshape(b, n, nh * hd), is_vst), k_pre, v


def layer_tail(layer, x: torch.Tensor, attn_out: torch.Tensor, is_vst: torch.Tensor | None) -> torch.Tensor:
    """The rest of a decoder layer after attention: x [B, n, H] plus the (typed) output projection of
    attn_out [B, n, heads * hd], then the MLP block."""
    attn = layer.self_attn
    if attn.beacon_o_proj is not None and is_vst is not None:
        out = typed_linear(attn_out, is_vst, (attn.o_proj.weight, None), (attn.beacon_o_proj.weight, None))
    else:
        out = attn.o_proj(attn_out)
    x = x + out
    return x + layer.mlp(layer.post_attention_layernorm(x))


def run_layers(model: VideoXLForCausalLM, x: torch.Tensor, kept: list[KV], positions: torch.Tensor,
               is_vst: torch.Tensor | None, keep: torch.Tensor | None,
               kept_positions: torch.Tensor | None, fused: Fused | None = None) -> tuple[torch.Tensor, list[KV]]:
    """All layers on x [B, n, H]; returns the last hidden [B, n, H] and the kept K/V with the rows
    `keep` [n] bool appended (K rotated at kept_positions); keep=None keeps nothing. The RoPE tables and
    the mask are made once for all layers; `fused` weights once per forward (made here when not given)."""
    fused = fused or Fused(model)
    attn = model.model.layers[0].self_attn
    n, m = x.shape[1], kept[0][0].shape[1]
    rope = rope_tables(positions, attn.head_dim, attn.rope_theta)
    keep_rope = None if keep is None else rope_tables(kept_positions, attn.head_dim, attn.rope_theta)
    mask = torch.ones(n, m + n, dtype=torch.bool, device=x.device)
    mask[:, m:] = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
    mask = additive_mask(mask, x.dtype)
    new_kept = []
    for i, (layer, kv) in enumerate(zip(model.model.layers, kept)):
        x, k_pre, v = layer_forward(layer, x, kv, rope, mask, is_vst, fused.qkv[i], fused.beacon_qkv[i])
        if keep is None:
            new_kept.append(kv)
            continue
        k_keep = rotate(k_pre[:, keep], keep_rope)
        new_kept.append((torch.cat([kv[0], k_keep], 1), torch.cat([kv[1], v[:, keep]], 1)))
    return x, new_kept


def empty_kept(model: VideoXLForCausalLM, batch: int, like: torch.Tensor) -> list[KV]:
    attn = model.model.layers[0].self_attn
    z = like.new_zeros(batch, 0, attn.num_kv_heads, attn.head_dim)
    return [(z, z) for _ in model.model.layers]


def encode_prefix(model: VideoXLForCausalLM, prefix_ids: torch.Tensor, visual: torch.Tensor, ratios: list[int],
                  fused: Fused) -> tuple[list[int], list[KV]]:
    """(window lengths of visual [B, V, H], kept K/V after the prefix), refusing a ratio count that is not
    one per window."""
    b, num_visual, _ = visual.shape
    lengths = window_lengths(num_visual, model.config.beacon_window)
    if len(ratios) != len(lengths):
        raise ValueError(f"{len(ratios)} ratios for {len(lengths)} windows")
    x = model.model.embed_tokens(prefix_ids)[None].expand(b, -1, -1)
    pos = torch.arange(len(prefix_ids), device=visual.device)
    _, kept = run_layers(model, x, empty_kept(model, b, visual), pos, None, torch.ones_like(pos, dtype=torch.bool), pos,
                         fused)
    return lengths, kept


def encode_video(model: VideoXLForCausalLM, prefix_ids: torch.Tensor, visual: torch.Tensor,
                 ratios: list[int], fused: Fused | None = None) -> list[KV]:
    """Kept K/V after the prefix (all kept) and every window of visual [B, V, H] (VSTs kept only).
    ratios: one per window (len = number of windows of beacon_window tokens)."""
    fused = fused or Fused(model)
    b = visual.shape[0]
    lengths, kept = encode_prefix(model, prefix_ids, visual, ratios, fused)
    start, rem = 0, 0
    beacon = model.model.beacon_embed_tokens.weight[0]
    for length, ratio in zip(lengths, ratios):
        is_vst, rem = window_slots(length, ratio, rem)
        is_vst = is_vst.to(visual.device)
        m, n, nb = kept[0][0].shape[1], len(is_vst), int(is_vst.sum())
        slots = beacon.expand(b, n, -1).index_copy(1, (~is_vst).nonzero()[:, 0], visual[:, start:start + length])
        start += length
        if nb == 0:     # a window with no VST leaves nothing behind (its raw K/V are dropped)
            continue
        pos = torch.arange(m, m + n, device=visual.device)
        _, kept = run_layers(model, slots, kept, pos, is_vst, is_vst, torch.arange(m, m + nb, device=visual.device),
                             fused)
    return kept


def text_logits(model: VideoXLForCausalLM, kept: list[KV], text_ids: torch.Tensor, video_idx: torch.Tensor,
                rows: torch.Tensor | None = None, fused: Fused | None = None) -> torch.Tensor:
    """Text after the video: text_ids [R, n] (right padded), row i attends to video video_idx[i]'s kept
    K/V. Returns float32 logits [R, n, vocab], or [k, vocab] at the flat positions `rows` (r * n + t)."""
    r, n = text_ids.shape
    kept = [(k.index_select(0, video_idx), v.index_select(0, video_idx)) for k, v in kept]
    m = kept[0][0].shape[1]
    pos = torch.arange(m, m + n, device=text_ids.device)
    hidden, _ = run_layers(model, model.model.embed_tokens(text_ids), kept, pos, None, None, None, fused)
    if rows is None:
        return model.compute_logits(hidden)
    return model.compute_logits(hidden.reshape(r * n, -1)[rows])


def visual_tokens(model: VideoXLForCausalLM, pixels: torch.Tensor) -> torch.Tensor:
    """Preprocessed frames [B, F, 3, S, S] -> visual embeddings [B, F * tokens_per_frame, H]."""
    b = pixels.shape[0]
    return model.encode_frames(pixels.flatten(0, 1)).reshape(b, -1, model.config.hidden_size)


class WindowKeys(torch.autograd.Function):
    """kept [B, M, nkv, hd] (the same for every window) then each window's own slots (own [B, nw * n, nkv, hd])
    -> [B, nw, M + n, nkv, hd], written once into one buffer (slot-major like kept: block copies). Its
    backward hands each input its part of the gradient (kept's summed over the windows) without the copy
    and the zero fill that autograd's in-place slice assignments cost: the same gradients bit for bit."""

    @staticmethod
    def forward(ctx, kept: torch.Tensor, own: torch.Tensor, nw: int) -> torch.Tensor:
        b, m, nkv, hd = kept.shape
        out = kept.new_empty(b, nw, m + own.shape[1] // nw, nkv, hd)
        out[:, :, :m] = kept[:, None]
        out[:, :, m:] = own.reshape(b, nw, -1, nkv, hd)
        ctx.m, ctx.own_shape = m, own.shape
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # autograd sums over the windows in the buffer's own (contiguous) layout: so does this, for the same
        # rounding (the gradient SDPA hands back is laid out so already: no copy then)
        grad = grad.contiguous()
        return grad[:, :, :ctx.m].sum(1), grad[:, :, ctx.m:].reshape(ctx.own_shape), None


def encode_video_layerwise(model: VideoXLForCausalLM, prefix_ids: torch.Tensor, visual: torch.Tensor,
                           ratios: list[int], fused: Fused | None = None) -> list[KV]:
    """encode_video's function computed layer by layer over every window at once.

    A window's rows at layer l read only the layer-l K/V of earlier windows' VSTs, and those are projections
    of the layer-l input of those windows: nothing at layer l waits for another window's layer-l output. So
    each layer runs once on all slots (windows padded to the longest as a batch dimension), every window's
    queries attending to [prefix + every VST's kept K/V] (visible when the VST's window is earlier) and to
    its own slots causally: one SDPA, one set of matmuls per layer instead of one per window. Same result up
    to float rounding; the kept K/V come out in the sequential order (prefix, then window by window)."""
    fused = fused or Fused(model)
    b, _, hidden = visual.shape
    dev = visual.device
    lengths, kept = encode_prefix(model, prefix_ids, visual, ratios, fused)
    # the slot layout: windows that keep a VST (others leave nothing), each padded to n_max slots
    wins, start, rem, m = [], 0, 0, len(prefix_ids)
    for length, ratio in zip(lengths, ratios):
        is_vst, rem = window_slots(length, ratio, rem)
        if int(is_vst.sum()):
            wins.append((start, length, is_vst, m))
            m += int(is_vst.sum())
        start += length
    if not wins:
        return kept
    nw, n_max = len(wins), max(len(w[2]) for w in wins)
    valid = torch.zeros(nw, n_max, dtype=torch.bool)
    vst = torch.zeros(nw, n_max, dtype=torch.bool)
    positions = torch.zeros(nw, n_max, dtype=torch.long)
    raw_flat, raw_src = [], []
    for i, (s, length, is_vst, m0) in enumerate(wins):
        n = len(is_vst)
        valid[i, :n], vst[i, :n] = True, is_vst
        positions[i, :n] = torch.arange(m0, m0 + n)
        raw_flat.append(i * n_max + (~is_vst).nonzero()[:, 0])
        raw_src.append(torch.arange(s, s + length))
    raw_flat, raw_src = torch.cat(raw_flat).to(dev), torch.cat(raw_src).to(dev)
    flat_vst = vst.reshape(-1).to(dev)
    vst_flat = flat_vst.nonzero()[:, 0]                       # kept order: window by window, slot order
    beacon = model.model.beacon_embed_tokens.weight[0]
    x = beacon.expand(b, nw * n_max, hidden).index_copy(1, raw_flat, visual[:, raw_src])
    attn0 = model.model.layers[0].self_attn
    nh, nkv, hd = attn0.num_heads, attn0.num_kv_heads, attn0.head_dim
    rope = rope_tables(positions.reshape(-1).to(dev), hd, attn0.rope_theta)
    num_vst = len(vst_flat)
    keep_rope = rope_tables(torch.arange(len(prefix_ids), len(prefix_ids) + num_vst, device=dev), hd, attn0.rope_theta)
    # mask [nw, n_max, P + V + n_max]: kept K/V of the prefix and of earlier windows' VSTs, own slots causally
    vst_window = torch.arange(nw)[:, None].expand(nw, n_max)[vst]
    own = torch.ones(n_max, n_max, dtype=torch.bool).tril() & valid[:, None, :]
    own = own | ~valid[:, :, None]             # padded rows see their whole window (no empty rows; dropped)
    mask = torch.cat([torch.ones(nw, n_max, len(prefix_ids), dtype=torch.bool),
                      (vst_window[None, None, :] < torch.arange(nw)[:, None, None]).expand(nw, n_max, num_vst),
                      own], -1).to(dev)
    mask = additive_mask(mask, x.dtype)[None].expand(b, -1, -1, -1).reshape(b * nw, 1, n_max, -1)
    slot_vst = flat_vst if bool(flat_vst.any()) else None

    def per_window(t):      # (B, nw * n_max, heads, hd) -> (B * nw, heads, n_max, hd)
        return t.reshape(b * nw, n_max, t.shape[2], hd).transpose(1, 2)

    def with_kept(kept_t, own):   # kept (B, P + V, nkv, hd), the same for every window, then each window's own
        # slots (B, nw * n_max, nkv, hd) -> (B * nw, nkv, P + V + n_max, hd), written once into one buffer
        out = WindowKeys.apply(kept_t, own, nw)
        return out.reshape(b * nw, out.shape[2], nkv, hd).transpose(1, 2)

    new_kept = []
    for i, (layer, kv) in enumerate(zip(model.model.layers, kept)):
        h = layer.input_layernorm(x)
        q, k_pre, v = typed_linear(h, slot_vst, fused.qkv[i], fused.beacon_qkv[i]).split(
            [nh * hd, nkv * hd, nkv * hd], dim=-1)
        q = rotate(q.reshape(b, -1, nh, hd), rope)
        k_pre, v = k_pre.reshape(b, -1, nkv, hd), v.reshape(b, -1, nkv, hd)
        k_keep = torch.cat([kv[0], rotate(k_pre[:, vst_flat], keep_rope)], 1)       # (B, P + V, nkv, hd)
        v_keep = torch.cat([kv[1], v[:, vst_flat]], 1)
        new_kept.append((k_keep, v_keep))
        if i == len(model.model.layers) - 1:      # the last layer's output feeds nothing kept
            break
        keys, values = with_kept(k_keep, rotate(k_pre, rope)), with_kept(v_keep, v)
        out = F.scaled_dot_product_attention(per_window(q), keys, values, attn_mask=mask, scale=1.0 / math.sqrt(hd),
                                             enable_gqa=True)
        x = layer_tail(layer, x, out.transpose(1, 2).reshape(b, nw * n_max, nh * hd), slot_vst)
    return new_kept
