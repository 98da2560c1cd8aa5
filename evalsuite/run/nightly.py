"""``nightly``: evaluate a checkpoint, compare it with the accepted baseline, report, decide.

One call does what the CI workflow does, so a nightly failure can be reproduced locally with
the same command. The run is tagged (``nightly-YYYY-MM-DD`` by default) and resumes an
interrupted run of the same command under its run id; the request cache makes the finished
part free. With no baseline yet (the first night) the new run becomes the baseline and the
result is 0. The comparison is written as Markdown and JSON to ``<results>/nightly/`` so CI can
put the Markdown in the job summary and keep both as artifacts.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evalsuite.analysis.comparison import DEFAULT_ALPHA, DEFAULT_MAX_DROP, RunComparison, compare_runs
from evalsuite.config import RunConfig
from evalsuite.store.parquet_store import ResultsStore
from evalsuite.store.run_views import read_baseline, set_baseline


@dataclass
class NightlyResult:
    run_id: str
    model: str
    comparison: RunComparison | None  # None on the first night (the run became the baseline, or failed)
    baseline_set: bool
    markdown_path: Path
    json_path: Path
    run_exit_code: int = 0  # the run's own: 1 when a task failed or had no data

    @property
    def exit_code(self) -> int:
        """0 no regression; 1 a task regressed, failed or had no data (in the run or the comparison)."""
        return max(self.run_exit_code, self.comparison.exit_code if self.comparison else 0)


def nightly(
    model: str | None = None,
    *,
    config: RunConfig | None = None,
    baseline: str | None = None,
    max_drop: float = DEFAULT_MAX_DROP,
    alpha: float = DEFAULT_ALPHA,
    force: bool = False,
    **options: Any,
) -> NightlyResult:
    """Run ``model`` on ``tasks``, compare with ``baseline`` (default: the stored baseline).

    The run's options are a :class:`~evalsuite.config.RunConfig` (or its fields as keyword
    arguments, without progress bars unless asked); the run is tagged ``nightly-YYYY-MM-DD``
    unless it has a tag, and resumes an interrupted run of the same command. The baseline ref
    and the thresholds are checked before anything is evaluated: a ref that names no run costs
    nothing and stores nothing (:func:`check_inputs`).
    """
    from evalsuite.run.evaluation import evaluate

    from evalsuite.config import check_model_names

    if config is None:
        options.setdefault("progress", False)
    check_model_names(model, "--model")
    config = RunConfig.build(config, models=model, **options)
    check_model_names(config.models, "--model")
    baseline = check_inputs(config.results_dir, baseline, max_drop, alpha)
    tag = config.tag or f"nightly-{datetime.now(UTC):%Y-%m-%d}"
    result = evaluate(config=RunConfig.build(config, tag=tag, resume=True))
    results_dir = config.results_dir
    candidate = f"{result.run_id}@{result.models[0]}"
    store = ResultsStore(results_dir)  # written through the store: inside it, atomically, never through a link
    out = store.table_dir("nightly")
    md_path, json_path = out / f"{result.run_id}.md", out / f"{result.run_id}.json"
    run_code = result.exit_code
    if baseline is None and read_baseline(results_dir) is None:
        side = {"run_id": result.run_id, "model": result.models[0]}
        if run_code:
            store.write_text("nightly", md_path.name, f"### :x: Nightly eval: first night, but not every task was "
                             f"scored\n\nNo baseline was set from this run.\n\n```\n{result.table()}\n```\n")
            store.write_text("nightly", json_path.name, _json({"baseline_set": False, "candidate": side, "regressed": [], "exit_code": run_code}))
            return NightlyResult(result.run_id, result.models[0], None, False, md_path, json_path, run_code)
        view = set_baseline(results_dir, candidate)
        store.write_text("nightly", md_path.name, f"### :white_check_mark: Nightly eval: first night\n\nNo baseline "
                         f"existed; `{view.describe()}` is now the baseline (`evalsuite baseline show`).\n\n"
                         f"```\n{result.table()}\n```\n")
        store.write_text("nightly", json_path.name, _json({"baseline_set": True, "baseline": side, "candidate": side, "regressed": [],
                                    "exit_code": 0}))
        return NightlyResult(result.run_id, result.models[0], None, True, md_path, json_path, 0)
    comparison = compare_runs(results_dir, baseline or "baseline", candidate, max_drop=max_drop, alpha=alpha, force=force)
    store.write_text("nightly", md_path.name, comparison.markdown())
    store.write_text("nightly", json_path.name, comparison.to_json())
    return NightlyResult(result.run_id, result.models[0], comparison, False, md_path, json_path, run_code)


def check_inputs(results_dir: str | Path, baseline: str | None, max_drop: float, alpha: float) -> str | None:
    """What the comparison will need, checked up front: finite thresholds, and a baseline that
    resolves now (the given ref, else the stored baseline file when there is one: unreadable or
    pointing at a run that is gone is refused; none at all is the first night).

    A given ref is returned pinned as ``RUN@MODEL``: ``latest`` or a model name resolved after
    the run would name the new run itself."""
    from evalsuite.analysis.comparison import check_thresholds
    from evalsuite.store.run_views import load_run

    check_thresholds(max_drop, alpha)
    if baseline is not None:
        view = load_run(baseline, results_dir)
        return f"{view.run_id}@{view.model}"
    if read_baseline(results_dir) is not None:
        load_run("baseline", results_dir)
    return None


def _json(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data, indent=2)
