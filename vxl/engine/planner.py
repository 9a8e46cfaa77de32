"""Memory planner: bytes for weights, kept KV per frame, work space per window, and the frames that fit.

Kept KV is exact (DESIGN section 3). Work space is an estimate of the largest live activations of one
step (one window of frames through CLIP, one window of rows through a layer); it is what the engine
keeps free beside the page pool. `vxl plan` prints a plan; the engine sizes its pool with `kv_budget`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import CLIPVisionConfig

from vxl.config import ModelConfig
from vxl.vst import count_vst
from vxl.model.registry import model_configs
from vxl.model.vision import num_patches, tokens_per_frame

GiB = 2**30
DEFAULT_MODEL = "full-random"       # the released Video-XL-7B shapes


@dataclass
class MemoryPlan:
    weights_bytes: int
    bytes_per_token: int
    tokens_per_frame: int
    ratio: int
    kv_bytes_per_frame: float
    workspace_bytes: int
    reserve_bytes: int
    memory_bytes: int
    max_frames: int

    def kv_bytes(self, num_frames: int, window: int) -> int:
        """Kept VST K/V of a video of `num_frames` frames (prefix and question not included)."""
        return count_vst(num_frames * self.tokens_per_frame, window, self.ratio) * self.bytes_per_token

    def describe(self) -> str:
        rows = [("weights", self.weights_bytes), ("work space per window (estimate)", self.workspace_bytes),
                ("reserve", self.reserve_bytes), ("kept KV per frame", self.kv_bytes_per_frame),
                ("kept KV per token", self.bytes_per_token)]
        lines = [f"{name:34s} {fmt_bytes(b)}" for name, b in rows]
        lines.append(f"{'max frames in ' + fmt_bytes(self.memory_bytes):34s} {self.max_frames} "
                     f"(ratio {self.ratio}, {self.tokens_per_frame} tokens per frame)")
        return "\n".join(lines)


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]i?B?|B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot read a memory size from {text!r} (e.g. 80GiB, 24GB, 512MiB)")
    unit = (m.group(2) or "B").upper().rstrip("B").rstrip("I")
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[unit]
    return int(float(m.group(1)) * scale)


def parameter_bytes(cfg: ModelConfig, clip: CLIPVisionConfig | None, dtype_bytes: int) -> int:
    from vxl.model.video_llm import VideoXLForCausalLM
    with torch.device("meta"):
        model = VideoXLForCausalLM(cfg, clip)
    return sum(p.numel() for p in model.parameters()) * dtype_bytes


def workspace_bytes(cfg: ModelConfig, clip: CLIPVisionConfig | None, ratio: int, dtype_bytes: int,
                    max_batch_tokens: int, attention_backend: str, max_kept_tokens: int,
                    vision_frames: int | None = None, overlap: bool = False) -> int:
    """Largest live activations of one step, estimated from the shapes involved: the vision stage encodes
    `vision_frames` frames at once (default one window's), alongside the LLM forward when `overlap`."""
    rows = min(max_batch_tokens, cfg.beacon_window + cfg.beacon_window // ratio)
    hd, nh, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    per_row = 4 * cfg.hidden_size + (nh + 2 * nkv) * hd + 3 * cfg.intermediate_size
    llm = rows * per_row * dtype_bytes + 64 * cfg.vocab_size * 4        # + float32 logits of up to 64 rows
    scores = 0
    if attention_backend == "torch":   # the reference materialises float32 scores (and their softmax)
        scores = nh * rows * (rows + max_kept_tokens) * 4 * 2
    vision = 0
    if clip is not None:
        frames = vision_frames or -(-cfg.beacon_window // tokens_per_frame(clip, cfg.mm_spatial_pool_stride))
        seq = num_patches(clip) + 1                                                       # + CLS
        vision = frames * seq * (6 * clip.hidden_size + 2 * clip.intermediate_size) * dtype_bytes
        vision += frames * seq * seq * clip.num_attention_heads * dtype_bytes              # attention scores
        vision += frames * (seq - 1) * cfg.hidden_size * 2 * dtype_bytes                     # projector
        vision += 3 * frames * 3 * clip.image_size ** 2 * 4                                   # pixel chunks queued
    # vision and the LLM window run one after the other, or at once on two streams; counting the scores on
    # top is an upper bound
    return int((llm + vision if overlap else max(llm, vision)) + scores)


def plan_memory(cfg: ModelConfig, clip: CLIPVisionConfig | None, memory_bytes: int, ratio: int,
                dtype_bytes: int = 2, max_batch_tokens: int = 8192, attention_backend: str = "triton",
                reserve_bytes: int | None = None) -> MemoryPlan:
    """reserve_bytes: kept free for the allocator and the CUDA context (default min(1 GiB, 5%))."""
    if ratio < 1:
        raise ValueError("compression ratio must be >= 1")
    if reserve_bytes is None:
        reserve_bytes = min(GiB, memory_bytes // 20)
    tpf = tokens_per_frame(clip, cfg.mm_spatial_pool_stride) if clip is not None else 0
    bpt = cfg.bytes_per_token(dtype_bytes)
    weights = parameter_bytes(cfg, clip, dtype_bytes)
    kv_per_frame = tpf / ratio * bpt
    work = workspace_bytes(cfg, clip, ratio, dtype_bytes, max_batch_tokens, attention_backend, 0)
    # the torch backend's score matrix grows linearly with the kept cache: solve for both together
    per_kept = workspace_bytes(cfg, clip, ratio, dtype_bytes, max_batch_tokens, attention_backend, 1) - work
    free = memory_bytes - weights - work - reserve_bytes
    max_frames = 0
    if kv_per_frame and free > 0:
        max_frames = int(free // (kv_per_frame + per_kept * tpf / ratio))
        work += int(per_kept * max_frames * tpf / ratio)
    return MemoryPlan(weights, bpt, tpf, ratio, kv_per_frame, work, reserve_bytes, memory_bytes, max(0, max_frames))


def configs_for(model: str = DEFAULT_MODEL) -> tuple[ModelConfig, CLIPVisionConfig | None]:
    """Configs of a built-in model (`vxl.model.registry`) or a checkpoint directory; no weights are read."""
    return model_configs(model)
