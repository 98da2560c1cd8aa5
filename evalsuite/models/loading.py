"""A resolved :class:`ModelSource` into a transformers model in memory, in the right dtype and place.

Which dtype: ``--dtype`` wins; on a GPU a registry alias loads as the leaderboard ran it and any
other model in its config's dtype, as v1 did; on the CPU float32. Where: GPU 0 when the model
fits there, else spread over the GPUs. The tokenizer decodes as period transformers did
(:func:`compat.clean_up_like_period_transformers`), which the v1 scores depend on.
"""
from __future__ import annotations

from typing import Any

from evalsuite.errors import EvalsuiteError
from evalsuite.models.hub import local_only
from evalsuite.models.identity import ModelSource
from evalsuite.models.memory import DTYPE_BYTES, param_count, required_bytes
from evalsuite.models.registry import REGISTRY, ModelSpec


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def config_dtype(spec: ModelSpec) -> str | None:
    """The dtype a Hub or local model's config names (``dtype``, formerly ``torch_dtype``), if
    one evalsuite loads; None for other kinds (GGUF, DUS: float32) or an unreadable config."""
    from transformers import AutoConfig

    if spec.kind not in ("hub", "local"):
        return None
    try:
        config = AutoConfig.from_pretrained(spec.source, revision=spec.revision, trust_remote_code=bool(spec.trust_remote_code),
                                            **local_only(spec.kind))
    except (OSError, ValueError):
        return None
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(value).removeprefix("torch.") if value is not None else None
    return name if name in DTYPE_BYTES else None


def resolve_dtype(spec: ModelSpec, device: str, requested: str | None) -> tuple[str, str]:
    """The dtype to load in and why (for the run's notes).

    ``--dtype`` wins. On a GPU: a registry alias loads in the dtype the leaderboard ran it in;
    any other model in its config's dtype, as v1 loaded it. On the CPU: float32, because fp16
    matmuls are slow there and bf16 changes the numbers; pass --dtype for anything else.
    """
    if requested:
        return requested, f"dtype {requested} (--dtype)"
    if not device.startswith("cuda"):
        return "float32", "dtype float32 (the CPU default; --dtype to change)"
    if spec.alias in REGISTRY:
        return spec.dtype, f"dtype {spec.dtype} (the registry's, as the leaderboard ran it)"
    found = config_dtype(spec)
    if found:
        return found, f"dtype {found} (the model config's, as v1 loaded it)"
    return spec.dtype, f"dtype {spec.dtype} (the config names none)"


def load_transformers(source: ModelSource, dtype: str, device: str) -> tuple[Any, Any]:
    """The transformers model (eval mode, on ``device``) and its tokenizer, which decodes as
    period transformers did when its config does not say (:func:`compat.clean_up_like_period_transformers`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evalsuite.compat import clean_up_like_period_transformers

    kwargs: dict[str, Any] = {"revision": source.revision, "trust_remote_code": bool(source.spec.trust_remote_code),
                              **local_only(source.spec.kind)}
    device_map = gpu_device_map(source, dtype) if device == "cuda" else None
    placement: dict[str, Any] = {"device_map": device_map}
    if device_map == "auto":  # leave each GPU room for activations and caches beside its layers
        placement["max_memory"] = gpu_max_memory()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
        clean_up_like_period_transformers(tokenizer)
        model = AutoModelForCausalLM.from_pretrained(
            source.path,
            dtype=torch_dtype(dtype),
            **placement,
            **kwargs,
        )
    except OSError as exc:
        raise EvalsuiteError(
            f"could not load {source.path}: {str(exc).splitlines()[0]}; check the name, your Hub access "
            f"(`hf auth login` or HF_TOKEN for gated models) or use a local folder"
        ) from None
    if device != "cuda":
        # transformers' wrapper around ``to`` is typed as taking the model itself (a stub problem).
        model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model, tokenizer


def gpu_device_map(source: ModelSource, dtype: str, gpu_memory: int | None = None,
                   gpu_count: int | None = None) -> Any:
    """Where ``--device cuda`` puts the weights: GPU 0 when the model fits there, else all GPUs.

    accelerate's ``"auto"`` balances even a small model over every visible GPU, which costs a
    device hop per block of layers for nothing; it is used only for a model that needs several
    GPUs (Mixtral and 70B models on 80 GB cards), layers split in order across them.
    """
    if gpu_memory is None or gpu_count is None:
        import torch

        gpu_count = torch.cuda.device_count() if gpu_count is None else gpu_count
        gpu_memory = gpu_memory or (torch.cuda.get_device_properties(0).total_memory if gpu_count else 0)
    if gpu_count <= 1:
        return {"": 0}
    return {"": 0} if required_bytes(param_count(source), dtype) <= gpu_memory else "auto"


#: Share of each GPU that ``device_map="auto"`` must leave free of weights (at least
#: :data:`GPU_HEADROOM_MIN` bytes): the forward's activations, the key/value pasts and copies
#: within the engine's token budget, the output layer's chunks and the CUDA context live there.
GPU_HEADROOM = 0.15
GPU_HEADROOM_MIN = 2 * 2**30


def gpu_max_memory(totals: list[int] | None = None) -> dict[int, int]:
    """accelerate's ``max_memory`` per GPU index: its total memory less the headroom. Without
    it accelerate fills the first cards to the brim and the first long batch runs out of memory."""
    if totals is None:
        import torch

        totals = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
    return {i: max(0, total - max(int(total * GPU_HEADROOM), GPU_HEADROOM_MIN)) for i, total in enumerate(totals)}
