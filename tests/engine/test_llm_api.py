"""Public API on an LLM-only official-layout checkpoint (visual_embeds requests): batching, stopping,
seeds, bad requests that fail alone, and pages that always return to the pool."""
from __future__ import annotations

import pytest
import torch

from helpers import small_config, write_checkpoint
from vxl import IMAGE_TOKEN_INDEX, LLM, Request, SamplingParams


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    write_checkpoint(path, small_config(), seed=11)
    return LLM(str(path), device="cpu", dtype="float32", page_size=4, max_batch_tokens=64)


def make_request(seed, num_visual=40, ratio=4, prefix=3, suffix=5):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 97, (prefix + suffix,), generator=gen).tolist()
    return {"prompt_token_ids": ids[:prefix] + [IMAGE_TOKEN_INDEX] + ids[prefix:],
            "visual_embeds": torch.randn(num_visual, 48, generator=gen), "compression_ratio": ratio,
            "request_id": f"r{seed}"}


def expected_peak_kv_bytes(llm, req, max_tokens):
    """Kept entries at the last step: prefix + suffix + VSTs (N // r in all: each window's remainder carries
    over) + every generated token but the last (sampled, never fed back), in whole pages."""
    ids, embeds = req["prompt_token_ids"], req.get("visual_embeds")
    num_vst = embeds.shape[0] // req["compression_ratio"] if embeds is not None else 0
    kept = len(ids) - (embeds is not None) + num_vst + max_tokens - 1
    page = llm.block_manager.page_size
    return -(-kept // page) * page * llm.bytes_per_token


def assert_pool_empty(llm):
    usage = llm.kv_cache_usage()
    assert usage["num_free_pages"] == usage["num_pages"]
    llm.block_manager.check()


def test_batch_gives_the_same_tokens_as_each_alone(llm):
    reqs = [make_request(s, num_visual=n, ratio=r) for s, n, r in
            [(1, 40, 4), (2, 13, 2), (3, 70, 16), (4, 25, 8), (5, 15, 12), (6, 50, 1)]]
    reqs.append({"prompt_token_ids": [5, 6, 7, 8]})            # text only
    params = SamplingParams(max_tokens=7, ignore_eos=True)
    together = llm.generate(reqs, params, use_tqdm=False)
    for req, out in zip(reqs, together):
        alone = llm.generate([req], params, use_tqdm=False)[0]
        assert out.token_ids == alone.token_ids and len(out.token_ids) == 7
        assert out.request_id == req.get("request_id", out.request_id)
        # a request's own peak does not depend on its company; the pool's does
        assert out.metrics["peak_kv_bytes"] == alone.metrics["peak_kv_bytes"] == expected_peak_kv_bytes(llm, req, 7)
        assert alone.metrics["pool_peak_kv_bytes"] == alone.metrics["peak_kv_bytes"]
    assert len({o.metrics["pool_peak_kv_bytes"] for o in together}) == 1
    assert together[0].metrics["pool_peak_kv_bytes"] > max(o.metrics["peak_kv_bytes"] for o in together)
    assert [o.request_id for o in together[:6]] == [f"r{s}" for s in range(1, 7)]
    assert_pool_empty(llm)


def test_stop_tokens_and_lengths(llm):
    req = make_request(7)
    first = llm.generate([req], SamplingParams(max_tokens=5, ignore_eos=True), use_tqdm=False)[0]
    stop = first.token_ids[2]
    out = llm.generate([req], SamplingParams(max_tokens=5, ignore_eos=True, stop_token_ids=[stop]), use_tqdm=False)[0]
    assert out.finish_reason == "stop" and out.token_ids == first.token_ids[:first.token_ids.index(stop) + 1]
    assert first.finish_reason == "length" and first.text == ""     # no tokenizer: empty text


def test_seeded_sampling_is_reproducible(llm):
    req = make_request(8)
    p = SamplingParams(max_tokens=6, temperature=1.0, top_p=0.9, top_k=20, seed=123, ignore_eos=True)
    a = llm.generate([req], p, use_tqdm=False)[0].token_ids
    b = llm.generate([req, make_request(9)], p, use_tqdm=False)[0].token_ids
    assert a == b


BAD = [
    (dict(compression_ratio=0), "compression_ratio"),
    (dict(compression_ratio=2.5), "compression_ratio"),
    (dict(prompt_token_ids=[3, IMAGE_TOKEN_INDEX, 4, IMAGE_TOKEN_INDEX, 5]), "placeholders"),
    (dict(visual_embeds=torch.randn(10, 47)), "visual_embeds"),
    (dict(visual_embeds=torch.zeros(10, 48, dtype=torch.long)), "visual_embeds"),
    (dict(visual_embeds=None), "no video"),
    (dict(prompt_token_ids=[3, 4, 500, IMAGE_TOKEN_INDEX, 2]), "vocabulary"),
    (dict(prompt_token_ids=[3, 4, IMAGE_TOKEN_INDEX]), "after the video"),
    (dict(prompt_token_ids=None, prompt="hello"), "tokenizer"),
    (dict(video="/nonexistent.mp4", visual_embeds=None), "vision tower"),
]


@pytest.mark.parametrize("change,message", BAD)
def test_bad_request_fails_alone(llm, change, message):
    good = make_request(10)
    bad = {**make_request(11), **change}
    bad = {k: v for k, v in bad.items() if v is not None}
    outs = llm.generate([good, bad, good], SamplingParams(max_tokens=3, ignore_eos=True), use_tqdm=False)
    assert outs[1].finish_reason == "error" and message in outs[1].error
    assert outs[0].error is None and outs[2].error is None and outs[0].token_ids == outs[2].token_ids
    assert_pool_empty(llm)


def test_request_object_and_unknown_fields(llm):
    req = make_request(12)
    out = llm.generate(Request(**req), SamplingParams(max_tokens=2), use_tqdm=False)
    assert len(out) == 1 and out[0].error is None
    out = llm.generate([{**req, "frames": 3}], use_tqdm=False)[0]
    assert out.finish_reason == "error" and "frames" in out.error


def test_request_too_large_for_the_pool_fails_clearly(tmp_path):
    write_checkpoint(tmp_path, small_config(), seed=12)
    small = LLM(str(tmp_path), device="cpu", dtype="float32", page_size=4, num_pages=6)
    outs = small.generate([make_request(13, num_visual=200, ratio=1), make_request(14, num_visual=8, ratio=8)],
                          SamplingParams(max_tokens=2), use_tqdm=False)
    assert outs[0].finish_reason == "error" and "KV cache" in outs[0].error
    assert outs[1].error is None
    assert_pool_empty(small)


@pytest.mark.parametrize("kwargs", [dict(attention_backend="cuda-magic"), dict(dtype="int8"), dict(page_size=0),
                                    dict(max_batch_tokens=0), dict(model=3)])
def test_bad_engine_arguments_raise(tmp_path, kwargs):
    write_checkpoint(tmp_path, small_config(), seed=13)
    with pytest.raises((ValueError, TypeError)):
        LLM(**{"model": str(tmp_path), "device": "cpu", **kwargs})


def test_triton_on_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        LLM("tiny", device="cpu", attention_backend="triton")


def test_requests_that_do_not_fit_together_wait_their_turn(tmp_path):
    write_checkpoint(tmp_path, small_config(), seed=14)
    roomy = LLM(str(tmp_path), device="cpu", dtype="float32", page_size=4)
    tight = LLM(str(tmp_path), device="cpu", dtype="float32", page_size=4, num_pages=12)  # one request at a time
    reqs = [make_request(s, num_visual=60, ratio=2) for s in (15, 16, 17)]
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    together = roomy.generate(reqs, params, use_tqdm=False)
    expected = [o.token_ids for o in together]
    got = tight.generate(reqs, params, use_tqdm=False)
    assert [o.error for o in got] == [None] * 3 and [o.token_ids for o in got] == expected
    one = expected_peak_kv_bytes(tight, reqs[0], 6)             # 3 + 30 + 5 + 5 = 43 kept -> 11 pages
    assert one == 11 * 4 * tight.bytes_per_token
    assert all(o.metrics["peak_kv_bytes"] == one for o in got)
    assert all(o.metrics["pool_peak_kv_bytes"] == one for o in got)                  # one at a time
    assert together[0].metrics["pool_peak_kv_bytes"] == 3 * one                      # all at once
    assert_pool_empty(tight)
