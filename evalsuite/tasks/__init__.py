"""Leaderboard v1 tasks, in two modules with different weights.

* :mod:`evalsuite.tasks.catalogue`: what ``tasks/*.yaml`` (and a user's ``--task-dir``) says: name,
  title, metric, scorer, how subjects are averaged, export names, contamination text, suites and
  their aggregate (H6). PyYAML only: the read side uses it.
* :mod:`evalsuite.tasks.lm_adapter`: lm-eval task objects fed v1 data and shots, prompts
  (:class:`DocPrompt`) and scoring (:class:`LoadedTask`). Needs lm-eval: the run side uses it.

Importing this package imports the catalogue only; the adapter's names (``LoadedTask``,
``DocPrompt``, ...) are still reachable here, and import the adapter when first asked for.
"""
from __future__ import annotations

from typing import Any

from evalsuite.tasks.catalogue import (
    LEADERBOARD,
    TASK_DIR_ENV,
    SuiteSpec,
    TaskSpec,
    available_suites,
    available_tasks,
    expand_tasks,
    leaderboard_tasks,
    lm_eval_tasks_root,
    load_spec,
    load_suite,
    lookup,
    tasks_dir,
    use_task_dir,
)

#: Names served from a heavier module on first use: name -> module (relative to this package).
_LAZY = {
    "DocPrompt": ".lm_adapter", "LoadedTask": ".lm_adapter", "SampleScore": ".lm_adapter", "TaskUnit": ".lm_adapter",
    "load_tasks": ".lm_adapter", "gsm8k_extract": ".scorers", "GSM8K_INVALID": ".scorers",
    "aggregate": "..analysis.aggregation", "mean_stderr": "..analysis.aggregation",
}

__all__ = ["LEADERBOARD", "TASK_DIR_ENV", "SuiteSpec", "TaskSpec", "available_suites", "available_tasks", "expand_tasks",
           "leaderboard_tasks", "lm_eval_tasks_root", "load_spec", "load_suite", "lookup", "tasks_dir", "use_task_dir",
           *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name], __name__), name)
