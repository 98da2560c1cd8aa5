"""``evaluate``: models x tasks -> scores and per-sample rows in the results store.

The order of work is the v1 evaluation order, in chunks of documents: each chunk's
requests go to the backend together (so it can batch and share prefixes), the progress bar
advances per chunk, and each task's rows are written as soon as the task finishes. A task
whose data is missing is recorded as missing and the others still run.
"""
from __future__ import annotations

import inspect
import math
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .backends import DEFAULT_BACKEND, BackendOptions, build_backend
from .data import resolve_data_dir
from .dryrun import Plan
from .errors import EvalsuiteError, MissingDataError
from .leaderboard import LeaderboardRow, format_table, rows_from_scores
from .loading import ModelSource, check_fits, materialize, param_count
from .manifest import environment
from .models import ModelSpec, resolve_model
from .store import DEFAULT_RESULTS_DIR, ResultsStore
from .tasks import DocPrompt, LoadedTask, aggregate, expand_tasks, load_spec, load_tasks, mean_stderr

#: Documents sent to the backend at once: large enough to batch and share prefixes, small
#: enough for a lively progress bar.
CHUNK_DOCS = 32


@dataclass
class EvalResult:
    """What one ``evaluate`` call produced; everything is also in the results store."""

    run_id: str
    results_dir: Path
    models: list[str]
    tasks: list[str]
    unavailable: dict[str, str] = field(default_factory=dict)  # task -> why

    @property
    def store(self) -> ResultsStore:
        return ResultsStore(self.results_dir)

    def scores(self) -> Any:
        from .sharding import run_scores  # shards of a run are merged at read time

        return run_scores(self.store, self.run_id)

    def samples(self, task: str | None = None) -> Any:
        return self.store.samples(run_id=self.run_id, task=task)

    def rows(self) -> list[LeaderboardRow]:
        """Leaderboard rows in the order the models were asked for."""
        order = {model: i for i, model in enumerate(self.models)}
        return sorted(rows_from_scores(self.scores()), key=lambda row: order.get(row.model, len(order)))

    def table(self) -> str:
        return format_table(self.rows())


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def evaluate(
    models: Sequence[str] | str | None = None,
    tasks: Sequence[str] | str | None = None,
    *,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    backend: str = DEFAULT_BACKEND,
    device: str = "cpu",
    dtype: str | None = None,
    batch_size: int | str = "auto",
    results_dir: str | Path = DEFAULT_RESULTS_DIR,
    tag: str | None = None,
    run_id: str | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
    use_cache: bool = True,
    shard: tuple[int, int] | None = None,
    tensor_parallel: int | None = None,
    data_parallel: int = 1,
    dry_run: bool = False,
) -> EvalResult | Plan:
    """Evaluate ``models`` (default ``smollm2``) on ``tasks`` (default the leaderboard suite).

    ``shard=(I, N)`` evaluates only documents ``p % N == I`` of each task (see
    :mod:`evalsuite.sharding`); the N shards must share ``run_id`` to form one run.
    ``tensor_parallel`` (default: from the registry) and ``data_parallel`` apply to ``vllm``.
    ``dry_run=True`` evaluates nothing and returns the :class:`~evalsuite.dryrun.Plan`: documents,
    requests, tokens per backend and estimated time (see :func:`evalsuite.dryrun.plan`).
    """
    if dry_run:
        from .dryrun import plan

        return plan(models, tasks, limit=limit, data_dir=data_dir, backend=backend, device=device, dtype=dtype,
                    trust_remote_code=trust_remote_code, shard=shard, progress=progress)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise EvalsuiteError(f"--limit must be a positive number of documents, got {limit}; omit it for full runs")
    if shard is not None:
        from .sharding import check_shard

        check_shard(shard)
        if run_id is None:
            raise EvalsuiteError("--shard needs --run-id: give every shard the same run id so they form one run")
    if backend == "vllm" and device == "cpu":
        device = "cuda"  # vLLM runs on GPUs only; this also picks the registry's GPU dtype
    model_names = _split(models) or ["smollm2"]
    task_names = expand_tasks(tasks)
    specs = [resolve_model(name, trust_remote_code=trust_remote_code) for name in model_names]
    for spec in specs:  # refuse models that cannot fit before any data or weights load
        if spec.params and backend != "vllm":
            check_fits(spec, _dtype_for(spec, device, dtype), device)
        _parallelism(spec, backend, _dtype_for(spec, device, dtype), tensor_parallel, data_parallel)
    root = resolve_data_dir(data_dir)
    store = ResultsStore(results_dir)
    run_id = run_id or new_run_id()

    loaded, unavailable = load_tasks(task_names, root)
    if not loaded:
        raise next(iter(_errors(unavailable)))
    for name, why in unavailable.items():
        _say(f"{name}: not evaluated: {why}")

    for spec in specs:
        _evaluate_model(spec, loaded, unavailable, store, run_id, limit, backend, device, dtype, batch_size, tag, progress,
                        shard=shard, tensor_parallel=tensor_parallel, data_parallel=data_parallel, use_cache=use_cache)
    return EvalResult(run_id, Path(results_dir), [s.alias for s in specs], task_names, unavailable)


