"""``--ray ADDRESS --shards N``: one evaluation split into N shards that run as Ray tasks.

Each shard is an ordinary ``evaluate(config=..., shard=(i, N), run_id=ID)`` in a Ray worker process
writing to the same results folder, so a Ray run and N hand-started ``--shard i/N`` runs
(SLURM array, several machines) leave identical files and merge the same way
(:mod:`evalsuite.store.run_views` reads them as one run). Across machines the results folder, the data folder
and the model files must be at the same paths on every node (a shared file system); with
``local`` everything is on this machine.

Ray is optional and imported only here, when a Ray run is asked for.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from evalsuite.config import RunConfig
from evalsuite.errors import EvalsuiteError
from evalsuite.models.registry import resolve_model
from evalsuite.run.evaluation import EvalResult

INSTALL_HINT = "pip install 'evalsuite[ray]'"


def run_on_ray(
    address: str,
    shards: int,
    *,
    config: RunConfig | None = None,
    num_cpus: int | None = None,
    **options: Any,
) -> EvalResult:
    """Run ``shards`` shards of one evaluation on the Ray cluster at ``address``; the run (shards merged).

    ``address`` is a Ray address (``auto``, ``HOST:6379``, ``ray://HOST:10001``) or ``local`` to
    start a cluster on this machine (``num_cpus`` caps it). The evaluation is a
    :class:`~evalsuite.config.RunConfig` (or its fields as keyword arguments), without a
    ``shard``. A failed shard does not stop the others; the error names the shards to rerun by
    hand with ``--shard I/N --run-id ID``.
    """
    from evalsuite.run.evaluation import new_run_id

    if shards < 1:
        raise EvalsuiteError("--shards must be at least 1")
    config = RunConfig.build(config, **options)
    if config.data_parallel > 1:  # a shard's replicas would ask Ray for GPUs the shard already holds
        raise EvalsuiteError(f"--ray runs one shard per Ray task and cannot also start --data-parallel replicas inside "
                             f"a shard; use --shards {shards * config.data_parallel} instead (one shard per replica), "
                             f"or --data-parallel {config.data_parallel} without --ray on one machine")
    ray = _import_ray()
    if config.device == "auto":  # the shards' GPUs are reserved from the device, so decide it here
        from evalsuite.models.devices import resolve_device

        config = replace(config, device=resolve_device(config.device))
    # Workers may start in another folder: give them absolute paths.
    run_id = config.run_id or new_run_id()
    config = replace(config, run_id=run_id, progress=False,
                     results_dir=str(Path(config.results_dir).resolve()),
                     data_dir=str(Path(config.data_dir).resolve()) if config.data_dir else None,
                     task_dir=str(Path(config.task_dir).resolve()) if config.task_dir else None)
    started_here = _connect(ray, address, num_cpus)
    try:
        resources = _sized_resources(ray, config)
        task = ray.remote(_run_shard).options(**resources, max_retries=0)
        pending = {task.remote(i, shards, config): i for i in range(shards)}
        failures, bug = _wait_all(ray, pending, shards)
    finally:
        if started_here:
            ray.shutdown()
    if bug is not None:  # a shard hit a bug: fail loudly, with the worker's traceback (its row says failed)
        raise bug
    if failures:
        listed = "; ".join(f"shard {i}/{shards}: {why}" for i, why in sorted(failures.items()))
        raise EvalsuiteError(f"{listed}; rerun those with evalsuite run ... --shard I/{shards} --run-id {run_id}")
    model_names, task_names = config.selection()
    return EvalResult(run_id, Path(config.results_dir), [resolve_model(m).alias for m in model_names], list(task_names))


def shard_resources(models: Sequence[str] | str | None, backend: str, device: str,
                    tensor_parallel: int | None, data_parallel: int = 1, *,
                    gpu_memory: int | None = None, dtype: str | None = None) -> dict[str, float]:
    """What one shard reserves on the cluster: a CPU, plus the GPUs its largest model needs.

    The GPUs a model needs follow the single-machine rule
    (:func:`evalsuite.backends.vllm.default_tensor_parallel`): the fewest (a power of two) whose
    ``gpu_memory`` (bytes per GPU, the cluster's card) holds its weights and headroom in ``dtype``
    (default: the registry's, as a run on a GPU loads it), so one H200 holds Mixtral and a 40 GB
    A100 needs four. Without ``gpu_memory`` (the card could not be learned) the registry's
    ``min_gpus_80gb`` is used. vLLM uses ``tensor_parallel x data_parallel`` GPUs (an explicit
    ``tensor_parallel`` wins); the other backends on ``cuda`` spread a model over every GPU Ray
    gives them.
    """
    from evalsuite.backends.registry import get_backend
    from evalsuite.backends.vllm import default_tensor_parallel

    info = get_backend(backend)
    if not info.gpu_only and not device.startswith("cuda"):
        return {"num_cpus": 1, "num_gpus": 0}
    names = [models] if isinstance(models, str) else list(models or ["smollm2"])
    specs = [resolve_model(n.strip()) for name in names for n in name.split(",") if n.strip()]
    if gpu_memory:
        biggest = max(default_tensor_parallel(spec, dtype or spec.dtype, gpu_memory) for spec in specs)
    else:
        biggest = max(spec.min_gpus_80gb for spec in specs)
    gpus = (tensor_parallel or biggest) * (data_parallel if info.plans_parallel else 1)
    return {"num_cpus": 1, "num_gpus": gpus}


#: Seconds the probe of the cluster's card may wait for a free GPU before the driver's own card
#: (or the registry) is used instead.
PROBE_TIMEOUT_S = 60


def cluster_gpu_memory(ray: Any, reader: Any = None, timeout: float = PROBE_TIMEOUT_S) -> tuple[int | None, str]:
    """(bytes of one GPU of the cluster, where that figure came from); ``(None, why)`` when unknown.

    A one-GPU Ray task reads its card (``torch.cuda.get_device_properties``); when that fails
    or no GPU frees up within ``timeout``, the driver's own card (``reader``, a
    :data:`~evalsuite.models.devices.DeviceReader`, default torch's) stands in. A cluster
    without GPUs has no card to measure. A mixed cluster is sized for the card the task landed
    on, and the description says the cluster is mixed."""
    from evalsuite.models.devices import torch_gpus

    resources = ray.cluster_resources()
    kinds = sorted(k.partition(":")[2] for k in resources if k.startswith("accelerator_type:"))
    mixed = f"; the cluster mixes {', '.join(kinds)} cards" if len(kinds) > 1 else ""
    why = "the Ray cluster has no GPU"
    if resources.get("GPU", 0):
        ref = ray.remote(_gpu_memory).options(num_cpus=0, num_gpus=1, max_retries=0).remote()
        try:
            memory, name = ray.get(ref, timeout=timeout)
            if memory:
                return int(memory), f"measured by a Ray task on the cluster's {name}{mixed}"
            why = "the Ray task saw no CUDA device"
        except Exception as exc:  # GetTimeoutError (every GPU busy), a lost worker, no torch there
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            why = f"the Ray task did not answer ({type(exc).__name__})"
    driver = list((reader or torch_gpus)())
    if driver:
        card = min(driver, key=lambda gpu: gpu.total_memory)
        return card.total_memory, f"this machine's {card.name} ({why}){mixed}"
    return None, why


def sizing_line(resources: dict[str, float], gpu_memory: int | None, where: str, *, vllm: bool,
                tensor_parallel: int | None) -> str:
    """The one line that says what each shard reserves and from what."""
    gpus = int(resources["num_gpus"])
    if tensor_parallel:
        return f"each shard reserves {gpus} GPU(s) (--tensor-parallel {tensor_parallel})"
    override = "; --tensor-parallel N overrides" if vllm else ""
    if gpu_memory:
        return (f"each shard reserves {gpus} GPU(s), sized for {gpu_memory / 2**30:.0f} GiB per GPU "
                f"({where}){override}")
    return (f"each shard reserves {gpus} GPU(s) from the registry's 80 GB GPU counts: the cluster's GPU memory "
            f"could not be learned ({where}){override}")


def _sized_resources(ray: Any, config: RunConfig) -> dict[str, float]:
    """:func:`shard_resources` for ``config`` on the connected cluster, its card learned when the
    shards use GPUs and no ``--tensor-parallel`` is given; the choice said in one line."""
    from evalsuite.backends.registry import get_backend

    def sized(gpu_memory: int | None) -> dict[str, float]:
        return shard_resources(config.models, config.backend, config.device, config.tensor_parallel,
                               config.data_parallel, gpu_memory=gpu_memory, dtype=config.dtype)

    resources = sized(None)
    if not resources["num_gpus"]:
        return resources
    gpu_memory, where = (None, "") if config.tensor_parallel else cluster_gpu_memory(ray)
    if gpu_memory:
        resources = sized(gpu_memory)
    _say(sizing_line(resources, gpu_memory, where, vllm=get_backend(config.backend).plans_parallel,
                     tensor_parallel=config.tensor_parallel))
    return resources


def _gpu_memory() -> tuple[int, str]:
    """Body of the probe task: (total bytes, name) of the GPU Ray gave it; (0, "") without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return 0, ""
    return torch.cuda.get_device_properties(0).total_memory, torch.cuda.get_device_name(0)


def _run_shard(index: int, count: int, config: RunConfig) -> str:
    """Body of one Ray task: evaluate one shard in this worker; its files are its result."""
    from evalsuite.run.evaluation import evaluate

    evaluate(config=config, shard=(index, count))
    return os.uname().nodename


def _wait_all(ray: Any, pending: dict[Any, int], count: int) -> tuple[dict[int, str], BaseException | None]:
    """Wait for every shard, reporting each as it ends: shard index -> error of the failed ones,
    and the first shard error that is a bug (an exception other than bad input in the worker;
    a lost worker or node is not one: that shard is rerun by hand)."""
    failures: dict[int, str] = {}
    bug: BaseException | None = None
    done = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            index = pending.pop(ref)
            done += 1
            try:
                where = ray.get(ref)
                _say(f"shard {index}/{count} finished on {where} ({done}/{count})")
            except ray.exceptions.RayError as exc:  # RayTaskError wraps the worker's exception
                cause = getattr(exc, "cause", None) or exc
                failures[index] = (f"{type(cause).__name__}: {cause}".splitlines() or ["failed"])[0]
                _say(f"shard {index}/{count} failed: {failures[index]} ({done}/{count})")
                if isinstance(exc, ray.exceptions.RayTaskError) and not isinstance(cause, EvalsuiteError):
                    bug = bug or exc
    return failures, bug


def _connect(ray: Any, address: str, num_cpus: int | None) -> bool:
    """Join the cluster at ``address`` or start a local one; True when we started it."""
    if ray.is_initialized():
        return False
    common = {"include_dashboard": False, "logging_level": logging.WARNING}
    try:
        if address == "local":
            ray.init(address="local", num_cpus=num_cpus, **common)
            return True
        ray.init(address=address, **common)
    except ConnectionError as exc:
        raise EvalsuiteError(f"cannot reach a Ray cluster at '{address}' ({exc}); start one with `ray start --head` "
                             f"or use --ray local") from None
    return False


def _import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError:
        raise EvalsuiteError(f"--ray needs the ray package, which is not installed; {INSTALL_HINT}") from None
    return ray


def _say(message: str) -> None:
    print(f"evalsuite: {message}", file=sys.stderr, flush=True)
