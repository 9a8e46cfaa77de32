"""Visual token suppliers: hand a sequence its visual embeddings window by window (`VisualSupplier`).

`VideoTokens` decodes (and on a CPU engine preprocesses) the next frames on a background thread (a
bounded queue of chunks, kept on the host) while the model runs the current window. It does not run CLIP
itself in the step path: the engine's vision stage (`vxl.engine.vision_stage`) asks each window's supplier
for the pixels it still needs (`pixels_for`), encodes the pixels of every window of a step in one call and
hands each supplier its tokens back (`add_tokens`); the window then `take`s them. The host holds a few
windows of frames, the device never more than a step's windows (one window ahead per request when the
stage encodes ahead on CUDA).
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Protocol

import nvtx
import torch

from vxl.engine.preprocess import preprocess_frames


class VisualSupplier(Protocol):
    """What a sequence reads its visual tokens from, in time order."""
    num_tokens: int                 # tokens this supplier hands out
    num_frames: int | None          # frames behind them (None: not frames, e.g. visual_embeds)
    seconds: dict[str, float]       # time per stage, for the request's metrics
    decoder: str | None             # what decodes its frames ("decord", "pyav"; None: nothing is decoded)

    @property
    def total_tokens(self) -> int:
        """Visual tokens of the whole input (a stream question: every frame appended so far)."""

    def frames_to_encode(self, n: int) -> int:
        """Frames the vision stage must still encode before `take(n)` can hand out n tokens."""

    def pixels_for(self, n: int) -> list[torch.Tensor]:
        """Preprocessed frames (each (f, 3, S, S) on the device) to encode before `take(n)`; their tokens
        come back through `add_tokens`, in the same order."""

    def add_tokens(self, tokens: torch.Tensor, ready: torch.cuda.Event | None = None) -> None:
        """Tokens [f x tokens_per_frame, H] of the frames `pixels_for` handed out; `ready` is the event a
        side stream recorded after computing them (None: already usable)."""

    def take(self, n: int) -> torch.Tensor:
        """The next n tokens (n, H)."""

    def close(self) -> None:
        """Stop decoding and drop buffered tokens (idempotent)."""


class PrecomputedTokens:
    """A supplier whose tokens exist already (no frames to encode)."""
    num_tokens: int = 0
    num_frames: int | None = None
    decoder: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.num_tokens

    def frames_to_encode(self, n: int) -> int:
        return 0

    def pixels_for(self, n: int) -> list[torch.Tensor]:
        return []

    def add_tokens(self, tokens: torch.Tensor, ready=None) -> None:
        raise RuntimeError(f"{type(self).__name__} has no frames to encode")


class EmbedsTokens(PrecomputedTokens):
    """Precomputed projector outputs [N, H]."""

    def __init__(self, embeds: torch.Tensor, num_frames: int | None = None):
        self.embeds = embeds
        self.num_tokens = embeds.shape[0]
        self.num_frames = num_frames
        self.pos = 0
        self.seconds: dict[str, float] = {}

    def take(self, n: int) -> torch.Tensor:
        out = self.embeds[self.pos:self.pos + n]
        self.pos += n
        return out

    def close(self) -> None:
        self.embeds = None


class FramePrefetcher:
    """Background thread: source.iter_chunks -> bounded queue of at most `max_chunks_ahead` chunks, in
    order, plus the one the thread is decoding. Queued chunks stay where the source made them (the host,
    pinned on a CUDA engine for an asynchronous copy); `to_device` moves one chunk, the window being
    encoded, to the device. A CPU engine preprocesses in the thread, off the model's core; a GPU engine
    preprocesses on the device in `to_device`, where it is fast and the thread's CPU time goes to decoding.
    An exception in the thread is re-raised by `get` in the consumer, with its message."""

    _DONE = object()

    def __init__(self, source, chunk_frames: int, processor, device: torch.device, max_chunks_ahead: int = 2,
                 annotate=nvtx.annotate):
        self.processor, self.device, self.annotate = processor, device, annotate
        self.is_preprocessed_on_host = device.type == "cpu"
        self.queue: queue.Queue = queue.Queue(maxsize=max_chunks_ahead)
        self.stop = threading.Event()
        self.seconds = 0.0              # decode (+ host preprocess) time spent in the thread
        self.thread = threading.Thread(target=self._work, args=(source, chunk_frames), name="vxl-frames",
                                       daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, source, chunk_frames) -> None:
        try:
            chunks = source.iter_chunks(chunk_frames)
            while not self.stop.is_set():
                t0 = time.perf_counter()
                with self.annotate("decode-video"):
                    frames = next(chunks, None)                             # (n, H, W, 3) uint8
                    if frames is None:
                        break
                    if self.is_preprocessed_on_host:
                        frames = preprocess_frames(frames, self.processor)  # (n, 3, S, S)
                    elif frames.device.type == "cpu" and self.device.type == "cuda":
                        frames = frames.pin_memory()
                self.seconds += time.perf_counter() - t0
                if not self._put(frames):
                    return
            self._put(self._DONE)
        except BaseException as exc:  # forwarded to the consumer, which fails only this request
            self._put(exc)

    def get(self) -> torch.Tensor:
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise ValueError(f"video decoding failed: {item}") from item
        if item is self._DONE:
            raise ValueError("the video ended before all its sampled frames were decoded")
        return item

    def to_device(self, item: torch.Tensor) -> torch.Tensor:
        """A chunk from `get` -> float32 pixels (n, 3, S, S) on the engine's device."""
        item = item.to(self.device, non_blocking=True)
        return item if self.is_preprocessed_on_host else preprocess_frames(item, self.processor)

    def close(self) -> None:
        self.stop.set()
        while self.thread.is_alive():
            try:
                self.queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self.thread.join()


