"""What counts as a whole number and as a number in an argument, in one place.

A bool is neither (``True`` was version 1, or a count of 1), and NaN is not a number (a NaN time
panics inside Qdrant Edge). numpy's integers and floats count as Python's do.
"""

from __future__ import annotations

import math
import numbers


def is_whole(value: object) -> bool:
    """An integer, not a bool: ``3`` and ``numpy.int64(3)``; not ``True``, ``3.0`` or ``"3"``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A real number, not a bool and not NaN: ``3``, ``2.5``, ``float("inf")``; not ``True`` or ``"3"``."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
