"""Splitting one evaluation over N machines, and merging the pieces back into one run.

Shard ``I/N`` evaluates the documents at positions ``p % N == I`` of each task's v1 order
(after the ``--limit`` prefix), so the N shards cover every document exactly once and every
shard gets a similar mix of MMLU subjects and prompt lengths. Shards that share a run id are
one run: each writes its own files (``<run>__<model>__<task>__shardIofN.parquet``), so shards
never overwrite each other and a rerun of a shard replaces only its own file.

Task scores are not stored for a sharded run: the per-shard score rows carry
``status="shard"`` (which plain readers skip as not-a-score) plus the metadata a merge needs
(metric, documents per task and subject, failures). :func:`merge_run` recomputes the scores at
read time from all the run's samples with the same aggregation as ``runner.score_rows``.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import EvalsuiteError, StoreError
from .store import ResultsStore
from .tasks import aggregate, load_spec, mean_stderr

T = TypeVar("T")
#: Status of a per-shard score row: metadata for the merge, never a score to show.
SHARD_STATUS = "shard"
_PART = re.compile(r"__shard(?P<index>\d+)of(?P<count>\d+)$")
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; a one-line error otherwise."""
    match = _SPEC.match(str(text))
    if not match:
        raise EvalsuiteError(f"--shard must look like I/N (e.g. 0/4), got '{text}'")
    index, count = int(match[1]), int(match[2])
    check_shard((index, count))
    return index, count


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


# -- merging -------------------------------------------------------------------------------
@dataclass
class ShardFile:
    model: str
    task: str
    index: int
    count: int
    samples: Any  # DataFrame
    scores: Any  # DataFrame


@dataclass
class MergedRun:
    """A run's scores (sharded tasks merged) and what stops the merge from being complete."""

    run_id: str
    scores: Any  # DataFrame in the scores schema
    missing_shards: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (model, task) -> I
    shard_count: int | None = None

    @property
    def complete(self) -> bool:
        return not self.missing_shards

    def table(self) -> str:
        """The leaderboard table of the merged run, with a note per (model, task) still missing shards."""
        from .leaderboard import format_table, rows_from_scores

        return "\n".join([format_table(rows_from_scores(self.scores)), *self.notes()])

    def notes(self) -> list[str]:
        out = []
        for (model, task), missing in sorted(self.missing_shards.items()):
            shards = ", ".join(f"{i}/{self.shard_count}" for i in missing)
            out.append(f"{model} {task}: not merged, shard(s) {shards} not in the store yet; run them with "
                       f"--run-id {self.run_id} (or copy their results here)")
        return out


def run_scores(store: ResultsStore, run_id: str) -> Any:
    """The run's score rows, shards merged: what a reader should show for ``run_id``."""
    return merge_run(store, run_id).scores


def all_scores(store: ResultsStore) -> Any:
    """Every stored score row, with each sharded run's shard rows replaced by its merge."""
    import pandas as pd

    scores = store.scores()
    sharded = sorted(set(scores.loc[scores["status"] == SHARD_STATUS, "run_id"])) if len(scores) else []
    if not sharded:
        return scores
    kept = scores[~scores["run_id"].isin(sharded)]
    merged = [merge_run(store, run_id).scores for run_id in sharded]
    return pd.concat([kept, *merged], ignore_index=True)


