"""``evaluate``: models x tasks -> scores and per-sample records in the results store.

The work happens in named phases: check the input (models, tasks, device, batch size, results
folder, run id) before anything loads, so bad input costs nothing and exits 2; load the tasks'
data (a task without data is ``missing``, one with broken data ``failed``, the others run);
then per model load it, evaluate each task in the v1 evaluation order in chunks of documents
(each chunk's requests go to the backend together, so it can batch and share prefixes) and
write each task's records the moment it finishes.

The run row says how the run ended, always: ``running`` when it starts, then ``ok`` (every task
scored), ``partial`` (some tasks failed or had no data), ``failed`` (none scored, or the model
did not load) or ``interrupted`` (Ctrl-C, SIGTERM). A process killed outright leaves ``running``,
which :mod:`evalsuite.store.run_views` reads as ``interrupted`` once the process is gone.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalsuite.backends import BackendOptions, build_backend
from evalsuite.config import CHUNK_DOCS, RunConfig, backend_settings, check_device, parse_batch_size
from evalsuite.tasks.data import resolve_data_dir
from evalsuite.errors import DataFormatError, EvalsuiteError, MissingDataError, StoreError
from evalsuite.models.gguf import check_gguf
from evalsuite.models.identity import ModelSource
from evalsuite.models.loading import resolve_dtype
from evalsuite.models.memory import check_fits, param_count
from evalsuite.run.manifest import environment
from evalsuite.models.registry import ModelSpec, resolve_model
from evalsuite.models.source import materialize
from evalsuite.store.records import RunRecord, SampleRecord, ScoreRecord
from evalsuite.store.parquet_store import ResultsStore
from evalsuite.tasks import DocPrompt, LoadedTask, load_spec

if TYPE_CHECKING:
    from evalsuite.run.dry_run import CostPlan

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
        from evalsuite.analysis.leaderboard import format_table

        views = self.views()
        notes = [n for v in views for n in v.notes]
        problems = [f"{v.model} {t}: {s.status}: {s.error}" for v in views for t, s in v.task_scores().items()
                    if s.status not in ("ok", "shard")]
        from evalsuite.run.audit import summary_lines

        return "\n".join([format_table([v.leaderboard_row() for v in views]), *problems, *summary_lines(views), *notes])

    @property
    def exit_code(self) -> int:
        """0 when every requested task of every model is ``ok``, else 1 (a task failed or had no data).

        For one shard: 0 when its own part is done (its run rows ``ok``); other shards still
        missing are the normal state of a sharded run, not this shard's failure."""
        if self.shard is not None:
            text = f"{self.shard[0]}/{self.shard[1]}"
            rows = self.store.runs(run_id=self.run_id)
            mine = rows[rows["shard"] == text]
            done = set(mine[mine["status"] == "ok"]["model"])
            return EXIT_OK if set(self.models) <= done else EXIT_TASK_PROBLEM
        for view in self.views():
            statuses = {t: s.status for t, s in view.task_scores().items()}
            if any(statuses.get(task) != "ok" for task in self.tasks):
                return EXIT_TASK_PROBLEM
        return EXIT_OK


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def evaluate(
    models: Sequence[str] | str | None = None,
    tasks: Sequence[str] | str | None = None,
    *,
    config: RunConfig | None = None,
    dry_run: bool = False,
    **options: Any,
) -> EvalResult | CostPlan:
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
    ``dry_run=True`` evaluates and writes nothing and returns the
    :class:`~evalsuite.run.dry_run.CostPlan`: documents, requests, tokens per backend and estimated
    time (:func:`evalsuite.run.dry_run.plan_cost`). ``verify_weights`` hashes local weights in full
    instead of trusting the size + mtime cache (docs/safety.md). ``audit=False`` skips the
    engine's self-audit of each task (:mod:`evalsuite.run.audit`); its score rows then say "not audited".
    """
    config = RunConfig.build(config, models=models, tasks=tasks, **options)
    if dry_run:
        from evalsuite.run.dry_run import plan_cost

        return plan_cost(config=config)
    # -- phase 1: check the input; nothing is loaded or written yet -------------------------
    config = config.validate(gpu=False)
    backend, device, dtype = config.backend, config.device, config.dtype
    task_names = list(config.tasks)
    specs = [resolve_model(name, trust_remote_code=config.trust_remote_code) for name in config.models]

    def check_parallel(spec: ModelSpec) -> None:
        model_dtype = default_dtype(spec, device, dtype) if backend == "vllm" else "float32"
        _parallelism(spec, backend, model_dtype, config.tensor_parallel, config.data_parallel)

    for spec in specs:  # what needs no network or GPU first: GGUF files, the memory of registry models
        if spec.kind == "gguf":
            check_gguf(Path(spec.source))
        if spec.params:
            if backend != "vllm":
                check_fits(spec, default_dtype(spec, device, dtype), device)
            check_parallel(spec)
    check_device(device)
    for spec in specs:
        if spec.kind == "hub":  # reachable (or cached) at all? Pins the revision to a commit, once
            from evalsuite.models.hub import resolve_snapshot
            from evalsuite.models.registry import check_remote_code

            check_remote_code(resolve_snapshot(spec.source, spec.revision)[1], spec.trust_remote_code, spec.source)
        if not spec.params:
            check_parallel(spec)
    root = resolve_data_dir(config.data_dir)
    store = ResultsStore(config.results_dir)
    store.check_writable()
    from evalsuite.store.claims import assign_model_keys

    specs = assign_model_keys(store, specs)
    if config.use_cache:  # a corrupt cache file is bad input: refused here, before a run row exists
        from evalsuite.run.request_cache import check_usable

        check_usable()

    # -- phase 2: the tasks' data --------------------------------------------------------------
    loaded: dict[str, LoadedTask] = {}
    unavailable: dict[str, tuple[str, str]] = {}  # task -> (missing | failed, why)
    for name in task_names:
        try:
            loaded[name] = LoadedTask(load_spec(name), root)
        except MissingDataError as exc:
            unavailable[name] = ("missing", str(exc))
        except DataFormatError as exc:
            unavailable[name] = ("failed", str(exc))
    if not loaded:
        raise EvalsuiteError("nothing to evaluate: " + "; ".join(f"{t}: {why}" for t, (_, why) in unavailable.items()))
    start = _start_run(store, config, specs, list(loaded))
    run_id = start.run_id
    for name, (status, why) in unavailable.items():
        _say(f"{name}: {'no data' if status == 'missing' else 'broken data'}, not evaluated: {why}")

    # -- phase 3: models x tasks ---------------------------------------------------------------
    try:
        with _signals_raise(run_id, str(config.results_dir)):
            for spec in specs:
                if spec.alias in start.keep:
                    continue
                _evaluate_model(spec, loaded, unavailable, store, run_id, config)
    finally:
        store.release_claim(start.claim)
    return EvalResult(run_id, Path(config.results_dir), [s.alias for s in specs], task_names,
                      {t: why for t, (_, why) in unavailable.items()}, config.shard)


# -- input checks (the rest are RunConfig.validate) ------------------------------------------
def _start_run(store: ResultsStore, config: RunConfig, specs: list[ModelSpec], loaded: list[str]) -> Any:
    """The run id to write under, claimed, with the resume rules checked (:mod:`evalsuite.store.claims`)."""
    from evalsuite.store.claims import Settings, start_run
    from evalsuite.store.run_views import resumable_run_id

    task_names = list(config.tasks)

    def wanted(spec: ModelSpec) -> Settings:
        return Settings(tuple(loaded), config.limit, config.backend,
                        default_dtype(spec, config.device, config.dtype), config.generation, config.tag)

    return start_run(store, config.run_id, config.resume, config.shard, specs, wanted, new_run_id,
                     lambda: resumable_run_id(store, [s.alias for s in specs], task_names, config.limit,
                                              config.backend, config.tag))


def default_dtype(spec: ModelSpec, device: str, dtype: str | None) -> str:
    """The requested dtype, else on GPU the registry's (aliases) or the config's (other models),
    float32 on CPU (:func:`evalsuite.models.loading.resolve_dtype`)."""
    return resolve_dtype(spec, device, dtype)[0]


# -- one model ---------------------------------------------------------------------------------
def _evaluate_model(spec: ModelSpec, loaded: dict[str, LoadedTask], unavailable: dict[str, tuple[str, str]],
                    store: ResultsStore, run_id: str, config: RunConfig) -> None:
    backend, device, limit, tag, shard = config.backend, config.device, config.limit, config.tag, config.shard
    use_cache, progress = config.use_cache, config.progress
    dtype, dtype_note = resolve_dtype(spec, device, config.dtype)
    run_notes = "; ".join(x for x in (dtype_note, "generation exact (one prompt at a time)" if config.generation == "exact" else None) if x)
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    tensor_parallel, data_parallel = _parallelism(spec, backend, dtype, config.tensor_parallel, config.data_parallel)
    part = f"shard{shard[0]}of{shard[1]}" if shard else ""
    options = config.backend_options(dtype, tensor_parallel, data_parallel)
    record = _run_record(run_id, spec, None, options, backend, loaded, limit, started, tag, shard, run_notes)
    store.write_run(replace(record, status="running"), part)

    def finish(status: str, error: str | None = None, source: ModelSource | None = None, notes: str | None = None) -> None:
        """Rewrite the run row with how the run ended (on an error path, never masking that error)."""
        done = _run_record(run_id, spec, source, options, backend, loaded, limit, started, tag, shard, run_notes) if source else record
        final = replace(done, status=status, error=error, finished_at=datetime.now(timezone.utc),
                        wall_time_s=time.perf_counter() - clock,
                        notes="; ".join(x for x in (done.notes, notes) if x) or None)
        if status == "ok" or status == "partial":
            store.write_run(final, part)
            return
        with contextlib.suppress(EvalsuiteError):  # e.g. the disk filled up: the row stays "running"
            store.write_run(final, part)

    source = None
    try:
        source = materialize(spec, config.verify_weights)
        if not spec.params:  # registry models were checked in evaluate(), before any data loaded
            check_fits(spec, dtype, device, params=param_count(source))
        record = _run_record(run_id, spec, source, options, backend, loaded, limit, started, tag, shard, run_notes)
        store.write_run(replace(record, status="running"), part)
        lm = build_backend(backend, source, options)
        if isinstance(getattr(lm, "engine_note", None), str):  # which executor, and why
            _say(f"{spec.alias}: {lm.engine_note}")
        if use_cache:  # finished requests survive a kill; a rerun computes only what is missing
            from evalsuite.run.request_cache import wrap

            lm = wrap(lm, source, options, backend)
        from evalsuite.run.audit import Auditor

        auditor = Auditor(lm, enabled=config.audit, share=config.audit_share)
    except KeyboardInterrupt as exc:
        finish("interrupted", _interrupt_text(exc), source)
        raise
    except StoreError:
        raise
    except BaseException as exc:
        if not _input_error(exc):  # a bug: the row says failed, the error keeps its traceback
            finish("failed", _failure_text(exc), source)
            raise
        # a model that does not load (its files, its size, the machine's memory): its tasks fail
        # with the reason, other models run
        message = f"the model did not load ({exc if isinstance(exc, EvalsuiteError) else _one_line(exc)})"
        for name, task in loaded.items():
            store.write_scores(run_id, spec.alias, name, [_score_record(run_id, spec.alias, name, task, "failed",
                                                                        message)], part=part)
        _say(f"{spec.alias}: {message}; its tasks are recorded as failed")
        finish("failed", message, source)
        return

    for name, (status, why) in unavailable.items():
        store.write_scores(run_id, spec.alias, name, [_score_record(run_id, spec.alias, name, None, status, why)])
    outcomes = [status for status, _ in unavailable.values()]
    try:
        for name, task in loaded.items():
            try:
                _evaluate_task(lm, task, spec.alias, store, run_id, limit, progress, shard=shard, auditor=auditor)
                outcomes.append("ok")
            except DataFormatError as exc:  # the task's data is broken: keep what other tasks computed, go on
                message = str(exc)
                outcomes.append("failed")
                store.write_scores(run_id, spec.alias, name,
                                   [_score_record(run_id, spec.alias, name, task, "failed", message)], part=part)
                _say(f"{spec.alias} {name}: failed ({message}); other tasks continue")
    except KeyboardInterrupt as exc:
        finish("interrupted", _interrupt_text(exc), source, _cache_note(lm, use_cache))
        raise
    except BaseException as exc:  # bad input found mid-run, or a bug: the row says failed, the error propagates
        finish("failed", _failure_text(exc), source, _cache_note(lm, use_cache))
        raise
    if use_cache:
        _say(f"{spec.alias}: {lm.stats()}")
    status = "ok" if all(o == "ok" for o in outcomes) else "partial" if "ok" in outcomes else "failed"
    finish(status, None, source, _cache_note(lm, use_cache))


def _cache_note(lm: Any, use_cache: bool) -> str | None:
    """The run's notes say which executor the engine chose and why, and how much came from the request cache."""
    notes = (getattr(lm, "engine_note", None), lm.stats() if use_cache and hasattr(lm, "stats") else None)
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


