"""What was evaluated: a model's resolved source and the hashes results are keyed on.

A path says nothing about what is in it, and a Hub id nothing about which commit: results and
cached answers are keyed on the weights' hash (local files), the Hub commit (Hub models) and a
hash of the model's other files (config, tokenizer, generation config, remote code), so another
checkpoint under the same name is another model, never a stale cache hit.

Hashing a 20 GB checkpoint takes a minute, so each file's digest is kept in a small index in
the cache, keyed by path, size and mtime: unchanged files are hashed once per machine.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from evalsuite.errors import UnknownModelError
from evalsuite.fsutil import cache_dir, file_sha256, write_text
from evalsuite.models.registry import ModelSpec

#: Files of a model folder that are weights (hashed by :func:`weights_hash`, cached by mtime).
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".gguf", ".pt", ".pth", ".h5", ".msgpack"}
#: The per-file hash index in the cache root: ``{"<path>|<size>|<mtime_ns>": sha256}``.
HASH_INDEX = "file-hashes.json"


@dataclass(frozen=True)
class ModelSource:
    """Where transformers (or vLLM) loads a model from, and the identity results are keyed on."""

    spec: ModelSpec
    path: str  # Hub id or local folder
    revision: str | None  # for Hub models the commit the revision resolved to (pinned for loading)
    weights_hash: str | None
    gguf_converted_from: str | None = None
    #: sha256 over the model's other files (config, tokenizer, generation config, remote code):
    #: the same weights with another config are another model.
    files_hash: str | None = None

    @property
    def identity(self) -> str:
        """Weights hash for local files, ``hub-id@commit`` otherwise: never a bare path."""
        return self.weights_hash or f"{self.path}@{self.revision or 'main'}"


def weights_hash(folder: Path, verify: bool = False) -> str:
    """A hash of the weight files in ``folder``: what was evaluated.

    Hashing gigabytes on every run costs minutes, so a file's hash is cached under its path,
    size and modification time (:func:`cached_file_hash`): a file rewritten in place with the
    same size AND its old mtime restored (``cp -p``, ``touch -r``, some sync tools) keeps its
    old hash. ``verify=True`` (``--verify-weights``) hashes every file in full and refreshes
    the cache."""
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not files:
        raise UnknownModelError(f"{folder} holds no weight files (*.safetensors or *.bin)")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(cached_file_hash(path, verify).encode())
    return f"sha256:{digest.hexdigest()}"


def files_hash(folder: str | os.PathLike) -> str:
    """sha256 over every file of a model folder except the weights: config, tokenizer files,
    generation config, remote code. Two folders with the same weights but, say, another
    ``rms_norm_eps`` or chat template are different models, and cached answers must not cross."""
    digest = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix not in WEIGHT_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(root).parts)):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return f"sha256:{digest.hexdigest()}"


def cached_file_hash(path: Path, verify: bool = False) -> str:
    """The sha256 of one file, from the index while its path, size and mtime are unchanged
    (``verify``: computed afresh and the index refreshed)."""
    stat = path.stat()
    index_path = cache_dir() / HASH_INDEX
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if verify or key not in index:
        index[key] = file_sha256(path)
        write_text(index_path, json.dumps(index))
    return index[key]
