"""CLIP configurations: the built-in openai/clip-vit-large-patch14-336 (so the released `mm_vision_tower`
name needs no download) and reading a local CLIP directory's config.json + preprocessor_config.json.
"""
from __future__ import annotations

import json
import os

from transformers import CLIPVisionConfig

from vxl.engine.preprocess import ImageProcessorConfig

CLIP_VIT_L_336_NAME = "openai/clip-vit-large-patch14-336"


def clip_vit_large_patch14_336() -> CLIPVisionConfig:
    """The vision half of openai/clip-vit-large-patch14-336's config.json."""
    return CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                            num_attention_heads=16, num_channels=3, image_size=336, patch_size=14,
                            hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
                            attention_dropout=0.0, initializer_range=0.02, initializer_factor=1.0)


def _vision_dict(config: dict, path: str) -> dict:
    """A full CLIPConfig keeps the vision tower under `vision_config` (`vision_config_dict` in old files)."""
    model_type = config.get("model_type")
    if model_type == "clip":
        sub = config.get("vision_config") or config.get("vision_config_dict")
        if not isinstance(sub, dict):
            raise ValueError(f"{path}: a CLIPConfig without a vision_config")
        return sub
    if model_type not in (None, "clip_vision_model"):
        raise ValueError(f"{path}: model_type {model_type!r} is not a CLIP config")
    return config


def load_clip_dir(path: str | os.PathLike) -> tuple[CLIPVisionConfig, ImageProcessorConfig]:
    """A CLIP directory -> (vision config, preprocessing). config.json may be a CLIPConfig or a
    CLIPVisionConfig; preprocessor_config.json is required (it decides the pixels the tower sees)."""
    path = os.fspath(path)
    config_path = os.path.join(path, "config.json")
    proc_path = os.path.join(path, "preprocessor_config.json")
    for p in (config_path, proc_path):
        if not os.path.isfile(p):
            raise ValueError(f"CLIP directory {path} has no {os.path.basename(p)}")
    with open(config_path) as f:
        vision = _vision_dict(json.load(f), config_path)
    return CLIPVisionConfig.from_dict(vision), ImageProcessorConfig.from_file(proc_path)


def resolve_vision_tower(mm_vision_tower: str, checkpoint_dir: str | os.PathLike | None = None
                         ) -> tuple[CLIPVisionConfig, ImageProcessorConfig, str | None]:
    """`mm_vision_tower` of a Video-XL config -> (vision config, preprocessing, CLIP directory or None).

    A directory (absolute, or relative to the checkpoint directory) wins; otherwise the built-in
    openai/clip-vit-large-patch14-336 name; anything else is an error naming what was tried.
    """
    candidate = mm_vision_tower
    if checkpoint_dir is not None and not os.path.isabs(mm_vision_tower):
        candidate = os.path.join(os.fspath(checkpoint_dir), mm_vision_tower)
    if os.path.isdir(candidate):
        return (*load_clip_dir(candidate), candidate)
    # released configs often name a local copy of it (".../openai/clip-vit-large-patch14-336")
    if mm_vision_tower.rstrip("/").endswith(CLIP_VIT_L_336_NAME):
        return clip_vit_large_patch14_336(), ImageProcessorConfig.clip_vit_l_336(), None
    raise ValueError(f"mm_vision_tower {mm_vision_tower!r}: no directory {candidate!r} and not "
                     f"the built-in {CLIP_VIT_L_336_NAME!r}")
