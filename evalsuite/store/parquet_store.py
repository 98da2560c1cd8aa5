"""The results store: parquet tables (runs, scores, samples, ...) in one folder, written atomically.

Each table is a folder of parquet files, one per (run, model[, task][, shard]) written as a whole,
so ``pandas.read_parquet("results/scores")`` reads every score ever stored. A file is written
under a dot-name (which pyarrow and pandas skip) and renamed into place, so a run killed at any
moment leaves every earlier file readable and no half-written file that readers pick up.

This module is the raw layer: rows in, rows out, in the layouts :mod:`evalsuite.store.records`
defines. What a stored run *means* (its status, its merged shards, its scores and H6) is read
through :mod:`evalsuite.store.run_views` only.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import socket
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from evalsuite.store import names
from evalsuite.store import records
from evalsuite.errors import EvalsuiteError, StoreError
from evalsuite.fsutil import atomic_path

DEFAULT_RESULTS_DIR = "results"
#: File-name suffix of one shard's files: ``<run>__<model>[__<task>]__shardIofN.parquet``.
SHARD_PART = re.compile(r"__(?P<part>shard(?P<index>\d+)of(?P<count>\d+))$")
#: Folder of run-id claims (see :meth:`ResultsStore.claim_run`); no table reads it.
CLAIMS = "claims"
#: The folders a store writes into (its tables, claims, nightly's comparisons).
STORE_FOLDERS = ("runs", "scores", "samples", CLAIMS, "nightly", "contamination")
#: A file stem the store writes: derived names only, never a path.
_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def slug(text: str) -> str:
    """A file-name-safe form of a model alias or path."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "model"