class VideoTokens:
    """Frames of a video source -> preprocess -> (the vision stage: CLIP -> projector -> pool) -> tokens,
    in time order. Frames are pulled in chunks of `frames_per_chunk` (one window's worth)."""

    def __init__(self, source, model, image_processor, device: torch.device, frames_per_chunk: int,
                 annotate=nvtx.annotate):
        self.source, self.model, self.processor, self.device = source, model, image_processor, device
        self.annotate = annotate        # NVTX ranges "decode-video" (in the thread) and "vision"
        self.tokens_per_frame = model.tokens_per_frame
        self.num_frames = source.num_frames
        self.num_tokens = self.num_frames * self.tokens_per_frame
        self.frames_per_chunk = max(1, frames_per_chunk)
        self._prefetch: FramePrefetcher | None = None
        self._buffer: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []    # encoded, not taken yet
        self._buffered = 0              # tokens in _buffer
        self._pending = 0               # tokens of pixels handed out by pixels_for, not back yet
        self._frames_pulled = 0
        self.seconds = {"decode_video": 0.0, "decode_wait": 0.0, "vision": 0.0}

    @property
    def total_tokens(self) -> int:
        return self.num_tokens

    @property
    def decoder(self) -> str | None:
        return self.source.decoder

    def frames_to_encode(self, n: int) -> int:
        need = n - self._buffered - self._pending
        if need <= 0:
            return 0
        chunks = -(-need // (self.frames_per_chunk * self.tokens_per_frame))
        return min(chunks * self.frames_per_chunk, self.num_frames - self._frames_pulled)

    def pixels_for(self, n: int) -> list[torch.Tensor]:
        out = []
        while self._buffered + self._pending < n:
            pixels = self._next_pixels()
            self._pending += pixels.shape[0] * self.tokens_per_frame
            out.append(pixels)
        return out

    def _next_pixels(self) -> torch.Tensor:
        """The next chunk of frames as float32 pixels (f, 3, S, S) on the device."""
        if self._prefetch is None:
            self._prefetch = FramePrefetcher(self.source, self.frames_per_chunk, self.processor, self.device,
                                             annotate=self.annotate)
        t0 = time.perf_counter()
        chunk = self._prefetch.get()                                        # on the host
        self.seconds["decode_wait"] += time.perf_counter() - t0
        self.seconds["decode_video"] = self._prefetch.seconds
        with torch.inference_mode():
            pixels = self._prefetch.to_device(chunk)                        # (f, 3, S, S)
        self._frames_pulled += pixels.shape[0]
        return pixels

    def add_tokens(self, tokens: torch.Tensor, ready: torch.cuda.Event | None = None) -> None:
        self._buffer.append((tokens, ready))
        self._buffered += tokens.shape[0]
        self._pending -= tokens.shape[0]

    def take(self, n: int) -> torch.Tensor:
        if self._buffered + self._pending < n:      # used alone (no vision stage): encode here
            for pixels in self.pixels_for(n):
                t0 = time.perf_counter()
                with torch.inference_mode(), self.annotate("vision"):
                    self.add_tokens(self.model.encode_frames(pixels))
                self.seconds["vision"] += time.perf_counter() - t0
        if self._buffered < n:
            raise RuntimeError(f"take({n}) with {self._buffered} tokens encoded: pixels handed out by pixels_for "
                               "were not encoded")
        parts = []
        for tokens, ready in self._buffer:
            if ready is not None:           # computed on the vision stage's side stream
                torch.cuda.current_stream(tokens.device).wait_event(ready)
                tokens.record_stream(torch.cuda.current_stream(tokens.device))
            parts.append(tokens)
        tokens = torch.cat(parts) if len(parts) > 1 else parts[0]
        out, rest = tokens[:n], tokens[n:]
        self._buffer, self._buffered = ([(rest, None)] if rest.shape[0] else []), rest.shape[0]
        return out

    def close(self) -> None:
        if self._prefetch is not None:
            self.seconds["decode_video"] = self._prefetch.seconds
            self._prefetch.close()
            self._prefetch = None
        self._buffer, self._buffered, self._pending = [], 0, 0
        self.source.close()
