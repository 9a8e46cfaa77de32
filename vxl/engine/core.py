"""The engine core: the one step loop behind `LLM.generate`, the server, streams and batch jobs (DESIGN
section 7). Requests join at any step (`add_request`), each `step` runs one packed forward over the
running requests and samples their next tokens, `abort` ends a request and returns its pages at once.

A fault stays with its requests: an exception while a request is prepared fails that request; one while
a step runs (forward, sampling, allocation) fails the requests of that step; their pages return and the
loop goes on. Only BaseExceptions that are not Exceptions (KeyboardInterrupt) leave `step`.
"""
from __future__ import annotations

import contextlib
import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field

import torch

from vxl.config import IMAGE_TOKEN_INDEX
from vxl.engine.inputs import (InputContext, RequestError, check_params, check_token_ids, prepare_request,
                              prompt_ids_from_text)
from vxl.engine.kv_cache import KVCache
from vxl.engine.request import Request, RequestOutput
from vxl.engine.runner import ModelRunner
from vxl.engine.sampler import SamplingParams, sample_token
from vxl.engine.scheduler import Scheduler
from vxl.engine.sequence import Chunk, Sequence
from vxl.engine.video_memory import VideoMemory

# per chunk kind: its stage in metrics["seconds"], and the NVTX range around the layers that run it
STAGE_OF_KIND = {"window": "windows", "text": "text_prefill", "decode": "decode"}
RANGE_OF_KIND = {"window": "windows", "text": "text-prefill", "decode": "decode"}


@dataclass
class Rejected:
    """A request refused while it was prepared: it holds no pages and has only its error output."""
    request_id: str
    output: RequestOutput
    is_finished: bool = True


@dataclass
class StepOutput:
    """What one step did: the tokens each request sampled (request id -> ids), the requests that ended
    (their final outputs), how many visual windows it encoded and the pages in use after its forward
    (before ended requests returned theirs)."""
    new_tokens: dict[str, list[int]] = field(default_factory=dict)
    finished: list[RequestOutput] = field(default_factory=list)
    num_windows: int = 0
    num_used_pages: int = 0
    encoded: dict[str, VideoMemory] = field(default_factory=dict)     # encode jobs done (add_encode)


