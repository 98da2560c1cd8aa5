"""evalsuite: the Open LLM Leaderboard (v1) six-task evaluation, exact and fast.

The Python API is what the CLI calls::

    import evalsuite
    result = evalsuite.evaluate(models=["smollm2"], tasks=["arc"], limit=5, data_dir="../shared/data")
    print(result.table())
    run = evalsuite.load_run("latest")          # any stored run, shards merged, status honest
    run.samples("arc")                          # per-document records as a DataFrame
"""
__version__ = "0.1.0"

from .results import RunView, latest_runs, load_run, select_runs  # noqa: E402
from .runner import EvalResult, evaluate  # noqa: E402

__all__ = ["EvalResult", "RunView", "evaluate", "latest_runs", "load_run", "select_runs", "__version__"]
