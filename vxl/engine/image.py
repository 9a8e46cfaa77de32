"""Image input: loading, the released model's "anyres" tiling of one image (best grid among the
`image_grid_pinpoints`, aspect-preserving resize, black padding, row-major tiles) and several images
turned into frames for the video path. Tiles and frames come out as uint8 [N, S, S, 3]: `open_video`
on them runs the same CLIP preprocessing as video frames, whose resize is then a no-op.
"""
from __future__ import annotations

import ast
import dataclasses
import math
import os
import re

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vxl.config import check_pinpoint_count
from vxl.engine.preprocess import preprocess_frames
from vxl.model.clip_configs import ImageProcessorConfig

SUPPORTED_ASPECT_RATIO = "anyres"
SUPPORTED_MERGE_TYPE = "unires"


def check_pixels(width: int, height: int, max_pixels: int | None, what: str) -> None:
    """Refuse an image over `max_pixels` from its size alone (a file's header), before it is decoded:
    a small compressed file can hold an image of gigabytes."""
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(f"{what} is {width}x{height} = {width * height} pixels, over the engine's "
                         f"max_image_pixels ({max_pixels})")


def _check_pil(img: Image.Image, what: str, max_pixels: int | None = None) -> torch.Tensor:
    if img.width < 1 or img.height < 1:
        raise ValueError(f"{what} is empty: size {img.width}x{img.height}")
    check_pixels(img.width, img.height, max_pixels, what)
    return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8))    # (H, W, 3)


def _load_path(path, max_pixels: int | None = None) -> torch.Tensor:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"image file not found: {path}")
    if not os.path.isfile(path):
        raise ValueError(f"image path is not a file: {path}")
    try:
        with Image.open(path) as img:      # reads the header only
            check_pixels(img.width, img.height, max_pixels, f"image {path}")
            img.load()                      # decode now: a truncated file fails here, not later
            return _check_pil(img, f"image {path}")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read {path} as an image: {e}") from None


def load_image(image, max_pixels: int | None = None) -> torch.Tensor:
    """A path (str / os.PathLike, read with PIL), a PIL image, or a uint8 numpy array / torch tensor
    [H, W, 3] -> uint8 RGB tensor [H, W, 3] (arrays keep their device). PIL images of any mode are
    converted to RGB, as the released code does when it opens an image. Bad input, or an image of more
    than `max_pixels` pixels (checked before a file is decoded), raises ValueError."""
    if isinstance(image, (str, os.PathLike)):
        return _load_path(image, max_pixels)
    if isinstance(image, Image.Image):
        return _check_pil(image, "PIL image", max_pixels)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image array must have dtype uint8, got {image.dtype}")
        image = torch.from_numpy(np.ascontiguousarray(image))
    elif not isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a path, a PIL image or a uint8 array [H, W, 3], got {type(image).__name__}")
    if image.dtype != torch.uint8:
        raise ValueError(f"image tensor must have dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image array must have shape [H, W, 3], got {tuple(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image array is empty: shape {tuple(image.shape)}")
    check_pixels(image.shape[1], image.shape[0], max_pixels, "image array")
    return image


def _pair(p, what: str) -> tuple[int, int]:
    if not isinstance(p, (list, tuple)) or len(p) != 2 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in p):
        raise ValueError(f"{what} must be a pair of ints >= 1 (width, height), got {p!r}")
    return int(p[0]), int(p[1])


def parse_pinpoints(cfg_value, tile_size: int | None = None) -> list[tuple[int, int]]:
    """`image_grid_pinpoints` -> [(width, height), ...] in pixels, order kept (it breaks ties).

    Forms the released code reads: a list of [w, h] pairs (what its train.py writes to config.json),
    the same list as a Python literal string, or a grid range string such as "(1x1),...,(6x6)": only
    the first and last "(AxB)" count, giving every (i, j) for i in A0..A1, j in B0..B1 (i outer), each
    times `tile_size` (required for this form; the released code uses the processor's shortest edge).
    """
    if cfg_value is None:
        raise ValueError("image_grid_pinpoints is missing from the config: it is required for anyres images")
    if isinstance(cfg_value, str) and "x" in cfg_value:
        matches = re.findall(r"\((\d+)x(\d+)\)", cfg_value)
        if not matches:
            raise ValueError(f"image_grid_pinpoints={cfg_value!r}: expected '(AxB),...,(CxD)'")
        if tile_size is None:
            raise ValueError("image_grid_pinpoints in the '(AxB)' form needs the tile size")
        check_pinpoint_count(cfg_value)             # before expanding: "(1x1),...,(9999x9999)" is 10^8
        (a0, b0), (a1, b1) = map(int, matches[0]), map(int, matches[-1])
        cfg_value = [(i * tile_size, j * tile_size) for i in range(a0, a1 + 1) for j in range(b0, b1 + 1)]
    elif isinstance(cfg_value, str):
        try:
            cfg_value = ast.literal_eval(cfg_value)
        except (ValueError, SyntaxError):
            raise ValueError(f"image_grid_pinpoints={cfg_value!r} is not a list of (width, height)") from None
    check_pinpoint_count(cfg_value)
    if not isinstance(cfg_value, (list, tuple)) or len(cfg_value) == 0:
        raise ValueError(f"image_grid_pinpoints must be a non-empty list of (width, height), got {cfg_value!r}")
    return [_pair(p, "each image_grid_pinpoints entry") for p in cfg_value]


