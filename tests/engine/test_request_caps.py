"""Per-request caps of the engine (frames, images, prompt tokens) refuse a request before any of its
input is decoded, naming the cap; requests within the caps are unaffected."""
from __future__ import annotations

import numpy as np
import pytest

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
    usage = capped.kv_cache_usage()
    assert usage["num_free_pages"] == usage["num_pages"]


@pytest.mark.parametrize("name,value", [("max_frames", 0), ("max_images", -1), ("max_prompt_tokens", 2.5),
                                        ("max_frames", True)])
def test_bad_caps_are_refused_at_construction(name, value):
    with pytest.raises(ValueError, match=name):
        LLM("tiny", device="cpu", **{name: value})
