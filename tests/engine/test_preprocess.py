"""Batched torch CLIP preprocessing against a PIL reference written here, which follows what
transformers' CLIPImageProcessor computes (its PIL path): shortest side to `shortest_edge` with
PIL BICUBIC (long side int(edge * long / short)), center crop (zero padded when smaller), x 1/255,
(x - mean) / std. The config reader is tested on both preprocessor_config.json layouts.
"""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vxl.engine.preprocess import CLIP_MEAN, CLIP_STD, ImageProcessorConfig, preprocess_frames

# One uint8 level after normalisation is 1 / (255 * std) <= 1 / (255 * 0.2613) = 0.0150.
ONE_LEVEL = 1 / (255 * min(CLIP_STD))


def pil_reference(img: np.ndarray, cfg: ImageProcessorConfig) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, S, S] the way CLIPImageProcessor does it, one image at a time."""
    h, w = img.shape[:2]
    short, long = min(h, w), max(h, w)
    new_long = int(cfg.shortest_edge * long / short)
    new_h, new_w = (cfg.shortest_edge, new_long) if h <= w else (new_long, cfg.shortest_edge)
    out = np.asarray(Image.fromarray(img).resize((new_w, new_h), Image.Resampling(cfg.resample)))
    crop = cfg.crop_size
    if new_h < crop or new_w < crop:                     # HF center_crop pads with zeros, ceil before
        padded = np.zeros((max(new_h, crop), max(new_w, crop), 3), np.uint8)
        top, left = math.ceil((padded.shape[0] - new_h) / 2), math.ceil((padded.shape[1] - new_w) / 2)
        padded[top:top + new_h, left:left + new_w] = out
        out = padded
    top, left = (out.shape[0] - crop) // 2, (out.shape[1] - crop) // 2
    out = out[top:top + crop, left:left + crop].astype(np.float32) * np.float32(cfg.rescale_factor)
    out = (out - np.array(cfg.image_mean, np.float32)) / np.array(cfg.image_std, np.float32)
    return out.transpose(2, 0, 1)


# (H, W): wide, tall, square, smaller than the crop, odd, one pixel, already at the edge, 720p
SIZES = [(48, 64), (64, 48), (100, 100), (20, 30), (17, 5), (1, 1), (337, 1001), (336, 500), (720, 1280)]


# Measured over SIZES on random noise images (the worst case), in uint8 levels of the PIL reference:
# - float passes: max 1, mean <= 0.002. torch's antialiased bicubic is PIL's filter (a = -0.5, support
#   scaled when downsizing) and we round to uint8 between the horizontal and vertical pass as PIL does;
#   what remains is PIL's fixed-point arithmetic. (Extreme aspect ratios such as 2 x 900 reach 2.)
# - torch's uint8 CPU kernels (fixed point, Pillow-SIMD's): max 2, mean <= 0.008.
# Bounds: max 1 / mean 0.01 levels (float), max 2 / mean 0.02 levels (uint8).
BOUNDS = {False: (1, 0.01), True: (2, 0.02)}


@pytest.mark.parametrize("use_uint8", [False, True])
@pytest.mark.parametrize("hw", SIZES)
def test_matches_pil_reference(hw, use_uint8):
    rng = np.random.default_rng(hw[0] * 7919 + hw[1])
    frames = rng.integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    cfg = ImageProcessorConfig.clip_vit_l_336()
    ours = preprocess_frames(torch.from_numpy(frames), cfg, use_uint8_kernels=use_uint8)
    assert ours.shape == (2, 3, 336, 336) and ours.dtype == torch.float32
    ref = torch.from_numpy(np.stack([pil_reference(f, cfg) for f in frames]))
    diff = (ours - ref).abs()
    max_levels, mean_levels = BOUNDS[use_uint8]
    assert diff.max().item() <= max_levels * ONE_LEVEL * 1.001
    assert diff.mean().item() <= mean_levels * ONE_LEVEL


def test_default_path_is_uint8_on_cpu():
    frames = torch.randint(0, 256, (2, 50, 90, 3), dtype=torch.uint8)
    cfg = ImageProcessorConfig.clip_vit_l_336()
    assert torch.equal(preprocess_frames(frames, cfg), preprocess_frames(frames, cfg, use_uint8_kernels=True))


@pytest.mark.parametrize("use_uint8", [False, True])
def test_small_edge_pads_like_hf(use_uint8):
    """shortest_edge below crop_size: the resized image is zero padded (in uint8) before the crop."""
    cfg = ImageProcessorConfig(shortest_edge=40, crop_size=56)
    frames = np.random.default_rng(3).integers(0, 256, (3, 30, 71, 3), dtype=np.uint8)
    ours = preprocess_frames(torch.from_numpy(frames), cfg, use_uint8_kernels=use_uint8)
    ref = torch.from_numpy(np.stack([pil_reference(f, cfg) for f in frames]))
    assert ours.shape == (3, 3, 56, 56)
    assert (ours - ref).abs().max().item() <= BOUNDS[use_uint8][0] * ONE_LEVEL * 1.001


@pytest.mark.parametrize("use_uint8", [False, True])
def test_bilinear(use_uint8):
    cfg = ImageProcessorConfig(resample=2)                          # PIL.Image.BILINEAR, measured max 1
    frames = np.random.default_rng(5).integers(0, 256, (2, 45, 80, 3), dtype=np.uint8)
    ours = preprocess_frames(torch.from_numpy(frames), cfg, use_uint8_kernels=use_uint8)
    ref = torch.from_numpy(np.stack([pil_reference(f, cfg) for f in frames]))
    assert (ours - ref).abs().max().item() <= ONE_LEVEL * 1.001


def test_flags_off_and_identity():
    frames = torch.randint(0, 256, (2, 9, 11, 3), dtype=torch.uint8)
    cfg = ImageProcessorConfig(do_resize=False, do_center_crop=False, do_rescale=False, do_normalize=False)
    assert torch.equal(preprocess_frames(frames, cfg), frames.permute(0, 3, 1, 2).float())
    cfg = ImageProcessorConfig(shortest_edge=9, crop_size=9)     # already at the edge: crop only
    want = frames.permute(0, 3, 1, 2).float()[..., :, 1:10] / 255
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(preprocess_frames(frames, cfg), (want - mean) / std, rtol=0, atol=1e-6)


@pytest.mark.parametrize("hw,crop", [((33, 47), 33), ((21, 13), 25), ((64, 64), 64)])
def test_in_place_arithmetic_rounds_like_out_of_place(hw, crop):
    """Rescale and normalise run in place on one contiguous copy: bit for bit (x * r - mean) / std computed
    out of place, the input untouched; crops and zero padding (crop larger than the frame) included."""
    frames = torch.from_numpy(np.random.default_rng(11).integers(0, 256, (3, *hw, 3), dtype=np.uint8))
    before = frames.clone()
    cfg = ImageProcessorConfig(do_resize=False, crop_size=crop)
    out = preprocess_frames(frames, cfg)
    x = frames.permute(0, 3, 1, 2).float()
    miss_h, miss_w = max(0, crop - hw[0]), max(0, crop - hw[1])          # HF pads ceil(missing / 2) before
    x = torch.nn.functional.pad(x, (math.ceil(miss_w / 2), miss_w // 2, math.ceil(miss_h / 2), miss_h // 2))
    top, left = (x.shape[-2] - crop) // 2, (x.shape[-1] - crop) // 2
    x = x[..., top:top + crop, left:left + crop]
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert out.is_contiguous() and out.dtype == torch.float32
    assert torch.equal(out, (x * cfg.rescale_factor - mean) / std)
    assert torch.equal(frames, before)


@pytest.mark.parametrize("frames,match", [
    (torch.zeros(2, 8, 8, 3), "uint8"), (np.zeros((2, 8, 8, 3), np.uint8), "uint8"),
    (torch.zeros(8, 8, 3, dtype=torch.uint8), r"\[T, H, W, 3\]"), (torch.zeros(0, 8, 8, 3, dtype=torch.uint8), ">= 1"),
])
def test_bad_frames(frames, match):
    with pytest.raises(ValueError, match=match):
        preprocess_frames(frames, ImageProcessorConfig())


def test_config_layouts(tmp_path):
    old = {"crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
           "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(CLIP_MEAN),
           "image_std": list(CLIP_STD), "resample": 3, "size": 336}
    new = {"crop_size": {"height": 336, "width": 336}, "size": {"shortest_edge": 336}, "do_rescale": True,
           "rescale_factor": 0.00392156862745098, "do_convert_rgb": True, "image_mean": list(CLIP_MEAN),
           "image_std": list(CLIP_STD), "image_processor_type": "CLIPImageProcessor", "resample": 3}
    builtin = ImageProcessorConfig.clip_vit_l_336()
    assert ImageProcessorConfig.from_dict(old) == builtin
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps(new))
    assert ImageProcessorConfig.from_file(path) == builtin
    odd = ImageProcessorConfig(shortest_edge=40, crop_size=56, resample=2, do_rescale=False, image_std=(1, 2, 3))
    assert ImageProcessorConfig.from_dict(json.loads(json.dumps(odd.to_dict()))) == odd
    assert (builtin.shortest_edge, builtin.crop_size, builtin.resample) == (336, 336, 3)
    assert builtin.image_mean == (0.48145466, 0.4578275, 0.40821073)
    assert builtin.image_std == (0.26862954, 0.26130258, 0.27577711)


@pytest.mark.parametrize("bad,match", [
    ({"size": {"height": 224, "width": 224}}, "shortest_edge"), ({"crop_size": {"height": 2, "width": 3}}, "square"),
    ({"resample": 0}, "resample"), ({"do_pad": True}, "do_pad"), ({"image_std": [1, 0, 1]}, "std"),
])
def test_config_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        ImageProcessorConfig.from_dict(bad)
