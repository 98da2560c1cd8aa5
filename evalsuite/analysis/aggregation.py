"""Task and subject scores from per-document values: the one aggregation.

Numbers only (numpy, no lm-eval): the read side merges sharded runs with it. The runner calls it when a task finishes, and :mod:`evalsuite.store.run_views` calls it when a sharded
run is merged at read time, so a merged run's scores are the unsharded run's to the bit: the
documents are always aggregated in the same canonical order (subjects by name, then v1
evaluation position).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evalsuite.store.records import ScoreRecord
from evalsuite.store.status import TaskStatus
from evalsuite.tasks.catalogue import TaskSpec


def canonical_order(samples: Any) -> Any:
    """A samples DataFrame in the order an unsharded run aggregates it."""
    if samples.empty:
        return samples.reset_index(drop=True)
    order = samples.assign(
        _has_group=samples["subtask"].notna(), _group=samples["subtask"].fillna("")
    ).sort_values(["_has_group", "_group", "eval_position"], kind="stable")
    return order.drop(columns=["_has_group", "_group"]).reset_index(drop=True)


def score_records(run_id: str, model: str, spec: TaskSpec, values: Sequence[float], groups: Sequence[str | None],
                  *, n_total: int | None, subjects: Mapping[str, int] | None = None) -> list[ScoreRecord]:
    """The task's score record, plus one per subject for grouped tasks (MMLU).

    ``values``/``groups`` are the documents' metric values and subjects in canonical order;
    ``subjects`` maps every subject of the task to its document count, so a subject with no
    evaluated document is listed as ``missing`` rather than silently dropped.
    """
    value, stderr = aggregate(spec, values, groups)
    out = [ScoreRecord(run_id, model, spec.name, None, spec.metric, value, stderr, len(values), n_total, TaskStatus.OK, None)]
    if spec.group_by:
        for subject, total in sorted((subjects or {}).items()):
            unit_values = [v for v, g in zip(values, groups, strict=True) if g == subject]
            mean, err = mean_stderr(unit_values)
            out.append(ScoreRecord(run_id, model, spec.name, subject, spec.metric, mean, err, len(unit_values), total,
                                   TaskStatus.OK if unit_values else TaskStatus.MISSING, None))
    return out


def aggregate(spec: TaskSpec, values: Sequence[float], groups: Sequence[str | None]) -> tuple[float, float]:
    """The task score and its standard error from per-document values.

    Plain tasks: the mean and the sample standard error. MMLU (``mean_of_groups``): the plain
    mean of per-subject means, with the standard error of that mean of independent subjects.
    """
    if not spec.macro_averaged:
        return mean_stderr(values)
    return macro_mean_stderr(values, groups)


def macro_mean_stderr(values: Sequence[float], groups: Sequence[str | None]) -> tuple[float, float]:
    """The plain mean of the groups' means, and ``sqrt(sum of the groups' squared standard errors)
    / number of groups`` (groups of one document have no error and add none)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    by_group: dict[str | None, list[float]] = {}
    for value, group in zip(arr, groups, strict=True):
        by_group.setdefault(group, []).append(value)
    means = [float(np.mean(v)) for v in by_group.values()]
    errors = [_stderr(np.asarray(v)) for v in by_group.values()]
    stderr = math.sqrt(sum(e * e for e in errors if not math.isnan(e))) / len(means)
    return float(np.mean(means)), stderr


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """The mean and its sample standard error (NaN for the error of a single value)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), _stderr(arr)


def _stderr(arr: np.ndarray) -> float:
    return float(arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else math.nan
