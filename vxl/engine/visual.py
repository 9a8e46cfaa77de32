"""Visual token suppliers: hand a sequence its visual embeddings window by window.

`VideoTokens` decodes (and on a CPU engine preprocesses) the next frames on a background thread (a
bounded queue of chunks, kept on the host) while the model runs the current window, and encodes only the
frames the next window needs: the host holds a few windows of frames, the device never more than one.
"""
from __future__ import annotations

import queue
import threading
import time

import nvtx
import torch

from vxl.engine.preprocess import preprocess_frames


class EmbedsTokens:
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
    """Frames of a video source -> preprocess -> CLIP -> projector -> pool, on demand, in time order."""

    def __init__(self, source, model, image_processor, device: torch.device, frames_per_chunk: int,
                 annotate=nvtx.annotate):
        self.source, self.model, self.processor, self.device = source, model, image_processor, device
        self.annotate = annotate        # NVTX ranges "decode-video" (in the thread) and "vision"
        self.tokens_per_frame = model.tokens_per_frame
        self.num_frames = source.num_frames
        self.num_tokens = self.num_frames * self.tokens_per_frame
        self.frames_per_chunk = max(1, frames_per_chunk)
        self._prefetch: FramePrefetcher | None = None
        self._buffer: list[torch.Tensor] = []
        self._buffered = 0
        self.seconds = {"decode_video": 0.0, "decode_wait": 0.0, "vision": 0.0}

    def _encode_next_chunk(self) -> None:
        if self._prefetch is None:
            self._prefetch = FramePrefetcher(self.source, self.frames_per_chunk, self.processor, self.device,
                                             annotate=self.annotate)
        t0 = time.perf_counter()
        chunk = self._prefetch.get()                                        # on the host
        t1 = time.perf_counter()
        with torch.inference_mode(), self.annotate("vision"):
            pixels = self._prefetch.to_device(chunk)                        # (n, 3, S, S): this window's only
            tokens = self.model.encode_frames(pixels)                       # (n * tokens_per_frame, H)
        self._buffer.append(tokens)
        self._buffered += tokens.shape[0]
        self.seconds["decode_wait"] += t1 - t0
        self.seconds["vision"] += time.perf_counter() - t1
        self.seconds["decode_video"] = self._prefetch.seconds

    def take(self, n: int) -> torch.Tensor:
        while self._buffered < n:
            self._encode_next_chunk()
        tokens = torch.cat(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        out, rest = tokens[:n], tokens[n:]
        self._buffer, self._buffered = ([rest] if rest.shape[0] else []), rest.shape[0]
        return out

    def close(self) -> None:
        if self._prefetch is not None:
            self.seconds["decode_video"] = self._prefetch.seconds
            self._prefetch.close()
            self._prefetch = None
        self._buffer = []
        self.source.close()
