"""Analytic FLOPs of one Video-XL request (vision tower, projector, LLM windows with their VSTs, text,
decode) and the model FLOPs utilisation (MFU) against the GPU's dense bf16/fp16 peak.
A multiply-add counts 2 FLOPs; attention counts QK^T and PV (4 * head_dim per query-key pair and head)."""
from __future__ import annotations

from vxl.vst import window_lengths

# dense (no sparsity) bf16/fp16 tensor-core peaks, FLOP/s, by a substring of the device name
PEAK_FLOPS_16BIT = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
                    ("GH200", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12))


def peak_flops(device_name: str | None, dtype_name: str) -> float | None:
    """The device's dense 16-bit peak, or None (unknown device, or a float32 run)."""
    if not device_name or dtype_name not in ("torch.bfloat16", "torch.float16"):
        return None
    for key, peak in PEAK_FLOPS_16BIT:
        if key in device_name:
            return peak
    return None


def vision_flops_per_frame(clip, mm_hidden: int, hidden: int, num_layers_used: int) -> int:
    patches = (clip.image_size // clip.patch_size) ** 2
    tokens, c, inter = patches + 1, clip.hidden_size, clip.intermediate_size
    embed = 2 * patches * 3 * clip.patch_size ** 2 * c
    per_layer = tokens * 2 * (4 * c * c + 2 * c * inter) + 4 * tokens * tokens * c
    projector = 2 * patches * (mm_hidden * hidden + hidden * hidden)
    return embed + num_layers_used * per_layer + projector


def llm_row_flops(cfg) -> int:
    """Projections and MLP of one row through every layer (no attention scores, no lm_head)."""
    h, hd = cfg.hidden_size, cfg.head_dim
    nh, nkv, inter = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size
    return cfg.num_hidden_layers * 2 * (h * (nh + 2 * nkv) * hd + nh * hd * h + 3 * h * inter)


def _chunk(rows: int, kept: int) -> int:
    """Sum over a causal chunk's rows of the keys each sees: rows * kept + rows (rows + 1) / 2."""
    return rows * kept + rows * (rows + 1) // 2


def request_flops(cfg, clip, num_frames: int, tokens_per_frame: int, ratio: int, num_text: int,
                  num_generated: int, num_clip_layers_used: int | None = None) -> dict:
    """FLOPs by part for one request: `vision` (CLIP + projector), `llm_linear`, `llm_attention`,
    `lm_head`, `total`. Text tokens are counted after the video (the few prefix tokens barely differ)."""
    used = num_clip_layers_used if num_clip_layers_used is not None else (
        clip.num_hidden_layers + 1 + cfg.mm_vision_select_layer if cfg.mm_vision_select_layer < 0
        else cfg.mm_vision_select_layer)
    mm_hidden = cfg.mm_hidden_size or clip.hidden_size
    vision = num_frames * vision_flops_per_frame(clip, mm_hidden, cfg.hidden_size, used)
    rows, pairs, kept, rem = 0, 0, 0, 0
    for length in window_lengths(num_frames * tokens_per_frame, cfg.beacon_window):
        nb = (length + rem) // ratio
        rem = (length + rem) % ratio
        rows += length + nb
        pairs += _chunk(length + nb, kept)
        kept += nb
    rows += num_text
    pairs += _chunk(num_text, kept)
    kept += num_text
    decode_steps = max(0, num_generated - 1)     # the first token comes from the prefill's logits
    rows += decode_steps
    pairs += sum(kept + i + 1 for i in range(decode_steps))
    attention = cfg.num_hidden_layers * 4 * cfg.num_attention_heads * cfg.head_dim * pairs
    out = {"vision": vision, "llm_linear": rows * llm_row_flops(cfg), "llm_attention": attention,
           "lm_head": 2 * cfg.hidden_size * cfg.vocab_size * max(num_generated, 0)}
    out["total"] = sum(out.values())
    return out
