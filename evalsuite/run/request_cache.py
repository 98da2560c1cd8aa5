"""A persistent request cache: why a killed run resumes without recomputing finished work.

:class:`CachedLM` wraps any lm-eval ``LM``. Each ``Instance`` is looked up in a SQLite file by
a key made of everything that can change a number (:func:`key_prefix`) and the exact request
(request type and arguments). Only misses reach the inner model, in one call and in their
original order (so a chunk that is computed again is batched exactly as before). A backend that
reports answers as it computes them (the evalsuite engine's ``answer_hook``: after each forward
pass, after each finished generation) has them committed as they come, at most
:data:`FLUSH_SECONDS` apart, and whatever is left when the call returns or is interrupted: a
run killed with ``kill -9`` loses at most the last second or so of work, Ctrl-C nothing. SQLite in
WAL mode lets two processes read and write the file at once.

A cached answer must never be served for a model or code that would answer differently, so the
key holds: the weights (hash, or Hub commit), the model's other files (config, tokenizer,
generation config, remote code), the dtype, the device type, the backend and all its settings,
whether remote code runs, the versions of torch, transformers and lm-eval, and a hash of the
scoring code itself (:func:`code_version`, derived from the source files, so an engine fix
invalidates old answers without anyone remembering to bump a constant).
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM

from evalsuite.errors import EvalsuiteError

CACHE_FILE = "requests.sqlite"
#: Answers reported during a backend call are committed at most this many seconds apart.
FLUSH_SECONDS = 1.0
#: Bumped when the key's layout or the stored form of a response changes: old entries then miss.
KEY_VERSION = "2"
#: The code that computes a response, besides the libraries: the backends, the version shims, and
#: how a model is resolved, converted, placed and loaded (what ``loading.py`` and ``hub.py`` held).
SCORING_CODE = ("backends", "compat.py", "models/hub.py", "models/identity.py", "models/gguf.py", "models/memory.py",
                "models/loading.py", "models/source.py")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    request_type TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_model ON requests (model);
CREATE TABLE IF NOT EXISTS audits (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    audit TEXT NOT NULL,
    created REAL NOT NULL
);
"""


def cache_path() -> Path:
    """``$EVALSUITE_REQUEST_CACHE`` if set, else ``<evalsuite cache dir>/requests.sqlite``.

    (The cache dir is ``$EVALSUITE_CACHE`` when set.) The separate variable lets tests and CI
    isolate cached results without re-converting the models kept in the cache dir.
    """
    override = os.environ.get("EVALSUITE_REQUEST_CACHE")
    if override:
        return Path(override)
    from evalsuite.fsutil import cache_dir

    return cache_dir() / CACHE_FILE


#: The code that decides a kept audit's verdict (which requests, what is compared, the
#: tolerances, the per-document counts): part of a kept audit's key, not of the answers', so a
#: change to the audit makes the next run audit again, while its answers stay served.
AUDIT_CODE = ("run/audit.py", "run/audit_sample.py", "run/greedy_check.py", "run/dry_run.py")


def code_version(root: Path | None = None, entries: Sequence[str] = SCORING_CODE) -> str:
    """sha256 of the scoring code's source files (the backends package, model loading; or
    ``entries``) under ``root`` (default: this installed package)."""
    root = root or Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for entry in entries:
        path = root / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else []
        for file in files:
            digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def key_prefix(source: Any, options: Any, backend: str) -> str:
    """Everything besides the request itself that decides a response, as one canonical string."""
    from evalsuite.config import backend_settings
    from evalsuite.run.manifest import environment

    env = environment()
    parts = {
        "key_version": KEY_VERSION,
        "model": source.identity,
        "model_files": source.files_hash,
        "trust_remote_code": bool(source.spec.trust_remote_code),
        "backend": backend,
        "settings": backend_settings(options),
        "code": code_version(),
        "versions": [env["torch_version"], env["transformers_version"], env["lm_eval_version"]],
    }
    return json.dumps(parts, sort_keys=True)


