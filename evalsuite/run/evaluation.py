"""``evaluate``: models x tasks -> scores and per-sample records in the results store.

The work happens in named phases: check the input (models, tasks, device, batch size, results
folder) and open every model (config, tokenizer, weight headers) before anything is evaluated,
so bad input costs nothing and exits 2, and load the tasks' data (a task without data is
``missing``, one with broken data ``failed``, the others run): both are
:func:`evalsuite.run.preparation.prepare`, shared with the dry run and contamination. Then the
run id and the models' keys are claimed, and per model the backend is built, each task
evaluated in the v1 evaluation order in chunks of documents (each chunk's requests go to the
backend together, so it can batch and share prefixes) and each task's records written the
moment it finishes.

The run row says how the run ended, always: ``running`` when it starts, then ``ok`` (every task
scored), ``partial`` (some tasks failed or had no data), ``failed`` (none scored, or the model
did not load) or ``interrupted`` (Ctrl-C, SIGTERM). A process killed outright leaves ``running``,
which :mod:`evalsuite.store.run_views` reads as ``interrupted`` once the process is gone.
"""
from __future__ import annotations

import contextlib
import json
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from evalsuite.backends import BackendOptions, build_backend
from evalsuite.backends.registry import ask, get_backend
from evalsuite.config import CHUNK_DOCS, RunConfig, backend_settings, check_device, parse_batch_size
from evalsuite.errors import DataFormatError, EvalsuiteError, StoreError
from evalsuite.models.identity import ModelSource
from evalsuite.models.loading import resolve_dtype
from evalsuite.run.manifest import environment
from evalsuite.models.registry import ModelSpec
from evalsuite.models.source import materialize
from evalsuite.run.preparation import _parallelism, default_dtype  # noqa: F401 - default_dtype: moved, kept importable
from evalsuite.store.records import RunRecord, SampleRecord, ScoreRecord
from evalsuite.store.parquet_store import ResultsStore
from evalsuite.store.status import FINISHED, RunStatus, TaskStatus
from evalsuite.tasks import DocPrompt, LoadedTask, load_spec

