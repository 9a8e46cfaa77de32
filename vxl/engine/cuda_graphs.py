"""CUDA graphs of decode steps: a decode step of a 7B model is 28 layers of a dozen small kernels each, every
one launched from Python. A graph captures the whole forward (embedding, layers, final norm and lm_head)
once per shape and replays it with one launch. Its effect is not measured yet: `bench/gpu_check.sh` times
decode steps with and without graphs.

A graph's shape is (sequences, block-table columns), each rounded up to a bucket: `BATCH_BUCKETS` for the
sequences, powers of two (at least `MIN_WIDTH`) for the columns, which fix the decode kernel's grid. A step
is padded to its bucket (`HostStep.padded`: padding rows keep nothing and their logits are dropped), its
metadata copied in one host-to-device copy into the graph's own input buffer (the views the graph was
captured on), and the graph replayed. Graphs are captured on first use of a shape, at most `max_graphs`
of them; a step of any other shape (too many sequences, a prefill or window step) runs eagerly.

All graphs share one memory pool: a graph's output is read before the next step replays any graph, which
is what sharing needs. `capture` is a parameter so the padding and buffer logic can be tested without a
GPU (`eager_capture` replays by calling the forward again); on CUDA it is `cuda_capture`. The engine
settings (`EngineConfig.validate`) allow graphs only on CUDA with the triton backend.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from vxl.engine.runner import HostStep, ModelRunner

BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
MIN_WIDTH = 16


def cuda_capture(forward: Callable[[], torch.Tensor], pool) -> tuple[Callable[[], None], torch.Tensor]:
    """Capture `forward` as a CUDA graph in `pool` after one warm-up run on a side stream (compiles the
    Triton kernels and settles the allocator). -> (replay, the graph's output tensor)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        forward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):   # other threads may prepare requests
        out = forward()
    return graph.replay, out


def eager_capture(forward: Callable[[], torch.Tensor], pool=None) -> tuple[Callable[[], None], torch.Tensor]:
    """A stand-in for `cuda_capture` on any device: replay runs `forward` again on the same input buffer and
    writes into the same output tensor, as a graph would."""
    out = forward()
    return (lambda: out.copy_(forward())), out


def _empty_decode_step() -> HostStep:
    none = np.zeros(0, dtype=np.int64)
    return HostStep(positions=none, kept_positions=none, slots=none, token_ids=none, logit_rows=none,
                    cu=np.zeros(1, dtype=np.int64), cu_src=np.zeros(1, dtype=np.int64), ratios=none, rems=none,
                    kept=none, block_tables=np.zeros((0, 0), dtype=np.int64), is_vst=np.zeros(0, dtype=bool),
                    is_decode=True)


class _Graph:
    def __init__(self, runner: ModelRunner, num_rows: int, width: int, capture, pool):
        host = _empty_decode_step().padded(num_rows, width)
        self.inputs = torch.empty(runner.staging.packed_size(*host.arrays()), dtype=torch.uint8, device=runner.device)
        step, token_ids, _ = runner.upload(host, out=self.inputs)
        model = runner.model

        def forward() -> torch.Tensor:
            hidden = model(model.embed_tokens(token_ids), step, runner.kv_cache.layers, runner.ops)
            return model.compute_logits(hidden)
        self.replay, self.logits = capture(forward, pool)


class DecodeGraphs:
    def __init__(self, runner: ModelRunner, batch_buckets=BATCH_BUCKETS, max_graphs: int = 32,
                 capture: Callable | None = None):
        self.runner = runner
        self.batch_buckets = sorted(batch_buckets)
        self.max_graphs = max_graphs
        self.capture = capture or cuda_capture
        self.pool = torch.cuda.graph_pool_handle() if self.capture is cuda_capture else None
        self.graphs: dict[tuple[int, int], _Graph] = {}
        self.stats = {"replays": 0, "captures": 0, "eager": 0}

    def shape_for(self, num_seqs: int, width: int) -> tuple[int, int] | None:
        """The (rows, columns) bucket of a decode step of `num_seqs` sequences whose block tables have `width`
        columns; None when the step has more sequences than the largest bucket."""
        rows = next((b for b in self.batch_buckets if b >= num_seqs), None)
        if rows is None:
            return None
        return rows, max(MIN_WIDTH, 1 << max(width - 1, 0).bit_length())

    def run(self, host: HostStep) -> torch.Tensor | None:
        """float32 logits [B, V] of the decode step `host` (one row per sequence) from its shape's graph,
        or None when the step does not fit one (not a pure decode step, too many sequences, or `max_graphs`
        shapes already captured): the caller runs it eagerly. The logits are the graph's output buffer: read
        them before the next step."""
        num_seqs = len(host.kept)
        shape = self.shape_for(num_seqs, host.block_tables.shape[1]) if host.is_decode else None
        if shape is None or len(host.logit_rows) != num_seqs or (shape not in self.graphs
                                                                  and len(self.graphs) >= self.max_graphs):
            self.stats["eager"] += 1
            return None
        graph = self.graphs.get(shape)
        if graph is None:
            graph = self.graphs[shape] = _Graph(self.runner, *shape, self.capture, self.pool)
            self.stats["captures"] += 1
        self.runner.upload(host.padded(*shape), out=graph.inputs)
        graph.replay()
        self.stats["replays"] += 1
        return graph.logits[:num_seqs]
