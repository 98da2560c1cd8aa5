"""One run's options, declared once: :class:`RunConfig`.

Every option of a run (models, tasks, limit, data, backend settings, shard, cache, tag, ...) is
one field here, and the field carries what the command line needs to offer it: its flag, help
text and parser (:func:`add_run_options` builds the ``argparse`` options from the fields). The
Python API (``evaluate(**options)`` or ``evaluate(config=...)``), the dry run, nightly, the Ray
launcher and the contamination check all take a ``RunConfig``, so a new option is one new
field: the CLI, ``evaluate`` and every entry point see it without further edits
(``tests/test_config.py`` checks that every field is reachable from the parser and ``evaluate``).

:meth:`RunConfig.validate` is the one input check of a run, before anything loads: it returns
the normalized config (model and task names split and expanded, the batch size and shard
parsed, the device vLLM needs) or raises a one-line :class:`~evalsuite.errors.EvalsuiteError`.
What a run sends to a backend at once (:data:`CHUNK_DOCS`) and which backend settings can change
a number (:func:`backend_settings`, part of the request cache's key and the run row) live here
too, so the runner, the dry run, the speed estimate and the cache share them without importing
each other.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from evalsuite.backends import BACKENDS, DEFAULT_BACKEND, BackendOptions
from evalsuite.backends.registry import all_options, get_backend, option as backend_option
from evalsuite.errors import EvalsuiteError
from evalsuite.store.parquet_store import DEFAULT_RESULTS_DIR

#: Documents sent to the backend at once: large enough to batch and share prefixes, small
#: enough for a lively progress bar and little lost work when a run is killed.
CHUNK_DOCS = 32
#: Weight dtypes a run may ask for (default: float32 on CPU, the registry's dtype on GPU).
DTYPES = ("float32", "bfloat16", "float16")
#: The model a run evaluates when none is named.
DEFAULT_MODEL = "smollm2"


# -- command-line parsers (argparse types) ------------------------------------------------------
def whole_number(text: str, minimum: int, hint: str = "") -> int:
    """``text`` as a whole number of at least ``minimum`` (for argparse types)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}{hint}")
    return value


def positive_int(text: str) -> int:
    """A whole number of at least 1 (argparse type; argparse's message names the flag)."""
    return whole_number(text, 1)


def limit_arg(text: str) -> int:
    """``--limit N``: a whole number of at least 1; the message says how to evaluate everything."""
    return whole_number(text, 1, "; omit --limit to evaluate every document")


