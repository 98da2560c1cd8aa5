"""Where benchmark rows come from: a local folder in Hub layout, or the Hugging Face Hub.

A local folder mirrors the Hub: ``<hub id with / as __>/<config>/<split>.jsonl`` (or
``.parquet``). Offline users point ``--data-dir`` / ``EVALSUITE_DATA_DIR`` at such a folder;
everyone else gets the Hub through ``datasets.load_dataset``, exactly as lm-eval loads it.
Every file read is hashed so the run manifest says precisely which bytes were evaluated.

From the Hub, each leaderboard dataset loads at a pinned commit (:data:`PINNED_REVISIONS`),
not at ``main``, which moves; ``--data-revision`` overrides it (``main``, a commit, or
``HUB_ID=REV`` pairs). The commit a split came from is part of its source in the run's data
hashes (``hub:ID@COMMIT/CONFIG/SPLIT``).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

from evalsuite.errors import DataFormatError, EvalsuiteError, MissingDataError
from evalsuite.fsutil import file_sha256

DATA_DIR_ENV = "EVALSUITE_DATA_DIR"
#: The Hub commit each leaderboard dataset loads at unless ``--data-revision`` says otherwise
#: (commits of the datasets' Hub repositories, as public pipelines pin them).
PINNED_REVISIONS = {
    "allenai/ai2_arc": "210d026faf9955653af8916fad021475a3f00453",
    "Rowan/hellaswag": "218ec52e09a7e7462a5400043bb9a69a41d06b76",
    "cais/mmlu": "c30699e8356da336a370243923dbaf21066bb9fe",
    "truthfulqa/truthful_qa": "741b8276f2d1982aa3d5b832d3ee81ed3b896490",
    "allenai/winogrande": "01e74176c63542e6b0bcb004dcdea22d94fb67b5",
    "openai/gsm8k": "cc7b047b6e5bb11b4f1af84efc572db110a51b3c",
}
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/\-]{0,199}$")


@dataclass(frozen=True)
class DatasetRef:
    """A Hub dataset and config, plus the folder names it may have in a local copy; a user task
    may instead keep its rows in a folder of its own (``path``: ``<split>.jsonl`` files)."""

    hub_id: str
    config: str | None = None
    local_names: tuple[str, ...] = ()
    path: str | None = None
    revision: str | None = None  # None: the pinned commit (PINNED_REVISIONS), else main

    @property
    def hub_revision(self) -> str | None:
        """The revision the Hub loads: the override, else the pinned commit."""
        return self.revision or PINNED_REVISIONS.get(self.hub_id)

    def local_dirs(self, root: Path) -> list[Path]:
        names = dict.fromkeys([self.hub_id.replace("/", "__"), *self.local_names])
        if self.config is None:  # config-less datasets may sit directly in the dataset folder
            return [folder for name in names for folder in (root / name / "default", root / name)]
        return [root / name / self.config for name in names]

    @property
    def label(self) -> str:
        return f"{self.hub_id} ({self.config})" if self.config else self.hub_id

    def layout(self, split: str) -> str:
        """Where a local copy puts ``split``, for error messages (as ``../shared/data`` does)."""
        return f"{self.hub_id.replace('/', '__')}/{self.config or 'default'}/{split}.jsonl (or .parquet)"


@dataclass(frozen=True)
class SplitData:
    """The rows of one split and where they came from (path or Hub id, and a content hash)."""

    rows: list[dict[str, Any]]
    source: str
    sha256: str


def parse_data_revision(value: str | None) -> dict[str | None, str]:
    """``--data-revision``: ``REV`` for every Hub dataset (key None) or ``HUB_ID=REV,...``;
    a malformed value is refused in one line."""
    if value is None or not str(value).strip():
        return {}
    chosen: dict[str | None, str] = {}
    for part in (p.strip() for p in str(value).split(",") if p.strip()):
        hub_id, sep, revision = part.rpartition("=")
        key = hub_id.strip() if sep else None
        revision = revision.strip()
        if not _REVISION.match(revision) or ".." in revision or (sep and not key):
            raise EvalsuiteError(f"--data-revision '{part}' is not a revision: give main, a commit id, or "
                                   f"HUB_ID=REV (e.g. cais/mmlu=main), comma-separated")
        if key is not None and key not in PINNED_REVISIONS:
            raise EvalsuiteError(f"--data-revision: '{key}' is not a dataset of the tasks; use one of "
                                   f"{', '.join(PINNED_REVISIONS)}")
        chosen[key] = revision
    return chosen


def with_revision(ref: DatasetRef, overrides: dict[str | None, str]) -> DatasetRef:
    """``ref`` at the revision ``overrides`` (from :func:`parse_data_revision`) give it, if any."""
    revision = overrides.get(ref.hub_id, overrides.get(None))
    return replace(ref, revision=revision) if revision else ref


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The local data folder to use: the argument, else ``$EVALSUITE_DATA_DIR``, else None (Hub)."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise MissingDataError(
            f"data folder {path} does not exist; pass --data-dir with a folder laid out as "
            f"<hub id with / as __>/<config>/<split>.jsonl, or unset {DATA_DIR_ENV} to use the Hub"
        )
    return path.resolve()


def expected_files(ref: DatasetRef, split: str, root: Path) -> list[Path]:
    return [d / f"{split}{ext}" for d in ref.local_dirs(root) for ext in (".jsonl", ".parquet")]


def load_split(ref: DatasetRef, split: str, data_dir: Path | None) -> SplitData:
    """Rows of ``split`` in the order stored: from the task's own folder (a user task's
    ``dataset.path``), else from ``data_dir`` if given, else from the Hub."""
    if ref.path is not None:
        own = [Path(ref.path) / f"{split}{ext}" for ext in (".jsonl", ".parquet")]
        for path in own:
            if path.is_file():
                return _load_local(str(path))
        raise MissingDataError(f"no data for {ref.hub_id} split '{split}': expected {own[0]} (or .parquet), as the "
                               f"task's dataset.path says; put the file there or fix dataset.path")
    if data_dir is not None:
        for path in expected_files(ref, split, data_dir):
            if path.is_file():
                return _load_local(str(path))
        wanted = expected_files(ref, split, data_dir)[0]
        name = ref.hub_id + (f" ({ref.config})" if ref.config else "")
        raise MissingDataError(
            f"no data for {name} split '{split}': expected {wanted} (or .parquet, or the folder "
            f"{'/'.join(wanted.parent.parts[-2:])} under another of its names: {', '.join(ref.local_names) or '-'}); "
            f"put the file there or pass --data-dir to a folder that has it"
        )
    return _load_hub(ref, split)


@lru_cache(maxsize=64)
def _load_local(path_str: str) -> SplitData:
    path = Path(path_str)
    digest = file_sha256(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for broken files
            raise DataFormatError(f"{path} is not a readable parquet file ({exc}); replace it with an intact copy") from None
        return SplitData(rows, str(path), digest)
    rows = []
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataFormatError(
                    f"{path} line {line_no} is not valid UTF-8 (byte {exc.start + 1} of the line); "
                    f"replace the file with an intact copy"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(
                    f"{path} line {line_no} is not valid JSON ({exc.msg}); replace the file with an intact copy"
                ) from None
            if not isinstance(row, dict):
                raise DataFormatError(f"{path} line {line_no} is not a JSON object; replace the file with an intact copy")
            rows.append(row)
    if not rows:
        raise DataFormatError(f"{path} holds no rows; replace it with an intact copy")
    return SplitData(rows, str(path), digest)


def _load_hub(ref: DatasetRef, split: str) -> SplitData:
    import datasets

    from evalsuite.models.hub import hub_reachable, offline_mode

    if not offline_mode() and not hub_reachable():  # fail in seconds, not after a minute of retries
        raise MissingDataError(
            f"the Hugging Face Hub is not reachable to load {ref.label} split '{split}'; pass "
            f"--data-dir DIR (or set {DATA_DIR_ENV}) to a local copy laid out as "
            f"{ref.layout(split)}, or set HF_HUB_OFFLINE=1 to use the "
            f"datasets cache"
        )

    revision = ref.hub_revision
    try:
        ds = datasets.load_dataset(ref.hub_id, ref.config, split=split, revision=revision)
    except Exception as exc:  # offline, gated, renamed, a bad revision: the reason is kept
        reason = (f"{type(exc).__name__}: {exc}".splitlines() or [type(exc).__name__])[0][:200]
        at = f" at revision {revision}" if revision else ""
        raise MissingDataError(
            f"could not load {ref.label} split '{split}'{at} from the Hugging Face Hub ({reason}); pass "
            f"--data-dir DIR (or set {DATA_DIR_ENV}) to a local copy laid out as {ref.layout(split)}"
            + (", or --data-revision to load another revision" if revision else "")
        ) from None
    fingerprint = getattr(ds, "_fingerprint", "") or ""
    commit = _commit_of(ref.hub_id, revision)
    return SplitData(list(ds), f"hub:{ref.hub_id}@{commit}/{ref.config}/{split}", f"hub-fingerprint:{fingerprint}")


def _commit_of(hub_id: str, revision: str | None) -> str:
    """The commit id ``revision`` names (a commit id already, else asked of the Hub; the name
    itself when the Hub cannot say)."""
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(hub_id, revision=revision).sha or (revision or "main")
    except Exception:  # offline (cache only): the name is what is known
        return revision or "main"


def row_location(source: str, row: int) -> str:
    """Where row ``row`` (0-based, as stored) of a split lives, for error messages: the line of a
    JSON Lines file (blank lines skipped, as when reading), else the row number."""
    path = Path(source)
    if path.suffix == ".jsonl" and path.is_file():
        seen = -1
        with path.open("rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                if raw.strip():
                    seen += 1
                    if seen == row:
                        return f"{path} line {line_no}"
    return f"{source} row {row}"


class _RowList(list):
    """Rows that answer ``.map(fn)`` the way ``datasets.Dataset.map`` does for a plain per-row
    function (each row updated with the dict ``fn`` returns), without Arrow round trips.

    Any other use of the ``Dataset`` API (another method or attribute, a column by name, ``map``
    with options) raises :class:`_NeedsDatasets` before ``fn`` sees a row, so that use, and only
    that, goes through ``datasets``."""

    def map(self, function: Callable[[dict[str, Any]], dict[str, Any]], *args: Any, **kwargs: Any) -> _RowList:
        if args or kwargs:  # batched, with_indices, remove_columns...: leave it to datasets
            raise _NeedsDatasets
        return _RowList({**row, **function(row)} for row in self)

    def __getattr__(self, name: str) -> Any:  # only called for names a list lacks: filter, select, features...
        if name.startswith("__"):
            raise AttributeError(name)
        raise _NeedsDatasets

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):  # a column by name
            raise _NeedsDatasets
        return super().__getitem__(key)


class _NeedsDatasets(Exception):
    pass


def process_rows(process: Callable[[Any], Any] | None, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows passed through a task's ``process_docs`` (lm-eval's own function), as plain dicts.

    ``process_docs`` functions take and return a ``datasets.Dataset``; most only call
    ``dataset.map(per_row_function)``. Those get a plain list that maps row by row (HellaSwag's
    39,905 training rows: 0.5 s instead of 5.4 s through Arrow, same dicts); any other use
    (filters, batched maps) goes through ``datasets`` as lm-eval would. An error the function
    raises on a row is not retried: it is the row's (or the function's), and propagates.
    """
    if process is None:
        return list(rows)
    if not rows:
        return []
    try:
        out = process(_RowList(rows))
    except _NeedsDatasets:
        out = None
    if isinstance(out, _RowList):
        return list(out)
    import datasets

    return process(datasets.Dataset.from_list(list(rows))).to_list()
