"""Request validation and preparation: prompt token ids with the video placeholder, the compression ratio,
and the visual token supplier (precomputed embeddings or a streamed video). Every problem is a
`RequestError` naming it, which fails that request only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from vxl.checks import int_at_least, is_int
from vxl.config import IMAGE_TOKEN_INDEX, EngineConfig, ModelConfig
from vxl.engine.request import Request
from vxl.engine.sampler import SamplingParams
from vxl.engine.visual import EmbedsTokens, PrecomputedTokens, VideoTokens
from vxl.vst import count_vst, max_usable_ratio
from vxl.model.clip_configs import ImageProcessorConfig

SYSTEM_PROMPT = "You are a helpful assistant."
IMAGE_PLACEHOLDER = "<image>"


class RequestError(ValueError):
    """A problem with a request (its own fault): finish_reason "error", error_type "bad_request"."""
    error_type = "bad_request"


class OverCap(RequestError):
    """A request over one of the engine's caps (frames, images, prompt tokens, image pixels, the KV cache):
    error_type "too_large" (a server answers 413)."""
    error_type = "too_large"


@dataclass(frozen=True)
class InputContext:
    """What preparing a request needs from the engine: the model's config, tokenizer and vision side (the
    model when it has a vision tower: `encode_frames`, `tokens_per_frame`; else None), the engine's video
    settings, where visual tensors go, and the NVTX-style `annotate` that video decoding reports to."""
    config: ModelConfig
    engine_config: EngineConfig
    tokenizer: object | None
    vision: object | None
    image_processor: ImageProcessorConfig | None
    device: torch.device
    dtype: torch.dtype
    annotate: Callable
    # the longest token of the tokenizer in characters: a question longer than max_prompt_tokens times this
    # is over the cap whatever its tokens, so it is refused before it is tokenized
    max_token_chars: int | None = None


@dataclass
class PreparedRequest:
    request_id: str
    prompt_ids: list[int]
    placeholder_idx: int | None
    visual: object | None
    ratio: int
    memory: object | None = None

    def max_kept_tokens(self, cfg: ModelConfig, params: SamplingParams) -> int:
        if self.memory is not None:     # new entries: the partial last page, the suffix, the answer
            suffix = len(self.prompt_ids) - self.placeholder_idx - 1
            return self.memory.num_kept % self.memory.kv_cache.page_size + suffix + params.max_tokens
        text = len(self.prompt_ids) - (self.placeholder_idx is not None)
        vst = count_vst(self.visual.num_tokens, cfg.beacon_window, self.ratio) if self.visual is not None else 0
        return text + vst + params.max_tokens


class MemoryVisual(PrecomputedTokens):
    """Metrics view of a request answered from a VideoMemory (no frames are decoded, no token is taken)."""

    def __init__(self, memory):
        self.num_frames, self.num_tokens, self.seconds = memory.num_frames, memory.num_visual_tokens, {}

    def take(self, n: int) -> torch.Tensor:
        raise RuntimeError("a video memory's visual tokens are encoded already")

    def close(self) -> None:
        pass


def memory_request(req: Request, ids: list[int], placeholder: int | None) -> PreparedRequest:
    """A request answered from `req.video_memory`; the engine binds the memory to its KV cache."""
    from vxl.engine.video_memory import VideoMemory
    mem = req.video_memory
    if not isinstance(mem, VideoMemory):
        raise RequestError(f"video_memory must be a vxl VideoMemory, not {type(mem).__name__}")
    if placeholder is None:
        raise RequestError(f"a video_memory request needs the video placeholder ({IMAGE_TOKEN_INDEX}) in its prompt")
    if ids[:placeholder] != mem.prefix_token_ids:
        raise RequestError("the prompt before the video differs from the one this video memory was encoded with")
    if req.compression_ratio is not None and req.compression_ratio != mem.ratio:
        raise RequestError(f"compression_ratio {req.compression_ratio} differs from the video memory's ({mem.ratio})")
    rid = str(req.request_id) if req.request_id is not None else None
    return PreparedRequest(rid, ids, placeholder, MemoryVisual(mem), mem.ratio, mem)


def chat_prompt(question: str, with_visual: bool) -> tuple[str, str | None]:
    """Qwen chat template; returns the text before and after <image> (after is None without video)."""
    user = f"{IMAGE_PLACEHOLDER}\n{question}" if with_visual else question
    text = (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            f"<|im_start|>assistant\n")
    if not with_visual:
        return text, None
    before, after = text.split(IMAGE_PLACEHOLDER, 1)
    return before, after


def prompt_ids_from_text(tokenizer, question: str, with_visual: bool) -> list[int]:
    if tokenizer is None:
        raise RequestError("this model has no tokenizer files: give prompt_token_ids instead of prompt")
    if not isinstance(question, str):
        raise RequestError(f"prompt must be a str, not {type(question).__name__}")
    try:        # a lone surrogate ("\ud800") is a str no tokenizer can take
        question.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(f"prompt cannot be encoded as UTF-8 text: {exc.reason} at position {exc.start}") from None
    if IMAGE_PLACEHOLDER in question:
        raise RequestError(f"prompt must not contain {IMAGE_PLACEHOLDER!r}: the video placeholder is added by the "
                           "chat template (two placeholders)")
    before, after = chat_prompt(question, with_visual)
    try:
        ids = tokenizer.encode(before, add_special_tokens=False)
        if after is not None:
            ids = ids + [IMAGE_TOKEN_INDEX] + tokenizer.encode(after, add_special_tokens=False)
    except (TypeError, ValueError) as exc:
        raise RequestError(f"prompt cannot be tokenized: {exc}") from None
    return ids


def check_token_ids(ids, vocab_size: int, name: str = "prompt_token_ids") -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool or ids.dim() != 1:
            raise RequestError(f"{name} must be a list of ints (or a 1-D integer tensor), got a "
                               f"{ids.dim()}-D {ids.dtype} tensor")
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)):
        raise RequestError(f"{name} must be a list of ints, not {type(ids).__name__}")
    bad = [t for t in ids if not is_int(t)]
    if bad:
        raise RequestError(f"{name} must be a list of ints; got {', '.join(repr(t) for t in bad[:3])}")
    ids = [int(t) for t in ids]
    bad = [t for t in ids if t != IMAGE_TOKEN_INDEX and not 0 <= t < vocab_size]
    if bad:
        raise RequestError(f"{name} has ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")
    if ids.count(IMAGE_TOKEN_INDEX) > 1:
        raise RequestError(f"{name} has {ids.count(IMAGE_TOKEN_INDEX)} video placeholders "
                           f"({IMAGE_TOKEN_INDEX}); at most one is allowed")
    return ids


def check_params(params: SamplingParams, vocab_size: int, max_logprobs: int | None) -> None:
    """What SamplingParams cannot check alone: stop ids against the model's vocabulary, logprobs and
    prompt_logprobs against the engine's cap (`EngineConfig.max_logprobs`)."""
    bad = [t for t in params.stop_token_ids or () if not 0 <= t < vocab_size]
    if bad:
        raise RequestError(f"stop_token_ids has ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")
    for name in ("logprobs", "prompt_logprobs"):
        k = getattr(params, name)
        if k is not None and k > vocab_size:
            raise RequestError(f"{name} must be at most the vocabulary size ({vocab_size}), got {k}")
        if max_logprobs is not None and k is not None and k > max_logprobs:
            raise RequestError(f"{name} must be at most {max_logprobs} on this engine (max_logprobs), got {k}")


