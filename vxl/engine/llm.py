"""`vxl.LLM`: the public engine API (DESIGN section 5): load a model, run batches of requests."""
from __future__ import annotations

import nvtx
import torch
from tqdm.auto import tqdm

from vxl.config import EngineConfig
from vxl.engine.core import EngineCore, StepOutput
from vxl.engine.request import Request, RequestOutput
from vxl.engine.sampler import SamplingParams
from vxl.engine.sequence import Sequence
from vxl.engine.stream import VideoStream
from vxl.engine.video_memory import VideoMemory
from vxl.model.loader import LoadedModel
from vxl.model.registry import builtin_model_names, load_model

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of {sorted(DTYPES)} or a matching torch.dtype, not {dtype!r}")


class LLM:
    """Video-XL inference engine.

    model: a built-in name (`vxl.model.registry`: "tiny", a small random model, CPU-friendly, its answers
    meaningless; "demo", the small Video-XL shipped with the package, trained on synthetic long videos;
    "full-random", the real architecture with random weights, for benchmarks), a checkpoint directory in the
    official layout, or an already built `vxl.model.loader.LoadedModel`. device/dtype/attention_backend
    default to cuda/bfloat16/triton when CUDA is available, else cpu/float32/torch. Engine knobs: page_size,
    num_pages or kv_cache_bytes (size of the page pool), max_batch_tokens (rows per packed forward),
    text_chunk_size, video_decode_workers (parallel decord readers per video file), keyframe_snap (sample the
    nearest keyframes instead of exact uniform indices: much faster decoding, slightly uneven spacing).
    Per-request caps, checked before any frame is decoded (None: none): max_frames, max_images,
    max_prompt_tokens, max_image_pixels (default 2**27; an image's size is read from its file's header
    before it is decoded); max_logprobs (20; None: the vocabulary) caps SamplingParams.logprobs and prompt_logprobs. Scheduling: max_num_seqs (sequences
    running at once), max_vision_frames (frames CLIP encodes per step, batched over requests; None: 8
    windows' worth), vision_overlap (encode the next windows on a side stream during the LLM forward; None:
    on CUDA).

    The engine itself is `self.core` (`vxl.engine.core.EngineCore`), built from `self.engine_config` and
    the loaded model; this class loads the model, fills in defaults and runs calls to completion.
    """

    def __init__(self, model: str = "tiny", device=None, dtype=None, attention_backend: str | None = None, *,
                 page_size: int = 16, num_pages: int | None = None, kv_cache_bytes: int | None = None,
                 max_batch_tokens: int = 8192, text_chunk_size: int | None = None, video_decode_workers: int = 1,
                 keyframe_snap: bool = False, seed: int = 0, max_logprobs: int | None = EngineConfig.max_logprobs,
                 max_frames: int | None = None, max_images: int | None = None, max_prompt_tokens: int | None = None,
                 max_image_pixels: int | None = EngineConfig.max_image_pixels, cuda_graphs: bool = False,
                 max_num_seqs: int = EngineConfig.max_num_seqs, max_vision_frames: int | None = None,
                 vision_overlap: bool | None = None):
        if not isinstance(model, (str, LoadedModel)):
            raise TypeError(f"model must be a built-in name ({', '.join(builtin_model_names())}), a checkpoint "
                            f"directory or a LoadedModel, not {type(model).__name__}")
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but CUDA is not available (torch {torch.__version__})")
        self.dtype = resolve_dtype(dtype, self.device)
        backend = attention_backend or ("triton" if self.device.type == "cuda" else "torch")
        self.engine_config = EngineConfig(
            device=str(self.device), dtype=str(self.dtype), attention_backend=backend, page_size=page_size,
            num_pages=num_pages, kv_cache_bytes=kv_cache_bytes, max_batch_tokens=max_batch_tokens,
            text_chunk_size=text_chunk_size, video_decode_workers=video_decode_workers, keyframe_snap=keyframe_snap,
            max_logprobs=max_logprobs, max_frames=max_frames, max_images=max_images,
            max_prompt_tokens=max_prompt_tokens, max_image_pixels=max_image_pixels, cuda_graphs=bool(cuda_graphs),
            seed=seed, max_num_seqs=max_num_seqs, max_vision_frames=max_vision_frames, vision_overlap=vision_overlap)
        self.engine_config.validate()
        self.loaded = self._load(model, seed)
        self.core = EngineCore(self.engine_config, self.loaded, annotate=nvtx.annotate)
        # read-only views of what the core owns, for callers of the model side
        self.model, self.config, self.tokenizer = self.loaded.model, self.loaded.config, self.loaded.tokenizer
        self.bytes_per_token = self.core.bytes_per_token
        self.model_fingerprint = self.core.model_fingerprint

    @property
    def kv_cache(self):
        return self.core.kv_cache

    @property
    def block_manager(self):
        """The page pool (its `check()` verifies the invariants)."""
        return self.core.kv_cache.pool

    @property
    def runner(self):
        return self.core.runner

    def _load(self, model, seed: int) -> LoadedModel:
        if isinstance(model, LoadedModel):     # an already built model (benchmarks reuse one across pools)
            param = next(model.model.parameters())
            if param.device.type != self.device.type or param.dtype != self.dtype:
                raise ValueError(f"the LoadedModel is on {param.device} in {param.dtype}, the engine wants "
                                 f"{self.device} in {self.dtype}")
            return model
        return load_model(model, self.device, self.dtype, seed)

    def kv_cache_usage(self) -> dict:
        return self.core.kv_cache_usage()

    # -- the engine core (DESIGN section 7): requests that join a running engine ----------------------
    def add_request(self, request, sampling_params: SamplingParams | None = None) -> str:
        """Queue a request; it joins the running batch at the next step with room for it. Returns its id."""
        return self.core.add_request(request, sampling_params)

    def step(self) -> StepOutput:
        """One packed forward over the requests in flight: the tokens they sampled and those that ended."""
        return self.core.step()

    def abort(self, request_id: str) -> bool:
        """End an unfinished request (finish_reason "abort"); its pages return at once."""
        return self.core.abort(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.core.has_unfinished_requests()

    def open_stream(self, compression_ratio: int | None = None, prefix_token_ids: list[int] | None = None,
                    max_queued_windows: int = 2, max_kept_frames: int | None = None) -> VideoStream:
        """A live video stream (vxl.engine.stream.VideoStream): `append(frames)` as they arrive, ask with
        {"prompt": q, "video_stream": stream}, `watch` a standing question, `close()` to return its pages.
        max_kept_frames=N keeps only the prefix and about the last N frames' VSTs (bounded memory; not the
        released model's regime: see bench/README.md); None keeps everything (exact)."""
        return VideoStream(self.core, compression_ratio, prefix_token_ids, max_queued_windows, max_kept_frames)

    def generate(self, requests, sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Run every request to completion; outputs are returned in request order. A bad request ends
        with finish_reason="error" and a message; the other requests are unaffected."""
        if isinstance(requests, (dict, str, Request)):
            requests = [requests]
        requests = list(requests)
        params = sampling_params if sampling_params is not None else SamplingParams()
        params = list(params) if isinstance(params, (list, tuple)) else [params] * len(requests)
        if len(params) != len(requests):
            raise ValueError(f"{len(params)} sampling params for {len(requests)} requests")
        handles = []
        with self.core.lock:        # one call at a time: its requests share the pool with nothing unplanned
            try:                    # added one by one inside: an interrupt while preparing one loses none
                for i, (req, p) in enumerate(zip(requests, params)):
                    handles.append(self.core.add(req, p, index=i, default_id=str(i)))
                pool_peak_pages = self._run(handles, use_tqdm)
            finally:                # an interrupted call leaves nothing behind: every page returns
                for handle in handles:
                    self.core.abort_handle(handle)
        outputs = [h.output for h in handles]
        pool_peak_bytes = pool_peak_pages * self.core.page_size * self.bytes_per_token
        for out in outputs:         # known only once the call ends; requests rejected before admission lack it
            if "peak_kv_bytes" in out.metrics:
                out.metrics["pool_peak_kv_bytes"] = pool_peak_bytes
        return outputs

    def _run(self, handles: list, use_tqdm: bool) -> int:
        """Steps until every request of the call ends; returns the most pages the pool had in use at once."""
        peak_pages = self.core.kv_cache_usage()["num_used_pages"]
        num_windows = sum(h.num_prefill_windows for h in handles if isinstance(h, Sequence))
        # one request: no requests bar, only its windows bar (long videos)
        bar = tqdm(total=len(handles), desc="requests", disable=not use_tqdm or len(handles) < 2)
        windows_bar = tqdm(total=num_windows, desc="windows", leave=False, disable=not use_tqdm or num_windows < 20)
        try:
            pending = list(handles)
            while pending:
                step = self.core.step()
                peak_pages = max(peak_pages, step.num_used_pages)
                windows_bar.update(step.num_windows)
                done = [h for h in pending if h.output is not None]
                pending = [h for h in pending if h.output is None]
                bar.update(len(done))
        finally:
            windows_bar.close()
            bar.close()
        return peak_pages

    def encode_video(self, video=None, compression_ratio: int | None = None, num_frames: int | None = None, *,
                     visual_embeds: torch.Tensor | None = None, image=None, images=None,
                     prefix_token_ids: list[int] | None = None, use_tqdm: bool = False) -> VideoMemory:
        """Encode a video once (the prompt prefix, then every window; only prefix + VST K/V are kept) into a
        VideoMemory that any number of requests reuse via {"prompt": ..., "video_memory": mem}.

        The visual input is one of `video`, `visual_embeds`, `image` (anyres tiles) or `images` (one frame
        each), as in a request; num_frames applies to video only. The prefix is the chat template's text
        before the video, or `prefix_token_ids` (models without a tokenizer). Its pages count as used in
        kv_cache_usage() until `mem.release()`. The encoding is an engine job (`EngineCore.encode`): other
        requests on the engine advance in the same steps. A bad input or a KV cache too small raises
        ValueError.
        """
        given = [n for n, v in (("video", video), ("visual_embeds", visual_embeds), ("image", image),
                                ("images", images)) if v is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of video, visual_embeds, image and images, not {given or 'none'}")
        if num_frames is not None and given[0] != "video":
            raise ValueError(f"num_frames applies to video only, not to {given[0]}")
        request = {given[0]: {"video": video, "visual_embeds": visual_embeds, "image": image, "images": images}[given[0]],
                   "num_frames": num_frames, "compression_ratio": compression_ratio}
        job = self.core.encode(request, prefix_token_ids=prefix_token_ids)
        bar = tqdm(total=job.num_prefill_windows if isinstance(job, Sequence) else 0, desc="windows",
                   disable=not use_tqdm)
        try:
            while job.output is None:
                bar.update(self.core.step().num_windows)
        finally:
            bar.close()
            self.core.abort_handle(job)     # only if interrupted before it ended
        result = job.output
        if result.memory is None:
            if "kept tokens" in (result.error or ""):
                raise ValueError(f"the KV cache is too small for this video: {result.error}")
            raise ValueError(result.error)
        return result.memory
