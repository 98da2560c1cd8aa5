"""The task catalogue: what ``tasks/*.yaml`` says about each task and suite, read without lm-eval.

Why a module of its own: everything that is *about* a task lives in its YAML file, and every
part of evalsuite asks here: the run side (data, shots, scorer), the read side (results,
sharding merge, aggregation, reports, tables, exports, statistics: titles, metric, whether
subjects are macro-averaged, export names) and the contamination check (which fields form a
document's text). The suite file (``tasks/leaderboard.yaml``) declares the leaderboard's
columns and its aggregate (H6, the plain mean of the six). None of that needs lm-eval,
transformers or torch, so this module imports only PyYAML and the standard library; rendering
prompts and scoring them is :mod:`evalsuite.tasks.lm_adapter` with :mod:`evalsuite.tasks.scorers`.

Users add tasks from a folder of their own (``--task-dir DIR`` or ``$EVALSUITE_TASK_DIR``):
its ``*.yaml`` files join the built-in ones (docs/tasks.md). A user file may not reuse a
built-in name, and every task file is checked when read, so a typo is one line naming the
file and the field.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from difflib import get_close_matches
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import yaml

from evalsuite.errors import EvalsuiteError, UnknownTaskError
from evalsuite.tasks.data import DatasetRef

LEADERBOARD = "leaderboard"
#: The environment variable naming a folder of the user's own task files (``--task-dir``).
TASK_DIR_ENV = "EVALSUITE_TASK_DIR"
#: What a task or suite name may be: it names a file, a parquet value and a report anchor.
_NAME = re.compile(r"[a-z0-9][a-z0-9_]{0,63}")
_SHOTS = ("v1_random", "first_n", "none")
_AGGREGATES = ("mean", "mean_of_groups")

#: The user's folder set by ``--task-dir`` (None: ``$EVALSUITE_TASK_DIR`` if set).
_user_dir: Path | None = None


def builtin_tasks_dir() -> Path:
    """The task definitions shipped with evalsuite: the copy inside the package
    (``evalsuite/task_defs``, the top-level ``tasks/`` folder mapped in at build time), else the
    ``tasks/`` folder beside the package (a source checkout run without installing)."""
    from importlib import resources

    shipped = Path(str(resources.files("evalsuite") / "task_defs"))
    if shipped.is_dir() and any(shipped.glob("*.yaml")):
        return shipped
    return Path(__file__).resolve().parents[2] / "tasks"


tasks_dir = builtin_tasks_dir


def use_task_dir(path: str | os.PathLike[str] | None) -> None:
    """Add the user's task folder ``path`` to the catalogue for this process (``--task-dir``);
    None goes back to ``$EVALSUITE_TASK_DIR`` (or none)."""
    global _user_dir
    if path is not None and str(path) != "":
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise EvalsuiteError(f"--task-dir {path}: no such folder; pass a folder holding task .yaml files "
                                 f"(docs/tasks.md)")
        _user_dir = folder.resolve()
    else:
        _user_dir = None


def user_task_dir() -> Path | None:
    """The user's task folder: ``--task-dir``, else ``$EVALSUITE_TASK_DIR``, else None."""
    if _user_dir is not None:
        return _user_dir
    env = os.environ.get(TASK_DIR_ENV)
    if not env:
        return None
    folder = Path(env).expanduser()
    if not folder.is_dir():
        raise EvalsuiteError(f"{TASK_DIR_ENV}={env}: no such folder; point it at a folder of task .yaml files or unset it")
    return folder.resolve()


def _files() -> dict[str, Path]:
    """Task and suite name -> its YAML file: the built-in ones, then the user's folder's."""
    found = {p.stem: p for p in sorted(builtin_tasks_dir().glob("*.yaml"))}
    user = user_task_dir()
    if user is not None:
        for path in sorted(user.glob("*.yaml")):
            if path.stem in found:
                raise EvalsuiteError(f"{path}: task '{path.stem}' is built in; rename the file (and its name: field)")
            if not _NAME.fullmatch(path.stem):
                raise EvalsuiteError(f"{path}: a task file's name must be 1-64 of a-z 0-9 _ starting with a letter or "
                                     f"digit (it names the task); rename the file")
            found[path.stem] = path
    return found


# -- tasks -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportNames:
    """How the leaderboard's harness (lm-eval b281b09) and a model card name a task's result.

    Built-in tasks declare these in their YAML (``export:``); a user task defaults to its own
    name and title."""

    harness: str  # lm-eval task name (a grouped task: prefix of its per-subject tasks)
    leaderboard: str  # the leaderboard's results key (before the "|shots")
    version: int = 0
    metric_name: str | None = None  # the model card's metric "name"
    card_name: str | None = None  # the model card's dataset "name"
    card_dataset: str | None = None  # the model card's dataset "type"


