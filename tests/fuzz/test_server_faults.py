"""Fault injection (issue 31, item 2; DESIGN section 7, "Faults"): a forward step that raises (a simulated
CUDA out-of-memory or a RuntimeError) fails only the requests of that step, with finish_reason "error" and
error_type "server_error"; every other request gets its solo answer, every page returns and the engine
answers the next call. Offline through `LLM.generate`, and in a `vxl serve` process under concurrent load,
where the failed requests get an OpenAI-style 500, /health stays 200 and /metrics counts the faults."""
from __future__ import annotations

import concurrent.futures
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch
from hypothesis import event, given, note
from hypothesis import strategies as st

from fuzz_common import GREEDY, PH, assert_pool_free, fuzz_settings
from helpers import small_config, write_checkpoint, write_mp4
from vxl import LLM, SamplingParams


# -- offline: LLM.generate with llm.runner.run raising on chosen steps --------------------------------
@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    write_checkpoint(path, small_config(), seed=32)
    return LLM(str(path), device="cpu", dtype="float32", page_size=4, num_pages=256, max_batch_tokens=48)


def batch(num: int) -> list[dict]:
    gen = torch.Generator().manual_seed(num)
    reqs = []
    for i in range(num):
        ids = torch.randint(2, 97, (6,), generator=gen).tolist()
        reqs.append({"prompt_token_ids": ids[:2] + [PH] + ids[2:], "request_id": f"r{i}", "compression_ratio": 4,
                     "visual_embeds": torch.randn(int(torch.randint(8, 60, (1,), generator=gen)), 48, generator=gen)})
    reqs.append({"prompt_token_ids": [3, 4, 5], "request_id": "text"})
    return reqs


@pytest.fixture(scope="module")
def solos(llm):
    return {r["request_id"]: llm.generate([r], GREEDY, use_tqdm=False)[0].token_ids for r in batch(6)}


FAULTS = [lambda: torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)"),
          lambda: RuntimeError("simulated kernel failure")]


@given(failing_calls=st.sets(st.integers(0, 12), max_size=4), fault=st.sampled_from(FAULTS))
@fuzz_settings()
def test_a_failing_step_fails_only_its_requests(llm, solos, failing_calls, fault):
    real_run, calls, failed_ids = llm.runner.run, [0], set()

    def run(chunks):
        calls[0] += 1
        if calls[0] - 1 in failing_calls:
            failed_ids.update(c.seq.request_id for c in chunks)
            raise fault()
        return real_run(chunks)
    llm.runner.run = run                # this engine's runner only; restored below
    try:
        outs = llm.generate(batch(6), GREEDY, use_tqdm=False)
    finally:
        del llm.runner.run
    note(f"failed in a step: {sorted(failed_ids)}")
    event(f"steps that raised: {len(failing_calls & set(range(calls[0])))}")
    for out in outs:
        if out.request_id in failed_ids:
            assert out.finish_reason == "error" and out.error_type == "server_error", out
            assert "forward step" in out.error and str(fault()) in out.error
        else:
            assert out.error is None and out.token_ids == solos[out.request_id], out
    assert_pool_free(llm)
    again = llm.generate(batch(6)[:2], GREEDY, use_tqdm=False)
    assert [o.token_ids for o in again] == [solos["r0"], solos["r1"]]


# -- the server: `vxl serve demo` whose ModelRunner.run raises on every Nth call, for the first K faults, --
# -- while the file `armed` exists (the test removes it to end the faults whatever number were spent) -----
WRAPPER = '''import os, sys, torch
import vxl.engine.runner as runner
from vxl.cli import main
every, budget, armed = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
real_run, state = runner.ModelRunner.run, {"calls": 0, "faults": 0}
def run(self, chunks):
    state["calls"] += 1
    if state["calls"] % every == 0 and state["faults"] < budget and os.path.exists(armed):
        state["faults"] += 1
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated fault %d)" % state["faults"])
    return real_run(self, chunks)
runner.ModelRunner.run = run
sys.exit(main(["serve", *sys.argv[4:]]))
'''
NUM_FRAMES, RATIO, QUESTIONS = 8, 4, ["Which colour appeared first?", "How many objects appeared?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultyServer:
    def __init__(self, tmp_path, media_dir, every: int, budget: int):
        script = tmp_path / "faulty_serve.py"
        script.write_text(WRAPPER)
        self.armed = tmp_path / "faults_armed"
        self.armed.touch()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(script), str(every), str(budget), str(self.armed), "demo", "--port",
                                      str(self.port), "--device", "cpu", "--allowed-local-media-path", str(media_dir),
                                      "--max-frames", "32"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 180          # a hang guard, not a time limit under test
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stdout.read()
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise AssertionError("the server did not come up")

    def get(self, path):
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return r.status, r.read().decode()

    def post(self, path, body, timeout=600):
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def metric(self, name) -> float:
        return float(re.search(rf"^{name} (\S+)$", self.get("/metrics")[1], re.M).group(1))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


def chat_body(path, question):
    return {"model": "demo", "max_tokens": 4, "temperature": 0, "compression_ratio": RATIO,
            "media_io_kwargs": {"video": {"num_frames": NUM_FRAMES}},
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "file://" + path}},
                                                       {"type": "text", "text": question}]}]}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from vxl.demo.tasks import make_sample
    root = tmp_path_factory.mktemp("media")
    return root, [write_mp4(str(root / f"v{i}.mp4"), make_sample(task, 16, [31, i]).frames)
                  for i, task in enumerate(["ordering", "counting", "retrieval"])]


def test_server_step_faults_under_concurrent_load(tmp_path, videos):
    root, paths = videos
    jobs = [(paths[i % 3], QUESTIONS[i % 2]) for i in range(24)]
    offline = LLM("demo", device="cpu").generate(
        [{"prompt": q, "video": p, "num_frames": NUM_FRAMES, "compression_ratio": RATIO} for p, q in set(jobs)],
        SamplingParams(max_tokens=4), use_tqdm=False)
    want = {job: out.text for job, out in zip(set(jobs), offline)}
    server = FaultyServer(tmp_path, root, every=5, budget=3)
    try:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(lambda job: server.post("/v1/chat/completions", chat_body(*job)), jobs,
                                    timeout=1200))
            assert server.get("/health")[0] == 200
        statuses = [status for status, _ in replies]
        assert set(statuses) <= {200, 500} and 500 in statuses and 200 in statuses, statuses
        for job, (status, body) in zip(jobs, replies):
            if status == 500:
                assert set(body["error"]) >= {"message", "type", "code"} and "out of memory" in body["error"]["message"]
            else:
                assert body["choices"][0]["message"]["content"] == want[job]
        assert server.metric("vxl_step_faults") >= 1
        server.armed.unlink()           # no more faults: the same engine serves the next request exactly
        status, body = server.post("/v1/chat/completions", chat_body(*jobs[0]))
        assert status == 200 and body["choices"][0]["message"]["content"] == want[jobs[0]], (status, body)
        deadline = time.monotonic() + 120         # a hang guard
        while server.metric("vxl_requests_running") + server.metric("vxl_requests_waiting") > 0:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert server.metric("vxl_kv_pages_used") == server.metric("vxl_video_cache_pages")
        server.post("/vxl/video_cache/clear", {})
        assert server.metric("vxl_kv_pages_used") == 0
    finally:
        server.stop()
