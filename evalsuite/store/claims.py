"""Who a run writes as, and what it may write: model keys, run-id claims and the resume rules.

Nothing a run stores may overwrite a finished result (docs/store.md). Three things decide that
before any evaluation:

* **Model keys.** Rows and files are keyed by a model key, unique within the store: a registry
  alias, Hub id or ``dus:`` spec is its own key; a model folder (or ``.gguf`` file) is keyed by
  its name, unless that name already belongs to another model, earlier in this run or in the
  store (a folder elsewhere, a model of another kind, a registry alias); then by
  ``NAME-<6 hex of its resolved path>``. A folder thus keeps its key across runs.
* **Claims.** The run id (one shard of it) is claimed atomically in the store
  (:meth:`~evalsuite.store.parquet_store.ResultsStore.claim_run`): a second process with the same id is
  refused; a claim of a process that is gone is taken over by ``--resume``.
* **Resume rules.** An existing run id is continued only with ``--resume`` and only with the
  same configuration (models, tasks, limit, backend, dtype, generation mode, tag, shard count);
  any difference is refused naming the setting. Models already ``ok`` in the run are kept, not
  evaluated again; a run that is ``ok`` throughout is never rewritten.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from evalsuite.store import names
from evalsuite.errors import EvalsuiteError
from evalsuite.models.registry import REGISTRY, ModelSpec
from evalsuite.store.records import RunRecord
from evalsuite.store.parquet_store import ResultsStore
from evalsuite.store.status import RunStatus

#: Model kinds keyed by their file or folder name (which two models can share).
_NAMED_BY_PATH = ("local", "gguf")


# -- model keys ------------------------------------------------------------------------------
def assign_model_keys(store: ResultsStore, specs: Sequence[ModelSpec], *, claim: bool = True) -> list[ModelSpec]:
    """``specs`` with ``alias`` set to each model's unique key (see the module docstring).

    A folder's or GGUF file's key held by another source's key claim
    (:meth:`~evalsuite.store.parquet_store.ResultsStore.claim_model_key`) counts as taken, so two
    processes starting at once with two same-named folders cannot both take one key. With
    ``claim=False`` (what :func:`evalsuite.run.preparation.prepare` passes) the claims are only
    read; the run claims its keys once its run id is claimed
    (:func:`evalsuite.run.preparation.claim_keys`)."""
    from evalsuite.store.run_views import stored_runs

    owners: dict[str, set[tuple[str | None, str | None]]] = {}
    for row in stored_runs(store):
        owners.setdefault(row.model, set()).add((row.model_kind, _origin(row)))
    used: dict[str, str] = {}  # key -> the source that has it in this run
    keyed: list[ModelSpec] = []
    for spec in specs:
        if spec.source in used.values():
            raise EvalsuiteError(f"model {spec.alias} is named twice in --models; name each model once")
        key = spec.alias
        if spec.kind in _NAMED_BY_PATH:
            key = key if key.isprintable() else names.file_part(key)
            others = owners.get(key, set()) - {(spec.kind, spec.source)}
            if key in used or key in REGISTRY or others or not store.claim_model_key(key, spec.source, claim=claim):
                key = f"{key}-{names.short_hash(spec.source)}"
        used[key] = spec.source
        keyed.append(replace(spec, alias=key))
    return keyed


def _origin(row: RunRecord) -> str | None:
    """The resolved path a folder or GGUF model's row came from (its key's owner)."""
    if row.model_kind == "gguf":
        note = next((n for n in (row.notes or "").split("; ") if n.startswith("dequantized from ")), None)
        return note.removeprefix("dequantized from ") if note else row.model_id
    return row.model_id


# -- the run's settings, as a resume compares them ------------------------------------------
@dataclass(frozen=True)
class Settings:
    """What must be equal for a command to continue a stored run (per model)."""

    tasks: tuple[str, ...]
    limit: int | None
    backend: str | None
    dtype: str | None
    generation: str | None
    tag: str | None

    @classmethod
    def of(cls, row: RunRecord) -> Settings:
        try:
            generation = json.loads(row.backend_settings or "{}").get("generation")
        except ValueError:
            generation = None
        return cls(tuple(row.tasks or ()), _int(row.limit), row.backend, row.dtype, generation, row.tag)


def _int(value: Any) -> int | None:  # a parquet cell: None, NaN or a number
    return None if value is None or value != value else int(value)  # NaN: absent


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    return "none" if value is None else str(value)


# -- choosing and claiming the run id --------------------------------------------------------
@dataclass
class RunStart:
    """The run id to write under, this process's claim on it, and the models to keep as they are."""

    run_id: str
    claim: Path
    keep: set[str]


