"""Kernels: the pure-PyTorch specification (`reference`) and the Triton implementations.

`get_backend(name)` returns the `AttentionOps` the model calls in a step: `typed_qkv_rope`,
`window_attention`, `decode_attention`, and for the first layer of a step with VSTs
`typed_qkv_rope_interleaved` + `interleave_add` (shapes and semantics in `reference.py`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

QKV = tuple[Tensor, Tensor, Tensor]


class TypedQKVRope(Protocol):
    def __call__(self, hidden: Tensor, norm_weight: Tensor, eps: float, w_qkv: Tensor, b_qkv: Tensor | None,
                 w_qkv_vst: Tensor, b_qkv_vst: Tensor | None, is_vst: Tensor, positions: Tensor,
                 kept_positions: Tensor, slot_mapping: Tensor, k_cache: Tensor, v_cache: Tensor,
                 num_heads: int, num_kv_heads: int, rope_theta: float) -> QKV: ...


class TypedQKVRopeInterleaved(Protocol):
    def __call__(self, src: Tensor, beacon: Tensor, norm_weight: Tensor, eps: float, w_qkv: Tensor,
                 b_qkv: Tensor | None, w_qkv_vst: Tensor, b_qkv_vst: Tensor | None, cu_seqlens: Tensor,
                 cu_src: Tensor, ratios: Tensor, rems: Tensor, positions: Tensor, kept_positions: Tensor,
                 slot_mapping: Tensor, k_cache: Tensor, v_cache: Tensor, num_heads: int, num_kv_heads: int,
                 rope_theta: float) -> QKV: ...


class InterleaveAdd(Protocol):
    def __call__(self, out: Tensor, src: Tensor, beacon: Tensor, cu_seqlens: Tensor, cu_src: Tensor,
                 ratios: Tensor, rems: Tensor) -> Tensor: ...


class WindowAttention(Protocol):
    def __call__(self, q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor,
                 kept_lens: Tensor, cu_seqlens: Tensor, scale: float | None = None) -> Tensor: ...


class DecodeAttention(Protocol):
    def __call__(self, q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, seq_lens: Tensor,
                 scale: float | None = None) -> Tensor: ...


@dataclass(frozen=True)
class AttentionOps:
    """One backend's step operations (each with the signature of its `reference.py` function)."""
    name: str
    typed_qkv_rope: TypedQKVRope
    typed_qkv_rope_interleaved: TypedQKVRopeInterleaved
    interleave_add: InterleaveAdd
    window_attention: WindowAttention
    decode_attention: DecodeAttention


def get_backend(name: str) -> AttentionOps:
    if name == "torch":
        from vxl.kernels import reference as impl
    elif name == "triton":
        from vxl.kernels import launch as impl
    else:
        raise ValueError(f"unknown attention backend {name!r} (expected 'torch' or 'triton')")
    return AttentionOps(name=name, typed_qkv_rope=impl.typed_qkv_rope,
                        typed_qkv_rope_interleaved=impl.typed_qkv_rope_interleaved,
                        interleave_add=impl.interleave_add, window_attention=impl.window_attention,
                        decode_attention=impl.decode_attention)
