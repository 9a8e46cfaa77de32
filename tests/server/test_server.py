"""`vxl serve` on the shipped demo model, started as a subprocess on a free 127.0.0.1 port: the official
`openai` client gets the offline answers (plain and streamed), bad requests get their 4xx and message, a
second question about a video encodes nothing, and under concurrent load with bad requests and clients
that disconnect mid-stream every good answer is right and no page leaks."""
from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from helpers import png_header_only, write_mp4
from vxl import LLM, SamplingParams
from vxl.demo.tasks import make_sample

openai = pytest.importorskip("openai")
QUESTIONS = ["Which colour appeared first?", "How many times did a red object appear?",
             "What colour was the object that appeared once?"]
NUM_FRAMES, RATIO = 24, 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, media_dir, *extra):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "vxl.cli", "serve", "demo", "--port", str(self.port), "--device", "cpu",
               "--allowed-local-media-path", str(media_dir), "--max-frames", "32", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stdout.read()
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("the server did not come up")

    def get(self, path):
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return r.status, r.read().decode()

    def post(self, path, body, timeout=300):
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def metric(self, name) -> float:
        text = self.get("/metrics")[1]
        return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def chat_body(url, question, **extra):
    return {"model": "demo", "max_tokens": 8, "temperature": 0, "compression_ratio": RATIO,
            "media_io_kwargs": {"video": {"num_frames": NUM_FRAMES}},
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                                       {"type": "text", "text": question}]}], **extra}


def image_body(url, question="q"):
    return {"model": "demo", "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                       {"type": "text", "text": question}]}]}


def png_data_url(width: int, height: int) -> str:
    return "data:image/png;base64," + base64.b64encode(png_header_only(width, height)).decode()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    paths = [write_mp4(str(root / f"v{i}.mp4"), make_sample(task, 40, [77, i]).frames)
             for i, task in enumerate(["ordering", "counting", "retrieval", "ordering"])]
    return root, paths


@pytest.fixture(scope="module")
def offline(videos):
    llm = LLM("demo", device="cpu")
    _, paths = videos
    reqs = [{"prompt": q, "video": p, "num_frames": NUM_FRAMES, "compression_ratio": RATIO} for p in paths for q in QUESTIONS]
    outs = llm.generate(reqs, SamplingParams(max_tokens=8), use_tqdm=False)
    return {(r["video"], r["prompt"]): o for r, o in zip(reqs, outs)}


@pytest.fixture(scope="module")
def server(videos):
    s = Server(videos[0])
    yield s
    s.stop()


def test_openai_client_gets_the_offline_answers_plain_and_streamed(server, videos, offline):
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="none", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["demo"]
    path = videos[1][0]
    for question in QUESTIONS[:2]:
        body = chat_body("file://" + path, question)
        extra = {k: body[k] for k in ("media_io_kwargs", "compression_ratio")}
        got = client.chat.completions.create(model="demo", messages=body["messages"], max_tokens=8, temperature=0,
                                             extra_body=extra)
        want = offline[(path, question)]
        assert got.choices[0].message.content == want.text
        assert got.choices[0].finish_reason == want.finish_reason
        assert got.usage.completion_tokens == len(want.token_ids)
        assert got.usage.prompt_tokens == want.metrics["num_prompt_tokens"] - 1 + want.metrics["num_visual_tokens"]
        assert got.model_extra["vxl_metrics"]["num_frames"] == NUM_FRAMES
        stream = client.chat.completions.create(model="demo", messages=body["messages"], max_tokens=8, temperature=0,
                                                stream=True, stream_options={"include_usage": True}, extra_body=extra)
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
        assert chunks[-1].usage.completion_tokens == len(want.token_ids)


def test_a_data_url_video_gets_the_same_answer(server, videos, offline):
    path = videos[1][2]
    url = "data:video/mp4;base64," + base64.b64encode(open(path, "rb").read()).decode()
    status, body = server.post("/v1/chat/completions", chat_body(url, QUESTIONS[0]))
    assert status == 200 and body["choices"][0]["message"]["content"] == offline[(path, QUESTIONS[0])].text


def test_bad_requests_get_their_status_and_message(server, videos, tmp_path):
    good = "file://" + videos[1][0]
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(open(videos[1][0], "rb").read())
    junk = "data:video/mp4;base64," + base64.b64encode(bytes(range(1, 256)) * 8).decode()
    cases = [(chat_body("http://example.com/v.mp4", "q"), 400, "file:// and data:"),
             (chat_body("file://" + str(outside), "q"), 403, "outside the allowed"),
             (chat_body(junk, "q"), 415, "not a video file"),
             (chat_body(good, "q", media_io_kwargs={"video": {"num_frames": 1000}}), 413, "cap"),
             (chat_body(good, "q", compression_ratio=0), 400, "compression_ratio"),
             (chat_body(good, "q", model="gpt-4"), 404, "not served"),
             (chat_body(good, "q", n=2), 400, "n=1"),
             ({"messages": "hi"}, 400, "messages"),
             (image_body(png_data_url(6000, 6000)), 413, "6000x6000 = 36000000 pixels, over the server's cap")]
    for body, status, words in cases:
        got, reply = server.post("/v1/chat/completions", body)
        assert got == status and words in reply["error"]["message"], (body, reply)
    assert server.get("/health")[0] == 200


def test_a_second_question_about_a_video_encodes_no_window(server, videos, offline):
    path = videos[1][3]
    server.post("/vxl/video_cache/clear", {})
    status, first = server.post("/v1/chat/completions", chat_body("file://" + path, QUESTIONS[0]))
    windows = server.metric("vxl_engine_windows")
    status, second = server.post("/v1/chat/completions", chat_body("file://" + path, QUESTIONS[1]))
    assert status == 200 and server.metric("vxl_engine_windows") == windows
    assert second["vxl_metrics"]["num_cached_visual_tokens"] == second["vxl_metrics"]["num_visual_tokens"] > 0
    assert first["vxl_metrics"]["num_cached_visual_tokens"] == 0
    assert second["choices"][0]["message"]["content"] == offline[(path, QUESTIONS[1])].text


def disconnect_mid_stream(server, body) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": True, "max_tokens": 64}),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    response.readline()                 # the first event, then the client goes away
    conn.sock.close()
    conn.close()


def test_concurrent_load_with_bad_requests_and_disconnects(server, videos, offline):
    _, paths = videos
    jobs = []
    for i in range(32):
        path, question = paths[i % 4], QUESTIONS[i % 3]
        if i % 10 == 3:
            jobs.append(("bad", chat_body("file:///etc/passwd", question), 403))
        elif i % 10 == 7:
            jobs.append(("bad", chat_body("file://" + path, question, compression_ratio="x"), 400))
        elif i % 8 == 5:
            jobs.append(("disconnect", chat_body("file://" + path, question), None))
        else:
            jobs.append(("good", chat_body("file://" + path, question), (path, question)))

    def run(job):
        kind, body, expect = job
        if kind == "disconnect":
            disconnect_mid_stream(server, body)
            return True
        status, reply = server.post("/v1/chat/completions", body)
        if kind == "bad":
            return status == expect and "error" in reply
        return status == 200 and reply["choices"][0]["message"]["content"] == offline[expect].text
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(run, jobs, timeout=900))
    assert all(results), [j[0] for j, ok in zip(jobs, results) if not ok]
    assert server.get("/health")[0] == 200
    deadline = time.monotonic() + 60            # disconnected requests are aborted within a step or two
    while server.metric("vxl_requests_running") + server.metric("vxl_requests_waiting") > 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert server.metric("vxl_kv_pages_used") == server.metric("vxl_video_cache_pages")
    server.post("/vxl/video_cache/clear", {})
    assert server.metric("vxl_kv_pages_used") == 0


