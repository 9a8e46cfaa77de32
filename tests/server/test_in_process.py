"""The chat route in process (FastAPI's TestClient, no socket): an answer cut by a `stop` string keeps the
engine's usage and metrics and returns its pages, plain and streamed, and equals the same answer without
`stop` up to the stop string; every engine cap answers 413."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from vxl import LLM
from vxl.server.app import build_app
from vxl.server.media import MediaLimits


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    llm = LLM("tiny", device="cpu", dtype="float32")
    app = build_app(llm, "tiny", MediaLimits(str(tmp_path_factory.mktemp("media"))))
    with TestClient(app) as c:
        c.llm = llm
        yield c


def ask(client, **extra) -> dict:
    body = {"model": "tiny", "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": "Say something about the weather."}], **extra}
    reply = client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def stream_events(client, **extra) -> list[dict]:
    body = {"model": "tiny", "max_tokens": 16, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Say something about the weather."}], **extra}
    with client.stream("POST", "/v1/chat/completions", json=body) as reply:
        assert reply.status_code == 200
        lines = [line[len("data: "):] for line in reply.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_a_stop_string_keeps_usage_and_metrics(client):
    full = ask(client)
    text = full["choices"][0]["message"]["content"]
    assert len(text) > 4, text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = ask(client, stop=[stop])
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["message"]["content"] == text[:text.index(stop)]
    assert cut["usage"]["prompt_tokens"] == full["usage"]["prompt_tokens"] > 0
    assert cut["usage"]["completion_tokens"] <= full["usage"]["completion_tokens"]
    assert cut["vxl_metrics"] and cut["vxl_metrics"].keys() == full["vxl_metrics"].keys()
    usage = client.llm.kv_cache_usage()
    assert usage["num_free_pages"] == usage["num_pages"]


def test_a_streamed_stop_string_keeps_usage(client):
    full = ask(client)
    text = full["choices"][0]["message"]["content"]
    stop = text[len(text) // 2:len(text) // 2 + 2]
    events = stream_events(client, stop=[stop])
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert content == text[:text.index(stop)]
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "stop"
    assert events[-1]["usage"]["prompt_tokens"] == full["usage"]["prompt_tokens"] > 0
    usage = client.llm.kv_cache_usage()
    assert usage["num_free_pages"] == usage["num_pages"]


def test_every_engine_cap_answers_413(tmp_path):
    llm = LLM("tiny", device="cpu", dtype="float32", max_prompt_tokens=100, kv_cache_bytes=2**20)
    app = build_app(llm, "tiny", MediaLimits(str(tmp_path)))
    long_prompt = {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "word " * 200}]}
    too_many_tokens = {"model": "tiny", "max_tokens": 100_000, "messages": [{"role": "user", "content": "hi"}]}
    with TestClient(app) as c:
        for body, words in ((long_prompt, "max_prompt_tokens (100)"), (too_many_tokens, "kept tokens")):
            reply = c.post("/v1/chat/completions", json=body)
            assert reply.status_code == 413, reply.text
            assert words in reply.json()["error"]["message"] and reply.json()["error"]["code"] == "too_large"
        assert c.post("/v1/chat/completions", json={**long_prompt, "messages": [
            {"role": "user", "content": "hi"}]}).status_code == 200
    usage = llm.kv_cache_usage()
    assert usage["num_free_pages"] == usage["num_pages"]


def test_a_body_over_the_cap_is_refused_before_it_is_read(tmp_path):
    llm = LLM("tiny", device="cpu", dtype="float32")
    limits = MediaLimits(str(tmp_path), max_video_bytes=3 * 2**10)      # bodies up to 4 KiB + 1 MiB
    app = build_app(llm, "tiny", limits)
    big = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "x" * (limits.max_body_bytes + 1)}]}
    with TestClient(app) as c:
        reply = c.post("/v1/chat/completions", json=big)
        assert reply.status_code == 413 and reply.json()["error"]["code"] == "too_large", reply.text
        sid = c.post("/v1/streams", json={"compression_ratio": 4}).json()["id"]
        frames = c.post(f"/v1/streams/{sid}/frames", content=b"\0" * (4 * 2**10),
                        headers={"content-type": "application/octet-stream"})
        assert frames.status_code == 413, frames.text
        assert c.post("/v1/chat/completions", json={**big, "messages": [{"role": "user", "content": "hi"}]}
                      ).status_code == 200


def mp4_bytes(path, seed: int) -> bytes:
    import av
    import numpy as np
    frames = np.random.default_rng(seed).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        out = container.add_stream("mpeg4", rate=6)
        out.width, out.height, out.pix_fmt = 32, 32, "yuv420p"
        for frame in frames:
            container.mux(out.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(out.encode())
    return path.read_bytes()


def test_a_clients_uuid_never_answers_from_another_clients_video(client, tmp_path):
    import base64
    cache = client.app.state.vxl.cache
    client.post("/vxl/video_cache/clear")
    answers = []
    for seed in (1, 2):
        url = "data:video/mp4;base64," + base64.b64encode(mp4_bytes(tmp_path / f"{seed}.mp4", seed)).decode()
        reply = ask(client, messages=[{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": url}, "uuid": "same-name"},
            {"type": "text", "text": "What happens?"}]}], compression_ratio=4)
        answers.append(reply["vxl_metrics"]["num_cached_visual_tokens"])
    assert answers == [0, 0] and len(cache) == 2          # the second video was encoded, not taken from the first


def test_images_over_the_cap_are_refused_before_any_is_read(tmp_path, monkeypatch):
    from vxl.server import protocol
    llm = LLM("tiny", device="cpu", dtype="float32")
    app = build_app(llm, "tiny", MediaLimits(str(tmp_path), max_images=3))
    read = []
    monkeypatch.setattr(protocol, "resolve_image", lambda url, limits: read.append(url))
    parts = [{"type": "image_url", "image_url": {"url": f"file:///img{i}.png"}} for i in range(4)]
    with TestClient(app) as c:
        reply = c.post("/v1/chat/completions", json={"model": "tiny", "messages": [
            {"role": "user", "content": parts + [{"type": "text", "text": "Q"}]}]})
    assert reply.status_code == 413 and "4 images" in reply.json()["error"]["message"] and read == []


def test_a_text_file_sent_as_a_video_is_a_415(client, tmp_path):
    import base64
    url = "data:video/mp4;base64," + base64.b64encode(b"just some text, not a video\n" * 10).decode()
    reply = client.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "Q"}]}]})
    assert reply.status_code == 415 and "its bytes look like text" in reply.json()["error"]["message"], reply.text
