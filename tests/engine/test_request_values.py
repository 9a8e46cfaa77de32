"""Values are checked where they enter, and each error names its field: sampling parameters at
construction, token ids, stop ids, the compression ratio and the prompt text per request (the other
requests of the call still complete)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from helpers import small_config, write_checkpoint
from vxl import IMAGE_TOKEN_INDEX, LLM, SamplingParams
from vxl.engine.inputs import RequestError, prepare_request
from vxl.engine.request import Request
from vxl.engine.sampler import MAX_LOGPROBS, sample_token

PARAMS = SamplingParams(max_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    write_checkpoint(path, small_config(), seed=31)     # vocab 97, hidden 48, window 24, no tokenizer
    return LLM(str(path), device="cpu", dtype="float32", page_size=4)


def assert_all_free(llm):
    usage = llm.kv_cache_usage()
    assert usage["num_free_pages"] == usage["num_pages"]
    llm.block_manager.check()


@pytest.mark.parametrize("field,value", [
    ("temperature", math.nan), ("temperature", math.inf), ("temperature", -math.inf), ("temperature", "0.5"),
    ("top_p", math.nan), ("top_p", math.inf), ("top_p", True),
    ("seed", 2**64), ("seed", -2**63 - 1), ("seed", 1.5), ("seed", "7"), ("seed", True),
    ("logprobs", -1), ("logprobs", 2.0), ("logprobs", True),
    ("max_tokens", True), ("top_k", 1.0), ("ignore_eos", "no"),
    ("stop_token_ids", [True]), ("stop_token_ids", [1.5]), ("stop_token_ids", ["3"]), ("stop_token_ids", [-1]),
    ("stop_token_ids", "12"), ("stop_token_ids", 5),
])
def test_bad_sampling_value_names_its_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_limits_that_are_accepted():
    assert SamplingParams(seed=2**64 - 1).seed == 2**64 - 1 and SamplingParams(seed=-2**63).seed == -2**63
    assert SamplingParams(logprobs=10**9).logprobs == 10**9     # the cap is the engine's (below)
    assert SamplingParams(stop_token_ids=(3, 4)).stop_token_ids == [3, 4]


@pytest.mark.parametrize("temperature", [1e-45, 1e-6, 0.0])
def test_tiny_temperatures_are_greedy(temperature):
    params = SamplingParams(temperature=temperature, logprobs=3)
    assert params.is_greedy
    logits = torch.randn(50, generator=torch.Generator().manual_seed(3))
    token, logprobs = sample_token(logits, params, torch.Generator().manual_seed(0))
    assert token == int(torch.argmax(logits)) and all(math.isfinite(v) for v in logprobs.values())
    assert not SamplingParams(temperature=1e-4).is_greedy


def test_tiny_temperature_answers_like_greedy(llm):
    req = {"prompt_token_ids": [5, 6, 7, 8]}
    greedy, tiny = llm.generate([req, req], [PARAMS, SamplingParams(max_tokens=4, ignore_eos=True,
                                                                    temperature=1e-45)], use_tqdm=False)
    assert tiny.error is None and tiny.token_ids == greedy.token_ids


def test_bad_token_ids_fail_alone_naming_the_field(llm):
    good = {"prompt_token_ids": [5, 6, 7, 8]}
    bad = [[1.9, 2.7], ["1", "2"], "12", [True, 3], [5, None], torch.tensor([1.0, 2.0]), {"a": 1}]
    outs = llm.generate([good] + [{"prompt_token_ids": ids} for ids in bad] + [good], PARAMS, use_tqdm=False)
    assert outs[0].error is None and outs[-1].token_ids == outs[0].token_ids
    for ids, out in zip(bad, outs[1:-1]):
        assert out.finish_reason == "error" and "prompt_token_ids" in out.error, (ids, out.error)
    ok = llm.generate([{"prompt_token_ids": torch.tensor([5, 6, 7, 8])}], PARAMS, use_tqdm=False)[0]
    assert ok.token_ids == outs[0].token_ids
    assert_all_free(llm)


def test_ratio_leaving_no_summary_token_is_refused(llm):
    embeds = torch.randn(30, 48, generator=torch.Generator().manual_seed(2))
    ids = [5, 6, IMAGE_TOKEN_INDEX, 7, 8]
    reqs = [{"prompt_token_ids": ids, "visual_embeds": embeds, "compression_ratio": r} for r in (10**6, 31, 30, 16)]
    outs = llm.generate(reqs, PARAMS, use_tqdm=False)
    for out in outs[:2]:
        assert out.finish_reason == "error"
        assert "compression_ratio" in out.error and "largest usable ratio is 30" in out.error, out.error
    assert outs[2].error is None and outs[2].metrics["num_vst_tokens"] == 1
    assert outs[3].error is None and outs[3].metrics["num_vst_tokens"] == 1
    assert_all_free(llm)


def test_stop_ids_and_logprobs_are_checked_against_model_and_engine(llm):
    ctx = llm.core.inputs
    req = Request(prompt_token_ids=[5, 6, 7])
    with pytest.raises(RequestError, match="stop_token_ids"):
        prepare_request(ctx, req, SamplingParams(stop_token_ids=[3, 97]))
    uncapped = dataclasses.replace(ctx, engine_config=dataclasses.replace(ctx.engine_config, max_logprobs=None))
    prep = prepare_request(uncapped, req, SamplingParams(stop_token_ids=[3, 96], logprobs=97))
    assert prep.prompt_ids == [5, 6, 7]                     # max_logprobs=None: up to the vocabulary
    assert MAX_LOGPROBS == 20 == ctx.engine_config.max_logprobs          # the default cap, as vLLM's
    prepare_request(ctx, req, SamplingParams(logprobs=MAX_LOGPROBS))
    for name in ("logprobs", "prompt_logprobs"):
        with pytest.raises(RequestError, match=f"{name} must be at most 20"):
            prepare_request(ctx, req, SamplingParams(**{name: MAX_LOGPROBS + 1}))


def test_prompt_that_cannot_be_encoded_names_prompt():
    llm = LLM("tiny", device="cpu")
    outs = llm.generate([{"prompt": "Hi"}, {"prompt": "\ud800"}, {"prompt": "a\udfffb"}, {"prompt": "Hi"}],
                        PARAMS, use_tqdm=False)
    assert outs[0].error is None and outs[3].token_ids == outs[0].token_ids
    for out in outs[1:3]:
        assert out.finish_reason == "error" and "prompt" in out.error and "UTF-8" in out.error
    assert_all_free(llm)