class ResultsStore:
    """Reads and writes the parquet tables under ``root``."""

    def __init__(self, root: str | os.PathLike = DEFAULT_RESULTS_DIR):
        self.root = Path(root)
        #: Files skipped by whole-table reads because they could not be read: path -> what to do.
        self.unreadable: dict[Path, str] = {}

    def table_dir(self, table: str) -> Path:
        return self.root / table

    # -- writing -----------------------------------------------------------------
    def check_writable(self, *, create: bool = True) -> None:
        """Fail before any work when results could not be saved: a read-only folder, a file in the
        way, or a folder inside the store (a table, ``claims``, ``nightly``...) that is a link or
        not writable, so that nothing is ever written through a link outside the store and a
        read-only ``scores/`` is found before a task is evaluated, not after. ``create=False``
        creates nothing: the nearest existing folder must take a file (a probe, removed at once)."""
        self.check_no_links()
        folder = self.root
        if not create:  # a probe in the nearest existing folder, removed at once: nothing is left
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent
        probe = folder / f".evalsuite-probe-{uuid.uuid4().hex}"
        try:
            if create:
                folder.mkdir(parents=True, exist_ok=True)
            elif not folder.is_dir():
                raise NotADirectoryError(f"{folder} is not a folder")
            probe.write_bytes(b"")
        except OSError as exc:
            raise StoreError(f"cannot write results to {self.root} ({exc.strerror or exc}); pass --results-dir "
                             f"with a writable folder") from None
        finally:
            with contextlib.suppress(OSError):
                probe.unlink(missing_ok=True)

    def check_no_links(self) -> None:
        """Every folder inside the store a real, writable folder (see :meth:`check_writable`)."""
        if not self.root.is_dir():
            return
        for child in sorted(self.root.iterdir()):
            if child.is_symlink():
                raise StoreError(f"{child} is a link (to {os.path.realpath(child)}); evalsuite writes only into "
                                 f"real folders inside the results store: replace the link with a folder, or pass "
                                 f"another --results-dir")
            if child.name in STORE_FOLDERS and not child.is_dir():
                raise StoreError(f"{child} is a file where the store keeps a folder; move it away, or pass another "
                                 f"--results-dir")
            if child.is_dir() and not child.name.startswith(".") and not os.access(child, os.W_OK | os.X_OK):
                raise StoreError(f"cannot write results to {child} (not writable); fix its permissions "
                                 f"(chmod u+w {child}) or pass another --results-dir")

    def write_run(self, record: Any, part: str = "") -> Path:
        """The run row; a shard (``part``) gets its own file so concurrent shards never collide."""
        row = records.as_row("runs", record)
        return self.write_records("runs", self._name(row["run_id"], row["model"], None, part), [row])

    def write_scores(self, run_id: str, model: str, task: str, rows: Iterable[Any], part: str = "") -> Path:
        return self.write_records("scores", self._name(run_id, model, task, part), rows)

    def write_samples(self, run_id: str, model: str, task: str, rows: Iterable[Any], part: str = "") -> Path:
        return self.write_records("samples", self._name(run_id, model, task, part), rows)

    @staticmethod
    def _name(run_id: str, model: str, task: str | None, part: str) -> str:
        """The file stem of a (run, model[, task][, shard]): derived here from checked names only."""
        fields = [names.check_name(run_id, "run id"), names.file_part(str(model))]
        if task is not None:
            fields.append(names.check_name(task, "task name"))
        if names.check_part(part):
            fields.append(part)
        return "__".join(fields)

    def inside(self, path: Path) -> Path:
        """``path`` when it resolves inside the store's folder, else a StoreError: a bug elsewhere
        (a name that slipped through, a symlinked table folder) can never write outside it."""
        root = self.root.resolve()
        resolved = path.resolve()
        if not resolved.is_relative_to(root) or resolved == root:
            raise StoreError(f"refusing to write {path}: it resolves to {resolved}, outside the results folder "
                             f"{root} (is a table folder a link elsewhere?)")
        return resolved

    def write_records(self, table: str, name: str, rows: Iterable[Any]) -> Path:
        """Write ``rows`` (records or partial mappings) as ``<table>/<name>.parquet``, atomically."""
        if not (_STEM.fullmatch(table) and _STEM.fullmatch(name)):
            raise StoreError(f"refusing to write table {ascii(table)[:40]} file {ascii(name)[:80]}: store file names "
                             f"are derived names ({names.CHARSET})")
        folder = self.table_dir(table)
        target = folder / f"{name}.parquet"
        arrow = records.to_arrow(table, rows)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.inside(target)
            with atomic_path(target, fsync=True) as tmp:
                pq.write_table(arrow, tmp, compression="zstd")
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise StoreError(f"disk full while writing {target}; free space and rerun the same command") from None
            raise StoreError(f"could not write {target} ({exc.strerror or exc}); check the folder's permissions "
                             f"or pass --results-dir") from None
        return target

    def write_text(self, folder: str, name: str, text: str) -> Path:
        """A text file the store keeps beside its tables (nightly's comparisons): ``<folder>/<name>``,
        written atomically, only inside the store and never through a link."""
        if not (_STEM.fullmatch(folder) and _STEM.fullmatch(name)):
            raise StoreError(f"refusing to write {ascii(folder)[:40]}/{ascii(name)[:80]}: store file names are "
                             f"derived names ({names.CHARSET})")
        target = self.table_dir(folder) / name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self.check_no_links()
            self.inside(target)
            with atomic_path(target, fsync=True) as tmp:
                tmp.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise StoreError(f"could not write {target} ({exc.strerror or exc}); check the folder's permissions "
                             f"or pass --results-dir") from None
        return target

    # -- reading -----------------------------------------------------------------
    def files(self, table: str, run_id: str | None = None) -> list[Path]:
        folder = self.table_dir(table)
        if not folder.is_dir():
            return []
        pattern = f"{glob.escape(run_id)}__*.parquet" if run_id is not None else "[!._]*.parquet"
        return sorted(p for p in folder.glob(pattern) if not p.name.startswith((".", "_")))

    def read(self, table: str, **equals: Any) -> Any:
        """A pandas DataFrame of ``table`` in the current layout, filtered on column equality.

        An extra column ``part`` names the shard a row's file belongs to (``shard0of2``), or is
        empty for an unsharded run's files.

        One unreadable file makes its run unreadable, not the store: a read of one run
        (``run_id=...``) raises a StoreError naming the file; a read of the whole table skips it
        and records it in :attr:`unreadable` (readers show it as a note).
        """
        frames = []
        run_id = equals.get("run_id")
        for path in self.files(table, run_id if isinstance(run_id, str) else None):
            try:
                data = records.conform(table, pq.read_table(path))
            except Exception as exc:  # ArrowInvalid, OSError...: name the file, never a traceback
                message = (f"{path} was {exc}; upgrade evalsuite to read it"
                           if isinstance(exc, ValueError) and "newer evalsuite" in str(exc) else self._unreadable(path, exc))
                if isinstance(run_id, str):
                    raise StoreError(message) from None
                self.unreadable[path] = message
                continue
            match = SHARD_PART.search(path.stem)
            frames.append(data.append_column("part", pa.array([match["part"] if match else ""] * len(data),
                                                               type=pa.string())))
        if frames:
            data = pa.concat_tables(frames)
        else:
            empty = records.schema(table).empty_table()
            data = empty.append_column("part", pa.array([], type=pa.string()))
        df = data.to_pandas()
        for column in _COUNTS.get(table, ()):  # 8, not 8.0: pandas reads an int column with nulls as float
            df[column] = df[column].astype("Int64")
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

    # -- run-id claims -------------------------------------------------------------------
    def claim_path(self, run_id: str, part: str = "") -> Path:
        stem = names.check_name(run_id, "run id") + (f"__{names.check_part(part)}" if part else "")
        return self.inside(self.root / CLAIMS / f"{stem}.claim")

    def claim_run(self, run_id: str, part: str = "", *, take_over_dead: bool = False) -> Path:
        """Claim ``run_id`` (one shard ``part`` of it) for this process, atomically, or refuse.

        The claim is a small JSON file created with a hard link (atomic and exclusive: of two
        processes exactly one succeeds, and a claim is never seen half written). A claim whose
        process is gone (same host, pid dead) is taken over only with ``take_over_dead`` (the
        run's ``--resume``); a live claim, or one on another host, is always refused.
        """
        path = self.claim_path(run_id, part)
        what = f"run '{run_id}'" + (f" (shard {part})" if part else "")
        mine = {"run_id": run_id, "part": part, "host": socket.gethostname(), "pid": os.getpid(),
                "pid_started": _process_started(), "token": uuid.uuid4().hex}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with _locked(path.parent / ".lock"):
                for _ in range(2):
                    if _create_exclusive(path, mine):
                        return path
                    held = _read_claim(path)
                    if held is None:
                        continue  # released between our attempt and the read: try once more
                    alive = process_alive(held.get("host"), held.get("pid"), held.get("pid_started"))
                    if alive is False and take_over_dead:
                        path.unlink(missing_ok=True)
                        continue
                    who = f"pid {held.get('pid')} on {held.get('host')}"
                    if alive is False:
                        raise EvalsuiteError(f"{what} was claimed by {who}, which is gone; pass --resume to "
                                             f"continue it, or choose another --run-id")
                    if alive is None:
                        raise EvalsuiteError(f"{what} is claimed by {who} (cannot check it from here); if no such "
                                             f"run is in progress remove {path}, or choose another --run-id")
                    raise EvalsuiteError(f"{what} is being written by another process ({who}); wait for it "
                                         f"to finish or choose another --run-id")
        except OSError as exc:
            raise StoreError(f"cannot claim {what} in {self.root} ({exc.strerror or exc}); check the folder's "
                             f"permissions or pass --results-dir") from None
        raise EvalsuiteError(f"{what}: its claim file {path} keeps changing; retry, or choose another --run-id")

    def claim_model_key(self, key: str, source: str, *, claim: bool = True) -> bool:
        """Whether ``key`` is (now) ``source``'s in this store: claimed atomically the first time
        (``claims/model-keys/<key>.json``, created exclusively: of two processes starting at once
        exactly one gets it), kept for good; ``claim=False`` only reads."""
        path = self.inside(self.root / CLAIMS / "model-keys" / f"{names.file_part(key)}.json")
        for _ in range(2):
            held = _read_claim(path)
            if held is not None:
                return held.get("source") == source
            if not claim:
                return True
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                if _create_exclusive(path, {"key": key, "source": source}):
                    return True
            except OSError as exc:
                raise StoreError(f"cannot claim model key '{key}' in {self.root} ({exc.strerror or exc}); check the "
                                 f"folder's permissions or pass --results-dir") from None
        return False

    @staticmethod
    def release_claim(path: Path) -> None:
        """Remove this process's claim (never another's: a taken-over claim is left alone)."""
        held = _read_claim(path)
        if held is not None and held.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                path.unlink()


