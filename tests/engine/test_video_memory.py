"""VideoMemory: encode once, answer many questions from shared pages; save/load; refusals; no leaks."""
from __future__ import annotations

import pytest
import torch

from helpers import moving_square_frames, small_config, write_checkpoint, write_mp4
from vxl import IMAGE_TOKEN_INDEX, LLM, SamplingParams
from vxl.engine.video_memory import VideoMemory

PARAMS = SamplingParams(max_tokens=6, ignore_eos=True)
PREFIX = [5, 9, 11]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    write_checkpoint(path, small_config(), seed=21)
    return str(path)


def question(seed, n=5):
    return torch.randint(2, 97, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def assert_all_free(llm):
    usage = llm.kv_cache_usage()
    assert usage["num_free_pages"] == usage["num_pages"]
    llm.block_manager.check()


@pytest.mark.parametrize("num_visual,ratio", [(50, 4), (48, 2), (30, 16)])
def test_memory_answers_like_a_fresh_request_and_prefills_only_the_question(ckpt, num_visual, ratio):
    llm = LLM(ckpt, device="cpu", dtype="float32", page_size=4)
    embeds = torch.randn(num_visual, 48, generator=torch.Generator().manual_seed(num_visual))
    mem = llm.encode_video(visual_embeds=embeds, compression_ratio=ratio, prefix_token_ids=PREFIX)
    held = llm.kv_cache_usage()["num_pages"] - llm.kv_cache_usage()["num_free_pages"]
    assert held == -(-mem.num_kept // 4) and mem.num_kept == len(PREFIX) + mem.num_vst
    questions = [question(s) for s in range(4)]
    fresh = llm.generate([{"prompt_token_ids": PREFIX + [IMAGE_TOKEN_INDEX] + q, "visual_embeds": embeds,
                           "compression_ratio": ratio} for q in questions], PARAMS, use_tqdm=False)
    rows = []
    run = llm.runner.run
    llm.runner.run = lambda chunks: rows.extend((c.kind, c.num_inputs) for c in chunks) or run(chunks)
    reused = llm.generate([{"prompt_token_ids": PREFIX + [IMAGE_TOKEN_INDEX] + q, "video_memory": mem}
                           for q in questions], PARAMS, use_tqdm=False)
    del llm.runner.run
    for a, b in zip(fresh, reused):
        assert b.error is None and a.token_ids == b.token_ids
        assert b.metrics["num_vst_tokens"] == a.metrics["num_vst_tokens"]
        assert b.metrics["num_kept_tokens"] == a.metrics["num_kept_tokens"]
    prefill_rows = sum(n for kind, n in rows if kind != "decode")
    assert prefill_rows == sum(len(q) for q in questions) and all(kind != "window" for kind, _ in rows)
    assert llm.kv_cache_usage()["num_pages"] - llm.kv_cache_usage()["num_free_pages"] == held
    mem.release()
    assert_all_free(llm)
    out = llm.generate([{"prompt_token_ids": PREFIX + [IMAGE_TOKEN_INDEX] + questions[0], "video_memory": mem}],
                       PARAMS, use_tqdm=False)[0]
    assert out.finish_reason == "error" and "released" in out.error


def test_save_load_round_trip_and_refusals(ckpt, tmp_path):
    llm = LLM(ckpt, device="cpu", dtype="float32", page_size=4)
    embeds = torch.randn(41, 48, generator=torch.Generator().manual_seed(1))
    mem = llm.encode_video(visual_embeds=embeds, compression_ratio=8, prefix_token_ids=PREFIX)
    req = {"prompt_token_ids": PREFIX + [IMAGE_TOKEN_INDEX] + question(7), "video_memory": mem}
    expected = llm.generate([req], PARAMS, use_tqdm=False)[0].token_ids
    mem.save(str(tmp_path / "mem.safetensors"))
    mem.release()

    other = LLM(ckpt, device="cpu", dtype="float32", page_size=5)      # same model, another pool layout
    loaded = VideoMemory.load(str(tmp_path / "mem.safetensors"))
    assert (loaded.ratio, loaded.num_vst, loaded.num_visual_tokens) == (8, mem.num_vst, 41)
    got = other.generate([{**req, "video_memory": loaded}], PARAMS, use_tqdm=False)[0]
    assert got.error is None and got.token_ids == expected
    bad = [{**req, "video_memory": loaded, "prompt_token_ids": [6] + req["prompt_token_ids"][1:]},
           {**req, "video_memory": loaded, "compression_ratio": 4}]
    outs = other.generate(bad, PARAMS, use_tqdm=False)
    assert "differs" in outs[0].error and "compression_ratio" in outs[1].error
    loaded.release()
    assert_all_free(other)

    foreign_path = tmp_path / "foreign"
    write_checkpoint(foreign_path, small_config(), seed=22)
    foreign = LLM(str(foreign_path), device="cpu", dtype="float32")
    out = foreign.generate([{**req, "video_memory": VideoMemory.load(str(tmp_path / "mem.safetensors"))}],
                           PARAMS, use_tqdm=False)[0]
    assert out.finish_reason == "error" and "another model" in out.error
    assert_all_free(foreign)

    data = bytearray((tmp_path / "mem.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "corrupt.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        VideoMemory.load(str(tmp_path / "corrupt.safetensors"))


def test_tiny_model_video_memory_with_prompts(tmp_path):
    video = write_mp4(tmp_path / "v.mp4", moving_square_frames(24, 64, 80), lossless=False)
    llm = LLM("tiny", device="cpu")
    mem = llm.encode_video(video, compression_ratio=4, num_frames=24)
    prompts = ["What color is the square?", "Where does it move?"]
    fresh = llm.generate([{"prompt": p, "video": video, "num_frames": 24, "compression_ratio": 4} for p in prompts],
                         PARAMS, use_tqdm=False)
    reused = llm.generate([{"prompt": p, "video_memory": mem} for p in prompts], PARAMS, use_tqdm=False)
    assert [o.token_ids for o in fresh] == [o.token_ids for o in reused]
    assert reused[0].metrics["num_frames"] == 24
    mem.release()
    assert_all_free(llm)
