"""Open a model before anything is evaluated: its config, tokenizer and weight headers.

A run writes a ``running`` row the moment a model's turn comes; a folder that turns out to
have no tokenizer, a malformed ``config.json`` or a weights file cut short by a failed copy
would then fail mid-run with a long traceback and a ``failed`` row. :func:`open_model` reads
what loading would read, up front and cheaply (no weights are loaded: a safetensors file is
checked against its own header, a ``.bin`` checkpoint's zip index is read), so every such
folder is one line naming the file and what is wrong, before any run row exists
(:mod:`evalsuite.run.preparation` calls it for every model of a run, a dry run and a
contamination check). The tokenizer and config it loads are kept for the dry run's counts.
"""
from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalsuite.errors import UnknownModelError
from evalsuite.models.identity import ModelSource

#: safetensors dtypes and their sizes in bytes (the header says which).
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}

#: Files one of which a model folder's tokenizer is loaded from.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "spiece.model",
                   "vocab.txt")


@dataclass
class OpenedModel:
    """What :func:`open_model` read: the transformers config and tokenizer, and the context length."""

    source: ModelSource
    config: Any
    tokenizer: Any
    max_length: int


def open_model(source: ModelSource) -> OpenedModel:
    """Read ``source``'s config, tokenizer and weight headers; one line naming the file if broken."""
    folder = Path(source.path) if source.spec.kind != "hub" else None
    if folder is not None:
        _check_config_json(folder)
        check_weight_files(folder)
        if not any((folder / name).is_file() for name in TOKENIZER_FILES):
            raise UnknownModelError(f"{folder} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); copy "
                                    f"them from the model's original files (save the tokenizer with the model)")
    config, tokenizer = _load_config_and_tokenizer(source, folder)
    from evalsuite.backends.engine.tokenize import resolve_max_length

    return OpenedModel(source, config, tokenizer, resolve_max_length(config, tokenizer))


def _check_config_json(folder: Path) -> None:
    path = folder / "config.json"
    if not path.is_file():
        raise UnknownModelError(f"{path} is missing: {folder} is not a complete model folder (it needs config.json, "
                                f"the tokenizer files and the weights)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UnknownModelError(f"{path} is not valid JSON ({_first(exc)}); restore it from the model's "
                                f"original files") from None
    if not isinstance(data, dict):
        raise UnknownModelError(f"{path} is not a JSON object; restore it from the model's original files")


def check_weight_files(folder: Path) -> None:
    """Every weight file complete as its own header describes it (safetensors: the tensors' byte
    ranges; ``.bin``: the zip index at the end), and a sharded checkpoint's index naming only
    files that exist. Reads a few KB per file, never the weights."""
    for index in sorted(folder.glob("*.index.json")):
        try:
            mapping = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = set(mapping.values())
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UnknownModelError(f"{index} is not a valid weights index ({_first(exc)}); restore it from the "
                                    f"model's original files") from None
        missing = sorted(s for s in shards if not (folder / str(s)).is_file())
        if missing:
            raise UnknownModelError(f"{index} names weight files that are missing: {', '.join(missing[:3])}; "
                                    f"download or copy them again")
    for path in sorted(folder.glob("*.safetensors")):
        _check_safetensors(path)
    for path in sorted(folder.glob("*.bin")):
        if path.name.startswith(("pytorch_model", "model")):
            _check_torch_zip(path)


def _check_safetensors(path: Path) -> None:
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise ValueError("shorter than its 8-byte header length")
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, 100 << 20):
                raise ValueError(f"its header claims {length} bytes")
            header = json.loads(handle.read(length))
        end = 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, stop = info["data_offsets"]
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            if stop - begin != count * _DTYPE_BYTES.get(info["dtype"], 0) and info["dtype"] in _DTYPE_BYTES:
                raise ValueError(f"tensor {name} has {stop - begin} bytes for shape {info['shape']}")
            end = max(end, int(stop))
    except OSError as exc:
        raise UnknownModelError(f"cannot read {path} ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise UnknownModelError(f"{path} is not a valid safetensors file ({_first(exc)}); download or copy it "
                                f"again") from None
    if size < 8 + length + end:
        raise UnknownModelError(f"{path} is truncated: {size:,} bytes, its header describes {8 + length + end:,}; "
                                f"download or copy it again")


def _check_torch_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except OSError as exc:
        raise UnknownModelError(f"cannot read {path} ({exc.strerror or exc})") from None
    except zipfile.BadZipFile:
        raise UnknownModelError(f"{path} is truncated or not a PyTorch checkpoint (its zip index is unreadable); "
                                f"download or copy it again") from None


def _load_config_and_tokenizer(source: ModelSource, folder: Path | None) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoTokenizer

    kwargs = {"revision": source.revision, "trust_remote_code": bool(source.spec.trust_remote_code)}
    where = str(folder) if folder is not None else source.path
    try:
        config = AutoConfig.from_pretrained(source.path, **kwargs)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError...: name the file
        raise UnknownModelError(f"the config of {where} (config.json) does not load ({_first(exc)}); restore it "
                                f"from the model's original files") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise UnknownModelError(f"the tokenizer of {where} does not load ({_first(exc)}); the folder needs its "
                                f"tokenizer files (tokenizer.json or tokenizer.model, tokenizer_config.json)") from None
    if tokenizer is None or isinstance(tokenizer, bool):
        raise UnknownModelError(f"{where} has no tokenizer files (tokenizer.json or tokenizer.model, "
                                f"tokenizer_config.json); copy them from the model's original files")
    return config, tokenizer


def _first(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


__all__ = ["OpenedModel", "open_model", "check_weight_files"]
