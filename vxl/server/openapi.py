"""The OpenAPI description of the routes whose bodies the server parses itself (so that a 4xx names the
problem in vxl's words, not pydantic's): request bodies and every response, as JSON Schema. FastAPI
publishes them at /openapi.json; the schema fuzz tests (tests/fuzz/test_server_schema.py) generate requests
from it and check every response against it.
"""
from __future__ import annotations

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": "string"}}}}}

TEXT_PART = {"type": "object", "required": ["type", "text"],
             "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}
URL = {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}}
VIDEO_PART = {"type": "object", "required": ["type", "video_url"],
              "properties": {"type": {"const": "video_url"}, "video_url": URL,
                             "uuid": {"type": "string", "description": "accepted for vLLM clients; the cache keys videos by "
                                                               "their bytes, never by a client's uuid"}}}
IMAGE_PART = {"type": "object", "required": ["type", "image_url"],
              "properties": {"type": {"const": "image_url"}, "image_url": URL}}
STREAM_PART = {"type": "object", "required": ["type", "video_stream"],
               "properties": {"type": {"const": "video_stream"}, "video_stream": {
                   "type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}}}
MESSAGE = {"type": "object", "required": ["role", "content"], "properties": {
    "role": {"enum": ["system", "user"]},
    "content": {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1,
                                                "items": {"anyOf": [TEXT_PART, VIDEO_PART, IMAGE_PART, STREAM_PART]}}]}}}

CHAT_REQUEST = {
    "type": "object", "required": ["messages"], "additionalProperties": False,
    "description": "vLLM's video request shape: an optional system message (the model's own system prompt), "
                   "then one user message of visual parts and text parts.",
    "properties": {
        "model": {"type": ["string", "null"]},
        "messages": {"type": "array", "minItems": 1, "maxItems": 2, "items": MESSAGE},
        "max_tokens": {"type": ["integer", "null"], "minimum": 1},
        "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
        "temperature": {"type": ["number", "null"], "minimum": 0},
        "top_p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
        "top_k": {"type": ["integer", "null"], "minimum": 0},
        "seed": {"type": ["integer", "null"], "minimum": -2**63, "maximum": 2**64 - 1},
        "stop": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "null"},
                           {"type": "array", "maxItems": 8, "items": {"type": "string", "minLength": 1}}]},
        "logprobs": {"type": ["boolean", "null"]},
        "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
        "n": {"enum": [1, None]},
        "stream": {"type": ["boolean", "null"]},
        "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}}},
        "media_io_kwargs": {"type": ["object", "null"], "properties": {"video": {
            "type": ["object", "null"], "properties": {"num_frames": {"type": "integer", "minimum": 1}}}}},
        "compression_ratio": {"type": ["integer", "null"], "minimum": 1},
        "user": {"type": ["string", "null"]},
        "frequency_penalty": {"anyOf": [{"const": 0}, {"type": "null"}], "description": "not supported: 0 only"},
        "presence_penalty": {"anyOf": [{"const": 0}, {"type": "null"}], "description": "not supported: 0 only"},
    }}

USAGE = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
         "properties": {k: {"type": "integer", "minimum": 0} for k in ("prompt_tokens", "completion_tokens",
                                                                        "total_tokens")}}
CHAT_COMPLETION = {"type": "object", "required": ["id", "object", "created", "model", "choices", "usage"], "properties": {
    "id": {"type": "string"}, "object": {"const": "chat.completion"}, "created": {"type": "integer"},
    "model": {"type": "string"}, "usage": USAGE, "vxl_metrics": {"type": "object"},
    "choices": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
        "type": "object", "required": ["index", "message", "finish_reason"], "properties": {
            "index": {"type": "integer"}, "finish_reason": {"enum": ["stop", "length"]},
            "logprobs": {"type": ["object", "null"]},
            "message": {"type": "object", "required": ["role", "content"], "properties": {
                "role": {"const": "assistant"}, "content": {"type": "string"}}}}}}}}

STREAM_STATUS = {"type": "object", "required": ["id", "compression_ratio", "num_frames", "kept_kv_bytes"],
                 "properties": {"id": {"type": "string"}, "compression_ratio": {"type": "integer"},
                                "num_frames": {"type": "integer", "minimum": 0},
                                "kept_kv_bytes": {"type": "integer", "minimum": 0},
                                "error": {"type": ["string", "null"]}}}
