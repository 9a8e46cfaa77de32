"""The OpenAI-compatible HTTP server (FastAPI): POST /v1/chat/completions (plain or server-sent events),
GET /v1/models, /health and /metrics (Prometheus). Errors are OpenAI-style JSON bodies: 400 a bad request
(the engine's own message), 403 a file outside the allowed path, 404 an unknown model, 413 over a cap,
500 a fault while the request ran, 503 when the engine's queue is full. One bad request never disturbs
the others; a client that disconnects aborts its request.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from vxl.engine.request import RequestOutput
from vxl.server import openapi
from vxl.server.async_llm import AsyncLLM, EncodeError
from vxl.server.guard import Guard
from vxl.server.media import MediaError, MediaLimits, read_body
from vxl.server.metrics import ServerMetrics
from vxl.server.protocol import (BadRequest, ChatRequest, chunk, completion, error_body, load_json, logprobs_of,
                                 parse_chat_request, usage_of)
from vxl.server.state import Server, server_of
from vxl.server.streams import StreamRegistry, stream_router
from vxl.server.text import TextStream
from vxl.server.video_cache import VideoCache


def error(message: str, status: int, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, status, code), status_code=status)


def status_of(output) -> int:
    """The HTTP status of a request the engine failed: 500 a fault while it ran, 413 over a cap, else 400."""
    return {"server_error": 500, "too_large": 413}.get(output.error_type, 400)


def output_error(output) -> JSONResponse:
    status = status_of(output)
    return error(output.error or "request failed", status, output.error_type)


async def use_cache(cache: VideoCache, llm, req: ChatRequest) -> None:
    """Answer a video request from the cache: encode the video once (or find it encoded), then ask the
    question over its memory. Raises EncodeError when the video cannot be encoded."""
    request = req.engine_request
    ratio = request.get("compression_ratio", llm.config.default_ratio)
    if "video" not in request or req.media.video_key is None or not isinstance(ratio, int) or isinstance(ratio, bool):
        return                              # not cacheable: the engine checks and answers it as it is
    key = (req.media.video_key, request.get("num_frames"), ratio)
    video = {"video": request["video"], "num_frames": request.get("num_frames"), "compression_ratio": ratio}
    memory, hit = await cache.acquire(key, video)
    req.media.on_cleanup.append(lambda: cache.release(key))
    req.engine_request = {"prompt": request["prompt"], "video_memory": memory}
    req.cached_visual_tokens = memory.num_visual_tokens if hit else 0


router = APIRouter()


@router.get("/health", **openapi.HEALTH)
async def health():
    return {"status": "ok"}


@router.get("/v1/models", **openapi.MODELS)
async def models(request: Request):
    s = server_of(request)
    return {"object": "list", "data": [{"id": s.served_model_name, "object": "model", "created": 0,
                                        "owned_by": "vxl", "max_frames": s.limits.max_frames}]}


@router.post("/vxl/video_cache/clear", **openapi.CLEAR_CACHE)
async def clear_cache(request: Request):
    """Release every cached video no request is using (their pages return to the pool)."""
    cache = server_of(request).cache
    if cache is not None:
        await asyncio.to_thread(cache.clear)
    return {"entries": len(cache) if cache is not None else 0}


@router.get("/metrics", **openapi.METRICS)
async def prometheus(request: Request):
    body, content_type = server_of(request).metrics.render()
    return Response(body, media_type=content_type)


@router.post("/v1/chat/completions", **openapi.CHAT)
async def chat(request: Request):
    s, started = server_of(request), time.perf_counter()
    req = await admit_chat(s, request)
    if isinstance(req, Response):
        return s.metrics.count(req)
    rid = "chatcmpl-" + uuid.uuid4().hex
    stream = s.engine.generate(req.engine_request, req.params, rid)
    try:
        first = await stream.__anext__()
    except BaseException:
        req.media.cleanup()
        await stream.aclose()
        raise
    if first.output is not None and first.output.finish_reason == "error":
        req.media.cleanup()
        await stream.aclose()
        return s.metrics.count(output_error(first.output))
    s.metrics.first_token(time.perf_counter() - started)
    answer = Answer(s.engine, rid, req, first, stream)
    if req.stream:
        return StreamingResponse(sse_events(s, answer, started), media_type="text/event-stream")
    try:
        return s.metrics.count(await complete(s, answer, request, started))
    finally:
        req.media.cleanup()
        await stream.aclose()


async def admit_chat(s: Server, request: Request) -> ChatRequest | Response:
    """The parsed request, its video answered from the cache where it can be; or the error response."""
    try:
        body = load_json(await read_body(request, s.limits.max_body_bytes))
    except MediaError as exc:
        return error(str(exc), exc.status, exc.code)
    except BadRequest as exc:
        return error(str(exc), 400)
    if isinstance(body, dict) and body.get("model") not in (None, s.served_model_name):
        return error(f"model {body.get('model')!r} is not served here (only {s.served_model_name!r})", 404,
                     "model_not_found")
    if s.engine.num_requests >= s.max_queued:
        return error(f"the engine has {s.max_queued} requests queued; retry later", 503)
    try:
        req = await asyncio.to_thread(parse_chat_request, body, s.limits, s.streams)
    except MediaError as exc:
        return error(str(exc), exc.status, exc.code)
    except BadRequest as exc:
        return error(str(exc), 400)
    if s.cache is not None:
        try:
            await use_cache(s.cache, s.llm, req)
        except EncodeError as exc:
            req.media.cleanup()
            return output_error(exc.output)
        except BaseException:
            req.media.cleanup()
            raise
    return req


class ClientGone(Exception):
    """The client of a plain (non-streamed) answer disconnected before it was complete."""


class Answer:
    """One request's answer as it is generated, for both plain and streamed replies: `pieces` yields the
    text safe to send (stop strings applied); afterwards `output` is the engine's final output (or, when a
    stop string ended it, the engine's output so far with the text up to it) and `finish_reason` the
    reply's."""

    def __init__(self, engine: AsyncLLM, rid: str, req: ChatRequest, first, stream):
        self.engine, self.rid, self.req, self.first, self.stream = engine, rid, req, first, stream
        self.text = TextStream(engine.llm.tokenizer, req.stop)
        self.output: RequestOutput | None = None

    async def pieces(self, is_disconnected=None):
        delta, text = self.first, self.text
        while True:
            done = delta.output is not None and delta.output.finish_reason != "error"
            piece = text.add(delta.token_ids, final=done, final_text=delta.output.text if done else None)
            if piece:
                yield piece
            if delta.output is not None or text.stopped:
                break
            if is_disconnected is not None and await is_disconnected():
                raise ClientGone
            delta = await self.stream.__anext__()
        self.output = delta.output if delta.output is not None else await self._stopped()

    async def _stopped(self) -> RequestOutput:
        """A stop string ended the answer: the engine stops the request (its pages return) and its metrics
        and logprobs are kept; the text and tokens are those up to the stop string."""
        text, stopped = self.text, await self.engine.stop(self.rid)
        metrics = dict(stopped.metrics) if stopped is not None else {}
        logprobs = stopped.logprobs[:len(text.token_ids)] if stopped is not None and stopped.logprobs is not None \
            else None
        return RequestOutput(self.rid, text.text, list(text.token_ids), logprobs, "stop", None, metrics)

    @property
    def finish_reason(self) -> str:
        return "stop" if self.text.stopped else self.output.finish_reason


