"""The vision stage of a step: CLIP + projector + pool for the windows of every request in the step, in one
call (`encode_frames` on the concatenated pixels of all of them), before the LLM forward that runs those
windows. Its budget (frames per step) is the scheduler's (`max_vision_frames`).

Encoding ahead (`overlap`, on by default on CUDA): after the step's forward has been launched, the stage
encodes the next window of each request still in its visual prefill on a side CUDA stream, so CLIP can run
on the GPU while the LLM does (its effect is not measured yet: `bench/gpu_check.sh` times the vision stage
with and without it); the next step finds those tokens ready. Event discipline:
    1. everything of an ahead encoding runs on the side stream: the pixels' host-to-device copy, their
       preprocessing and `encode_frames` (it reads only the pixels and the vision weights, which nothing
       writes), so the side stream never waits for the forward on the current stream;
    2. an event is recorded on the side stream after `encode_frames`; the tokens are handed to their
       supplier with it;
    3. the supplier's `take` makes the current stream wait for that event and marks the tokens as used by
       the current stream (`record_stream`), so the allocator does not hand their memory to the side
       stream's next allocations while the LLM still reads them.
On the CPU there is no side stream: encoding ahead runs in order (tests use it to check its exactness).
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable

import torch

from vxl.engine.sequence import Chunk, Sequence
from vxl.engine.visual import VisualSupplier


class VisionStage:
    def __init__(self, model, device: torch.device, annotate: Callable, *, overlap: bool):
        self.model, self.device, self.annotate = model, device, annotate
        self.overlap = overlap
        self.side_stream = torch.cuda.Stream(device) if overlap and device.type == "cuda" else None
        self.stats = {"calls": 0, "frames": 0, "seconds": 0.0}

    def encode(self, chunks: list[Chunk]) -> list[tuple[Sequence, Exception]]:
        """Set `embeds` of the step's window chunks, encoding the frames they still need in one call.
        Returns the sequences that failed (their video could not be decoded, or the encoder raised)."""
        windows = [c for c in chunks if c.kind == "window" and c.embeds is None]
        jobs, failed = self._gather([(c.seq, c.num_raw) for c in windows])
        if jobs:
            failed += self._run(jobs, side=False)
        bad = {id(s) for s, _ in failed}
        for c in windows:
            if id(c.seq) not in bad:
                try:
                    c.embeds = c.seq.visual.take(c.num_raw)
                except Exception as exc:
                    failed.append((c.seq, exc))
        return failed

    def encode_ahead(self, seqs: list[Sequence], max_frames: int) -> list[tuple[Sequence, Exception]]:
        """Encode the next window of each sequence that has one and whose supplier lacks its frames, up to
        `max_frames` frames (on the side stream on CUDA). Returns the sequences that failed."""
        wanted, frames = [], 0
        for seq in seqs:
            num_raw = seq.upcoming_window()
            if num_raw is None or seq.visual is None:
                continue
            need = seq.visual.frames_to_encode(num_raw)
            if need and frames + need <= max_frames:
                wanted.append((seq, num_raw))
                frames += need
        with self._on(self.side_stream):
            jobs, failed = self._gather(wanted)
            if jobs:
                failed += self._run(jobs, side=True)
        return failed

    def _gather(self, wanted: list[tuple[Sequence, int]]):
        """(seq, supplier, pixels) of each sequence that needs frames encoded, and those that failed."""
        jobs, failed = [], []
        for seq, num_raw in wanted:
            try:
                pixels = seq.visual.pixels_for(num_raw)
            except Exception as exc:        # a video that cannot be decoded fails its own request only
                failed.append((seq, exc))
                continue
            if pixels:
                jobs.append((seq, seq.visual, pixels))
        return jobs, failed

    def _run(self, jobs: list[tuple[Sequence, VisualSupplier, list[torch.Tensor]]], side: bool):
        pixels = [p for _, _, ps in jobs for p in ps]
        stream = self.side_stream if side else None
        t0 = time.perf_counter()
        try:
            with self.annotate("vision"):
                tokens = self.model.encode_frames(torch.cat(pixels) if len(pixels) > 1 else pixels[0])
                ready = None
                if stream is not None:
                    ready = torch.cuda.Event()
                    ready.record(stream)
        except Exception as exc:            # the batch's requests fail; the engine goes on
            return [(seq, exc) for seq, _, _ in jobs]
        elapsed = time.perf_counter() - t0
        per_frame = tokens.shape[0] // sum(p.shape[0] for p in pixels)
        start = 0
        for seq, supplier, ps in jobs:      # hand each supplier its frames' tokens, in order
            for p in ps:
                n = p.shape[0] * per_frame
                supplier.add_tokens(tokens[start:start + n], ready)
                start += n
            # a batched call's time counts in full for each of its requests, as a packed step's does
            supplier.seconds["vision"] = supplier.seconds.get("vision", 0.0) + elapsed
        self.count(sum(p.shape[0] for p in pixels), elapsed)
        return []

    def count(self, num_frames: int, seconds: float) -> None:
        """One `encode_frames` call in the stats (the stage's own, or a stream's appended frames)."""
        self.stats["calls"] += 1
        self.stats["frames"] += num_frames
        self.stats["seconds"] += seconds

    @staticmethod
    def _on(stream):
        """The side stream's context (step 1 of the module's event discipline), or nothing."""
        return contextlib.nullcontext() if stream is None else torch.cuda.stream(stream)
