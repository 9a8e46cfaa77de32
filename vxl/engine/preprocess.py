"""CLIP image preprocessing of video frames, batched in torch: what `CLIPImageProcessor` computes
(PIL resize of the shortest side, center crop, rescale, normalise) on uint8 frames [T, H, W, 3],
without a per-frame PIL loop. The settings (`ImageProcessorConfig`) live with the CLIP configs in the model layer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# re-exported: the engine's preprocessing and its settings are imported together
from vxl.model.clip_configs import CLIP_MEAN, CLIP_STD, PIL_RESAMPLE_MODES, ImageProcessorConfig

__all__ = ["CLIP_MEAN", "CLIP_STD", "ImageProcessorConfig", "preprocess_frames", "resize_output_size"]


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
