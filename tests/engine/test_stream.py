"""Live streams: after frames F are appended in any split, answers (greedy tokens, logprobs) and the kept
K/V equal a request over F / `encode_video(F)` at the same ratio; asking never changes the stream; standing
questions; back-pressure; bad frames; closing mid-question; many streams on a small pool."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from vxl import LLM, SamplingParams
from vxl.demo.tasks import make_sample


@pytest.fixture(scope="module")
def demo():
    return LLM("demo", device="cpu", dtype="float32", attention_backend="torch")


@pytest.fixture(scope="module")
def tiny():
    return LLM("tiny", device="cpu", dtype="float32", attention_backend="torch", seed=3)


def splits(frames: np.ndarray, how: str, seed: int = 0):
    if how == "whole":
        return [frames]
    if how == "ones":
        return [f for f in frames]             # [H, W, 3] each: one frame at a time
    rng, out, i = np.random.default_rng(seed), [], 0
    while i < len(frames):
        n = int(rng.integers(1, 9))
        out.append(frames[i:i + n])
        i += n
    return out


def assert_pool_empty(llm):
    usage = llm.kv_cache_usage()
    assert usage["num_free_pages"] == usage["num_pages"]
    llm.block_manager.check()


def check_exact(llm, frames, ratio, how, question, params):
    ref = llm.generate([{"prompt": question, "video": frames, "num_frames": len(frames), "compression_ratio": ratio}],
                       params, use_tqdm=False)[0]
    mem = llm.encode_video(frames, compression_ratio=ratio, num_frames=len(frames))
    stream = llm.open_stream(compression_ratio=ratio)
    try:
        for part in splits(frames, how):
            stream.append(part)
        assert stream.num_frames == len(frames)
        got = llm.generate([{"prompt": question, "video_stream": stream}], params, use_tqdm=False)[0]
        again = llm.generate([{"prompt": question, "video_stream": stream}], params, use_tqdm=False)[0]
        assert got.error is None and got.token_ids == ref.token_ids == again.token_ids   # asking changes nothing
        for a, b, t in zip(got.logprobs, ref.logprobs, ref.token_ids):
            assert abs(a[t] - b[t]) <= 1e-5
        saved = stream.to_memory()
        assert saved.num_kept == mem.num_kept and saved.num_vst == mem.num_vst
        for (k1, v1), (k2, v2) in zip(saved.kept_kv(), mem.kept_kv()):
            torch.testing.assert_close(k1, k2, atol=1e-5, rtol=0)
            torch.testing.assert_close(v1, v2, atol=1e-5, rtol=0)
        saved.release()
    finally:
        stream.close()
        mem.release()
    assert_pool_empty(llm)


# window 48 tokens = 12 frames of 4 tokens: ratio 4 divides it, 5 and 16... 5 does not (remainders carry);
# 61 frames end mid-window, 60 at a window's end
@pytest.mark.parametrize("ratio", [4, 5])
@pytest.mark.parametrize("num_frames", [61, 60])
@pytest.mark.parametrize("how", ["whole", "ones", "random"])
def test_demo_stream_equals_the_request_over_the_same_frames(demo, ratio, num_frames, how):
    frames = make_sample("ordering", num_frames, [91, num_frames]).frames
    check_exact(demo, frames, ratio, how, "Which colour appeared first?", SamplingParams(max_tokens=6, logprobs=3))


@pytest.mark.parametrize("ratio,num_frames", [(2, 23), (12, 20), (16, 10)])   # window 160 = 10 frames of 16
def test_tiny_stream_equals_the_request_over_the_same_frames(tiny, ratio, num_frames):
    frames = np.random.default_rng(num_frames).integers(0, 256, (num_frames, 40, 56, 3), dtype=np.uint8)
    check_exact(tiny, frames, ratio, "random", "What is happening?", SamplingParams(max_tokens=5, logprobs=2))


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A tiny model written in the official layout (safetensors weights with the
    `model.vision_tower.vision_tower.vision_model.*` CLIP keys, tokenizer, clip/ directory) and loaded back."""
    from vxl.model.tiny import build_tiny, save_checkpoint
    path = tmp_path_factory.mktemp("official")
    save_checkpoint(build_tiny(torch.device("cpu"), torch.float32, seed=11), str(path))
    return LLM(str(path), device="cpu", dtype="float32", attention_backend="torch")


