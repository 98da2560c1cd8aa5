"""Splitting one evaluation over N machines, and merging the pieces back into one run.

Shard ``I/N`` evaluates the documents at positions ``p % N == I`` of each task's v1 order
(after the ``--limit`` prefix), so the N shards cover every document exactly once and every
shard gets a similar mix of MMLU subjects and prompt lengths. Shards that share a run id are
one run: each writes its own files (``<run>__<model>__<task>__shardIofN.parquet``), so shards
never overwrite each other and a rerun of a shard replaces only its own file.

Task scores are not stored for a sharded run: the per-shard score rows carry
``status="shard"`` (which plain readers skip as not-a-score) plus the metadata a merge needs
(metric, documents per task and subject, failures). :func:`merge` recomputes the scores at
read time from all the run's samples with :mod:`evalsuite.analysis.aggregation`, the runner's own.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from evalsuite.store import records
from evalsuite.errors import EvalsuiteError
from evalsuite.store.records import RunRecord
from evalsuite.store.parquet_store import SHARD_PART, ResultsStore
from evalsuite.store.status import TaskStatus
from evalsuite.tasks import load_spec

T = TypeVar("T")
#: Status of a per-shard score row: metadata for the merge, never a score to show.
SHARD_STATUS = TaskStatus.SHARD
#: Run-row fields every shard of a model must agree on, or the merge would mix two evaluations.
SAME_ACROSS_SHARDS = ("limit", "weights_hash", "model_files_hash", "revision", "dtype", "backend")
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; a one-line error otherwise."""
    match = _SPEC.match(str(text))
    if not match:
        raise EvalsuiteError(f"--shard must look like I/N (e.g. 0/4), got '{text}'")
    index, count = int(match[1]), int(match[2])
    check_shard((index, count))
    return index, count


def _part_match(part: str) -> re.Match[str]:
    """The stored ``part`` of a shard's rows, as written by :func:`shard_part`."""
    match = SHARD_PART.search("__" + part)
    assert match is not None  # only shard_part() writes a non-empty part
    return match


def check_shard(shard: tuple[int, int]) -> None:
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise EvalsuiteError(f"--shard {index}/{count} is out of range; shards of N are numbered 0 to N-1")


def shard_part(shard: tuple[int, int]) -> str:
    """The file-name suffix of a shard's files in the store."""
    return f"shard{shard[0]}of{shard[1]}"


def select(items: Sequence[T], shard: tuple[int, int] | None) -> list[T]:
    """The items at positions ``p % N == I``: a deterministic, balanced slice of the v1 order."""
    if shard is None:
        return list(items)
    index, count = shard
    return [item for position, item in enumerate(items) if position % count == index]


# -- merging (called by evalsuite.store.run_views, the one read path) ------------------------------
@dataclass
class Merged:
    """One model's scores in a run, shards merged, and what keeps the merge from being complete."""

    scores: Any  # DataFrame in the ScoreRecord layout, never a ``shard`` row
    count: int | None = None  # N of the run's shards (None: not sharded)
    missing: dict[str, list[int]] = field(default_factory=dict)  # task -> absent shard indices
    notes: list[str] = field(default_factory=list)


def merge(store: ResultsStore, run_id: str, model: str, parts: Sequence[RunRecord], scores: Any) -> Merged:
    """Score ``model``'s sharded tasks in ``run_id`` from all shards' samples.

    ``scores`` are the model's stored score rows of the run (with the store's ``part`` column).
    Unsharded tasks keep their stored rows. A sharded task whose shards are all present gets
    exactly the rows an unsharded run would have written (same aggregation, same order); one
    with shards absent gets an ``incomplete`` row. Mixed shard counts, documents scored by two
    shards, or shards evaluated with different settings are errors.
    """
    import pandas as pd

    plain = scores[scores["part"] == ""].drop(columns=["part"]).reset_index(drop=True)
    sharded = scores[scores["part"] != ""]
    if sharded.empty:
        return Merged(plain)
    counts = {int(_part_match(p)["count"]) for p in sharded["part"]}
    if len(counts) > 1:
        raise EvalsuiteError(
            f"run {run_id} mixes shard counts {sorted(counts)}; rerun every shard with the same N "
            f"(or move the stray files out of {store.root}/samples and {store.root}/scores)"
        )
    count = counts.pop()
    _check_same_settings(run_id, model, parts)
    samples = store.read("samples", run_id=run_id, model=model)
    rows: list[dict[str, Any]] = []
    missing: dict[str, list[int]] = {}
    for task, task_rows in sharded.groupby("task", sort=True):
        same = plain["task"] == task
        if (same & (plain["status"] != TaskStatus.MISSING)).any():
            raise EvalsuiteError(f"run {run_id} has both unsharded and sharded results for {model} {task}; "
                                 f"use a new --run-id for a sharded rerun")
        plain = plain[~same]  # a machine without the task's data: its shard shows as missing below
        present = {int(_part_match(p)["index"]) for p in task_rows["part"]}
        absent = sorted(set(range(count)) - present)
        if absent:
            missing[str(task)] = absent
        task_samples = samples[(samples["task"] == task) & (samples["part"] != "")]
        rows.extend(_merged_rows(run_id, model, str(task), task_rows, task_samples, count, absent))
    frame = pd.concat([plain, pd.DataFrame(rows, columns=list(plain.columns))], ignore_index=True)
    notes = [f"{model} {task}: not merged, shard(s) {', '.join(f'{i}/{count}' for i in absent)} not in the store "
             f"yet; run them with --run-id {run_id} (or copy their results here)" for task, absent in missing.items()]
    return Merged(frame, count, missing, notes)