@dataclass(frozen=True)
class TaskSpec:
    """One task as its ``<name>.yaml`` defines it."""

    name: str
    title: str
    lm_eval_config: str
    dataset: DatasetRef
    eval_split: str
    fewshot_split: str | None
    num_fewshot: int
    shots: str  # "v1_random" | "first_n" | "none"
    metric: str
    result_key: str
    scorer: str = "acc"  # a name in :mod:`evalsuite.tasks.scorers`
    group_by: str | None = None
    aggregate: str = "mean"
    description: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    #: Jinja template of the text the contamination check scores (the document's raw fields)
    contamination_text: str | None = None
    export: ExportNames | None = None
    #: the folder of the YAML file (a user task's lm-eval config and data may sit beside it)
    folder: Path = field(default=Path("."), repr=False, compare=False)
    builtin: bool = True
    #: the YAML file's bytes, for :attr:`config_hash`
    source_bytes: bytes = field(default=b"", repr=False, compare=False)

    @property
    def is_generation(self) -> bool:
        """Whether the model generates (and the scorer reads its text) rather than scoring choices."""
        from evalsuite.tasks.scorers import get_scorer

        return get_scorer(self.scorer).generation

    @property
    def macro_averaged(self) -> bool:
        """Whether the task score is the plain mean of per-subject means (MMLU)."""
        return self.aggregate == "mean_of_groups"

    @property
    def export_names(self) -> ExportNames:
        return self.export or ExportNames(self.name, self.name, card_name=self.title, card_dataset=self.dataset.hub_id)

    @property
    def lm_eval_config_path(self) -> Path:
        """The lm-eval config the templates come from: beside a user task's YAML when it is there,
        else in lm-eval's own folder of task configs."""
        own = self.folder / self.lm_eval_config
        if not self.builtin and own.is_file():
            return own
        return lm_eval_tasks_root() / self.lm_eval_config

    @cached_property
    def config_hash(self) -> str:
        """The task YAML and the lm-eval config it builds on, hashed: what a run stores to say which
        prompts it asked. Computed when first asked (by a run), since it reads lm-eval's file."""
        base = self.lm_eval_config_path
        return hashlib.sha256(self.source_bytes + b"\0" + base.read_bytes()).hexdigest()[:16]


def lm_eval_tasks_root() -> Path:
    """lm-eval's folder of task configs (the ``lm_eval_config`` of a task YAML is relative to it)."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


@dataclass(frozen=True)
class SuiteSpec:
    """A suite as its YAML defines it: its tasks (the columns, in order) and its aggregate score."""

    name: str
    title: str
    tasks: tuple[str, ...]
    score_key: str = "score"  # the aggregate's key in exports and tables ("h6")
    score_label: str = "Score"  # its column title ("H6")


def available_tasks() -> list[str]:
    return sorted(name for name, path in _files().items() if "suite" not in _read_yaml(path))


def available_suites() -> list[str]:
    return sorted(name for name, path in _files().items() if "suite" in _read_yaml(path))


def _read_yaml(path: Path) -> dict[str, Any]:
    return _parse(path.read_bytes(), path)


def _parse(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise EvalsuiteError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc}); fix the file") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise EvalsuiteError(f"{path}: a task file is a YAML mapping (name:, dataset:, ...); fix the file")
    return doc


def expand_tasks(names: Sequence[str] | str | None) -> list[str]:
    """Task names with suites expanded, in leaderboard order where it applies; None means the suite."""
    if names is None:
        names = [LEADERBOARD]
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    files = _files()
    tasks: list[str] = []
    for raw in names:
        name = raw.strip()
        path = files.get(name)
        if path is None:
            raise _unknown(name, files)
        doc = _read_yaml(path)
        for task in doc.get("tasks", [name]) if "suite" in doc else [name]:
            if task not in tasks:
                tasks.append(task)
    return tasks


def _unknown(name: str, files: dict[str, Path]) -> UnknownTaskError:
    known = sorted(files)
    close = get_close_matches(name, known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    extra = "" if user_task_dir() else f"; a task of your own: --task-dir DIR or {TASK_DIR_ENV}"
    shown = name if len(name) <= 80 else name[:80] + "..."
    return UnknownTaskError(f"unknown task {shown!r}{hint}; known tasks: {', '.join(known)}{extra}")


def load_spec(name: str) -> TaskSpec:
    files = _files()
    path = files.get(name)
    if path is None:
        raise _unknown(name, files)
    return _load_spec(path, path.read_bytes(), path.parent == builtin_tasks_dir())


def lookup(name: str) -> TaskSpec | None:
    """The task's spec, or None when no task file defines it (a stored run of a user task read
    without its ``--task-dir``): the read side then shows the name as stored."""
    try:
        return load_spec(name)
    except UnknownTaskError:
        return None


def title(name: str) -> str:
    """A task's column title (its name when the catalogue does not know it)."""
    spec = lookup(name)
    return spec.title if spec else name


