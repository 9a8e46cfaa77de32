"""The server's video cache: requests about the same video (same content, sampled frames and ratio) share
one encoded VideoMemory (prefix + VST pages, refcounted), so a second question costs only its own
prefill. When admission needs pages, least recently used entries that no request is using are evicted;
concurrent requests for a video not yet cached share one encode."""
from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from dataclasses import dataclass

Key = tuple[str, int | None, int]       # (content key, num_frames, compression ratio)


@dataclass
class Entry:
    memory: object
    users: int = 0


class VideoCache:
    def __init__(self, engine, max_entries: int = 64):
        self.engine, self.max_entries = engine, max_entries
        self.core = engine.core
        self.entries: OrderedDict[Key, Entry] = OrderedDict()
        self.pending: dict[Key, asyncio.Future] = {}
        self.lock = threading.Lock()
        self.core.on_pressure(self.evict)       # called by the engine thread, under the core lock

    def __len__(self) -> int:
        return len(self.entries)

    def num_pages(self) -> int:
        with self.lock:
            return len({p for e in self.entries.values() for p in e.memory.table.pages})

    async def acquire(self, key: Key, encode_request: dict):
        """(the VideoMemory of `key`, whether it was cached), encoding it (once) if needed; the caller
        must `release(key)` when its request ends."""
        while True:
            with self.lock:
                entry = self.entries.get(key)
                if entry is not None and entry.memory.is_bound:
                    entry.users += 1
                    self.entries.move_to_end(key)
                    return entry.memory, True
                waiting = self.pending.get(key)
                if waiting is None:
                    self.pending[key] = asyncio.get_running_loop().create_future()
                    break
            await asyncio.shield(waiting)       # another request is encoding it: then look again
        try:
            memory = await self.engine.encode(encode_request)
        finally:
            with self.lock:
                future = self.pending.pop(key)
            future.set_result(None)
        with self.lock:
            self.entries[key] = Entry(memory, users=1)
            surplus = [k for k, e in self.entries.items() if e.users == 0][:max(0, len(self.entries) - self.max_entries)]
        for k in surplus:
            self._drop(k)
        return memory, False

    def release(self, key: Key) -> None:
        with self.lock:
            entry = self.entries.get(key)
            if entry is not None:
                entry.users -= 1

    def _drop(self, key: Key) -> int:
        with self.lock:
            entry = self.entries.pop(key, None)
        if entry is None:
            return 0
        with self.core.lock:
            before = self.core.kv_cache_usage()["num_free_pages"]
            entry.memory.release()
            return self.core.kv_cache_usage()["num_free_pages"] - before

    def evict(self, pages_needed: int) -> bool:
        """Release unused entries, least recently used first, until `pages_needed` pages are free again or
        none is left; whether any page was freed."""
        freed = 0
        while freed < pages_needed:
            with self.lock:
                idle = next((k for k, e in self.entries.items() if e.users == 0), None)
            if idle is None:
                break
            freed += self._drop(idle)
        return freed > 0

    def clear(self) -> None:
        with self.lock:
            idle = [k for k, e in self.entries.items() if e.users == 0]
        for k in idle:
            self._drop(k)
