"""Paper-style tables (the layout of the SOLAR paper's Table 2) from stored scores.

Columns: Model, Size, Type, H6, ARC, HellaSwag, MMLU, TruthfulQA, Winogrande, GSM8K (the
leaderboard suite's, from ``tasks/``), then any other task a row has; the best value of each
score column in bold; rows sorted by H6 like the paper. The same rows render as
Markdown, LaTeX, CSV or HTML, so a table pasted into a paper and the one in a README agree.
Published rows (optional) come from the CSV shipped with evalsuite; their per-task values
are marked with a dagger when only the H6 is confirmed.
"""
from __future__ import annotations

import csv
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from evalsuite.analysis.leaderboard import LeaderboardTable
from evalsuite.errors import EvalsuiteError
from evalsuite.models.registry import REGISTRY
from evalsuite.store.parquet_store import DEFAULT_RESULTS_DIR
from evalsuite.tasks.catalogue import leaderboard_tasks, load_suite, title

FORMATS = ("md", "latex", "csv", "html")
DASH = "—"


@dataclass
class TableRow:
    """One line of the paper table; ``values`` are x100, absent when not evaluated."""

    model: str
    size: str = DASH
    type: str = DASH
    values: dict[str, float] = field(default_factory=dict)  # "h6" and task names
    h6_complete: bool = True
    published: bool = False
    unconfirmed: bool = False  # published per-task values not confirmed
    note: str = ""


def score_columns(rows: list[TableRow]) -> dict[str, str]:
    """Score column -> title: the suite's score ("h6": H6), its tasks, then other tasks of ``rows``."""
    suite = leaderboard_tasks()
    extra = sorted({k for row in rows for k in row.values} - {"h6", *suite})
    return {"h6": load_suite().score_label, **{t: title(t) for t in (*suite, *extra)}}


def header(rows: list[TableRow]) -> list[str]:
    return ["Model", "Size", "Type", *score_columns(rows).values()]


def format_size(params: int | float | None) -> str:
    """Parameters as the paper writes them: 10.7B, 135M."""
    if params is None or (isinstance(params, float) and math.isnan(params)):
        return DASH
    if params >= 1e9:
        return f"{params / 1e9:.1f}B"
    return f"{params / 1e6:.0f}M"


def our_rows(results_dir: str | Path = DEFAULT_RESULTS_DIR, models: list[str] | None = None,
             runs: list[str] | None = None, tag: str | None = None) -> list[TableRow]:
    """Rows for stored runs (each model's latest by default); Size/Type from the registry."""
    from evalsuite.outputs.report.data import collect, load_published

    comparison = collect(results_dir, models=models, runs=runs, tag=tag, with_samples=False)
    types = {p.hub_id: p.type for p in load_published()}
    table = LeaderboardTable.of(comparison.rows)
    rows = []
    for entry, lb in zip(comparison.entries, comparison.rows, strict=True):
        spec = REGISTRY.get(entry.model)
        values = dict(lb.scores)
        score = table.score(lb)
        if score is not None:
            values["h6"] = score
        rows.append(TableRow(
            model=entry.label, size=format_size(spec.params) if spec else DASH,
            type=types.get(spec.source, DASH) if spec else DASH, values=values, h6_complete=lb.complete,
            note=", ".join(f"{name} n={n}/{total}" for name, n, total in table.evaluated(lb, only_limited=True)),
        ))
    return rows


def published_rows() -> list[TableRow]:
    """The published leaderboard rows shipped with evalsuite."""
    from evalsuite.outputs.report.data import load_published

    return [TableRow(model=p.model, size=format_size(p.params_b * 1e9) if p.params_b else DASH, type=p.type,
                     values={"h6": p.h6, **p.scores}, published=True, unconfirmed=not p.per_task_confirmed,
                     note=p.source) for p in load_published()]


def sort_rows(rows: list[TableRow]) -> list[TableRow]:
    """By H6, highest first, rows without one last (as in the paper)."""
    return sorted(rows, key=lambda r: -r.values.get("h6", -math.inf))


def best_values(rows: list[TableRow]) -> dict[str, float]:
    """Per score column, the best value among ``rows`` (rounded as shown, so ties bold alike)."""
    best: dict[str, float] = {}
    for row in rows:
        for col in score_columns(rows):
            if col in row.values:
                best[col] = max(best.get(col, -math.inf), round(row.values[col], 2))
    return best


