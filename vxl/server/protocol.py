"""The OpenAI chat-completions shapes vxl serves (the request shape vLLM uses for video): a request body ->
an engine request + SamplingParams, and engine outputs -> ChatCompletion objects and stream chunks.

A user message whose content is one `video_url` part and one `text` part Q gives the engine request
{"prompt": Q, "video": ...}: exactly the prompt an offline request gives. Visual parts go before the text
(the chat template puts the video first); several `image_url` parts are one frame each, one is cut into tiles.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from vxl import defaults
from vxl.engine.inputs import SYSTEM_PROMPT
from vxl.engine.request import RequestOutput
from vxl.engine.sampler import MAX_LOGPROBS, SamplingParams
from vxl.server.media import Media, MediaError, MediaLimits, resolve_image, resolve_video

KNOWN_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed",
                "stop", "logprobs", "top_logprobs", "n", "stream", "stream_options", "media_io_kwargs",
                "compression_ratio", "user", "frequency_penalty", "presence_penalty"}


class BadRequest(ValueError):
    pass


@dataclass
class ChatRequest:
    engine_request: dict
    params: SamplingParams
    media: Media
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    want_logprobs: bool = False
    cached_visual_tokens: int = 0           # visual tokens answered from the video cache (no encoding)


def _or_default(value, default):
    """`value` unless it is null (a false value of the wrong type must still be refused by its check)."""
    return default if value is None else value


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise BadRequest(message)


def parse_messages(messages, media: Media, limits: MediaLimits, num_frames: int | None,
                   streams=None) -> tuple[str, dict]:
    """(the question text, the engine request's visual fields) of a chat: an optional system message with
    vxl's default system prompt, then one user message."""
    _expect(isinstance(messages, list) and messages, "messages must be a non-empty list")
    for m in messages:
        _expect(isinstance(m, dict) and isinstance(m.get("role"), str), "each message needs a role")
    *before, last = messages
    _expect(last["role"] == "user", "the last message must be the user's question")
    for m in before:
        _expect(m["role"] == "system", "multi-turn chats are not supported: send one user message")
        _expect(_text_of(m.get("content")) == SYSTEM_PROMPT,
                f"only the model's own system prompt ({SYSTEM_PROMPT!r}) is supported")
    content = last.get("content")
    if isinstance(content, str):
        return content, {}
    _expect(isinstance(content, list) and content, "message content must be a string or a list of parts")
    _expect(all(isinstance(part, dict) for part in content), "each content part must be an object with a type")
    kinds = [part.get("type") for part in content]     # counted before any media is read or decoded
    num_images, num_videos = kinds.count("image_url"), kinds.count("video_url") + kinds.count("video_stream")
    if num_images > limits.max_images:
        raise MediaError(f"{num_images} images are over the server's cap of {limits.max_images}", 413, "too_large")
    _expect(num_videos <= 1 and not (num_videos and num_images),
            "a request takes one video or stream, or images, not several")
    texts, videos, images, live = [], [], [], []
    for part in content:
        _expect(isinstance(part, dict), "each content part must be an object with a type")
        kind = part.get("type")
        if kind == "text":
            _expect(isinstance(part.get("text"), str), "a text part needs a string 'text'")
            texts.append(part["text"])
        elif kind == "video_url":
            url = (part.get("video_url") or {}).get("url") if isinstance(part.get("video_url"), dict) else None
            videos.append(resolve_video(url, media, limits))
        elif kind == "video_stream" and streams is not None:
            ref = part.get("video_stream")
            _expect(isinstance(ref, dict) and isinstance(ref.get("id"), str), "a video_stream part needs an id")
            live.append(streams.get(ref["id"]))
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url") if isinstance(part.get("image_url"), dict) else None
            images.append(resolve_image(url, limits))
        else:
            raise BadRequest(f"unsupported content part type {kind!r} (text, video_url, image_url)")
    _expect(len(videos) + len(live) <= 1 and not ((videos or live) and images),
            "a request takes one video or stream, or images, not several")
    if len(images) > limits.max_images:
        raise MediaError(f"{len(images)} images are over the server's cap of {limits.max_images}", 413, "too_large")
    visual: dict = {}
    if live:
        visual = {"video_stream": live[0]}
    elif videos:
        visual = {"video": videos[0], "num_frames": num_frames}
    elif len(images) == 1:
        visual = {"image": images[0]}
    elif images:
        visual = {"images": images}
    return "\n".join(texts), visual


def _text_of(content) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(p.get("text", "") for p in content)
    return None


def num_frames_of(body: dict, limits: MediaLimits) -> int:
    kwargs = _or_default(body.get("media_io_kwargs"), {})
    _expect(isinstance(kwargs, dict), "media_io_kwargs must be an object")
    video = _or_default(kwargs.get("video"), {})
    _expect(isinstance(video, dict), "media_io_kwargs.video must be an object")
    # a request without num_frames samples as it would offline (vxl.defaults), within the server's cap
    n = video.get("num_frames", min(defaults.NUM_FRAMES, limits.max_frames))
    _expect(isinstance(n, int) and not isinstance(n, bool) and n >= 1, "media_io_kwargs.video.num_frames must be an "
            f"int >= 1, got {n!r}")
    if n > limits.max_frames:
        raise MediaError(f"num_frames {n} is over the server's cap of {limits.max_frames}", 413, "too_large")
    return n


def sampling_params(body: dict) -> tuple[SamplingParams, list[str]]:
    n = body.get("n")
    _expect(n is None or (type(n) is int and n == 1), "only n=1 is supported")
    for name, least in (("max_completion_tokens", 1), ("max_tokens", 1), ("top_logprobs", 0), ("top_k", 0)):
        value = body.get(name)
        _expect(value is None or (type(value) is int and value >= least), f"{name} must be an int >= {least} or "
                f"null, got {value!r}")
    max_tokens = body.get("max_completion_tokens")
    max_tokens = _or_default(_or_default(max_tokens, body.get("max_tokens")), defaults.MAX_TOKENS)
    stop = _or_default(body.get("stop"), [])
    stop = [stop] if isinstance(stop, str) else stop
    _expect(isinstance(stop, list) and all(isinstance(s, str) and s for s in stop) and len(stop) <= 8,
            "stop must be a non-empty string or a list of at most 8 of them")
    top_logprobs = body.get("top_logprobs")
    _expect(top_logprobs is None or top_logprobs <= MAX_LOGPROBS, f"top_logprobs must be at most {MAX_LOGPROBS}, "
            f"got {top_logprobs}")
    logprobs = None
    if body.get("logprobs"):
        logprobs = top_logprobs if top_logprobs is not None else 0
    temperature = body.get("temperature", 1.0)
    try:
        params = SamplingParams(max_tokens=max_tokens, temperature=1.0 if temperature is None else temperature,
                                top_p=body.get("top_p") if body.get("top_p") is not None else 1.0,
                                top_k=_or_default(body.get("top_k"), 0), seed=body.get("seed"), logprobs=logprobs)
    except (TypeError, ValueError) as exc:
        raise BadRequest(str(exc)) from None
    return params, stop


# fields read as flags or names: null or absent, else of this type
TYPED_FIELDS = {"model": str, "user": str, "stream": bool, "logprobs": bool, "stream_options": dict,
                "media_io_kwargs": dict}


def check_field_types(body: dict) -> None:
    for name, kind in TYPED_FIELDS.items():
        value = body.get(name)
        _expect(value is None or isinstance(value, kind), f"{name} must be a {kind.__name__} or null, got "
                f"{type(value).__name__}")
    for name in ("frequency_penalty", "presence_penalty"):
        value = body.get(name)
        _expect(value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0),
                f"{name} is not supported: give 0 or leave it out, not {value!r}")


