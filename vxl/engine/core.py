"""The engine core: the one step loop behind `LLM.generate`, the server, streams and batch jobs (DESIGN
section 7). It is built from an `EngineConfig` and a loaded model and owns its parts: the KV cache, the
model runner, the scheduler, the vision stage and the input context. Everything outside talks to it through
its methods: `add_request`/`add`, `encode` (a video into a VideoMemory, as a scheduled job), `abort`,
`step`, `run_until`, `add_listener`, `on_pressure`, `kv_cache_usage`, `load`.

A step: schedule chunks (rows and vision frames within budget) -> the vision stage encodes the step's
windows in one call -> one packed LLM forward -> (on CUDA, the next windows are encoded on a side stream
meanwhile) -> one sampling pass over every logit row with one device-to-host read -> bookkeeping.

A fault stays with its requests: an exception while a request is prepared fails that request; one while
a step runs (vision, forward, sampling, allocation) fails the requests of that step; their pages return and
the loop goes on. Only BaseExceptions that are not Exceptions (KeyboardInterrupt) leave `step`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
import time
import uuid
from typing import Callable

import nvtx
import torch

from vxl.config import EngineConfig
from vxl.engine.admission import Admission
from vxl.engine.cuda_graphs import DecodeGraphs
from vxl.engine.inputs import InputContext, RequestError, max_token_chars
from vxl.engine.kv_cache import BlockTable, KVCache
from vxl.engine.outputs import EncodeResult, Rejected, StepOutput, encode_result, request_output
from vxl.engine.preprocess import preprocess_frames
from vxl.engine.request import Request, RequestOutput
from vxl.engine.runner import ModelRunner
from vxl.engine.sampler import SamplingParams, sample_rows
from vxl.engine.scheduler import Scheduler
from vxl.engine.sequence import Chunk, Sequence
from vxl.engine.video_memory import model_fingerprint
from vxl.engine.vision_stage import VisionStage
from vxl.kernels import get_backend
from vxl.model.loader import LoadedModel

# per chunk kind: its stage in metrics["seconds"], and the NVTX range around the layers that run it
STAGE_OF_KIND = {"window": "windows", "text": "text_prefill", "decode": "decode"}
RANGE_OF_KIND = {"window": "windows", "text": "text-prefill", "decode": "decode"}


def error_type_of(exc: Exception) -> str:
    """A refused request's error type: "too_large" over a cap, else "bad_request"."""
    return exc.error_type if isinstance(exc, RequestError) else "bad_request"


def torch_dtype(name: str) -> torch.dtype:
    """EngineConfig.dtype ("torch.bfloat16" or "bfloat16") -> the torch dtype."""
    return getattr(torch, name.removeprefix("torch."))


