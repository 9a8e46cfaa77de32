"""Shared test helpers: tiny random Video-XL configs and models, written to official-layout directories;
paged caches; the one mp4 writer of the tests; images as the frames the engine makes of them."""
from __future__ import annotations

import dataclasses
import struct
import zlib

import numpy as np
import torch

from vxl.config import ModelConfig
from vxl.engine.image import load_image
from vxl.engine.preprocess import preprocess_frames
from vxl.model.clip_configs import ImageProcessorConfig
from vxl.model.loader import LoadedModel
from vxl.model.tiny import save_checkpoint
from vxl.model.video_llm import VideoXLForCausalLM


def small_config(**overrides) -> ModelConfig:
    d = dict(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
             intermediate_size=80, rope_theta=1e4, rms_norm_eps=1e-6, eos_token_id=1, beacon_window=24,
             beacon_stride=24, beacon_ratio=[2, 4, 8, 12, 16], beacon_param=["q", "k", "v"])
    d.update(overrides)
    return ModelConfig.from_dict(d)


def random_model(cfg: ModelConfig, seed: int, clip_config=None) -> VideoXLForCausalLM:
    """Random weights of realistic scale; beacon weights differ from the ordinary ones."""
    gen = torch.Generator().manual_seed(seed)
    model = VideoXLForCausalLM(cfg, clip_config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.6 if "embed" in name else 0.15))
    model.prepare()
    return model.eval()


def write_checkpoint(path, cfg: ModelConfig, seed: int = 0, num_shards: int = 1, drop=()) -> VideoXLForCausalLM:
    model = random_model(cfg, seed)
    save_checkpoint(LoadedModel(model, cfg, None, None, cfg.eos_token_ids, "test"), str(path),
                    num_shards=num_shards, drop=tuple(drop))
    return model


def paged_cache(kept_k, kept_v, page_size, permute, spare_pages=1, seed=0):
    """Pages holding each sequence's K/V [n_b, nkv, hd]; other slots random. -> k_cache, v_cache, block_tables.

    Each block table row has `spare_pages` pages of unused capacity; unused entries are -1.
    """
    gen = torch.Generator().manual_seed(seed)
    num_kv_heads, head_dim = kept_k[0].shape[1:]
    pages_per_seq = [-(-k.shape[0] // page_size) + spare_pages for k in kept_k]
    num_pages = sum(pages_per_seq) + 2
    page_ids = torch.randperm(num_pages, generator=gen) if permute else torch.arange(num_pages)
    shape = (num_pages, page_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(kept_k[0].dtype)
    v_cache = torch.randn(shape, generator=gen).to(kept_k[0].dtype)
    block_tables = torch.full((len(kept_k), max(pages_per_seq) + 1), -1, dtype=torch.int32)
    first = 0
    for b, (k, v) in enumerate(zip(kept_k, kept_v)):
        pages = page_ids[first:first + pages_per_seq[b]]
        first += pages_per_seq[b]
        block_tables[b, :len(pages)] = pages.to(torch.int32)
        idx = torch.arange(k.shape[0])
        k_cache[pages[idx // page_size], idx % page_size] = k
        v_cache[pages[idx // page_size], idx % page_size] = v
    return k_cache, v_cache, block_tables


def assert_half_error_within_twice_torch(out, ref_half, ref64) -> None:
    """A kernel's fp16 error vs float64 is at most twice the fp16 torch reference's own error (STYLE)."""
    assert out.dtype == torch.float16
    err = (out.double() - ref64).abs().max().item()
    err_torch = (ref_half.double() - ref64).abs().max().item()
    assert err <= 2 * err_torch + 1e-6, f"kernel error {err:.2e} vs torch fp16 error {err_torch:.2e}"
    assert err <= 1e-3 * max(1.0, ref64.abs().max().item()), f"kernel fp16 error {err:.2e}"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that announces width x height RGB pixels and holds ten bytes of pixel data (a decompression
    bomb's header): PIL opens it and knows its size, and fails only when it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(10)))
            + chunk(b"IEND", b""))


def write_mp4(path, frames: np.ndarray, *, lossless: bool = True, options: dict[str, str] | None = None) -> str:
    """uint8 RGB frames [T, H, W, 3] as H.264 in an .mp4 at 24 fps (PyAV); returns str(path).

    Lossless (crf 0) unless `lossless=False` (x264's default quality). 4:2:0 chroma where H and W are even,
    4:4:4 otherwise (4:2:0 needs even sizes). `options` are further x264 options (e.g. {"g": "5"})."""
    import av
    height, width = frames.shape[1:3]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        stream.options = {**({"crf": "0"} if lossless else {}), **(options or {})}
        container.start_encoding()          # so that no frames still writes a file (a video of zero frames)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def moving_square_frames(num_frames: int = 96, height: int = 120, width: int = 160) -> np.ndarray:
    """[T, H, W, 3] uint8: a moving coloured 24 px square on a slowly changing background."""
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    for t, frame in enumerate(frames):
        frame[:] = (40 + t % 60, 80, 120 + (t * 2) % 100)
        x, y = (t * 3) % (width - 24), (t * 2) % (height - 24)
        frame[y:y + 24, x:x + 24] = (230, 200 - t % 50, 30)
    return frames


def images_as_frames(images, processor: ImageProcessorConfig) -> torch.Tensor:
    """uint8 [N, S, S, 3]: each image resized and center cropped by `preprocess_frames` alone, before
    rescale/normalise (the frames an `images` request should stream as a video)."""
    geometry = dataclasses.replace(processor, do_rescale=False, do_normalize=False)
    frames = [preprocess_frames(load_image(image)[None], geometry) for image in images]   # (1, 3, S, S) each
    return torch.cat(frames).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
