"""The one read path of the results store: which runs exist, what state they are in, their scores.

Every reader (``evalsuite results``, ``compare``, ``nightly``, ``report``, ``table``,
:class:`~evalsuite.run.evaluation.EvalResult`, the Ray launcher) goes through here, so they all see the
same thing:

* **Status.** A run row is written ``running`` when a run starts and rewritten ``ok``,
  ``partial``, ``failed`` or ``interrupted`` when it ends. A ``running`` row whose process is
  gone (same host, pid dead or reused) is read as ``interrupted``: a killed run never looks alive.
* **Shards.** A sharded run's pieces are merged here, scoring every task and subject from all
  shards' samples with :mod:`evalsuite.analysis.aggregation`, the runner's own aggregation; a task whose
  shards are not all in yet is ``incomplete``, never a partial score shown as a score.
* **"Latest".** A model's latest run is its most recent run that *finished* with scores
  (``ok`` or ``partial``): a failed, interrupted, still running, incomplete (shards missing) or
  unreadable run never hides earlier results (it is mentioned in the notes instead).
* **Unreadable files.** A file that cannot be read makes its run unreadable, not the store:
  whole-table reads skip it and the readers name it in a note, with what to do.

References (``ref``) name runs the same way everywhere: a run id (``RUN@MODEL`` for a run of
several models), a model alias or model folder (its latest run), ``tag:T`` (the latest run with
that tag), ``latest`` (the most recent finished run) or ``baseline`` (``baseline.json``).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from evalsuite.store import records
from evalsuite.errors import EvalsuiteError
from evalsuite.fsutil import write_json
from evalsuite.store.records import RunRecord, ScoreRecord
from evalsuite.store.parquet_store import DEFAULT_RESULTS_DIR, SHARD_PART, ResultsStore, process_alive
from evalsuite.store.status import FINISHED, UNFINISHED, RunStatus

BASELINE_FILE = "baseline.json"


def effective_status(row: RunRecord) -> str:
    """The stored status, with a ``running`` row of a dead process read as ``interrupted``."""
    status = row.status or RunStatus.RUNNING
    if status == RunStatus.RUNNING and process_alive(row.host, row.pid, row.pid_started) is False:
        return RunStatus.INTERRUPTED
    return status


def _combined_status(statuses: list[str]) -> str:
    """One status for the parts (shards) of a run of one model."""
    for state in UNFINISHED:
        if state in statuses:
            return state
    if RunStatus.OK in statuses and all(s == RunStatus.OK for s in statuses):
        return RunStatus.OK
    if any(s in FINISHED for s in statuses):
        return RunStatus.PARTIAL
    return RunStatus.FAILED


# -- the view of one (run, model) ------------------------------------------------------------
@dataclass
class RunView:
    """One model's part of one run, as every reader should see it."""

    run_id: str
    model: str
    record: RunRecord  # the manifest (for a sharded run: the first shard's, with the combined status)
    status: str  # running | ok | partial | failed | interrupted | incomplete (shards missing)
    scores: Any  # DataFrame in the ScoreRecord layout: task rows (subtask None) and subject rows
    store: ResultsStore
    shard_count: int | None = None
    missing_shards: dict[str, list[int]] = field(default_factory=dict)  # task -> shard indices absent
    notes: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.run_id}@{self.model}"

    @property
    def usable(self) -> bool:
        """Finished with at least one scored task: what "latest" may point at."""
        return self.status in FINISHED

    @property
    def complete(self) -> bool:
        return not self.missing_shards

    def samples(self, task: str | None = None) -> Any:
        """Per-document rows (shards together) in canonical order, optionally of one task."""
        from evalsuite.analysis.aggregation import canonical_order

        frame = self._samples
        if task is not None:
            frame = frame[frame["task"] == task]
        return canonical_order(frame.drop(columns=["part"], errors="ignore"))

    @cached_property
    def _samples(self) -> Any:
        return self.store.read("samples", run_id=self.run_id, model=self.model)

    def task_scores(self) -> dict[str, ScoreRecord]:
        """Task name -> its task-level score record (status ok, missing, failed or incomplete)."""
        rows = self.scores[self.scores["subtask"].isna()]
        return {rec["task"]: records.from_row(ScoreRecord, rec) for rec in rows.to_dict("records")}

    def leaderboard_row(self) -> Any:
        from evalsuite.analysis.leaderboard import rows_from_scores, LeaderboardRow

        found = rows_from_scores(self.scores)
        return found[0] if found else LeaderboardRow(self.model, self.run_id)

    def describe(self) -> str:
        tag = f", tag {self.record.tag}" if self.record.tag else ""
        return f"{self.model} (run {self.run_id}{tag}, {self.status})"


