"""The capability decision remembered per model content, engine code and place, so a second run
of the same model does not probe again.

Why: the inspection and probe (:mod:`.capabilities`) cost several forwards and generations per
load, which on a small smoke run (``make demo``) is a large share of the time, and the answer
is a function of what is loaded and what runs it. The key is a sha256 over:

* the model's content: its identity (weights hash, or Hub id at the resolved commit) and the
  hash of its other files (config, remote code): a changed model is another key;
* the engine's code: the bytes of every module of this package and of :mod:`evalsuite.compat`,
  and the torch and transformers versions (their kernels and modelling code are what is probed);
* how it runs: dtype, device type (and GPU name), attention implementation, the requested
  executor and generation mode, the context length.

A decision is stored as JSON under ``<cache root>/capabilities/`` with an atomic write; an
unreadable or malformed file is ignored (probed again and rewritten). Tests and one-off wraps
(:func:`~evalsuite.backends.engine.wrap_model` without a key) never read or write it.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from evalsuite import fsutil
from evalsuite.backends.engine.capabilities import Capabilities

log = logging.getLogger(__name__)

FOLDER = "capabilities"


@lru_cache(maxsize=1)
def code_version() -> str:
    """sha256 over the engine's modules, evalsuite.compat, and the torch/transformers versions."""
    import torch
    import transformers

    from evalsuite import compat

    here = Path(__file__).resolve().parent
    digest = hashlib.sha256(f"torch {torch.__version__} transformers {transformers.__version__}".encode())
    for path in sorted(here.glob("*.py")) + [Path(compat.__file__).resolve()]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def full_key(model_key: str | None, model: Any, max_length: int, attention: str | None, generation: str) -> str | None:
    """The cache key of a decision (see the module docstring), or None without a model key."""
    if not model_key:
        return None
    import torch

    from evalsuite import compat

    param = next(model.parameters())
    gpu = torch.cuda.get_device_name(param.device) if param.device.type == "cuda" else ""
    parts = {"model": model_key, "code": code_version(), "dtype": str(param.dtype), "device": param.device.type,
             "gpu": gpu, "spread": sorted(map(str, set((getattr(model, "hf_device_map", None) or {}).values()))),
             "attn": compat.attention_implementation(model) or "", "attention": attention or "",
             "generation": generation, "max_length": int(max_length)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def folder() -> Path:
    """Where the decisions are kept: ``<cache root>/capabilities``."""
    return fsutil.cache_dir() / FOLDER


def path_of(key: str) -> Path:
    return folder() / f"{key}.json"


def _stored() -> list[Path]:
    """The stored decisions (``*.json``) and leftover temporary writes in :func:`folder`; a link
    there counts as the link itself. Nothing else in the folder is evalsuite's."""
    where = folder()
    if where.is_symlink() or not where.is_dir():
        return []
    return [p for p in where.iterdir() if (p.suffix == ".json" or p.name.startswith(".tmp-"))
            and (p.is_symlink() or p.is_file())]


def listing() -> tuple[Path, int, int]:
    """(folder, decisions stored, bytes): what ``evalsuite cache info`` shows."""
    stored = [p for p in _stored() if not p.is_symlink()]
    return folder(), sum(p.suffix == ".json" for p in stored), sum(p.stat().st_size for p in stored)


def clear() -> int:
    """Delete every stored decision, so each model's next run inspects and probes it again
    (``evalsuite cache clear``); returns how many decisions were deleted.

    Only evalsuite's own files go: a link in the folder is removed, never followed, and a
    ``capabilities`` folder that is itself a link is unlinked without touching what it points to."""
    where = folder()
    if where.is_symlink():
        where.unlink()
        return 0
    deleted = 0
    for path in _stored():
        deleted += path.suffix == ".json" and not path.is_symlink()
        path.unlink(missing_ok=True)
    return deleted


def load(key: str) -> Capabilities | None:
    """The decision stored under ``key``, or None (none stored, or a file that does not parse)."""
    path = path_of(key)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {f.name for f in fields(Capabilities)}
        if not isinstance(data, dict) or set(data) != names:
            raise ValueError("other fields")
        windows = tuple(None if w is None else int(w) for w in data["windows"])
        return Capabilities(str(data["loglikelihood"]), str(data["generation"]), windows,
                            tuple(map(str, data["reasons"])), str(data["model_type"]), bool(data["equal_lengths"]),
                            tuple(map(str, data["declined"])))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("ignoring the stored capability decision %s (%s); probing again", path, exc)
        return None


def store(key: str, decision: Capabilities) -> None:
    """Write the decision under ``key`` atomically (a failure to write costs only a later probe)."""
    path = path_of(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_json(path, asdict(decision), indent=1)
    except OSError as exc:
        log.warning("could not store the capability decision at %s (%s)", path, exc)
