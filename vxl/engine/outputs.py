"""What the engine core hands back: a request's `RequestOutput`, an encode job's `EncodeResult`, a refused
request's `Rejected` handle, and each step's `StepOutput`."""
from __future__ import annotations

from dataclasses import dataclass, field

from vxl.engine.kv_cache import KVCache
from vxl.engine.request import RequestOutput
from vxl.engine.sequence import Sequence
from vxl.engine.video_memory import VideoMemory


@dataclass
class EncodeResult:
    """The end of an encode job (`EngineCore.encode`): its VideoMemory, or why there is none."""
    job_id: str
    memory: VideoMemory | None = None
    error: str | None = None
    error_type: str | None = None       # "bad_request" | "server_error" | "abort"


@dataclass
class Rejected:
    """A request or encode job refused while it was prepared: it holds no pages, only its error output."""
    request_id: str
    output: RequestOutput | EncodeResult
    is_encode_job: bool = False
    is_finished: bool = True


@dataclass
class StepOutput:
    """What one step did: the tokens each request sampled (request id -> ids), the requests that ended
    (their final outputs), the encode jobs that ended, how many visual windows its forward ran and frames
    its vision stage encoded, the pages in use after its forward (before ended requests returned theirs),
    and seconds per part of the step ("vision", "forward", "sample")."""
    new_tokens: dict[str, list[int]] = field(default_factory=dict)
    finished: list[RequestOutput] = field(default_factory=list)
    encoded: list[EncodeResult] = field(default_factory=list)
    num_windows: int = 0
    num_frames: int = 0
    num_used_pages: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def encode_result(seq: Sequence, fingerprint: str, kv_cache: KVCache) -> EncodeResult:
    """An ended encode job's result: its pages become a VideoMemory, or it says why there is none."""
    if seq.finish_reason != "stop":
        seq.release()
        return EncodeResult(seq.request_id, error=seq.error, error_type=seq.error_type)
    visual = seq.visual
    visual.close()
    memory = VideoMemory(fingerprint, seq.prompt_ids[:seq.placeholder_idx], seq.ratio, visual.num_frames or 0,
                         visual.total_tokens, seq.num_vst, seq.kept_len, kv_cache=kv_cache, table=seq.table)
    return EncodeResult(seq.request_id, memory=memory)


def request_output(seq: Sequence, tokenizer, bytes_per_token: int, page_size: int) -> RequestOutput:
    """An ended request's output: its text, tokens, logprobs, finish reason and metrics."""
    ids = seq.output_ids
    text = ""
    if tokenizer is not None and ids:
        shown = ids[:-1] if seq.finish_reason == "stop" else ids
        text = tokenizer.decode(shown, skip_special_tokens=True)
    visual = seq.visual
    seconds = dict(seq.seconds)
    if visual is not None:
        seconds.update(visual.seconds)
    num_kept = seq.num_kept_after_prefill or 0
    num_frames = (visual.num_frames or 0) if visual is not None else 0
    rates = {"decode_fps": num_frames / seconds["decode_video"]} if seconds.get("decode_video") else {}
    page_bytes = page_size * bytes_per_token
    metrics = {"num_frames": num_frames,
               "num_visual_tokens": visual.total_tokens if visual is not None else 0,
               "num_vst_tokens": seq.num_vst, "num_kept_tokens": num_kept,
               "kept_kv_bytes": num_kept * bytes_per_token, "compression_ratio": seq.ratio,
               "num_prompt_tokens": len(seq.prompt_ids), "num_generated_tokens": len(ids),
               # block tables only grow while a request lives: its final length is the most pages it
               # held at once (pages shared with a VideoMemory included)
               "peak_kv_bytes": len(seq.table.pages) * page_bytes, **rates,
               "video_decoder": visual.decoder if visual is not None else None, "seconds": seconds}
    return RequestOutput(seq.request_id, text, list(ids), seq.output_logprobs, seq.finish_reason, seq.error,
                         metrics, seq.error_type, seq.prompt_logprobs)
