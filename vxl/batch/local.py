"""Running a batch job's units on one in-process `LLM`: a video asked several questions is encoded once
(an engine encode job, `EngineCore.encode`), its questions are answered from the memory, and the memory is released as soon as
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


def _memory_request(item: BatchItem, mem) -> dict:
    """The item's question, answered from `mem` instead of its video."""
    skip = ("video", "num_frames", "compression_ratio")
    return {**{k: v for k, v in item.request.items() if k not in skip}, "video_memory": mem}


def run_units(llm, units: list[Unit], emit: Emit, progress: Progress | None = None) -> None:
    """Run `units` together on `llm` (one chunk): every item gets exactly one row through `emit`. A video
    asked several questions is encoded once, as an engine job (`EngineCore.encode`) beside the other
    requests; its questions join when its memory is ready."""
    core = llm.core
    jobs = {}                         # unit index -> its encode job
    asked = {}                        # request id -> its handle
    memories, users, remaining = {}, {}, {}     # unit -> memory; request id -> unit; unit -> questions left

    def ask(unit: Unit, mem) -> None:
        for item in unit.items:
            if item.error is not None:
                emit(error_row(item.request_id, item.error))
                if progress:
                    progress.update()
                continue
            request = _memory_request(item, mem) if mem is not None else item.request
            asked[item.request_id] = core.add(request, item.params(), default_id=item.request_id)

    try:
        for u, unit in enumerate(units):
            if unit.video_key is not None and len(unit.items) > 1:
                path, num_frames, ratio = unit.video_key
                jobs[u] = core.encode({"video": path, "num_frames": num_frames, "compression_ratio": ratio})
            else:
                ask(unit, None)
        while jobs or asked:
            core.step()
            for u, job in [(u, j) for u, j in jobs.items() if j.output is not None]:
                del jobs[u]
                _encoded(units[u], u, job.output, emit, progress, memories, remaining, users)
                if u in memories:
                    ask(units[u], memories[u])
                    users.update({item.request_id: u for item in units[u].items if item.request_id in asked})
            for rid, handle in [(r, h) for r, h in asked.items() if h.output is not None]:
                del asked[rid]
                emit(output_row(handle.output))
                _finished(handle.output, users, remaining, memories, progress)
    finally:                          # an interrupted chunk leaves nothing behind in the engine
        for handle in list(jobs.values()) + list(asked.values()):
            core.abort_handle(handle)
        for job in jobs.values():
            if job.output is not None and job.output.memory is not None:
                job.output.memory.release()
        for mem in memories.values():
            mem.release()


def _encoded(unit: Unit, u: int, result, emit: Emit, progress: Progress | None, memories: dict, remaining: dict,
             users: dict) -> None:
    """A unit's encode job ended: keep its memory, or give each of its questions an error row."""
    if result.memory is None:       # this video's problem only: its questions fail, the job goes on
        for item in unit.items:
            emit(error_row(item.request_id, f"cannot encode the video {unit.video_key[0]}: {result.error}"))
        if progress:
            progress.update(len(unit.items))
        return
    memories[u], remaining[u] = result.memory, sum(item.error is None for item in unit.items)
    if remaining[u] == 0:
        memories.pop(u).release()
    if progress:
        progress.add_frames(result.memory.num_frames)


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