# -- reading runs ----------------------------------------------------------------------------
class _Index:
    """The runs table with effective statuses, grouped by (run id, model)."""

    def __init__(self, store: ResultsStore):
        self.store = store
        self.parts: dict[tuple[str, str], list[RunRecord]] = {}
        for row in _run_rows(store.read("runs")):
            self.parts.setdefault((row.run_id, row.model), []).append(row)
        self.unreadable = list(store.unreadable.values())  # notes: files skipped, and what to do

    def __bool__(self) -> bool:
        return bool(self.parts)

    def status(self, key: tuple[str, str]) -> str:
        """The combined status; ``incomplete`` for a finished sharded run with shards absent."""
        status = _combined_status([effective_status(r) for r in self.parts[key]])
        if status not in UNFINISHED and self.shards_missing(key):
            return RunStatus.INCOMPLETE
        return status

    def shards_missing(self, key: tuple[str, str]) -> bool:
        """Whether the run rows of a sharded run lack a shard (or mix shard counts)."""
        shards = {r.shard for r in self.parts[key] if r.shard}
        if not shards:
            return False
        counts = {s.partition("/")[2] for s in shards}
        return len(counts) > 1 or {s.partition("/")[0] for s in shards} != {str(i) for i in range(int(counts.pop()))}

    def model_of(self, name: str) -> str | None:
        """The model key of a folder or GGUF path ``name`` (it may be ``NAME-<hash>``), if stored."""
        path = Path(os.path.expanduser(name))
        if not path.exists():
            return None
        resolved = str(path.resolve())
        for (_, model), parts in reversed(list(self.parts.items())):
            if any(r.model_id == resolved or f"dequantized from {resolved}" in (r.notes or "") for r in parts):
                return model
        return None

    def started(self, key: tuple[str, str]) -> datetime:
        times = [r.started_at for r in self.parts[key] if r.started_at is not None]
        return min(times) if times else datetime.min.replace(tzinfo=UTC)

    def ordered(self) -> list[tuple[str, str]]:
        """(run id, model) pairs, oldest first."""
        return sorted(self.parts, key=lambda k: (self.started(k), k))

    def tag(self, key: tuple[str, str]) -> str | None:
        return next((r.tag for r in self.parts[key] if r.tag), None)


def _run_rows(frame: Any) -> list[RunRecord]:
    rows = []
    for rec in frame.to_dict("records"):
        row = records.from_row(RunRecord, rec)
        if not row.shard and rec.get("part"):  # version-1 shard rows named their shard in the file only
            row.shard = _shard_text(rec["part"])
        rows.append(row)
    return rows


def _shard_text(part: str) -> str | None:
    match = SHARD_PART.search("__" + part)
    return f"{match['index']}/{match['count']}" if match else None


def _store(results_dir: str | os.PathLike | ResultsStore) -> ResultsStore:
    return results_dir if isinstance(results_dir, ResultsStore) else ResultsStore(results_dir)