async def complete(s: Server, answer: Answer, request: Request, started: float) -> JSONResponse:
    """The whole answer as one ChatCompletion."""
    try:
        async for _ in answer.pieces(request.is_disconnected):
            pass
    except ClientGone:
        return error("the client disconnected", 499)
    output, req = answer.output, answer.req
    if output.finish_reason == "error":
        return output_error(output)
    s.metrics.finished(output, time.perf_counter() - started)
    lp = logprobs_of(s.llm.tokenizer, output, answer.text.token_ids, req.params.logprobs or 0) \
        if req.want_logprobs else None
    body = completion(answer.rid, s.served_model_name, answer.text.final_text(output), answer.finish_reason, output,
                      lp)
    body["vxl_metrics"]["num_cached_visual_tokens"] = req.cached_visual_tokens
    return JSONResponse(body)


async def sse_events(s: Server, answer: Answer, started: float):
    """Server-sent events: a role chunk, content chunks, the finish chunk, usage if asked, [DONE]."""
    created, rid, model, req = int(time.time()), answer.rid, s.served_model_name, answer.req

    def event(obj: dict) -> str:
        return f"data: {json.dumps(obj)}\n\n"
    try:
        yield event(chunk(rid, model, created, {"role": "assistant", "content": ""}))
        async for piece in answer.pieces():
            yield event(chunk(rid, model, created, {"content": piece}))
        output = answer.output
        if output.finish_reason == "error":
            yield event(error_body(output.error or "request failed", status_of(output), output.error_type))
        else:
            yield event(chunk(rid, model, created, {}, answer.finish_reason))
            if req.include_usage:
                yield event({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                             "choices": [], "usage": usage_of(output)})
            s.metrics.finished(output, time.perf_counter() - started)
        s.metrics.requests.labels("200").inc()
        yield "data: [DONE]\n\n"
    finally:
        req.media.cleanup()
        await answer.stream.aclose()


def build_app(llm, served_model_name: str, limits: MediaLimits, max_queued: int = 256,
              video_cache: bool = True, stream_idle_timeout_s: float = 300.0, guard: Guard | None = None,
              max_streams: int = 16) -> FastAPI:
    """The app; `guard` says who may use it (default: anyone, for in-process use; `vxl serve` builds one
    from its flags)."""
    engine = AsyncLLM(llm)
    streams = StreamRegistry(llm, stream_idle_timeout_s, max_streams)
    cache = VideoCache(engine) if video_cache else None
    server = Server(llm, engine, streams, cache, ServerMetrics(engine, llm, cache), limits, served_model_name,
                    max_queued)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        async def close_idle():
            while True:
                await asyncio.sleep(min(5.0, stream_idle_timeout_s / 2))
                await asyncio.to_thread(streams.close_idle)
        closer = asyncio.create_task(close_idle())
        yield
        closer.cancel()
        await asyncio.to_thread(streams.close_all)
        await asyncio.to_thread(engine.shutdown)
    app = FastAPI(title="vxl", description="OpenAI-compatible server for Video-XL", lifespan=lifespan)
    app.state.vxl = server
    app.add_exception_handler(RequestValidationError, invalid)
    guard = guard or Guard()

    @app.middleware("http")
    async def check_client(request: Request, call_next):
        refusal = guard.refusal(request)
        return refusal if refusal is not None else await call_next(request)
    app.include_router(stream_router)
    app.include_router(router)
    return app


async def invalid(_, exc):
    return error(str(exc), 400)