def load_json(raw: bytes, what: str = "the request body"):
    """The JSON of a request body, or BadRequest naming what is wrong with it."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise BadRequest(f"{what} is nested too deeply") from None
    except ValueError:
        raise BadRequest(f"{what} is not valid JSON") from None


def parse_chat_request(body, limits: MediaLimits, streams=None) -> ChatRequest:
    """The engine request of a chat-completions body; BadRequest / MediaError name the problem."""
    _expect(isinstance(body, dict), "the request body must be a JSON object")
    unknown = set(body) - KNOWN_FIELDS
    _expect(not unknown, f"unknown field(s) {sorted(unknown)}")
    check_field_types(body)
    params, stop = sampling_params(body)
    options = _or_default(body.get("stream_options"), {})
    _expect(isinstance(options.get("include_usage", False), bool), "stream_options.include_usage must be a bool")
    media = Media()
    try:
        question, visual = parse_messages(body.get("messages"), media, limits, num_frames_of(body, limits), streams)
        request = {"prompt": question, **visual}
        if body.get("compression_ratio") is not None:
            request["compression_ratio"] = body["compression_ratio"]
    except BaseException:
        media.cleanup()
        raise
    return ChatRequest(request, params, media, stop, bool(body.get("stream")), bool(options.get("include_usage")),
                       bool(body.get("logprobs")))


def usage_of(output: RequestOutput) -> dict:
    m = output.metrics
    prompt = m.get("num_prompt_tokens", 0) - (1 if m.get("num_visual_tokens") else 0) + m.get("num_visual_tokens", 0)
    completion = len(output.token_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def vxl_metrics(output: RequestOutput) -> dict:
    m = output.metrics
    keys = ("num_frames", "num_visual_tokens", "num_vst_tokens", "num_kept_tokens", "kept_kv_bytes",
            "compression_ratio", "num_cached_visual_tokens", "video_decoder", "seconds")
    return {k: m[k] for k in keys if k in m}


def logprobs_of(tokenizer, output: RequestOutput, token_ids: list[int], top_k: int) -> dict | None:
    """OpenAI `logprobs.content` of the first len(token_ids) generated tokens: each token's logprob and the
    `top_k` most likely alternatives (the engine gives the top k and the chosen token per step)."""
    if output.logprobs is None:
        return None

    def piece(t: int) -> str:
        return tokenizer.decode([t]) if tokenizer is not None else str(t)
    content = []
    for token, top in zip(token_ids, output.logprobs):
        ranked = sorted(top.items(), key=lambda kv: -kv[1])[:top_k]
        content.append({"token": piece(token), "logprob": top.get(token, float("-inf")),
                        "bytes": list(piece(token).encode()),
                        "top_logprobs": [{"token": piece(t), "logprob": lp, "bytes": list(piece(t).encode())}
                                         for t, lp in ranked]})
    return {"content": content}


def completion(rid: str, model: str, text: str, finish_reason: str, output: RequestOutput, logprobs) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason, "logprobs": logprobs}],
            "usage": usage_of(output), "vxl_metrics": vxl_metrics(output)}


def chunk(rid: str, model: str, created: int, delta: dict, finish_reason: str | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}


def error_body(message: str, status: int, code: str | None = None) -> dict:
    kind = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
            404: "not_found_error", 413: "invalid_request_error", 415: "invalid_request_error", 429: "rate_limit_error",
            503: "service_unavailable"}.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "code": code or str(status)}}
