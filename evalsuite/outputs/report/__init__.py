"""HTML comparison reports: one self-contained file from the results store.

``build_report`` picks runs (by model, run id or tag), derives every section from the stored
frames (:mod:`.data`), draws charts as inline SVG (:mod:`.charts`), computes paired
differences (:mod:`evalsuite.analysis.paired_stats`, the statistics ``compare`` uses), checks comparability (:mod:`.comparability`) and renders the
Jinja2 template shipped in ``templates/``. The page loads nothing from elsewhere (no URLs,
fonts or scripts), so it can be mailed, archived or opened offline years later.
"""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from evalsuite.errors import EvalsuiteError
from evalsuite.store.parquet_store import DEFAULT_RESULTS_DIR
from evalsuite.outputs.report.data import ReportData, collect, load_published
from evalsuite.analysis.paired_stats import MIN_SHARED

__all__ = ["build_report", "render", "default_out", "ReportData", "collect", "load_published"]


def default_out(comparison: ReportData) -> Path:
    """``reports/<first run id>.html`` unless the user names a file."""
    stamp = comparison.entries[0].run_id if comparison.entries else datetime.now(UTC).strftime("%Y%m%d")
    return Path("reports") / f"report-{stamp}.html"


def render(comparison: ReportData, *, baseline: str | None = None, title: str | None = None,
           published: bool = True) -> str:
    """The report's HTML text for an already collected comparison."""
    import jinja2

    from evalsuite.outputs.report import comparability, sections

    base = comparison.entry(baseline) if baseline else comparison.entries[0]
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("evalsuite.outputs.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
    )
    template = env.get_template("report.html.j2")
    return template.render(
        title=title or "evalsuite report: " + ", ".join(e.label for e in comparison.entries),
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        results_dir=sections.no_local_paths(str(comparison.results_dir)),
        entries=comparison.entries,
        baseline=base.label,
        warnings=[sections.no_local_paths(w) for w in (*comparison.notes, *comparability.warnings(comparison))],
        leaderboard=sections.leaderboard(comparison, load_published() if published else []),
        charts=sections.task_charts(comparison),
        heatmap=sections.subject_heatmap(comparison),
        deltas=sections.deltas(comparison, base),
        samples=sections.sample_browser(comparison),
        per_task=sections.SAMPLES_PER_TASK,
        min_shared=MIN_SHARED,
        manifests=sections.manifests(comparison),
        contamination=sections.contamination(comparison),
    )


def build_report(*, models: list[str] | None = None, runs: list[str] | None = None, tag: str | None = None,
                 baseline: str | None = None, results_dir: str | Path = DEFAULT_RESULTS_DIR,
                 out: str | Path | None = None, title: str | None = None, published: bool = True) -> Path:
    """Write the comparison report of the selected runs to one HTML file; return its path."""
    if sum(x is not None and x != [] for x in (models, runs)) > 1:
        raise EvalsuiteError("pick runs by --models or by --runs, not both")
    comparison = collect(results_dir, models=models, runs=runs, tag=tag)
    html = render(comparison, baseline=baseline, title=title, published=published)
    path = Path(out) if out else default_out(comparison)
    from evalsuite.fsutil import write_output

    # never over a file evalsuite did not write, never inside a results store (docs/safety.md)
    return write_output(path, html, "--out")