def _parallelism(spec: ModelSpec, backend: str, dtype: str, tensor_parallel: int | None,
                 data_parallel: int) -> tuple[int, int]:
    """(tensor, data) parallel sizes: vLLM's from the registry and the GPUs; 1 elsewhere."""
    if backend == "vllm":
        from evalsuite.backends.vllm import plan_parallel

        return plan_parallel(spec, dtype, tensor_parallel, data_parallel)
    if (tensor_parallel or 1) > 1 or data_parallel > 1:
        raise EvalsuiteError(
            "--tensor-parallel and --data-parallel need --backend vllm; other backends spread a large model "
            "over all visible GPUs (--device cuda), and --shard I/N splits the documents across machines"
        )
    return 1, 1


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
                   auditor: Any = None) -> None:
    """Score the task, audit it (a sample re-scored the plain way; beyond tolerance the whole
    task is scored again on the plain executor), then write its samples and scores."""
    from evalsuite.store.shards import select, shard_part, shard_score_rows

    everything = task.prompts(limit)
    prompts = select(everything, shard)
    spec = task.spec
    samples, responses = _score_prompts(lm, task, prompts, model, run_id, progress)
    audited = (auditor.check(task, prompts, responses, run_id, everything if shard else None)
               if auditor is not None else None)
    if audited is not None and audited.status == "rerun":
        auditor.forget_cached(prompts)
        _say(f"{model} {spec.name}: audit {audited.agree}/{audited.n} ({audited.note}); scoring the task again "
             f"on the plain executor")
        samples, _ = _score_prompts(auditor.plain, task, prompts, model, run_id, progress)
    scores = score_samples(run_id, model, task, samples)
    if audited is not None:
        scores[0] = replace(scores[0], **audited.fields())
    if shard is None:
        store.write_samples(run_id, model, spec.name, samples)
        store.write_scores(run_id, model, spec.name, scores)
        return
    # A shard's scores are partial: stored as merge metadata and scored at read time.
    store.write_samples(run_id, model, spec.name, samples, part=shard_part(shard))
    store.write_scores(run_id, model, spec.name, shard_score_rows(scores), part=shard_part(shard))


