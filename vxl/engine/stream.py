"""Live video streams: frames keep arriving, each complete window is encoded once into VSTs by the engine
core (packed into the same steps as other requests), and a question at any moment answers over every frame
appended so far, exactly as a request over the same frames would.

    stream:    [ prefix | VSTs of encoded windows ]  +  queued windows (embeddings)  +  partial window
    question:  fork of the stream's pages (copy-on-write of the last partial page) -> queued windows and
               the partial window encoded for this question only -> its question text -> answer

Asking never changes the stream. The stream holds at most `max_queued_windows` windows of embeddings
waiting for the engine, plus one partial window: `append` runs engine steps itself until the queue is
back under that bound (back-pressure), so frames are never buffered without limit.
"""
from __future__ import annotations

import threading
import uuid
from typing import TYPE_CHECKING

import numpy as np
import torch

from vxl.checks import int_at_least
from vxl.config import IMAGE_TOKEN_INDEX
from vxl.engine.inputs import RequestError, check_ratio, check_vst_count
from vxl.engine.sampler import SamplingParams
from vxl.engine.sequence import Chunk, Sequence
from vxl.engine.visual import PrecomputedTokens
from vxl.vst import count_vst

if TYPE_CHECKING:
    from vxl.engine.core import EngineCore
    from vxl.engine.request import RequestOutput
    from vxl.engine.video_memory import VideoMemory


class Embeddings(PrecomputedTokens):
    """Visual tokens already computed (a stream's unencoded frames), taken in order by the windows."""

    def __init__(self, tokens: torch.Tensor, num_frames: int, total_tokens: int):
        self._tokens, self.num_tokens, self.num_frames = tokens, tokens.shape[0], num_frames
        self._total_tokens = total_tokens       # the stream's visual tokens so far (for metrics)
        self.seconds: dict[str, float] = {}

    @property
    def total_tokens(self) -> int:
        return self._total_tokens

    def take(self, n: int) -> torch.Tensor:
        out, self._tokens = self._tokens[:n], self._tokens[n:]
        return out

    def close(self) -> None:
        self._tokens = self._tokens[:0]


class StreamEncoder(Sequence):
    """The engine-side sequence of a stream: its prefix, then each full window as soon as it is queued.
    It never samples and never finishes on its own; closing the stream ends it."""

    def __init__(self, stream: "VideoStream", table, window: int, text_chunk: int):
        super().__init__(index=0, request_id=stream.stream_id, prompt_ids=stream.prefix_ids + [IMAGE_TOKEN_INDEX],
                         placeholder_idx=len(stream.prefix_ids), visual=None, ratio=stream.ratio,
                         params=SamplingParams(max_tokens=1), table=table, window=window, text_chunk=text_chunk,
                         generator=None)
        self.stream = stream
        self.num_windows = 0                        # windows handed to the engine (encoded once their step ran)

    def next_chunk(self, max_rows: int, max_frames: int | None = None) -> Chunk | None:
        num_prefix = len(self.stream.prefix_ids)
        if (self._pos or 0) < num_prefix:           # the prefix first, in text chunks
            return self._text_chunk(0, num_prefix, False, max_rows)
        num_raw = self.stream.queued_window_size()
        if num_raw is None or num_raw + (num_raw + self.rem) // self.ratio > max_rows:
            return None                             # nothing to encode, or no room in this step
        tokens = self.stream.pop_window()
        self.stream.forget_old_vsts()
        num_vst = (num_raw + self.rem) // self.ratio
        self.stream.reserve(self.kept_len + num_vst)
        chunk = Chunk(seq=self, kind="window", num_kept=num_vst, sample=False, num_raw=num_raw, embeds=tokens,
                      ratio=self.ratio, rem=self.rem)
        self.rem = (num_raw + self.rem) % self.ratio
        self.num_vst, self.num_windows = self.num_vst + num_vst, self.num_windows + 1
        return chunk