#: Exit statuses of ``evalsuite run`` (and ``evaluate(...).exit_code``).
EXIT_OK, EXIT_TASK_PROBLEM, EXIT_BAD_INPUT = 0, 1, 2


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a run; carries the run id so the message can say how to resume."""

    def __init__(self, signame: str = "SIGINT", run_id: str | None = None, results_dir: str | None = None):
        super().__init__(signame)
        self.signame = signame
        self.run_id = run_id
        self.results_dir = results_dir

    def message(self) -> str:
        where = f" in {self.results_dir}/" if self.results_dir else ""
        run = f" of run {self.run_id}" if self.run_id else ""
        return (f"interrupted ({self.signame}): finished tasks{run} are stored{where}; rerun the same command "
                f"with --resume to continue without recomputing them")


@dataclass
class EvalResult:
    """What one ``evaluate`` call produced; everything is also in the results store."""

    run_id: str
    results_dir: Path
    models: list[str]
    tasks: list[str]
    unavailable: dict[str, str] = field(default_factory=dict)  # task -> why (missing or failed data)
    shard: tuple[int, int] | None = None  # the one shard this process evaluated

    @property
    def store(self) -> ResultsStore:
        return ResultsStore(self.results_dir)

    def views(self) -> list[Any]:
        """The run as :mod:`evalsuite.store.run_views` reads it, one view per model (shards merged)."""
        from evalsuite.store.run_views import run_views

        order = {model: i for i, model in enumerate(self.models)}
        return sorted(run_views(self.store, self.run_id), key=lambda v: order.get(v.model, len(order)))

    def scores(self) -> Any:
        import pandas as pd

        return pd.concat([v.scores for v in self.views()], ignore_index=True)

    def samples(self, task: str | None = None) -> Any:
        import pandas as pd

        return pd.concat([v.samples(task) for v in self.views()], ignore_index=True)

    def rows(self) -> list[Any]:
        """Leaderboard rows in the order the models were asked for."""
        return [v.leaderboard_row() for v in self.views()]

    def table(self) -> str:
        from evalsuite.analysis.leaderboard import run_summary

        return run_summary(self.views())

    @property
    def exit_code(self) -> int:
        """0 when every requested task of every model is ``ok``, else 1 (a task failed or had no data).

        For one shard: 0 when its own part is done (its run rows ``ok``); other shards still
        missing are the normal state of a sharded run, not this shard's failure."""
        if self.shard is not None:
            text = f"{self.shard[0]}/{self.shard[1]}"
            rows = self.store.runs(run_id=self.run_id)
            mine = rows[rows["shard"] == text]
            done = set(mine[mine["status"] == RunStatus.OK]["model"])
            return EXIT_OK if set(self.models) <= done else EXIT_TASK_PROBLEM
        for view in self.views():
            statuses = {t: s.status for t, s in view.task_scores().items()}
            if any(statuses.get(task) != TaskStatus.OK for task in self.tasks):
                return EXIT_TASK_PROBLEM
        return EXIT_OK


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def evaluate(
    models: Sequence[str] | str | None = None,
    tasks: Sequence[str] | str | None = None,
    *,
    config: RunConfig | None = None,
    **options: Any,
) -> EvalResult:
    """Evaluate ``models`` (default ``smollm2``) on ``tasks`` (default the leaderboard suite).

    The options are :class:`~evalsuite.config.RunConfig`'s fields, as keyword arguments
    (``limit=5, data_dir=..., backend=...``) or as ``config=RunConfig(...)`` (keywords given
    too replace the config's). Bad input raises :class:`~evalsuite.errors.EvalsuiteError`
    before anything loads. A task without data or with broken data is recorded
    (``missing``/``failed``) and the others run; ``result.exit_code`` says whether every task
    was scored. ``resume=True`` continues the latest interrupted run of the same models, tasks,
    limit, backend and tag under its run id (or ``run_id``'s), only with the same
    configuration, keeping models already ``ok``; without it an existing ``run_id`` is refused
    (:mod:`evalsuite.store.claims`). ``shard=(I, N)`` evaluates only documents ``p % N == I`` of each task (see
    :mod:`evalsuite.store.shards`); the N shards share ``run_id``. ``tensor_parallel`` and
    ``data_parallel`` apply to ``vllm``. ``generation``: the evalsuite engine's greedy decoding,
    ``batched`` (default) or ``exact`` (one prompt at a time, batch-size-1 arithmetic).
    The dry run is its own entry point, :func:`evalsuite.run.dry_run.plan_cost` (same options,
    same input checks: :func:`evalsuite.run.preparation.prepare`). ``verify_weights`` hashes local weights in full
    instead of trusting the size + mtime cache (docs/safety.md). ``audit=False`` skips the
    engine's self-audit of each task (:mod:`evalsuite.run.audit`); its score rows then say "not audited".
    """
    config = RunConfig.build(config, models=models, tasks=tasks, **options)
    # -- phases 1 and 2: check the input, open every model, load the tasks' data; nothing is
    # written yet (evalsuite.run.preparation: the dry run and contamination share it) ----------
    from evalsuite.run.preparation import prepare

    requested_device = config.device
    prepared = prepare(config)
    config, specs, store = prepared.config, prepared.specs, prepared.store
    assert store is not None
    assert isinstance(config.tasks, tuple)  # validate() (in prepare) made it the task names
    task_names = list(config.tasks)
    loaded, unavailable = prepared.loaded, prepared.unavailable
    start = _start_run(store, config, specs, list(loaded))
    run_id = start.run_id
    try:
        from evalsuite.run.preparation import claim_keys

        claim_keys(prepared)  # the models' keys, atomically, now that the run id is this process's
    except BaseException:
        store.release_claim(start.claim)
        raise
    from evalsuite.models.devices import describe_device

    _say(describe_device(config.device, requested_device))  # the run's first line: what it runs on (bad input: none)
    for name, (status, why) in unavailable.items():
        _say(f"{name}: {'no data' if status == TaskStatus.MISSING else 'broken data'}, not evaluated: {why}")

    # -- phase 3: models x tasks ---------------------------------------------------------------
    try:
        with _signals_raise(run_id, str(config.results_dir)):
            for spec in specs:
                if spec.alias in start.keep:
                    continue
                _evaluate_model(spec, loaded, unavailable, store, run_id, config, prepared.sources[spec.alias])
    finally:
        store.release_claim(start.claim)
    return EvalResult(run_id, Path(config.results_dir), [s.alias for s in specs], task_names,
                      {t: why for t, (_, why) in unavailable.items()}, config.shard_pair)