def unreadable_note(results_dir: str | os.PathLike | ResultsStore) -> str:
    """``""``, or ``"; "`` and what to do about the first run file that could not be read: "no
    finished run" then names the file that hides one (the store's only run unreadable)."""
    store = _store(results_dir)
    if not store.unreadable:
        store.runs()  # a whole-table read records the unreadable files
    if not store.unreadable:
        return ""
    more = len(store.unreadable) - 1
    return "; " + next(iter(store.unreadable.values())) + (f" ({more} more unreadable)" if more else "")


def run_views(results_dir: str | os.PathLike | ResultsStore, run_id: str) -> list[RunView]:
    """Every model's view of run ``run_id`` (shards merged), in the order the run wrote them."""
    store = _store(results_dir)
    index = _Index(store)
    keys = [k for k in index.ordered() if k[0] == run_id]
    bad = [why for path, why in store.unreadable.items() if path.name.startswith(f"{run_id}__")]
    if bad:
        raise EvalsuiteError(f"run '{run_id}' is unreadable: {bad[0]}")
    if not keys:
        raise EvalsuiteError(f"no run '{run_id}' in {store.root}/; {_recent(index)}")
    scores = store.read("scores", run_id=run_id)
    return [_view(store, index, key, scores[scores["model"] == key[1]]) for key in keys]


def _view(store: ResultsStore, index: _Index, key: tuple[str, str], scores: Any) -> RunView:
    from evalsuite.store import shards as sharding

    run_id, model = key
    parts = index.parts[key]
    status = index.status(key)
    record = RunRecord(**{**asdict(parts[0]), "status": status})
    merged = sharding.merge(store, run_id, model, parts, scores)
    if merged.missing and status not in UNFINISHED:
        status = record.status = RunStatus.INCOMPLETE
    view = RunView(run_id, model, record, status, merged.scores, store, merged.count, merged.missing,
                   list(merged.notes))
    if status == RunStatus.INTERRUPTED:
        view.notes.append(f"{model}: run {run_id} was interrupted ({record.error or 'its process is gone'}); "
                          f"finish it with the same command plus --resume")
    elif status == RunStatus.RUNNING:
        view.notes.append(f"{model}: run {run_id} is still running" + (f" on {record.host}" if record.host else ""))
    return view


def load_run(ref: str, results_dir: str | os.PathLike | ResultsStore = DEFAULT_RESULTS_DIR) -> RunView:
    """The (run, model) a reference names; see the module docstring for the forms."""
    store = _store(results_dir)
    index = _Index(store)
    if not index:
        raise EvalsuiteError(f"no runs in {store.root}/ yet; run `evalsuite run` first{unreadable_note(store)}")
    key = _resolve(store, index, ref.strip())
    return _view(store, index, key, store.read("scores", run_id=key[0], model=key[1]))


def _resolve(store: ResultsStore, index: _Index, ref: str) -> tuple[str, str]:
    ordered = index.ordered()
    finished = [k for k in ordered if index.status(k) in FINISHED]
    if ref == "baseline":
        base = read_baseline(store.root)
        if base is None:
            raise EvalsuiteError(f"no baseline set in {store.root}/; set one with `evalsuite baseline set RUN|tag:T|MODEL`")
        key = (base["run_id"], base["model"])
        if key not in index.parts:
            raise EvalsuiteError(f"the baseline run {key[0]} of {key[1]} is not in {store.root}/ any more; "
                                 f"set another with `evalsuite baseline set`")
        return key
    if ref == "latest":
        if not finished:
            raise EvalsuiteError(f"no finished run in {store.root}/; run `evalsuite run` first{unreadable_note(store)}")
        return finished[-1]
    if ref.startswith("tag:"):
        tagged = [k for k in finished if index.tag(k) == ref[4:]]
        if not tagged:
            tags = sorted({t for k in ordered if (t := index.tag(k))})
            raise EvalsuiteError(f"no finished run tagged '{ref[4:]}' in {store.root}/; known tags: {', '.join(tags) or 'none'}")
        return tagged[-1]
    run_id, _, model = ref.partition("@")
    models = [m for r, m in ordered if r == run_id]
    if models:
        if model:
            if model not in models:
                raise EvalsuiteError(f"run {run_id} has no model '{model}'; it has {', '.join(models)}")
        elif len(models) > 1:
            raise EvalsuiteError(f"run {run_id} evaluated {', '.join(models)}; name one as {run_id}@MODEL")
        return run_id, model or models[0]
    for name in dict.fromkeys(n for n in (ref, index.model_of(ref), Path(os.path.expanduser(ref)).name) if n):
        mine = [k for k in finished if k[1] == name]
        if mine:
            return mine[-1]
    raise EvalsuiteError(f"'{ref}' is not a run id, model with a finished run, tag:T, latest or baseline in "
                         f"{store.root}/; {_recent(index)}")


