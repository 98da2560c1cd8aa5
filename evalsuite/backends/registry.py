"""The backend registry: every backend by name, with what it can do and the options it owns.

A backend is one module with a ``build(source, options)`` function returning an object that
satisfies :class:`Backend` (lm-eval's ``LM`` requests plus what evalsuite asks of it), and one
:class:`BackendInfo` entry here saying what the rest of evalsuite may rely on: whether it runs
only on GPUs, whether it plans its own parallelism and memory, how the dry run estimates its
time (its cost model), and its own options. Nothing outside ``evalsuite/backends`` tests a
backend's name: the runner, the config check, the dry run and the Ray launcher ask the entry.

Adding a backend (SGLang, say) is ``evalsuite/backends/sglang.py`` with its ``build`` and one
:func:`register` call below. An option only it reads is declared in its entry (:class:`Option`:
default, help, parser, check); :class:`~evalsuite.config.RunConfig` then names it in one typed
line (``x: int = _backend_option("x")``), which makes it a field, a flag and a checked value.

Entries name their module as text: importing the registry imports no backend (vLLM and Ray
stay optional, and the read side never loads torch).
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from evalsuite.errors import EvalsuiteError

if TYPE_CHECKING:
    from evalsuite.models.identity import ModelSource


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


@runtime_checkable
class Backend(Protocol):
    """What a built backend offers: lm-eval's ``LM`` requests, and what evalsuite asks besides.

    * ``loglikelihood`` / ``loglikelihood_rolling`` / ``generate_until``: lm-eval ``Instance``
      requests in, lm-eval's answers out, in order (the runner, the request cache and the
      parity tests treat every backend alike).
    * ``engine_note``: one line for the run's notes (which executor and why), or None.
    """

    engine_note: str | None

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]: ...

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]: ...

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]: ...


@dataclass(frozen=True)
class Option:
    """A backend's own run option, declared once: the :class:`RunConfig` field, its flag and its check."""

    name: str
    default: Any
    help: str
    parse: Callable[[str], Any] | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    #: a whole number of at least 1 (None allowed when the default is None); its flag parses
    #: with :func:`evalsuite.config.positive_int`
    positive: bool = False
    group: str | None = None

    def check(self, value: Any) -> None:
        """A Python API value the flag's parser would have refused: one line naming the flag."""
        flag = "--" + self.name.replace("_", "-")
        if self.choices is not None and value not in self.choices:
            raise EvalsuiteError(f"unknown {flag} '{value}'; choose one of {', '.join(self.choices)}")
        if self.positive and value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise EvalsuiteError(f"{flag} must be a positive whole number, got {value!r}")


@dataclass(frozen=True)
class BackendInfo:
    """One backend: where it is built, what it can do, what it costs, and its own options."""

    name: str
    #: "module:function" building it from (source, :class:`~evalsuite.backends.BackendOptions`)
    builder: str
    #: runs only on GPUs (a CPU device becomes ``cuda``)
    gpu_only: bool = False
    #: "module:function" planning (tensor, data) parallel sizes from (spec, dtype, tp, dp); such
    #: a backend also plans its own memory (evalsuite's fit check is skipped) and uses the
    #: registry's dtype for the plan. None: one process, one model copy.
    plan_parallel: str | None = None
    #: how ``--dry-run`` estimates its time: "engine" (evalsuite's planner: forward passes as the
    #: engine packs them, generation as ``--generation`` decodes), "per_request" (one pass per
    #: distinct input, generation one prompt at a time, as lm-eval's hf model runs), or None (no
    #: in-process timing: the model is not a transformers model in this process)
    cost_model: str | None = None
    #: answers ``token_logprobs(texts)`` (the contamination check's scores)
    token_logprobs: bool = False
    #: re-checks a sample of each task on the model's plain forward after scoring it (the
    #: self-audit, evalsuite.run.audit); the dry run then also plans the audit's sample and cost
    audits: bool = False
    #: takes a whole task per call (its own scheduler batches, and each call has a fixed cost such
    #: as starting replicas); otherwise the runner sends chunks of documents, so progress and the
    #: request cache move as they go
    whole_tasks: bool = False
    #: options only this backend reads (flags of ``evalsuite run``)
    options: tuple[Option, ...] = ()
    #: what the backend is, for ``--backend``'s help
    summary: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def plans_parallel(self) -> bool:
        return self.plan_parallel is not None

    def build(self, source: ModelSource, options: BackendOptions) -> Backend:
        module_name, func = self.builder.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise EvalsuiteError(f"backend '{self.name}' needs {exc.name}, which is not installed; "
                                 f"pip install 'evalsuite[{self.name}]' or pick another --backend") from None
        return getattr(module, func)(source, options)

    def parallel(self, spec: Any, dtype: str, tensor_parallel: int | None, data_parallel: int) -> tuple[int, int]:
        """(tensor, data) parallel sizes; a backend without a plan refuses sizes above 1."""
        if self.plan_parallel is not None:
            module_name, func = self.plan_parallel.split(":")
            return getattr(importlib.import_module(module_name), func)(spec, dtype, tensor_parallel, data_parallel)
        if (tensor_parallel or 1) > 1 or data_parallel > 1:
            planners = ", ".join(f"--backend {b.name}" for b in REGISTRY.values() if b.plans_parallel)
            raise EvalsuiteError(
                f"--tensor-parallel and --data-parallel need {planners}; other backends spread a large model "
                "over all visible GPUs (--device cuda), and --shard I/N splits the documents across machines"
            )
        return 1, 1


