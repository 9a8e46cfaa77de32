"""CLIP configurations: the built-in openai/clip-vit-large-patch14-336 (so the released `mm_vision_tower`
name needs no download), the preprocessing settings of a `preprocessor_config.json` (`ImageProcessorConfig`)
and reading a local CLIP directory's config.json + preprocessor_config.json.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from transformers import CLIPVisionConfig

CLIP_VIT_L_336_NAME = "openai/clip-vit-large-patch14-336"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PIL_RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}   # PIL.Image.BILINEAR, PIL.Image.BICUBIC
# Keys of a preprocessor_config.json that do not change the pixels vxl computes.
_METADATA_KEYS = {"feature_extractor_type", "image_processor_type", "processor_class", "do_convert_rgb",
                  "data_format", "input_data_format", "return_tensors", "device"}


@dataclass(frozen=True)
class ImageProcessorConfig:
    """The CLIPImageProcessor settings vxl honours. Frames are RGB already (do_convert_rgb is a no-op)."""
    shortest_edge: int = 336
    crop_size: int = 336
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    rescale_factor: float = 1 / 255
    resample: int = 3
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    def __post_init__(self):
        object.__setattr__(self, "image_mean", tuple(float(v) for v in self.image_mean))
        object.__setattr__(self, "image_std", tuple(float(v) for v in self.image_std))
        if self.resample not in PIL_RESAMPLE_MODES:
            raise ValueError(f"resample={self.resample} is not supported (2 = bilinear, 3 = bicubic)")
        if self.shortest_edge < 1 or self.crop_size < 1:
            raise ValueError(f"shortest_edge={self.shortest_edge} and crop_size={self.crop_size} must be >= 1")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(f"image_mean {self.image_mean} / image_std {self.image_std}: 3 values, std > 0")

    @classmethod
    def clip_vit_l_336(cls) -> ImageProcessorConfig:
        """openai/clip-vit-large-patch14-336: shortest side 336 bicubic, crop 336, 1/255, CLIP mean/std."""
        return cls()

    @classmethod
    def from_dict(cls, d: dict) -> ImageProcessorConfig:
        """Old (`"size": 336`) and new (`"size": {"shortest_edge": 336}`) layouts; unknown keys raise."""
        d = dict(d)
        kwargs = {}
        if "size" in d:
            size = d.pop("size")
            if isinstance(size, dict):
                if set(size) != {"shortest_edge"}:
                    raise ValueError(f"size={size}: only a shortest_edge resize is supported")
                size = size["shortest_edge"]
            kwargs["shortest_edge"] = int(size)
        if "crop_size" in d:
            crop = d.pop("crop_size")
            if isinstance(crop, dict):
                if set(crop) != {"height", "width"} or crop["height"] != crop["width"]:
                    raise ValueError(f"crop_size={crop}: only a square crop is supported")
                crop = crop["height"]
            kwargs["crop_size"] = int(crop)
        for key in ("image_mean", "image_std"):
            if key in d:
                kwargs[key] = tuple(float(v) for v in d.pop(key))
        for key in ("rescale_factor", "resample", "do_resize", "do_center_crop", "do_rescale", "do_normalize"):
            if key in d:
                kwargs[key] = d.pop(key)
        unknown = sorted(set(d) - _METADATA_KEYS)
        if unknown:
            raise ValueError(f"unsupported preprocessor_config keys: {unknown}")
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """preprocessor_config.json content (the current CLIPImageProcessor layout); from_dict inverts it."""
        return {"size": {"shortest_edge": self.shortest_edge},
                "crop_size": {"height": self.crop_size, "width": self.crop_size},
                "image_mean": list(self.image_mean), "image_std": list(self.image_std),
                "rescale_factor": self.rescale_factor, "resample": self.resample, "do_resize": self.do_resize,
                "do_center_crop": self.do_center_crop, "do_rescale": self.do_rescale,
                "do_normalize": self.do_normalize, "image_processor_type": "CLIPImageProcessor"}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ImageProcessorConfig:
        with open(path) as f:
            return cls.from_dict(json.load(f))



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
