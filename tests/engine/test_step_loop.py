"""The step loop's stages: the vision stage encodes the windows of every request in a step in one call (and
ahead on a side stream when asked), the scheduler keeps each step within its row, frame and sequence
budgets, every step samples in one pass with one device-to-host read, and encode jobs are the one way to a
VideoMemory. Each is checked against the answers of the engine run the plain way."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import small_config, write_checkpoint
from vxl import IMAGE_TOKEN_INDEX, LLM, SamplingParams
from bench.step_overhead import HostReads, count_reads
from vxl.engine.core import EncodeResult


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (int(n), 40, 52, 3), dtype=np.uint8) for n in (23, 17, 31, 12, 25, 9, 20, 14)]


def tiny(**kw) -> LLM:
    return LLM("tiny", device="cpu", dtype="float32", page_size=16, **kw)


def video_requests(frames, ratio=4):
    return [{"prompt": f"What happens {i}?", "video": f, "num_frames": f.shape[0], "compression_ratio": ratio,
             "request_id": str(i)} for i, f in enumerate(frames)]


class EncodeCalls:
    """Records the frames of each call of the model's encode_frames."""

    def __init__(self, llm):
        self.model, self.frames = llm.model, []
        self.real = llm.model.encode_frames

    def __enter__(self):
        self.model.encode_frames = lambda pixels: self.frames.append(pixels.shape[0]) or self.real(pixels)
        return self

    def __exit__(self, *exc):
        del self.model.encode_frames


def assert_same_outputs(outs, refs, atol=1e-4):
    for out, ref in zip(outs, refs):
        assert out.error is None and ref.error is None, (out.error, ref.error)
        assert out.token_ids == ref.token_ids
        for got, want in zip(out.logprobs, ref.logprobs):
            assert got.keys() == want.keys()
            assert all(abs(got[t] - want[t]) <= atol for t in got)


