"""What a model needs in memory, and the check that refuses one that cannot fit.

One formula for every caller (the run's fit check, the GPU placement, vLLM's tensor parallel
size, the DUS build, the `evalsuite models` table): parameters x bytes per parameter of the
dtype, times :data:`MEMORY_OVERHEAD` for what runs beside the weights. It is an estimate from
the parameter count alone, so the check runs before any weight is downloaded or loaded.

torch and psutil are imported only where memory is measured.
"""
from __future__ import annotations

from typing import Any

from evalsuite.errors import ModelTooLargeError
from evalsuite.models.hub import local_only
from evalsuite.models.identity import ModelSource
from evalsuite.models.registry import ModelSpec

#: Bytes per parameter of each dtype evalsuite loads in (an unknown name counts as float32).
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: Headroom for activations, key/value caches and the runtime on top of the weights.
MEMORY_OVERHEAD = 1.2


def weight_bytes(params: int, dtype: str) -> int:
    """The weights alone: ``params`` x bytes per parameter of ``dtype``."""
    return params * DTYPE_BYTES.get(dtype, 4)


def required_bytes(params: int, dtype: str) -> int:
    """The weights plus the runtime headroom (x :data:`MEMORY_OVERHEAD`): what a model needs."""
    return int(weight_bytes(params, dtype) * MEMORY_OVERHEAD)


def available_memory(device: str) -> tuple[int, str]:
    """Bytes the model may use on ``device`` and a name for that memory."""
    if device.startswith("cuda"):
        import torch

        total = sum(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
        return total, f"{torch.cuda.device_count()} GPU(s)"
    import psutil

    return psutil.virtual_memory().available, "available RAM"


def check_fits(spec: ModelSpec, dtype: str, device: str, params: int | None = None) -> None:
    """Refuse, before any weight loads, a model whose weights alone exceed the memory."""
    params = params or spec.params
    if params is None:
        return
    need = required_bytes(params, dtype)
    have, where = available_memory(device)
    if need > have:
        raise ModelTooLargeError(
            f"{spec.alias} has {params / 1e9:.1f}B parameters and needs about {need / 2**30:.0f} GiB in {dtype}, "
            f"but {where} offers {have / 2**30:.0f} GiB; use a GPU machine (--device cuda, see "
            f"`evalsuite models`), a smaller --dtype, or --backend vllm with --tensor-parallel"
        )


def param_count(source: ModelSource) -> int:
    """Parameters from the registry, else from the config alone (a meta-device build, no weights)."""
    if source.spec.params:
        return source.spec.params
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(
        source.path, revision=source.revision, trust_remote_code=source.spec.trust_remote_code,
        **local_only(source.spec.kind),
    )
    with torch.device("meta"):
        model: Any = AutoModelForCausalLM.from_config(config, trust_remote_code=source.spec.trust_remote_code)
    return sum(p.numel() for p in model.parameters())
