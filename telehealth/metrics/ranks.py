"""Percentiles by nearest rank, shared by the summary and its breakdowns."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (the smallest value with at least q of the values at or below
    it); None for no values. Exact and reproducible, unlike interpolation."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)), 1) - 1]
