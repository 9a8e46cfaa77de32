"""SamplingParams.prompt_logprobs (scoring a prompt's tokens, as lmms-eval's loglikelihood needs) against the
independent float64 Video-XL of tests/reference_model.py, and against the engine's own decode path by
teacher forcing its greedy answer; with a video, from a VideoMemory, packed beside other requests, and with
text longer than a chunk."""
from __future__ import annotations

import pytest
import torch
from helpers import small_config, write_checkpoint
from reference_model import Reference

from vxl import IMAGE_TOKEN_INDEX, LLM, SamplingParams

# (ratio, prefix, visual tokens, suffix); visual 0: a text-only prompt. Chunks of 24 text tokens: a suffix
# of 30 is scored over two chunks, a prefix of 26 too.
SCENARIOS = [(4, 3, 61, 30), (2, 26, 48, 5), (8, 1, 53, 2), (0, 0, 0, 40)]
TOP_K = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = small_config()
    path = tmp_path_factory.mktemp("ckpt")
    return path, write_checkpoint(path, cfg, seed=5), cfg


@pytest.fixture(scope="module")
def llm(checkpoint):
    return LLM(str(checkpoint[0]), device="cpu", dtype="float32", attention_backend="torch", page_size=5)


def make_request(cfg, scenario, seed: int) -> dict:
    ratio, prefix, num_visual, suffix = scenario
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, cfg.vocab_size, (prefix + suffix,), generator=gen).tolist()
    if not num_visual:
        return {"prompt_token_ids": ids}
    embeds = torch.randn(num_visual, cfg.hidden_size, generator=gen)
    return {"prompt_token_ids": ids[:prefix] + [IMAGE_TOKEN_INDEX] + ids[prefix:], "visual_embeds": embeds,
            "compression_ratio": ratio}


def reference_logprobs(model, cfg, request: dict) -> dict[int, torch.Tensor]:
    """prompt index i -> the reference's log-softmax [V] of the row before it, for every scored index."""
    ids, ref = request["prompt_token_ids"], Reference(model, cfg)
    if IMAGE_TOKEN_INDEX not in ids:
        return dict(zip(range(1, len(ids)), torch.log_softmax(ref.text(ids), -1)[:-1]))
    ph = ids.index(IMAGE_TOKEN_INDEX)
    before = torch.log_softmax(ref.text(ids[:ph]), -1) if ph else []
    ref.video(request["visual_embeds"], request["compression_ratio"])
    after = torch.log_softmax(ref.text(ids[ph + 1:]), -1)
    scored = dict(zip(range(1, ph), before[:-1]))
    scored.update(zip(range(ph + 2, len(ids)), after[:-1]))
    return scored


def assert_matches(out, ids: list[int], expected: dict[int, torch.Tensor], case: str) -> None:
    """Every scored index has the reference's logprob for its token and the reference's top-k; every other
    index is None."""
    assert out.error is None, (case, out.error)
    assert len(out.prompt_logprobs) == len(ids), case
    assert [i for i, lp in enumerate(out.prompt_logprobs) if lp is not None] == sorted(expected), case
    for i, ref in expected.items():
        got = out.prompt_logprobs[i]
        assert abs(got[ids[i]] - ref[ids[i]].item()) < 1e-5, (case, i)
        top = set(torch.topk(ref, TOP_K).indices.tolist())
        assert set(got) == top | {ids[i]}, (case, i)
        assert all(abs(got[t] - ref[t].item()) < 1e-5 for t in got), (case, i)


def test_prompt_logprobs_match_the_reference(checkpoint, llm):
    """All scenarios in one call, packed beside requests that score nothing (their answers unchanged)."""
    _, model, cfg = checkpoint
    requests = [make_request(cfg, s, seed=i) for i, s in enumerate(SCENARIOS)]
    scored = SamplingParams(max_tokens=3, ignore_eos=True, prompt_logprobs=TOP_K)
    plain = SamplingParams(max_tokens=3, ignore_eos=True)
    outs = llm.generate(requests + requests, [scored] * len(requests) + [plain] * len(requests), use_tqdm=False)
    for scenario, request, out, plain_out in zip(SCENARIOS, requests, outs, outs[len(requests):]):
        assert_matches(out, request["prompt_token_ids"], reference_logprobs(model, cfg, request), str(scenario))
        assert plain_out.prompt_logprobs is None
        assert out.token_ids == plain_out.token_ids, scenario