def check_vst_count(num_visual: int, window: int, ratio: int) -> None:
    """A ratio leaving the visual input no summary token would answer without the video: refused."""
    if count_vst(num_visual, window, ratio) == 0:
        raise RequestError(f"compression_ratio {ratio} leaves no summary token for the {num_visual} visual tokens "
                           f"of this input (the answer would ignore it); the largest usable ratio is "
                           f"{max_usable_ratio(num_visual)}")


def check_ratio(ratio) -> int:
    return int_at_least("compression_ratio", ratio, 1, error=RequestError)


def visual_from_embeds(embeds, hidden: int, device, dtype) -> EmbedsTokens:
    if not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point():
        raise RequestError("visual_embeds must be a float tensor [N, hidden]")
    if embeds.layout != torch.strided or embeds.device.type == "meta":
        raise RequestError(f"visual_embeds must be a dense tensor holding data, not a {embeds.layout} tensor on "
                           f"{embeds.device}")
    if embeds.dim() != 2 or embeds.shape[1] != hidden or embeds.shape[0] == 0:
        raise RequestError(f"visual_embeds must have shape [N >= 1, {hidden}], got {list(embeds.shape)}")
    if not torch.isfinite(embeds).all():
        raise RequestError("visual_embeds contains NaN or infinite values")
    return EmbedsTokens(embeds.to(device=device, dtype=dtype))


