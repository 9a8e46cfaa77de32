"""The architecture of the shipped "demo" model: the released Video-XL layout at small scale (a small CLIP,
mlp2x_gelu projector, 2x2 pool, a 4-layer GQA Qwen2 with beacon q/k/v and embedding), built with vxl's
own module classes so the trained weights are saved and loaded exactly like a real Video-XL checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import CLIPVisionConfig

from vxl.config import ModelConfig
from vxl.model.clip_configs import CLIP_MEAN, CLIP_STD, ImageProcessorConfig
from vxl.model.loader import LoadedModel
from vxl.model.video_llm import VideoXLForCausalLM


@dataclass
class DemoArch:
    """Sizes of the demo model. 64 px / 16 px patches = 16 patches -> 4 tokens per frame after the pool.
    The window is 12 frames (48 tokens): like the real model's 1440, a multiple of every trained ratio
    (lcm(2, 4, 8, 12, 16) = 48), so per-window random ratios never carry a remainder between full windows."""
    image_size: int = 64
    patch_size: int = 16
    clip_hidden_size: int = 64
    clip_intermediate_size: int = 128
    clip_layers: int = 3                  # layer -2 is used: the last one is never built
    clip_heads: int = 4
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    frames_per_window: int = 12
    rope_theta: float = 1e6
    ratios: list[int] = field(default_factory=lambda: [2, 4, 8, 12, 16])

    @property
    def tokens_per_frame(self) -> int:
        return (self.image_size // self.patch_size // 2) ** 2


def clip_config(arch: DemoArch) -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=arch.clip_hidden_size, intermediate_size=arch.clip_intermediate_size,
                            num_hidden_layers=arch.clip_layers, num_attention_heads=arch.clip_heads,
                            image_size=arch.image_size, patch_size=arch.patch_size,
                            projection_dim=arch.clip_hidden_size, hidden_act="quick_gelu")


def image_processor(arch: DemoArch) -> ImageProcessorConfig:
    return ImageProcessorConfig(shortest_edge=arch.image_size, crop_size=arch.image_size,
                                image_mean=CLIP_MEAN, image_std=CLIP_STD)


def model_config(arch: DemoArch, vocab_size: int, eos_token_id: int) -> ModelConfig:
    window = arch.frames_per_window * arch.tokens_per_frame
    return ModelConfig.from_dict(dict(
        vocab_size=vocab_size, hidden_size=arch.hidden_size, num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_kv_heads,
        intermediate_size=arch.intermediate_size, rope_theta=arch.rope_theta, rms_norm_eps=1e-6,
        eos_token_id=eos_token_id, beacon_window=window, beacon_stride=window, beacon_ratio=list(arch.ratios),
        beacon_param=["q", "k", "v"], mm_vision_tower="clip", mm_hidden_size=arch.clip_hidden_size,
        mm_vision_select_layer=-2, mm_spatial_pool_stride=2, mm_projector_type="mlp2x_gelu",
        torch_dtype="float32"))


@torch.no_grad()
def init_weights(model: VideoXLForCausalLM, seed: int) -> None:
    """Qwen2-style init (normal 0.02, residual outputs scaled by 1/sqrt(2 layers)); the CLIP keeps its own
    init; beacon q/k/v start as copies of q/k/v and the beacon embedding as the EOS embedding, as the
    released code initialises them."""
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    for name, p in model.named_parameters():
        if "vision_tower" in name:
            continue
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif name.endswith(".bias"):
            p.zero_()
        else:
            std = 0.02 / (2 * cfg.num_hidden_layers) ** 0.5 if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    for layer in model.model.layers:
        attn = layer.self_attn
        for n in "qkv":
            getattr(attn, f"beacon_{n}_proj").load_state_dict(getattr(attn, f"{n}_proj").state_dict())
    model.model.beacon_embed_tokens.weight.copy_(model.model.embed_tokens.weight[cfg.eos_token_ids[0]][None])


def build_demo_model(arch: DemoArch, seed: int) -> LoadedModel:
    """A freshly initialised demo model (float32, CPU, train mode), with its tokenizer and processor."""
    from demo_model.tokenizer import build_demo_tokenizer
    tokenizer = build_demo_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    cfg = model_config(arch, len(tokenizer), eos)
    with torch.random.fork_rng(devices=[]):     # the CLIP's own init draws from the global generator
        torch.manual_seed(seed)
        model = VideoXLForCausalLM(cfg, clip_config(arch))
    init_weights(model, seed)
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return LoadedModel(model, cfg, tokenizer, image_processor(arch), sorted({eos, pad}), "demo")