def request_key(prefix: str, request_type: str, args: Sequence[Any]) -> str:
    payload = json.dumps([prefix, request_type, list(args)], sort_keys=True, ensure_ascii=False, default=repr)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def connect(path: str | os.PathLike) -> sqlite3.Connection:
    """A connection in WAL mode that waits (rather than fails) while another process writes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Switching a new database to WAL needs a moment of exclusive access, and SQLite reports
    # "database is locked" at once (without its busy handler) when another process is doing
    # the same: retry that for a while instead of failing the run.
    deadline = time.monotonic() + 60.0
    while True:
        try:
            conn = sqlite3.connect(path, timeout=60.0, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            return conn
        except sqlite3.DatabaseError as exc:
            locked = isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
            if locked and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise UnusableCacheError(
                f"request cache {path} is unusable ({exc}); delete it with `evalsuite cache clear` or run with --no-cache"
            ) from None


class UnusableCacheError(EvalsuiteError):
    """The request cache file is not a usable SQLite database (truncated, overwritten, corrupt)."""


def check_usable(path: str | os.PathLike | None = None) -> None:
    """Open the cache and read from it once, so that a corrupt file is refused before a run starts
    (and before a run row is written) rather than after its first chunk of work."""
    conn = connect(path or cache_path())
    try:
        conn.execute("SELECT key FROM requests LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        raise UnusableCacheError(
            f"request cache {path or cache_path()} is unusable ({exc}); delete it with `evalsuite cache clear` or run "
            f"with --no-cache"
        ) from None
    finally:
        conn.close()


class CachedLM(LM):
    """An lm-eval ``LM`` that answers repeated requests from the SQLite cache.

    ``hits`` and ``misses`` count instances answered from the cache and by the inner model.
    ``answer_hook``, when set, is called as ``answer_hook(indices, answers, done)`` with the
    indices of the current call's requests as they are answered (the cached ones at once, the
    computed ones as the inner model reports them, or when its call returns) and the share of
    the call done.
    """

    answer_hook: Any = None

    def __init__(self, lm: Any, key_prefix: str, cache_path: str | os.PathLike, model: str | None = None):
        super().__init__()
        self.lm = lm
        self.key_prefix = key_prefix
        self.cache_path = Path(cache_path)
        self.model = model or key_prefix
        self.hits = 0
        self.misses = 0
        self._conn: sqlite3.Connection | None = None
        self._pid = -1

    def __getattr__(self, name: str) -> Any:  # tokenizer, batch sizes... of the inner model
        if name == "lm":
            raise AttributeError(name)
        return getattr(self.lm, name)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # a forked child opens its own
            self._conn = connect(self.cache_path)
            self._pid = os.getpid()
        return self._conn

    # -- lm-eval's LM interface ------------------------------------------------------
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self._answer("loglikelihood", requests, disable_tqdm)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        return self._answer("loglikelihood_rolling", requests, disable_tqdm)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        return self._answer("generate_until", requests, disable_tqdm)

    # -- the cache -------------------------------------------------------------------
    def _answer(self, kind: str, requests: list[Any], disable_tqdm: bool) -> list[Any]:
        keys = [request_key(self.key_prefix, kind, req.args) for req in requests]
        found = self._lookup(set(keys))
        answers: list[Any] = [found.get(k) for k in keys]
        missing = [i for i, k in enumerate(keys) if k not in found]
        self.hits += len(requests) - len(missing)
        self.misses += len(missing)
        outer = self.answer_hook
        cached_share = 1 - len(missing) / len(requests) if requests else 1.0
        if outer is not None and missing != list(range(len(requests))):
            hit = [i for i, k in enumerate(keys) if k in found]
            outer(hit, [_decode(kind, answers[i]) for i in hit], cached_share)
        if missing:
            from evalsuite.backends.registry import ask

            reported: dict[int, Any] = {}  # position in ``missing`` -> the answer handed on
            buffer: list[tuple[str, Any]] = []
            last_flush = time.monotonic()

            def flush() -> None:
                nonlocal last_flush
                if buffer:
                    self._store(kind, buffer)
                    buffer.clear()
                last_flush = time.monotonic()

            def answered(indices: list[int], values: list[Any], done: float) -> None:  # the inner model, mid-call
                new = [(i, v) for i, v in zip(indices, values, strict=True) if i not in reported]
                reported.update(zip(indices, values))  # (a call redone after a route fell back reports again)
                buffer.extend((keys[missing[i]], value) for i, value in zip(indices, values, strict=True))
                if buffer and time.monotonic() - last_flush >= FLUSH_SECONDS:
                    flush()
                if outer is not None:
                    outer([missing[i] for i, _ in new], [v for _, v in new], cached_share + (1 - cached_share) * done)

            hooked = "answer_hook" in getattr(self.lm, "__dict__", {})
            if hooked:
                self.lm.answer_hook = answered
            try:
                computed = ask(self.lm, kind, [requests[i] for i in missing], disable_tqdm)
            finally:
                if hooked:
                    self.lm.answer_hook = None
                flush()  # answers finished before an interruption are kept
            if len(computed) != len(missing):
                raise RuntimeError(f"backend answered {len(computed)} of {len(missing)} {kind} requests")
            for i, value in zip(missing, computed, strict=True):
                answers[i] = value
            rest = [j for j in range(len(missing)) if j not in reported]
            # what the call returned is what the cache keeps, also where a redone call changed an answer
            self._store(kind, [(keys[missing[j]], computed[j]) for j in range(len(missing))
                               if j not in reported or reported[j] != computed[j]])
            if outer is not None:
                outer([missing[j] for j in rest], [computed[j] for j in rest], 1.0)
        return [_decode(kind, a) if isinstance(a, str) and k in found else a for a, k in zip(answers, keys, strict=True)]

    def _lookup(self, keys: set[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        ordered = sorted(keys)
        for start in range(0, len(ordered), 500):  # SQLite's bound-parameter limit
            batch = ordered[start:start + 500]
            marks = ",".join("?" * len(batch))
            rows = self.conn.execute(f"SELECT key, response FROM requests WHERE key IN ({marks})", batch)
            out.update(rows.fetchall())
        return out

    def _store(self, kind: str, items: list[tuple[str, Any]]) -> None:
        now = time.time()
        rows = [(key, self.model, kind, json.dumps(_encode(value)), now) for key, value in items]
        try:
            with self.conn:  # one transaction, committed before the next chunk starts
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?, ?)", rows)
        except sqlite3.OperationalError as exc:
            raise EvalsuiteError(
                f"could not write the request cache {self.cache_path} ({exc}); free disk space or run with --no-cache"
            ) from None

    def discard(self, kind: str, requests: list[Any]) -> int:
        """Delete these requests' answers (the self-audit rejected them); how many were stored.
        (A kept audit of them can no longer match: its key holds every request's key, and a
        task whose answers are missing is computed, so audited, again.)"""
        keys = [request_key(self.key_prefix, kind, req.args) for req in requests]
        deleted = 0
        with self.conn:
            for start in range(0, len(keys), 500):
                batch = keys[start:start + 500]
                deleted += self.conn.execute(f"DELETE FROM requests WHERE key IN ({','.join('?' * len(batch))})",
                                             batch).rowcount
        return deleted

    def stats(self) -> str:
        return f"request cache: {self.hits} answered from cache, {self.misses} computed"

    # -- a run whose every answer is kept needs no model ------------------------------------
    def has_all(self, kind: str, requests: Sequence[Any]) -> bool:
        """Whether every one of ``requests`` has a kept answer (nothing would reach the model)."""
        keys = {request_key(self.key_prefix, kind, req.args) for req in requests}
        return len(self._lookup(keys)) == len(keys)

    def audit_key(self, task: str, kind: str, requests: Sequence[Any], part: str = "") -> str:
        """The key of a task's audit: the model and settings (the prefix), the task, the shard,
        every request it was drawn from and the answer the cache holds for each, so it is reused
        only for exactly these answers: an answer changed in the cache since the audit (corrupted
        or falsified) makes the kept audit not apply, and the model is loaded and audits again."""
        keys = [request_key(self.key_prefix, kind, req.args) for req in requests]
        found = self._lookup(set(keys))
        answers = [found.get(k) for k in keys]
        return hashlib.sha256(json.dumps([self.key_prefix, task, part, keys, answers]).encode()).hexdigest()

    def kept_audit(self, key: str) -> dict[str, Any] | None:
        """The audit fields kept for ``key`` by the run that computed these answers, if any."""
        row = self.conn.execute("SELECT audit FROM audits WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def keep_audit(self, key: str, fields: dict[str, Any]) -> None:
        """Keep a task's audit of these answers (an audit that passed, or did not apply)."""
        try:
            with self.conn:
                self.conn.execute("INSERT OR REPLACE INTO audits VALUES (?, ?, ?, ?)",
                                  (key, self.model, json.dumps(fields), time.time()))
        except sqlite3.OperationalError as exc:
            raise EvalsuiteError(
                f"could not write the request cache {self.cache_path} ({exc}); free disk space or run with --no-cache"
            ) from None


