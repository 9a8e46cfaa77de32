"""Live streams over HTTP: open a stream, post frames to it (one JPEG/PNG image, or a short video file,
per request), ask about it in a chat message (`{"type": "video_stream", "video_stream": {"id": ...}}`),
watch it with a standing question (server-sent events), close it. Idle streams are closed after a timeout.
"""
from __future__ import annotations

import asyncio
import io
import json
import time
import uuid

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from vxl import defaults
from vxl.checks import int_at_least
from vxl.engine.sampler import SamplingParams
from vxl.server import openapi
from vxl.server.media import MediaError, MediaLimits, check_image_size, read_body
from vxl.server.protocol import error_body, load_json
from vxl.server.state import server_of


def frames_of(body: bytes, content_type: str, limits: MediaLimits) -> np.ndarray:
    """uint8 [T, H, W, 3] frames of a posted image (refused over the pixel cap before it is decoded) or
    short video."""
    kind = content_type.split(";")[0].strip().lower()
    max_frames = limits.max_frames
    if kind.startswith("image/"):
        from PIL import Image
        try:
            image = Image.open(io.BytesIO(body))
        except Exception as exc:        # PIL raises many kinds for junk bytes
            raise MediaError(f"the posted image does not decode: {exc}") from None
        check_image_size(image, limits, "the posted image")
        try:
            return np.asarray(image.convert("RGB"))[None]
        except Exception as exc:
            raise MediaError(f"the posted image does not decode: {exc}") from None
    if kind.startswith("video/"):
        import av
        try:
            with av.open(io.BytesIO(body)) as container:
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        except Exception as exc:        # PyAV raises many kinds for junk bytes
            raise MediaError(f"the posted video does not decode: {exc}") from None
        if not frames:
            raise MediaError("the posted video has no frames")
        if len(frames) > max_frames:
            raise MediaError(f"{len(frames)} frames in one post are over the cap of {max_frames}", 413, "too_large")
        return np.stack(frames)
    raise MediaError("post frames as image/jpeg, image/png or a video/* file (Content-Type)")


class StreamRegistry:
    """The server's open streams, at most `max_streams`; one unused for `idle_timeout_s` is closed. Use is
    appending frames or asking (`get(sid, touch=True)`); reading a stream's status does not keep it open.
    Stream ids are random (128 bits): unguessable."""

    def __init__(self, llm, idle_timeout_s: float, max_streams: int = 16):
        self.llm, self.idle_timeout_s, self.max_streams = llm, idle_timeout_s, max_streams
        self.streams: dict[str, tuple[object, float]] = {}

    def open(self, ratio, max_kept_frames=None) -> tuple[str, object]:
        if len(self.streams) >= self.max_streams:
            raise MediaError(f"the server has {self.max_streams} streams open, its cap; close one or retry later",
                             429, "too_many_streams")
        stream = self.llm.open_stream(compression_ratio=ratio, max_kept_frames=max_kept_frames)
        sid = "stream-" + uuid.uuid4().hex
        self.streams[sid] = (stream, time.monotonic())
        return sid, stream

    def get(self, sid: str, touch: bool = False):
        if sid not in self.streams:
            raise MediaError(f"no open stream {sid!r}", 404, "stream_not_found")
        stream, used = self.streams[sid]
        self.streams[sid] = (stream, time.monotonic() if touch else used)
        return stream

    def close(self, sid: str) -> None:
        stream, _ = self.streams.pop(sid, (None, 0))
        if stream is None:
            raise MediaError(f"no open stream {sid!r}", 404, "stream_not_found")
        stream.close()

    def close_idle(self) -> None:
        now = time.monotonic()
        for sid, (stream, used) in list(self.streams.items()):
            if now - used > self.idle_timeout_s:
                self.streams.pop(sid, None)
                stream.close()

    def close_all(self) -> None:
        for sid in list(self.streams):
            self.streams.pop(sid)[0].close()


def status(sid: str, stream) -> dict:
    return {"id": sid, "compression_ratio": stream.ratio, "num_frames": stream.num_frames,
            "kept_kv_bytes": stream.kept_kv_bytes, "error": stream.error}


