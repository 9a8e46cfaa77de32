"""Visual token suppliers: hand a sequence its visual embeddings window by window.

`VideoTokens` decodes and encodes only the frames the next window needs, so host and device never hold
more than about one window of frames, pixels and CLIP activations.
"""
from __future__ import annotations

import time

import torch


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


class VideoTokens:
    """Frames of a video source -> preprocess -> CLIP -> projector -> pool, on demand, in time order."""

    def __init__(self, source, model, image_processor, device: torch.device, frames_per_chunk: int):
        from vxl.engine.preprocess import preprocess_frames
        self._preprocess = preprocess_frames
        self.source, self.model, self.processor, self.device = source, model, image_processor, device
        self.tokens_per_frame = model.tokens_per_frame
        self.num_frames = source.num_frames
        self.num_tokens = self.num_frames * self.tokens_per_frame
        self.frames_per_chunk = max(1, frames_per_chunk)
        self._chunks = None
        self._buffer: list[torch.Tensor] = []
        self._buffered = 0
        self.seconds = {"decode_video": 0.0, "vision": 0.0}

    def _encode_next_chunk(self) -> None:
        if self._chunks is None:
            self._chunks = self.source.iter_chunks(self.frames_per_chunk)
        t0 = time.perf_counter()
        frames = next(self._chunks)                                   # (n, h, w, 3) uint8
        t1 = time.perf_counter()
        pixels = self._preprocess(frames, self.processor).to(self.device)
        with torch.inference_mode():
            tokens = self.model.encode_frames(pixels)                   # (n * tokens_per_frame, H)
        self._buffer.append(tokens)
        self._buffered += tokens.shape[0]
        self.seconds["decode_video"] += t1 - t0
        self.seconds["vision"] += time.perf_counter() - t1

    def take(self, n: int) -> torch.Tensor:
        while self._buffered < n:
            self._encode_next_chunk()
        tokens = torch.cat(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        out, rest = tokens[:n], tokens[n:]
        self._buffer, self._buffered = ([rest] if rest.shape[0] else []), rest.shape[0]
        return out

    def close(self) -> None:
        self._buffer, self._chunks = [], None
