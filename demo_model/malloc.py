"""Keep freed memory inside the process, so large tensors do not page-fault their memory in again.

glibc's malloc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and
unmaps it on free. A training step of the demo model allocates tensors of 10-80 MB (the layerwise keys of
every window, their gradients, a batch's frames), so each one is faulted in page by page and zeroed by the
kernel, every step: on the 2-core machine the copies and fills into them ran at about 1 GB/s. With mmap
disabled and the heap not trimmed, freed memory is reused from the heap instead. Where memory lies does not
change what is computed: training gives the same weights bit for bit (tests/train/test_malloc.py);
bench/train_speed_ab.py measures the time. VXL_KEEP_FREED_MEMORY=0 in the environment turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1       # mallopt parameters (glibc's malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30    # free memory at the heap's top is returned to the system only beyond 1 GiB

_applied = False


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve every allocation from its heap (no mmap) and to keep freed heap memory
    (up to TRIM_THRESHOLD at its top), for the rest of this process and processes forked from it. Returns
    whether it applies: False where the C library is not glibc or VXL_KEEP_FREED_MEMORY=0 (nothing is
    changed then)."""
    global _applied
    if _applied:
        return True
    if os.environ.get("VXL_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt, _ = libc.mallopt, libc.gnu_get_libc_version
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))   # 1 on success
    return _applied
