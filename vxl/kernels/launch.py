"""The `triton` backend: the Triton launchers, same signatures as `vxl.kernels.reference`."""
from __future__ import annotations

from .decode_attention import decode_attention
from .interleave import interleave_add, typed_qkv_rope_interleaved
from .typed_qkv import typed_qkv_rope
from .window_attention import window_attention

__all__ = ["decode_attention", "interleave_add", "typed_qkv_rope", "typed_qkv_rope_interleaved", "window_attention"]