def test_eviction_under_a_small_pool_keeps_every_answer_right(videos, offline):
    # 9 pages of 16 tokens (the demo model keeps 2 KiB per token in fp32): an encoded video holds 3 pages and
    # a question reserves 4, so the cache must evict idle videos to admit new ones
    small = Server(videos[0], "--kv-cache-bytes", str(9 * 16 * 2048))
    try:
        for path in videos[1] * 2:
            status, reply = small.post("/v1/chat/completions", chat_body("file://" + path, QUESTIONS[2]))
            assert status == 200, reply
            assert reply["choices"][0]["message"]["content"] == offline[(path, QUESTIONS[2])].text
        assert small.metric("vxl_video_cache_entries") < 4
    finally:
        small.stop()


def post_raw(server, path, data: bytes, content_type: str):
    req = urllib.request.Request(server.base + path, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_live_stream_over_http_answers_as_the_same_frames_offline(server, offline):
    import io

    from PIL import Image
    frames = make_sample("ordering", 30, [78, 0]).frames
    status, opened = server.post("/v1/streams", {"compression_ratio": RATIO})
    assert status == 200 and opened["num_frames"] == 0
    sid = opened["id"]
    for frame in frames:                                   # PNG: lossless, so the frames are exactly these
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG")
        status, state = post_raw(server, f"/v1/streams/{sid}/frames", buf.getvalue(), "image/png")
        assert status == 200, state
    assert state["num_frames"] == 30 and state["kept_kv_bytes"] > 0
    body = {"model": "demo", "max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": [
        {"type": "video_stream", "video_stream": {"id": sid}}, {"type": "text", "text": QUESTIONS[0]}]}]}
    status, reply = server.post("/v1/chat/completions", body)
    llm = LLM("demo", device="cpu")
    want = llm.generate([{"prompt": QUESTIONS[0], "video": frames, "num_frames": 30, "compression_ratio": RATIO}],
                        SamplingParams(max_tokens=8), use_tqdm=False)[0]
    assert status == 200 and reply["choices"][0]["message"]["content"] == want.text
    assert post_raw(server, f"/v1/streams/{sid}/frames", b"junk", "image/png")[0] == 400
    assert post_raw(server, f"/v1/streams/{sid}/frames", b"{}", "application/json")[0] == 400
    status, reply = post_raw(server, f"/v1/streams/{sid}/frames", png_header_only(6000, 6000), "image/png")
    assert status == 413 and "over the server's cap" in reply["error"]["message"]
    assert json.loads(server.get(f"/v1/streams/{sid}")[1])["num_frames"] == 30     # refused posts added nothing
    req = urllib.request.Request(server.base + f"/v1/streams/{sid}", method="DELETE")
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200
    assert server.post("/v1/chat/completions", body)[0] == 404
    assert post_raw(server, f"/v1/streams/{sid}/frames", b"x", "image/png")[0] == 404