@lru_cache(maxsize=256)
def _load_spec(path: Path, raw: bytes, builtin: bool) -> TaskSpec:
    doc = _parse(raw, path)

    def need(key: str, kind: type | tuple[type, ...] = str) -> Any:
        if key not in doc:
            raise EvalsuiteError(f"{path}: field '{key}' is missing; see docs/tasks.md for a task file's fields")
        value = doc[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise EvalsuiteError(f"{path}: field '{key}' must be {_kind(kind)}, got {value!r}")
        return value

    def opt(key: str, default: Any, kind: type | tuple[type, ...] = str) -> Any:
        return need(key, kind) if doc.get(key) is not None else default

    name = need("name")
    if name != path.stem:
        raise EvalsuiteError(f"{path}: field 'name' is '{name}' but the file is {path.name}; make them agree")
    ds = need("dataset", dict)
    if not isinstance(ds.get("hub_id"), str):
        raise EvalsuiteError(f"{path}: field 'dataset.hub_id' must be text (the Hub id, or any id for local data)")
    local_path = ds.get("path")
    if local_path is not None and builtin:
        raise EvalsuiteError(f"{path}: dataset.path is for user tasks only")
    dataset = DatasetRef(ds["hub_id"], ds.get("config"), tuple(ds.get("local_names", ())),
                         str((path.parent / local_path).resolve()) if local_path is not None else None)
    shots = opt("shots", "none")
    if shots not in _SHOTS:
        raise EvalsuiteError(f"{path}: field 'shots' must be one of {', '.join(_SHOTS)}, got {shots!r}")
    aggregate = opt("aggregate", "mean")
    if aggregate not in _AGGREGATES:
        raise EvalsuiteError(f"{path}: field 'aggregate' must be one of {', '.join(_AGGREGATES)}, got {aggregate!r}")
    group_by = opt("group_by", None)
    if aggregate == "mean_of_groups" and group_by is None:
        raise EvalsuiteError(f"{path}: aggregate mean_of_groups needs group_by (the field naming each row's group)")
    metric = need("metric")
    scorer = opt("scorer", metric)
    from evalsuite.tasks.scorers import SCORERS

    if scorer not in SCORERS:
        raise EvalsuiteError(f"{path}: scorer {scorer!r} is not registered; use one of {', '.join(sorted(SCORERS))} "
                             f"(or set scorer: to one of them)")
    num_fewshot = opt("num_fewshot", 0, int)
    if num_fewshot < 0 or (num_fewshot > 0 and (shots == "none" or doc.get("fewshot_split") is None)):
        raise EvalsuiteError(f"{path}: num_fewshot {num_fewshot} needs shots: v1_random or first_n and a fewshot_split")
    export = doc.get("export")
    if export is not None and not isinstance(export, dict):
        raise EvalsuiteError(f"{path}: field 'export' must be a mapping (harness:, leaderboard:, ...)")
    return TaskSpec(
        name=name,
        title=opt("title", name),
        lm_eval_config=need("lm_eval_config"),
        dataset=dataset,
        eval_split=need("eval_split"),
        fewshot_split=opt("fewshot_split", None),
        num_fewshot=num_fewshot,
        shots=shots,
        metric=metric,
        result_key=opt("result_key", metric),
        scorer=scorer,
        group_by=group_by,
        aggregate=aggregate,
        description=opt("description", None),
        overrides=opt("overrides", {}, dict),
        contamination_text=opt("contamination_text", None),
        export=ExportNames(**{"harness": name, "leaderboard": name, **export}) if export else None,
        folder=path.parent,
        builtin=builtin,
        source_bytes=raw,
    )


def _kind(kind: type | tuple[type, ...]) -> str:
    names = {str: "text", int: "a whole number", dict: "a mapping", list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


# -- suites ------------------------------------------------------------------------------------
def load_suite(name: str = LEADERBOARD) -> SuiteSpec:
    """A suite's tasks (its columns, in order) and its aggregate score (the leaderboard's H6)."""
    files = _files()
    path = files.get(name)
    if path is None:
        raise _unknown(name, files)
    doc = _read_yaml(path)
    if "suite" not in doc:
        raise EvalsuiteError(f"{path}: '{name}' is a task, not a suite")
    score = doc.get("score") or {}
    if score and score.get("method", "mean") != "mean":
        raise EvalsuiteError(f"{path}: score.method must be mean (the plain mean of the suite's task scores)")
    return SuiteSpec(name, str(doc.get("title", name)), tuple(doc.get("tasks", ())),
                     str(score.get("key", "score")), str(score.get("label", "Score")))


def leaderboard_tasks() -> tuple[str, ...]:
    """The leaderboard suite's tasks, in column order (and the order of the SOLAR paper's Table 2)."""
    return load_suite(LEADERBOARD).tasks


def ordered(tasks: Iterable[str]) -> list[str]:
    """``tasks`` with the leaderboard's first, in its column order, then the others by name."""
    present = set(tasks)
    first = [t for t in leaderboard_tasks() if t in present]
    return first + sorted(present - set(first))


def macro_averaged(name: str) -> bool | None:
    """Whether the task's score is the mean of its groups' means (MMLU); None when unknown."""
    spec = lookup(name)
    return spec.macro_averaged if spec else None
