"""FCFS scheduler: admits sequences while their worst-case pages fit, then packs one chunk per running
sequence into each step within a token budget (decode tokens first: they are cheap and latency-bound).

A sequence's reservation (pages for prefix + VSTs + suffix + max_tokens) is taken at admission, so page
allocation during its run can never fail; a sequence whose reservation exceeds the pool gets an error.
"""
from __future__ import annotations

from collections import deque

from vxl.engine.kv_cache import BlockManager
from vxl.engine.sequence import Chunk, Sequence


class Scheduler:
    def __init__(self, manager: BlockManager, max_batch_tokens: int, capacity: int | None = None):
        """capacity: pages this scheduler may reserve (the pool's free pages when it starts: pages held by
        video memories are not available)."""
        self.manager, self.max_batch_tokens = manager, max_batch_tokens
        self.capacity = manager.num_free_pages if capacity is None else capacity
        self.waiting: deque[tuple[Sequence, int]] = deque()
        self.running: list[Sequence] = []
        self.reserved_pages = 0
        self._reservation: dict[int, int] = {}

    def add(self, seq: Sequence, max_kept_tokens: int) -> None:
        pages = self.manager.pages_for(max_kept_tokens) + 1    # +1: a fresh page when a shared one is partial
        if pages > self.capacity:
            seq.fail(f"request needs up to {max_kept_tokens} kept tokens ({pages} pages) but the KV cache "
                     f"has {self.capacity} free pages of {self.manager.page_size}; raise kv_cache_bytes "
                     f"or the compression ratio, or lower num_frames/max_tokens")
            return
        self.waiting.append((seq, pages))

    def _admit(self) -> None:
        while self.waiting and self.reserved_pages + self.waiting[0][1] <= self.capacity:
            seq, pages = self.waiting.popleft()
            self.reserved_pages += pages
            self._reservation[id(seq)] = pages
            self.running.append(seq)

    def finish(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.reserved_pages -= self._reservation.pop(id(seq))

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[list[Chunk], list[tuple[Sequence, Exception]]]:
        """Chunks for the next step, and the sequences whose next chunk could not be prepared."""
        self._admit()
        chunks, failed, budget = [], [], self.max_batch_tokens
        ordered = sorted(self.running, key=lambda s: s.is_prefilling)   # decoding sequences first
        for seq in ordered:
            if chunks and budget <= 0:
                break
            try:
                chunk = seq.next_chunk()
            except Exception as exc:  # a bad video found mid-stream fails only its own request
                failed.append((seq, exc))
                continue
            chunks.append(chunk)
            budget -= chunk.num_slots
        return chunks, failed
