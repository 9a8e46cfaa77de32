"""Image requests through the public API: anyres tiles for one image, one frame per image for several."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vxl import LLM, SamplingParams
from vxl.engine.image import anyres_tiles, images_as_frames, parse_pinpoints
from vxl.engine.preprocess import preprocess_frames

PARAMS = SamplingParams(max_tokens=5, ignore_eos=True)


@pytest.fixture(scope="module")
def llm():
    return LLM("tiny", device="cpu")


def image(seed, h, w):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_single_image_equals_its_tiles_as_visual_embeds(llm):
    img = image(0, 150, 290)
    proc = llm.loaded.image_processor
    tiles = anyres_tiles(img, parse_pinpoints(llm.config.image_grid_pinpoints, tile_size=proc.crop_size),
                         proc.crop_size)
    with torch.inference_mode():
        embeds = llm.model.encode_frames(preprocess_frames(tiles, proc))
    ids = llm.tokenizer.encode("<|im_start|>user\n", add_special_tokens=False)
    tail = llm.tokenizer.encode("\nWhat is it?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    a, b = llm.generate([{"prompt": "What is it?", "image": img, "compression_ratio": 4},
                         {"prompt_token_ids": ids + [-200] + tail, "visual_embeds": embeds, "compression_ratio": 4}],
                        PARAMS, use_tqdm=False)
    assert a.error is None and b.error is None
    assert a.metrics["num_visual_tokens"] == tiles.shape[0] * llm.model.tokens_per_frame == embeds.shape[0]
    c = llm.generate([{"prompt": "What is it?", "video": tiles, "compression_ratio": 4}], PARAMS, use_tqdm=False)[0]
    assert a.token_ids == c.token_ids


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