def check_image_config(image_aspect_ratio, mm_patch_merge_type) -> None:
    """Single images are supported as the released Video-XL finetune config runs them: "anyres" tiling
    with the "unires" merge (144 tokens per tile). Anything else raises ValueError naming the value.

    In the released code, "pad" / "square" (and any other string) make one 336 frame per image whose
    576 features reach the LLM unpooled, and its generate() rejects that 4-D input; None crashes
    `process_images`. vxl does not reproduce those paths."""
    if image_aspect_ratio != SUPPORTED_ASPECT_RATIO:
        raise ValueError(f"image_aspect_ratio={image_aspect_ratio!r} is not supported for images: vxl supports "
                         f"{SUPPORTED_ASPECT_RATIO!r} (tiled, as the released Video-XL config)")
    if mm_patch_merge_type != SUPPORTED_MERGE_TYPE:
        raise ValueError(f"mm_patch_merge_type={mm_patch_merge_type!r} is not supported for images: vxl supports "
                         f"{SUPPORTED_MERGE_TYPE!r} (2x2-pooled tiles, as the released Video-XL config)")


def select_best_resolution(size: tuple[int, int], pinpoints) -> tuple[int, int]:
    """The pinpoint (w, h) keeping the most of the image when it is scaled to fit inside it:
    effective = min(floor(w0 s) * floor(h0 s), w0 h0) with s = min(w / w0, h / h0) (float, as released);
    ties go to the least wasted area w h - effective, then to the earliest pinpoint."""
    width, height = _pair(tuple(size), "image size")
    best, best_effective, best_wasted = None, -1, math.inf
    for w, h in pinpoints:
        scale = min(w / width, h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = w * h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (w, h), effective, wasted
    if best is None:
        raise ValueError("no pinpoints to choose from")
    return best


def _fit_size(width: int, height: int, tw: int, th: int) -> tuple[int, int]:
    """Released rule: the side with the smaller scale fills the target; the other is ceil'd, capped."""
    scale_w, scale_h = tw / width, th / height
    if scale_w < scale_h:
        return tw, min(math.ceil(height * scale_w), th)
    return min(math.ceil(width * scale_h), tw), th


def resize_and_pad(image, target: tuple[int, int]) -> torch.Tensor:
    """Image -> uint8 [th, tw, 3] (CPU): resized keeping its aspect ratio with PIL BICUBIC (the default
    filter of the released code's `Image.resize` for RGB), pasted on a black canvas at
    ((tw - nw) // 2, (th - nh) // 2)."""
    img = load_image(image).cpu()
    tw, th = _pair(tuple(target), "target resolution")
    height, width = img.shape[:2]
    nw, nh = _fit_size(width, height, tw, th)
    resized = Image.fromarray(img.numpy()).resize((nw, nh), Image.Resampling.BICUBIC)
    out = torch.zeros(th, tw, 3, dtype=torch.uint8)
    top, left = (th - nh) // 2, (tw - nw) // 2
    out[top:top + nh, left:left + nw] = torch.from_numpy(np.array(resized))
    return out


def divide_to_tiles(image: torch.Tensor, tile: int) -> torch.Tensor:
    """uint8 [H, W, 3] -> [N, tile, tile, 3], rows top to bottom, each left to right. Tiles running
    past the edge are zero filled (as PIL's crop outside the image)."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be an int >= 1, got {tile!r}")
    height, width = image.shape[:2]
    rows, cols = -(-height // tile), -(-width // tile)
    padded = image.new_zeros(rows * tile, cols * tile, 3)
    padded[:height, :width] = image
    tiles = padded.view(rows, tile, cols, tile, 3).permute(0, 2, 1, 3, 4)   # (rows, cols, tile, tile, 3)
    return tiles.reshape(rows * cols, tile, tile, 3).contiguous()


def _check_multiples(pinpoints, tile_size: int) -> None:
    bad = [p for p in pinpoints if p[0] % tile_size or p[1] % tile_size]
    if bad:
        # the released unires merge views the features as (H / tile, W / tile) with floor division
        raise ValueError(f"image_grid_pinpoints {bad[:3]} are not multiples of the tile size {tile_size}")


def anyres_tiles(image, pinpoints, tile_size: int, max_pixels: int | None = None) -> torch.Tensor:
    """One image -> the uint8 tiles [N, tile_size, tile_size, 3] (row-major) whose features the released
    unires merge keeps: best pinpoint, resize_and_pad, divide_to_tiles.

    The released `process_anyres_image` also puts a tile_size x tile_size resize of the whole image
    first, but its unires branch (`get_image_features` and `prepare_inputs_labels_for_multimodal`)
    drops feature 0 ("base image feature is never used in unires"), so it is not produced here. Each tile
    then goes through CLIP (layer -2, no CLS), the projector and a 2x2 average pool, as a video frame.
    """
    img = load_image(image, max_pixels)
    _check_multiples(pinpoints, tile_size)
    target = select_best_resolution((img.shape[1], img.shape[0]), pinpoints)
    return divide_to_tiles(resize_and_pad(img, target), tile_size)


def _load_all(images, first_idx: int = 0, max_pixels: int | None = None) -> list[torch.Tensor]:
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise ValueError(f"images must be a non-empty list, got {type(images).__name__}")
    out = []
    for idx, image in enumerate(images):
        try:
            out.append(load_image(image, max_pixels))
        except ValueError as e:
            raise ValueError(f"images[{first_idx + idx}]: {e}") from None
    return out


def _frame_geometry(processor: ImageProcessorConfig) -> ImageProcessorConfig:
    """The processor's resize + center crop alone (uint8 values kept), refused when its frames would not
    re-preprocess unchanged."""
    if not processor.do_center_crop or (processor.do_resize and processor.shortest_edge != processor.crop_size):
        raise ValueError("these preprocessing settings do not give stackable frames that re-preprocess "
                         "unchanged (several images need a center crop, and shortest_edge == crop_size)")
    return dataclasses.replace(processor, do_rescale=False, do_normalize=False)


def _as_frames(loaded: list[torch.Tensor], geometry: ImageProcessorConfig) -> torch.Tensor:
    frames = [preprocess_frames(img[None], geometry) for img in loaded]             # (1, 3, S, S) each
    return torch.cat(frames).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # (N, S, S, 3)


class ImageFramesSource:
    """Several images as a video source, one uint8 frame [S, S, 3] each: the image resized and center
    cropped exactly as `preprocess_frames` does (before rescale/normalise), so preprocessing the frames
    again is a no-op resize that gives each image's own pixels. Read lazily: the frame count, and so the
    request's token count, is len(images) before any image is decoded, and an image is loaded only when
    its chunk of frames is needed, one image decoded at a time. Only cheap checks run here (types, that paths
    exist, the size of arrays and PIL images against `max_pixels`); a bad image found later, a file over
    `max_pixels` among them (checked from its header before it is decoded), fails its request with its
    index."""

    decoder = None

    def __init__(self, images, processor: ImageProcessorConfig, max_pixels: int | None = None):
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise ValueError(f"images must be a non-empty list, got {type(images).__name__}")
        for idx, image in enumerate(images):
            if not isinstance(image, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)):
                raise ValueError(f"images[{idx}]: an image must be a path, a PIL image or a uint8 array [H, W, 3], "
                                 f"got {type(image).__name__}")
            if isinstance(image, (str, os.PathLike)) and not os.path.isfile(image):
                raise ValueError(f"images[{idx}]: image file not found: {os.fspath(image)}")
            size = image.size if isinstance(image, Image.Image) else (
                (image.shape[1], image.shape[0]) if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 3
                else None)
            if size is not None:
                check_pixels(*size, max_pixels, f"images[{idx}]")
        self.max_pixels = max_pixels
        self.geometry = _frame_geometry(processor)
        self.images = list(images)
        self.num_frames = self.total_frames = len(self.images)
        self.frame_indices = list(range(self.num_frames))

    def iter_chunks(self, chunk_frames: int):
        """uint8 [n, S, S, 3] per chunk of at most `chunk_frames` images, in order. Each image is decoded,
        resized and dropped before the next is decoded: one full-size image at a time in memory."""
        for start in range(0, self.num_frames, chunk_frames):
            chunk = self.images[start:start + chunk_frames]
            yield torch.cat([_as_frames(_load_all([image], first_idx=start + i, max_pixels=self.max_pixels),
                                        self.geometry) for i, image in enumerate(chunk)])

    def close(self) -> None:
        self.images = []