def _dtype_for(spec: ModelSpec, device: str, dtype: str | None) -> str:
    """The requested dtype, else the registry's on GPU and float32 on CPU."""
    return dtype or (spec.dtype if device.startswith("cuda") else "float32")


def _errors(unavailable: dict[str, str]) -> list[EvalsuiteError]:
    return [MissingDataError(f"{task}: {why}") for task, why in unavailable.items()]


def _evaluate_model(
    spec: ModelSpec,
    loaded: dict[str, LoadedTask],
    unavailable: dict[str, str],
    store: ResultsStore,
    run_id: str,
    limit: int | None,
    backend: str,
    device: str,
    dtype: str | None,
    batch_size: int | str,
    tag: str | None,
    progress: bool,
    *,
    shard: tuple[int, int] | None = None,
    tensor_parallel: int | None = None,
    data_parallel: int = 1,
    use_cache: bool = True,
) -> None:
    dtype = _dtype_for(spec, device, dtype)
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    tensor_parallel, data_parallel = _parallelism(spec, backend, dtype, tensor_parallel, data_parallel)
    part = f"shard{shard[0]}of{shard[1]}" if shard else ""
    source = materialize(spec)
    if not spec.params:  # registry models were checked in evaluate(), before any data loaded
        check_fits(spec, dtype, device, params=param_count(source))
    options = BackendOptions(device=device, dtype=dtype, batch_size=batch_size,
                             tensor_parallel=tensor_parallel, data_parallel=data_parallel)
    run_row = _run_row(run_id, spec, source, options, backend, loaded, limit, started, tag)
    _write_run(store, {**run_row, "status": "running"}, part)
    lm = build_backend(backend, source, options)
    if use_cache:  # finished requests survive a kill; a rerun computes only what is missing
        from .cache import wrap

        lm = wrap(lm, source, options, backend)

    for name in unavailable:
        store.write_scores(run_id, spec.alias, name, [_score_row(run_id, spec.alias, name, None, "missing", unavailable[name])])
    status = "ok"
    for name, task in loaded.items():
        try:
            _evaluate_task(lm, task, spec.alias, store, run_id, limit, progress, shard=shard)
        except EvalsuiteError:
            raise
        except Exception as exc:  # keep what other tasks computed, record the failure, go on
            status = "partial"
            message = f"{type(exc).__name__}: {exc}".splitlines()[0]
            store.write_scores(run_id, spec.alias, name, [_score_row(run_id, spec.alias, name, task, "failed", message)],
                               part=part)
            _say(f"{spec.alias} {name}: failed ({message}); other tasks continue")
    if use_cache:  # the run's notes say how much came from the request cache
        _say(f"{spec.alias}: {lm.stats()}")
        run_row["notes"] = "; ".join(x for x in (run_row.get("notes"), lm.stats()) if x)
    _write_run(
        store,
        {**run_row, "status": status, "finished_at": datetime.now(timezone.utc),
         "wall_time_s": time.perf_counter() - clock},
        part,
    )


def _parallelism(spec: ModelSpec, backend: str, dtype: str, tensor_parallel: int | None,
                 data_parallel: int) -> tuple[int, int]:
    """(tensor, data) parallel sizes: vLLM's from the registry and the GPUs; 1 elsewhere."""
    if backend == "vllm":
        from .backends.vllm import plan_parallel

        return plan_parallel(spec, dtype, tensor_parallel, data_parallel)
    if (tensor_parallel or 1) > 1 or data_parallel > 1:
        raise EvalsuiteError(
            "--tensor-parallel and --data-parallel need --backend vllm; other backends spread a large model "
            "over all visible GPUs (--device cuda), and --shard I/N splits the documents across machines"
        )
    return 1, 1


def _write_run(store: ResultsStore, row: dict[str, Any], part: str) -> None:
    """A shard's run row goes to its own file, so concurrent shards never overwrite each other's."""
    if part:
        row = {**row, "notes": "; ".join(x for x in (row.get("notes"), part) if x)}
    store.write_run(row, part)


