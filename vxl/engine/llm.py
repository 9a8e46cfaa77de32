"""`vxl.LLM`: the public engine API (DESIGN section 5): load a model, run batches of requests."""
from __future__ import annotations

import contextlib
import time

import nvtx
import torch
from tqdm.auto import tqdm

from vxl.config import EngineConfig
from vxl.config import IMAGE_TOKEN_INDEX
from vxl.engine.inputs import (InputContext, RequestError, check_ratio, check_token_ids, prepare_request,
                               prompt_ids_from_text, visual_from_embeds, visual_from_images, visual_from_video)
from vxl.engine.kv_cache import KVCache, OutOfPages
from vxl.engine.request import Request, RequestOutput
from vxl.engine.runner import ModelRunner
from vxl.engine.sampler import SamplingParams, sample_token
from vxl.engine.scheduler import Scheduler
from vxl.engine.sequence import Sequence
from vxl.engine.video_memory import VideoMemory, model_fingerprint
from vxl.engine.vst import window_lengths
from vxl.kernels import get_backend
from vxl.model.loader import LoadedModel
from vxl.model.registry import builtin_model_names, load_model

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# per chunk kind: its stage in metrics["seconds"], and the NVTX range around the layers that run it
STAGE_OF_KIND = {"window": "windows", "text": "text_prefill", "decode": "decode"}
RANGE_OF_KIND = {"window": "windows", "text": "text-prefill", "decode": "decode"}


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
    """

    def __init__(self, model: str = "tiny", device=None, dtype=None, attention_backend: str | None = None, *,
                 page_size: int = 16, num_pages: int | None = None, kv_cache_bytes: int | None = None,
                 max_batch_tokens: int = 8192, text_chunk_size: int | None = None, video_decode_workers: int = 1,
                 keyframe_snap: bool = False, seed: int = 0):
        if not isinstance(model, (str, LoadedModel)):
            raise TypeError(f"model must be a built-in name ({', '.join(builtin_model_names())}), a checkpoint "
                            f"directory or a LoadedModel, not {type(model).__name__}")
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = resolve_dtype(dtype, self.device)
        backend = attention_backend or ("triton" if self.device.type == "cuda" else "torch")
        self.engine_config = EngineConfig(str(self.device), str(self.dtype), backend, page_size, num_pages,
                                          kv_cache_bytes, max_batch_tokens, text_chunk_size, video_decode_workers,
                                          keyframe_snap)
        self.engine_config.validate()
        self.ops = get_backend(backend)
        self.loaded = self._load(model, seed)
        self.model, self.config, self.tokenizer = self.loaded.model, self.loaded.config, self.loaded.tokenizer
        self.bytes_per_token = self.config.bytes_per_token(self.dtype.itemsize)
        if num_pages is None:
            num_pages = max(1, self._kv_budget(kv_cache_bytes) // (page_size * self.bytes_per_token))
        cfg = self.config
        self.kv_cache = KVCache(cfg.num_hidden_layers, num_pages, page_size, cfg.num_key_value_heads, cfg.head_dim,
                                self.dtype, self.device)
        self.block_manager = self.kv_cache.pool      # the page pool (its `check()` verifies the invariants)
        self.runner = ModelRunner(self.model, self.ops, self.kv_cache)
        self.seed = seed
        self.model_fingerprint = model_fingerprint(self.model, self.config)
        # NVTX ranges (no-ops without a profiler): decode-video, vision, windows, text-prefill, decode.
        # Any callable name -> context manager will do (tests record the ranges with one).
        self.annotate = nvtx.annotate

    def _load(self, model, seed: int) -> LoadedModel:
        if isinstance(model, LoadedModel):     # an already built model (benchmarks reuse one across pools)
            param = next(model.model.parameters())
            if param.device.type != self.device.type or param.dtype != self.dtype:
                raise ValueError(f"the LoadedModel is on {param.device} in {param.dtype}, the engine wants "
                                 f"{self.device} in {self.dtype}")
            return model
        return load_model(model, self.device, self.dtype, seed)

    def _kv_budget(self, kv_cache_bytes: int | None) -> int:
        if kv_cache_bytes is not None:
            return kv_cache_bytes
        if self.device.type == "cuda":   # all free memory but one step's work space and a reserve
            from vxl.engine.planner import GiB, workspace_bytes
            free, _ = torch.cuda.mem_get_info(self.device)
            clip = self.model.model.vision_tower.clip_config if self.model.has_vision else None
            work = workspace_bytes(self.config, clip, 1, self.dtype.itemsize, self.engine_config.max_batch_tokens,
                                   self.engine_config.attention_backend, 0)
            return max(0, int(free - 2 * work - GiB))
        return 256 * 2**20

    def kv_cache_usage(self) -> dict:
        bm = self.block_manager
        return {"num_pages": bm.num_pages, "num_free_pages": bm.num_free_pages, "num_used_pages":
                bm.num_pages - bm.num_free_pages, "page_size": bm.page_size, "bytes_per_token": self.bytes_per_token,
                "total_bytes": bm.num_pages * bm.page_size * self.bytes_per_token}

    def _input_context(self) -> InputContext:
        vision = self.model if self.model.has_vision else None
        return InputContext(self.config, self.engine_config, self.tokenizer, vision, self.loaded.image_processor,
                            self.device, self.dtype, self.annotate)

    def _new_sequence(self, index: int, request: Request, params: SamplingParams) -> tuple[Sequence, int]:
        prep = prepare_request(self._input_context(), request)
        generator = None
        if not params.is_greedy:
            generator = torch.Generator().manual_seed(params.seed if params.seed is not None else self.seed + index)
        if prep.memory is not None:
            try:
                prep.memory.bind(self.kv_cache, self.model_fingerprint)
            except ValueError as exc:
                raise RequestError(str(exc)) from None
            table = prep.memory.fork_table()
        else:
            table = self.kv_cache.new_table()
        window = self.config.beacon_window
        rid = prep.request_id if prep.request_id is not None else str(index)
        seq = Sequence(index, rid, prep.prompt_ids, prep.placeholder_idx, prep.visual, prep.ratio, params, table,
                       window, self.engine_config.text_chunk_size or window, generator, memory=prep.memory)
        return seq, prep.max_kept_tokens(self.config, params)

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
        outputs: list[RequestOutput | None] = [None] * len(requests)
        seqs, max_kept = [], []
        for i, (req, p) in enumerate(zip(requests, params)):
            try:
                seq, kept = self._new_sequence(i, Request.from_any(req), p)
            except (RequestError, ValueError, TypeError) as exc:
                rid = req.get("request_id") if isinstance(req, dict) else getattr(req, "request_id", None)
                outputs[i] = RequestOutput(str(rid if rid is not None else i), finish_reason="error", error=str(exc))
                continue
            seqs.append(seq)
            max_kept.append(kept)
        # capacity = free pages once every request holds its forked video-memory pages
        scheduler = Scheduler(self.block_manager, self.engine_config.max_batch_tokens)
        for seq, kept in zip(seqs, max_kept):
            scheduler.add(seq, kept)
        # one request: no requests bar, only its windows bar (long videos)
        bar = tqdm(total=len(requests), desc="requests", disable=not use_tqdm or len(requests) < 2)
        bar.update(sum(o is not None for o in outputs))
        try:
            with torch.inference_mode():
                pool_peak_pages = self._run(scheduler, seqs, outputs, bar, use_tqdm)
        finally:
            for seq in seqs:        # nothing survives a call: every page returns to the pool
                seq.release()
            bar.close()
        pool_peak_bytes = pool_peak_pages * self.block_manager.page_size * self.bytes_per_token
        for out in outputs:         # known only once the call ends; requests rejected before admission lack it
            if "peak_kv_bytes" in out.metrics:
                out.metrics["pool_peak_kv_bytes"] = pool_peak_bytes
        return outputs

    def _run(self, scheduler: Scheduler, seqs: list[Sequence], outputs: list, bar, use_tqdm: bool) -> int:
        """Steps until every sequence ends; returns the most pages the pool had in use at once."""
        bm = self.block_manager
        peak_pages = bm.num_pages - bm.num_free_pages
        num_windows = sum(len(window_lengths(s.visual.num_tokens, self.config.beacon_window))
                          for s in seqs if s.visual is not None and s.memory is None)
        windows_bar = tqdm(total=num_windows, desc="windows", leave=False, disable=not use_tqdm or num_windows < 20)
        for seq in seqs:
            if seq.is_finished:     # rejected at admission
                outputs[seq.index] = self._output(seq)
                bar.update(1)
        while scheduler.has_work:
            chunks, failed = scheduler.schedule()
            for seq, exc in failed:
                seq.fail(f"{type(exc).__name__}: {exc}")
            t0 = time.perf_counter()
            logits = self._forward(chunks) if chunks else None
            elapsed = time.perf_counter() - t0
            peak_pages = max(peak_pages, bm.num_pages - bm.num_free_pages)
            windows_bar.update(sum(c.kind == "window" for c in chunks))
            row = 0
            for chunk in chunks:   # a packed step's time counts in full for each of its chunks' stages
                stage = STAGE_OF_KIND[chunk.kind]
                chunk.seq.seconds[stage] = chunk.seq.seconds.get(stage, 0.0) + elapsed
                if chunk.sample:
                    token, lp = sample_token(logits[row], chunk.seq.params, chunk.seq.generator)
                    chunk.seq.append_token(token, lp, self.loaded.eos_token_ids)
                    row += 1
            for seq in list(scheduler.running):
                if seq.is_finished:
                    scheduler.finish(seq)
                    seq.release()
                    outputs[seq.index] = self._output(seq)
                    bar.update(1)
        windows_bar.close()
        return peak_pages

    def _forward(self, chunks: list) -> torch.Tensor | None:
        """runner.run inside one NVTX range per kind of chunk in the step: "windows" (the layers over the
        step's visual windows), "text-prefill", "decode"; a mixed step nests its ranges."""
        with contextlib.ExitStack() as ranges:
            for kind in sorted({c.kind for c in chunks}):
                ranges.enter_context(self.annotate(RANGE_OF_KIND[kind]))
            return self.runner.run(chunks)

    def encode_video(self, video=None, compression_ratio: int | None = None, num_frames: int | None = None, *,
                     visual_embeds: torch.Tensor | None = None, image=None, images=None,
                     prefix_token_ids: list[int] | None = None, use_tqdm: bool = False) -> VideoMemory:
        """Encode a video once (the prompt prefix, then every window; only prefix + VST K/V are kept) into a
        VideoMemory that any number of requests reuse via {"prompt": ..., "video_memory": mem}.

        The visual input is one of `video`, `visual_embeds`, `image` (anyres tiles) or `images` (one frame
        each), as in a request; num_frames applies to video only. The prefix is the chat template's text
        before the video, or `prefix_token_ids` (models without a tokenizer). Its pages count as used in
        kv_cache_usage() until `mem.release()`.
        """
        given = [n for n, v in (("video", video), ("visual_embeds", visual_embeds), ("image", image),
                                ("images", images)) if v is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of video, visual_embeds, image and images, not {given or 'none'}")
        if num_frames is not None and given[0] != "video":
            raise ValueError(f"num_frames applies to video only, not to {given[0]}")
        if prefix_token_ids is None:
            ids = prompt_ids_from_text(self.tokenizer, "", True)
            prefix_token_ids = ids[:ids.index(IMAGE_TOKEN_INDEX)]
        prefix = check_token_ids(prefix_token_ids, self.config.vocab_size)
        ratio = check_ratio(compression_ratio if compression_ratio is not None else self.config.default_ratio)
        if visual_embeds is not None:
            visual = visual_from_embeds(visual_embeds, self.config.hidden_size, self.device, self.dtype)
        elif video is not None:
            visual = visual_from_video(self._input_context(), video, num_frames)
        else:
            visual = visual_from_images(self._input_context(), image, images)
        window = self.config.beacon_window
        seq = Sequence(0, "encode", prefix + [IMAGE_TOKEN_INDEX], len(prefix), visual, ratio, SamplingParams(),
                       self.kv_cache.new_table(), window, self.engine_config.text_chunk_size or window, None)
        try:
            with torch.inference_mode():
                for chunk in tqdm(seq.prefill, desc="windows", disable=not use_tqdm):
                    self._forward([chunk])
        except OutOfPages as exc:
            seq.release()
            raise ValueError(f"the KV cache is too small for this video: {exc}") from None
        except BaseException:
            seq.release()
            raise
        return VideoMemory(self.model_fingerprint, prefix, ratio, visual.num_frames or 0, visual.num_tokens,
                           seq.num_vst, seq.kept_len, kv_cache=self.kv_cache, table=seq.table)

    def _output(self, seq: Sequence) -> RequestOutput:
        ids = seq.output_ids
        text = ""
        if self.tokenizer is not None and ids:
            shown = ids[:-1] if seq.finish_reason == "stop" else ids
            text = self.tokenizer.decode(shown, skip_special_tokens=True)
        visual = seq.visual
        seconds = dict(seq.seconds)
        if visual is not None:
            seconds.update(visual.seconds)
        num_kept = seq.num_kept_after_prefill or 0
        if seconds.get("decode_video"):
            rates = {"decode_fps": (getattr(visual, "num_frames", 0) or 0) / seconds["decode_video"]}
        else:
            rates = {}
        metrics = {"num_frames": getattr(visual, "num_frames", None) or 0,
                   "num_visual_tokens": visual.num_tokens if visual is not None else 0,
                   "num_vst_tokens": seq.num_vst, "num_kept_tokens": num_kept,
                   "kept_kv_bytes": num_kept * self.bytes_per_token, "compression_ratio": seq.ratio,
                   "num_prompt_tokens": len(seq.prompt_ids), "num_generated_tokens": len(ids),
                   # block tables only grow while a request lives: its final length is the most pages it
                   # held at once (pages shared with a VideoMemory included)
                   "peak_kv_bytes": len(seq.table.pages) * self.block_manager.page_size * self.bytes_per_token,
                   **rates, "seconds": seconds}
        return RequestOutput(seq.request_id, text, list(ids), seq.output_logprobs, seq.finish_reason,
                             seq.error, metrics)
