"""Backends: objects implementing lm-eval's ``LM`` interface, chosen by name.

Every backend answers the same lm-eval ``Instance`` requests (``loglikelihood`` and
``generate_until``), so the runner, the request cache and the parity tests treat them alike.
Modules are imported only when their backend is chosen: vLLM and Ray stay optional.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from evalsuite.errors import EvalsuiteError
from evalsuite.models.identity import ModelSource

#: name -> "module:function" building the backend from (source, options).
BACKENDS: dict[str, str] = {
    "evalsuite": "evalsuite.backends.engine:build",
    "lm-eval-hf": "evalsuite.backends.lmeval_hf:build",
    "vllm": "evalsuite.backends.vllm:build",
}
DEFAULT_BACKEND = "evalsuite"
#: The evalsuite engine's greedy decoding: "batched" (prompts of any lengths decode together) or
#: "exact" (one prompt at a time, batch-size-1 arithmetic).
GENERATION_MODES = ("batched", "exact")


@dataclass(frozen=True)
class BackendOptions:
    """Settings common to every backend; a backend ignores what does not apply to it."""

    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int | str = "auto"
    max_gen_toks: int = 256
    tensor_parallel: int = 1
    data_parallel: int = 1
    generation: str = GENERATION_MODES[0]  # the engine's decoding, one of GENERATION_MODES


def build_backend(name: str, source: ModelSource, options: BackendOptions) -> Any:
    """An lm-eval ``LM`` for ``source`` using backend ``name``."""
    if name not in BACKENDS:
        raise EvalsuiteError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}")
    from evalsuite.compat import check_versions

    check_versions()  # a model is about to be evaluated through transformers' and lm-eval's internals
    module_name, func = BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise EvalsuiteError(
            f"backend '{name}' needs {exc.name}, which is not installed; pip install 'evalsuite[vllm]' or pick another --backend"
        ) from None
    return getattr(module, func)(source, options)