stream_router = APIRouter()


def fail(exc: Exception) -> JSONResponse:
    code = exc.status if isinstance(exc, MediaError) else 400
    return JSONResponse(error_body(str(exc), code, exc.code if isinstance(exc, MediaError) else None),
                        status_code=code)


OPEN_FIELDS = ("compression_ratio", "max_kept_frames")


@stream_router.post("/v1/streams", **openapi.OPEN_STREAM)
async def open_stream(request: Request):
    try:
        body = json_object(await read_body(request, 2**20) or b"{}", "the stream's settings body")
        unknown = sorted(set(body) - set(OPEN_FIELDS))
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; known: {list(OPEN_FIELDS)}")
        sid, stream = await asyncio.to_thread(server_of(request).streams.open, body.get("compression_ratio"),
                                              body.get("max_kept_frames"))
    except (ValueError, TypeError) as exc:
        return fail(exc)
    return status(sid, stream)


def json_object(body: bytes, what: str) -> dict:
    """A JSON object body, or ValueError (BadRequest) naming what is wrong with it."""
    obj = load_json(body, what)
    if not isinstance(obj, dict):
        raise ValueError(f"{what} must be a JSON object, not {type(obj).__name__}")
    return obj


@stream_router.post("/v1/streams/{sid}/frames", **openapi.POST_FRAMES)
async def post_frames(sid: str, request: Request):
    limits = server_of(request).limits
    try:
        stream = server_of(request).streams.get(sid, touch=True)
        body = await read_body(request, limits.max_video_bytes)
        frames = frames_of(body, request.headers.get("content-type", ""), limits)
        await asyncio.to_thread(stream.append, frames)
    except (ValueError, TypeError, RuntimeError) as exc:
        return fail(exc)
    return status(sid, stream)


@stream_router.get("/v1/streams/{sid}", **openapi.GET_STREAM)
async def get_stream(sid: str, request: Request):
    try:
        return status(sid, server_of(request).streams.get(sid))
    except MediaError as exc:
        return fail(exc)


@stream_router.delete("/v1/streams/{sid}", **openapi.DELETE_STREAM)
async def delete_stream(sid: str, request: Request):
    try:
        await asyncio.to_thread(server_of(request).streams.close, sid)
    except MediaError as exc:
        return fail(exc)
    return {"id": sid, "closed": True}


@stream_router.post("/v1/streams/{sid}/watch", **openapi.WATCH)
async def watch(sid: str, request: Request):
    """A standing question as server-sent events: {"frames", "text"} after every `every_n_windows` newly
    encoded windows, until the stream closes or the client goes away."""
    try:
        body = json_object(await read_body(request, 2**20), "the watch body")
        every = int_at_least("every_n_windows", body.get("every_n_windows", 1), 1)
        params = SamplingParams(max_tokens=body.get("max_tokens", defaults.MAX_TOKENS),
                                temperature=body.get("temperature", 0.0))
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise ValueError(f"watch needs a string prompt, got {type(prompt).__name__}")
        stream = server_of(request).streams.get(sid, touch=True)
    except (ValueError, TypeError) as exc:
        return fail(exc)
    s = server_of(request)
    return StreamingResponse(watch_events(s.engine, stream, prompt, params, every, s.closing),
                             media_type="text/event-stream")


async def watch_events(engine, stream, prompt: str, params: SamplingParams, every: int, closing):
    """The watch's events until the stream closes or the server shuts down (a last event says so)."""
    target = stream.num_windows + every
    while not stream.is_closed:
        if closing.is_set():
            last = {'frames': stream.num_frames, 'text': '', 'error': 'the server is shutting down'}
            yield f"data: {json.dumps(last)}\n\n"
            break
        if stream.num_windows < target:
            await asyncio.sleep(0.05)
            continue
        frames, last = stream.num_frames, None
        async for delta in engine.generate({"prompt": prompt, "video_stream": stream}, params):
            last = delta.output
        target = stream.num_windows + every
        yield f"data: {json.dumps({'frames': frames, 'text': last.text, 'error': last.error})}\n\n"
    yield "data: [DONE]\n\n"
