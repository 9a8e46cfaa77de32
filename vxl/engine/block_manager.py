"""Page pool of the paged KV cache: free list, refcounts, and per-sequence append-only block tables.

Invariants (checked by `check()` and the property tests):
  * every page is either free (refcount 0, in the free list exactly once) or used (refcount >= 1);
  * num_free + num_used == num_pages;
  * a block table only grows at its end while its sequence lives; it is released exactly once.
"""
from __future__ import annotations

from collections import deque


class OutOfPages(RuntimeError):
    pass


class BlockManager:
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
    """Pages of one sequence and how many kept entries they hold (entries [0, num_tokens))."""

    def __init__(self, manager: BlockManager, pages: list[int] | None = None, num_tokens: int = 0):
        self.manager = manager
        self.pages: list[int] = list(pages or [])
        self.num_tokens = num_tokens
        self.is_released = False

    def reserve(self, num_tokens: int) -> None:
        """Make room for entries [0, num_tokens) (append-only)."""
        need = self.manager.pages_for(num_tokens) - len(self.pages)
        if need > 0:
            self.pages += self.manager.allocate(need)

    def slot(self, idx: int) -> int:
        ps = self.manager.page_size
        return self.pages[idx // ps] * ps + idx % ps

    def release(self) -> None:
        if not self.is_released:
            self.manager.release(self.pages)
            self.is_released = True