def merge_run(store: ResultsStore, run_id: str) -> MergedRun:
    """Recompute ``run_id``'s task scores from all its shards' samples.

    Unsharded (model, task) pairs keep their stored rows. A sharded pair whose shards are all
    present gets the rows ``runner.score_rows`` would have written for an unsharded run; one
    with shards missing gets a row with status ``incomplete`` (never a partial score shown as
    a score). Shard counts that differ within a run, or a document scored twice, are errors.
    """
    import pandas as pd

    plain = _plain_scores(store, run_id)
    shards = _read_shards(store, run_id)
    if not shards:
        return MergedRun(run_id, plain)
    counts = {f.count for f in shards}
    if len(counts) > 1:
        raise EvalsuiteError(
            f"run {run_id} mixes shard counts {sorted(counts)}; rerun every shard with the same N "
            f"(or move the stray files out of {store.root}/samples and {store.root}/scores)"
        )
    count = counts.pop()
    _check_same_settings(store, run_id)
    groups: dict[tuple[str, str], list[ShardFile]] = {}
    for shard in shards:
        groups.setdefault((shard.model, shard.task), []).append(shard)
    rows: list[dict[str, Any]] = []
    missing: dict[tuple[str, str], list[int]] = {}
    for (model, task), files in sorted(groups.items()):
        same = (plain["model"] == model) & (plain["task"] == task)
        if (same & (plain["status"] != "missing")).any():
            raise EvalsuiteError(
                f"run {run_id} has both unsharded and sharded results for {model} {task}; "
                f"use a new --run-id for a sharded rerun"
            )
        plain = plain[~same]  # a machine without the task's data: its shard shows as missing below
        absent = sorted(set(range(count)) - {f.index for f in files})
        if absent:
            missing[(model, task)] = absent
        rows.extend(_merged_rows(run_id, model, task, files, count, absent))
    merged = pd.DataFrame(rows, columns=list(plain.columns)) if rows else plain.iloc[0:0]
    frame = pd.concat([plain, merged], ignore_index=True) if len(plain) else merged
    return MergedRun(run_id, frame.reset_index(drop=True), missing, count)


#: Run-row fields every shard of a model must agree on, or the merge would mix two evaluations.
SAME_ACROSS_SHARDS = ("limit", "weights_hash", "revision", "dtype")


def _check_same_settings(store: ResultsStore, run_id: str) -> None:
    """Shards of one model must share --limit, weights, dtype and each task's config."""
    runs = store.runs(run_id=run_id)
    for model, rows in runs.groupby("model"):
        differing = {column: {_comparable(v) for v in rows[column]} for column in SAME_ACROSS_SHARDS}
        per_task: dict[str, set[str]] = {}
        for hashes in rows["task_config_hashes"]:
            for task, digest in hashes or []:
                per_task.setdefault(f"{task} config", set()).add(digest)
        for what, seen in {**differing, **per_task}.items():
            if len(seen) > 1:
                raise EvalsuiteError(
                    f"run {run_id}: the shards of {model} differ in {what} ({', '.join(sorted(seen))}); "
                    f"rerun the odd shards with the same settings and --run-id {run_id}"
                )


def _comparable(value: Any) -> str:
    """A run-row value as text, with None and NaN (a missing value read back) the same."""
    import pandas as pd

    if value is None or pd.isna(value):
        return "none"
    return str(value)


def _run_files(store: ResultsStore, table: str, run_id: str) -> list[Any]:
    folder = store.table_dir(table)
    return sorted(folder.glob(f"{run_id}__*.parquet")) if folder.is_dir() else []


