"""Argument checks shared by every layer, so a bad value gets the same words wherever it is given: an int
(Python or numpy, never a bool) at least some bound, a finite real number."""
from __future__ import annotations

import math
import numbers


def is_int(value) -> bool:
    """An integer (Python or numpy), not a bool: 1.9 or "12" are never truncated or parsed."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def int_at_least(name: str, value, low: int, *, optional: bool = False, error: type[Exception] = ValueError,
                 note: str = "") -> int | None:
    """`value` as an int >= `low` (None passes when `optional`); else `error` naming `name` and the value."""
    if value is None and optional:
        return None
    if not is_int(value) or value < low:
        raise error(f"{name} must be {'None or ' if optional else ''}an int >= {low}{note}, got {value!r}")
    return int(value)


def finite_real(name: str, value, error: type[Exception] = ValueError) -> float:
    """`value` as a finite float (ints included, bools not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise error(f"{name} must be finite, got {value!r}")
    return float(value)