def _score_prompts(lm: Any, task: LoadedTask, prompts: list[DocPrompt], model: str, run_id: str,
                   progress: bool) -> tuple[list[SampleRecord], list[list[Any]]]:
    """The documents' sample records and the backend's responses (per document), chunk by chunk."""
    from tqdm.auto import tqdm

    samples: list[SampleRecord] = []
    answered: list[list[Any]] = []
    bar = tqdm(total=len(prompts), desc=f"{model} {task.spec.name}", unit="doc", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    for start in range(0, len(prompts), CHUNK_DOCS):
        chunk = prompts[start:start + CHUNK_DOCS]
        responses = run_requests(lm, chunk)
        answered.extend(responses)
        for prompt, response in zip(chunk, responses, strict=True):
            samples.append(_sample_record(run_id, model, task, prompt, task.score(prompt, response)))
        bar.update(len(chunk))
    bar.close()
    return samples, answered


def run_requests(lm: Any, prompts: Sequence[DocPrompt]) -> list[list[Any]]:
    """Send the prompts' instances to the backend in one call; responses grouped per prompt."""
    instances = [inst for p in prompts for inst in p.instances]
    kind = prompts[0].request_type
    method = lm.generate_until if kind == "generate_until" else lm.loglikelihood
    kwargs = {"disable_tqdm": True} if "disable_tqdm" in inspect.signature(method).parameters else {}
    flat = method(instances, **kwargs)
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
    return aggregate_records(run_id, model, task.spec, [s.value for s in ordered], [s.subtask for s in ordered],
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
