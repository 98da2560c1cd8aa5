"""The results store: three parquet tables (runs, scores, samples) in one folder.

Each table is a folder of parquet files, one per (run, model[, task]) written as a whole, so
``pandas.read_parquet("results/scores")`` reads every score ever stored. A file is written
under a dot-name (which pyarrow and pandas skip) and renamed into place, so a run killed at
any moment leaves every earlier file readable and no half-written file that readers pick up.
Finished tasks are written as they finish: a killed run keeps them.
"""
from __future__ import annotations

import errno
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import StoreError

DEFAULT_RESULTS_DIR = "results"

RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("model", pa.string()),
        ("model_id", pa.string()),
        ("model_kind", pa.string()),
        ("revision", pa.string()),
        ("weights_hash", pa.string()),
        ("dtype", pa.string()),
        ("backend", pa.string()),
        ("device", pa.string()),
        ("batch_size", pa.string()),
        ("evalsuite_version", pa.string()),
        ("git_commit", pa.string()),
        ("lm_eval_version", pa.string()),
        ("transformers_version", pa.string()),
        ("torch_version", pa.string()),
        ("python_version", pa.string()),
        ("host", pa.string()),
        ("tasks", pa.list_(pa.string())),
        ("task_config_hashes", pa.map_(pa.string(), pa.string())),
        ("data_hashes", pa.map_(pa.string(), pa.string())),
        ("limit", pa.int64()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("wall_time_s", pa.float64()),
        ("tag", pa.string()),
        ("status", pa.string()),
        ("notes", pa.string()),
    ]
)

SCORES_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("model", pa.string()),
        ("task", pa.string()),
        ("subtask", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("stderr", pa.float64()),
        ("n", pa.int64()),
        ("n_total", pa.int64()),
        ("status", pa.string()),  # ok | missing | failed
        ("error", pa.string()),
    ]
)

SAMPLES_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("model", pa.string()),
        ("task", pa.string()),
        ("subtask", pa.string()),
        ("doc_index", pa.int64()),
        ("eval_position", pa.int64()),
        ("prompt_hash", pa.string()),
        ("contexts", pa.list_(pa.string())),
        ("continuations", pa.list_(pa.string())),
        ("gold", pa.string()),
        ("loglikelihoods", pa.list_(pa.float64())),
        ("generation", pa.string()),
        ("extracted", pa.string()),
        ("prediction", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ]
)

TABLES = {"runs": RUNS_SCHEMA, "scores": SCORES_SCHEMA, "samples": SAMPLES_SCHEMA}


def slug(text: str) -> str:
    """A file-name-safe form of a model alias or path."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "model"


class ResultsStore:
    """Reads and writes the parquet tables under ``root``."""

    def __init__(self, root: str | os.PathLike = DEFAULT_RESULTS_DIR):
        self.root = Path(root)

    def table_dir(self, table: str) -> Path:
        return self.root / table

    # -- writing -----------------------------------------------------------------
    def write_run(self, row: Mapping[str, Any], part: str = "") -> Path:
        """The run row; a shard (``part``) gets its own file so concurrent shards never collide."""
        name = f"{row['run_id']}__{slug(row['model'])}" + (f"__{part}" if part else "")
        return self._write("runs", name, [row])

    def write_scores(self, run_id: str, model: str, task: str, rows: Iterable[Mapping[str, Any]], part: str = "") -> Path:
        return self._write("scores", self._name(run_id, model, task, part), rows)

    def write_samples(self, run_id: str, model: str, task: str, rows: Iterable[Mapping[str, Any]], part: str = "") -> Path:
        return self._write("samples", self._name(run_id, model, task, part), rows)

    @staticmethod
    def _name(run_id: str, model: str, task: str, part: str) -> str:
        return f"{run_id}__{slug(model)}__{task}" + (f"__{part}" if part else "")

    def _write(self, table: str, name: str, rows: Iterable[Mapping[str, Any]]) -> Path:
        schema = TABLES[table]
        folder = self.table_dir(table)
        target = folder / f"{name}.parquet"
        tmp = folder / f".tmp-{uuid.uuid4().hex}.parquet"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            arrow = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
            pq.write_table(arrow, tmp, compression="zstd")
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno == errno.ENOSPC:
                raise StoreError(f"disk full while writing {target}; free space and rerun the same command") from None
            raise StoreError(f"could not write {target} ({exc.strerror}); check the folder's permissions") from None
        return target

    # -- reading -----------------------------------------------------------------
    def read(self, table: str, **equals: Any) -> Any:
        """A pandas DataFrame of ``table``, optionally filtered on column equality."""
        import pandas as pd

        schema = TABLES[table]
        folder = self.table_dir(table)
        files = sorted(folder.glob("[!._]*.parquet")) if folder.is_dir() else []
        prefix = equals.get("run_id")
        if prefix is not None and isinstance(prefix, str):
            files = [f for f in files if f.name.startswith(f"{prefix}__")]
        frames = []
        for path in files:
            try:
                frames.append(pq.read_table(path, schema=schema))
            except Exception as exc:  # ArrowInvalid, OSError...: a broken file must not hide the rest
                raise StoreError(
                    f"{path} is unreadable ({type(exc).__name__}); move it out of {folder} and rerun the run that wrote it"
                ) from None
        data = pa.concat_tables(frames) if frames else schema.empty_table()
        df = data.to_pandas()
        for column, value in equals.items():
            if value is not None:
                df = df[df[column] == value]
        return df.reset_index(drop=True)

    def runs(self, **equals: Any) -> Any:
        return self.read("runs", **equals)

    def scores(self, **equals: Any) -> Any:
        return self.read("scores", **equals)

    def samples(self, **equals: Any) -> Any:
        return self.read("samples", **equals)

    def latest_run_ids(self) -> dict[str, str]:
        """model -> the run id of its most recent run (by start time)."""
        runs = self.runs()
        if runs.empty:
            return {}
        runs = runs.sort_values("started_at")
        return dict(zip(runs["model"], runs["run_id"], strict=True))
