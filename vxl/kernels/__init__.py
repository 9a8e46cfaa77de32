"""Kernels: the pure-PyTorch specification (`reference`) and the Triton implementations.

`get_backend(name)` returns an object with the three step operations the model calls:
`typed_qkv_rope`, `window_attention`, `decode_attention` (signatures in `reference.py`).
"""
from __future__ import annotations

from types import SimpleNamespace


def get_backend(name: str) -> SimpleNamespace:
    if name == "torch":
        from vxl.kernels import reference as r
        return SimpleNamespace(name="torch", typed_qkv_rope=r.typed_qkv_rope,
                               window_attention=r.window_attention, decode_attention=r.decode_attention)
    if name == "triton":
        from vxl.kernels import launch
        return SimpleNamespace(name="triton", typed_qkv_rope=launch.typed_qkv_rope,
                               window_attention=launch.window_attention, decode_attention=launch.decode_attention)
    raise ValueError(f"unknown attention backend {name!r} (expected 'torch' or 'triton')")
