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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .backends import DEFAULT_BACKEND
from .compare import DEFAULT_ALPHA, DEFAULT_MAX_DROP, Comparison, compare_runs, read_baseline, set_baseline
from .store import DEFAULT_RESULTS_DIR, ResultsStore


@dataclass
class NightlyResult:
    run_id: str
    model: str
    comparison: Comparison | None  # None on the first night (the run became the baseline)
    baseline_set: bool
    markdown_path: Path
    json_path: Path

    @property
    def exit_code(self) -> int:
        return self.comparison.exit_code if self.comparison else 0


def nightly(
    model: str,
    *,
    baseline: str | None = None,
    tasks: str | None = None,
    limit: int | None = None,
    tag: str | None = None,
    data_dir: str | Path | None = None,
    results_dir: str | Path = DEFAULT_RESULTS_DIR,
    backend: str = DEFAULT_BACKEND,
    device: str = "cpu",
    max_drop: float = DEFAULT_MAX_DROP,
    alpha: float = DEFAULT_ALPHA,
    force: bool = False,
    use_cache: bool = True,
    progress: bool = False,
) -> NightlyResult:
    """Run ``model`` on ``tasks``, compare with ``baseline`` (default: the stored baseline)."""
    from .cache import resumable_run_id
    from .runner import evaluate

    tag = tag or f"nightly-{datetime.now(timezone.utc):%Y-%m-%d}"
    run_id = resumable_run_id(results_dir, model, tasks, limit, backend, tag) if Path(results_dir).exists() else None
    result = evaluate(models=model, tasks=tasks, limit=limit, data_dir=data_dir, backend=backend, device=device,
                      results_dir=results_dir, tag=tag, run_id=run_id, progress=progress, use_cache=use_cache)
    candidate = f"{result.run_id}@{result.models[0]}"
    store = ResultsStore(results_dir)
    out = Path(results_dir) / "nightly"
    out.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out / f"{result.run_id}.md", out / f"{result.run_id}.json"
    if baseline is None and read_baseline(results_dir) is None:
        run = set_baseline(store, candidate)
        md_path.write_text(f"### :white_check_mark: Nightly eval: first night\n\nNo baseline existed; "
                           f"`{run.label()}` is now the baseline (`evalsuite baseline show`).\n\n{result.table()}\n")
        side = {"run_id": result.run_id, "model": result.models[0]}
        json_path.write_text(_json({"baseline_set": True, "baseline": side, "candidate": side, "regressed": [],
                                    "exit_code": 0}))
        return NightlyResult(result.run_id, result.models[0], None, True, md_path, json_path)
    comparison = compare_runs(store, baseline or "baseline", candidate, max_drop=max_drop, alpha=alpha, force=force)
    md_path.write_text(comparison.markdown())
    json_path.write_text(comparison.to_json())
    return NightlyResult(result.run_id, result.models[0], comparison, False, md_path, json_path)


def _json(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data, indent=2)
