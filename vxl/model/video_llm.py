"""Video-XL as one module tree whose parameter names are the official checkpoint's keys:
`model.*` (Qwen2 + beacon embedding + `mm_projector` + `vision_tower`) and `lm_head`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from transformers import CLIPVisionConfig

from vxl.config import ModelConfig
from vxl.kernels import AttentionOps
from vxl.model.qwen2 import Qwen2Model, StepInfo
from vxl.model.vision import VisionTower, build_projector, encode_frames, tokens_per_frame


class VideoXLModel(Qwen2Model):
    def __init__(self, cfg: ModelConfig, clip_config: CLIPVisionConfig | None):
        super().__init__(cfg)
        if clip_config is not None:
            self.vision_tower = VisionTower(clip_config, cfg.mm_vision_select_layer)
            self.mm_projector = build_projector(cfg.mm_hidden_size or clip_config.hidden_size, cfg.hidden_size)
        else:
            self.vision_tower = self.mm_projector = None


class VideoXLForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, clip_config: CLIPVisionConfig | None = None):
        super().__init__()
        self.config = cfg
        self.model = VideoXLModel(cfg, clip_config)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @property
    def has_vision(self) -> bool:
        return self.model.vision_tower is not None

    @property
    def tokens_per_frame(self) -> int:
        if not self.has_vision:
            raise ValueError("this checkpoint has no vision tower (mm_vision_tower is not set)")
        return tokens_per_frame(self.model.vision_tower.clip_config, self.config.mm_spatial_pool_stride)

    def prepare(self) -> None:
        """Post-load setup: fuse each layer's q/k/v weights (views, no copies)."""
        for layer in self.model.layers:
            layer.self_attn.fuse_qkv()

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(token_ids)

    def beacon_embedding(self) -> torch.Tensor:
        return self.model.beacon_embed_tokens.weight[0]

    def encode_frames(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Preprocessed frames [N, 3, S, S] -> visual embeddings [N * tokens_per_frame, H]."""
        return encode_frames(self.model.vision_tower, self.model.mm_projector, pixel_values,
                             self.config.mm_spatial_pool_stride)

    def forward(self, embeds: torch.Tensor, step: StepInfo, kv_caches: list, ops: AttentionOps) -> torch.Tensor:
        return self.model(embeds, step, kv_caches, ops)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + lm_head in float32 terms, only for the rows where a token is sampled."""
        return self.lm_head(self.model.norm(hidden)).float()
