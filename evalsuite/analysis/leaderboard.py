"""The leaderboard view of stored scores: models x (ARC ... GSM8K, H6).

The columns and the aggregate are the leaderboard suite's (``tasks/leaderboard.yaml``): its
tasks in order, titled by their YAMLs, then any other task a row has (a user's own task), and
H6, the plain mean of the suite's task scores x100. A model missing a task gets no H6 number
pretending to be complete: the mean of what exists is shown with ``*`` and the missing tasks
are named, never counted as zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from evalsuite.tasks.catalogue import leaderboard_tasks, load_suite, title
from evalsuite.store.status import TaskStatus


def columns(rows: list[LeaderboardRow] | None = None) -> dict[str, str]:
    """Task -> column title: the leaderboard suite's tasks, then other tasks ``rows`` scored."""
    suite = leaderboard_tasks()
    extra = sorted({t for row in rows or [] for t in (*row.scores, *row.missing)} - set(suite))
    return {task: title(task) for task in (*suite, *extra)}


@dataclass
class LeaderboardRow:
    model: str
    run_id: str
    scores: dict[str, float] = field(default_factory=dict)  # task -> value x100
    n: dict[str, int] = field(default_factory=dict)
    n_total: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def h6(self) -> float:
        """The suite's score: the plain mean of its tasks present (NaN when none is)."""
        values = [self.scores[t] for t in leaderboard_tasks() if t in self.scores]
        return float(sum(values) / len(values)) if values else math.nan

    @property
    def complete(self) -> bool:
        return all(t in self.scores for t in leaderboard_tasks())

    @property
    def limited(self) -> bool:
        return any(self.n.get(t, 0) < self.n_total.get(t, 0) for t in self.scores)


def rows_from_scores(scores: Any, run_ids: dict[str, str] | None = None) -> list[LeaderboardRow]:
    """One row per (run, model) from a scores DataFrame (task-level rows only)."""
    frame = scores[scores["subtask"].isna()]
    if run_ids is not None:
        frame = frame[frame.apply(lambda r: run_ids.get(r["model"]) == r["run_id"], axis=1)] if len(frame) else frame
    rows: dict[tuple[str, str], LeaderboardRow] = {}
    for rec in frame.to_dict("records"):
        row = rows.setdefault((rec["run_id"], rec["model"]), LeaderboardRow(rec["model"], rec["run_id"]))
        if rec["status"] == TaskStatus.OK and not math.isnan(rec["value"]):
            row.scores[rec["task"]] = 100.0 * rec["value"]
            row.n[rec["task"]] = int(rec["n"])
            row.n_total[rec["task"]] = int(rec["n_total"])
        else:
            row.missing.append(rec["task"])
    return list(rows.values())


@dataclass(frozen=True)
class Incomplete:
    """A row whose suite score (H6) is the mean of only some of the suite's tasks."""

    present: int  # tasks of the suite scored
    total: int  # tasks in the suite
    missing: list[str]  # titles of the suite's tasks not scored


@dataclass
class LeaderboardTable:
    """The leaderboard as every view shows it, built once from leaderboard rows: the columns
    (the suite's tasks, then other tasks the rows scored, titled by their YAMLs), the suite's
    score (H6) per row and the facts behind each footnote (an incomplete H6, a limited run).

    The terminal (:func:`format_table`: ``evalsuite results`` and a run's printed table), the
    paper tables (:mod:`evalsuite.outputs.paper_table`) and the HTML report render this object;
    only the wording and the markup are theirs.
    """

    rows: list[LeaderboardRow]
    columns: dict[str, str]  # task -> title, in column order
    score_label: str  # "H6"
    suite_tasks: tuple[str, ...]

    @classmethod
    def of(cls, rows: list[LeaderboardRow]) -> LeaderboardTable:
        suite = load_suite()
        return cls(list(rows), columns(rows), suite.score_label, suite.tasks)

    def score(self, row: LeaderboardRow) -> float | None:
        """The row's suite score x100 (None when no task of the suite was scored)."""
        return None if math.isnan(row.h6) else row.h6

    def incomplete(self, row: LeaderboardRow) -> Incomplete | None:
        """Why the row's score is marked (``*``), or None when it is complete or absent."""
        if row.complete or math.isnan(row.h6):
            return None
        missing = [self.columns[t] for t in self.suite_tasks if t not in row.scores]
        return Incomplete(len(self.suite_tasks) - len(missing), len(self.suite_tasks), missing)

    def evaluated(self, row: LeaderboardRow, only_limited: bool = False) -> list[tuple[str, int, int]]:
        """(title, documents evaluated, documents in the task) per scored column, in column order;
        ``only_limited``: just the columns a ``--limit`` cut short."""
        return [(title, row.n[t], row.n_total[t]) for t, title in self.columns.items()
                if t in row.n and (not only_limited or row.n[t] < row.n_total.get(t, 0))]


def format_table(rows: list[LeaderboardRow]) -> str:
    """A plain-text table for the terminal, with footnotes for partial results."""
    table = LeaderboardTable.of(rows)
    header = ["Model", *table.columns.values(), table.score_label]
    body = []
    notes = []
    for row in rows:
        cells = [row.model]
        for task in table.columns:
            cells.append(f"{row.scores[task]:.2f}" if task in row.scores else "—")
        score, incomplete = table.score(row), table.incomplete(row)
        if score is None:
            cells.append("—")
        elif incomplete is None:
            cells.append(f"{score:.2f}")
        else:
            cells.append(f"{score:.2f}*")
            notes.append(f"* {row.model}: {table.score_label} incomplete, mean of {incomplete.present} of "
                         f"{incomplete.total} tasks ({', '.join(incomplete.missing)} missing)")
        body.append(cells)
        if row.limited:
            parts = [f"{title} {n}/{total}" for title, n, total in table.evaluated(row)]
            notes.append(f"{row.model}: limited run, documents evaluated: " + ", ".join(parts))
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + ([""] + notes if notes else []))


def run_summary(views: list[Any]) -> str:
    """What ``evalsuite results`` and a finished run print, computed once for both: the table,
    each task that has no score and why, each model's self-audit and the store's notes."""
    from evalsuite.analysis.audit_lines import summary_lines
    from evalsuite.store.status import TaskStatus

    problems = [f"{v.model} {task}: {score.status}" + (f": {score.error}" if score.error else "")
                for v in views for task, score in v.task_scores().items()
                if score.status not in (TaskStatus.OK, TaskStatus.SHARD)]
    return "\n".join([format_table([v.leaderboard_row() for v in views]), *problems, *summary_lines(views),
                      *[note for v in views for note in v.notes]])
