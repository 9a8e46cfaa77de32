"""A full-size Video-XL with random weights (Qwen2-7B + beacon weights + CLIP ViT-L/14-336 + projector),
built from configs with no download, so benchmarks can measure the real model's memory and speed.
The model is created on the meta device, then allocated once on the target device in the target dtype and
filled in place: no float32 copy is ever materialised (8.4B parameters = 16.8 GB at bf16).
"""
from __future__ import annotations

import torch
from transformers import CLIPVisionConfig

from vxl.config import ModelConfig
from vxl.model.clip_configs import CLIP_VIT_L_336_NAME, ImageProcessorConfig, clip_vit_large_patch14_336
from vxl.model.loader import LoadedModel
from vxl.model.video_llm import VideoXLForCausalLM

# Qwen2-7B's config.json plus the beacon_* / mm_* keys of the released Video-XL config
QWEN2_7B = dict(vocab_size=152064, hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                num_key_value_heads=4, intermediate_size=18944, rope_theta=1e6, rms_norm_eps=1e-6,
                max_position_embeddings=32768, tie_word_embeddings=False,
                beacon_window=1440, beacon_stride=1440, beacon_ratio=[2, 4, 8, 12, 16],
                beacon_param=["q", "k", "v"], mm_vision_tower=CLIP_VIT_L_336_NAME, mm_hidden_size=1024,
                mm_vision_select_layer=-2, mm_spatial_pool_stride=2, torch_dtype="bfloat16")
INIT_STD = 0.02     # Qwen2's initializer_range


def random_full_configs(llm_overrides: dict | None = None, clip_overrides: dict | None = None
                        ) -> tuple[ModelConfig, CLIPVisionConfig]:
    """(ModelConfig, CLIPVisionConfig) of the full-size model; overrides replace single fields (tests use
    them to build a narrow model through the same code path)."""
    clip = clip_vit_large_patch14_336()
    if clip_overrides:
        clip = CLIPVisionConfig.from_dict({**clip.to_dict(), **clip_overrides})
    cfg = ModelConfig.from_dict({**QWEN2_7B, "mm_hidden_size": clip.hidden_size, **(llm_overrides or {})})
    return cfg, clip


def meta_model(cfg: ModelConfig, clip: CLIPVisionConfig) -> VideoXLForCausalLM:
    """The module tree on the meta device: shapes and names only, no memory."""
    with torch.device("meta"):
        return VideoXLForCausalLM(cfg, clip)


def _init_(name: str, p: torch.Tensor, gen: torch.Generator) -> None:
    """In-place random init in the parameter's own dtype and device."""
    if name.endswith("norm.weight") or "layer_norm" in name or "layrnorm" in name:
        p.fill_(1.0)
    elif name.endswith(".bias"):
        p.zero_()
    else:
        p.normal_(0.0, INIT_STD, generator=gen)


def build_random_full(device: torch.device | str, dtype: torch.dtype = torch.bfloat16, seed: int = 0, *,
                      llm_overrides: dict | None = None, clip_overrides: dict | None = None) -> LoadedModel:
    """Full-size random Video-XL as a `LoadedModel` (same shape as `build_tiny`'s), on `device` in `dtype`.

    Tokenizer: the tiny model's byte-level one (its ids fit in the 152k vocabulary), so requests may give
    `prompt`; the answers are meaningless (random weights)."""
    from vxl.model.tiny import build_tokenizer
    device = torch.device(device)
    tokenizer = build_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    cfg, clip = random_full_configs({"eos_token_id": eos, **(llm_overrides or {})}, clip_overrides)
    model = meta_model(cfg, clip).to(dtype)            # meta: changes the recorded dtype, allocates nothing
    model.to_empty(device=device)                      # the only allocation: every tensor once, in `dtype`
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            _init_(name, p, gen)
    emb = model.model.vision_tower.vision_tower.vision_model.embeddings
    emb.position_ids = torch.arange(emb.num_positions, device=device).expand((1, -1))  # the only buffer
    model.prepare()
    model.eval()
    eos_ids = sorted({eos, tokenizer.convert_tokens_to_ids("<|endoftext|>")})
    # CLIP-L/336's preprocessing (336 px); a narrowed CLIP (tests) gets its own image size
    processor = ImageProcessorConfig(shortest_edge=clip.image_size, crop_size=clip.image_size)
    return LoadedModel(model, cfg, tokenizer, processor, eos_ids, "full-random")
