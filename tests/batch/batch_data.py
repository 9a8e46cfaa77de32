"""Inputs shared by the batch tests: small generated videos (PyAV, lossless H.264) and JSONL jobs about
them, plus the reference answers of `LLM.generate` on the same requests."""
from __future__ import annotations

import json

from helpers import write_mp4
from vxl import SamplingParams
from vxl.demo.tasks import make_sample

QUESTIONS = ["Which colour appeared first?", "How many times did a red object appear?",
             "What colour was the object that appeared once?"]
NUM_FRAMES, RATIO, MAX_TOKENS = 24, 4, 6


def make_videos(root, num_videos: int) -> list[str]:
    tasks = ["ordering", "counting", "retrieval"]
    return [write_mp4(str(root / f"v{i}.mp4"), make_sample(tasks[i % 3], 32, [91, i]).frames)
            for i in range(num_videos)]


def job_requests(videos: list[str], num_questions: int = 3) -> list[dict]:
    """Every video asked `num_questions` questions, interleaved (grouping must gather them), a sampled
    request with a seed, and a text-only one."""
    reqs = [{"request_id": f"v{v}-q{q}", "prompt": QUESTIONS[q], "video": path, "num_frames": NUM_FRAMES,
             "compression_ratio": RATIO} for q in range(num_questions) for v, path in enumerate(videos)]
    reqs.append({"request_id": "sampled", "prompt": QUESTIONS[0], "video": videos[0], "num_frames": 16,
                 "compression_ratio": 2, "temperature": 0.9, "top_k": 20, "seed": 5})
    reqs.append({"request_id": "text", "prompt": "Say something."})
    return reqs


def write_jsonl(path, lines: list) -> str:
    with open(path, "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return str(path)


def read_rows(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def reference(llm, reqs: list[dict]) -> dict:
    """request id -> LLM.generate's output on the same requests (sampling fields as SamplingParams)."""
    sampling = ("max_tokens", "temperature", "top_p", "top_k", "seed")
    params = [SamplingParams(**{"max_tokens": MAX_TOKENS, **{k: r[k] for k in sampling if k in r}}) for r in reqs]
    engine_reqs = [{k: v for k, v in r.items() if k not in sampling} for r in reqs]
    return {out.request_id: out for out in llm.generate(engine_reqs, params, use_tqdm=False)}


def assert_same_answers(rows: list[dict], ref: dict) -> None:
    """Every reference id exactly once, with the same tokens, text and finish reason."""
    ids = [r["request_id"] for r in rows]
    assert sorted(ids) == sorted(ref), (sorted(ids), sorted(ref))
    for row in rows:
        out = ref[row["request_id"]]
        assert row["error"] is None and out.error is None, (row["error"], out.error)
        assert (row["token_ids"], row["text"], row["finish_reason"]) == (out.token_ids, out.text, out.finish_reason)
        assert row["metrics"]["num_kept_tokens"] == out.metrics["num_kept_tokens"]