def _cells(row: TableRow, best: dict[str, float], columns: dict[str, str]) -> list[tuple[str, bool, str]]:
    """(text, is_best, mark) per score column; mark is '*' (incomplete H6) or '†' (unconfirmed)."""
    out = []
    for col in columns:
        if col not in row.values:
            out.append((DASH, False, ""))
            continue
        value = round(row.values[col], 2)
        mark = "*" if col == "h6" and not row.h6_complete else ("†" if col != "h6" and row.unconfirmed else "")
        out.append((f"{value:.2f}", value == best.get(col), mark))
    return out


def footnotes(rows: list[TableRow]) -> list[str]:
    notes = []
    if any(not r.h6_complete and "h6" in r.values for r in rows):
        notes.append(f"* {load_suite().score_label} incomplete: mean of the tasks evaluated only.")
    if any(r.unconfirmed for r in rows):
        notes.append(f"† published per-task value not confirmed (only the {load_suite().score_label} average is).")
    limited = [f"{r.model}: {r.note}" for r in rows if not r.published and r.note]
    if limited:
        notes.append("Limited runs (documents evaluated/total): " + "; ".join(limited) + ".")
    return notes


def to_markdown(rows: list[TableRow]) -> str:
    best, columns = best_values(rows), score_columns(rows)
    lines = ["| " + " | ".join(header(rows)) + " |", "|" + "|".join([":---"] * 3 + ["---:"] * len(columns)) + "|"]
    for row in rows:
        cells = [f"**{t}**{m}" if b else f"{t}{m}" for t, b, m in _cells(row, best, columns)]
        lines.append("| " + " | ".join([row.model.replace("|", "\\|"), row.size, row.type, *cells]) + " |")
    notes = footnotes(rows)
    return "\n".join(lines + ([""] + notes if notes else []))


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "—": "--",
                 "†": r"$^\dagger$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(rows: list[TableRow]) -> str:
    best, columns = best_values(rows), score_columns(rows)
    lines = [r"\begin{tabular}{lll" + "r" * len(columns) + "}", r"\hline",
             " & ".join(latex_escape(h) for h in header(rows)) + r" \\", r"\hline"]
    for row in rows:
        cells = []
        for text, is_best, mark in _cells(row, best, columns):
            body = r"\textbf{" + text + "}" if is_best else latex_escape(text)
            cells.append(body + latex_escape(mark))
        lines.append(" & ".join([latex_escape(row.model), latex_escape(row.size), latex_escape(row.type), *cells])
                     + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines + ["% " + latex_escape(n) for n in footnotes(rows)])


def to_csv(rows: list[TableRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*header(rows), "h6_complete", "published", "per_task_confirmed", "note"])
    for row in rows:
        values = [f"{row.values[c]:.2f}" if c in row.values else "" for c in score_columns(rows)]
        writer.writerow([row.model, row.size, row.type, *values, row.h6_complete, row.published,
                         not row.unconfirmed, row.note])
    return buf.getvalue().rstrip("\n")


def to_html(rows: list[TableRow]) -> str:
    best, columns = best_values(rows), score_columns(rows)
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header(rows)) + "</tr></thead>",
           "<tbody>"]
    for row in rows:
        cells = "".join(f"<td>{'<b>' + t + '</b>' if b else t}{m}</td>" for t, b, m in _cells(row, best, columns))
        out.append(f"<tr><td>{html.escape(row.model)}</td><td>{row.size}</td><td>{html.escape(row.type)}</td>"
                   f"{cells}</tr>")
    out += ["</tbody>", "</table>"]
    out += [f"<p>{html.escape(n)}</p>" for n in footnotes(rows)]
    return "\n".join(out)


RENDERERS = {"md": to_markdown, "latex": to_latex, "csv": to_csv, "html": to_html}


def paper_table(fmt: str = "md", *, results_dir: str | Path = DEFAULT_RESULTS_DIR, models: list[str] | None = None,
                runs: list[str] | None = None, tag: str | None = None, published: bool = False,
                include_ours: bool = True) -> str:
    """The SOLAR-Table-2-style table of stored runs (and, optionally, the published rows)."""
    if fmt not in RENDERERS:
        raise EvalsuiteError(f"unknown table format '{fmt}'; pick one of {', '.join(FORMATS)}")
    if include_ours and published and not (models or runs or tag):
        from evalsuite.store.parquet_store import ResultsStore

        include_ours = not ResultsStore(results_dir).runs().empty  # the published rows alone are a table
    rows = our_rows(results_dir, models=models, runs=runs, tag=tag) if include_ours else []
    if published:
        rows += published_rows()
    return RENDERERS[fmt](sort_rows(rows))