CHUNK = {"type": "object", "required": ["id", "object", "created", "model", "choices"], "properties": {
    "id": {"type": "string"}, "object": {"const": "chat.completion.chunk"}, "created": {"type": "integer"},
    "model": {"type": "string"}, "usage": USAGE,
    "choices": {"type": "array", "maxItems": 1, "items": {
        "type": "object", "required": ["index", "delta", "finish_reason"], "properties": {
            "index": {"type": "integer"}, "finish_reason": {"enum": [None, "stop", "length"]},
            "delta": {"type": "object", "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}}}}}}}}
WATCH_EVENT = {"type": "object", "required": ["frames", "text", "error"], "properties": {
    "frames": {"type": "integer", "minimum": 0}, "text": {"type": "string"}, "error": {"type": ["string", "null"]}}}


def events(payload: dict) -> dict:
    """Server-sent events whose data is a JSON `payload` (or an error body), the last one `[DONE]`."""
    data = {"anyOf": [{"const": "[DONE]"}, {"type": "string", "contentMediaType": "application/json",
                                            "contentSchema": {"anyOf": [payload, ERROR]}}]}
    return {"text/event-stream": {"schema": {"type": "object", "required": ["data"], "properties": {"data": data}}}}


def json_body(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def errors(*statuses: int) -> dict:
    why = {400: "a bad request, named in the message", 401: "no valid API key (a server started with --api-key)",
           403: "a file outside the allowed media path, a Host not allowed or a cross-site request",
           404: "an unknown model or stream", 413: "over a cap of the server",
           415: "a video file whose bytes are not a video container", 429: "the server's cap on open streams",
           500: "a fault while it ran", 503: "the engine's queue is full"}
    return {s: {"description": why[s], **json_body(ERROR)} for s in statuses}


def responses(ok: dict, *statuses: int, description: str = "success") -> dict:
    return {200: {"description": description, "content": ok}, **errors(*statuses)}


CHAT = {"openapi_extra": {"requestBody": {"required": True, **json_body(CHAT_REQUEST)}},
        "responses": responses({"application/json": {"schema": CHAT_COMPLETION}, **events(CHUNK)},
                               400, 401, 403, 404, 413, 415, 500, 503,
                               description="a chat.completion, or server-sent chat.completion.chunk events")}
OPEN_STREAM = {"openapi_extra": {"requestBody": {"required": False, **json_body({
    "type": "object", "additionalProperties": False, "properties": {
        "compression_ratio": {"type": ["integer", "null"], "minimum": 1},
        "max_kept_frames": {"type": ["integer", "null"], "minimum": 1}}})}},
    "responses": responses(json_body(STREAM_STATUS)["content"], 400, 401, 403, 413, 429)}
POST_FRAMES = {"openapi_extra": {"requestBody": {"required": True, "description": "one image or a short video file",
                                                 "content": {t: {"schema": {"type": "string", "format": "binary"}}
                                                             for t in ("image/png", "image/jpeg", "video/mp4")}}},
               "responses": responses(json_body(STREAM_STATUS)["content"], 400, 401, 403, 404, 413)}
GET_STREAM = {"responses": responses(json_body(STREAM_STATUS)["content"], 401, 403, 404)}
DELETE_STREAM = {"responses": responses(json_body({
    "type": "object", "required": ["id", "closed"],
    "properties": {"id": {"type": "string"}, "closed": {"const": True}}})["content"], 401, 403, 404)}
WATCH = {"openapi_extra": {"requestBody": {"required": True, **json_body({
    "type": "object", "required": ["prompt"], "properties": {
        "prompt": {"type": "string"}, "every_n_windows": {"type": "integer", "minimum": 1},
        "max_tokens": {"type": "integer", "minimum": 1}, "temperature": {"type": "number", "minimum": 0}}})}},
    "responses": responses(events(WATCH_EVENT), 400, 401, 403, 404, 413,
                           description="{frames, text, error} events, then [DONE]")}
HEALTH = {"responses": responses(json_body({"type": "object", "required": ["status"],
                                            "properties": {"status": {"const": "ok"}}})["content"])}
MODELS = {"responses": responses(json_body({"type": "object", "required": ["object", "data"], "properties": {
    "object": {"const": "list"}, "data": {"type": "array", "items": {
        "type": "object", "required": ["id", "object"], "properties": {"id": {"type": "string"}}}}}})["content"],
    401, 403)}
CLEAR_CACHE = {"responses": responses(json_body({"type": "object", "required": ["entries"], "properties": {
    "entries": {"type": "integer", "minimum": 0}}})["content"], 401, 403)}
METRICS = {"responses": responses({"text/plain": {"schema": {"type": "string"}}}, 401, 403,
                                  description="Prometheus text format")}