def start_run(store: ResultsStore, run_id: str | None, resume: bool, shard: tuple[int, int] | None,
              specs: Sequence[ModelSpec], wanted: Callable[[ModelSpec], Settings], new_id: Callable[[], str],
              find_resumable: Callable[[], str | None]) -> RunStart:
    """Decide the run id, claim it, and check the resume rules; refuse (one line) before evaluating."""
    if run_id is None and resume:
        run_id = find_resumable()
        if run_id:
            _say(f"resuming run {run_id}")
        else:
            _say(f"nothing to resume: no interrupted run of {', '.join(s.alias for s in specs)} with these tasks, "
                 f"limit, backend and tag in {store.root}/; starting a new run")
    if run_id is None:
        run_id = new_id()
        return RunStart(run_id, store.claim_run(run_id), set())
    part = f"shard{shard[0]}of{shard[1]}" if shard else ""
    claim = store.claim_run(run_id, part, take_over_dead=resume)
    try:
        keep = _check_existing(store, run_id, resume, shard, specs, wanted)
    except BaseException:
        store.release_claim(claim)
        raise
    return RunStart(run_id, claim, keep)


def _check_existing(store: ResultsStore, run_id: str, resume: bool, shard: tuple[int, int] | None,
                    specs: Sequence[ModelSpec], wanted: Callable[[ModelSpec], Settings]) -> set[str]:
    from evalsuite.store.run_views import effective_status, stored_runs

    rows = stored_runs(store, run_id)
    if not rows:
        return set()
    where = f"in {store.root}/"
    counts = {int(r.shard.partition("/")[2]) for r in rows if r.shard}
    unsharded = any(not r.shard for r in rows)
    if shard is None and counts:
        raise EvalsuiteError(f"run '{run_id}' {where} is a sharded run ({'/'.join(map(str, sorted(counts)))} shards); "
                             f"continue it with --shard I/N, or choose a new --run-id")
    if shard is not None and (unsharded or counts != {shard[1]}):
        had = "is not sharded" if unsharded else f"has {'/'.join(map(str, sorted(counts)))} shards"
        raise EvalsuiteError(f"run '{run_id}' {where} {had}; --shard {shard[0]}/{shard[1]} does not fit it: "
                             f"choose a new --run-id" + ("" if unsharded else f" or pass --shard I/{min(counts)}"))
    text = f"{shard[0]}/{shard[1]}" if shard else None
    mine = [r for r in rows if (r.shard or None) == text]
    what = f"run '{run_id}'" + (f" shard {text}" if text else "")
    if mine and not resume:
        raise EvalsuiteError(f"{what} already exists {where}; pass --resume to continue it, or choose a new --run-id")
    by_key = {s.alias: s for s in specs}
    stored_models = list(dict.fromkeys(r.model for r in rows))
    if not set(stored_models) <= set(by_key):
        raise EvalsuiteError(f"{what} evaluated models {', '.join(stored_models)}; this command names "
                             f"{', '.join(by_key)}: use the run's models, or choose a new --run-id")
    for row in mine or rows:
        have, want = Settings.of(row), wanted(by_key[row.model])
        for name in Settings.__dataclass_fields__:
            old, new = getattr(have, name), getattr(want, name)
            if old != new:
                raise EvalsuiteError(f"{what} {where} was run with {name} {_show(old)} ({row.model}), this command "
                                     f"has {_show(new)}: rerun with the run's settings, or choose a new --run-id")
    keep = {r.model for r in mine if effective_status(r) == RunStatus.OK}
    if mine and keep >= set(by_key):
        raise EvalsuiteError(f"{what} is finished (ok) {where} and is never rewritten; choose a new --run-id to "
                             f"evaluate again")
    for model in sorted(keep):
        _say(f"{model}: already ok in run {run_id}, kept as stored")
    return keep


def _say(message: str) -> None:
    print(f"evalsuite: {message}", file=sys.stderr, flush=True)


#: The checks of an existing run id, without claiming it (the dry run: :mod:`evalsuite.run.preparation`).
check_existing = _check_existing

__all__ = ["assign_model_keys", "Settings", "RunStart", "start_run", "check_existing"]
