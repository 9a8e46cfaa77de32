"""Qwen2 decoder with Video-XL's VST ("beacon") weights, run over packed steps and a paged KV cache.

Every forward is one packed step: rows of several sequences (text chunks, visual windows with
interleaved VSTs, decode tokens) described by a `StepInfo`. VST rows use the beacon_* projections.
The attention and projection math comes from a kernel backend (`vxl.kernels.get_backend`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vxl.config import ModelConfig
from vxl.kernels import AttentionOps
from vxl.kernels.reference import rms_norm


@dataclass
class StepInfo:
    """Metadata of one packed step (T rows, B chunks). All tensors on the model's device.

    positions [T]       RoPE position of each row for this step's attention
    is_vst [T] bool     row is a VST (beacon weights)
    slot_mapping [T]    flat cache slot where the row's K/V is kept, -1 = not kept (raw visual)
    kept_positions [T]  position a kept row's K is rotated to in the cache
    cu_seqlens [B+1]    chunk boundaries; block_tables [B, max_pages]; kept_lens [B] entries each sees
    cu_src [B+1]        chunk boundaries in the step's source rows (the model's input: a window without its VSTs)
    ratios, rems [B]    each chunk's interleave rule (ratio 0: no VSTs), see `vxl.kernels.interleave`
    is_decode           every chunk is one ordinary token already appended: use paged decode attention
    has_vst             some row is a VST: the first layer reads its slots from the source rows + beacon
    """
    positions: torch.Tensor
    is_vst: torch.Tensor
    slot_mapping: torch.Tensor
    kept_positions: torch.Tensor
    cu_seqlens: torch.Tensor
    block_tables: torch.Tensor
    kept_lens: torch.Tensor
    cu_src: torch.Tensor | None = None      # required when has_vst
    ratios: torch.Tensor | None = None
    rems: torch.Tensor | None = None
    is_decode: bool = False
    has_vst: bool = False


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class Qwen2Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hd, nh, nkv, h = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size
        self.num_heads, self.num_kv_heads, self.head_dim = nh, nkv, hd
        self.rope_theta = cfg.rope_theta
        self.q_proj = nn.Linear(h, nh * hd, bias=True)
        self.k_proj = nn.Linear(h, nkv * hd, bias=True)
        self.v_proj = nn.Linear(h, nkv * hd, bias=True)
        self.o_proj = nn.Linear(nh * hd, h, bias=False)
        self.beacon_q_proj = nn.Linear(h, nh * hd, bias=True)
        self.beacon_k_proj = nn.Linear(h, nkv * hd, bias=True)
        self.beacon_v_proj = nn.Linear(h, nkv * hd, bias=True)
        self.beacon_o_proj = nn.Linear(nh * hd, h, bias=False) if "o" in cfg.beacon_param else None
        self.w_qkv = self.b_qkv = self.w_qkv_vst = self.b_qkv_vst = None

    def fuse_qkv(self) -> None:
        """Concatenate q/k/v (and beacon q/k/v) weights into one tensor each; the Linear weights become
        views into it, so names stay the checkpoint's and no memory is duplicated. Call after loading."""
        for prefix, attr in (("", "w_qkv"), ("beacon_", "w_qkv_vst")):
            mods = [getattr(self, f"{prefix}{n}_proj") for n in "qkv"]
            w = torch.cat([m.weight.data for m in mods])
            b = torch.cat([m.bias.data for m in mods])
            start = 0
            for m in mods:
                n = m.weight.shape[0]
                m.weight.data, m.bias.data = w[start:start + n], b[start:start + n]
                start += n
            setattr(self, attr, w)
            setattr(self, attr.replace("w_", "b_"), b)

    def forward(self, hidden: torch.Tensor, norm: RMSNorm, step: StepInfo, kv_cache: tuple, ops: AttentionOps,
                beacon: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [T, H] -> [T, H]; with `beacon` [H], hidden is the step's source rows [S, H] and the
        slots are read from them by the interleave rule (the first layer of a step with VSTs)."""
        if self.w_qkv is None:
            raise RuntimeError("call VideoXLForCausalLM.prepare() after loading weights (fuses q/k/v)")
        k_cache, v_cache = kv_cache
        weights = (norm.weight, norm.eps, self.w_qkv, self.b_qkv, self.w_qkv_vst, self.b_qkv_vst)
        rows = (step.positions, step.kept_positions, step.slot_mapping, k_cache, v_cache,
                self.num_heads, self.num_kv_heads, self.rope_theta)
        if beacon is None:
            q, k, v = ops.typed_qkv_rope(hidden, *weights, step.is_vst, *rows)
        else:
            q, k, v = ops.typed_qkv_rope_interleaved(hidden, beacon, *weights, step.cu_seqlens, step.cu_src,
                                                     step.ratios, step.rems, *rows)
        scale = 1.0 / math.sqrt(self.head_dim)
        if step.is_decode:
            attn = ops.decode_attention(q, k_cache, v_cache, step.block_tables, step.kept_lens + 1, scale)
        else:
            attn = ops.window_attention(q, k, v, k_cache, v_cache, step.block_tables, step.kept_lens,
                                        step.cu_seqlens, scale)
        attn = attn.reshape(attn.shape[0], -1)                              # (T, nh * hd)
        if self.beacon_o_proj is None or not step.has_vst:
            return self.o_proj(attn)
        out = self.o_proj(attn)
        out[step.is_vst] = self.beacon_o_proj(attn[step.is_vst])
        return out


class Qwen2MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Qwen2Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = Qwen2MLP(cfg)

    def forward(self, hidden: torch.Tensor, step: StepInfo, kv_cache: tuple, ops: AttentionOps,
                beacon: torch.Tensor | None = None) -> torch.Tensor:
        # the input norm is fused into the QKV op (it is the op's prologue)
        attn = self.self_attn(hidden, self.input_layernorm, step, kv_cache, ops, beacon)
        if beacon is None:
            hidden = hidden + attn
        else:  # hidden holds the source rows: the residual add places them (and the beacon) in their slots
            hidden = ops.interleave_add(attn, hidden, beacon, step.cu_seqlens, step.cu_src, step.ratios, step.rems)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class Qwen2Model(nn.Module):
    """Decoder stack; `model.*` keys of the checkpoint (the multimodal parts are added by VideoXLModel)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.beacon_embed_tokens = nn.Embedding(1, cfg.hidden_size)
        self.layers = nn.ModuleList(Qwen2DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, embeds: torch.Tensor, step: StepInfo, kv_caches: list, ops: AttentionOps) -> torch.Tensor:
        """embeds [S, H], the step's source rows (a window's raw visual rows without its VSTs) -> last
        layer's hidden [T, H] over the step's slots (final norm not applied: it is only needed on the rows
        that sample, see compute_logits); appends kept rows' K/V to the caches. With VSTs in the step, the
        first layer reads each slot from embeds or the beacon row: the interleaved input is never built."""
        beacon = self.beacon_embed_tokens.weight[0] if step.has_vst else None
        hidden = embeds
        for layer, kv in zip(self.layers, kv_caches):
            hidden = layer(hidden, step, kv, ops, beacon)
            beacon = None
        return hidden