# window 160 tokens = 10 frames of 16: ratio 8 divides it, 12 does not; 23 frames end mid-window, 20 at its end
@pytest.mark.parametrize("ratio", [8, 12])
@pytest.mark.parametrize("num_frames", [23, 20])
@pytest.mark.parametrize("how", ["ones", "random"])
def test_official_layout_stream_equals_the_request_over_the_same_frames(official, ratio, num_frames, how):
    frames = np.random.default_rng([num_frames, ratio]).integers(0, 256, (num_frames, 36, 44, 3), dtype=np.uint8)
    check_exact(official, frames, ratio, how, "What is happening?", SamplingParams(max_tokens=5, logprobs=2))


def test_a_standing_question_answers_after_every_k_windows(demo):
    frames = make_sample("counting", 72, [92, 0]).frames          # 6 windows of 12 frames
    stream = demo.open_stream(compression_ratio=4, max_queued_windows=0)   # append encodes at once
    question, events = "How many times did a red object appear?", []
    params = SamplingParams(max_tokens=4)
    watcher = stream.watch(question, every_n_windows=2, sampling_params=params)
    answered = threading.Semaphore(0)

    def feed():                 # two windows, then wait for the watcher's answer, three times
        for i in range(0, len(frames), 24):
            stream.append(frames[i:i + 24])
            assert answered.acquire(timeout=300)
    feeder = threading.Thread(target=feed)
    feeder.start()
    for frames_seen, out in watcher:
        events.append((frames_seen, out))
        answered.release()
        if len(events) == 3:
            break
    feeder.join(timeout=300)
    assert [n for n, _ in events] == [24, 48, 72]
    for n, out in events:       # each answer is the one over the frames seen when it was asked
        ref = demo.generate([{"prompt": question, "video": frames[:n], "num_frames": n, "compression_ratio": 4}],
                            params, use_tqdm=False)[0]
        assert out.token_ids == ref.token_ids
    stream.close()
    assert list(watcher) == []                                     # a closed stream ends the watch
    assert_pool_empty(demo)


def test_back_pressure_bounds_the_queued_windows(demo):
    stream = demo.open_stream(compression_ratio=4, max_queued_windows=1)
    frames = make_sample("ordering", 120, [93, 0]).frames
    for i in range(0, 120, 30):
        stream.append(frames[i:i + 30])
        assert len(stream._queue) <= 1 and stream._partial.shape[0] < demo.config.beacon_window
    assert stream.encoder.num_windows >= 10 - 1
    stream.close()
    assert_pool_empty(demo)


def test_bad_frames_are_refused_and_the_stream_stays_usable(demo):
    stream = demo.open_stream(compression_ratio=4)
    good = make_sample("ordering", 13, [94, 0]).frames
    stream.append(good[:5])
    for bad, words in [(good[:2].astype(np.float32), "uint8"), (good[:2, :, :, :2], "shape"),
                       (np.zeros((2, 32, 32, 3), np.uint8), "64x64"), ("frames.mp4", "array"),
                       (good[:0], "T, H, W >= 1")]:
        with pytest.raises((ValueError, TypeError), match=words):
            stream.append(bad)
    assert stream.num_frames == 5
    stream.append(good[5:])
    out = demo.generate([{"prompt": "Which colour appeared first?", "video_stream": stream}], SamplingParams(max_tokens=4),
                        use_tqdm=False)[0]
    ref = demo.generate([{"prompt": "Which colour appeared first?", "video": good, "num_frames": 13,
                          "compression_ratio": 4}], SamplingParams(max_tokens=4), use_tqdm=False)[0]
    assert out.token_ids == ref.token_ids
    stream.close()
    with pytest.raises(ValueError, match="closed"):
        stream.append(good[:1])
    out = demo.generate([{"prompt": "Which?", "video_stream": stream}], use_tqdm=False)[0]
    assert out.finish_reason == "error" and "closed" in out.error
    assert_pool_empty(demo)


def test_closing_a_stream_while_a_question_runs_loses_nothing(demo):
    stream = demo.open_stream(compression_ratio=4)
    stream.append(make_sample("ordering", 30, [95, 0]).frames)
    rid = demo.add_request({"prompt": "Which colour appeared first?", "video_stream": stream}, SamplingParams(max_tokens=8))
    demo.step()
    stream.close()                                  # the question runs on its own fork of the pages
    done = {}
    while demo.has_unfinished_requests():
        done.update({o.request_id: o for o in demo.step().finished})
    assert done[rid].error is None and len(done[rid].token_ids) >= 1
    assert_pool_empty(demo)


