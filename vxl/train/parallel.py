"""Data-parallel training on one machine: `ranks` processes (one per core, gloo over a file store), each
rendering and computing its share of every batch; their gradients are summed before every update, so each
process holds the same weights after every step.

On the 2-core machine, two processes of one thread against one process of two threads, turn about (median
of 3 pairs, bench/results/train_speed_ranks_keyed{1,4,5}_cpu.json): 1.18x on the first steps of the keyed
recipe's stage 1 (16-frame clips), 1.28x on stage 4 (8-64 frames), 1.03x on stage 5 (8-512 frames); one
process gains only 1.24x from a second thread (bench/results/train_speed_cpu.json). The step computes the same function as one
process (the same videos, the mean loss over all answer tokens of the batch), with other float rounding: each
rank's loss is its share of the batch's summed loss, and the gradients add up across ranks.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def active() -> bool:
    """Whether this process is one rank of a data-parallel run."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """t summed over the ranks, in place (unchanged in a single process); returns t."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast(tensors: list[torch.Tensor], src: int) -> None:
    """Overwrite `tensors` in every rank with rank src's, in place (nothing in a single process)."""
    if active():
        for t in tensors:
            dist.broadcast(t, src=src)


def barrier() -> None:
    if active():
        dist.barrier()


def sum_grads(params) -> None:
    """Sum every parameter's gradient over the ranks, in one flat all-reduce. A parameter without a gradient
    on every rank keeps none (so AdamW skips it, as in one process); one with a gradient on some ranks only
    gets the sum of those."""
    if not active():
        return
    params = [p for p in params if p.requires_grad]
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    all_sum(has)
    params = [p for p, h in zip(params, has.tolist()) if h > 0]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    all_sum(flat)
    offset = 0
    for p in params:        # views of the summed buffer, no copy
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p)
        offset += n


def _run_rank(index: int, ranks: int, store: str, threads: int, fn, args) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=index, world_size=ranks)
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


def spawn(fn, ranks: int, threads: int, *args) -> None:
    """Run fn(*args) in `ranks` fresh processes joined into one process group, each using `threads` torch
    threads; returns when all have finished, raising if any failed."""
    tmp = tempfile.mkdtemp(prefix="vxl-ranks-")
    try:
        mp.start_processes(_run_rank, args=(ranks, os.path.join(tmp, "store"), threads, fn, args), nprocs=ranks,
                           join=True, start_method="spawn")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
