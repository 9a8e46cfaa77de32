"""The VST interleave rule of Video-XL (DESIGN section 1, step 2), its one home: window lengths over a
visual span and, per window, which slots are VSTs. Model semantics, below every layer that uses it (the
kernels' reference, the engine's sequences and streams, the planner, benchmarks); the Triton kernels
compute the same slots from the same formula in their index arithmetic (`vxl.kernels.interleave`).

    r = 4, rem = 0, L = 10:   slots  R R R R V R R R R V R R     (nb = 2, rem' = 2)
    r = 4, rem = 2, L = 6:    slots  R R V R R R R V             (nb = 2, rem' = 0)
"""
from __future__ import annotations

import numpy as np
import torch


def is_vst_slot(slots, ratio: int, rem: int):
    """THE rule: slot j of a window (carrying remainder `rem` in) is a VST iff j % (ratio + 1) == ratio - rem.
    `slots`: an int tensor or numpy array of slot indices; returns the bool mask of the same kind."""
    return slots % (ratio + 1) == ratio - rem


def window_lengths(num_visual: int, window: int) -> list[int]:
    """Consecutive windows of `window` raw tokens; the last one is cut at the span's end."""
    return [min(window, num_visual - start) for start in range(0, num_visual, window)]


def interleave(num_raw: int, ratio: int, rem: int) -> tuple[torch.Tensor, int]:
    """is_vst [num_raw + nb] (bool) for one window, and the remainder carried to the next window.

    nb = (num_raw + rem) // ratio VSTs; slot j is a VST iff j % (ratio + 1) == ratio - rem.
    """
    if ratio < 1:
        raise ValueError(f"compression ratio must be >= 1, got {ratio}")
    num_vst = (num_raw + rem) // ratio
    slots = torch.arange(num_raw + num_vst)
    is_vst = is_vst_slot(slots, ratio, rem)
    assert int(is_vst.sum()) == num_vst, (num_raw, ratio, rem)
    return is_vst, (num_raw + rem) % ratio


def vst_mask(num_raw: int, ratio: int, rem: int) -> np.ndarray:
    """is_vst [num_raw + nb] (bool, numpy) of one window: `interleave`'s rule on the host."""
    num_vst = (num_raw + rem) // ratio
    return is_vst_slot(np.arange(num_raw + num_vst), ratio, rem)


def count_vst(num_visual: int, window: int, ratio: int) -> int:
    """VSTs kept after a whole visual span (sum of nb over its windows)."""
    total, rem = 0, 0
    for length in window_lengths(num_visual, window):
        total += (length + rem) // ratio
        rem = (length + rem) % ratio
    return total


def max_usable_ratio(num_visual: int) -> int:
    """Largest ratio that keeps at least one VST. The remainder carries across windows, so a span of V
    tokens keeps exactly V // r VSTs whatever the window: the answer is V."""
    return num_visual
