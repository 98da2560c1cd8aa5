"""How a task's self-audit reads in a table, a report or an export: ``audit: 8/8, max |Δ| 2e-05``.

Read side: these read the ``audit_*`` columns of stored score rows (written by
:mod:`evalsuite.run.audit`), so presenting an audit never imports the run side.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: ``audit_status`` values of a score row. ``agree``: the sample matched; ``rerun``: it did
#: not, and the stored scores come from the plain executor; ``not audited``: ``--no-audit``;
#: ``not applicable``: a backend other than the evalsuite engine, or an engine that already
#: runs the task on the audit's own path (plain executor, one-prompt-at-a-time generation).
AUDIT_STATUSES = ("agree", "rerun", "not audited", "not applicable")


def describe(status: Any, n: Any = None, agree: Any = None, max_abs_diff: Any = None) -> str | None:
    """``audit: 8/8, max |Δ| 2e-05`` (None for rows written before the audit existed)."""
    if not isinstance(status, str):
        return None
    if status in ("not audited", "not applicable"):
        return f"audit: {status}"
    text = f"audit: {_int(agree)}/{_int(n)}"
    text += f", max |Δ| {float(max_abs_diff):.1g}" if not _missing(max_abs_diff) else " same text"
    if status == "rerun":
        text += "; re-run on the plain executor"
    return text


def describe_row(row: Any) -> str | None:
    """:func:`describe` of a score row (a record or a mapping)."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name, None)
    return describe(get("audit_status"), get("audit_n"), get("audit_agree"), get("audit_max_abs_diff"))


def summary_lines(views: Sequence[Any]) -> list[str]:
    """One line per model: each task's audit (``evalsuite results`` and ``run`` print them)."""
    lines = []
    for view in views:
        parts = [f"{task} {text[len('audit: '):]}" for task, rec in view.task_scores().items()
                 if (text := describe_row(rec))]
        if parts:
            lines.append(f"{view.model} audit: " + "; ".join(parts))
    return lines


def _missing(value: Any) -> bool:
    """None, NaN or pandas' NA (nullable columns read back)."""
    if value is None:
        return True
    try:
        return bool(value != value)
    except TypeError:  # pandas.NA: its comparisons are NA
        return True


def _int(value: Any) -> int:
    return 0 if _missing(value) else int(value)


__all__ = ["AUDIT_STATUSES", "describe", "describe_row", "summary_lines"]
