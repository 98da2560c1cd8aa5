"""Task and subject scores from per-document values: the one aggregation.

The runner calls it when a task finishes, and :mod:`evalsuite.results` calls it when a sharded
run is merged at read time, so a merged run's scores are the unsharded run's to the bit: the
documents are always aggregated in the same canonical order (subjects by name, then v1
evaluation position).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .records import ScoreRecord
from .tasks import TaskSpec, aggregate, mean_stderr


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
    out = [ScoreRecord(run_id, model, spec.name, None, spec.metric, value, stderr, len(values), n_total, "ok", None)]
    if spec.group_by:
        for subject, total in sorted((subjects or {}).items()):
            unit_values = [v for v, g in zip(values, groups, strict=True) if g == subject]
            mean, err = mean_stderr(unit_values)
            out.append(ScoreRecord(run_id, model, spec.name, subject, spec.metric, mean, err, len(unit_values), total,
                                   "ok" if unit_values else "missing", None))
    return out
