"""The Pareto front of (latency, cost): the configurations nothing else beats on both axes.

A capacity planner reads a sweep as a trade-off; the front is the short list worth arguing
about, everything above it is dominated (another point is at least as fast and as cheap).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> list[int]:
    """Indices of the points not dominated when both x and y are minimised, sorted by x.

    Points with a missing (None/NaN) coordinate never enter the front; of identical points only
    the first is kept, so the front has no duplicates."""
    idx = [i for i, (x, y) in enumerate(zip(xs, ys, strict=True)) if _finite(x) and _finite(y)]
    idx.sort(key=lambda i: (xs[i], ys[i], i))
    front: list[int] = []
    best_y = math.inf
    for i in idx:
        if ys[i] < best_y:
            front.append(i)
            best_y = ys[i]
    return front


def _finite(v: float | None) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)
