"""lm-eval's vLLM model with the leaderboard v1 settings: the backend for models beyond one GPU.

vLLM shards a model over GPUs with tensor parallelism (``--tensor-parallel``) and runs several
replicas through Ray (``--data-parallel``). The requests are lm-eval's, so the v1 settings are
the same as for ``lm-eval-hf``: no BOS token (v1 never prepended one), stops taken from each
request's ``until`` and greedy decoding (the task's ``generation_kwargs``), 256 new tokens at most.

vLLM and Ray are optional: nothing here imports them until a model is built, so the plan
(tensor parallel size, fit check) and the argument translation run and are tested without them.

One model, one engine: the runner hands this backend whole tasks and builds it once per model.
With ``--data-parallel M`` lm-eval's model would start M fresh Ray replicas on every call (the
weights loaded again on every GPU) and shut Ray down after it; here a :class:`ReplicaPool`
starts the M replicas on the first call and keeps them until the model's tasks are done
(``release_replicas``). The tensor parallel size defaults to the fewest GPUs whose memory holds
the weights (:func:`default_tensor_parallel`): one H200 (141 GB) holds Mixtral in bf16.
"""
from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from evalsuite.errors import EvalsuiteError, ModelTooLargeError
from evalsuite.models.identity import ModelSource
from evalsuite.models.memory import required_bytes
from evalsuite.models.registry import ModelSpec
from evalsuite.backends import BackendOptions

#: The memory the registry's ``min_gpus_80gb`` counts in (an A100/H100 80GB card).
GPU_80GB = 80 * 10**9
INSTALL_HINT = "pip install 'evalsuite[vllm]'"
#: The last vLLM release with Qwen v1 (``QWenLMHeadModel``); it was removed after it.
QWEN_V1_LAST_VLLM = (0, 23)


def build(source: ModelSource, options: BackendOptions) -> Any:
    """lm-eval's ``VLLM`` model for ``source``, loaded over ``options.tensor_parallel`` GPUs;
    with ``data_parallel`` > 1, replicas kept for the whole model (:class:`ReplicaPool`)."""
    require_vllm()
    check_vllm_supports(source.spec)
    from lm_eval.models.vllm_causallms import VLLM

    kwargs = vllm_kwargs(source, options)
    if options.data_parallel <= 1:
        return VLLM(**kwargs)

    class PooledVLLM(VLLM):  # type: ignore[misc, valid-type]
        """lm-eval's VLLM whose data-parallel replicas live as long as the model."""

        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self.pool = ReplicaPool(self.data_parallel_size, *ray_replicas(self.model_args, self.tensor_parallel_size))

        def _model_generate(self, requests: list[list[int]], generate: bool = False, sampling_params: Any = None) -> Any:
            from vllm import SamplingParams

            if not generate or sampling_params is None:  # lm-eval's log-likelihood request
                sampling_params = SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False)
            if not isinstance(sampling_params, list):
                sampling_params = [sampling_params] * len(requests)
            return self.pool.generate(requests, sampling_params)

        def release_replicas(self) -> None:
            self.pool.release()

    return PooledVLLM(**kwargs)


