"""One preparation path: everything a run checks and opens before it evaluates anything.

``evaluate`` (the run), ``plan_cost`` (the dry run), the contamination check and nightly (through
``evaluate``) all start here, so they refuse the same input with the same one line and exit 2
for the same reasons: a dry run exits as the run would. :func:`prepare` does, in this order,
the cheap checks first:

1. the config (:meth:`~evalsuite.config.RunConfig.validate`): names, numbers, flags;
2. every model resolved (:func:`resolve_models`): GGUF files, registry models' memory and
   parallel sizes, the device, Hub models reachable and pinned, remote code consented to, the
   per-model checks of :data:`MODEL_CHECKS` (access);
3. the data folder, the results store (writable, no folder inside it a link or read-only);
4. the request cache usable;
5. the tasks' data loaded, keeping *missing* (no data) apart from *failed* (broken data);
6. every model materialized and opened (:func:`evalsuite.models.preflight.open_model`: config,
   tokenizer, weight headers), so a broken folder is one line naming the file, before any run row;
7. each model's key in the store, and for a dry run the run id checked as the run would claim
   it (finished, sharded, other settings).

Nothing is written to the store here: a refused run leaves it as it was; a dry run writes
nothing at all. The run then claims its run id and its models' keys (:func:`claim_keys`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from evalsuite.config import RunConfig, check_device
from evalsuite.errors import DataFormatError, EvalsuiteError, MissingDataError
from evalsuite.models.gguf import check_gguf
from evalsuite.models.identity import ModelSource
from evalsuite.models.loading import resolve_dtype
from evalsuite.models.memory import check_fits, param_count
from evalsuite.models.registry import ModelSpec, resolve_model
from evalsuite.store.parquet_store import ResultsStore
from evalsuite.store.status import TaskStatus
from evalsuite.tasks import LoadedTask, load_spec

@dataclass
class PreparedModel:
    """One model, resolved, keyed in the store, materialized and opened."""

    spec: ModelSpec
    source: ModelSource
    opened: Any  # evalsuite.models.preflight.OpenedModel: config, tokenizer, context length


@dataclass
class Prepared:
    """Everything :func:`prepare` checked and opened: what a run, a dry run or a check starts from."""

    config: RunConfig  # validated
    models: list[PreparedModel]
    loaded: dict[str, LoadedTask]
    unavailable: dict[str, tuple[str, str]] = field(default_factory=dict)  # task -> (missing | failed, why)
    store: ResultsStore | None = None

    @property
    def specs(self) -> list[ModelSpec]:
        return [m.spec for m in self.models]

    @property
    def sources(self) -> dict[str, ModelSource]:
        return {m.spec.alias: m.source for m in self.models}


def prepare(config: RunConfig, *, dry_run: bool = False) -> Prepared:
    """Check and open everything a run needs (see the module docstring); nothing is evaluated.

    ``dry_run``: the same checks, but the results folder is not created and the run id is
    checked without being claimed (the run claims it in ``evaluate``)."""
    requested_device = config.device
    # the dry run is how a slow CPU run is measured: it is not refused for its length (cpu_budget)
    config = config.validate(gpu=False, cpu_budget=not dry_run)
    specs = resolve_models(config, requested_device=None if dry_run else requested_device)
    from evalsuite.tasks.data import resolve_data_dir

    root = resolve_data_dir(config.data_dir)
    store = ResultsStore(config.results_dir)
    store.check_writable(create=False)  # creates nothing yet: a refused run leaves no trace
    if config.use_cache:  # a corrupt cache file is bad input: refused here, before a run row exists
        from evalsuite.run.request_cache import cache_path, check_usable

        if Path(cache_path()).exists():  # none yet is usable (and the dry run does not create one)
            check_usable()
    from evalsuite.tasks.data import parse_data_revision

    loaded, unavailable = load_task_data(list(config.tasks or ()), root, parse_data_revision(config.data_revision))
    models = open_models(specs, config)
    from evalsuite.store.claims import assign_model_keys

    keyed = assign_model_keys(store, [m.spec for m in models], claim=False)  # claimed by the run (claim_keys)
    models = [PreparedModel(spec, replace(m.source, spec=spec), m.opened) for m, spec in zip(models, keyed)]
    if not dry_run:
        store.check_writable()  # the folder created and written to (a probe), just before the run claims its id
    prepared = Prepared(config, models, loaded, unavailable, store)
    if dry_run:
        check_run_id(prepared)
    return prepared


def resolve_models(config: RunConfig, names: list[str] | None = None, *,
                   requested_device: str | None = None) -> list[ModelSpec]:
    """``names`` (default: the config's models) resolved and checked without weights: each
    model's route (a backend that can run it, its packages), what needs no network or GPU first
    (GGUF files, registry models' memory and parallel sizes), then the device, Hub access
    (:func:`evalsuite.models.access.check_access_all`, before any download), a CPU run chosen by
    ``--device auto`` (``requested_device``) sized by the Hub, and Hub models reachable or cached
    with their revision pinned and remote code consented to. ``config`` is validated."""
    from evalsuite.models.registry import check_route

    backend, device, dtype = config.backend, config.device, config.dtype
    specs = [resolve_model(name, trust_remote_code=config.trust_remote_code) for name in (names or config.models or ())]
    for spec in specs:  # a model its backend cannot run, or without its packages: refused first
        check_route(spec, backend)

    from evalsuite.backends.registry import get_backend

    plans_parallel = get_backend(backend).plans_parallel  # such a backend plans its GPUs and memory itself

    def check_parallel(spec: ModelSpec) -> None:
        model_dtype = default_dtype(spec, device, dtype) if plans_parallel else "float32"
        _parallelism(spec, backend, model_dtype, config.tensor_parallel, config.data_parallel)

    for spec in specs:  # what needs no network or GPU first: GGUF files, the memory of registry models
        if spec.kind == "gguf":
            check_gguf(Path(spec.source))
        if spec.params:
            if not plans_parallel:
                check_fits(spec, default_dtype(spec, device, dtype), device)
            check_parallel(spec)
    check_device(device)
    from evalsuite.models.access import check_access_all

    check_access_all(spec for spec in specs if spec.kind in ("hub", "dus"))  # every model (a DUS model's base), before the first evaluation
    if requested_device == "auto" and device == "cpu":  # Hub models outside the registry, sized by the Hub
        from evalsuite.models.access import hub_params
        from evalsuite.models.devices import check_cpu_run

        for spec in specs:
            params = None if spec.params else hub_params(spec)
            if params:
                check_fits(spec, default_dtype(spec, device, dtype), device, params=params)
                check_cpu_run(spec.alias, params, list(config.tasks or ()), config.limit)
    for spec in specs:
        if spec.kind == "hub":  # reachable (or cached) at all? Pins the revision to a commit, once
            from evalsuite.models.hub import resolve_snapshot
            from evalsuite.models.registry import check_remote_code

            check_remote_code(resolve_snapshot(spec.source, spec.revision)[1], spec.trust_remote_code, spec.source)
        if not spec.params:
            check_parallel(spec)
    return specs


def load_task_data(task_names: list[str], root: Any,
                   revisions: Any = None) -> tuple[dict[str, LoadedTask], dict[str, tuple[str, str]]]:
    """The tasks whose data loads (at the pinned dataset ``revisions``: ``--data-revision``), and
    for the others ``(missing | failed, why)``; none at all is bad input (nothing to evaluate)."""
    from evalsuite.tasks.data import with_revision

    loaded: dict[str, LoadedTask] = {}
    unavailable: dict[str, tuple[str, str]] = {}  # task -> (missing | failed, why)
    for name in task_names:
        try:
            task_spec = load_spec(name)
            loaded[name] = LoadedTask(replace(task_spec, dataset=with_revision(task_spec.dataset, revisions or {})),
                                      root)
        except MissingDataError as exc:
            unavailable[name] = (TaskStatus.MISSING, str(exc))
        except DataFormatError as exc:
            unavailable[name] = (TaskStatus.FAILED, str(exc))
    if not loaded:
        raise EvalsuiteError("nothing to evaluate: " + "; ".join(f"{t}: {why}" for t, (_, why) in unavailable.items()))
    return loaded, unavailable


def open_models(specs: list[ModelSpec], config: RunConfig) -> list[PreparedModel]:
    """Each model materialized (converted, built or pinned), checked against memory by its real
    parameter count, and opened (:func:`~evalsuite.models.preflight.open_model`)."""
    from evalsuite.models.preflight import open_model
    from evalsuite.models.source import materialize

    out = []
    for spec in specs:
        source = materialize(spec, config.verify_weights)
        opened = open_model(source)  # first: param_count reads the config it checks
        if not spec.params:  # registry models were checked in resolve_models
            check_fits(spec, default_dtype(spec, config.device, config.dtype), config.device,
                       params=param_count(source))
        out.append(PreparedModel(spec, source, opened))
    return out


def claim_keys(prepared: Prepared) -> None:
    """Claim each folder's or GGUF file's key for its source, atomically (the run, once its run
    id is claimed): a same-named folder of another run that started at the same moment and took
    the key first makes this run stop before evaluating, with the command to rerun (which then
    gives this folder its own ``NAME-<hash>`` key)."""
    from evalsuite.store.claims import _NAMED_BY_PATH

    store = prepared.store
    assert store is not None
    for spec in prepared.specs:
        if spec.kind in _NAMED_BY_PATH:
            if not store.claim_model_key(spec.alias, spec.source):
                raise EvalsuiteError(f"model key '{spec.alias}' was just taken by another run of a same-named model "
                                     f"({spec.source} is another one); rerun the same command: this model then gets "
                                     f"its own key")


def check_run_id(prepared: Prepared) -> None:
    """What claiming the run id would refuse, checked without claiming (the dry run): an
    existing run id without ``--resume``, a finished run, another configuration or shard count."""
    from evalsuite.store.claims import check_existing

    config = prepared.config
    if config.run_id is None or prepared.store is None:
        return
    shard = config.shard if isinstance(config.shard, tuple) else None  # validated: a tuple or None
    check_existing(prepared.store, config.run_id, config.resume, shard, prepared.specs,
                   run_settings(config, list(prepared.loaded)))


def run_settings(config: RunConfig, loaded: list[str]) -> Callable[[ModelSpec], Any]:
    """Per model, the settings a resume compares (:class:`evalsuite.store.claims.Settings`)."""
    from evalsuite.store.claims import Settings

    def wanted(spec: ModelSpec) -> Settings:
        return Settings(tuple(loaded), config.limit, config.backend,
                        default_dtype(spec, config.device, config.dtype), config.generation, config.tag)

    return wanted


def default_dtype(spec: ModelSpec, device: str, dtype: str | None) -> str:
    """The requested dtype, else on GPU the registry's (aliases) or the config's (other models),
    float32 on CPU (:func:`evalsuite.models.loading.resolve_dtype`)."""
    return resolve_dtype(spec, device, dtype)[0]


def _parallelism(spec: ModelSpec, backend: str, dtype: str, tensor_parallel: int | None,
                 data_parallel: int) -> tuple[int, int]:
    """(tensor, data) parallel sizes: a backend that plans them (vLLM) from the registry and the
    GPUs; 1 elsewhere (:meth:`evalsuite.backends.registry.BackendInfo.parallel`)."""
    from evalsuite.backends.registry import get_backend

    return get_backend(backend).parallel(spec, dtype, tensor_parallel, data_parallel)


__all__ = ["Prepared", "PreparedModel", "prepare", "resolve_models", "load_task_data",
           "open_models", "claim_keys", "check_run_id", "run_settings", "default_dtype"]