def test_prompt_logprobs_from_a_video_memory(checkpoint, llm):
    """The prefix and the video come from the memory: only the text after the video is scored."""
    _, model, cfg = checkpoint
    request = make_request(cfg, (4, 3, 61, 30), seed=11)
    ids = request["prompt_token_ids"]
    ph = ids.index(IMAGE_TOKEN_INDEX)
    mem = llm.encode_video(visual_embeds=request["visual_embeds"], compression_ratio=4, prefix_token_ids=ids[:ph])
    try:
        out = llm.generate({"prompt_token_ids": ids, "video_memory": mem},
                           SamplingParams(max_tokens=1, prompt_logprobs=TOP_K), use_tqdm=False)[0]
    finally:
        mem.release()
    expected = {i: lp for i, lp in reference_logprobs(model, cfg, request).items() if i > ph}
    assert_matches(out, ids, expected, "memory")


@pytest.mark.parametrize("scenario", SCENARIOS[:2] + SCENARIOS[-1:])
def test_teacher_forced_greedy_answer_scores_as_decoded(checkpoint, llm, scenario):
    """The greedy answer appended to the prompt: each of its tokens is the top token (greedy) with the
    logprob the decode steps gave it."""
    _, _, cfg = checkpoint
    request = make_request(cfg, scenario, seed=21)
    answer = llm.generate(request, SamplingParams(max_tokens=8, ignore_eos=True, logprobs=0), use_tqdm=False)[0]
    forced = {**request, "prompt_token_ids": request["prompt_token_ids"] + answer.token_ids}
    out = llm.generate(forced, SamplingParams(max_tokens=1, prompt_logprobs=1), use_tqdm=False)[0]
    n = len(request["prompt_token_ids"])
    for j, token in enumerate(answer.token_ids):        # j = 0: sampled from the prefill's last row
        entry = out.prompt_logprobs[n + j]
        assert max(entry, key=entry.get) == token, (scenario, j)
        assert abs(entry[token] - answer.logprobs[j][token]) < 1e-5, (scenario, j)


def test_prompt_logprobs_values_are_checked(llm, checkpoint):
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=-1)
    capped = LLM(str(checkpoint[0]), device="cpu", dtype="float32", max_logprobs=2)
    out = capped.generate({"prompt_token_ids": [3, 4, 5]}, SamplingParams(max_tokens=1, prompt_logprobs=3),
                          use_tqdm=False)[0]
    assert out.finish_reason == "error" and "prompt_logprobs" in out.error
    out = capped.generate({"prompt_token_ids": [3, 4, 5]}, SamplingParams(max_tokens=1, prompt_logprobs=0),
                          use_tqdm=False)[0]
    assert out.prompt_logprobs[0] is None and list(out.prompt_logprobs[1]) == [4]
    assert out.to_dict()["prompt_logprobs"] == [None, {"4": out.prompt_logprobs[1][4]},
                                                {"5": out.prompt_logprobs[2][5]}]


def test_prompt_logprobs_over_a_stream_equal_the_request_over_its_frames():
    """A stream question scores its text after the video as the request over the same frames does."""
    import numpy as np
    tiny = LLM("tiny", device="cpu", dtype="float32", attention_backend="torch")
    frames = np.random.default_rng(3).integers(0, 256, (13, 40, 56, 3), dtype=np.uint8)
    params = SamplingParams(max_tokens=2, prompt_logprobs=2)
    request = {"prompt": "What is happening in this video, and why?"}
    direct = tiny.generate({**request, "video": frames, "num_frames": 13, "compression_ratio": 4}, params,
                           use_tqdm=False)[0]
    stream = tiny.open_stream(compression_ratio=4)
    try:
        stream.append(frames[:7])
        stream.append(frames[7:])
        streamed = tiny.generate({**request, "video_stream": stream}, params, use_tqdm=False)[0]
    finally:
        stream.close()
    ph = len(stream.prefix_ids)
    assert direct.error is None and streamed.error is None
    assert streamed.prompt_logprobs[:ph + 2] == [None] * (ph + 2)
    for got, ref in zip(streamed.prompt_logprobs[ph + 2:], direct.prompt_logprobs[ph + 2:]):
        assert got.keys() == ref.keys() and all(abs(got[t] - ref[t]) < 1e-5 for t in got)
    assert len(streamed.prompt_logprobs) == len(direct.prompt_logprobs) > ph + 3
