"""CLIP image preprocessing of video frames, batched in torch: what `CLIPImageProcessor` computes
(PIL resize of the shortest side, center crop, rescale, normalise) on uint8 frames [T, H, W, 3],
without a per-frame PIL loop. `ImageProcessorConfig` is read from a CLIP `preprocessor_config.json`.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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


def resize_output_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """HF `get_resize_output_image_size(default_to_square=False)`: short side -> edge, long side truncated."""
    short, long = min(height, width), max(height, width)
    new_long = int(shortest_edge * long / short)
    return (shortest_edge, new_long) if height <= width else (new_long, shortest_edge)


def _resize_axis(x: torch.Tensor, size: int, dim: int, mode: str) -> torch.Tensor:
    """One antialiased pass along dim (-1: width, -2: height) of [T, 3, H, W], uint8 or float holding
    uint8 values; the result is rounded to uint8 values, as PIL stores its intermediate and final images
    (torch's uint8 kernels round and saturate themselves)."""
    if x.shape[dim] == size:
        return x
    out_size = [x.shape[-2], x.shape[-1]]
    out_size[dim] = size
    x = F.interpolate(x, size=out_size, mode=mode, antialias=True, align_corners=False)
    return x if x.dtype == torch.uint8 else x.round_().clamp_(0, 255)


def _resize(x: torch.Tensor, cfg: ImageProcessorConfig, use_uint8: bool) -> torch.Tensor:
    """uint8 [T, 3, H, W] -> [T, 3, height, w'] holding uint8 values, w' = crop_size when the crop
    will keep only that many columns (the vertical pass works column by column, so they are dropped
    between the passes), else the resized width.

    PIL resamples horizontally, rounds to uint8, then vertically; we make the same two antialiased
    passes (torch's antialias filters are PIL's). Float passes with that rounding match PIL within 1
    level. torch's uint8 CPU kernels (channels-last input, fixed point like Pillow-SIMD) are ~10x faster
    and match within 2 levels. One float 2-D pass without the rounding is off by up to ~25 when upscaling.
    """
    height, width = resize_output_size(x.shape[-2], x.shape[-1], cfg.shortest_edge)
    mode = PIL_RESAMPLE_MODES[cfg.resample]
    x = x.contiguous(memory_format=torch.channels_last) if use_uint8 else x.float()
    x = _resize_axis(x, width, -1, mode)                                   # (T, 3, H, width)
    if cfg.do_center_crop and width > cfg.crop_size:
        left = (width - cfg.crop_size) // 2
        x = x[..., left:left + cfg.crop_size]                              # (T, 3, H, S)
    return _resize_axis(x, height, -2, mode)                               # (T, 3, height, S or width)


def _center_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    """HF `center_crop`: top = (h - crop) // 2, left = (w - crop) // 2; a smaller image is zero padded
    (pad before = ceil(missing / 2)) before cropping, as HF does."""
    h, w = x.shape[-2:]
    if h < crop or w < crop:
        new_h, new_w = max(h, crop), max(w, crop)
        pad_top, pad_left = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
        x = F.pad(x, (pad_left, new_w - w - pad_left, pad_top, new_h - h - pad_top))
        h, w = new_h, new_w
    top, left = (h - crop) // 2, (w - crop) // 2
    return x[..., top:top + crop, left:left + crop]


def preprocess_frames(frames: torch.Tensor, cfg: ImageProcessorConfig, *,
                      use_uint8_kernels: bool | None = None) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] (RGB, any device) -> float32 pixel values [T, 3, S, S] on that device.

    S = cfg.crop_size when cfg.do_center_crop (else the resized size). Same steps and order as
    CLIPImageProcessor: resize (uint8 result), center crop, rescale, normalise. use_uint8_kernels: None
    picks torch's fast uint8 resize on CPU (within 2 levels of PIL) and float passes elsewhere (within 1).
    """
    if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be a uint8 torch tensor, got {type(frames).__name__} "
                         f"{getattr(frames, 'dtype', '')}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape[:3]) < 1:
        raise ValueError(f"frames must have shape [T, H, W, 3] with T, H, W >= 1, got {tuple(frames.shape)}")
    if use_uint8_kernels is None:
        use_uint8_kernels = frames.device.type == "cpu"
    x = frames.permute(0, 3, 1, 2)                                         # (T, 3, H, W), channels-last
    if cfg.do_resize:
        x = _resize(x, cfg, use_uint8_kernels)
    if cfg.do_center_crop:
        x = _center_crop(x, cfg.crop_size)                                 # (T, 3, S, S), zero padding exact
    # one contiguous float32 copy, then the same arithmetic in place (each value rounds exactly as
    # (x * rescale - mean) / std would out of place, without three more frame-sized buffers)
    x = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    if cfg.do_rescale:
        x.mul_(cfg.rescale_factor)
    if cfg.do_normalize:
        mean = torch.tensor(cfg.image_mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(cfg.image_std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x.sub_(mean).div_(std)
    return x
