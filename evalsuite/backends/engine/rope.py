"""What a model's configuration says about its positions: where rope scaling makes a token's
numbers depend on the length of the input it sits in.

Its own module because both the capability decision and the plain executor ask it (the plain
executor batches equal lengths only for such models), and neither may import the other.
"""
from __future__ import annotations

from typing import Any


def model_text_config(model: Any) -> Any:
    """The text part of a model's config (multimodal configs nest it)."""
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


LENGTH_DEPENDENT_ROPE = {"longrope": "original_max_position_embeddings", "dynamic": "original_max_position_embeddings"}


def _rope_settings(cfg: Any) -> list[dict[str, Any]]:
    """The config's rope settings (``rope_parameters``, formerly ``rope_scaling``), one dict per
    layer type where they are given per layer type."""
    found = []
    for name in ("rope_parameters", "rope_scaling"):
        value = getattr(cfg, name, None)
        if isinstance(value, dict):
            inner = [v for v in value.values() if isinstance(v, dict)]
            found.extend(inner or [value])
    return found


def length_switches(model: Any, max_length: int | None = None) -> list[tuple[int, str]]:
    """Lengths (below ``max_length``) where the model's rope factors switch, with the rope type:
    longrope uses its long factors for a whole input once it is longer than
    ``original_max_position_embeddings``; dynamic NTK rescales past it. Such a model's forward of
    a token depends on the length of the input (or padded batch) it is in."""
    cfg = model_text_config(model)
    out = []
    for rope in _rope_settings(cfg):
        kind = str(rope.get("rope_type") or rope.get("type") or "")
        if kind not in LENGTH_DEPENDENT_ROPE:
            continue
        key = LENGTH_DEPENDENT_ROPE[kind]
        switch = rope.get(key) or getattr(cfg, key, None) or getattr(cfg, "max_position_embeddings", None)
        if isinstance(switch, int) and (max_length is None or switch < max_length):
            out.append((switch, kind))
    return sorted(set(out))
