"""FCFS scheduler: admits sequences while their worst-case pages fit (and fewer than `max_num_seqs` run),
then packs one chunk per running sequence into each step within a row budget and a vision budget
(decode tokens first: they are cheap and latency-bound).

A sequence's reservation (pages for prefix + VSTs + suffix + max_tokens) is taken at admission, so page
allocation during its run can never fail. Sequences arrive at any step; the head of the queue is admitted
once the free pages, less what running sequences may still allocate, cover its reservation. A sequence
that can never fit (more than the pool, or more than is free with nothing running to free pages) fails.

    pool:  [ used by running seqs | still reserved by running seqs | free for admission | video memories ]

A step never holds more than `max_batch_tokens` rows: text chunks are cut to the rows left, a window
(indivisible) waits for a step with room for it. It never asks the vision stage for more than
`max_vision_frames` frames, except that the first window of a step always runs (so a budget smaller than
one window still makes progress).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from vxl.engine.kv_cache import BlockManager
from vxl.engine.sequence import Chunk, Sequence


@dataclass
class SchedulerOutput:
    chunks: list[Chunk] = field(default_factory=list)
    failed: list[tuple[Sequence, Exception]] = field(default_factory=list)   # next chunk could not be prepared
    num_frames: int = 0             # frames the vision stage encodes for this step's windows


class Scheduler:
    def __init__(self, manager: BlockManager, *, max_batch_tokens: int, max_num_seqs: int, max_vision_frames: int):
        self.manager = manager
        self.max_batch_tokens, self.max_num_seqs, self.max_vision_frames = max_batch_tokens, max_num_seqs, max_vision_frames
        self.waiting: deque[tuple[Sequence, int, int]] = deque()     # (seq, pages, max kept tokens)
        self.running: list[Sequence] = []
        # per running sequence: (pages reserved, pages its table held at admission)
        self._reservation: dict[int, tuple[int, int]] = {}
        self.dropped: list[Sequence] = []       # failed at admission (can never fit): the caller reports them
        # called with the pages missing when the head of the queue does not fit; returns whether it freed
        # any (a cache of video memories evicting idle entries)
        self.on_pressure: Callable[[int], bool] | None = None

    def add(self, seq: Sequence, max_kept_tokens: int) -> None:
        pages = self.manager.pages_for(max_kept_tokens) + 1    # +1: a fresh page when a shared one is partial
        if pages > self.manager.num_pages:
            seq.fail(self._too_big(max_kept_tokens, pages, self.manager.num_pages), "too_large")
            return
        self.waiting.append((seq, pages, max_kept_tokens))

    def _too_big(self, max_kept_tokens: int, pages: int, available: int) -> str:
        return (f"request needs up to {max_kept_tokens} kept tokens ({pages} pages) but the KV cache has "
                f"{available} free pages of {self.manager.page_size}; raise kv_cache_bytes or the compression "
                f"ratio, or lower num_frames/max_tokens")

    def outstanding_pages(self) -> int:
        """Pages running sequences have reserved but not allocated yet."""
        return sum(max(0, pages - (len(seq.table.pages) - base))
                   for seq in self.running for pages, base in [self._reservation[id(seq)]])

    def free_pages(self) -> int:
        """Pages free for a new reservation: free in the pool, less what running sequences may still take."""
        return self.manager.num_free_pages - self.outstanding_pages()

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq, pages, max_kept = self.waiting[0]
            available = self.free_pages()
            if pages > available:
                if self.on_pressure is not None and self.on_pressure(pages - available):
                    continue
                if not self.running:        # nothing running will free pages: it can never be admitted
                    self.waiting.popleft()
                    seq.fail(self._too_big(max_kept, pages, available), "too_large")
                    self.dropped.append(seq)
                    continue
                return
            self.waiting.popleft()
            self._reservation[id(seq)] = (pages, len(seq.table.pages))
            self.running.append(seq)

    def finish(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._reservation.pop(id(seq))

    def remove(self, seq: Sequence) -> None:
        """Take a waiting or running sequence out (an aborted request)."""
        if seq in self.running:
            self.finish(seq)
        else:
            self.waiting = deque(w for w in self.waiting if w[0] is not seq)

    def unfinished(self) -> list[Sequence]:
        return [w[0] for w in self.waiting] + list(self.running)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        """Chunks for the next step within the budgets, and the sequences whose next chunk could not be
        prepared."""
        self._admit()
        out = SchedulerOutput()
        rows = self.max_batch_tokens
        ordered = sorted(self.running, key=lambda s: s.is_prefilling)   # decoding sequences first
        for seq in ordered:
            if seq.is_finished:             # failed or stopped, not yet collected
                continue
            if rows <= 0:
                break
            frames = self.max_vision_frames - out.num_frames if out.num_frames else None
            try:
                chunk = seq.next_chunk(rows, frames)
            except Exception as exc:  # a bad video found mid-stream fails only its own request
                out.failed.append((seq, exc))
                continue
            if chunk is None:         # nothing fits now, or an encode job that just finished
                continue
            out.chunks.append(chunk)
            out.num_frames += chunk.num_frames
            rows -= chunk.num_slots
        return out