def _recent(index: _Index) -> str:
    recent = list(dict.fromkeys(r for r, _ in index.ordered()))[-5:]
    return f"recent runs: {', '.join(recent)}" if recent else "the store is empty; run `evalsuite run` first"


def latest_runs(results_dir: str | os.PathLike | ResultsStore = DEFAULT_RESULTS_DIR, *,
                tag: str | None = None) -> list[RunView]:
    """Each model's latest finished run (within ``tag``), in the order models first appeared.

    A newer run of a model that did not finish (failed, interrupted, still running) is named in
    the view's notes so the user knows it exists, but it never replaces the finished one.
    """
    store = _store(results_dir)
    index = _Index(store)
    by_model: dict[str, list[tuple[str, str]]] = {}
    for key in index.ordered():
        if tag is None or index.tag(key) == tag:
            by_model.setdefault(key[1], []).append(key)
    views = []
    for model, keys in by_model.items():
        notes: list[str] = []
        for key in reversed(keys):
            status = index.status(key)
            if status in FINISHED:
                try:
                    view = _view(store, index, key, store.read("scores", run_id=key[0], model=model))
                except EvalsuiteError as exc:  # an unreadable file makes that run unreadable, not the store
                    notes.append(f"{model}: run {key[0]} is unreadable, not shown: {exc}")
                    continue
                if view.usable:
                    view.notes.extend(reversed(notes))
                    views.append(view)
                    break
                status = view.status
            notes.append(f"{model}: newer run {key[0]} {status} (not shown; "
                         f"`evalsuite results --run {key[0]}` shows what it stored)")
    if views:
        views[0].notes.extend(index.unreadable)
    return views


def select_runs(results_dir: str | os.PathLike | ResultsStore = DEFAULT_RESULTS_DIR, *,
                models: list[str] | None = None, runs: list[str] | None = None,
                tag: str | None = None) -> list[RunView]:
    """The runs a report or table is about, in the order the user named them.

    ``runs``: every model of each named run (``RUN@MODEL`` for one). ``models``: each model's
    latest finished run (within ``tag``). ``tag`` alone: the latest of every model carrying it.
    Nothing: the latest finished run of every stored model.
    """
    store = _store(results_dir)
    where = f"{store.root}/"
    if not _Index(store):
        raise EvalsuiteError(f"no results in {where} yet; run `evalsuite run` first (or pass --results-dir)"
                             f"{unreadable_note(store)}")
    if runs:
        views: list[RunView] = []
        for ref in runs:
            run_id, _, model = ref.partition("@")
            found = run_views(store, run_id)
            views.extend(v for v in found if not model or v.model == model)
        return _unique(views)
    latest = latest_runs(store, tag=tag)
    if not latest:
        scope = f" tagged '{tag}'" if tag else ""
        command = "evalsuite run" + (f" --tag {tag}" if tag else "")
        raise EvalsuiteError(f"no finished run{scope} in {where}; run `{command}` first{unreadable_note(store)}")
    if not models:
        return latest
    by_model = {v.model: v for v in latest}
    index = _Index(store)
    chosen = []
    for name in models:
        keys = (name, index.model_of(name), Path(os.path.expanduser(name)).name)
        view = next((by_model[k] for k in keys if k in by_model), None)
        if view is None:
            raise EvalsuiteError(f"no finished run of '{name}' in {where}" + (f" tagged '{tag}'" if tag else "")
                                 + f"; stored models: {', '.join(by_model) or 'none'}")
        chosen.append(view)
    return _unique(chosen)


