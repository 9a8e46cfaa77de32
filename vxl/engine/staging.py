"""The host-to-device path of a step's metadata: every int64, int32 and bool array of the step packed into
one byte buffer (each array 16-byte aligned, as Triton's pointer specialisation likes) and sent to the device
in one copy.

On CUDA the host side is persistent: two pinned buffers, used in turn and grown when a step needs more. A
buffer is written only after the asynchronous copy that last read it has finished (a CUDA event), so the
host prepares step N+1 while the device still runs step N, and no step allocates or registers pinned
memory. On the CPU the packed buffer is itself the step's memory, so each step gets a fresh one (the next
step must not overwrite tensors a caller still holds); `persistent=True` runs the persistent path there too,
for tests.
"""
from __future__ import annotations

import numpy as np
import torch

ALIGN = 16


def _layout(arrays: list[np.ndarray]) -> tuple[list[int], int]:
    """Byte offsets of the arrays, each starting ALIGN-aligned, and the total size."""
    offsets, start = [], 0
    for a in arrays:
        offsets.append(start)
        start += a.nbytes + (-a.nbytes % ALIGN)
    return offsets, start


def _typed(longs: list, ints: list, flags) -> list[tuple[np.ndarray, torch.dtype]]:
    return ([(np.asarray(a, dtype=np.int64), torch.int64) for a in longs]
            + [(np.asarray(a, dtype=np.int32), torch.int32) for a in ints]
            + [(np.asarray(flags, dtype=np.bool_), torch.bool)])


class StepStaging:
    def __init__(self, device: torch.device, persistent: bool | None = None, num_buffers: int = 2):
        self.device = torch.device(device)
        self.pinned = self.device.type == "cuda"
        self.persistent = self.pinned if persistent is None else persistent
        self.buffers: list[torch.Tensor | None] = [None] * num_buffers
        self.events: list = [None] * num_buffers
        self.turn = 0
        self.num_grows = 0                  # buffers (re)allocated: stays flat once steps stop growing

    def _buffer(self, nbytes: int) -> tuple[int, torch.Tensor]:
        """The next buffer in turn, at least `nbytes` long, once no copy reads it any more."""
        i, self.turn = self.turn, (self.turn + 1) % len(self.buffers)
        if self.events[i] is not None:
            if not self.events[i].query():  # the copy of two steps ago: long done unless the host is far ahead
                self.events[i].synchronize()
            self.events[i] = None
        buf = self.buffers[i]
        if buf is None or buf.numel() < nbytes:
            size = max(nbytes, 2 * (buf.numel() if buf is not None else 0), 4096)
            buf = self.buffers[i] = torch.empty(size, dtype=torch.uint8, pin_memory=self.pinned)
            self.num_grows += 1
        return i, buf

    def to_device(self, longs: list, ints: list, flags: np.ndarray, out: torch.Tensor | None = None):
        """The step's int64 arrays, int32 arrays and bool flags on the device, as typed views of one buffer
        copied once. -> (longs, ints, flags) as tensors. `out`: a uint8 device buffer of exactly the packed
        size to copy into (arrays of the same shapes always land at the same offsets of it, so a CUDA graph
        captured on its views reads each step's values)."""
        typed = _typed(longs, ints, flags)
        arrays = [a for a, _ in typed]
        offsets, nbytes = _layout(arrays)
        if self.persistent:
            i, buf = self._buffer(nbytes)
            host = buf[:nbytes]
        else:
            i, host = None, torch.empty(nbytes, dtype=torch.uint8)
        view = host.numpy()
        for o, a in zip(offsets, arrays):
            view[o:o + a.nbytes] = a.reshape(-1).view(np.uint8)
        if out is not None:
            assert out.dtype == torch.uint8 and out.numel() == nbytes, "out: a uint8 buffer of the packed size"
            dev = out.copy_(host, non_blocking=self.device.type == "cuda")
        elif self.device.type == "cuda":
            dev = host.to(self.device, non_blocking=True)
        else:
            dev = host.clone() if self.persistent else host     # a reused host buffer is not the step's memory
        if self.device.type == "cuda" and i is not None:
            self.events[i] = torch.cuda.Event()
            self.events[i].record()
        views = [dev[o:o + a.nbytes].view(dtype) for o, (a, dtype) in zip(offsets, typed)]
        return views[:len(longs)], views[len(longs):-1], views[-1]

    @staticmethod
    def packed_size(longs: list, ints: list, flags: np.ndarray) -> int:
        """Bytes `to_device` packs these arrays into (the size of an `out` buffer for them)."""
        return _layout([a for a, _ in _typed(longs, ints, flags)])[1]
