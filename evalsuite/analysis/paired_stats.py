"""Paired statistics between two runs on the documents both evaluated: one implementation for
``compare``, ``nightly`` and the HTML report, so they can never disagree on the same pair of runs.

Both runs answer the same documents, so a difference is judged against the per-document
disagreements (matched on task, subtask and doc_index), which is far more sensitive than
comparing two independent means. Tasks scored 0/1 per document (ARC, HellaSwag, Winogrande,
GSM8K) use McNemar's exact test (a binomial test on the discordant pairs); TruthfulQA's mc2 (a
probability per document) and MMLU's mean of subject means use a paired bootstrap, resampled
within each subject for MMLU so the interval is about the number the leaderboard shows. The 95%
interval is always the paired bootstrap's percentile interval. Seeds are fixed per task, so the
same pair of runs always gives the same numbers.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

BOOTSTRAP_SAMPLES = 2000
SEED = 20261126
#: Metrics whose per-document values are 0/1 (McNemar applies).
BINARY_METRICS = {"acc", "acc_norm", "exact_match"}
#: Below this many shared documents no difference is called significant: a bootstrap over 3
#: documents that all differ gives [+100, +100].
MIN_SHARED = 10
KEY = ["subtask", "doc_index"]


def grouped_task(task: str, rows: Any) -> bool:
    """Whether ``task``'s documents are resampled within their subjects: what its YAML says
    (``aggregate: mean_of_groups``, MMLU), the one answer ``compare``, ``nightly`` and the report
    share; for a stored task no task file defines, whether its rows (``rows``: samples with
    ``task`` and ``subtask``) carry more than one subject."""
    from evalsuite.tasks.catalogue import macro_averaged

    known = macro_averaged(task)
    if known is not None:
        return known
    return bool(rows.loc[rows["task"] == task, "subtask"].nunique() > 1)


@dataclass(frozen=True)
class Paired:
    """Candidate minus baseline on the shared documents of one task; scores and deltas x100."""

    task: str
    metric: str | None
    test: str  # mcnemar | bootstrap
    n: int  # shared documents
    baseline: float
    candidate: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    prompts_differ: int  # shared documents asked with different prompts (not comparable)
    n_baseline: int  # documents of the task in each run, shared or not
    n_candidate: int

    def significant(self, alpha: float = 0.05) -> bool:
        return self.n >= MIN_SHARED and not math.isnan(self.p_value) and self.p_value < alpha


def pair(baseline: Any, candidate: Any, task: str) -> Any:
    """The shared documents of ``task``: one row each, with ``_b``/``_c`` value and prompt hash."""
    cols = [*KEY, "value", "prompt_hash"]
    b = baseline.loc[baseline["task"] == task, cols]
    c = candidate.loc[candidate["task"] == task, cols]
    b = b.assign(subtask=b["subtask"].fillna(""))
    c = c.assign(subtask=c["subtask"].fillna(""))
    return b.merge(c, on=KEY, suffixes=("_b", "_c"))


def paired(baseline: Any, candidate: Any, task: str, *, metric: str | None, grouped: bool) -> Paired | None:
    """The paired comparison of two per-sample frames on ``task``, or None with no shared document."""
    joined = pair(baseline, candidate, task)
    n_b = int((baseline["task"] == task).sum())
    n_c = int((candidate["task"] == task).sum())
    if joined.empty:
        return None
    x = joined["value_b"].to_numpy(dtype=float)
    y = joined["value_c"].to_numpy(dtype=float)
    groups = joined["subtask"].to_numpy() if grouped else None
    rng = np.random.default_rng([SEED, zlib.crc32(task.encode())])
    boot = bootstrap_means(y - x, groups, rng)
    score_b, score_c = _score(x, groups), _score(y, groups)
    delta = score_c - score_b
    binary = not grouped and metric in BINARY_METRICS and np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all()
    if binary:
        p, test = mcnemar_exact(x, y), "mcnemar"
    else:
        p = float((1 + np.sum(np.abs(boot - delta) >= abs(delta))) / (len(boot) + 1)) if delta else 1.0
        test = "bootstrap"
    lo, hi = (np.percentile(boot, [2.5, 97.5]) if len(joined) > 1 else (math.nan, math.nan))
    differ = int((joined["prompt_hash_b"] != joined["prompt_hash_c"]).sum())
    return Paired(task, metric, test, len(joined), 100 * score_b, 100 * score_c, 100 * delta, 100 * float(lo),
                  100 * float(hi), float(p), differ, n_b, n_c)


def mcnemar_exact(x: np.ndarray, y: np.ndarray) -> float:
    """McNemar's exact p-value: a two-sided binomial test on the discordant pairs."""
    from scipy.stats import binomtest

    worse = int(((x == 1) & (y == 0)).sum())
    better = int(((x == 0) & (y == 1)).sum())
    return float(binomtest(better, worse + better, 0.5).pvalue) if worse + better else 1.0


def _score(values: np.ndarray, groups: np.ndarray | None) -> float:
    if groups is None:
        return float(values.mean())
    return float(np.mean([values[groups == g].mean() for g in np.unique(groups)]))


def bootstrap_means(diff: np.ndarray, groups: np.ndarray | None, rng: np.random.Generator,
                    samples: int = BOOTSTRAP_SAMPLES) -> np.ndarray:
    """Bootstrap replicates of the mean difference (of subject means when ``groups`` is given)."""
    if groups is None:
        return _boot_means(diff, rng, samples)
    return np.mean([_boot_means(diff[groups == g], rng, samples) for g in np.unique(groups)], axis=0)


def _boot_means(values: np.ndarray, rng: np.random.Generator, samples: int) -> np.ndarray:
    n = len(values)
    out = np.empty(samples)
    step = max(1, 2_000_000 // max(n, 1))
    for start in range(0, samples, step):
        rows = min(step, samples - start)
        out[start:start + rows] = values[rng.integers(0, n, size=(rows, n))].mean(axis=1)
    return out