# -- input checks (the rest are RunConfig.validate) ------------------------------------------
def _start_run(store: ResultsStore, config: RunConfig, specs: list[ModelSpec], loaded: list[str]) -> Any:
    """The run id to write under, claimed, with the resume rules checked (:mod:`evalsuite.store.claims`)."""
    from evalsuite.run.preparation import run_settings
    from evalsuite.store.claims import start_run
    from evalsuite.store.run_views import resumable_run_id

    assert isinstance(config.tasks, tuple)  # a validated config: the task names
    task_names = list(config.tasks)
    return start_run(store, config.run_id, config.resume, config.shard_pair, specs, run_settings(config, loaded), new_run_id,
                     lambda: resumable_run_id(store, [s.alias for s in specs], task_names, config.limit,
                                              config.backend, config.tag))


# -- one model ---------------------------------------------------------------------------------
def _evaluate_model(spec: ModelSpec, loaded: dict[str, LoadedTask], unavailable: dict[str, tuple[str, str]],
                    store: ResultsStore, run_id: str, config: RunConfig, prepared: ModelSource | None = None) -> None:
    backend, device, limit, tag, shard = config.backend, config.device, config.limit, config.tag, config.shard_pair
    use_cache, progress = config.use_cache, config.progress
    dtype, dtype_note = resolve_dtype(spec, device, config.dtype)
    run_notes = "; ".join(x for x in (dtype_note, "generation exact (one prompt at a time)" if config.generation == "exact" else None) if x)
    started = datetime.now(UTC)
    clock = time.perf_counter()
    tensor_parallel, data_parallel = _parallelism(spec, backend, dtype, config.tensor_parallel, config.data_parallel)
    part = f"shard{shard[0]}of{shard[1]}" if shard else ""
    options = config.backend_options(dtype, tensor_parallel, data_parallel)
    record = _run_record(run_id, spec, None, options, backend, loaded, limit, started, tag, shard, run_notes)
    store.write_run(replace(record, status=RunStatus.RUNNING), part)

    def finish(status: str, error: str | None = None, source: ModelSource | None = None, notes: str | None = None) -> None:
        """Rewrite the run row with how the run ended (on an error path, never masking that error)."""
        done = _run_record(run_id, spec, source, options, backend, loaded, limit, started, tag, shard, run_notes) if source else record
        final = replace(done, status=status, error=error, finished_at=datetime.now(UTC),
                        wall_time_s=time.perf_counter() - clock,
                        notes="; ".join(x for x in (done.notes, notes) if x) or None)
        if status in FINISHED:
            store.write_run(final, part)
            return
        with contextlib.suppress(EvalsuiteError):  # e.g. the disk filled up: the row stays "running"
            store.write_run(final, part)

    source = None
    _say(f"{spec.alias}: {run_notes or dtype_note}, backend {backend}"
         + (f", tensor parallel {tensor_parallel} x data parallel {data_parallel}" if get_backend(backend).plans_parallel else ""))
    try:
        # materialized, sized and opened by evalsuite.run.preparation before any run row
        source = prepared if prepared is not None else materialize(spec, config.verify_weights)
        record = _run_record(run_id, spec, source, options, backend, loaded, limit, started, tag, shard, run_notes)
        store.write_run(replace(record, status=RunStatus.RUNNING), part)

        def load() -> Any:  # sized and opened by the preparation already
            return build_backend(backend, source, options)

        kept = _kept_answers(load, source, options, config, loaded) if use_cache else None
        auditor: Auditor | _KeptAudits
        if kept is not None:  # every answer and audit is in the request cache: the model is not loaded
            lm, auditor = kept
            _say(f"{spec.alias}: every answer is in the request cache; the model is not loaded")
        else:
            lm = load()
            if lm.engine_note:  # which executor, and why
                _say(f"{spec.alias}: {lm.engine_note}")
            if use_cache:  # finished requests survive a kill; a rerun computes only what is missing
                from evalsuite.run.request_cache import wrap

                lm = wrap(lm, source, options, backend)
            from evalsuite.run.audit import Auditor

            auditor = Auditor(lm, enabled=config.audit, share=config.audit_share)
    except KeyboardInterrupt as exc:
        finish(RunStatus.INTERRUPTED, _interrupt_text(exc), source)
        raise
    except StoreError:
        raise
    except BaseException as exc:
        if not _input_error(exc):  # a bug: the row says failed, the error keeps its traceback
            finish(RunStatus.FAILED, _failure_text(exc), source)
            raise
        # a model that does not load (its files, its size, the machine's memory): its tasks fail
        # with the reason, other models run
        message = f"the model did not load ({exc if isinstance(exc, EvalsuiteError) else _one_line(exc)})"
        for name, task in loaded.items():
            store.write_scores(run_id, spec.alias, name, [_score_record(run_id, spec.alias, name, task, TaskStatus.FAILED,
                                                                        message)], part=part)
        _say(f"{spec.alias}: {message}; its tasks are recorded as failed")
        finish(RunStatus.FAILED, message, source)
        return

    for name, (status, why) in unavailable.items():
        store.write_scores(run_id, spec.alias, name, [_score_record(run_id, spec.alias, name, None, status, why)])
    outcomes = [status for status, _ in unavailable.values()]
    chunk = whole_task_chunk(backend)
    try:
        for name, task in loaded.items():
            try:
                _evaluate_task(lm, task, spec.alias, store, run_id, limit, progress, shard=shard, auditor=auditor,
                               chunk=chunk)
                outcomes.append(TaskStatus.OK)
            except DataFormatError as exc:  # the task's data is broken: keep what other tasks computed, go on
                message = str(exc)
                outcomes.append(TaskStatus.FAILED)
                store.write_scores(run_id, spec.alias, name,
                                   [_score_record(run_id, spec.alias, name, task, TaskStatus.FAILED, message)], part=part)
                _say(f"{spec.alias} {name}: failed ({message}); other tasks continue")
    except KeyboardInterrupt as exc:
        finish(RunStatus.INTERRUPTED, _interrupt_text(exc), source, _cache_note(lm, use_cache))
        raise
    except BaseException as exc:  # bad input found mid-run, or a bug: the row says failed, the error propagates
        finish(RunStatus.FAILED, _failure_text(exc), source, _cache_note(lm, use_cache))
        raise
    finally:
        _close(lm)
    if use_cache:
        _say(f"{spec.alias}: {lm.stats()}")
    status = (RunStatus.OK if all(o == TaskStatus.OK for o in outcomes)
              else RunStatus.PARTIAL if TaskStatus.OK in outcomes else RunStatus.FAILED)
    finish(status, None, source, _cache_note(lm, use_cache))