class VideoStream:
    """A live video on one engine core. Made by `LLM.open_stream`; see the module docstring."""

    def __init__(self, core: "EngineCore", compression_ratio: int | None = None,
                 prefix_token_ids: list[int] | None = None, max_queued_windows: int = 2,
                 max_kept_frames: int | None = None):
        self.core = core
        if not core.model.has_vision:
            raise ValueError("this checkpoint has no vision tower: streams need one")
        cfg = core.model_config
        self.ratio = check_ratio(compression_ratio if compression_ratio is not None else cfg.default_ratio)
        self.prefix_ids = list(prefix_token_ids) if prefix_token_ids is not None else core.default_prefix()
        self.max_queued_windows = int_at_least("max_queued_windows", max_queued_windows, 0)
        self.max_kept_frames = int_at_least("max_kept_frames", max_kept_frames, 1, optional=True)
        self.stream_id = "stream-" + uuid.uuid4().hex
        self.window = cfg.beacon_window
        self.tokens_per_frame = core.model.tokens_per_frame
        self.num_frames = 0
        self.frame_shape: tuple[int, int] | None = None
        self._queue: list[torch.Tensor] = []        # full windows of embeddings the engine has not taken yet
        self._partial = self._empty()               # tokens after the last full window
        self._lock = threading.RLock()
        self._appended = threading.Condition(self._lock)      # watchers wait for frames
        self.error: str | None = None
        self.is_closed = False
        self.encoder = StreamEncoder(self, core.new_table(), self.window, core.text_chunk)
        core.admit(self.encoder, len(self.prefix_ids))
        self._drain(0)                              # the prefix is encoded before the first frame

    def _empty(self) -> torch.Tensor:
        return torch.empty(0, self.core.model_config.hidden_size, device=self.core.device,
                           dtype=self.core.model.beacon_embedding().dtype)

    # -- frames in ---------------------------------------------------------------------------------
    def _check_frames(self, frames) -> torch.Tensor:
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(np.ascontiguousarray(frames))
        if not isinstance(frames, torch.Tensor):
            raise TypeError(f"frames must be a uint8 array or tensor [T, H, W, 3], not {type(frames).__name__}")
        if frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8, got {frames.dtype}")
        if frames.dim() == 3:
            frames = frames[None]                   # one frame
        if frames.dim() != 4 or frames.shape[-1] != 3 or min(frames.shape[:3]) < 1:
            raise ValueError(f"frames must have shape [T, H, W, 3] with T, H, W >= 1, got {list(frames.shape)}")
        if self.frame_shape is not None and tuple(frames.shape[1:3]) != self.frame_shape:
            raise ValueError(f"frames of this stream are {self.frame_shape[0]}x{self.frame_shape[1]}, got "
                             f"{frames.shape[1]}x{frames.shape[2]}")
        return frames

    def append(self, frames) -> int:
        """Add uint8 frames [T, H, W, 3] (or one frame [H, W, 3]); returns the stream's frame count. Bad
        frames raise ValueError/TypeError and leave the stream as it was."""
        self._check_open()
        frames = self._check_frames(frames)
        tokens = self.core.encode_frames(frames)                    # (T * tokens_per_frame, H)
        with self._lock:
            self._check_open()
            if self.frame_shape is None:
                self.frame_shape = tuple(frames.shape[1:3])
            self.num_frames += frames.shape[0]
            tokens = torch.cat([self._partial, tokens])
            full = tokens.shape[0] // self.window * self.window
            if full:
                self._queue += list(tokens[:full].split(self.window))
            self._partial = tokens[full:]
            self._appended.notify_all()
        self._drain(self.max_queued_windows)
        return self.num_frames

    def _drain(self, bound: int) -> None:
        """Run engine steps until at most `bound` windows wait (the engine may run other requests too)."""
        while True:
            with self._lock:
                if self.error is not None:
                    raise RuntimeError(f"stream failed: {self.error}")
                if len(self._queue) <= bound and (bound > 0 or self.encoder.kept_len >= len(self.prefix_ids)):
                    return
            self.core.step()
            if self.encoder.is_finished and self.error is None:
                self.error = self.encoder.error or "the stream's encoder ended"

    def queued_window_size(self) -> int | None:
        """Raw rows of the next queued window (None: none queued)."""
        with self._lock:
            return self._queue[0].shape[0] if self._queue else None

    def pop_window(self) -> torch.Tensor | None:
        """The next queued window's embeddings (window, H), for the stream's encoder."""
        with self._lock:
            return self._queue.pop(0) if self._queue else None

    def forget_old_vsts(self) -> None:
        """With max_kept_frames: give back the pages that hold only VSTs older than about the last
        max_kept_frames frames (the prefix and its page stay; kept entries keep their positions)."""
        if self.max_kept_frames is None:
            return
        table, ps = self.encoder.table, self.core.page_size
        keep = -(-self.max_kept_frames * self.tokens_per_frame // self.ratio)       # VSTs of the last N frames
        first = -(-len(self.prefix_ids) // ps)                                      # first page without prefix
        droppable = (table.num_tokens - keep - first * ps) // ps
        if droppable > 0:
            table.drop_pages(first, droppable)

    def reserve(self, num_tokens: int) -> None:
        """Pages for the encoder's next window, or a clear error (which fails the stream alone)."""
        table = self.encoder.table
        need = -(-num_tokens // self.core.page_size) - len(table.pages)
        available = self.core.load()["num_reservable_pages"]
        if need > available:
            raise RequestError(f"the stream needs {need} more KV pages for its next window but only {available} "
                               f"are free; raise kv_cache_bytes or the compression ratio, or close streams")
        table.reserve(num_tokens)

    # -- questions ---------------------------------------------------------------------------------
    @property
    def num_windows(self) -> int:
        """Full windows handed to the engine so far (each encoded once its step ran)."""
        return self.encoder.num_windows

    @property
    def kept_kv_bytes(self) -> int:
        return self.encoder.kept_len * self.core.bytes_per_token

    def snapshot(self) -> tuple:
        """(fork of the stream's pages, the carried remainder, VSTs so far, the embeddings not encoded yet)
        under the core's lock, so no window is half way through a step."""
        with self.core.lock, self._lock:
            self._check_open()
            if self.encoder.kept_len < len(self.prefix_ids):
                raise RequestError("the stream's prefix is not encoded yet")
            rest = torch.cat([*self._queue, self._partial])
            table = self.core.fork_table(self.encoder.table)
            visual = Embeddings(rest, self.num_frames, self.num_frames * self.tokens_per_frame)
            return table, self.encoder.rem, self.encoder.num_vst, visual

    def question_sequence(self, index: int, request_id: str, suffix_ids: list[int], params: SamplingParams,
                          generator, text_chunk: int, is_encode_job: bool = False) -> tuple[Sequence, int]:
        """A Sequence answering `suffix_ids` (the question's text after the video) over the stream now (an
        encode job: no question), and its worst-case new kept tokens."""
        if self.num_frames:             # as a request over the same frames: refused with no summary token
            check_vst_count(self.num_frames * self.tokens_per_frame, self.window, self.ratio)
        table, rem, num_vst, visual = self.snapshot()
        seq = Sequence(index=index, request_id=request_id,
                       prompt_ids=self.prefix_ids + [IMAGE_TOKEN_INDEX] + list(suffix_ids),
                       placeholder_idx=len(self.prefix_ids), visual=visual, ratio=self.ratio, params=params,
                       table=table, window=self.window, text_chunk=text_chunk, generator=generator,
                       is_encode_job=is_encode_job, resume=(rem, num_vst))
        new_vst = count_vst(visual.num_tokens + rem, self.window, self.ratio) - (rem // self.ratio)
        max_new = table.num_tokens % self.core.page_size + new_vst + len(suffix_ids) + params.max_tokens
        return seq, max_new

    def to_memory(self) -> "VideoMemory":
        """A VideoMemory of every frame so far (its partial window encoded into it); the stream goes on."""
        if self.encoder.table.num_dropped:
            raise ValueError("a stream that forgot its oldest frames (max_kept_frames) cannot become a VideoMemory")
        job = self.core.encode({"video_stream": self}, job_id="memory-" + uuid.uuid4().hex)
        try:
            result = self.core.run_until(job)
        finally:
            self.core.abort_handle(job)             # only if interrupted before it ended
        if result.memory is None:
            raise RuntimeError(f"the stream could not be saved: {result.error}")
        return result.memory

    def watch(self, prompt: str, every_n_windows: int = 1, sampling_params: SamplingParams | None = None,
              poll_s: float = 0.05):
        """A standing question: after every `every_n_windows` newly encoded windows, ask `prompt` over the
        stream and yield (frames so far, RequestOutput); nothing is encoded twice. Ends when the stream is
        closed. Frames come from other threads' `append`; windows waiting in the queue are encoded here."""
        int_at_least("every_n_windows", every_n_windows, 1)
        params = sampling_params or SamplingParams()
        target = self.encoder.num_windows + every_n_windows
        while not self.is_closed:
            if self.encoder.num_windows >= target and self.error is None:
                frames = self.num_frames
                out = self.ask(prompt, params)
                target = self.encoder.num_windows + every_n_windows
                yield frames, out
            elif self._queue:
                self.core.step()
            else:
                with self._appended:
                    if not self._queue and not self.is_closed:
                        self._appended.wait(poll_s)

    def ask(self, prompt: str, sampling_params: SamplingParams | None = None) -> "RequestOutput":
        """Answer `prompt` over every frame appended so far (the stream goes on)."""
        handle = self.core.add({"prompt": prompt, "video_stream": self}, sampling_params or SamplingParams())
        try:
            return self.core.run_until(handle)
        finally:
            self.core.abort_handle(handle)          # only if interrupted before it ended

    # -- the end -----------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.is_closed:
            raise ValueError("this stream is closed")

    def close(self) -> None:
        """Return the stream's pages; questions already running finish on their own forks."""
        with self.core.lock, self._lock:
            if self.is_closed:
                return
            self.is_closed = True
            self._queue, self._partial = [], self._empty()
            self.core.abort_handle(self.encoder)
            self._appended.notify_all()
