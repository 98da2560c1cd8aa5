"""Memory: the token budget a device's free memory allows, and out-of-memory recognised and named.

Why: a fixed budget (16,384 tokens per forward on CUDA) is too much for a 47B model on one
card and too little for a 1B model on an H200. On CUDA the budget is computed from the memory
free once the weights are loaded (``torch.cuda.mem_get_info``), per token of a forward
(activations, the key/value copies the cache executor makes, the pasts held); on the CPU it
stays the planner's default. What the estimate misses (an eager attention's score matrix, a
fragmented allocator) the executors meet with a back-off: an out-of-memory forward is split in
halves down to one row, and one row that still does not fit is a one-line error
(:class:`RowOutOfMemory`, named by the engine with its task, document and length).

``EVALSUITE_TOKEN_BUDGET`` overrides the budget (the GPU check forces a small one, or a huge
one under a reduced memory fraction to drive the back-off on a real card).
"""
from __future__ import annotations

import os
from typing import Any

import torch

#: Share of the free memory one forward (and the pasts it reads) may take; the rest is headroom
#: for the allocator's fragmentation, the output layer's chunks and the trunks kept across calls.
FREE_SHARE = 0.5
#: Bounds of a budget computed from memory (tokens per forward).
MIN_BUDGET, MAX_BUDGET = 512, 65536
#: Past tokens whose keys and values are held or copied per token of budget (the planner's
#: ``KV_BUDGET_FACTOR`` copies plus ``LIVE_KV_FACTOR`` pasts held while their branches wait).
KV_PER_BUDGET_TOKEN = 8
ENV_BUDGET = "EVALSUITE_TOKEN_BUDGET"


class RowOutOfMemory(RuntimeError):
    """One row (one request's forward, or one prompt's decoding) does not fit in memory even
    alone. ``request``: its index among the call's requests; ``length``: its tokens."""

    def __init__(self, request: int, length: int) -> None:
        super().__init__(f"out of memory on one row of {length} tokens (request {request})")
        self.request = request
        self.length = length


def is_oom(exc: BaseException) -> bool:
    """torch's ``OutOfMemoryError`` (CUDA, or raised by a test), Python's ``MemoryError``, or a
    backend's "out of memory" / the CPU allocator's "can't allocate memory"."""
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if (oom_type is not None and isinstance(exc, oom_type)) or isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return (isinstance(exc, RuntimeError) and not isinstance(exc, RowOutOfMemory)
            and ("out of memory" in text or "can't allocate memory" in text))


def release(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error, so the halves can use them."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def env_budget() -> int | None:
    """``EVALSUITE_TOKEN_BUDGET`` as a positive int, or None (unset or not a positive number)."""
    text = os.environ.get(ENV_BUDGET, "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def bytes_per_token(config: Any, element_size: int, copies_past: bool) -> tuple[int, int]:
    """(activation bytes, key/value bytes) one token of a forward costs for a model ``config``."""
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    inter = int(getattr(config, "intermediate_size", 0) or 4 * hidden)
    heads = int(getattr(config, "num_attention_heads", 0) or 1)
    kv_heads = int(getattr(config, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(config, "head_dim", 0) or (hidden // heads if heads else 0))
    layers = int(getattr(config, "num_hidden_layers", 0) or 1)
    # the residual stream, q/k/v/o and the MLP's up, gate and activation live at once in a layer
    activations = element_size * (8 * hidden + 3 * inter)
    kv = 2 * layers * kv_heads * head_dim * element_size
    return activations, (KV_PER_BUDGET_TOKEN * kv if copies_past else 0)


def budget_from_free(free_bytes: int, config: Any, element_size: int, copies_past: bool) -> int:
    """Tokens per forward that :data:`FREE_SHARE` of ``free_bytes`` holds, a multiple of 256
    within [:data:`MIN_BUDGET`, :data:`MAX_BUDGET`]."""
    activations, kv = bytes_per_token(config, element_size, copies_past)
    tokens = int(free_bytes * FREE_SHARE) // max(1, activations + kv)
    return max(MIN_BUDGET, min(MAX_BUDGET, tokens // 256 * 256))


def device_budget(model: Any, device: torch.device, copies_past: bool) -> tuple[int | None, str | None]:
    """The token budget for ``model`` on ``device`` and how it was set (for the notes): the
    environment's override, else on CUDA from the free memory of the fullest device the model
    is on, else None (the planner's default for the device type)."""
    forced = env_budget()
    if forced is not None:
        return forced, f"token budget {forced} ({ENV_BUDGET})"
    if device.type != "cuda" or not torch.cuda.is_available():
        return None, None
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    devices = {p.device for p in model.parameters() if p.device.type == "cuda"} or {device}
    free = min(torch.cuda.mem_get_info(d)[0] for d in devices)
    budget = budget_from_free(free, cfg, next(model.parameters()).element_size(), copies_past)
    return budget, f"token budget {budget} ({free / 2**30:.1f} GiB free)"
