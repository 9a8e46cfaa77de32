"""Per-request caps of the engine (frames, images, pixels per image, prompt tokens) refuse a request
before any of its input is decoded, naming the cap; requests within the caps are unaffected."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import png_header_only
from vxl import LLM, SamplingParams


@pytest.fixture(scope="module")
def capped():
    return LLM("tiny", device="cpu", max_frames=8, max_images=3, max_prompt_tokens=200)


def test_caps_refuse_alone_and_name_the_cap(capped, monkeypatch):
    video = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    images = [np.zeros((16, 16, 3), np.uint8)] * 4
    from vxl.engine import image as image_module
    opened = []
    monkeypatch.setattr(image_module.ImageFramesSource, "__init__", lambda *a, **k: opened.append(1) or None)
    outs = capped.generate([
        {"prompt": "q", "video": video},                          # 20 frames sampled: over 8
        {"prompt": "q", "video": video, "num_frames": 9},          # asked for over 8
        {"prompt": "q", "images": images},                         # 4 images: over 3, never opened
        {"prompt": "word " * 60},                                   # over 200 text tokens
        {"prompt": "q", "video": video, "num_frames": 8}], SamplingParams(max_tokens=2), use_tqdm=False)
    assert [o.finish_reason for o in outs] == ["error"] * 4 + ["length"]
    assert "max_frames (8)" in outs[0].error and "max_frames (8)" in outs[1].error
    assert "max_images (3)" in outs[2].error and not opened
    assert "max_prompt_tokens (200)" in outs[3].error
    assert [o.error_type for o in outs[:4]] == ["too_large"] * 4          # a server answers 413
    usage = capped.kv_cache_usage()
    assert usage["num_free_pages"] == usage["num_pages"]


def test_the_pixel_cap_refuses_an_image_from_its_header(tmp_path):
    llm = LLM("tiny", device="cpu", max_image_pixels=100 * 100)
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header_only(3000, 3000))
    huge = str(huge)
    small = np.random.default_rng(1).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    over = np.zeros((101, 100, 3), np.uint8)
    outs = llm.generate([
        {"prompt": "q", "image": huge},                             # one image, anyres tiles
        {"prompt": "q", "images": [small, huge]},                   # several images: found when its chunk loads
        {"prompt": "q", "images": [small, over]},                   # an array: refused before any work
        {"prompt": "q", "image": over},
        {"prompt": "q", "image": small}], SamplingParams(max_tokens=2), use_tqdm=False)
    assert [o.finish_reason for o in outs] == ["error"] * 4 + ["length"]
    assert "3000x3000 = 9000000 pixels" in outs[0].error and "max_image_pixels (10000)" in outs[0].error
    assert "images[1]" in outs[1].error and "max_image_pixels (10000)" in outs[1].error
    assert "images[1]" in outs[2].error and "100x101" in outs[2].error
    assert "max_image_pixels (10000)" in outs[3].error
    usage = llm.kv_cache_usage()
    assert usage["num_free_pages"] == usage["num_pages"]
    # without the cap the same file reaches the decoder, which finds no pixel data
    wide = LLM("tiny", device="cpu", max_image_pixels=None).generate(
        [{"prompt": "q", "image": huge}], SamplingParams(max_tokens=2), use_tqdm=False)[0]
    assert wide.finish_reason == "error" and "truncated" in wide.error and "max_image_pixels" not in wide.error


@pytest.mark.parametrize("name,value", [("max_frames", 0), ("max_images", -1), ("max_prompt_tokens", 2.5),
                                        ("max_frames", True), ("max_image_pixels", 0)])
def test_bad_caps_are_refused_at_construction(name, value):
    with pytest.raises(ValueError, match=name):
        LLM("tiny", device="cpu", **{name: value})


def test_positions_past_the_trained_range_are_warned_about(tmp_path):
    from helpers import small_config, write_checkpoint
    path = tmp_path / "ckpt"
    write_checkpoint(path, small_config(max_position_embeddings=64), seed=1)
    llm = LLM(str(path), device="cpu", dtype="float32")
    with pytest.warns(RuntimeWarning, match="max_position_embeddings"):
        out = llm.generate({"prompt_token_ids": list(range(2, 60)), "request_id": "long"},
                           SamplingParams(max_tokens=30), use_tqdm=False)[0]
    assert out.error is None                        # computed as asked
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        llm.generate({"prompt_token_ids": [2, 3]}, SamplingParams(max_tokens=2), use_tqdm=False)


def test_unsupported_beacon_attn_is_refused():
    from vxl.config import ModelConfig
    from helpers import small_config
    with pytest.raises(ValueError, match="beacon_attn='segmentation' is not supported"):
        ModelConfig.from_dict({**small_config().to_dict(), "beacon_attn": "segmentation"})


def test_a_prompt_too_long_for_the_cap_is_refused_before_it_is_tokenized(capped, monkeypatch):
    calls, encode = [], capped.tokenizer.encode
    monkeypatch.setattr(capped.tokenizer, "encode", lambda *a, **k: calls.append(1) or encode(*a, **k))
    limit = 200 * capped.core.inputs.max_token_chars
    outs = capped.generate([{"prompt": "x" * (limit + 1)}, {"prompt": "word " * 60}], SamplingParams(max_tokens=2),
                           use_tqdm=False)
    assert outs[0].error_type == "too_large" and "characters" in outs[0].error
    assert len(calls) == 1                      # the second prompt only: the first was never tokenized
    assert outs[1].error_type == "too_large" and "max_prompt_tokens (200)" in outs[1].error


def test_logprobs_over_the_vocabulary_are_refused(capped):
    outs = capped.generate(["q", "q"], [SamplingParams(max_tokens=1, logprobs=10**9),
                                        SamplingParams(max_tokens=1, prompt_logprobs=20)], use_tqdm=False)
    assert "vocabulary size" in outs[0].error and outs[1].error is None
