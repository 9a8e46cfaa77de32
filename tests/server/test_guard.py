"""Who may use the server: the API key on every route but /health, the Host allow list, cross-site browser
requests refused, a cap on open streams and an idle timer that only real use resets (in process), and
SIGTERM ending an open watcher with a last event and [DONE] within the shutdown timeout (a real server)."""
from __future__ import annotations

import http.client
import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from vxl import LLM
from vxl.server.app import build_app
from vxl.server.guard import Guard, default_hosts
from vxl.server.media import MediaLimits
from vxl.server.streams import StreamRegistry

CHAT = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def llm():
    return LLM("tiny", device="cpu", dtype="float32")


def test_api_key_host_and_origin_are_checked_before_any_route(llm, tmp_path):
    guard = Guard(api_key="s3cret", allowed_hosts={"testserver"}, allowed_origins={"https://tool.example"})
    app = build_app(llm, "tiny", MediaLimits(str(tmp_path)), guard=guard)
    key = {"Authorization": "Bearer s3cret"}
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200                      # open: load balancers probe it
        for path in ("/v1/models", "/metrics"):
            assert c.get(path).status_code == 401 and c.get(path, headers=key).status_code == 200
        reply = c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer wrong"})
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
        assert c.post("/v1/chat/completions", json=CHAT, headers=key).status_code == 200
        assert c.post("/v1/streams", json={}).status_code == 401
        rebound = c.post("/v1/chat/completions", json=CHAT, headers={**key, "Host": "attacker.example"})
        assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "host_not_allowed"
        page = c.post("/v1/chat/completions", content=json.dumps(CHAT), headers={
            **key, "Origin": "https://attacker.example", "Content-Type": "text/plain"})
        assert page.status_code == 403 and page.json()["error"]["code"] == "origin_not_allowed"
        for origin in ("http://testserver", "https://tool.example"):     # same origin, a listed site
            assert c.post("/v1/chat/completions", json=CHAT, headers={**key, "Origin": origin}).status_code == 200


def test_default_hosts_follow_the_bound_address():
    assert default_hosts("127.0.0.1") == {"127.0.0.1", "localhost", "::1"}
    assert "vxl.lan" in default_hosts("vxl.lan") and default_hosts("0.0.0.0") is None


def test_open_streams_are_capped_and_reading_one_does_not_keep_it_open(llm, tmp_path):
    app = build_app(llm, "tiny", MediaLimits(str(tmp_path)), max_streams=2)
    with TestClient(app) as c:
        ids = [c.post("/v1/streams", json={"compression_ratio": 4}).json()["id"] for _ in range(2)]
        third = c.post("/v1/streams", json={"compression_ratio": 4})
        assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_streams"
        c.delete(f"/v1/streams/{ids[0]}")
        assert c.post("/v1/streams", json={"compression_ratio": 4}).status_code == 200
    registry = StreamRegistry(llm, idle_timeout_s=0.2)
    sid, _ = registry.open(4)
    for _ in range(4):                  # a poller reading the status
        time.sleep(0.1)
        registry.get(sid)
    registry.close_idle()
    assert sid not in registry.streams
    usage = llm.kv_cache_usage()
    assert usage["num_free_pages"] == usage["num_pages"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Content-Type": "application/json"})
    return conn, conn.getresponse()


def start_server(media_dir, *extra) -> tuple[int, subprocess.Popen]:
    """`vxl serve tiny` on a free 127.0.0.1 port, once /health answers: (port, process)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vxl.server.serve", "tiny", "--port", str(port), "--device", "cpu",
                             "--allowed-local-media-path", str(media_dir), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the server did not come up: {proc.stdout.read()}")
        try:
            if request(port, "GET", "/health", timeout=2)[1].status == 200:
                return port, proc
        except OSError:
            time.sleep(0.3)


def test_sigterm_ends_an_open_watcher_and_exits_in_time(tmp_path):
    port, proc = start_server(tmp_path, "--shutdown-timeout", "3")
    try:
        sid = json.loads(request(port, "POST", "/v1/streams", {"compression_ratio": 4})[1].read())["id"]
        _, watch = request(port, "POST", f"/v1/streams/{sid}/watch", {"prompt": "What happens?"})
        assert watch.status == 200
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(watch.read().decode().split("\n\n")), daemon=True)
        reader.start()
        time.sleep(0.5)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert time.monotonic() - sent < 10
        reader.join(timeout=5)
        events = [e for e in lines if e.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and "shutting down" in events[-2], events
    finally:
        if proc.poll() is None:
            proc.kill()


def metric(port, name) -> float:
    import re
    text = request(port, "GET", "/metrics")[1].read().decode()
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def test_dropped_streaming_clients_abort_their_requests(tmp_path):
    port, proc = start_server(tmp_path)
    try:
        body = {"model": "tiny", "max_tokens": 4000, "temperature": 0, "stream": True,
                "messages": [{"role": "user", "content": "Tell a long story."}]}
        conns = []
        for i in range(24):                 # half go away mid-answer, half before their answer begins
            if i % 2 == 0:
                conn, reply = request(port, "POST", "/v1/chat/completions", body)
                assert reply.status == 200 and reply.readline().startswith(b"data: ")
            else:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                             headers={"Content-Type": "application/json"})
            conns.append(conn)
        for conn in conns:
            conn.sock.close()
        deadline = time.monotonic() + 15
        while metric(port, "vxl_kv_pages_used") > 0 or metric(port, "vxl_requests_running") > 0:
            assert time.monotonic() < deadline, "dropped clients' requests still run"
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_stream_routes_validate_like_chat(llm, tmp_path):
    app = build_app(llm, "tiny", MediaLimits(str(tmp_path)))
    with TestClient(app) as c:
        for body, words in (([1, 2], "must be a JSON object, not list"), ({"ratio": 4}, "unknown field(s) ['ratio']"),
                            ({"compression_ratio": 0}, "compression_ratio must be an int >= 1"),
                            ({"max_kept_frames": 0}, "max_kept_frames must be None or an int >= 1")):
            reply = c.post("/v1/streams", json=body)
            assert reply.status_code == 400 and words in reply.json()["error"]["message"], reply.text
        nested = "[" * 100_000 + "]" * 100_000
        for path in ("/v1/streams", "/v1/chat/completions"):
            reply = c.post(path, content=nested, headers={"Content-Type": "application/json"})
            assert reply.status_code == 400 and "nested too deeply" in reply.json()["error"]["message"], reply.text
        kept = c.post("/v1/streams", json={"compression_ratio": 4, "max_kept_frames": 8}).json()["id"]
        assert app.state.vxl.streams.get(kept).max_kept_frames == 8
        sid = c.post("/v1/streams", json={"compression_ratio": 10**9}).json()["id"]
        frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG")
        assert c.post(f"/v1/streams/{sid}/frames", content=buf.getvalue(),
                      headers={"content-type": "image/png"}).status_code == 200
        reply = c.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 2, "messages": [
            {"role": "user", "content": [{"type": "video_stream", "video_stream": {"id": sid}},
                                         {"type": "text", "text": "What happens?"}]}]})
        assert reply.status_code == 400 and "leaves no summary token" in reply.json()["error"]["message"], reply.text
        nul = c.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 2, "messages": [
            {"role": "user", "content": [{"type": "video_url", "video_url": {"url": "file:///a%00b.mp4"}},
                                         {"type": "text", "text": "Q"}]}]})
        assert nul.status_code == 400 and "NUL byte" in nul.json()["error"]["message"], nul.text
