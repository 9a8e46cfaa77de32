"""Image requests through the public API: anyres tiles for one image, one frame per image for several; an
official-layout checkpoint against its vision path computed here; image inputs through a VideoMemory."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPVisionConfig, CLIPVisionModel

from helpers import images_as_frames
from vxl import LLM, SamplingParams
from vxl.engine.image import anyres_tiles, parse_pinpoints
from vxl.engine.preprocess import preprocess_frames
from vxl.model.tiny import build_tiny, save_checkpoint

PARAMS = SamplingParams(max_tokens=5, ignore_eos=True)


@pytest.fixture(scope="module")
def llm():
    return LLM("tiny", device="cpu")


def image(seed, h, w):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def ckpt_llm(tmp_path_factory):
    """The tiny model written in the official layout (weights, tokenizer, clip/ directory) and loaded back."""
    path = tmp_path_factory.mktemp("official")
    save_checkpoint(build_tiny(torch.device("cpu"), torch.float32, seed=5), str(path))
    return str(path), LLM(str(path), device="cpu", dtype="float32")


def reference_tile_embeds(path: str, tiles: torch.Tensor) -> torch.Tensor:
    """uint8 tiles [N, S, S, 3] -> projector + 2x2 pool outputs [N * tokens, H], computed here from the
    checkpoint files: rescale + normalise (tiles are crop-sized, so resize and crop are no-ops),
    transformers' CLIPVisionModel hidden_states[-2] without CLS, mlp2x_gelu, 2x2 mean by slicing."""
    with open(os.path.join(path, "clip", "preprocessor_config.json")) as f:
        proc = json.load(f)
    state = load_file(os.path.join(path, "model.safetensors"))
    clip = CLIPVisionModel(CLIPVisionConfig.from_pretrained(os.path.join(path, "clip"))).eval()
    prefix = "model.vision_tower.vision_tower.vision_model."
    missing, unexpected = clip.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                                if k.startswith(prefix)}, strict=False)
    assert not unexpected and all(k.startswith("encoder.layers.") for k in missing)   # unused last layer
    mean, std = torch.tensor(proc["image_mean"]), torch.tensor(proc["image_std"])
    pixels = ((tiles.double() / 255 - mean) / std).float().permute(0, 3, 1, 2)          # (N, 3, S, S)
    with torch.no_grad():
        feats = clip(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]   # (N, P, C)
    w0, b0 = state["model.mm_projector.0.weight"], state["model.mm_projector.0.bias"]
    w2, b2 = state["model.mm_projector.2.weight"], state["model.mm_projector.2.bias"]
    proj = torch.nn.functional.gelu(feats @ w0.T + b0) @ w2.T + b2                        # (N, P, H)
    n, p, h = proj.shape
    side = int(p ** 0.5)
    grid = proj.reshape(n, side // 2, 2, side // 2, 2, h)                                   # (N, r, 2, c, 2, H)
    return grid.mean(dim=(2, 4)).reshape(-1, h)                                             # row-major blocks


def test_single_image_equals_its_tiles_as_visual_embeds(ckpt_llm):
    path, llm = ckpt_llm
    img = image(0, 150, 290)
    proc = llm.loaded.image_processor
    tiles = anyres_tiles(img, parse_pinpoints(llm.config.image_grid_pinpoints, tile_size=proc.crop_size),
                         proc.crop_size)
    embeds = reference_tile_embeds(path, tiles)
    with torch.inference_mode():
        ours = llm.model.encode_frames(preprocess_frames(tiles, proc))
    assert (ours - embeds).abs().max() < 1e-4
    params = SamplingParams(max_tokens=8, ignore_eos=True, logprobs=3)
    a, b, c = llm.generate([{"prompt": "What is it?", "image": img, "compression_ratio": 4},
                            {"prompt": "What is it?", "visual_embeds": embeds, "compression_ratio": 4},
                            {"prompt": "What is it?", "video": tiles, "compression_ratio": 4}], params, use_tqdm=False)
    assert a.error is None and b.error is None and c.error is None
    assert a.metrics["num_visual_tokens"] == tiles.shape[0] * llm.model.tokens_per_frame == embeds.shape[0]
    assert tiles.shape[0] > 1 and a.metrics["num_vst_tokens"] == b.metrics["num_vst_tokens"] > 0
    assert a.token_ids == b.token_ids == c.token_ids
    for lp_a, lp_b in zip(a.logprobs, b.logprobs):
        assert all(abs(lp_a[t] - lp_b[t]) < 1e-3 for t in lp_a)


def test_image_and_images_through_video_memory(ckpt_llm):
    _, llm = ckpt_llm
    img = image(7, 200, 120)
    imgs = [image(10 + i, 60 + 7 * i, 90) for i in range(12)]      # 12 frames x 16 tokens: two windows
    questions = ["What is it?", "Which colour dominates?"]
    for source, value in (("image", img), ("images", imgs)):
        mem = llm.encode_video(**{source: value}, compression_ratio=4)
        assert mem.num_visual_tokens > 0 and mem.num_vst > 0
        direct = llm.generate([{"prompt": q, source: value, "compression_ratio": 4} for q in questions],
                              PARAMS, use_tqdm=False)
        reused = llm.generate([{"prompt": q, "video_memory": mem} for q in questions], PARAMS, use_tqdm=False)
        for d, r in zip(direct, reused):
            assert d.error is None and r.error is None, (d.error, r.error)
            assert d.token_ids == r.token_ids
            assert d.metrics["num_kept_tokens"] == r.metrics["num_kept_tokens"]
            assert r.metrics["num_visual_tokens"] == d.metrics["num_visual_tokens"] == mem.num_visual_tokens
        mem.release()
    assert llm.kv_cache_usage()["num_free_pages"] == llm.kv_cache_usage()["num_pages"]
    for kwargs in ({"image": img, "images": imgs}, {}, {"image": img, "num_frames": 4}):
        with pytest.raises(ValueError):
            llm.encode_video(**kwargs)
    assert llm.kv_cache_usage()["num_free_pages"] == llm.kv_cache_usage()["num_pages"]


def test_several_images_equal_the_same_frames_as_a_video(llm):
    imgs = [image(1, 120, 160), image(2, 90, 200), image(3, 112, 112)]
    frames = images_as_frames(imgs, llm.loaded.image_processor)
    a, b = llm.generate([{"prompt": "Compare.", "images": imgs}, {"prompt": "Compare.", "video": frames}],
                        PARAMS, use_tqdm=False)
    assert a.error is None and a.token_ids == b.token_ids and a.metrics["num_frames"] == 3


def test_bad_images_fail_alone(llm, tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    good = {"prompt": "Q", "image": image(4, 60, 60)}
    bad = [{"prompt": "Q", "image": str(tmp_path / "missing.png")},
           {"prompt": "Q", "image": str(tmp_path / "text.jpg")},
           {"prompt": "Q", "image": np.zeros((0, 5, 3), dtype=np.uint8)},
           {"prompt": "Q", "image": np.zeros((5, 5, 3), dtype=np.float32)},
           {"prompt": "Q", "images": []},
           {"prompt": "Q", "image": image(5, 30, 30), "num_frames": 3}]
    outs = llm.generate([good] + bad + [good], PARAMS, use_tqdm=False)
    assert outs[0].error is None and outs[-1].token_ids == outs[0].token_ids
    for out in outs[1:-1]:
        assert out.finish_reason == "error" and out.error
    usage = llm.kv_cache_usage()
    assert usage["num_free_pages"] == usage["num_pages"]


def test_unsupported_aspect_ratio_is_named(llm, monkeypatch):
    monkeypatch.setattr(llm.config, "image_aspect_ratio", "pad")
    out = llm.generate([{"prompt": "Q", "image": image(6, 50, 50)}], PARAMS, use_tqdm=False)[0]
    assert out.finish_reason == "error" and "pad" in out.error
