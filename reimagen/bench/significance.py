"""Significance of a bench rate: the Wilson interval of a proportion and a one-sided Fisher
exact test of two rates (the unseen-tier comparison of
:func:`reimagen.bench.tables.interval_table`).
"""

from __future__ import annotations

import math

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z=1.96): unlike the normal
    approximation it stays inside [0, 1] and is informative at 0 or 1 successes."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def fisher_greater(hits: int, n: int, base_hits: int, base_n: int) -> float:
    """One-sided Fisher exact test: the probability, were both rows one rate, that the first
    row gets ``hits`` or more of the pooled successes (small: the first row is higher)."""
    total, pooled = n + base_n, hits + base_hits
    denominator = math.comb(total, pooled)
    tail = sum(
        math.comb(n, x) * math.comb(base_n, pooled - x) for x in range(hits, min(n, pooled) + 1)
    )
    return tail / denominator
