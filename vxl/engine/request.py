"""Request and RequestOutput: what `LLM.generate` takes and returns (DESIGN section 5)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

REQUEST_FIELDS = ("prompt", "prompt_token_ids", "video", "image", "images", "visual_embeds", "video_memory",
                  "num_frames", "compression_ratio", "request_id", "video_stream")


@dataclass
class Request:
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    video: Any = None                 # path, or uint8 array / tensor [T, H, W, 3]
    image: Any = None                 # path, PIL image or uint8 array [H, W, 3]: anyres tiles
    images: Any = None                # list of images: one frame each
    visual_embeds: Any = None         # float tensor [N, hidden] (projector output)
    video_memory: Any = None          # vxl.VideoMemory from LLM.encode_video
    num_frames: int | None = None
    compression_ratio: int | None = None
    request_id: str | None = None
    video_stream: Any = None          # vxl.VideoStream from LLM.open_stream: every frame appended so far

    @classmethod
    def from_any(cls, obj: Any) -> "Request":
        if isinstance(obj, Request):
            return obj
        if isinstance(obj, str):
            return cls(prompt=obj)
        if not isinstance(obj, dict):
            raise TypeError(f"a request must be a dict, a str or a vxl.Request, not {type(obj).__name__}")
        unknown = set(obj) - set(REQUEST_FIELDS)
        if unknown:
            raise ValueError(f"unknown request field(s) {sorted(unknown)}; known: {list(REQUEST_FIELDS)}")
        return cls(**obj)


@dataclass
class RequestOutput:
    request_id: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] | None = None
    finish_reason: str | None = None      # "stop" | "length" | "error"
    error: str | None = None
    metrics: dict = field(default_factory=dict)
    # with an error: "bad_request" (the request itself is at fault) or "server_error" (a fault while it ran)
    error_type: str | None = None
    # SamplingParams.prompt_logprobs: one entry per prompt token id (the placeholder counts as one), None
    # where the engine computed no logits for the token before it
    prompt_logprobs: list[dict[int, float] | None] | None = None

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if d["logprobs"] is not None:
            d["logprobs"] = [{str(k): v for k, v in lp.items()} for lp in d["logprobs"]]
        if d["prompt_logprobs"] is not None:
            d["prompt_logprobs"] = [None if lp is None else {str(k): v for k, v in lp.items()}
                                    for lp in d["prompt_logprobs"]]
        return d