def _evaluate_task(lm: Any, task: LoadedTask, model: str, store: ResultsStore, run_id: str,
                   limit: int | None, progress: bool, shard: tuple[int, int] | None = None) -> None:
    from tqdm.auto import tqdm

    from .sharding import select

    prompts = select(task.prompts(limit), shard)
    spec = task.spec
    samples: list[dict[str, Any]] = []
    bar = tqdm(total=len(prompts), desc=f"{model} {spec.name}", unit="doc", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    for start in range(0, len(prompts), CHUNK_DOCS):
        chunk = prompts[start:start + CHUNK_DOCS]
        responses = run_requests(lm, chunk)
        for prompt, response in zip(chunk, responses, strict=True):
            samples.append(_sample_row(run_id, model, task, prompt, task.score(prompt, response)))
        bar.update(len(chunk))
    bar.close()
    if shard is None:
        store.write_samples(run_id, model, spec.name, samples)
        store.write_scores(run_id, model, spec.name, score_rows(run_id, model, task, samples))
        return
    from .sharding import shard_score_rows, shard_part

    # A shard's scores are partial: stored as merge metadata and scored at read time (merge_run).
    store.write_samples(run_id, model, spec.name, samples, part=shard_part(shard))
    store.write_scores(run_id, model, spec.name, shard_score_rows(score_rows(run_id, model, task, samples)),
                       part=shard_part(shard))


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


def score_rows(run_id: str, model: str, task: LoadedTask, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task score row, plus one row per subject for grouped tasks (MMLU)."""
    spec = task.spec
    values = [s["value"] for s in samples]
    groups = [s["subtask"] for s in samples]
    value, stderr = aggregate(spec, values, groups)
    rows = [{**_score_row(run_id, model, spec.name, task, "ok", None), "value": value, "stderr": stderr,
             "n": len(samples)}]
    if spec.group_by:
        for unit in task.units:
            unit_values = [s["value"] for s in samples if s["subtask"] == unit.subtask]
            mean, err = mean_stderr(unit_values)
            rows.append({"run_id": run_id, "model": model, "task": spec.name, "subtask": unit.subtask,
                         "metric": spec.metric, "value": mean, "stderr": err, "n": len(unit_values),
                         "n_total": len(unit.docs), "status": "ok" if unit_values else "missing", "error": None})
    return rows


def _score_row(run_id: str, model: str, name: str, task: LoadedTask | None, status: str, error: str | None) -> dict[str, Any]:
    metric = task.spec.metric if task else None
    if metric is None:
        try:
            metric = load_spec(name).metric
        except EvalsuiteError:
            metric = None
    return {"run_id": run_id, "model": model, "task": name, "subtask": None, "metric": metric,
            "value": math.nan, "stderr": math.nan, "n": 0, "n_total": task.n_docs if task else None,
            "status": status, "error": error}


def _sample_row(run_id: str, model: str, task: LoadedTask, prompt: DocPrompt, score: Any) -> dict[str, Any]:
    return {
        "run_id": run_id, "model": model, "task": prompt.task, "subtask": prompt.subtask,
        "doc_index": prompt.doc_index, "eval_position": prompt.eval_position, "prompt_hash": prompt.prompt_hash,
        "contexts": list(prompt.contexts), "continuations": list(prompt.continuations), "gold": prompt.gold,
        "loglikelihoods": list(score.loglikelihoods) if score.loglikelihoods is not None else None,
        "generation": score.generation, "extracted": score.extracted, "prediction": score.prediction,
        "metric": task.spec.metric, "value": score.value,
    }


def _run_row(run_id: str, spec: ModelSpec, source: ModelSource, options: BackendOptions, backend: str,
             loaded: dict[str, LoadedTask], limit: int | None, started: datetime, tag: str | None) -> dict[str, Any]:
    data_hashes: dict[str, str] = {}
    for task in loaded.values():
        data_hashes.update(task.data_files)
    notes = spec.notes
    if source.gguf_converted_from:
        notes = (notes + "; " if notes else "") + f"dequantized from {source.gguf_converted_from}"
    return {
        "run_id": run_id, "model": spec.alias, "model_id": source.path if spec.kind != "hub" else spec.source,
        "model_kind": spec.kind, "revision": source.revision, "weights_hash": source.weights_hash,
        "dtype": options.dtype, "backend": backend, "device": options.device, "batch_size": str(options.batch_size),
        **environment(), "tasks": list(loaded), "task_config_hashes": {n: t.spec.config_hash for n, t in loaded.items()},
        "data_hashes": data_hashes, "limit": limit, "started_at": started, "finished_at": None,
        "wall_time_s": None, "tag": tag, "notes": notes,
    }


def _split(value: Sequence[str] | str | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    return [v.strip() for v in value if v and v.strip()]


def _say(message: str) -> None:
    print(f"evalsuite: {message}", file=sys.stderr, flush=True)