class EngineCore:
    """Thread-safe: every public method holds the core's lock, so several threads may add, step and abort;
    a step runs one at a time."""

    def __init__(self, config: EngineConfig, loaded: LoadedModel, annotate: Callable = nvtx.annotate):
        config.validate()
        if config.max_batch_tokens < 2 * loaded.config.beacon_window:
            # a window of raw rows with its VSTs (as many as its rows at ratio 1) is one indivisible chunk
            raise ValueError(f"max_batch_tokens ({config.max_batch_tokens}) must hold one window with its summary "
                             f"tokens: at least 2 x beacon_window = {2 * loaded.config.beacon_window}")
        self.config = config
        self.device, self.dtype = torch.device(config.device), torch_dtype(config.dtype)
        self.loaded, self.model, self.model_config = loaded, loaded.model, loaded.config
        self.tokenizer = loaded.tokenizer
        # NVTX ranges (no-ops without a profiler): decode-video, vision, windows, text-prefill, decode. Any
        # callable name -> context manager will do (tests record the ranges with one).
        self.annotate = annotate
        cfg = self.model_config
        self.bytes_per_token = cfg.bytes_per_token(self.dtype.itemsize)
        frames_per_window = -(-cfg.beacon_window // self.model.tokens_per_frame) if self.model.has_vision else 1
        self.max_vision_frames = config.max_vision_frames or 8 * frames_per_window
        self.vision_overlap = config.vision_overlap if config.vision_overlap is not None else self.device.type == "cuda"
        num_pages = config.num_pages or max(1, self._kv_budget() // (config.page_size * self.bytes_per_token))
        self.kv_cache = KVCache(cfg.num_hidden_layers, num_pages, config.page_size, cfg.num_key_value_heads,
                                cfg.head_dim, self.dtype, self.device)
        self.runner = ModelRunner(self.model, get_backend(config.attention_backend), self.kv_cache)
        if config.cuda_graphs:
            self.runner.graphs = DecodeGraphs(self.runner)
        self.scheduler = Scheduler(self.kv_cache.pool, max_batch_tokens=config.max_batch_tokens,
                                   max_num_seqs=config.max_num_seqs, max_vision_frames=self.max_vision_frames)
        self.vision = VisionStage(self.model, self.device, annotate, overlap=self.vision_overlap)
        self.inputs = InputContext(cfg, config, self.tokenizer, self.model if self.model.has_vision else None,
                                   loaded.image_processor, self.device, self.dtype, annotate,
                                   max_token_chars(self.tokenizer))
        self.model_fingerprint = model_fingerprint(self.model, cfg)
        self.admission = Admission(self, config, self.inputs, self.kv_cache, self.model_fingerprint, self.device)
        self.lock = threading.RLock()
        self._ended: list = []              # Sequences or Rejected that ended before admission: reported by
                                            # the next step
        self._counter = itertools.count()
        self._listeners: list[Callable[[StepOutput], None]] = []

    def _kv_budget(self) -> int:
        if self.config.kv_cache_bytes is not None:
            return self.config.kv_cache_bytes
        if self.device.type == "cuda":   # all free memory but one step's work space and a reserve
            from vxl.engine.planner import GiB, workspace_bytes
            free, _ = torch.cuda.mem_get_info(self.device)
            clip = self.model.model.vision_tower.clip_config if self.model.has_vision else None
            work = workspace_bytes(self.model_config, clip, 1, self.dtype.itemsize, self.config.max_batch_tokens,
                                   self.config.attention_backend, 0, vision_frames=self.max_vision_frames,
                                   overlap=self.vision_overlap)
            return max(0, int(free - 2 * work - GiB))
        return 256 * 2**20

    def set_annotate(self, annotate: Callable) -> None:
        """Report NVTX-style ranges to `annotate` from now on (a profiler's, or a test's recorder)."""
        with self.lock:
            self.annotate = self.vision.annotate = annotate
            self.inputs = self.admission.inputs = dataclasses.replace(self.inputs, annotate=annotate)

    # -- what the engine holds -----------------------------------------------------------------------
    def kv_cache_usage(self) -> dict:
        pool = self.kv_cache.pool
        return {"num_pages": pool.num_pages, "num_free_pages": pool.num_free_pages,
                "num_used_pages": pool.num_pages - pool.num_free_pages, "page_size": pool.page_size,
                "bytes_per_token": self.bytes_per_token,
                "total_bytes": pool.num_pages * pool.page_size * self.bytes_per_token}

    def load(self) -> dict:
        """Requests running and waiting for pages, and pages free for a new reservation."""
        with self.lock:
            return {"num_running": len(self.scheduler.running), "num_waiting": len(self.scheduler.waiting),
                    "num_reservable_pages": self.scheduler.free_pages()}

    def add_listener(self, listener: Callable[[StepOutput], None]) -> None:
        """Call `listener` with every StepOutput, whoever ran the step (a server's loop, `generate`, a
        stream's append); it runs inside the step, under the core's lock."""
        with self.lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[StepOutput], None]) -> None:
        with self.lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def on_pressure(self, handler: Callable[[int], bool] | None) -> None:
        """Call `handler(pages_missing)` when the next waiting request does not fit; it returns whether it
        freed any pages (a cache of video memories evicting idle entries)."""
        with self.lock:
            self.scheduler.on_pressure = handler

    # -- requests ----------------------------------------------------------------------------------
    def add_request(self, request, sampling_params: SamplingParams | None = None) -> str:
        """Queue a request (dict, str or vxl.Request); it is admitted at the first step whose free pages
        cover its worst case. Returns its request id (the request's own, else a fresh one). A bad request
        is reported, with finish_reason "error", by the next step."""
        return self.add(request, sampling_params or SamplingParams()).request_id

    def add(self, request, params: SamplingParams, *, index: int | None = None,
            default_id: str | None = None) -> Sequence | Rejected:
        """add_request with its handle returned: `handle.output` is set once it ends. `index` seeds sampling
        when params.seed is None (default: the engine's count of requests)."""
        with self.lock:
            index = next(self._counter) if index is None else index
            default_id = default_id if default_id is not None else uuid.uuid4().hex
            try:
                seq, max_kept = self.admission.request(index, Request.from_any(request), params, default_id)
            except Exception as exc:        # any problem while preparing is this request's alone
                rid = request.get("request_id") if isinstance(request, dict) else \
                    request.request_id if isinstance(request, Request) else None
                rid = str(rid if rid is not None else default_id)
                return self._reject(Rejected(rid, RequestOutput(rid, finish_reason="error", error=str(exc),
                                                                error_type=error_type_of(exc))))
            return self._admit(seq, max_kept)

    def encode(self, request, *, prefix_token_ids: list[int] | None = None,
               job_id: str | None = None) -> Sequence | Rejected:
        """Queue an encode job: the visual input of `request` (video, image, images, visual_embeds, or
        video_stream: every frame appended so far; its prompt is ignored) is encoded window by window,
        interleaved with other requests' steps, after the prompt prefix (the chat template's text before the
        video, or `prefix_token_ids`). The step that ends it reports an `EncodeResult` in
        `StepOutput.encoded`, which is also the handle's `output`; its memory holds pages until released."""
        with self.lock:
            jid = job_id or uuid.uuid4().hex
            try:
                seq, max_kept = self.admission.encode_job(Request.from_any(request), prefix_token_ids, jid)
            except Exception as exc:
                return self._reject(Rejected(jid, EncodeResult(jid, error=str(exc), error_type=error_type_of(exc)),
                                             is_encode_job=True))
            return self._admit(seq, max_kept)

    def admit(self, seq: Sequence, max_kept_tokens: int) -> Sequence:
        """Queue a sequence built by an engine component (a stream's encoder) with its worst-case kept
        tokens."""
        with self.lock:
            return self._admit(seq, max_kept_tokens)

    def _admit(self, seq: Sequence, max_kept: int) -> Sequence:
        self.scheduler.add(seq, max_kept)
        if seq.is_finished:                 # it can never fit in the pool
            self._ended.append(seq)
        return seq

    def _reject(self, rejected: Rejected) -> Rejected:
        self._ended.append(rejected)
        return rejected

    def abort(self, request_id: str) -> bool:
        """End every unfinished request or encode job with this id (finish_reason "abort"); its pages
        return at once. Returns whether one was found."""
        with self.lock:
            found = [seq for seq in self.scheduler.unfinished() if seq.request_id == request_id]
            for seq in found:
                self.abort_handle(seq)
            return bool(found)

    def abort_handle(self, handle: Sequence | Rejected) -> None:
        """End this request or job now unless it has ended (its output is then set)."""
        with self.lock:
            if not isinstance(handle, Sequence) or handle.output is not None:
                return
            self.scheduler.remove(handle)
            if handle.finish_reason is None:
                handle.finish_reason = "abort"
                if handle.is_encode_job:
                    handle.error, handle.error_type = "the encode job was aborted", "abort"
            handle.release()
            handle.output = self._final_output(handle)

    def has_unfinished_requests(self) -> bool:
        with self.lock:
            return bool(self._ended) or self.scheduler.has_work

    def run_until(self, handle: Sequence | Rejected) -> RequestOutput | EncodeResult:
        """Step until `handle` has ended (other requests advance too); its output."""
        while handle.output is None:
            self.step()
        return handle.output

    # -- vision outside requests -------------------------------------------------------------------
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [T, H, W, 3] -> their visual tokens [T x tokens_per_frame, hidden] (a stream's
        appended frames), counted in the vision stage's stats."""
        t0 = time.perf_counter()
        with torch.inference_mode(), self.annotate("vision"):
            pixels = preprocess_frames(frames.to(self.device), self.loaded.image_processor)
            tokens = self.model.encode_frames(pixels.to(self.model.beacon_embedding().dtype))
        self.vision.count(frames.shape[0], time.perf_counter() - t0)
        return tokens

    @property
    def text_chunk(self) -> int:
        """Rows of a text chunk (the model's window unless the engine sets text_chunk_size)."""
        return self.admission.text_chunk

    def default_prefix(self) -> list[int]:
        """The chat template's token ids before the video."""
        return self.admission.default_prefix()

    @property
    def page_size(self) -> int:
        return self.kv_cache.page_size

    def new_table(self) -> BlockTable:
        return self.kv_cache.new_table()

    def fork_table(self, table: BlockTable) -> BlockTable:
        return self.kv_cache.fork(table)

    # -- the step ----------------------------------------------------------------------------------
    def step(self) -> StepOutput:
        """One packed forward over the running requests (admitting waiting ones first) and their sampled
        tokens; requests and jobs that ended are released and reported."""
        with self.lock, torch.inference_mode():
            result = StepOutput()
            planned = self.scheduler.schedule()
            for seq, exc in planned.failed:
                seq.fail(f"{type(exc).__name__}: {exc}")
            if planned.chunks:
                self._run_chunks(planned.chunks, result)
            pool = self.kv_cache.pool
            result.num_used_pages = pool.num_pages - pool.num_free_pages
            ended, self._ended = self._ended + self.scheduler.dropped, []
            self.scheduler.dropped = []
            for seq in ended + [s for s in self.scheduler.running if s.is_finished]:
                if isinstance(seq, Sequence) and seq.output is not None:
                    continue            # aborted (abort_handle) before this step could report it
                if isinstance(seq, Sequence):
                    if seq in self.scheduler.running:
                        self.scheduler.finish(seq)
                    seq.output = self._final_output(seq)
                (result.encoded if seq.is_encode_job else result.finished).append(seq.output)
            for listener in list(self._listeners):
                listener(result)
            return result

    def _run_chunks(self, chunks: list[Chunk], result: StepOutput) -> None:
        t0 = time.perf_counter()
        failed = self.vision.encode(chunks)
        result.num_frames = sum(c.num_frames for c in chunks)
        self._fail(failed, "while encoding frames", "bad_request")
        chunks = [c for c in chunks if not c.seq.is_finished]
        t1 = time.perf_counter()
        result.seconds["vision"] = t1 - t0
        if not chunks:
            return
        try:
            logits = self.forward(chunks)
        except Exception as exc:            # fails this step's requests only; the loop goes on
            for seq in {id(c.seq): c.seq for c in chunks}.values():
                seq.fail(f"{type(exc).__name__} in a forward step: {exc}", "server_error")
            return
        ahead = []
        if self.vision.overlap:             # the forward is launched: CLIP for the next windows meanwhile
            ahead = self.vision.encode_ahead(self.scheduler.running, self.max_vision_frames)
        t2 = time.perf_counter()
        result.seconds["forward"] = t2 - t1
        result.num_windows = sum(c.kind == "window" for c in chunks)
        for chunk in chunks:    # a packed step's time counts in full for each of its chunks' stages
            stage = STAGE_OF_KIND[chunk.kind]
            chunk.seq.seconds[stage] = chunk.seq.seconds.get(stage, 0.0) + (t2 - t1)
        if logits is not None:
            self._sample(chunks, logits, result)
        self._fail(ahead, "while encoding frames", "bad_request")
        result.seconds["sample"] = time.perf_counter() - t2

    def _sample(self, chunks: list[Chunk], logits: torch.Tensor, result: StepOutput) -> None:
        """The step's one sampling pass (one device-to-host read), then each chunk's bookkeeping."""
        rows_of = [c.logit_rows() for c in chunks]
        try:
            tokens, logprobs = sample_rows(logits, [r for rows in rows_of for r in rows])
        except Exception as exc:
            for seq in {id(c.seq): c.seq for c in chunks}.values():
                seq.fail(f"{type(exc).__name__} while sampling: {exc}", "server_error")
            return
        start = 0
        for chunk, rows in zip(chunks, rows_of):
            seq, end = chunk.seq, start + len(rows)
            if chunk.prompt_idx is not None:
                seq.record_prompt_logprobs(chunk, logprobs[start:end])
            if chunk.sample:
                seq.append_token(tokens[end - 1], logprobs[end - 1], self.loaded.eos_token_ids)
                result.new_tokens.setdefault(seq.request_id, []).append(tokens[end - 1])
            start = end

    @staticmethod
    def _fail(failed: list[tuple[Sequence, Exception]], where: str, error_type: str) -> None:
        for seq, exc in failed:
            if not seq.is_finished:
                seq.fail(f"{type(exc).__name__} {where}: {exc}", error_type)

    def forward(self, chunks: list[Chunk]) -> torch.Tensor | None:
        """runner.run inside one NVTX range per kind of chunk in the step: "windows" (the layers over the
        step's visual windows), "text-prefill", "decode"; a mixed step nests its ranges."""
        with contextlib.ExitStack() as ranges:
            for kind in sorted({c.kind for c in chunks}):
                ranges.enter_context(self.annotate(RANGE_OF_KIND[kind]))
            return self.runner.run(chunks)

    # -- outputs -----------------------------------------------------------------------------------
    def _final_output(self, seq: Sequence) -> RequestOutput | EncodeResult:
        """Release what an ended sequence holds (an encode job's pages become its VideoMemory) and build
        its output."""
        if seq.is_encode_job:
            return encode_result(seq, self.model_fingerprint, self.kv_cache)
        seq.release()
        return request_output(seq, self.tokenizer, self.bytes_per_token, self.kv_cache.page_size)