def _plain_scores(store: ResultsStore, run_id: str) -> Any:
    """The run's score rows from files that are not a shard's (unsharded tasks, missing data)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .store import SCORES_SCHEMA

    tables = []
    for path in _run_files(store, "scores", run_id):
        if _PART.search(path.stem):
            continue
        try:
            tables.append(pq.read_table(path, schema=SCORES_SCHEMA))
        except Exception as exc:
            raise StoreError(f"{path} is unreadable ({type(exc).__name__}); move it out and rerun its run") from None
    frame = (pa.concat_tables(tables) if tables else SCORES_SCHEMA.empty_table()).to_pandas()
    return frame[frame["run_id"] == run_id].reset_index(drop=True)


def _read_shards(store: ResultsStore, run_id: str) -> list[ShardFile]:
    """Every shard file pair (samples, scores) of the run, identified by its file name."""
    import pyarrow.parquet as pq

    from .store import SAMPLES_SCHEMA, SCORES_SCHEMA

    out = []
    for path in _run_files(store, "scores", run_id):
        match = _PART.search(path.stem)
        if not match:
            continue
        samples_path = store.table_dir("samples") / path.name
        try:
            scores = pq.read_table(path, schema=SCORES_SCHEMA).to_pandas()
            # A shard whose task failed wrote a score row and no samples.
            samples_table = pq.read_table(samples_path, schema=SAMPLES_SCHEMA) if samples_path.exists() \
                else SAMPLES_SCHEMA.empty_table()
            samples = samples_table.to_pandas()
        except Exception as exc:  # a broken file must be named, not hide the run
            raise StoreError(f"{path} (or its samples) is unreadable ({type(exc).__name__}); rerun that shard") from None
        scores = scores[scores["run_id"] == run_id]
        if scores.empty:
            continue
        task_rows = scores[scores["subtask"].isna()]
        head = task_rows.iloc[0] if len(task_rows) else scores.iloc[0]
        out.append(ShardFile(str(head["model"]), str(head["task"]), int(match["index"]), int(match["count"]),
                             samples[samples["run_id"] == run_id], scores))
    return out


def _merged_rows(run_id: str, model: str, task: str, files: list[ShardFile], count: int,
                 absent: list[int]) -> list[dict[str, Any]]:
    import pandas as pd

    task_rows = [f.scores[f.scores["subtask"].isna()].iloc[0] for f in files]
    base = {"run_id": run_id, "model": model, "task": task, "subtask": None,
            "metric": task_rows[0]["metric"], "n_total": task_rows[0]["n_total"]}
    failed = [r for r in task_rows if r["status"] not in (SHARD_STATUS, "ok")]
    if failed:
        first = failed[0]
        return [{**base, "value": math.nan, "stderr": math.nan, "n": 0, "status": first["status"],
                 "error": first["error"]}]
    if absent:
        shards = ", ".join(f"{i}/{count}" for i in absent)
        return [{**base, "value": math.nan, "stderr": math.nan, "n": 0, "status": "incomplete",
                 "error": f"shard(s) {shards} missing; run them with --run-id {run_id}"}]
    samples = pd.concat([f.samples for f in files], ignore_index=True)
    keys = [(None if pd.isna(s) else s, int(d)) for s, d in zip(samples["subtask"], samples["doc_index"])]
    if len(set(keys)) < len(keys):
        raise EvalsuiteError(f"run {run_id}: {model} {task} has documents scored by two shards; "
                             f"rerun it with a new --run-id")
    samples = _v1_order(samples)
    spec = load_spec(task)
    values = samples["value"].tolist()
    groups = [None if pd.isna(s) else s for s in samples["subtask"]]
    value, stderr = aggregate(spec, values, groups)
    rows = [{**base, "value": value, "stderr": stderr, "n": len(samples), "status": "ok", "error": None}]
    subject_rows = files[0].scores[files[0].scores["subtask"].notna()]
    for rec in subject_rows.to_dict("records"):
        unit_values = [v for v, g in zip(values, groups) if g == rec["subtask"]]
        mean, err = mean_stderr(unit_values)
        rows.append({**rec, "value": mean, "stderr": err, "n": len(unit_values),
                     "status": "ok" if unit_values else "missing", "error": None})
    return rows


def _v1_order(samples: Any) -> Any:
    """Samples in the order an unsharded run scores them (subjects in name order, then position),
    so the merged aggregate is computed over the same sequence, bit for bit."""
    order = samples.assign(
        _has_group=samples["subtask"].notna(), _group=samples["subtask"].fillna("")
    ).sort_values(["_has_group", "_group", "eval_position"], kind="stable")
    return order.drop(columns=["_has_group", "_group"]).reset_index(drop=True)


# -- writing -------------------------------------------------------------------------------
def shard_score_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``runner.score_rows`` output marked as a shard's: readers skip it, merges read its metadata."""
    return [{**row, "status": SHARD_STATUS} if row["status"] == "ok" else row for row in rows]