def _encode(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def _decode(kind: str, text: str) -> Any:
    value = json.loads(text)
    if kind == "loglikelihood":
        return (float(value[0]), bool(value[1]))
    return value


def wrap(lm: Any, source: Any, options: Any, backend: str, path: str | os.PathLike | None = None) -> CachedLM:
    """``lm`` behind the cache, keyed on :func:`key_prefix`; entries are listed under the model identity."""
    return CachedLM(lm, key_prefix(source, options, backend), path or cache_path(), model=source.identity)


# -- ``evalsuite cache info|clear`` -------------------------------------------------------
@dataclass
class CacheInfo:
    path: Path
    entries: int
    size_bytes: int
    per_model: dict[str, int]


def info(path: str | os.PathLike | None = None) -> CacheInfo:
    path = Path(path or cache_path())
    if not path.exists():
        return CacheInfo(path, 0, 0, {})
    conn = connect(path)
    try:
        per_model = dict(conn.execute("SELECT model, COUNT(*) FROM requests GROUP BY model ORDER BY 2 DESC").fetchall())
    finally:
        conn.close()
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
    return CacheInfo(path, sum(per_model.values()), size, per_model)


def clear(path: str | os.PathLike | None = None, model: str | None = None) -> int:
    """Delete every entry (or one model identity's); returns how many were deleted.

    A file that is not a usable database (the error of every other command names this fix) is
    removed with its WAL and shared-memory files when everything is cleared; -1 says so. Clearing
    one model's entries from it is refused: its entries cannot be told apart."""
    path = Path(path or cache_path())
    if not path.exists():
        return 0
    try:
        check_usable(path)
    except UnusableCacheError:
        if model:
            raise UnusableCacheError(f"request cache {path} is unusable, so one model's entries cannot be picked out "
                                     f"of it; clear it all with `evalsuite cache clear` (no --model)") from None
        for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            try:
                file.unlink(missing_ok=True)
            except OSError as exc:
                raise EvalsuiteError(f"could not delete the unusable request cache {file} ({exc.strerror}); "
                                     f"delete it by hand") from None
        return -1
    conn = connect(path)
    try:
        if model:
            deleted = conn.execute("DELETE FROM requests WHERE model = ?", (model,)).rowcount
            conn.execute("DELETE FROM audits WHERE model = ?", (model,))
        else:
            deleted = conn.execute("DELETE FROM requests").rowcount
            conn.execute("DELETE FROM audits")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
    finally:
        conn.close()
    return deleted
