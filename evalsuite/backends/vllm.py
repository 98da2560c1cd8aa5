"""lm-eval's vLLM model with the leaderboard v1 settings: the backend for models beyond one GPU.

vLLM shards a model over GPUs with tensor parallelism (``--tensor-parallel``) and runs several
replicas through Ray (``--data-parallel``). The requests are lm-eval's, so the v1 settings are
the same as for ``lm-eval-hf``: no BOS token (v1 never prepended one), stops taken from each
request's ``until`` and greedy decoding (the task's ``generation_kwargs``), 256 new tokens at most.

vLLM and Ray are optional: nothing here imports them until a model is built, so the plan
(tensor parallel size, fit check) and the argument translation run and are tested without them.
"""
from __future__ import annotations

import importlib.util
import math
from typing import Any

from evalsuite.errors import EvalsuiteError, ModelTooLargeError
from evalsuite.models.identity import ModelSource
from evalsuite.models.memory import required_bytes
from evalsuite.models.registry import ModelSpec
from evalsuite.backends import BackendOptions

#: The memory the registry's ``min_gpus_80gb`` counts in (an A100/H100 80GB card).
GPU_80GB = 80 * 10**9
INSTALL_HINT = "pip install 'evalsuite[vllm]'"


def build(source: ModelSource, options: BackendOptions) -> Any:
    """lm-eval's ``VLLM`` model for ``source``, loaded over ``options.tensor_parallel`` GPUs."""
    require_vllm()
    from lm_eval.models.vllm_causallms import VLLM

    return VLLM(**vllm_kwargs(source, options))


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

    Starts from the registry's ``min_gpus_80gb`` scaled to this GPU's memory, and goes higher
    when the parameter count says the weights need more.
    """
    need = math.ceil(spec.min_gpus_80gb * GPU_80GB / gpu_memory)
    if spec.params:
        need = max(need, math.ceil(required_bytes(spec.params, dtype) / gpu_memory))
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