class ReplicaPool:
    """``size`` model replicas, started on the first call and kept until :meth:`release`.

    ``start(i)`` starts replica ``i``; ``call(replica, requests, params)`` submits work to it and
    returns a handle; ``gather(handles)`` waits for the handles' results; ``stop(replica)``
    ends one. Requests are dealt out interleaved (request ``j`` to replica ``j % size``), which
    balances long and short ones, and the results come back in the requests' order.
    """

    def __init__(self, size: int, start: Callable[[int], Any], call: Callable[[Any, list, list], Any],
                 gather: Callable[[list[Any]], list[list[Any]]], stop: Callable[[Any], None] = lambda _: None):
        self.size, self._start, self._call, self._gather, self._stop = size, start, call, gather, stop
        self.replicas: list[Any] | None = None

    def generate(self, requests: Sequence[Any], params: Sequence[Any]) -> list[Any]:
        if len(requests) != len(params):
            raise ValueError("one sampling setting per request")
        if self.replicas is None:
            self.replicas = [self._start(i) for i in range(self.size)]
        parts = [(list(requests[k::self.size]), list(params[k::self.size])) for k in range(self.size)]
        busy = [(replica, part) for replica, part in zip(self.replicas, parts) if part[0]]
        results = self._gather([self._call(replica, reqs, ps) for replica, (reqs, ps) in busy])
        merged: list[Any] = [None] * len(requests)
        for k, result in enumerate(results):
            if len(result) != len(busy[k][1][0]):
                raise RuntimeError(f"vLLM replica {k} answered {len(result)} of {len(busy[k][1][0])} requests")
            merged[k::self.size] = result
        return merged

    def release(self) -> None:
        for replica in self.replicas or []:
            self._stop(replica)
        self.replicas = None


def ray_replicas(model_args: dict[str, Any], tensor_parallel: int) -> tuple[Callable, Callable, Callable, Callable]:
    """``(start, call, gather, stop)`` for :class:`ReplicaPool`: each replica a Ray actor holding
    one vLLM ``LLM`` on ``tensor_parallel`` GPUs (Ray sets its CUDA_VISIBLE_DEVICES)."""
    import ray

    if not ray.is_initialized():
        ray.init()
    args = {k: v for k, v in model_args.items()  # a replica is one engine: no nested Ray, no DP of its own
            if k not in ("distributed_executor_backend", "data_parallel_size")}

    @ray.remote(num_gpus=tensor_parallel)
    class Replica:
        def __init__(self) -> None:
            for key in [k for k in os.environ if k.startswith("VLLM_DP_")]:  # a replica is DP size 1
                os.environ.pop(key, None)
            from vllm import LLM

            self.llm = LLM(**args)

        def generate(self, requests: list[list[int]], params: list[Any]) -> list[Any]:
            from vllm.inputs import TokensPrompt

            prompts = [TokensPrompt(prompt_token_ids=r) for r in requests]
            return self.llm.generate(prompts, sampling_params=params, use_tqdm=False)

    # ray.remote makes Replica an actor class with .remote(); ray's types do not say so.
    return (lambda _i: Replica.remote(),  # type: ignore[attr-defined]
            lambda replica, reqs, ps: replica.generate.remote(reqs, ps),
            ray.get, ray.kill)


def check_vllm_supports(spec: ModelSpec, version: str | None = None) -> None:
    """Refuse Qwen v1 on a vLLM that no longer has it (``version``: the installed one)."""
    if spec.arch != "qwen":
        return
    if version is None:
        if importlib.util.find_spec("vllm") is None:
            return
        from importlib.metadata import version as installed

        version = installed("vllm")
    parts = tuple(int(p) for p in version.split("+")[0].split(".")[:2] if p.isdigit())
    if parts > QWEN_V1_LAST_VLLM:
        raise EvalsuiteError(
            f"{spec.alias} is Qwen v1, which vLLM {version} no longer runs (removed after "
            f"{'.'.join(map(str, QWEN_V1_LAST_VLLM))}): pip install 'vllm<0.24' or use a Qwen1.5/Qwen2 alias")


def require_vllm() -> None:
    """A one-line error, before anything loads, when the optional packages are missing."""
    if importlib.util.find_spec("vllm") is None:
        raise EvalsuiteError(f"--backend vllm needs the vllm package, which is not installed; {INSTALL_HINT}")


def vllm_kwargs(source: ModelSource, options: BackendOptions) -> dict[str, Any]:
    """The keyword arguments of lm-eval's ``VLLM`` for a source and our options (a pure function)."""
    batch_size = options.batch_size if options.batch_size == "auto" else int(options.batch_size)
    return {
        "pretrained": source.path,
        "revision": source.revision,
        "trust_remote_code": source.spec.trust_remote_code,
        "dtype": options.dtype,
        "add_bos_token": False,  # v1 never prepended BOS; lm-eval 0.4.13 would
        "max_gen_toks": options.max_gen_toks,  # stops and greedy come from each request's gen_kwargs
        "batch_size": batch_size,
        "tensor_parallel_size": options.tensor_parallel,
        "data_parallel_size": options.data_parallel,
        "seed": 1234,
    }