def _unique(views: list[RunView]) -> list[RunView]:
    seen: dict[tuple[str, str], RunView] = {}
    for view in views:
        seen.setdefault((view.run_id, view.model), view)
    return list(seen.values())


def stored_runs(results_dir: str | os.PathLike | ResultsStore, run_id: str | None = None) -> list[RunRecord]:
    """The run rows (of ``run_id``): the store's unreadable files skipped, except ``run_id``'s own."""
    store = _store(results_dir)
    if run_id is None:
        return [r for parts in _Index(store).parts.values() for r in parts]
    return _run_rows(store.read("runs", run_id=run_id))


def resumable_run_id(results_dir: str | os.PathLike | ResultsStore, models: list[str], tasks: list[str], limit: int | None,
                     backend: str, tag: str | None) -> str | None:
    """The most recent unfinished run (interrupted, or missing a later model) of the same models,
    tasks, limit, backend and tag: rerunning under its id overwrites its partial files, so the
    store ends with one complete run; the request cache makes the finished part free."""
    store = _store(results_dir)
    index = _Index(store)
    by_run: dict[str, list[tuple[str, str]]] = {}
    for key in reversed(index.ordered()):
        by_run.setdefault(key[0], []).append(key)
    wanted = set(models)
    for run_id, keys in by_run.items():
        rows = [r for k in keys for r in index.parts[k]]
        if any(r.shard for r in rows):
            continue
        same = ({k[1] for k in keys} <= wanted
                and all(list(r.tasks or []) == list(tasks) for r in rows)
                and all(r.limit == limit and r.backend == backend and r.tag == tag for r in rows))
        statuses = [index.status(k) for k in keys]
        unfinished = any(s in (RunStatus.INTERRUPTED, RunStatus.FAILED) for s in statuses) or {k[1] for k in keys} != wanted
        if same and unfinished and RunStatus.RUNNING not in statuses:
            return run_id
    return None


# -- the baseline file -----------------------------------------------------------------------
def read_baseline(results_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(results_dir) / BASELINE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or "run_id" not in data or "model" not in data:
            raise ValueError("run_id or model missing")
    except (OSError, ValueError) as exc:
        raise EvalsuiteError(f"{path} is unreadable ({exc}); set the baseline again with `evalsuite baseline set`") from None
    return data


def set_baseline(results_dir: str | os.PathLike | ResultsStore, ref: str) -> RunView:
    """Record the run ``ref`` names as the accepted baseline (written atomically)."""
    store = _store(results_dir)
    view = load_run(ref, store)
    if not view.usable:
        raise EvalsuiteError(f"run {view.run_id} of {view.model} is {view.status}; only a finished run can be the baseline")
    payload = {"ref": ref, "run_id": view.run_id, "model": view.model, "tag": view.record.tag,
               "started_at": str(view.record.started_at),
               "set_at": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        store.root.mkdir(parents=True, exist_ok=True)
        write_json(store.root / BASELINE_FILE, payload, indent=2, fsync=True)
    except OSError as exc:
        raise EvalsuiteError(f"could not write {store.root / BASELINE_FILE} ({exc.strerror}); check space and permissions") from None
    return view


def is_missing(value: Any) -> bool:
    """None or NaN: how an absent number reads back from parquet."""
    return value is None or (isinstance(value, float) and math.isnan(value))