def test_windows_of_concurrent_requests_share_one_vision_call(frames):
    params = SamplingParams(max_tokens=4, logprobs=3, ignore_eos=True)
    one_window = tiny(max_vision_frames=1)        # the first window of a step only: one request at a time
    refs = one_window.generate(video_requests(frames), params, use_tqdm=False)
    llm = tiny()
    frames_per_window = -(-llm.config.beacon_window // llm.model.tokens_per_frame)
    with EncodeCalls(llm) as calls:
        outs = llm.generate(video_requests(frames), params, use_tqdm=False)
    assert_same_outputs(outs, refs)
    assert sum(calls.frames) == sum(f.shape[0] for f in frames)
    # 8 requests, each with a first window: their frames go through CLIP together
    first_windows = sum(min(f.shape[0], frames_per_window) for f in frames)
    assert calls.frames[0] == first_windows and max(calls.frames) <= llm.core.max_vision_frames
    with EncodeCalls(one_window) as single:
        one_window.generate(video_requests(frames[:2]), params, use_tqdm=False)
    assert max(single.frames) <= frames_per_window
    assert llm.kv_cache_usage()["num_used_pages"] == 0


def test_encoding_ahead_gives_the_same_answers(frames):
    params = SamplingParams(max_tokens=4, logprobs=2, ignore_eos=True)
    refs = tiny().generate(video_requests(frames[:4]), params, use_tqdm=False)
    ahead = tiny(vision_overlap=True, max_vision_frames=20)
    with EncodeCalls(ahead) as calls:
        outs = ahead.generate(video_requests(frames[:4]), params, use_tqdm=False)
    assert_same_outputs(outs, refs)
    assert sum(calls.frames) == sum(f.shape[0] for f in frames[:4]) and max(calls.frames) <= 20
    assert ahead.kv_cache_usage()["num_used_pages"] == 0


def test_a_video_that_fails_in_the_vision_stage_fails_alone(frames, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 4096)
    llm = tiny()
    reqs = video_requests(frames[:3])
    reqs.insert(1, {"prompt": "Q", "video": str(bad)})
    outs = llm.generate(reqs, SamplingParams(max_tokens=3), use_tqdm=False)
    assert outs[1].finish_reason == "error" and outs[1].error
    assert [o.error for i, o in enumerate(outs) if i != 1] == [None] * 3
    assert llm.kv_cache_usage()["num_used_pages"] == 0


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    write_checkpoint(path, small_config(), seed=11)
    return str(path)


def mixed_requests(n=6):
    gen = torch.Generator().manual_seed(7)
    reqs = []
    for i in range(n):
        ids = torch.randint(2, 97, (int(torch.randint(3, 40, (1,), generator=gen)),), generator=gen).tolist()
        if i % 2:
            reqs.append({"prompt_token_ids": ids[:2] + [IMAGE_TOKEN_INDEX] + ids[2:], "compression_ratio": 1 + i % 4,
                         "visual_embeds": torch.randn(int(torch.randint(20, 90, (1,), generator=gen)), 48,
                                                      generator=gen)})
        else:
            reqs.append({"prompt_token_ids": ids})
    return reqs


def record_steps(llm):
    steps, run = [], llm.runner.run

    def recording(chunks):
        steps.append([(id(c.seq), c.num_slots) for c in chunks])
        return run(chunks)
    llm.runner.run = recording
    return steps


@pytest.mark.parametrize("max_batch_tokens,max_num_seqs", [(48, 256), (61, 2), (200, 3)])
def test_steps_stay_within_rows_and_sequences(small, max_batch_tokens, max_num_seqs):
    params = [SamplingParams(max_tokens=5, ignore_eos=True, logprobs=2, prompt_logprobs=1 if i == 2 else None)
              for i in range(6)]
    refs = LLM(small, device="cpu", dtype="float32", page_size=4).generate(mixed_requests(), params, use_tqdm=False)
    llm = LLM(small, device="cpu", dtype="float32", page_size=4, max_batch_tokens=max_batch_tokens,
              max_num_seqs=max_num_seqs)
    steps = record_steps(llm)
    outs = llm.generate(mixed_requests(), params, use_tqdm=False)
    assert_same_outputs(outs, refs)
    for got, want in zip(outs[2].prompt_logprobs, refs[2].prompt_logprobs):
        assert (got is None) == (want is None)
        assert got is None or all(abs(got[t] - want[t]) <= 1e-4 for t in got)
    assert max(sum(n for _, n in step) for step in steps) <= max_batch_tokens
    assert max(len({s for s, _ in step}) for step in steps) <= max_num_seqs


def test_engine_settings_are_checked():
    for bad in (dict(max_num_seqs=0), dict(max_vision_frames=0), dict(vision_overlap="yes"), dict(max_num_seqs=True),
                dict(max_batch_tokens=319)):      # tiny: a window with its VSTs at ratio 1 is 2 x 160 rows
        with pytest.raises(ValueError):
            tiny(**bad)


def test_one_device_to_host_read_per_step(small):
    llm = LLM(small, device="cpu", dtype="float32", page_size=4)
    reads = count_reads(llm)            # the logits count every read of a tensor computed from them
    params = [SamplingParams(max_tokens=6, ignore_eos=True, temperature=0.0 if i % 3 == 0 else 0.9,
                             top_k=5 if i % 3 == 1 else 0, top_p=0.8 if i % 3 == 2 else 1.0, seed=i,
                             logprobs=3 if i % 2 else None, prompt_logprobs=2 if i == 4 else None) for i in range(16)]
    reqs = [{"prompt_token_ids": list(range(3 + i, 11 + i))} for i in range(16)]
    HostReads.reads = 0
    outs = llm.generate(reqs, params, use_tqdm=False)
    assert all(o.error is None and len(o.token_ids) == 6 for o in outs)
    per_step = np.diff(reads + [HostReads.reads])
    assert len(per_step) >= 6 and per_step.tolist() == [1] * len(per_step)


def test_seeded_samples_are_the_same_alone_and_in_a_batch(small):
    llm = LLM(small, device="cpu", dtype="float32", page_size=4)
    params = SamplingParams(max_tokens=8, temperature=1.0, top_k=20, top_p=0.9, seed=1234, ignore_eos=True)
    req = {"prompt_token_ids": [5, 9, 13, 17]}
    alone = llm.generate([req], params, use_tqdm=False)[0].token_ids
    others = [{"prompt_token_ids": [7 + i, 3, 2]} for i in range(5)]
    batch = llm.generate(others[:2] + [req] + others[2:], [SamplingParams(max_tokens=8, temperature=0.7, seed=i)
                                                           for i in range(2)] + [params] +
                         [SamplingParams(max_tokens=8) for _ in range(3)], use_tqdm=False)
    assert batch[2].token_ids == alone


def test_encode_jobs_run_beside_requests_and_give_typed_results(small):
    llm = LLM(small, device="cpu", dtype="float32", page_size=4)
    core = llm.core
    gen = torch.Generator().manual_seed(2)
    embeds = torch.randn(70, 48, generator=gen)
    question = core.add({"prompt_token_ids": [4, 5, 6, 7]}, SamplingParams(max_tokens=30, ignore_eos=True))
    job = core.encode({"visual_embeds": embeds, "compression_ratio": 4}, prefix_token_ids=[3, 4])
    bad = core.encode({"prompt": "ignored"}, prefix_token_ids=[3, 4])
    seen = []
    while job.output is None or question.output is None:
        out = core.step()
        seen += out.encoded
        assert all(o.request_id == question.request_id for o in out.finished)
    assert isinstance(job.output, EncodeResult) and job.output.memory is not None and job.output in seen
    assert isinstance(bad.output, EncodeResult) and bad.output.memory is None and "encode job needs" in bad.output.error
    assert question.output.finish_reason == "length"          # the request ran in the same steps
    mem = job.output.memory
    asked = llm.generate([{"prompt_token_ids": [3, 4, IMAGE_TOKEN_INDEX, 9, 8], "video_memory": mem}],
                         SamplingParams(max_tokens=4), use_tqdm=False)[0]
    direct = llm.generate([{"prompt_token_ids": [3, 4, IMAGE_TOKEN_INDEX, 9, 8], "visual_embeds": embeds,
                            "compression_ratio": 4}], SamplingParams(max_tokens=4), use_tqdm=False)[0]
    assert asked.token_ids == direct.token_ids and asked.metrics["num_vst_tokens"] == direct.metrics["num_vst_tokens"]
    mem.release()
    aborted = core.encode({"visual_embeds": embeds, "compression_ratio": 4}, prefix_token_ids=[3, 4])
    core.step()
    assert core.abort(aborted.request_id) and aborted.output.memory is None and aborted.output.error_type == "abort"
    assert llm.kv_cache_usage()["num_used_pages"] == 0
