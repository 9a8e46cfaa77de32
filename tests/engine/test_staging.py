"""The step's host-to-device staging: every array arrives with its values and dtype, 16-byte aligned, from
one copy; the persistent path reuses its buffers in turn and grows them only when a step needs more; a
step's tensors survive the steps after it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vxl.engine.staging import ALIGN, StepStaging


def random_step(rng, scale: int):
    longs = [rng.integers(-2**40, 2**40, int(rng.integers(0, scale))) for _ in range(5)]
    longs[3] = [int(x) for x in rng.integers(0, 1000, int(rng.integers(0, scale)))]      # a Python list
    ints = [rng.integers(-2**31, 2**31, int(rng.integers(1, scale)), dtype=np.int64) for _ in range(6)]
    flags = rng.random(int(rng.integers(1, 3 * scale))) < 0.3
    return longs, ints, flags


def check(out, step):
    (longs, ints, flags), (want_longs, want_ints, want_flags) = out, step
    base = flags.data_ptr() - flags.storage_offset()
    for got, want, dtype in [*[(g, w, torch.int64) for g, w in zip(longs, want_longs)],
                             *[(g, w, torch.int32) for g, w in zip(ints, want_ints)], (flags, want_flags, torch.bool)]:
        assert got.dtype == dtype
        assert got.tolist() == np.asarray(want).astype(np.int64 if dtype != torch.bool else bool).tolist()
        assert (got.data_ptr() - base) % ALIGN == 0          # one buffer, every array aligned in it
        assert got.untyped_storage().data_ptr() == flags.untyped_storage().data_ptr()


@pytest.mark.parametrize("persistent", [False, True])
def test_every_array_arrives_aligned_from_one_buffer(persistent):
    rng = np.random.default_rng(7)
    staging = StepStaging(torch.device("cpu"), persistent=persistent)
    kept = []
    for i in range(12):
        step = random_step(rng, scale=[3, 40, 900][i % 3])
        out = staging.to_device(*step)
        check(out, step)
        kept.append((out, step))
    for out, step in kept:                                   # later steps overwrote none of them
        check(out, step)


def test_persistent_buffers_alternate_and_grow_only_when_needed():
    rng = np.random.default_rng(3)
    staging = StepStaging(torch.device("cpu"), persistent=True)
    assert staging.to_device(*random_step(rng, 50)) is not None and staging.num_grows == 1
    staging.to_device(*random_step(rng, 50))
    assert staging.num_grows == 2                            # the second buffer of the pair
    ptrs = [b.data_ptr() for b in staging.buffers]
    for _ in range(10):                                      # steps that fit: no allocation, same buffers
        staging.to_device(*random_step(rng, 50))
    assert staging.num_grows == 2 and [b.data_ptr() for b in staging.buffers] == ptrs
    big = random_step(rng, 5000)
    check(staging.to_device(*big), big)
    assert staging.num_grows == 3


def test_the_cpu_default_is_a_fresh_buffer_per_step():
    staging = StepStaging(torch.device("cpu"))
    assert not staging.persistent and not staging.pinned
    staging.to_device([[1, 2]], [[3]], np.array([True]))
    assert staging.buffers == [None, None] and staging.num_grows == 0
