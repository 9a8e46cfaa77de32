"""The `triton` backend: the three Triton launchers, same signatures as `vxl.kernels.reference`."""
from __future__ import annotations

from .decode_attention import decode_attention
from .typed_qkv import typed_qkv_rope
from .window_attention import window_attention

__all__ = ["decode_attention", "typed_qkv_rope", "window_attention"]
