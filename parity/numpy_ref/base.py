"""Helpers every layer family shares: a (h, w) pair and a scalar in an array's dtype."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pair", "typed"]


def pair(v: int | Sequence[int]) -> tuple[int, int]:
    """``(h, w)`` from one value for both axes or a sequence of one or two."""
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    v = tuple(int(i) for i in v)
    if len(v) == 1:
        return v[0], v[0]
    if len(v) != 2:
        raise ValueError(f"expected one or two values, got {v}")
    return v  # type: ignore[return-value]


def typed(x: np.ndarray, v: float) -> np.generic:
    """``v`` as a scalar of ``x``'s dtype, so that arithmetic with it stays in that dtype."""
    return x.dtype.type(v)
