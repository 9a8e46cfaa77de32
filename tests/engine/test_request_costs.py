"""Cost known before work: an `images` request's token count is len(images), so the pool check refuses an
oversized one before any image is decoded, and images stream through preprocessing a window at a time.
A checkpoint's `image_grid_pinpoints` are bounded when it is loaded."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vxl.engine.image as image_mod
from helpers import images_as_frames
from vxl import LLM, SamplingParams
from vxl.config import MAX_PINPOINTS
from vxl.engine.image import parse_pinpoints
from vxl.model.loader import load_checkpoint
from vxl.model.tiny import build_tiny, save_checkpoint

PARAMS = SamplingParams(max_tokens=3, ignore_eos=True)
CPU = torch.device("cpu")


def picture(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def assert_all_free(llm):
    usage = llm.kv_cache_usage()
    assert usage["num_free_pages"] == usage["num_pages"]
    llm.block_manager.check()


@pytest.fixture
def load_calls(monkeypatch):
    """Sizes of the batches of images loaded (decoded), in order."""
    calls = []
    load_all = image_mod._load_all

    def counting(images, first_idx=0, max_pixels=None):
        calls.append(len(images))
        return load_all(images, first_idx, max_pixels)
    monkeypatch.setattr(image_mod, "_load_all", counting)
    return calls


def test_too_many_images_are_refused_before_any_is_decoded(load_calls):
    llm = LLM("tiny", device="cpu", kv_cache_bytes=2**20)         # about 680 kept tokens
    tiny = [np.zeros((1, 1, 3), dtype=np.uint8)] * 20_000        # 320,000 visual tokens
    outs = llm.generate([{"prompt": "Hi"}, {"prompt": "Count.", "images": tiny}, {"prompt": "Hi"}],
                        PARAMS, use_tqdm=False)
    assert outs[1].finish_reason == "error" and "kept tokens" in outs[1].error
    assert outs[0].error is None and outs[2].token_ids == outs[0].token_ids
    assert load_calls == []                                        # no image was ever decoded
    assert_all_free(llm)


def test_images_stream_a_window_at_a_time(load_calls):
    llm = LLM("tiny", device="cpu")
    imgs = [picture(i, 20 + i, 30) for i in range(25)]              # 10 frames per 160-token window
    frames = images_as_frames(imgs, llm.loaded.image_processor)
    load_calls.clear()
    a, b = llm.generate([{"prompt": "Q", "images": imgs}, {"prompt": "Q", "video": frames}], PARAMS, use_tqdm=False)
    assert a.error is None and a.token_ids == b.token_ids and a.metrics["num_frames"] == 25
    assert load_calls == [1] * 25                                  # one image decoded at a time, never all 25
    assert_all_free(llm)


def test_bad_image_found_while_streaming_fails_alone(tmp_path):
    llm = LLM("tiny", device="cpu")
    (tmp_path / "junk.png").write_text("not an image")
    good = [picture(i, 16, 16) for i in range(12)]
    bad_late = good[:11] + [np.zeros((4, 4, 3), dtype=np.float32)]
    outs = llm.generate([{"prompt": "Q", "images": good},
                         {"prompt": "Q", "images": bad_late},
                         {"prompt": "Q", "images": good[:3] + [str(tmp_path / "missing.png")]},
                         {"prompt": "Q", "images": good[:3] + [str(tmp_path / "junk.png")]},
                         {"prompt": "Q", "images": good[:2] + [3]},
                         {"prompt": "Q", "images": good}], PARAMS, use_tqdm=False)
    assert outs[0].error is None and outs[-1].token_ids == outs[0].token_ids
    for out, idx in zip(outs[1:5], (11, 3, 3, 2)):
        assert out.finish_reason == "error" and f"images[{idx}]" in out.error, out.error
    assert_all_free(llm)


def test_pinpoint_grid_is_bounded():
    assert len(parse_pinpoints("(1x1),...,(6x6)", tile_size=10)) == 36
    for value in ("(1x1),...,(2000x2000)", [[10, 10]] * (MAX_PINPOINTS + 1)):
        with pytest.raises(ValueError, match="image_grid_pinpoints"):
            parse_pinpoints(value, tile_size=10)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_ckpt")
    save_checkpoint(build_tiny(CPU, torch.float32), str(path))
    return path


@pytest.mark.parametrize("pinpoints,is_ok", [("(1x1),...,(3x3)", True), ("(1x1),...,(100000x100000)", False),
                                             ([[112, 224]] * (MAX_PINPOINTS + 5), False)])
def test_checkpoint_pinpoints_are_bounded_when_loaded(tiny_dir, pinpoints, is_ok):
    config = json.loads((tiny_dir / "config.json").read_text())
    (tiny_dir / "config.json").write_text(json.dumps({**config, "image_grid_pinpoints": pinpoints}))
    try:
        if is_ok:
            assert load_checkpoint(str(tiny_dir), CPU, torch.float32).config.image_grid_pinpoints == pinpoints
        else:
            with pytest.raises(ValueError, match=f"image_grid_pinpoints lists .* at most {MAX_PINPOINTS}"):
                load_checkpoint(str(tiny_dir), CPU, torch.float32)
    finally:
        (tiny_dir / "config.json").write_text(json.dumps(config))
