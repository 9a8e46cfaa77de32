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

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from vxl.server import openapi
from vxl.engine.request import RequestOutput
from vxl.server.async_llm import AsyncLLM, EncodeError
from vxl.server.media import MediaError, MediaLimits
from vxl.server.metrics import ServerMetrics
from vxl.server.protocol import (BadRequest, ChatRequest, chunk, completion, error_body, logprobs_of,
                                 parse_chat_request, usage_of)
from vxl.server.streams import StreamRegistry, add_stream_routes
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


def build_app(llm, served_model_name: str, limits: MediaLimits, max_queued: int = 256,
              video_cache: bool = True, stream_idle_timeout_s: float = 300.0) -> FastAPI:
    engine = AsyncLLM(llm)
    streams = StreamRegistry(llm, stream_idle_timeout_s)
    cache = VideoCache(engine) if video_cache else None
    metrics = ServerMetrics(engine, llm, cache)

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
    app.state.engine, app.state.metrics, app.state.llm, app.state.video_cache = engine, metrics, llm, cache
    add_stream_routes(app, engine, streams, limits)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, exc):
        return error(str(exc), 400)

    @app.get("/health", **openapi.HEALTH)
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models", **openapi.MODELS)
    async def models():
        return {"object": "list", "data": [{"id": served_model_name, "object": "model", "created": 0,
                                            "owned_by": "vxl", "max_frames": limits.max_frames}]}

    @app.post("/vxl/video_cache/clear", **openapi.CLEAR_CACHE)
    async def clear_cache():
        """Release every cached video no request is using (their pages return to the pool)."""
        if cache is not None:
            await asyncio.to_thread(cache.clear)
        return {"entries": len(cache) if cache is not None else 0}

    @app.get("/metrics", **openapi.METRICS)
    async def prometheus():
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/v1/chat/completions", **openapi.CHAT)
    async def chat(request: Request):
        started = time.perf_counter()
        try:
            body = json.loads(await request.body())
        except ValueError:
            return metrics.count(error("the request body is not valid JSON", 400))
        if isinstance(body, dict) and body.get("model") not in (None, served_model_name):
            return metrics.count(error(f"model {body.get('model')!r} is not served here (only "
                                       f"{served_model_name!r})", 404, "model_not_found"))
        if engine.num_requests >= max_queued:
            return metrics.count(error(f"the engine has {max_queued} requests queued; retry later", 503))
        try:
            req = await asyncio.to_thread(parse_chat_request, body, limits, streams)
        except MediaError as exc:
            return metrics.count(error(str(exc), exc.status, exc.code))
        except BadRequest as exc:
            return metrics.count(error(str(exc), 400))
        if cache is not None:
            try:
                await use_cache(cache, llm, req)
            except EncodeError as exc:
                req.media.cleanup()
                return metrics.count(output_error(exc.output))
            except BaseException:
                req.media.cleanup()
                raise
        rid = "chatcmpl-" + uuid.uuid4().hex
        stream = engine.generate(req.engine_request, req.params, rid)
        try:
            first = await stream.__anext__()
        except BaseException:
            req.media.cleanup()
            await stream.aclose()
            raise
        if first.output is not None and first.output.finish_reason == "error":
            req.media.cleanup()
            await stream.aclose()
            return metrics.count(output_error(first.output))
        metrics.first_token(time.perf_counter() - started)
        if req.stream:
            events = sse_events(engine, served_model_name, rid, req, first, stream, metrics, started)
            return StreamingResponse(events, media_type="text/event-stream")
        try:
            return metrics.count(await complete(engine, served_model_name, rid, req, first, stream, request, metrics,
                                                started))
        finally:
            req.media.cleanup()
            await stream.aclose()

    return app


async def complete(engine: AsyncLLM, model: str, rid: str, req: ChatRequest, first, stream, request: Request,
                   metrics, started: float) -> JSONResponse:
    """The whole answer as one ChatCompletion (stop strings applied)."""
    llm = engine.llm
    text = TextStream(llm.tokenizer, req.stop)
    delta = first
    while True:
        done = delta.output is not None and delta.output.finish_reason != "error"
        text.add(delta.token_ids, final=done, final_text=delta.output.text if done else None)
        if delta.output is not None or text.stopped:
            break
        if await request.is_disconnected():
            return error("the client disconnected", 499)
        delta = await stream.__anext__()
    output = delta.output
    if output is None:              # a stop string ended it: the engine stops it now
        output = await final_of(engine, rid, text)
    if output.finish_reason == "error":
        return output_error(output)
    metrics.finished(output, time.perf_counter() - started)
    reason = "stop" if text.stopped else output.finish_reason
    lp = logprobs_of(llm.tokenizer, output, text.token_ids, req.params.logprobs or 0) if req.want_logprobs else None
    body = completion(rid, model, text.final_text(output), reason, output, lp)
    body["vxl_metrics"]["num_cached_visual_tokens"] = req.cached_visual_tokens
    return JSONResponse(body)


async def final_of(engine: AsyncLLM, rid: str, text: TextStream) -> RequestOutput:
    """The output of a request a stop string ended: the engine stops it (its pages return) and its metrics
    and logprobs are kept; the text and tokens are those up to the stop string."""
    stopped = await engine.stop(rid)
    metrics = dict(stopped.metrics) if stopped is not None else {}
    logprobs = stopped.logprobs[:len(text.token_ids)] if stopped is not None and stopped.logprobs is not None else None
    return RequestOutput(rid, text.text, list(text.token_ids), logprobs, "stop", None, metrics)


async def sse_events(engine: AsyncLLM, model: str, rid: str, req: ChatRequest, first, stream, metrics,
                     started: float):
    """Server-sent events: a role chunk, content chunks, the finish chunk, usage if asked, [DONE]."""
    created = int(time.time())
    text = TextStream(engine.llm.tokenizer, req.stop)

    def event(obj: dict) -> str:
        return f"data: {json.dumps(obj)}\n\n"
    try:
        yield event(chunk(rid, model, created, {"role": "assistant", "content": ""}))
        delta = first
        while True:
            done = delta.output is not None and delta.output.finish_reason != "error"
            piece = text.add(delta.token_ids, final=done, final_text=delta.output.text if done else None)
            if piece:
                yield event(chunk(rid, model, created, {"content": piece}))
            if delta.output is not None or text.stopped:
                break
            delta = await stream.__anext__()
        output = delta.output if delta.output is not None else await final_of(engine, rid, text)
        if output.finish_reason == "error":
            yield event(error_body(output.error or "request failed", status_of(output), output.error_type))
        else:
            reason = "stop" if text.stopped else output.finish_reason
            yield event(chunk(rid, model, created, {}, reason))
            if req.include_usage:
                yield event({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                             "choices": [], "usage": usage_of(output)})
            metrics.finished(output, time.perf_counter() - started)
        metrics.requests.labels("200").inc()
        yield "data: [DONE]\n\n"
    finally:
        req.media.cleanup()
        await stream.aclose()
