"""The paged KV cache (DESIGN section 3): the page pool (free list, refcounts), per-sequence block tables,
the per-layer K/V page tensors, the slot mapping from kept entries to cache slots, and the copy-on-write
fork of a shared table that video memories hand to their requests.

Invariants (checked by `BlockManager.check()` and the property tests):
  * every page is either free (refcount 0, in the free list exactly once) or used (refcount >= 1);
  * num_free + num_used == num_pages;
  * a block table gains pages and entries only at its end while its sequence lives; `drop_pages` may take
    whole pages of stored entries out of it (a bounded stream's oldest VSTs), and the entries after them
    keep their positions (`num_dropped` counts what was taken); a table is released exactly once.
"""
from __future__ import annotations

from collections import deque

import torch


class OutOfPages(RuntimeError):
    pass


class BlockManager:
    """The page pool: hands out pages, takes them back, refcounts pages shared by several tables."""

    def __init__(self, num_pages: int, page_size: int):
        if num_pages <= 0 or page_size <= 0:
            raise ValueError("num_pages and page_size must be positive")
        self.num_pages, self.page_size = num_pages, page_size
        self.refcounts = [0] * num_pages
        self.free_pages: deque[int] = deque(range(num_pages))   # FIFO: recently freed pages reused last

    @property
    def num_free_pages(self) -> int:
        return len(self.free_pages)

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def allocate(self, n: int) -> list[int]:
        if n > len(self.free_pages):
            raise OutOfPages(f"need {n} pages, {len(self.free_pages)} free of {self.num_pages}")
        pages = [self.free_pages.popleft() for _ in range(n)]
        for p in pages:
            self.refcounts[p] = 1
        return pages

    def share(self, pages: list[int]) -> None:
        """Another owner takes a reference to already used pages (a reused video memory)."""
        for p in pages:
            if self.refcounts[p] <= 0:
                raise ValueError(f"page {p} is free and cannot be shared")
            self.refcounts[p] += 1

    def release(self, pages: list[int]) -> None:
        for p in pages:
            if self.refcounts[p] <= 0:
                raise ValueError(f"page {p} released twice")
            self.refcounts[p] -= 1
            if self.refcounts[p] == 0:
                self.free_pages.append(p)

    def check(self) -> None:
        free = set(self.free_pages)
        assert len(free) == len(self.free_pages), "a page is in the free list twice"
        for p, rc in enumerate(self.refcounts):
            assert (rc == 0) == (p in free), f"page {p}: refcount {rc} disagrees with the free list"


class BlockTable:
    """Pages of one sequence and how many kept entries they hold (entries [0, num_tokens)).

    `num_dropped` entries were taken out (whole pages, by `drop_pages`: a bounded stream's oldest VSTs);
    entries keep their positions, so the next entry's position is num_tokens + num_dropped."""

    def __init__(self, manager: BlockManager, pages: list[int] | None = None, num_tokens: int = 0,
                 num_dropped: int = 0):
        self.manager = manager
        self.pages: list[int] = list(pages or [])
        self.num_tokens = num_tokens
        self.num_dropped = num_dropped
        self.is_released = False

    def drop_pages(self, first: int, count: int) -> None:
        """Take pages [first, first + count) out of the table (their entries are forgotten; later entries
        keep their positions) and give this table's references back to the pool."""
        if count <= 0:
            return
        if first < 0 or first + count > self.num_tokens // self.manager.page_size:
            raise ValueError("only whole pages of stored entries can be dropped")
        gone = self.pages[first:first + count]
        self.pages = self.pages[:first] + self.pages[first + count:]
        self.num_tokens -= count * self.manager.page_size
        self.num_dropped += count * self.manager.page_size
        self.manager.release(gone)

    def reserve(self, num_tokens: int) -> None:
        """Make room for entries [0, num_tokens) (append-only)."""
        need = self.manager.pages_for(num_tokens) - len(self.pages)
        if need > 0:
            self.pages += self.manager.allocate(need)

    def release(self) -> None:
        if not self.is_released:
            self.manager.release(self.pages)
            self.is_released = True


class KVCache:
    """Per layer (k_cache, v_cache), each [num_pages, page_size, num_kv_heads, head_dim] (K after RoPE at
    its kept position), over one page pool. Entry i of a table lives in page `pages[i // page_size]` at
    offset `i % page_size`; `slot_mapping` turns that into the flat slot the kernels write."""

    def __init__(self, num_layers: int, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        self.pool = BlockManager(num_pages, page_size)
        self.device = device
        shape = (num_pages, page_size, num_kv_heads, head_dim)
        self.layers = [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                       for _ in range(num_layers)]

    @property
    def page_size(self) -> int:
        return self.pool.page_size

    def new_table(self) -> BlockTable:
        return BlockTable(self.pool)

    def slot_mapping(self, table: BlockTable, kept_idx: torch.Tensor) -> torch.Tensor:
        """Flat cache slot of each kept entry index of `table` (its pages must be reserved); -1 where
        kept_idx < 0 (a row that is not kept)."""
        ps = self.page_size
        pages = torch.tensor(table.pages, dtype=torch.long, device=self.device)
        safe = kept_idx.clamp(min=0)
        return torch.where(kept_idx >= 0, pages[safe // ps] * ps + safe % ps, -1)

    def _entry_slots(self, table: BlockTable, num_tokens: int) -> torch.Tensor:
        return self.slot_mapping(table, torch.arange(num_tokens, device=self.device))

    def write(self, table: BlockTable, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Append per layer (k, v) [n, nkv, hd] as entries [0, n) of an empty `table` (a loaded memory)."""
        n = kv[0][0].shape[0]
        table.reserve(n)
        slots = self._entry_slots(table, n)
        for (k_cache, v_cache), (k, v) in zip(self.layers, kv):
            k_cache.view(-1, *k_cache.shape[2:])[slots] = k.to(device=k_cache.device, dtype=k_cache.dtype)
            v_cache.view(-1, *v_cache.shape[2:])[slots] = v.to(device=v_cache.device, dtype=v_cache.dtype)
        table.num_tokens = n

    def read(self, table: BlockTable) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (k, v) [num_tokens, nkv, hd]: copies of the table's kept entries."""
        slots = self._entry_slots(table, table.num_tokens)
        return [(k.view(-1, *k.shape[2:])[slots], v.view(-1, *v.shape[2:])[slots]) for k, v in self.layers]

    def fork(self, table: BlockTable) -> BlockTable:
        """A new table continuing after `table`'s entries: its full pages shared (refcount), its partial last
        page copied, since the new owner appends into it (copy-on-write)."""
        num_full = table.num_tokens // self.page_size
        copied = self.pool.allocate(1) if table.num_tokens % self.page_size else []   # first: may run out
        for page in copied:
            for k_cache, v_cache in self.layers:
                k_cache[page].copy_(k_cache[table.pages[num_full]])
                v_cache[page].copy_(v_cache[table.pages[num_full]])
        shared = table.pages[:num_full]
        self.pool.share(shared)
        return BlockTable(self.pool, shared + copied, table.num_tokens, table.num_dropped)
