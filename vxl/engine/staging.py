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
            self.events[i].synchronize()    # the copy of two steps ago: long done unless the host is far ahead
            self.events[i] = None
        buf = self.buffers[i]
        if buf is None or buf.numel() < nbytes:
            size = max(nbytes, 2 * (buf.numel() if buf is not None else 0), 4096)
            buf = self.buffers[i] = torch.empty(size, dtype=torch.uint8, pin_memory=self.pinned)
            self.num_grows += 1
        return i, buf

    def to_device(self, longs: list, ints: list, flags: np.ndarray):
        """The step's int64 arrays, int32 arrays and bool flags on the device, as typed views of one buffer
        copied once. -> (longs, ints, flags) as tensors."""
        typed = ([(np.asarray(a, dtype=np.int64), torch.int64) for a in longs]
                 + [(np.asarray(a, dtype=np.int32), torch.int32) for a in ints]
                 + [(np.asarray(flags, dtype=np.bool_), torch.bool)])
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
        if self.device.type == "cuda":
            dev = host.to(self.device, non_blocking=True)
            if i is not None:
                self.events[i] = torch.cuda.Event()
                self.events[i].record()
        else:
            dev = host.clone() if self.persistent else host     # a reused host buffer is not the step's memory
        out = [dev[o:o + a.nbytes].view(dtype) for o, (a, dtype) in zip(offsets, typed)]
        return out[:len(longs)], out[len(longs):-1], out[-1]