def _check_same_settings(run_id: str, model: str, parts: Sequence[RunRecord]) -> None:
    """Shards of one model must share --limit, weights, dtype, backend and each task's config."""
    seen: dict[str, set[str]] = {}
    for part in parts:
        for column in SAME_ACROSS_SHARDS:
            seen.setdefault(column, set()).add(str(getattr(part, column)))
        for task, digest in (part.task_config_hashes or {}).items():
            seen.setdefault(f"{task} config", set()).add(digest)
    for what, values in seen.items():
        if len(values) > 1:
            raise EvalsuiteError(
                f"run {run_id}: the shards of {model} differ in {what} ({', '.join(sorted(values))}); "
                f"rerun the odd shards with the same settings and --run-id {run_id}"
            )


def _merged_rows(run_id: str, model: str, task: str, score_rows: Any, samples: Any, count: int,
                 absent: list[int]) -> list[dict[str, Any]]:
    from evalsuite.analysis.aggregation import canonical_order, score_records

    heads = score_rows[score_rows["subtask"].isna()]
    head = (heads if len(heads) else score_rows).iloc[0]
    base = {"run_id": run_id, "model": model, "task": task, "subtask": None, "metric": head["metric"],
            "n_total": head["n_total"]}
    failed = heads[~heads["status"].isin([SHARD_STATUS, TaskStatus.OK])]
    if len(failed):
        first = failed.iloc[0]
        return [{**base, "value": math.nan, "stderr": math.nan, "n": 0, "status": first["status"],
                 "error": first["error"]}]
    if absent:
        shards = ", ".join(f"{i}/{count}" for i in absent)
        return [{**base, "value": math.nan, "stderr": math.nan, "n": 0, "status": TaskStatus.INCOMPLETE,
                 "error": f"shard(s) {shards} missing; run them with --run-id {run_id}"}]
    keys = [(None if isinstance(s, float) or s is None else s, int(d))
            for s, d in zip(samples["subtask"], samples["doc_index"])]
    if len(set(keys)) < len(keys):
        raise EvalsuiteError(f"run {run_id}: {model} {task} has documents scored by two shards; "
                             f"rerun it with a new --run-id")
    ordered = canonical_order(samples)
    subjects = {str(r["subtask"]): int(r["n_total"]) for r in score_rows[score_rows["subtask"].notna()]
                .drop_duplicates("subtask").to_dict("records")}
    groups = [None if not isinstance(s, str) else s for s in ordered["subtask"]]
    made = score_records(run_id, model, load_spec(task), ordered["value"].tolist(), groups,
                         n_total=None if head["n_total"] is None or math.isnan(head["n_total"]) else int(head["n_total"]),
                         subjects=subjects)
    merged = [records.as_row("scores", r) for r in made]
    merged[0].update(combine_audits(heads.to_dict("records")))  # the shards' audits, summed
    return merged


def combine_audits(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The audit fields of a task merged from its shards' rows (sums, the largest |Δ|, the worst
    status; :mod:`evalsuite.run.audit`). Nullable columns read back as None, NaN or pandas' NA."""
    def missing(value: Any) -> bool:
        try:
            return value is None or bool(value != value)
        except TypeError:  # pandas.NA: its comparisons are NA
            return True

    statuses = [r.get("audit_status") for r in rows if isinstance(r.get("audit_status"), str)]
    if not statuses:
        return {}
    status = next((s for s in ("rerun", "not audited", "not applicable") if s in statuses), "agree")
    diffs = [float(r["audit_max_abs_diff"]) for r in rows if not missing(r.get("audit_max_abs_diff"))]
    notes = [r["audit_note"] for r in rows if isinstance(r.get("audit_note"), str)]
    count = lambda name: sum(0 if missing(r.get(name)) else int(r[name]) for r in rows)  # noqa: E731
    return {"audit_status": status, "audit_n": count("audit_n"), "audit_agree": count("audit_agree"),
            "audit_max_abs_diff": max(diffs) if diffs else None, "audit_note": "; ".join(notes) or None}


# -- writing -------------------------------------------------------------------------------
def shard_score_rows(rows: list[records.ScoreRecord]) -> list[records.ScoreRecord]:
    """A shard's score records marked as such: readers never show them, merges read their metadata."""
    return [replace(row, status=SHARD_STATUS) if row.status == TaskStatus.OK else row for row in rows]
