"""The task catalogue: what ``tasks/*.yaml`` says about each task, read without lm-eval.

Why a module of its own: the read side (results, sharding merge, aggregation, reports, tables,
export, compare) needs to know a task's name, title, metric and whether its subjects are
macro-averaged, and the CLI needs the suites and the task list. None of that needs lm-eval,
transformers or torch, so this module imports only PyYAML and the standard library; rendering
prompts and scoring them is :mod:`evalsuite.tasks.lm_adapter`.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from difflib import get_close_matches
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from evalsuite.tasks.data import DatasetRef
from evalsuite.errors import UnknownTaskError

LEADERBOARD = "leaderboard"
#: Column order of the leaderboard and of the SOLAR paper's Table 2.
LEADERBOARD_TASKS = ("arc", "hellaswag", "mmlu", "truthfulqa", "winogrande", "gsm8k")


def tasks_dir() -> Path:
    """The task definitions: ``$EVALSUITE_TASKS_DIR``, else the copy shipped inside the package
    (``evalsuite/task_defs``, the top-level ``tasks/`` folder mapped in at build time), else the
    ``tasks/`` folder beside the package (a source checkout run without installing)."""
    import os
    from importlib import resources

    env = os.environ.get("EVALSUITE_TASKS_DIR")
    if env:
        return Path(env)
    shipped = Path(str(resources.files("evalsuite") / "task_defs"))
    if shipped.is_dir() and any(shipped.glob("*.yaml")):
        return shipped
    return Path(__file__).resolve().parents[2] / "tasks"


@dataclass(frozen=True)
class TaskSpec:
    """One task as ``tasks/<name>.yaml`` defines it."""

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
    scorer: str = "lm_eval"
    group_by: str | None = None
    aggregate: str = "mean"
    description: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    #: the YAML file's bytes, for :attr:`config_hash`
    source_bytes: bytes = field(default=b"", repr=False, compare=False)

    @property
    def is_generation(self) -> bool:
        return self.scorer == "gsm8k_v1_strict"

    @property
    def macro_averaged(self) -> bool:
        """Whether the task score is the plain mean of per-subject means (MMLU)."""
        return self.aggregate == "mean_of_groups"

    @cached_property
    def config_hash(self) -> str:
        """The task YAML and the lm-eval config it builds on, hashed: what a run stores to say which
        prompts it asked. Computed when first asked (by a run), since it reads lm-eval's file."""
        base = lm_eval_tasks_root() / self.lm_eval_config
        return hashlib.sha256(self.source_bytes + b"\0" + base.read_bytes()).hexdigest()[:16]


def lm_eval_tasks_root() -> Path:
    """lm-eval's folder of task configs (the ``lm_eval_config`` of a task YAML is relative to it)."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def available_tasks() -> list[str]:
    return sorted(p.stem for p in tasks_dir().glob("*.yaml") if "suite" not in _read_yaml(p))


def available_suites() -> list[str]:
    return sorted(p.stem for p in tasks_dir().glob("*.yaml") if "suite" in _read_yaml(p))


def _read_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def expand_tasks(names: Sequence[str] | str | None) -> list[str]:
    """Task names with suites expanded, in leaderboard order where it applies; None means the suite."""
    if names is None:
        names = [LEADERBOARD]
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    tasks: list[str] = []
    for raw in names:
        name = raw.strip()
        path = tasks_dir() / f"{name}.yaml"
        if not path.is_file():
            known = available_tasks() + available_suites()
            close = get_close_matches(name, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UnknownTaskError(f"unknown task '{name}'{hint}; known tasks: {', '.join(known)}")
        doc = _read_yaml(path)
        for task in doc.get("tasks", [name]) if "suite" in doc else [name]:
            if task not in tasks:
                tasks.append(task)
    return tasks


def load_spec(name: str) -> TaskSpec:
    path = tasks_dir() / f"{name}.yaml"
    if not path.is_file():
        expand_tasks([name])  # raises the helpful error
    raw = path.read_bytes()
    doc = yaml.safe_load(raw)
    ds = doc["dataset"]
    return TaskSpec(
        name=doc["name"],
        title=doc.get("title", doc["name"]),
        lm_eval_config=doc["lm_eval_config"],
        dataset=DatasetRef(ds["hub_id"], ds.get("config"), tuple(ds.get("local_names", ()))),
        eval_split=doc["eval_split"],
        fewshot_split=doc.get("fewshot_split"),
        num_fewshot=int(doc.get("num_fewshot", 0)),
        shots=doc.get("shots", "none"),
        metric=doc["metric"],
        result_key=doc.get("result_key", doc["metric"]),
        scorer=doc.get("scorer", "lm_eval"),
        group_by=doc.get("group_by"),
        aggregate=doc.get("aggregate", "mean"),
        description=doc.get("description"),
        overrides=doc.get("overrides") or {},
        source_bytes=raw,
    )