def share_arg(text: str) -> float:
    """A share in (0, 1], as ``0.03`` or ``3%`` (argparse type)."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.03 or a percentage such as 3%, got '{text}'") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1 (100%), got '{text}'; --no-audit turns the audit off")
    return value


def batch_size_arg(text: str) -> int | str:
    """``auto`` or a positive whole number (argparse type)."""
    try:
        return parse_batch_size(text)
    except EvalsuiteError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--batch-size ")) from None


def _option(default: Any, help: str, *, flag: str | None = None, parse: Any = None, metavar: str | None = None,
            choices: Sequence[str] | None = None, group: str | None = None) -> Any:
    """A field with its command-line form. A bool field is a switch: ``flag`` turns a default of
    False on (``--resume``) or a default of True off (``--no-cache``)."""
    meta = {"flag": flag, "help": help, "parse": parse, "metavar": metavar, "choices": choices, "group": group}
    return field(default=default, metadata=meta)


def _backend_option(name: str) -> Any:
    """A field declared by the backend that owns it (:mod:`evalsuite.backends.registry`)."""
    opt = backend_option(name)
    return _option(opt.default, opt.help, parse=positive_int if opt.positive else opt.parse, metavar=opt.metavar,
                   choices=opt.choices, group=opt.group)


@dataclass(frozen=True)
class RunConfig:
    """Every option of a run. Build it with keyword arguments (or :meth:`from_args`), then
    :meth:`validate` it; the validated config is what the entry points pass on."""

    models: Sequence[str] | str | None = _option(
        None, "comma-separated aliases (see `evalsuite models`), Hub ids, model folders, .gguf files or dus:BASE:M "
              f"(default: {DEFAULT_MODEL})")
    tasks: Sequence[str] | str | None = _option(
        None, "comma-separated tasks or suites: arc, hellaswag, mmlu, truthfulqa, winogrande, gsm8k, leaderboard "
              "(default: leaderboard, all six with H6)")
    limit: int | None = _option(
        None, "evaluate the first N documents of the v1 evaluation order (per subject for MMLU)",
        parse=limit_arg, metavar="N")
    data_dir: str | Path | None = _option(
        None, "local datasets laid out as <hub id with / as __>/<config>/<split>.jsonl "
              "(default: $EVALSUITE_DATA_DIR, else the Hugging Face Hub)", metavar="DIR")
    data_revision: str | None = _option(
        None, "Hub datasets' revision instead of the pinned commits: main, a commit id, or HUB_ID=REV pairs, "
              "comma-separated (the commit used is recorded with the run)", metavar="REV")
    task_dir: str | Path | None = _option(
        None, "a folder of your own task .yaml files, added to the built-in ones (default: $EVALSUITE_TASK_DIR; "
              "docs/tasks.md)", metavar="DIR")
    backend: str = _option(
        DEFAULT_BACKEND, f"scoring backend (default: {DEFAULT_BACKEND}; "
                         + "; ".join(f"{b} is {get_backend(b).summary}" for b in BACKENDS if b != DEFAULT_BACKEND) + ")",
        choices=sorted(BACKENDS))
    device: str = _option(
        "auto", "auto, cpu, cuda or cuda:N (default: auto: every visible GPU the model needs, else the CPU; a model "
                "that cannot finish within a day on the CPU is then refused unless --device cpu is given)")
    dtype: str | None = _option(
        None, "weights dtype (default: float32 on CPU, the registry's dtype on GPU)", choices=DTYPES)
    batch_size: int | str = _option(
        "auto", "a positive whole number or auto (default). lm-eval-hf: requests per batch; evalsuite engine: at most "
                "this many rows per forward pass and sequences decoded together (its token budget batches by itself "
                "under auto)", parse=batch_size_arg)
    generation: str = _backend_option("generation")
    results_dir: str | Path = _option(
        DEFAULT_RESULTS_DIR, f"parquet results store (default: {DEFAULT_RESULTS_DIR}/)", metavar="DIR")
    tag: str | None = _option(None, "label stored with the run, e.g. nightly-2026-11-26 (run-id characters)")
    run_id: str | None = _option(None, "run id to use (default: a new one): 1-64 of A-Z a-z 0-9 . _ -, starting "
                                       "with a letter or digit, no '__'")
    tensor_parallel: int | None = _backend_option("tensor_parallel")
    data_parallel: int = _backend_option("data_parallel")
    shard: tuple[int, int] | str | None = _option(
        None, "evaluate documents p %% N == I of each task; N machines with one --run-id form one run",
        metavar="I/N", group="scale")
    trust_remote_code: bool = _option(
        False, "allow a model's own Python code (registry models that need it are allowed already)")
    verify_weights: bool = _option(
        False, "hash every weight file in full for the model's identity (cache keys, DUS builds) instead of "
               "trusting the size + mtime shortcut (docs/safety.md)")
    measure: bool = _option(
        True, "with --dry-run: skip the short timed forward of the model (no time estimate)", flag="--no-measure")
    remeasure: bool = _option(
        False, "with --dry-run: time the forwards again instead of using the measurement kept for this machine")
    progress: bool = _option(True, "hide progress bars", flag="--no-progress")
    use_cache: bool = _option(
        True, "compute every request again, bypassing the request cache (`evalsuite cache info`)", flag="--no-cache")
    audit: bool = _option(
        True, "skip the evalsuite engine's self-audit (after each task a seeded sample within --audit-share of the "
              "task's engine tokens, at least one request, re-computed by the model's plain forward; beyond "
              "tolerance the task is scored again the plain way); score rows then say 'not audited'", flag="--no-audit")
    audit_share: float = _option(
        0.03, "the self-audit's budget: its plain-forward tokens, each priced at 1.25 engine tokens, as a share of "
              "each task's engine tokens (so of its time), a fraction or a percentage (default 0.03 = 3%%; at least one "
              "request per task is audited whatever the share; 1 audits every request)",
        parse=share_arg, metavar="SHARE")
    resume: bool = _option(
        False, "continue the latest interrupted run of the same models/tasks/limit/backend/tag (or --run-id's) under "
               "its run id; says so when there is none. Without it an existing --run-id is refused; with it a different "
               "configuration is refused, and models already ok in the run are kept, never rewritten. Cached "
               "requests are never recomputed either way")

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def build(cls, config: RunConfig | None = None, **options: Any) -> RunConfig:
        """``config`` with ``options`` replaced, or a new config of ``options`` (``None`` for
        ``models``/``tasks`` keeps the config's)."""
        for name in ("models", "tasks"):
            if config is not None and options.get(name, 0) is None:
                del options[name]
        if config is None:
            return cls(**options)
        return replace(config, **options) if options else config

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> RunConfig:
        """The options a command's parser offered (:func:`add_run_options`), plus ``overrides``."""
        given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**{**given, **overrides})

    # -- the input check -----------------------------------------------------------------------
    def validate(self, *, gpu: bool = True, cpu_budget: bool = True) -> RunConfig:
        """The checks every run shares, before anything loads; the normalized config.

        ``models`` and ``tasks`` become tuples of names (the default model; suites expanded),
        ``batch_size`` ``"auto"`` or an int, ``shard`` an ``(I, N)`` tuple, and vLLM's device
        ``cuda``. Each bad value raises a one-line :class:`EvalsuiteError` naming the fix.
        ``gpu=False`` leaves out whether the device's GPU is present (``check_device``):
        ``evaluate`` asks that after the checks that need no GPU (registry models' memory and
        parallel sizes), so those errors come first on a machine without one. ``device="auto"``
        becomes ``cuda`` or ``cpu`` (:mod:`evalsuite.models.devices`); where it became ``cpu``,
        registry models that cannot finish within a day there are refused (``cpu_budget``; the
        dry run, which says how long, passes False).
        """
        from evalsuite.models.devices import AUTO, check_cpu_run, resolve_device
        from evalsuite.store.names import check_name
        from evalsuite.store.shards import check_shard, parse_shard

        for flag, name in (("--run-id", self.run_id), ("--tag", self.tag)):  # names are data, never paths
            if name is not None:
                check_name(name, flag)
        limit = self.limit
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise EvalsuiteError(f"--limit must be a positive number of documents, got {limit}; omit it for full runs")
        device = "cuda" if get_backend(self.backend).gpu_only and self.device in ("cpu", AUTO) else resolve_device(self.device)
        model_names, task_names = self.selection()
        if self.device == AUTO and device == "cpu" and cpu_budget:
            from evalsuite.models.memory import check_fits
            from evalsuite.models.registry import REGISTRY

            for name in model_names:
                spec = REGISTRY.get(name.strip())
                if spec is not None:  # beyond the RAM says so first; then beyond a day
                    check_fits(spec, self.dtype or "float32", "cpu")
                    check_cpu_run(spec.alias, spec.params, task_names, self.limit)
        batch_size = parse_batch_size(self.batch_size)
        shard: tuple[int, int] | None = None
        if self.shard is not None:
            shard = parse_shard(self.shard) if isinstance(self.shard, str) else (self.shard[0], self.shard[1])
            check_shard(shard)
            if self.run_id is None:
                raise EvalsuiteError("--shard needs --run-id: give every shard the same run id so they form one run")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise EvalsuiteError(f"unknown --dtype '{self.dtype}'; choose one of {', '.join(DTYPES)}")
        for opt in all_options():  # each backend's own options, checked as their declarations say
            opt.check(getattr(self, opt.name))
        from evalsuite.tasks.data import parse_data_revision

        parse_data_revision(self.data_revision)  # refused here, before anything loads
        share = self.audit_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise EvalsuiteError(f"--audit-share must be a fraction above 0 and at most 1, got {share!r}; "
                                 "--no-audit turns the audit off")
        check_device(device, present=gpu)
        return replace(self, models=model_names, tasks=task_names, device=device, batch_size=batch_size, shard=shard)

    @property
    def shard_pair(self) -> tuple[int, int] | None:
        """The ``(I, N)`` shard of a validated config (validate() parses "I/N"), or None."""
        assert self.shard is None or isinstance(self.shard, tuple)
        return self.shard

    def selection(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The model names (default ``smollm2``) and the task names, suites expanded."""
        from evalsuite.tasks import expand_tasks, use_task_dir

        if self.task_dir is not None:
            use_task_dir(self.task_dir)
        tasks = self.tasks
        if isinstance(tasks, str) and not tasks.strip() or (tasks is not None and not split_names(tasks)):
            raise EvalsuiteError("no task given; pass --tasks with task or suite names (see `evalsuite tasks`)")
        task_names = tuple(expand_tasks(tasks if tasks is None or isinstance(tasks, str) else list(tasks)))
        check_model_names(self.models, "--models")
        return tuple(split_names(self.models) or [DEFAULT_MODEL]), task_names

    # -- what the backend gets -----------------------------------------------------------------
    def backend_options(self, dtype: str, tensor_parallel: int = 1, data_parallel: int = 1) -> BackendOptions:
        """The backend's options for one model (its resolved dtype and parallel sizes)."""
        return BackendOptions(device=self.device, dtype=dtype, batch_size=self.batch_size,
                              tensor_parallel=tensor_parallel, data_parallel=data_parallel, generation=self.generation)


def backend_settings(options: BackendOptions) -> dict[str, Any]:
    """The backend options that can change a number (the device only by its type)."""
    from dataclasses import asdict

    settings = asdict(options)
    settings["device"] = options.device.partition(":")[0]
    return settings


# -- single checks (also used where only one option is taken) --------------------------------------
def parse_batch_size(value: int | str) -> int | str:
    """``auto`` or a positive whole number; anything else is refused (it would be stored and ignored)."""
    text = str(value).strip()
    if text == "auto":
        return "auto"
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise EvalsuiteError(f"--batch-size must be a positive whole number or auto, got '{value}'")
    return int(text)


def check_device(device: str, present: bool = True) -> None:
    """``cpu``, ``cuda`` or ``cuda:N`` with that GPU present (``present``); refused before any weight loads."""
    kind, _, index = str(device).partition(":")
    if kind not in ("cpu", "cuda") or (kind == "cpu" and index) or (index and not index.isdigit()):
        raise EvalsuiteError(f"unknown --device '{device}'; use auto, cpu, cuda or cuda:N")
    if kind == "cuda" and present:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise EvalsuiteError(f"--device {device}: no CUDA GPU is visible to this process; use --device cpu")
        if index and int(index) >= count:
            raise EvalsuiteError(f"--device {device}: only {count} GPU(s) visible (cuda:0 to cuda:{count - 1})")


def split_names(value: Sequence[str] | str | None) -> list[str]:
    """Comma-separated names (or a list of them), blanks dropped."""
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    return [v.strip() for v in value if v and v.strip()]


def check_model_names(value: Sequence[str] | str | None, flag: str) -> None:
    """An empty or blank name anywhere in a model list is bad input, never "the default model":
    ``--models ""``, ``--models ,``, ``--models a,,b``, ``--model ' '``."""
    if value is None:
        return
    parts = value.split(",") if isinstance(value, str) else list(value)
    if not parts or any(not isinstance(p, str) or not p.strip() for p in parts):
        raise EvalsuiteError(f"{flag} {value!r} has an empty model name; give comma-separated model names "
                             f"(aliases, Hub ids, folders), or leave {flag} out for the default ({DEFAULT_MODEL})"
                             if flag == "--models" else
                             f"{flag} {value!r} is empty; give a model name (alias, Hub id, folder or .gguf file)")


# -- the command line ----------------------------------------------------------------------------
def add_option(parser: Any, name: str, **overrides: Any) -> None:
    """Offer the RunConfig field ``name`` on ``parser`` (an argparse parser or group);
    ``overrides`` replace argparse keywords (a command's own help or default)."""
    spec = next(f for f in fields(RunConfig) if f.name == name)
    meta = spec.metadata
    flag = meta["flag"] or "--" + name.replace("_", "-")
    kwargs: dict[str, Any] = {"dest": name, "help": meta["help"]}
    if isinstance(spec.default, bool):
        kwargs.update(action="store_false" if spec.default else "store_true", default=spec.default)
    else:
        kwargs["default"] = spec.default
        for key, arg in (("parse", "type"), ("metavar", "metavar"), ("choices", "choices")):
            if meta[key] is not None:
                kwargs[arg] = meta[key]
    kwargs.update(overrides)
    parser.add_argument(flag, **kwargs)


def add_run_options(parser: argparse.ArgumentParser, names: Sequence[str] | None = None,
                    groups: dict[str, Any] | None = None) -> None:
    """Offer the run options ``names`` (default: all) in field order; a field with a ``group``
    goes into ``groups[group]`` when given (e.g. "running at scale")."""
    for spec in fields(RunConfig):
        if names is None or spec.name in names:
            target = (groups or {}).get(spec.metadata["group"], parser)
            add_option(target, spec.name)


__all__ = ["CHUNK_DOCS", "DTYPES", "RunConfig", "add_option", "add_run_options", "backend_settings",
           "batch_size_arg", "check_device", "parse_batch_size", "positive_int", "limit_arg", "split_names",
           "check_model_names"]
