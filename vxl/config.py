"""Configuration dataclasses: the model as read from an official Video-XL config.json, and engine settings.

`ModelConfig.from_dict` accepts the released `llava_qwen` config (Qwen2 fields, beacon_* keys, mm_* keys)
and rejects what vxl cannot run with a clear message instead of computing something else.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field

from vxl.checks import int_at_least

IMAGE_TOKEN_INDEX = -200
# most `image_grid_pinpoints` a checkpoint may list: every image compares its size with each of them, and the
# grid form "(1x1),...,(AxB)" expands to A x B of them (released configs have 5 to 36)
MAX_PINPOINTS = 1024
SUPPORTED_BEACON_PARAMS = ("q", "k", "v", "o")


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    torch_dtype: str | None = None
    # Visual Summarization Tokens ("beacons")
    beacon_window: int = 1440
    beacon_stride: int = 1440
    beacon_ratio: list[int] = field(default_factory=lambda: [2, 4, 8, 12, 16])
    beacon_param: list[str] = field(default_factory=lambda: ["q", "k", "v"])
    beacon_pos: str = "interleave"
    beacon_attn: str = "full-coverage"
    beacon_sink_size: int = 0
    beacon_embed_init: str = "eos"
    # multimodal
    mm_vision_tower: str | None = None
    mm_projector_type: str = "mlp2x_gelu"
    mm_hidden_size: int | None = None
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    mm_spatial_pool_stride: int = 2
    mm_spatial_pool_mode: str = "average"
    # single images: anyres tiling into CLIP-sized tiles
    image_aspect_ratio: str | None = None
    image_grid_pinpoints: object = None
    mm_patch_merge_type: str | None = None
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def default_ratio(self) -> int:
        """Ratio used when a request gives none: the largest trained one (the paper's inference choice)."""
        ratios = self.beacon_ratio if isinstance(self.beacon_ratio, list) else [self.beacon_ratio]
        return int(max(ratios))

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, (list, tuple)) else [self.eos_token_id]

    def bytes_per_token(self, dtype_size: int) -> int:
        """Bytes of kept K and V per token over all layers (DESIGN section 3)."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_size

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in names}
        cfg = cls(**kwargs, extra={k: v for k, v in d.items() if k not in names})
        cfg.validate()
        return cfg

    @classmethod
    def from_file(cls, path: str) -> "ModelConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **d, "model_type": "llava_qwen"}

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if isinstance(self.beacon_ratio, int):
            self.beacon_ratio = [self.beacon_ratio]
        unknown = [p for p in self.beacon_param if p not in SUPPORTED_BEACON_PARAMS]
        if unknown:
            raise ValueError(f"beacon_param entries {unknown} are not supported (supported: {SUPPORTED_BEACON_PARAMS})")
        if self.beacon_pos != "interleave":
            raise ValueError(f"beacon_pos={self.beacon_pos!r} is not supported; Video-XL uses 'interleave'")
        if self.beacon_window <= 0:
            raise ValueError("beacon_window must be positive")
        if self.beacon_stride != self.beacon_window:
            raise ValueError("beacon_stride != beacon_window (overlapping windows) is not supported")
        if self.beacon_sink_size != 0:
            raise ValueError("beacon_sink_size != 0 is not supported")
        if self.beacon_attn != "full-coverage":
            # each VST attends to every kept entry before it and its whole window: the released model's setting
            raise ValueError(f"beacon_attn={self.beacon_attn!r} is not supported; vxl implements 'full-coverage'")
        if self.mm_vision_tower is not None:
            if self.mm_projector_type != "mlp2x_gelu":
                raise ValueError(f"mm_projector_type={self.mm_projector_type!r} is not supported (mlp2x_gelu only)")
            if self.mm_vision_select_feature != "patch":
                raise ValueError("mm_vision_select_feature must be 'patch'")
            if self.mm_spatial_pool_mode != "average":
                raise ValueError("mm_spatial_pool_mode must be 'average'")
        check_pinpoint_count(self.image_grid_pinpoints)


def check_pinpoint_count(value) -> None:
    """Refuse `image_grid_pinpoints` with more than MAX_PINPOINTS entries, counting the grid form
    "(AxB),...,(CxD)" (every (i, j), A <= i <= C, B <= j <= D) without expanding it. The entries
    themselves are parsed where images use them (`vxl.engine.image.parse_pinpoints`)."""
    if isinstance(value, str) and "x" in value:
        grid = re.findall(r"\((\d+)x(\d+)\)", value)
        if not grid:
            return
        (a0, b0), (a1, b1) = grid[0], grid[-1]
        count = max(0, int(a1) - int(a0) + 1) * max(0, int(b1) - int(b0) + 1)
    elif isinstance(value, (list, tuple)):
        count = len(value)
    else:
        return
    if count > MAX_PINPOINTS:
        raise ValueError(f"image_grid_pinpoints lists {count} pinpoints; at most {MAX_PINPOINTS} are supported")


@dataclass
class EngineConfig:
    """Engine settings chosen by the user of `vxl.LLM` (not stored in checkpoints)."""
    device: str
    dtype: str
    attention_backend: str
    page_size: int = 16
    num_pages: int | None = None          # None: sized from kv_cache_bytes
    kv_cache_bytes: int | None = None     # None: 256 MiB on CPU; free memory minus work space on CUDA
    max_batch_tokens: int = 8192          # token budget of one packed forward
    text_chunk_size: int | None = None    # None: the model's beacon_window
    video_decode_workers: int = 1         # decord readers per video file, over disjoint segments
    keyframe_snap: bool = False           # sample the keyframe nearest each uniform index (faster, uneven)
    max_logprobs: int | None = 20         # most `logprobs` / `prompt_logprobs` a request may ask for, as vLLM's
                                          # default; None: up to the vocabulary (full distributions for scoring)
    # per-request caps, checked before any frame is decoded (None: no cap; a server sets tighter ones)
    max_frames: int | None = None         # frames sampled from one video (after num_frames)
    max_images: int | None = None         # images of one `images` request
    max_prompt_tokens: int | None = None  # text tokens of one prompt
    max_image_pixels: int | None = 1 << 27  # width x height of one image, read from a file's header before
                                          # it is decoded (134M pixels: 400 MB as uint8 RGB)
    cuda_graphs: bool = False             # decode steps replay CUDA graphs (vxl.engine.cuda_graphs; CUDA only)
    seed: int = 0                         # request i of a call samples with seed + i unless it gives its own
    max_num_seqs: int = 256               # sequences running at once (the largest CUDA-graph batch bucket)
    max_vision_frames: int | None = None  # frames the vision stage encodes per step; None: 8 windows' worth
    vision_overlap: bool | None = None    # encode the next windows on a side stream during the forward;
                                          # None: on CUDA only

    def validate(self) -> None:
        if self.attention_backend not in ("torch", "triton"):
            raise ValueError(f"attention_backend must be 'torch' or 'triton', not {self.attention_backend!r}")
        if self.attention_backend == "triton" and self.device.startswith("cpu") and not os.environ.get("TRITON_INTERPRET"):
            # without the interpreter Triton finds no driver on a CPU-only machine and fails at the first kernel
            raise ValueError("attention_backend='triton' on the CPU runs through Triton's interpreter: set "
                             "TRITON_INTERPRET=1 before triton is imported, or use attention_backend='torch'")
        if self.cuda_graphs and not self.device.startswith("cuda"):
            raise ValueError(f"cuda_graphs=True needs a CUDA device, not {self.device!r}")
        if self.cuda_graphs and self.attention_backend != "triton":
            # the torch backend (the reference) selects rows with boolean indexing, which reads the device
            raise ValueError("cuda_graphs=True needs attention_backend='triton'")
        if self.page_size <= 0:
            raise ValueError("page_size must be positive")
        if self.num_pages is not None and self.num_pages <= 0:
            raise ValueError("num_pages must be positive")
        if self.kv_cache_bytes is not None and self.kv_cache_bytes <= 0:
            raise ValueError("kv_cache_bytes must be positive")
        if self.text_chunk_size is not None and self.text_chunk_size <= 0:
            raise ValueError("text_chunk_size must be positive")
        int_at_least("video_decode_workers", self.video_decode_workers, 1)
        int_at_least("max_logprobs", self.max_logprobs, 0, optional=True)
        for name in ("max_frames", "max_images", "max_prompt_tokens", "max_image_pixels", "max_vision_frames"):
            int_at_least(name, getattr(self, name), 1, optional=True)
        int_at_least("max_num_seqs", self.max_num_seqs, 1)
        if self.max_batch_tokens <= 0:
            raise ValueError("max_batch_tokens must be positive")
        if self.vision_overlap is not None and not isinstance(self.vision_overlap, bool):
            raise ValueError(f"vision_overlap must be None or a bool, got {self.vision_overlap!r}")