class EngineCore:
    """Owns the scheduler and the requests in flight of one engine. Thread-safe: every public method holds
    the core's lock, so several threads may add, step and abort; a step runs one at a time."""

    def __init__(self, llm):
        self.llm = llm                              # loaded model, configs, tokenizer, annotate
        self.kv_cache: KVCache = llm.kv_cache
        self.runner: ModelRunner = llm.runner
        self.scheduler = Scheduler(self.kv_cache.pool, llm.engine_config.max_batch_tokens)
        self.lock = threading.RLock()
        self._ended: list = []                      # Sequences or Rejected that ended before admission:
                                                    # reported by the next step
        self._counter = itertools.count()
        # called with every StepOutput, whoever ran the step (a server's loop, `generate`, a stream's append)
        self.listeners: list = []

    # -- requests ----------------------------------------------------------------------------------
    def add_request(self, request, sampling_params: SamplingParams | None = None) -> str:
        """Queue a request (dict, str or vxl.Request); it is admitted at the first step whose free pages
        cover its worst case. Returns its request id (the request's own, else a fresh one). A bad request
        is reported, with finish_reason "error", by the next step."""
        with self.lock:
            index = next(self._counter)
            seq = self.add(request, sampling_params or SamplingParams(), index, default_id=uuid.uuid4().hex)
            return seq.request_id

    def add(self, request, params: SamplingParams, index: int, default_id: str,
            encode_only: bool = False) -> Sequence | Rejected:
        """add_request with the sequence (or the rejection) returned: its `output` is set once it ends.
        `index` seeds sampling when params.seed is None."""
        with self.lock:
            try:
                seq, max_kept = self._new_sequence(index, Request.from_any(request), params, default_id, encode_only)
            except Exception as exc:        # any problem while preparing is this request's alone
                rid = request.get("request_id") if isinstance(request, dict) else getattr(request, "request_id", None)
                rid = str(rid if rid is not None else default_id)
                rejected = Rejected(rid, RequestOutput(rid, finish_reason="error", error=str(exc), error_type="bad_request"))
                self._ended.append(rejected)
                return rejected
            self.scheduler.add(seq, max_kept)
            if seq.is_finished:             # it can never fit in the pool
                self._ended.append(seq)
            return seq

    def add_encode(self, request, request_id: str | None = None) -> Sequence | Rejected:
        """Queue an encode job: the request's visual input (video, images, visual_embeds; its prompt is
        ignored) is encoded window by window, interleaved with other requests' steps, into a VideoMemory
        like `LLM.encode_video`'s; the step that finishes it reports it in `StepOutput.encoded`, and it is
        the job's `output`. A failure is reported like a request's, as a finished RequestOutput."""
        with self.lock:
            rid = request_id or uuid.uuid4().hex
            job = {**(request if isinstance(request, dict) else vars(request)), "prompt": "", "request_id": rid}
            job.pop("prompt_token_ids", None)
            return self.add(job, SamplingParams(max_tokens=1), next(self._counter), rid, encode_only=True)

    def _new_sequence(self, index: int, request: Request, params: SamplingParams,
                      default_id: str, encode_only: bool = False) -> tuple[Sequence, int]:
        llm = self.llm
        if not isinstance(params, SamplingParams):
            raise RequestError(f"sampling params must be a vxl.SamplingParams, not {type(params).__name__}")
        check_params(params, llm.config.vocab_size, llm.engine_config.max_logprobs)    # stream questions too
        if request.video_stream is not None:
            return self._stream_question(index, request, params, default_id)
        prep = prepare_request(self.input_context(), request, params)
        if encode_only:
            if prep.visual is None or prep.memory is not None:
                raise RequestError("an encode job needs a video, images or visual_embeds")
            prep.prompt_ids = prep.prompt_ids[:prep.placeholder_idx + 1]     # the prefix and the video only
        generator = None
        if not params.is_greedy:
            generator = torch.Generator().manual_seed(params.seed if params.seed is not None else llm.seed + index)
        table = None
        try:
            if prep.memory is not None:
                try:
                    prep.memory.bind(self.kv_cache, llm.model_fingerprint)
                except ValueError as exc:
                    raise RequestError(str(exc)) from None
                table = prep.memory.fork_table()
            else:
                table = self.kv_cache.new_table()
            window = llm.config.beacon_window
            rid = prep.request_id if prep.request_id is not None else default_id
            seq = Sequence(index, str(rid), prep.prompt_ids, prep.placeholder_idx, prep.visual, prep.ratio, params,
                           table, window, llm.engine_config.text_chunk_size or window, generator, memory=prep.memory,
                           encode_only=encode_only)
        except BaseException:
            if table is not None:
                table.release()
            if prep.visual is not None:
                prep.visual.close()
            raise
        return seq, prep.max_kept_tokens(llm.config, params)

    def _stream_question(self, index: int, request: Request, params: SamplingParams,
                         default_id: str) -> tuple[Sequence, int]:
        """A question over a live stream: every frame appended so far (vxl.engine.stream)."""
        stream = request.video_stream
        others = [n for n in ("video", "image", "images", "visual_embeds", "video_memory", "num_frames")
                  if getattr(request, n) is not None]
        if others:
            raise RequestError(f"a video_stream request takes no {', '.join(others)}")
        if not hasattr(stream, "question_sequence") or getattr(stream, "core", None) is not self:
            raise RequestError("video_stream must be a stream opened on this engine (LLM.open_stream)")
        if request.compression_ratio is not None and request.compression_ratio != stream.ratio:
            raise RequestError(f"compression_ratio {request.compression_ratio} differs from the stream's ({stream.ratio})")
        if request.prompt_token_ids is not None:
            ids = check_token_ids(request.prompt_token_ids, self.llm.config.vocab_size)
        else:
            ids = prompt_ids_from_text(self.llm.tokenizer, request.prompt, True)
        if ids.count(IMAGE_TOKEN_INDEX) != 1 or ids[:ids.index(IMAGE_TOKEN_INDEX)] != stream.prefix_ids:
            raise RequestError("the prompt's text before the video differs from the stream's prefix")
        generator = None
        if not params.is_greedy:
            generator = torch.Generator().manual_seed(params.seed if params.seed is not None else self.llm.seed + index)
        rid = str(request.request_id if request.request_id is not None else default_id)
        text_chunk = self.llm.engine_config.text_chunk_size or self.llm.config.beacon_window
        return stream.question_sequence(index, rid, ids[ids.index(IMAGE_TOKEN_INDEX) + 1:], params, generator,
                                        text_chunk)

    def input_context(self) -> InputContext:
        llm = self.llm
        vision = llm.model if llm.model.has_vision else None
        return InputContext(llm.config, llm.engine_config, llm.tokenizer, vision, llm.loaded.image_processor,
                            llm.device, llm.dtype, llm.annotate)

    def abort(self, request_id: str) -> bool:
        """End every unfinished request with this id (finish_reason "abort"); its pages return at once.
        Returns whether one was found."""
        with self.lock:
            found = [seq for seq in self.scheduler.unfinished() if seq.request_id == request_id]
            for seq in found:
                self.abort_sequence(seq)
            return bool(found)

    def abort_sequence(self, seq: Sequence) -> None:
        with self.lock:
            self.scheduler.remove(seq)
            if seq.finish_reason is None:
                seq.finish_reason = "abort"
            seq.release()
            seq.output = self.output(seq)

    def has_unfinished_requests(self) -> bool:
        with self.lock:
            return bool(self._ended) or self.scheduler.has_work

    # -- the step ----------------------------------------------------------------------------------
    def step(self) -> StepOutput:
        """One packed forward over the running requests (admitting waiting ones first) and their sampled
        tokens; requests that ended are released and reported."""
        with self.lock, torch.inference_mode():
            result = StepOutput()
            chunks, failed = self.scheduler.schedule()
            for seq, exc in failed:
                seq.fail(f"{type(exc).__name__}: {exc}")
            if chunks:
                self._run_chunks(chunks, result)
            pool = self.kv_cache.pool
            result.num_used_pages = pool.num_pages - pool.num_free_pages
            ended, self._ended = self._ended + self.scheduler.dropped, []
            self.scheduler.dropped = []
            for seq in ended + [s for s in self.scheduler.running if s.is_finished]:
                if isinstance(seq, Sequence):
                    if seq in self.scheduler.running:
                        self.scheduler.finish(seq)
                    if seq.finish_reason == "encoded":
                        seq.output = result.encoded[seq.request_id] = self._memory_of(seq)
                        continue
                    seq.release()
                    seq.output = self.output(seq)
                result.finished.append(seq.output)
            for listener in self.listeners:
                listener(result)
            return result

    def _run_chunks(self, chunks: list[Chunk], result: StepOutput) -> None:
        t0 = time.perf_counter()
        try:
            logits = self.forward(chunks)
        except Exception as exc:            # fails this step's requests only; the loop goes on
            for seq in {id(c.seq): c.seq for c in chunks}.values():
                seq.fail(f"{type(exc).__name__} in a forward step: {exc}", "server_error")
            return
        elapsed = time.perf_counter() - t0
        result.num_windows = sum(c.kind == "window" for c in chunks)
        row = 0
        for chunk in chunks:    # a packed step's time counts in full for each of its chunks' stages
            seq = chunk.seq
            stage = STAGE_OF_KIND[chunk.kind]
            seq.seconds[stage] = seq.seconds.get(stage, 0.0) + elapsed
            num_rows = chunk.num_slots if chunk.prompt_idx is not None else int(chunk.sample)
            if not num_rows:
                continue
            rows, row = logits[row:row + num_rows], row + num_rows      # this chunk's logit rows
            try:
                if chunk.prompt_idx is not None:
                    seq.record_prompt_logprobs(chunk, rows)
                if chunk.sample:
                    token, lp = sample_token(rows[-1], seq.params, seq.generator)
                    seq.append_token(token, lp, self.llm.loaded.eos_token_ids)
                    result.new_tokens.setdefault(seq.request_id, []).append(token)
            except Exception as exc:
                seq.fail(f"{type(exc).__name__} while sampling: {exc}", "server_error")

    def _memory_of(self, seq: Sequence) -> VideoMemory:
        """The VideoMemory of a finished encode job: its table (prefix + VSTs) changes owner."""
        seq.visual.close()
        visual = seq.visual
        num_tokens = getattr(visual, "total_tokens", visual.num_tokens)     # a stream's: all frames so far
        return VideoMemory(self.llm.model_fingerprint, seq.prompt_ids[:seq.placeholder_idx], seq.ratio,
                           getattr(visual, "num_frames", None) or 0, num_tokens, seq.num_vst, seq.kept_len,
                           kv_cache=self.kv_cache, table=seq.table)

    def forward(self, chunks: list[Chunk]) -> torch.Tensor | None:
        """runner.run inside one NVTX range per kind of chunk in the step: "windows" (the layers over the
        step's visual windows), "text-prefill", "decode"; a mixed step nests its ranges."""
        with contextlib.ExitStack() as ranges:
            for kind in sorted({c.kind for c in chunks}):
                ranges.enter_context(self.llm.annotate(RANGE_OF_KIND[kind]))
            return self.runner.run(chunks)

    # -- outputs -----------------------------------------------------------------------------------
    def output(self, seq: Sequence) -> RequestOutput:
        llm = self.llm
        ids = seq.output_ids
        text = ""
        if llm.tokenizer is not None and ids:
            shown = ids[:-1] if seq.finish_reason == "stop" else ids
            text = llm.tokenizer.decode(shown, skip_special_tokens=True)
        visual = seq.visual
        seconds = dict(seq.seconds)
        if visual is not None:
            seconds.update(visual.seconds)
        num_kept = seq.num_kept_after_prefill or 0
        rates = {}
        if seconds.get("decode_video"):
            rates = {"decode_fps": (getattr(visual, "num_frames", 0) or 0) / seconds["decode_video"]}
        page_bytes = self.kv_cache.page_size * llm.bytes_per_token
        metrics = {"num_frames": getattr(visual, "num_frames", None) or 0,
                   "num_visual_tokens": getattr(visual, "total_tokens", visual.num_tokens) if visual is not None else 0,
                   "num_vst_tokens": seq.num_vst, "num_kept_tokens": num_kept,
                   "kept_kv_bytes": num_kept * llm.bytes_per_token, "compression_ratio": seq.ratio,
                   "num_prompt_tokens": len(seq.prompt_ids), "num_generated_tokens": len(ids),
                   # block tables only grow while a request lives: its final length is the most pages it
                   # held at once (pages shared with a VideoMemory included)
                   "peak_kv_bytes": len(seq.table.pages) * page_bytes, **rates,
                   "video_decoder": getattr(getattr(visual, "source", None), "decoder", None), "seconds": seconds}
        return RequestOutput(seq.request_id, text, list(ids), seq.output_logprobs, seq.finish_reason,
                             seq.error, metrics, seq.error_type, seq.prompt_logprobs)
