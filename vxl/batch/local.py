"""Running a batch job's units on one in-process `LLM`: a video asked several questions is encoded once
(`LLM.encode_video`), its questions are answered from the memory, and the memory is released as soon as
its last question ends. Units run a chunk at a time, so memory stays bounded on big files; rows are
handed to `emit` as their requests finish. Shared by `vxl batch` and the Ray actors.
"""
from __future__ import annotations

import time
from typing import Callable

from vxl.batch.jobs import BatchItem, Unit, error_row, output_row

Emit = Callable[[dict], None]


class Progress:
    """Requests done, frames/s and ETA on stderr (tqdm); frames count each video once, when encoded."""

    def __init__(self, total: int, enabled: bool):
        from tqdm.auto import tqdm
        self.bar = tqdm(total=total, desc="requests", unit="req", disable=not enabled, dynamic_ncols=True)
        self.num_frames, self.t0 = 0, time.perf_counter()

    def add_frames(self, n: int) -> None:
        self.num_frames += n
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{self.num_frames / elapsed:.1f} frames/s", refresh=False)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _encode(llm, unit: Unit, emit: Emit, progress: Progress | None):
    """The unit's VideoMemory, or None after giving each of its questions an error row."""
    path, num_frames, ratio = unit.video_key
    try:
        mem = llm.encode_video(path, compression_ratio=ratio, num_frames=num_frames)
    except Exception as exc:    # this video's problem only: its questions fail, the job goes on
        for item in unit.items:
            emit(error_row(item.request_id, f"cannot encode the video {path}: {exc}"))
        if progress:
            progress.update(len(unit.items))
        return None
    if progress:
        progress.add_frames(mem.num_frames)
    return mem


def _memory_request(item: BatchItem, mem) -> dict:
    """The item's question, answered from `mem` instead of its video."""
    skip = ("video", "num_frames", "compression_ratio")
    return {**{k: v for k, v in item.request.items() if k not in skip}, "video_memory": mem}


def run_units(llm, units: list[Unit], emit: Emit, progress: Progress | None = None) -> None:
    """Run `units` together on `llm` (one chunk): every item gets exactly one row through `emit`."""
    memories, users = {}, {}          # unit index -> VideoMemory; request id -> that unit's index
    remaining = {}                    # unit index -> questions of its memory not finished yet
    pending: set[str] = set()
    try:
        for u, unit in enumerate(units):
            mem = None
            if unit.video_key is not None and len(unit.items) > 1:
                mem = _encode(llm, unit, emit, progress)
                if mem is None:
                    continue
                memories[u], remaining[u] = mem, len(unit.items)
            for item in unit.items:
                if item.error is not None:
                    emit(error_row(item.request_id, item.error))
                    if progress:
                        progress.update()
                    continue
                request = _memory_request(item, mem) if mem is not None else item.request
                llm.add_request(request, item.params())
                pending.add(item.request_id)
                if mem is not None:
                    users[item.request_id] = u
        while pending and llm.has_unfinished_requests():
            for out in llm.step().finished:
                if out.request_id not in pending:
                    continue
                pending.discard(out.request_id)
                emit(output_row(out))
                _finished(out, users, remaining, memories, progress)
        for rid in sorted(pending):   # the engine never reported them: still one row each
            emit(error_row(rid, "the engine ended without finishing this request"))
        pending.clear()
    finally:                          # an interrupted chunk leaves nothing behind in the engine
        for rid in pending:
            llm.abort(rid)
        for mem in memories.values():
            mem.release()


def _finished(out, users: dict, remaining: dict, memories: dict, progress: Progress | None) -> None:
    """Count a finished request; release its video's memory after the memory's last question."""
    u = users.pop(out.request_id, None)
    if u is not None:
        remaining[u] -= 1
        if remaining[u] == 0:
            memories.pop(u).release()
    elif progress:
        progress.add_frames(out.metrics.get("num_frames") or 0)
    if progress:
        progress.update()


def chunks(units: list[Unit], max_videos: int) -> list[list[Unit]]:
    """Consecutive runs of `max_videos` units (a unit is one video's questions or one other request)."""
    return [units[i:i + max_videos] for i in range(0, len(units), max_videos)]


def run_job(llm, units: list[Unit], emit: Emit, max_videos: int = 8, use_tqdm: bool = True) -> None:
    """Run every unit on `llm`, `max_videos` units at a time, with a progress bar over their requests."""
    progress = Progress(sum(len(u.items) for u in units), use_tqdm)
    try:
        for chunk in chunks(units, max_videos):
            run_units(llm, chunk, emit, progress)
    finally:
        progress.close()