def whole_task_chunk(backend: str) -> int | None:
    """Documents per backend call: a backend that takes whole tasks (vLLM: its own scheduler
    batches, and each call has a fixed cost) gets the task at once; the others :data:`CHUNK_DOCS`."""
    return None if get_backend(backend).whole_tasks else CHUNK_DOCS


def _close(lm: Any) -> None:
    """Release what a backend holds beyond the model (vLLM's replicas) once its model is done."""
    release = getattr(lm, "release_replicas", None)  # the request cache forwards to its backend
    if callable(release):
        release()


def _cache_note(lm: Any, use_cache: bool) -> str | None:
    """The run's notes say which executor the engine chose and why, and how much came from the request cache."""
    unloaded = isinstance(getattr(lm, "lm", None), _Deferred) and lm.lm._lm is None
    notes = (lm.engine_note, lm.stats() if use_cache else None, "the model was not loaded" if unloaded else None)
    return "; ".join(n for n in notes if isinstance(n, str) and n) or None


def _interrupt_text(exc: BaseException) -> str:
    return f"interrupted by {getattr(exc, 'signame', 'SIGINT')}"


def _input_error(exc: BaseException) -> bool:
    """An error of the user's input or machine, stated in one line (EvalsuiteError: unknown or
    damaged model files, too large for memory), or the GPU running out of memory while the
    model loads; anything else is a bug and keeps its traceback."""
    if isinstance(exc, EvalsuiteError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return oom is not None and isinstance(exc, oom)


def _failure_text(exc: BaseException) -> str:
    """What the run row says of an error that ends the run."""
    if isinstance(exc, EvalsuiteError):
        return _one_line(exc)
    return f"{_one_line(exc)} (an internal error; raised with its traceback)"


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return (text.splitlines() or [type(exc).__name__])[0]


@contextlib.contextmanager
def _signals_raise(run_id: str, results_dir: str) -> Iterator[None]:
    """SIGINT and SIGTERM become :class:`RunInterrupted`, so the run row records the interruption
    and the message says how to resume (only the main thread can own signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise RunInterrupted(signal.Signals(signum).name, run_id, results_dir)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except RunInterrupted:
        raise
    except KeyboardInterrupt as exc:  # raised before our handler was reached
        raise RunInterrupted("SIGINT", run_id, results_dir) from exc
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# -- one task ----------------------------------------------------------------------------------
def _evaluate_task(lm: Any, task: LoadedTask, model: str, store: ResultsStore, run_id: str,
                   limit: int | None, progress: bool, shard: tuple[int, int] | None = None,
                   auditor: Any = None, chunk: int | None = CHUNK_DOCS) -> None:
    """Score the task, audit it (a sample re-scored the plain way; beyond tolerance the whole
    task is scored again on the plain executor), then write its samples and scores."""
    from evalsuite.store.shards import select, shard_part, shard_score_rows

    everything = _task_prompts(task, limit)
    prompts = select(everything, shard)
    known = len(getattr(lm, "fallbacks", None) or ())  # routes the engine abandoned before this task
    spec = task.spec
    samples, responses = _score_prompts(lm, task, prompts, model, run_id, progress, chunk)
    audited = (auditor.check(task, prompts, responses, run_id, everything if shard else None)
               if auditor is not None else None)
    if audited is not None and audited.status == "rerun":
        auditor.forget_cached(prompts)
        _say(f"{model} {spec.name}: audit {audited.agree}/{audited.n} ({audited.note}); scoring the task again "
             f"on the plain executor")
        samples, _ = _score_prompts(auditor.plain, task, prompts, model, run_id, progress, chunk)
    scores = score_samples(run_id, model, task, samples)
    abandoned = list(getattr(lm, "fallbacks", None) or ())[known:]  # and while scoring it: the row says so
    if audited is not None:
        scores[0] = replace(scores[0], **audited.fields())
        if (audited.status in ("agree", "not applicable") and hasattr(lm, "keep_audit") and prompts
                and not isinstance(auditor, _KeptAudits)):
            # kept with the answers: a rerun that finds them all needs neither the model nor a new audit
            requests = [inst for p in prompts for inst in p.instances]
            lm.keep_audit(lm.audit_key(_audit_name(spec.name, auditor.share), prompts[0].request_type, requests,
                                       shard_part(shard) if shard else ""), audited.fields())
    if abandoned:
        scores[0] = replace(scores[0], engine_note="; ".join(abandoned))
        _say(f"{model} {spec.name}: " + "; ".join(abandoned))
    if shard is None:
        store.write_samples(run_id, model, spec.name, samples)
        store.write_scores(run_id, model, spec.name, scores)
        return
    # A shard's scores are partial: stored as merge metadata and scored at read time.
    store.write_samples(run_id, model, spec.name, samples, part=shard_part(shard))
    store.write_scores(run_id, model, spec.name, shard_score_rows(scores), part=shard_part(shard))


def _task_prompts(task: LoadedTask, limit: int | None) -> list[DocPrompt]:
    """``task.prompts(limit)``, built once per loaded task (the request-cache check and the task share them)."""
    built = task.__dict__.setdefault("_evalsuite_prompts", {})
    if limit not in built:
        built[limit] = task.prompts(limit)
    return built[limit]


class _Deferred:
    """A backend built on first use: behind the request cache when every answer was found kept,
    it is never built unless an answer disappears from the cache in the meantime."""

    def __init__(self, build: Any) -> None:
        self._build, self._lm = build, None

    @property
    def engine_note(self) -> str | None:
        return None if self._lm is None else self._lm.engine_note

    def _loaded(self) -> Any:
        if self._lm is None:
            self._lm = self._build()
        return self._lm

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
        return self._loaded().loglikelihood(requests)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
        return self._loaded().generate_until(requests)


class _KeptAudits:
    """The audits kept with the answers, for a run that loads no model (:func:`_kept_answers`)."""

    def __init__(self, audits: dict[str, dict[str, Any]], enabled: bool, backend: str) -> None:
        self.audits, self.enabled = audits, enabled
        self.backend_audits = get_backend(backend).audits  # the audit applies to the evalsuite engine only

    def check(self, task: LoadedTask, *_args: Any, **_kwargs: Any) -> Any:
        from evalsuite.run.audit import Audit

        if not self.enabled:
            return Audit("not audited" if self.backend_audits else "not applicable")
        fields = {k.removeprefix("audit_"): v for k, v in self.audits[task.spec.name].items()}
        note = "; ".join(x for x in (fields.pop("note", None), "kept with the cached answers it checked") if x)
        return Audit(**fields, note=note)


def _audit_name(task: str, share: float) -> str:
    """A kept audit's task part of the key: with its share, so a run asking for a larger sample
    (``--audit-share 1``) never reuses a smaller one, and with the audit's own code, so a kept
    verdict is never one an earlier audit (another sample, other tolerances) gave."""
    from evalsuite.run.request_cache import AUDIT_CODE, code_version

    return f"{task} audit-share {share:g} audit-code {code_version(entries=AUDIT_CODE)}"


def _kept_answers(load: Any, source: ModelSource, options: Any, config: RunConfig,
                  loaded: dict[str, LoadedTask]) -> tuple[Any, _KeptAudits] | None:
    """The request cache over a backend that is not loaded, with the kept audits, when every
    request of every task has a kept answer (and, where the run audits, every task a kept
    audit of exactly those answers); else None and the model is loaded as usual. The weights
    are not loaded before that (the preparation only opened the model's files and sized it)."""
    from evalsuite.run.request_cache import wrap
    from evalsuite.store.shards import select, shard_part

    lm = wrap(_Deferred(load), source, options, config.backend)
    audits: dict[str, dict[str, Any]] = {}
    for name, task in loaded.items():
        prompts = select(_task_prompts(task, config.limit), config.shard_pair)
        requests = [inst for p in prompts for inst in p.instances]
        if not requests or not lm.has_all(prompts[0].request_type, requests):
            return None
        if config.audit:
            shard = config.shard_pair
            part = shard_part(shard) if shard else ""
            fields = lm.kept_audit(lm.audit_key(_audit_name(name, config.audit_share), prompts[0].request_type,
                                                requests, part))
            if fields is None:
                return None
            audits[name] = fields
    return lm, _KeptAudits(audits, config.audit, config.backend)


def _score_prompts(lm: Any, task: LoadedTask, prompts: list[DocPrompt], model: str, run_id: str,
                   progress: bool, chunk: int | None = CHUNK_DOCS) -> tuple[list[SampleRecord], list[list[Any]]]:
    """The documents' sample records and the backend's responses (per document), ``chunk``
    documents per call (``None``: the whole task in one call)."""
    from tqdm.auto import tqdm

    samples: list[SampleRecord] = []
    answered: list[list[Any]] = []
    bar = tqdm(total=len(prompts), desc=f"{model} {task.spec.name}", unit="doc", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    step = chunk or max(len(prompts), 1)
    for start in range(0, len(prompts), step):
        part = prompts[start:start + step]
        with _document_progress(lm, part, bar):
            responses = run_requests(lm, part)
        answered.extend(responses)
        for prompt, response in zip(part, responses, strict=True):
            samples.append(_sample_record(run_id, model, task, prompt, task.score(prompt, response)))
    bar.close()
    return samples, answered


@contextlib.contextmanager
def _document_progress(lm: Any, chunk: Sequence[DocPrompt], bar: Any) -> Iterator[None]:
    """Move ``bar`` through ``chunk`` as the backend works on it, where it reports its progress
    mid-call (``answer_hook``: the evalsuite engine after each forward pass or generation, the
    request cache), else by the whole chunk when the call returns. The bar stands at the
    documents fully answered or at the call's share of forward passes done, whichever is further."""
    owner = [d for d, prompt in enumerate(chunk) for _ in prompt.instances]
    left = [len(prompt.instances) for prompt in chunk]
    finished = moved = 0

    seen: set[int] = set()

    def answered(indices: list[int], _answers: list[Any], done: float) -> None:
        nonlocal finished, moved
        for i in indices:
            if i in seen:  # a call redone (the engine fell back to another route) reports again
                continue
            seen.add(i)
            left[owner[i]] -= 1
            finished += left[owner[i]] == 0
        at = min(len(chunk), max(finished, int(done * len(chunk))))
        if at > moved:
            bar.update(at - moved)
            moved = at

    hooked = hasattr(lm, "answer_hook")
    if hooked:
        lm.answer_hook = answered
    try:
        yield
    finally:
        if hooked:
            lm.answer_hook = None
    bar.update(len(chunk) - moved)


def run_requests(lm: Any, prompts: Sequence[DocPrompt]) -> list[list[Any]]:
    """Send the prompts' instances to the backend in one call; responses grouped per prompt."""
    instances = [inst for p in prompts for inst in p.instances]
    kind = prompts[0].request_type
    flat = ask(lm, "generate_until" if kind == "generate_until" else "loglikelihood", instances)
    grouped, offset = [], 0
    for prompt in prompts:
        grouped.append(flat[offset:offset + len(prompt.instances)])
        offset += len(prompt.instances)
    return grouped


def score_samples(run_id: str, model: str, task: LoadedTask, samples: list[SampleRecord]) -> list[ScoreRecord]:
    """The task's score record plus one per subject (MMLU), by :mod:`evalsuite.analysis.aggregation`."""
    from evalsuite.analysis.aggregation import score_records as aggregate_records

    ordered = sorted(samples, key=lambda s: (s.subtask is not None, s.subtask or "", s.eval_position))
    subjects = {u.subtask: len(u.docs) for u in task.units if u.subtask is not None}
    # every sample is made by _sample_record from a SampleScore, whose value is a float (None is only the field default)
    values = cast(list[float], [s.value for s in ordered])
    return aggregate_records(run_id, model, task.spec, values, [s.subtask for s in ordered],
                             n_total=task.n_docs, subjects=subjects)


def _score_record(run_id: str, model: str, name: str, task: LoadedTask | None, status: str,
                  error: str | None) -> ScoreRecord:
    metric = task.spec.metric if task else None
    if metric is None:
        try:
            metric = load_spec(name).metric
        except EvalsuiteError:
            metric = None
    return ScoreRecord(run_id, model, name, None, metric, float("nan"), float("nan"), 0,
                       task.n_docs if task else None, status, error)


def _sample_record(run_id: str, model: str, task: LoadedTask, prompt: DocPrompt, score: Any) -> SampleRecord:
    return SampleRecord(
        run_id=run_id, model=model, task=prompt.task, subtask=prompt.subtask, doc_index=prompt.doc_index,
        eval_position=prompt.eval_position, prompt_hash=prompt.prompt_hash, contexts=list(prompt.contexts),
        continuations=list(prompt.continuations), gold=prompt.gold,
        loglikelihoods=list(score.loglikelihoods) if score.loglikelihoods is not None else None,
        generation=score.generation, extracted=score.extracted, prediction=score.prediction,
        metric=task.spec.metric, value=score.value,
    )


def _run_record(run_id: str, spec: ModelSpec, source: ModelSource | None, options: BackendOptions, backend: str,
                loaded: dict[str, LoadedTask], limit: int | None, started: datetime, tag: str | None,
                shard: tuple[int, int] | None, extra_notes: str | None = None) -> RunRecord:
    data_hashes: dict[str, str] = {}
    for task in loaded.values():
        data_hashes.update(task.data_files)
    notes = spec.notes or None
    if source is not None and source.gguf_converted_from:
        notes = (notes + "; " if notes else "") + f"dequantized from {source.gguf_converted_from}"
    if extra_notes:  # how the dtype was chosen, the generation mode
        notes = (notes + "; " if notes else "") + extra_notes
    env = environment()
    return RunRecord(
        run_id=run_id, model=spec.alias,
        model_id=(source.path if spec.kind != "hub" else spec.source) if source else spec.source,
        model_kind=spec.kind, revision=source.revision if source else spec.revision,
        weights_hash=source.weights_hash if source else None,
        model_files_hash=source.files_hash if source else None,
        dtype=options.dtype, backend=backend, backend_settings=json.dumps(backend_settings(options), sort_keys=True),
        device=options.device, batch_size=str(options.batch_size), **env,
        shard=f"{shard[0]}/{shard[1]}" if shard else None,
        tasks=list(loaded), task_config_hashes={n: t.spec.config_hash for n, t in loaded.items()},
        data_hashes=data_hashes, limit=limit, started_at=started, tag=tag, notes=notes,
    )


def _say(message: str) -> None:
    print(f"evalsuite: {message}", file=sys.stderr, flush=True)


__all__ = ["EvalResult", "RunInterrupted", "evaluate", "new_run_id", "parse_batch_size", "check_device", "CHUNK_DOCS",
           "EXIT_OK", "EXIT_TASK_PROBLEM", "EXIT_BAD_INPUT"]