def default_tensor_parallel(spec: ModelSpec, dtype: str, gpu_memory: int) -> int:
    """The smallest power of two of GPUs (attention heads split evenly) that holds the model.

    From the card's real memory and the model's parameter count (weights plus headroom,
    :func:`~evalsuite.models.memory.required_bytes`): one 141 GB H200 holds Mixtral in bf16
    (112 GB), an 80 GB H100 does not. Only a model of unknown size falls back to the registry's
    ``min_gpus_80gb`` scaled to this card.
    """
    if spec.params:
        need = math.ceil(required_bytes(spec.params, dtype) / gpu_memory)
    else:
        need = math.ceil(spec.min_gpus_80gb * GPU_80GB / gpu_memory)
    return 1 << max(need - 1, 0).bit_length()


def check_tensor_parallel(spec: ModelSpec, dtype: str, tensor_parallel: int, gpu_memory: int) -> None:
    """Refuse, before loading, a tensor parallel size whose GPUs cannot hold the weights."""
    if not spec.params:
        return
    need = required_bytes(spec.params, dtype)
    if need > tensor_parallel * gpu_memory:
        fits = default_tensor_parallel(spec, dtype, gpu_memory)
        raise ModelTooLargeError(
            f"{spec.alias} needs about {need / 2**30:.0f} GiB in {dtype} but --tensor-parallel {tensor_parallel} "
            f"gives {tensor_parallel} x {gpu_memory / 2**30:.0f} GiB; use --tensor-parallel {fits} (or more GPUs)"
        )


def plan_parallel(spec: ModelSpec, dtype: str, tensor_parallel: int | None, data_parallel: int = 1,
                  gpu_memory: int | None = None, gpu_count: int | None = None) -> tuple[int, int]:
    """(tensor, data) parallel sizes for ``spec``, checked against the GPUs, before any load.

    ``gpu_memory`` (bytes per GPU) and ``gpu_count`` default to what torch sees; tests pass them.
    """
    if tensor_parallel is not None and tensor_parallel < 1 or data_parallel < 1:
        raise EvalsuiteError("--tensor-parallel and --data-parallel must be at least 1")
    if gpu_memory is None or gpu_count is None:
        seen_memory, seen_count = _visible_gpus()
        gpu_memory = gpu_memory or seen_memory
        gpu_count = seen_count if gpu_count is None else gpu_count
    if not gpu_count or not gpu_memory:
        raise EvalsuiteError("--backend vllm needs NVIDIA GPUs and none is visible; run on a GPU machine")
    tp = tensor_parallel or default_tensor_parallel(spec, dtype, gpu_memory)
    check_tensor_parallel(spec, dtype, tp, gpu_memory)
    if tp * data_parallel > gpu_count:
        raise EvalsuiteError(
            f"--tensor-parallel {tp} x --data-parallel {data_parallel} needs {tp * data_parallel} GPUs but "
            f"{gpu_count} are visible; lower --data-parallel or use --shard I/N across machines"
        )
    require_vllm()
    check_vllm_supports(spec)
    if data_parallel > 1 and importlib.util.find_spec("ray") is None:
        raise EvalsuiteError(f"--data-parallel needs the ray package, which is not installed; {INSTALL_HINT}")
    return tp, data_parallel


def _visible_gpus() -> tuple[int, int]:
    """(bytes of the smallest visible GPU, number of visible GPUs)."""
    import torch

    if not torch.cuda.is_available():
        return 0, 0
    count = torch.cuda.device_count()
    return min(torch.cuda.get_device_properties(i).total_memory for i in range(count)), count