def visual_from_images(ctx: InputContext, image, images) -> VideoTokens:
    """One image -> its anyres tiles; several images -> one frame each; both then stream like video frames.
    Several images are read lazily (`ImageFramesSource`): their token count is known from len(images), so
    the pool check refuses an oversized request before any image is decoded."""
    from vxl.engine import image as img
    if ctx.vision is None:
        raise RequestError("this checkpoint has no vision tower (no mm_vision_tower): give visual_embeds")
    proc, cfg = ctx.image_processor, ctx.config
    try:
        max_pixels = ctx.engine_config.max_image_pixels
        if image is None:
            return video_tokens(ctx, img.ImageFramesSource(images, proc, max_pixels))
        img.check_image_config(cfg.image_aspect_ratio, cfg.mm_patch_merge_type)
        pins = img.parse_pinpoints(cfg.image_grid_pinpoints, tile_size=proc.crop_size)
        frames = img.anyres_tiles(image, pins, proc.crop_size, max_pixels)  # (tiles, S, S, 3)
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    return visual_from_video(ctx, frames, None)


def video_tokens(ctx: InputContext, source) -> VideoTokens:
    """The visual token supplier of a frame source, decoding a window's frames at a time."""
    frames_per_window = -(-ctx.config.beacon_window // ctx.vision.tokens_per_frame)
    return VideoTokens(source, ctx.vision, ctx.image_processor, ctx.device, frames_per_window, annotate=ctx.annotate)


def visual_from_video(ctx: InputContext, video, num_frames) -> VideoTokens:
    if ctx.vision is None:
        raise RequestError("this checkpoint has no vision tower (no mm_vision_tower): give visual_embeds")
    int_at_least("num_frames", num_frames, 1, optional=True, error=RequestError)
    if isinstance(video, torch.Tensor) and (video.layout != torch.strided or video.device.type == "meta"):
        raise RequestError(f"video must be a dense uint8 tensor holding frames, not a {video.layout} tensor on "
                           f"{video.device}")
    from vxl.engine.video import open_video
    ec = ctx.engine_config
    is_file = isinstance(video, (str, os.PathLike))
    options = {"num_workers": ec.video_decode_workers, "keyframe_snap": ec.keyframe_snap} if is_file else {}
    try:
        source = open_video(video, num_frames, **options)
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    return video_tokens(ctx, source)


def open_visual(ctx: InputContext, req: Request, ratio: int):
    """The request's visual token supplier (None for a text request), refused when `ratio` would keep
    no summary token of it."""
    visual = None
    if req.visual_embeds is not None:
        visual = visual_from_embeds(req.visual_embeds, ctx.config.hidden_size, ctx.device, ctx.dtype)
    elif req.video is not None:
        visual = visual_from_video(ctx, req.video, req.num_frames)
    elif req.image is not None or req.images is not None:
        visual = visual_from_images(ctx, req.image, req.images)
    if visual is not None:
        try:
            check_vst_count(visual.num_tokens, ctx.config.beacon_window, ratio)
        except RequestError:
            visual.close()      # an opened video file holds readers
            raise
    return visual


def prepare_request(ctx: InputContext, req: Request, params: SamplingParams | None = None,
                    is_encode_job: bool = False) -> PreparedRequest:
    """Validate `req` (and, given, its sampling params against the model) and open its visual input;
    a `RequestError` names the first problem found. An encode job's prompt ends at the placeholder."""
    cfg = ctx.config
    rid = str(req.request_id) if req.request_id is not None else None
    sources = [n for n in ("video", "image", "images", "visual_embeds", "video_memory") if getattr(req, n) is not None]
    if len(sources) > 1:
        raise RequestError(f"give one of video, image, images, visual_embeds and video_memory, not "
                           f"{' and '.join(sources)}")
    if req.num_frames is not None and sources and sources[0] not in ("video",):
        raise RequestError(f"num_frames applies to video requests only, not to {sources[0]}")
    if (req.prompt is None) == (req.prompt_token_ids is None):
        raise RequestError("give exactly one of prompt and prompt_token_ids")
    if params is not None:
        check_params(params, cfg.vocab_size, ctx.engine_config.max_logprobs)
    if req.prompt is not None:
        check_prompt_length(ctx, req.prompt)
        ids = prompt_ids_from_text(ctx.tokenizer, req.prompt, bool(sources))
    else:
        ids = check_token_ids(req.prompt_token_ids, cfg.vocab_size)
    if not ids:
        raise RequestError("the prompt is empty")
    check_caps(ctx.engine_config, req, ids)
    placeholder = ids.index(IMAGE_TOKEN_INDEX) if IMAGE_TOKEN_INDEX in ids else None
    if placeholder is not None and not sources:
        raise RequestError("the prompt has a video placeholder but the request gives no video or visual_embeds")
    if placeholder is None and sources:
        raise RequestError(f"the request gives {sources[0]} but prompt_token_ids has no placeholder ({IMAGE_TOKEN_INDEX})")
    if placeholder is not None and placeholder == len(ids) - 1 and not is_encode_job:
        raise RequestError("the prompt needs at least one token after the video placeholder")
    if req.video_memory is not None:
        return memory_request(req, ids, placeholder)
    ratio = check_ratio(req.compression_ratio if req.compression_ratio is not None else cfg.default_ratio)
    visual = open_visual(ctx, req, ratio)
    cap = ctx.engine_config.max_frames
    frames = (visual.num_frames or 0) if visual is not None else 0
    if cap is not None and req.video is not None and frames > cap:
        visual.close()
        raise OverCap(f"the video gives {frames} frames, over the engine's max_frames ({cap}); ask for "
                           f"num_frames <= {cap}")
    return PreparedRequest(rid, ids, placeholder, visual, ratio)


def check_prompt_length(ctx: InputContext, prompt) -> None:
    """A question too long for max_prompt_tokens whatever its tokens, refused before any tokenizing."""
    cap = ctx.engine_config.max_prompt_tokens
    if cap is not None and ctx.max_token_chars and isinstance(prompt, str) and len(prompt) > cap * ctx.max_token_chars:
        raise OverCap(f"the prompt has {len(prompt)} characters: over the engine's max_prompt_tokens ({cap}) "
                      f"whatever its tokens (a token is at most {ctx.max_token_chars} characters)")


def max_token_chars(tokenizer) -> int | None:
    """Characters of the tokenizer's longest token (its vocabulary's raw strings: a byte-level token string
    has one character per byte, so no token decodes to more characters)."""
    return max(map(len, tokenizer.get_vocab()), default=1) if tokenizer is not None else None


def check_caps(ec, req: Request, ids: list[int]) -> None:
    """The engine's per-request caps that are known before any input is opened."""
    text = len(ids) - (IMAGE_TOKEN_INDEX in ids)
    if ec.max_prompt_tokens is not None and text > ec.max_prompt_tokens:
        raise OverCap(f"the prompt has {text} tokens, over the engine's max_prompt_tokens ({ec.max_prompt_tokens})")
    if ec.max_images is not None and isinstance(req.images, (list, tuple)) and len(req.images) > ec.max_images:
        raise OverCap(f"{len(req.images)} images are over the engine's max_images ({ec.max_images})")
    if ec.max_frames is not None and isinstance(req.num_frames, int) and req.num_frames > ec.max_frames:
        raise OverCap(f"num_frames {req.num_frames} is over the engine's max_frames ({ec.max_frames})")
