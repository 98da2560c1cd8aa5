"""Paired differences between two runs, with bootstrap 95% intervals.

Two models evaluated on the same documents are compared document by document: resampling
the *shared* documents (matched on task, subtask and doc_index) keeps the pairing, so the
interval reflects how much the difference depends on which documents happened to be in the
test set, which is far tighter than comparing two independent intervals. Grouped tasks
(MMLU: the mean of subject means) are resampled within each subject and aggregated the same
way the task score is, so the interval is about the number the leaderboard shows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

KEY = ["task", "subtask", "doc_index"]
#: Below this many shared documents a bootstrap interval is degenerate (3 documents that all
#: differ give [+100, +100]), so no difference is called significant.
MIN_SHARED = 10


@dataclass(frozen=True)
class PairedDelta:
    """Candidate minus baseline on the shared documents of one task, in points (x100)."""

    task: str
    n_shared: int
    baseline: float
    candidate: float
    delta: float
    low: float
    high: float
    prompts_differ: int  # shared documents whose prompt hashes differ (not comparable)

    @property
    def significant(self) -> bool:
        """True when the 95% interval excludes zero."""
        return self.n_shared >= MIN_SHARED and not math.isnan(self.low) and (self.low > 0 or self.high < 0)


def paired(baseline: Any, candidate: Any, task: str, *, grouped: bool, resamples: int = 2000,
           seed: int = 0) -> PairedDelta | None:
    """The paired difference on ``task`` between two per-sample frames, or None if no shared docs."""
    a = baseline[baseline["task"] == task]
    b = candidate[candidate["task"] == task]
    if a.empty or b.empty:
        return None
    cols = [*KEY, "value", "prompt_hash"]
    a = a[cols].assign(subtask=a["subtask"].fillna(""))
    b = b[cols].assign(subtask=b["subtask"].fillna(""))
    joined = a.merge(b, on=KEY, suffixes=("_a", "_b"))
    if joined.empty:
        return None
    differ = int((joined["prompt_hash_a"] != joined["prompt_hash_b"]).sum())
    groups = joined["subtask"].to_numpy() if grouped else np.zeros(len(joined), dtype=int)
    va = joined["value_a"].to_numpy(dtype=float)
    vb = joined["value_b"].to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(groups == g) for g in dict.fromkeys(groups.tolist())]
    point_a = float(np.mean([va[idx].mean() for idx in strata]))
    point_b = float(np.mean([vb[idx].mean() for idx in strata]))
    diff = vb - va
    boot = np.zeros(resamples)
    for idx in strata:  # mean of per-stratum resampled means, as the task score is aggregated
        draws = rng.integers(0, idx.size, size=(resamples, idx.size))
        boot += diff[idx][draws].mean(axis=1)
    boot /= len(strata)
    low, high = (np.percentile(boot, [2.5, 97.5]) if len(joined) > 1 else (math.nan, math.nan))
    return PairedDelta(task, len(joined), 100 * point_a, 100 * point_b, 100 * (point_b - point_a),
                       100 * float(low), 100 * float(high), differ)