#: name -> backend, in registration order (the first is the default).
REGISTRY: dict[str, BackendInfo] = {}


def register(info: BackendInfo) -> BackendInfo:
    if info.name in REGISTRY:
        raise ValueError(f"backend '{info.name}' is already registered")
    taken = {o.name for b in REGISTRY.values() for o in b.options}
    clash = [o.name for o in info.options if o.name in taken]
    if clash:
        raise ValueError(f"backend '{info.name}' option(s) {', '.join(clash)} already declared by another backend")
    REGISTRY[info.name] = info
    return info


def get_backend(name: str) -> BackendInfo:
    try:
        return REGISTRY[name]
    except KeyError:
        raise EvalsuiteError(f"unknown backend '{name}'; choose one of {', '.join(REGISTRY)}") from None


def option(name: str) -> Option:
    """The declaration of backend option ``name`` (:class:`RunConfig` builds its field from it)."""
    for info in REGISTRY.values():
        for opt in info.options:
            if opt.name == name:
                return opt
    raise KeyError(name)


def all_options() -> list[Option]:
    return [opt for info in REGISTRY.values() for opt in info.options]


def ask(lm: Any, kind: str, requests: Sequence[Any], disable_tqdm: bool = True) -> list[Any]:
    """``lm.<kind>(requests)``, by default without its progress bar: every registered backend
    takes ``disable_tqdm`` (:class:`Backend`); an lm-eval ``LM`` of one's own (a test's, the
    audit's plain scorer) may not, and is asked without it."""
    method = getattr(lm, kind)
    kwargs = {"disable_tqdm": disable_tqdm} if "disable_tqdm" in inspect.signature(method).parameters else {}
    return method(list(requests), **kwargs)


def logprob_backend() -> str:
    """The backend that scores token log-probabilities of plain texts (the contamination check)."""
    return next(b.name for b in REGISTRY.values() if b.token_logprobs)


# -- the backends ------------------------------------------------------------------------------
register(BackendInfo(
    "evalsuite", "evalsuite.backends.engine:build", cost_model="engine", token_logprobs=True, audits=True,
    summary="evalsuite's engine (default)",
    options=(Option("generation", GENERATION_MODES[0],
                    "evalsuite backend's greedy decoding (GSM8K): batched (default: prompts of any length "
                    "decode together) or exact (one prompt at a time, batch-size-1 arithmetic)",
                    choices=GENERATION_MODES),),
))
register(BackendInfo(
    "lm-eval-hf", "evalsuite.backends.lmeval_hf:build", cost_model="per_request",
    summary="lm-eval's own hf model",
))
register(BackendInfo(
    "vllm", "evalsuite.backends.vllm:build", gpu_only=True, plan_parallel="evalsuite.backends.vllm:plan_parallel",
    whole_tasks=True,
    summary="lm-eval's vLLM model, GPUs only",
    options=(
        Option("tensor_parallel", None, "vllm: GPUs one model is split over (default: from the registry and GPU memory)",
               metavar="N", positive=True, group="scale"),
        Option("data_parallel", 1, "vllm: model replicas on this machine, through Ray (default: 1)",
               metavar="M", positive=True, group="scale"),
    ),
))
DEFAULT_BACKEND = next(iter(REGISTRY))
