"""Kernels: the pure-PyTorch specification (`reference`) and the Triton implementations.

`get_backend(name)` returns an object with the step operations the model calls: `typed_qkv_rope`,
`window_attention`, `decode_attention`, and for the first layer of a step with VSTs
`typed_qkv_rope_interleaved` + `interleave_add` (signatures in `reference.py`).
"""
from __future__ import annotations

from types import SimpleNamespace


def get_backend(name: str) -> SimpleNamespace:
    if name == "torch":
        from vxl.kernels import reference as r
        return SimpleNamespace(name="torch", typed_qkv_rope=r.typed_qkv_rope,
                               window_attention=r.window_attention, decode_attention=r.decode_attention,
                               typed_qkv_rope_interleaved=r.typed_qkv_rope_interleaved,
                               interleave_add=r.interleave_add)
    if name == "triton":
        from vxl.kernels import launch
        return SimpleNamespace(name="triton", typed_qkv_rope=launch.typed_qkv_rope,
                               window_attention=launch.window_attention, decode_attention=launch.decode_attention,
                               typed_qkv_rope_interleaved=launch.typed_qkv_rope_interleaved,
                               interleave_add=launch.interleave_add)
    raise ValueError(f"unknown attention backend {name!r} (expected 'torch' or 'triton')")
