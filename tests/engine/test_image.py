"""Image input against references written here from the released rules: grid choice by brute force
over the pinpoints (most effective resolution, then least waste, then list order), resize-and-pad and
tiling with plain PIL calls (BICUBIC resize, black canvas, crop boxes), several images as frames.
"""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import images_as_frames
from vxl.engine.image import (ImageFramesSource, anyres_tiles, check_image_config, divide_to_tiles, load_image,
                              parse_pinpoints, resize_and_pad, select_best_resolution)
from vxl.engine.preprocess import ImageProcessorConfig, preprocess_frames
from vxl.engine.video import open_video

# The released finetune scripts' 200 pinpoints (scripts/finetune_{i,v}.sh): every a x b grid of 336
# tiles with 2 <= a * b and b <= 49 // a, a outer.
VIDEOXL_PINPOINTS = [(336 * a, 336 * b) for a in range(1, 50) for b in range(1, 49 // a + 1) if a * b >= 2]
# (w, h): square, wide, tall, tiny, huge, exactly one tile, one pixel, odd
SIZES = [(1000, 1000), (1280, 720), (600, 1700), (5, 3), (4000, 300), (336, 336), (1, 1), (337, 673)]
TINY_CFG = ImageProcessorConfig(shortest_edge=28, crop_size=28)


def ref_best(w, h, pins):
    def key(idx):
        pw, ph = pins[idx]
        s = min(pw / w, ph / h)
        effective = min(int(w * s) * int(h * s), w * h)
        return (-effective, pw * ph - effective, idx)
    return pins[min(range(len(pins)), key=key)]


def ref_resize_and_pad(img: np.ndarray, target):
    """The released steps in PIL: fill the side with the smaller scale, ceil the other (capped), resize
    with BICUBIC, paste on a black RGB canvas at the floor-halved offsets."""
    h, w = img.shape[:2]
    tw, th = target
    if tw / w < th / h:
        nw, nh = tw, min(math.ceil(h * (tw / w)), th)
    else:
        nw, nh = min(math.ceil(w * (th / h)), tw), th
    resized = Image.fromarray(img).resize((nw, nh), Image.BICUBIC)
    canvas = Image.new("RGB", (tw, th), (0, 0, 0))
    canvas.paste(resized, ((tw - nw) // 2, (th - nh) // 2))
    return np.asarray(canvas), resized, ((tw - nw) // 2, (th - nh) // 2)


def ref_tiles(img: np.ndarray, tile):
    pil = Image.fromarray(img)
    return np.stack([np.asarray(pil.crop((x, y, x + tile, y + tile)))
                     for y in range(0, img.shape[0], tile) for x in range(0, img.shape[1], tile)])


def rand_image(h, w, seed=0):
    return np.random.default_rng(seed * 7919 + h * 31 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", SIZES)
def test_best_resolution_videoxl_pinpoints(size):
    assert select_best_resolution(size, VIDEOXL_PINPOINTS) == ref_best(*size, VIDEOXL_PINPOINTS)


def test_best_resolution_hand_values():
    # 1000 x 1000 fits 1008 x 1008 whole: 3 x 3 tiles
    assert select_best_resolution((1000, 1000), VIDEOXL_PINPOINTS) == (1008, 1008)
    # 4000 x 300 fits 4032 x 302 inside 4032 x 336 whole, with the least waste: 12 x 1 tiles
    assert select_best_resolution((4000, 300), VIDEOXL_PINPOINTS) == (4032, 336)
    # tiny: every pinpoint keeps all 15 pixels; least area first in list order (there is no 1 x 1 grid)
    assert select_best_resolution((5, 3), VIDEOXL_PINPOINTS) == (336, 672)
    # ties on effective and waste go to the earlier pinpoint
    assert select_best_resolution((5, 5), [(672, 336), (336, 672)]) == (672, 336)
    assert select_best_resolution((5, 5), [(336, 672), (672, 336)]) == (336, 672)


def test_best_resolution_random_sizes():
    rng = np.random.default_rng(0)
    for w, h in rng.integers(1, 5000, (300, 2)).tolist():
        assert select_best_resolution((w, h), VIDEOXL_PINPOINTS) == ref_best(w, h, VIDEOXL_PINPOINTS), (w, h)


@pytest.mark.parametrize("size", SIZES)
def test_resize_and_pad_matches_pil(size):
    w, h = size
    img = rand_image(h, w)
    target = ref_best(w, h, VIDEOXL_PINPOINTS)
    out = resize_and_pad(img, target)
    ref, resized, (left, top) = ref_resize_and_pad(img, target)
    assert out.dtype == torch.uint8 and out.shape == (target[1], target[0], 3)
    assert np.array_equal(out.numpy(), ref)
    nw, nh = resized.size
    assert (nw == target[0]) or (nh == target[1])                      # one side fills the target
    assert np.array_equal(out[top:top + nh, left:left + nw].numpy(), np.asarray(resized))
    border = torch.ones(target[1], target[0], dtype=torch.bool)
    border[top:top + nh, left:left + nw] = False
    assert (out[border] == 0).all()


@pytest.mark.parametrize("size", SIZES)
def test_anyres_tiles(size):
    w, h = size
    img = rand_image(h, w, seed=1)
    tw, th = ref_best(w, h, VIDEOXL_PINPOINTS)
    tiles = anyres_tiles(torch.from_numpy(img), VIDEOXL_PINPOINTS, 336)
    assert tiles.shape == ((tw // 336) * (th // 336), 336, 336, 3) and tiles.dtype == torch.uint8
    assert np.array_equal(tiles.numpy(), ref_tiles(ref_resize_and_pad(img, (tw, th))[0], 336))


def test_tile_counts():
    assert anyres_tiles(rand_image(300, 4000), VIDEOXL_PINPOINTS, 336).shape[0] == 12
    assert anyres_tiles(rand_image(1000, 1000), VIDEOXL_PINPOINTS, 336).shape[0] == 9
    assert anyres_tiles(rand_image(3, 5), VIDEOXL_PINPOINTS, 336).shape[0] == 2


def test_divide_to_tiles_row_major_and_partial():
    img = rand_image(9, 13, seed=2)
    for tile in (3, 4, 13, 20):
        out = divide_to_tiles(torch.from_numpy(img), tile)
        assert np.array_equal(out.numpy(), ref_tiles(img, tile))     # PIL crop fills outside with 0


def test_pinpoints_must_be_tile_multiples():
    with pytest.raises(ValueError, match="multiples of the tile size 336"):
        anyres_tiles(rand_image(10, 10), [(336, 700)], 336)


def test_tiles_preprocess_without_resize():
    """A 336 tile through CLIP preprocessing (shortest side 336, crop 336) is only rescaled and
    normalised, as the released processor's same-size PIL resize is a copy."""
    tiles = anyres_tiles(rand_image(500, 800, seed=3), VIDEOXL_PINPOINTS, 336)
    cfg = ImageProcessorConfig.clip_vit_l_336()
    mean = torch.tensor(cfg.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.image_std).view(1, 3, 1, 1)
    expected = (tiles.permute(0, 3, 1, 2).float() * cfg.rescale_factor - mean) / std
    assert torch.equal(preprocess_frames(tiles, cfg), expected)


def preprocess_each(images, cfg) -> torch.Tensor:
    """float32 pixel values [N, 3, S, S]: `preprocess_frames` on each image alone."""
    return torch.cat([preprocess_frames(load_image(image)[None], cfg) for image in images])


@pytest.mark.parametrize("cfg", [TINY_CFG, ImageProcessorConfig.clip_vit_l_336()])
def test_image_frames_equal_per_image_preprocessing(cfg):
    images = [rand_image(40, 70, 4), Image.fromarray(rand_image(90, 31, 5)), torch.from_numpy(rand_image(17, 17, 6))]
    source = ImageFramesSource(images, cfg)
    assert source.num_frames == 3
    frames = torch.cat(list(source.iter_chunks(2)))
    s = cfg.crop_size
    assert frames.shape == (3, s, s, 3) and frames.dtype == torch.uint8
    assert torch.equal(frames, images_as_frames(images, cfg))
    pixels = preprocess_each(images, cfg)
    assert pixels.shape == (3, 3, s, s)
    assert torch.equal(preprocess_frames(frames, cfg), pixels)         # second resize is a no-op
    video = open_video(frames)                                           # streams as a video array
    assert video.num_frames == 3
    assert torch.equal(torch.cat(list(video.iter_chunks(2))), frames)


def test_same_size_images_equal_video_array():
    frames = np.stack([rand_image(50, 80, seed) for seed in range(4)])
    pixels = preprocess_each(list(frames), TINY_CFG)
    assert torch.equal(pixels, preprocess_frames(torch.from_numpy(frames), TINY_CFG))


def test_load_image_from_files(tmp_path):
    img = rand_image(20, 30, 7)
    Image.fromarray(img).save(tmp_path / "a.png")
    assert np.array_equal(load_image(tmp_path / "a.png").numpy(), img)
    Image.fromarray(img[..., 0]).save(tmp_path / "gray.png")             # mode L -> RGB
    assert np.array_equal(load_image(str(tmp_path / "gray.png")).numpy(), np.repeat(img[..., :1], 3, -1))
    rgba = np.concatenate([img, np.full((20, 30, 1), 7, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(load_image(tmp_path / "rgba.png").numpy(), img)


def test_bad_images(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    cases = [(tmp_path / "missing.jpg", "not found"), (tmp_path / "notes.jpg", "cannot read .* as an image"),
             (tmp_path / "empty.jpg", "as an image"), (tmp_path, "not a file"),
             (np.zeros((0, 5, 3), np.uint8), "empty"), (torch.zeros(4, 0, 3, dtype=torch.uint8), "empty"),
             (Image.new("RGB", (0, 4)), "empty"), (np.zeros((4, 5, 3), np.float32), "dtype uint8"),
             (torch.zeros(4, 5, 3), "dtype uint8"), (np.zeros((4, 5), np.uint8), r"\[H, W, 3\]"),
             (np.zeros((4, 5, 4), np.uint8), r"\[H, W, 3\]"), (3.5, "must be a path")]
    for image, message in cases:
        with pytest.raises(ValueError, match=message):
            load_image(image)
    with pytest.raises(ValueError, match=r"images\[1\]: .*not found"):
        ImageFramesSource([rand_image(5, 5), tmp_path / "missing.png"], TINY_CFG)
    with pytest.raises(ValueError, match="non-empty list"):
        ImageFramesSource([], TINY_CFG)


def test_parse_pinpoints():
    assert parse_pinpoints([[336, 672], [672, 336]]) == [(336, 672), (672, 336)]
    assert parse_pinpoints(str(VIDEOXL_PINPOINTS)) == VIDEOXL_PINPOINTS
    grid = parse_pinpoints("(1x1),(1x2),(2x1),(2x2),(1x3)", tile_size=336)   # first and last only
    assert grid == [(336, 336), (336, 672), (336, 1008)]
    assert parse_pinpoints("(1x1),...,(2x2)", tile_size=28) == [(28, 28), (28, 56), (56, 28), (56, 56)]
    for value, message in [(None, "missing"), ("(1x1),(2x2)", "tile size"), ([], "non-empty"),
                           ([[336]], "pair of ints"), ([[0, 336]], "pair of ints"), ("[(336, ", "not a list")]:
        with pytest.raises(ValueError, match=message):
            parse_pinpoints(value)


def test_check_image_config():
    check_image_config("anyres", "unires")
    for ratio in ("pad", "square", None, "anyres_max_9", "highres"):
        with pytest.raises(ValueError, match=f"image_aspect_ratio={ratio!r} is not supported"):
            check_image_config(ratio, "unires")
    with pytest.raises(ValueError, match="mm_patch_merge_type='flat' is not supported"):
        check_image_config("anyres", "flat")


def test_images_are_decoded_one_at_a_time(tmp_path, monkeypatch):
    """A chunk of several images decodes one, turns it into its frame, then decodes the next: one full-size
    image in memory at a time, never the whole chunk."""
    from vxl.engine import image as img
    paths = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    events, load, as_frames = [], img.load_image, img._as_frames
    monkeypatch.setattr(img, "load_image", lambda image, max_pixels=None: events.append("decode") or
                        load(image, max_pixels))
    monkeypatch.setattr(img, "_as_frames", lambda loaded, geometry: events.append(f"frames of {len(loaded)}") or
                        as_frames(loaded, geometry))
    frames = next(img.ImageFramesSource(paths, TINY_CFG).iter_chunks(4))
    assert frames.shape[0] == 4 and events == ["decode", "frames of 1"] * 4
    assert torch.equal(frames, images_as_frames(paths, TINY_CFG))
