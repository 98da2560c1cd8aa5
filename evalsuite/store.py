"""The results store: parquet tables (runs, scores, samples, ...) in one folder, written atomically.

Each table is a folder of parquet files, one per (run, model[, task][, shard]) written as a whole,
so ``pandas.read_parquet("results/scores")`` reads every score ever stored. A file is written
under a dot-name (which pyarrow and pandas skip) and renamed into place, so a run killed at any
moment leaves every earlier file readable and no half-written file that readers pick up.

This module is the raw layer: rows in, rows out, in the layouts :mod:`evalsuite.records`
defines. What a stored run *means* (its status, its merged shards, its scores and H6) is read
through :mod:`evalsuite.results` only.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import records
from .errors import StoreError
from .fsutil import atomic_path

DEFAULT_RESULTS_DIR = "results"
#: File-name suffix of one shard's files: ``<run>__<model>[__<task>]__shardIofN.parquet``.
SHARD_PART = re.compile(r"__(?P<part>shard(?P<index>\d+)of(?P<count>\d+))$")


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
    def check_writable(self) -> None:
        """Fail before any work when results could not be saved (read-only folder, a file in the way)."""
        probe = self.root / f".probe-{uuid.uuid4().hex}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
        except OSError as exc:
            raise StoreError(f"cannot write results to {self.root} ({exc.strerror or exc}); pass --results-dir "
                             f"with a writable folder") from None
        finally:
            with contextlib.suppress(OSError):
                probe.unlink(missing_ok=True)

    def write_run(self, record: Any, part: str = "") -> Path:
        """The run row; a shard (``part``) gets its own file so concurrent shards never collide."""
        row = records.as_row("runs", record)
        name = f"{row['run_id']}__{slug(row['model'])}" + (f"__{part}" if part else "")
        return self.write_records("runs", name, [row])

    def write_scores(self, run_id: str, model: str, task: str, rows: Iterable[Any], part: str = "") -> Path:
        return self.write_records("scores", self._name(run_id, model, task, part), rows)

    def write_samples(self, run_id: str, model: str, task: str, rows: Iterable[Any], part: str = "") -> Path:
        return self.write_records("samples", self._name(run_id, model, task, part), rows)

    @staticmethod
    def _name(run_id: str, model: str, task: str, part: str) -> str:
        return f"{run_id}__{slug(model)}__{task}" + (f"__{part}" if part else "")

    def write_records(self, table: str, name: str, rows: Iterable[Any]) -> Path:
        """Write ``rows`` (records or partial mappings) as ``<table>/<name>.parquet``, atomically."""
        folder = self.table_dir(table)
        target = folder / f"{name}.parquet"
        arrow = records.to_arrow(table, rows)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(target, fsync=True) as tmp:
                pq.write_table(arrow, tmp, compression="zstd")
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise StoreError(f"disk full while writing {target}; free space and rerun the same command") from None
            raise StoreError(f"could not write {target} ({exc.strerror or exc}); check the folder's permissions "
                             f"or pass --results-dir") from None
        return target

    # -- reading -----------------------------------------------------------------
    def files(self, table: str, run_id: str | None = None) -> list[Path]:
        folder = self.table_dir(table)
        if not folder.is_dir():
            return []
        pattern = f"{run_id}__*.parquet" if run_id is not None else "[!._]*.parquet"
        return sorted(p for p in folder.glob(pattern) if not p.name.startswith((".", "_")))

    def read(self, table: str, **equals: Any) -> Any:
        """A pandas DataFrame of ``table`` in the current layout, filtered on column equality.

        An extra column ``part`` names the shard a row's file belongs to (``shard0of2``), or is
        empty for an unsharded run's files.
        """
        frames = []
        run_id = equals.get("run_id")
        for path in self.files(table, run_id if isinstance(run_id, str) else None):
            try:
                data = records.conform(table, pq.read_table(path))
            except ValueError as exc:
                if "newer evalsuite" in str(exc):
                    raise StoreError(f"{path} was {exc}; upgrade evalsuite to read it") from None
                raise StoreError(self._unreadable(path, exc)) from None
            except Exception as exc:  # ArrowInvalid, OSError...: name the file, never a traceback
                raise StoreError(self._unreadable(path, exc)) from None
            match = SHARD_PART.search(path.stem)
            frames.append(data.append_column("part", pa.array([match["part"] if match else ""] * len(data),
                                                               type=pa.string())))
        if frames:
            data = pa.concat_tables(frames)
        else:
            empty = records.schema(table).empty_table()
            data = empty.append_column("part", pa.array([], type=pa.string()))
        df = data.to_pandas()
        for column, value in equals.items():
            if value is not None:
                df = df[df[column] == value]
        return df.reset_index(drop=True)

    def _unreadable(self, path: Path, exc: BaseException) -> str:
        return (f"{path} is unreadable ({type(exc).__name__}); move it out of {path.parent} and rerun the run "
                f"that wrote it")

    def runs(self, **equals: Any) -> Any:
        return self.read("runs", **equals)

    def scores(self, **equals: Any) -> Any:
        return self.read("scores", **equals)

    def samples(self, **equals: Any) -> Any:
        return self.read("samples", **equals)
