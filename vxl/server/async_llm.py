"""AsyncLLM: an asyncio front for one `LLM`. One background thread runs the engine core's step loop;
each request gets an async stream of token deltas ending with its final `RequestOutput`. Cancelling the
consumer (a client that disconnects) aborts the request, which returns its pages at once.
"""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator

from vxl.engine.core import EncodeResult, StepOutput
from vxl.engine.request import RequestOutput
from vxl.engine.sampler import SamplingParams
from vxl.engine.video_memory import VideoMemory


class EncodeError(RuntimeError):
    """An encode job that ended without a memory; `output` says why (`error`, `error_type`)."""

    def __init__(self, output: EncodeResult):
        super().__init__(output.error)
        self.output = output


@dataclass
class Delta:
    """Tokens a request sampled in one step; `output` is set on the last delta of the request."""
    token_ids: list[int]
    output: RequestOutput | None = None


class AsyncLLM:
    def __init__(self, llm, idle_wait_s: float = 0.05):
        self.llm = llm
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._handles: dict[str, object] = {}          # request id -> the core's handle (its output when it ends)
        # aborts asked for by consumers that went away, run by the engine thread before its next step (a
        # cancelled consumer cannot await anything); ids whose consumer left before their add returned
        self._aborts: list[str] = []
        self._gone: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.idle_wait_s = idle_wait_s
        self.stats = {"steps": 0, "step_faults": 0, "generated_tokens": 0, "windows": 0}
        self.core = llm.core
        self.core.add_listener(self._on_step)
        self._thread = threading.Thread(target=self._loop, name="vxl-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self.core.remove_listener(self._on_step)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    @property
    def num_requests(self) -> int:
        with self._lock:
            return len(self._streams)

    async def generate(self, request: dict, params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[Delta]:
        """Add the request and yield its deltas; the last one carries the final output."""
        rid = request_id or uuid.uuid4().hex
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            if rid in self._streams:
                raise ValueError(f"request id {rid!r} is already in flight")
            self._streams[rid] = (asyncio.get_running_loop(), queue)
        finished = False
        try:
            # preparation opens the video and may wait for the engine's lock: off the event loop
            await asyncio.to_thread(self._add, rid, {**request, "request_id": rid}, params)
            self._wake.set()
            while True:
                delta = await queue.get()
                finished = delta.output is not None
                yield delta
                if finished:
                    return
        finally:                    # no await here: a cancelled consumer's awaits would be cancelled too
            with self._lock:
                self._streams.pop(rid, None)
                handle = self._handles.pop(rid, None)
                if not finished:    # the consumer went away: the engine thread aborts it before its next step
                    if handle is not None:
                        self._aborts.append(rid)
                    else:
                        self._gone.add(rid)
            self._wake.set()

    def _add(self, rid: str, request: dict, params: SamplingParams) -> None:
        """Add the request (in a worker thread); abort it at once if its consumer left meanwhile."""
        handle = self.core.add(request, params)
        with self._lock:
            left = rid in self._gone
            self._gone.discard(rid)
            if not left:
                self._handles[rid] = handle
        if left:
            self.core.abort_handle(handle)

    async def stop(self, request_id: str) -> RequestOutput | None:
        """End a request now (a stop string was found in its text): its pages return and its output, as the
        engine has it so far (metrics, logprobs), is returned; None if it is not in flight here."""
        with self._lock:
            handle = self._handles.get(request_id)
        if handle is None:
            return None
        await asyncio.to_thread(self.core.abort_handle, handle)
        return handle.output

    async def encode(self, request: dict) -> VideoMemory:
        """Encode a request's video into a VideoMemory as an engine job interleaved with other requests;
        raises EncodeError with the job's result when it fails."""
        rid = uuid.uuid4().hex
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            self._streams[rid] = (asyncio.get_running_loop(), queue)
        done = False
        try:
            await asyncio.to_thread(self.core.encode, request, job_id=rid)
            self._wake.set()
            result: EncodeResult = await queue.get()
            done = True
            if result.memory is None:
                raise EncodeError(result)
            return result.memory
        finally:
            with self._lock:
                self._streams.pop(rid, None)
                if not done:
                    self._aborts.append(rid)
            self._wake.set()

    def _push(self, rid: str, item) -> bool:
        """Hand a delta (or an encode job's result) to its consumer; whether one was still there."""
        with self._lock:
            target = self._streams.get(rid)
        if target is None:
            return False
        loop, queue = target
        loop.call_soon_threadsafe(queue.put_nowait, item)
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                aborts, self._aborts = self._aborts, []
            for rid in aborts:
                self.core.abort(rid)
            if not self.core.has_unfinished_requests():
                self._wake.wait(self.idle_wait_s)
                self._wake.clear()
                continue
            out = self.core.step()              # its outputs reach _on_step
            if not out.finished and not out.new_tokens and out.num_windows == 0 and not out.encoded:
                time.sleep(0.001)   # only waiting requests (no room yet) or idle streams: do not spin

    def _on_step(self, out: StepOutput) -> None:
        """Deliver a step's tokens, outputs and encoded videos to their consumers (any thread's step)."""
        self.stats["steps"] += 1
        self.stats["windows"] += out.num_windows
        finished = {o.request_id: o for o in out.finished}
        for rid, tokens in out.new_tokens.items():
            self.stats["generated_tokens"] += len(tokens)
            if rid not in finished:
                self._push(rid, Delta(tokens))
        for rid, output in finished.items():
            if output.error_type == "server_error":
                self.stats["step_faults"] += 1
            self._push(rid, Delta(out.new_tokens.get(rid, []), output))
        for result in out.encoded:
            if result.error_type == "server_error":
                self.stats["step_faults"] += 1
            if not self._push(result.job_id, result) and result.memory is not None:
                result.memory.release()         # its requester went away: nobody will use it (under the
                                                # core's lock: listeners run inside the step)