def process_alive(host: str | None, pid: int | None, started: float | None) -> bool | None:
    """Whether the process that wrote a ``running`` row still runs: None when this host cannot tell."""
    if pid is None or host != socket.gethostname():
        return None
    import psutil

    try:
        proc = psutil.Process(int(pid))
        return started is None or abs(proc.create_time() - float(started)) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False



def _process_started() -> float | None:
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # psutil missing or restricted: liveness falls back to the pid alone
        return None


def _create_exclusive(path: Path, content: dict[str, Any]) -> bool:
    """Write ``content`` to ``path`` only if it does not exist: a complete file, or nothing."""
    tmp = path.with_name(f".claim-{uuid.uuid4().hex}")
    try:
        with open(tmp, "x") as handle:
            json.dump(content, handle)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:  # a file system without hard links: exclusive create instead
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as handle:
                json.dump(content, handle)
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


#: Integer columns that are null in most rows (the audit counts: task rows only), read as pandas'
#: nullable Int64 so that a count reads as a count.
_COUNTS: dict[str, tuple[str, ...]] = {"scores": ("audit_n", "audit_agree")}


def _read_claim(path: Path) -> dict[str, Any] | None:
    """A claim's content; None when it is gone. An unreadable claim reads as held by nobody alive
    we can name (host unknown), which is refused with the file to remove."""
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock (flock) around claim decisions, so two takeovers of one dead claim
    cannot both win; released by the kernel if this process dies."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): creation stays exclusive, takeover is best effort
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