def test_threads_append_to_different_streams_at_once(demo):
    clips = [make_sample("ordering", 36, [96, i]).frames for i in range(3)]
    streams = [demo.open_stream(compression_ratio=4) for _ in clips]
    errors = []

    def feed(stream, frames):
        try:
            for i in range(0, len(frames), 5):
                stream.append(frames[i:i + 5])
        except Exception as exc:         # recorded: asserted empty below
            errors.append(exc)
    threads = [threading.Thread(target=feed, args=pair) for pair in zip(streams, clips)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    q = "Which colour appeared last?"
    got = demo.generate([{"prompt": q, "video_stream": s} for s in streams], SamplingParams(max_tokens=4), use_tqdm=False)
    ref = demo.generate([{"prompt": q, "video": c, "num_frames": 36, "compression_ratio": 4} for c in clips],
                        SamplingParams(max_tokens=4), use_tqdm=False)
    assert [o.token_ids for o in got] == [o.token_ids for o in ref]
    for s in streams:
        s.close()
    assert_pool_empty(demo)


def test_many_streams_on_a_small_pool_fail_alone_when_out_of_pages():
    """100 streams of one window each on a 60-page pool: those that cannot get pages fail with a clear
    message, the others keep answering, and every page returns."""
    llm = LLM("tiny", device="cpu", dtype="float32", attention_backend="torch", num_pages=60, page_size=4)
    frames = np.random.default_rng(0).integers(0, 256, (10, 40, 40, 3), dtype=np.uint8)   # one window each
    streams, failures = [], []
    for _ in range(100):
        try:
            stream = llm.open_stream(compression_ratio=2, max_queued_windows=0)
            streams.append(stream)
            stream.append(frames)
        except RuntimeError as exc:
            failures.append(str(exc))
    assert failures and all("KV pages" in f or "free pages" in f for f in failures)
    healthy = [s for s in streams if s.error is None]
    assert healthy
    out = llm.generate([{"prompt": "Describe.", "video_stream": healthy[0]}], SamplingParams(max_tokens=2),
                       use_tqdm=False)[0]
    assert out.error is None or "pages" in out.error
    for s in streams:
        s.close()
    assert_pool_empty(llm)


def test_max_kept_frames_bounds_the_pages_and_keeps_positions(demo, monkeypatch):
    """A bounded stream gives back its oldest VST pages, so its pages stay bounded over many windows, and
    what it still holds keeps its positions: a question's rows sit where the unbounded stream's do."""
    frames = make_sample("retrieval", 240, [97, 0]).frames          # 20 windows of 12 frames
    bounded = demo.open_stream(compression_ratio=2, max_kept_frames=24, max_queued_windows=0)
    full = demo.open_stream(compression_ratio=2, max_queued_windows=0)
    sizes = []
    for i in range(0, 240, 12):
        bounded.append(frames[i:i + 12])
        full.append(frames[i:i + 12])
        sizes.append(len(bounded.encoder.table.pages))
    assert max(sizes[5:]) <= sizes[4] + 1 < len(full.encoder.table.pages)
    assert bounded.encoder.table.num_dropped > 0
    assert bounded.encoder.table.num_tokens + bounded.encoder.table.num_dropped == full.encoder.table.num_tokens
    seen = []
    real = demo.runner.model.forward

    def spy(embeds, step, *rest):
        seen.append(step.positions.tolist())
        return real(embeds, step, *rest)
    monkeypatch.setattr(demo.runner.model, "forward", spy)
    for stream in (bounded, full):
        out = demo.generate([{"prompt": "What colour was the object that appeared once?", "video_stream": stream}],
                            SamplingParams(max_tokens=1), use_tqdm=False)[0]
        assert out.error is None
    monkeypatch.undo()
    assert len(seen) == 2 and seen[0] == seen[1]                   # the same positions, bounded or not
    with pytest.raises(ValueError, match="max_kept_frames"):
        bounded.to_memory()
    bounded.close()
    full.close()
    assert_pool_empty(demo)


def test_stream_questions_get_the_engine_checks_of_sampling_params():
    """The caps and vocabulary checks of SamplingParams apply to a question over a stream as to any request."""
    llm = LLM("tiny", device="cpu", dtype="float32", attention_backend="torch", max_logprobs=2)
    stream = llm.open_stream(compression_ratio=4)
    try:
        stream.append(np.zeros((3, 32, 32, 3), dtype=np.uint8))
        ask = {"prompt": "q", "video_stream": stream}
        outs = llm.generate([ask] * 4, [SamplingParams(max_tokens=2, logprobs=3),
                                        SamplingParams(max_tokens=2, prompt_logprobs=3),
                                        SamplingParams(max_tokens=2, stop_token_ids=[10**6]),
                                        SamplingParams(max_tokens=2, logprobs=2)], use_tqdm=False)
        assert "logprobs must be at most 2" in outs[0].error
        assert "prompt_logprobs must be at most 2" in outs[1].error
        assert "stop_token_ids" in outs[2].error
        assert outs[3].error is None and len(outs[3].token_ids) == 2
    finally:
        stream.close()
    assert_pool_empty(llm)
