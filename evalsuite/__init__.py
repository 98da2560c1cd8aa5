"""evalsuite: the Open LLM Leaderboard (v1) six-task evaluation, exact and fast.

The Python API is what the CLI calls::

    import evalsuite
    result = evalsuite.evaluate(models=["smollm2"], tasks=["arc"], limit=5, data_dir="../shared/data")
    print(result.table())
    run = evalsuite.load_run("latest")          # any stored run, shards merged, status honest
    run.samples("arc")                          # per-document records as a DataFrame
    print(evalsuite.plan_cost(models=["smollm2"], data_dir="../shared/data").table())  # a run's cost, first
"""
__version__ = "0.1.0"

from typing import Any  # noqa: E402

from evalsuite.store.run_views import RunView, latest_runs, load_run, select_runs  # noqa: E402

#: The run side's entry points, imported when first used: reading stored results (``load_run``,
#: the CLI's ``results``/``report``/``table``/``export``) must not import lm-eval or torch.
_RUN_SIDE = {"evaluate": ".run.evaluation", "EvalResult": ".run.evaluation", "plan_cost": ".run.dry_run",
             "CostPlan": ".run.dry_run",
             "RunConfig": ".config"}


def __getattr__(name: str) -> Any:
    if name not in _RUN_SIDE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_RUN_SIDE[name], __name__), name)


__all__ = ["CostPlan", "EvalResult", "RunConfig", "RunView", "evaluate", "latest_runs", "load_run", "plan_cost",
           "select_runs", "__version__"]
