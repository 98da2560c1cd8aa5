"""95% intervals of a score that stay honest on a handful of documents.

Why not ``value ± 1.96 x stderr``: on 3 documents scored 0/3 the sample standard error is 0,
so that interval has zero width and claims certainty; on 3/3 it does the same at the top; and
near 0 or 1 it runs past the possible range. So:

* a 0/1 metric per document (``acc``, ``acc_norm``, GSM8K's exact match): the Wilson score
  interval of ``value x n`` successes in ``n`` documents. It never has zero width, stays in
  [0, 1] and keeps close to its nominal 95% from n = 1 on. MMLU's score is the mean of its
  subject means; with ``--limit`` (equal documents per subject) that is the plain accuracy
  over all its documents, and otherwise close to it, so the same interval is used;
* a value in [0, 1] per document (TruthfulQA's mc2): Student's t interval, mean ± t(n-1) x
  stderr (t = 4.3 at n = 3, not 1.96), clipped to [0, 1]; one document has no interval;
* H6, the plain mean of the six task scores, from documents that differ between tasks (the
  tasks are independent): the half-widths below and above combine as a mean of independent
  terms, ``sqrt(sum of squares) / tasks``, each side on its own since Wilson intervals are
  not symmetric.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

#: Metrics whose per-document value is 0 or 1.
BINARY_METRICS = frozenset({"acc", "acc_norm", "exact_match"})
Z95 = 1.959963984540054


def wilson(share: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``share x n`` successes in ``n`` trials (NaNs for n = 0)."""
    if n <= 0 or math.isnan(share):
        return math.nan, math.nan
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, min(share, centre - half)), min(1.0, max(share, centre + half))  # rounding at 0 and 1


def t_interval(mean: float, stderr: float, n: int) -> tuple[float, float]:
    """Student's t interval of a mean of ``n`` values in [0, 1], clipped to [0, 1] (NaNs for n < 2)."""
    if n < 2 or math.isnan(mean) or math.isnan(stderr):
        return math.nan, math.nan
    from scipy.stats import t

    half = float(t.ppf(0.975, n - 1)) * stderr
    return max(0.0, mean - half), min(1.0, mean + half)


def score_interval(metric: str | None, value: float, stderr: float, n: int) -> tuple[float, float]:
    """The 95% interval of one task's score (fractions, not points; see the module docstring)."""
    if metric in BINARY_METRICS:
        return wilson(value, n)
    return t_interval(value, stderr, n)


def mean_interval(values: Sequence[float], intervals: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The interval of the plain mean of independent scores from their own intervals (NaNs if any lacks one)."""
    if not values or any(math.isnan(lo) or math.isnan(hi) for lo, hi in intervals):
        return math.nan, math.nan
    k = len(values)
    mean = sum(values) / k
    below = math.sqrt(sum((v - lo) ** 2 for v, (lo, _) in zip(values, intervals, strict=True))) / k
    above = math.sqrt(sum((hi - v) ** 2 for v, (_, hi) in zip(values, intervals, strict=True))) / k
    return mean - below, mean + above


__all__ = ["BINARY_METRICS", "wilson", "t_interval", "score_interval", "mean_interval"]
