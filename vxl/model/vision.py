"""Vision side of Video-XL: CLIP tower (hidden states of `mm_vision_select_layer`, CLS dropped),
mlp2x_gelu projector and the 2x2 average pool that turns 576 patches into 144 tokens per frame.

Module names follow the official checkpoint keys (`model.vision_tower.vision_tower.vision_model.*`,
`model.mm_projector.{0,2}.*`) so loading is a plain mapping.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel


class VisionTower(nn.Module):
    """CLIP vision encoder truncated after the selected layer.

    Layer -2 is the output of all but the last encoder layer, so the last layer is never built:
    CLIPVisionModel's `last_hidden_state` is not post-normed, hence equals `hidden_states[select]`.
    """

    def __init__(self, clip_config: CLIPVisionConfig, select_layer: int = -2):
        super().__init__()
        total = clip_config.num_hidden_layers
        num_used = total + 1 + select_layer if select_layer < 0 else select_layer
        if not 0 <= num_used <= total:
            raise ValueError(f"mm_vision_select_layer={select_layer} is out of range for {total} CLIP layers")
        self.clip_config = clip_config
        self.num_layers_total = total
        self.num_layers_used = num_used
        self.vision_tower = nn.Module()
        self.vision_tower.vision_model = CLIPVisionModel(clip_config)
        del self.vision_tower.vision_model.encoder.layers[num_used:]

    @property
    def num_patches(self) -> int:
        return num_patches(self.clip_config)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, 3, S, S] -> patch features [N, num_patches, C] (CLS dropped)."""
        clip = self.vision_tower.vision_model
        dtype = clip.embeddings.patch_embedding.weight.dtype
        out = clip(pixel_values=pixel_values.to(dtype))
        return out.last_hidden_state[:, 1:]


def build_projector(mm_hidden_size: int, hidden_size: int) -> nn.Sequential:
    """mlp2x_gelu: Linear(C -> H), GELU, Linear(H -> H); indices 0 and 2 as in the checkpoint."""
    return nn.Sequential(nn.Linear(mm_hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))


def pool_tokens(features: torch.Tensor, stride: int) -> torch.Tensor:
    """[N, P, H] on a sqrt(P) x sqrt(P) grid -> [N, P / stride^2, H], stride x stride average, row-major."""
    n, p, h = features.shape
    side = int(round(p ** 0.5))
    if side * side != p:
        raise ValueError(f"{p} patches do not form a square grid")
    grid = features.view(n, side, side, h).permute(0, 3, 1, 2)          # (N, H, side, side)
    pooled = F.avg_pool2d(grid, kernel_size=stride, stride=stride)       # (N, H, side/s, side/s)
    return pooled.flatten(2).transpose(1, 2).contiguous()                # (N, P/s^2, H)


def num_patches(clip_config: CLIPVisionConfig) -> int:
    """Patch features per frame out of the tower (CLS not counted): (image_size / patch_size)^2 [576]."""
    return (clip_config.image_size // clip_config.patch_size) ** 2


def tokens_per_frame(clip_config: CLIPVisionConfig, pool_stride: int) -> int:
    """Visual tokens per frame after the pool: (image_size / patch_size / pool_stride)^2 [144]."""
    return (clip_config.image_size // clip_config.patch_size // pool_stride) ** 2


def encode_frames(tower: VisionTower, projector: nn.Module, pixel_values: torch.Tensor,
                  pool_stride: int) -> torch.Tensor:
    """Preprocessed frames [N, 3, S, S] -> visual tokens [N * tokens_per_frame, H] in time order."""
    feats = tower(pixel_values)                                           # (N, P, C)
    proj = projector(feats.to(projector[0].weight.dtype))                 # (N, P, H)
    return pool_tokens(proj, pool_stride).flatten(0, 1)                   # (N * P/s^2, H)
