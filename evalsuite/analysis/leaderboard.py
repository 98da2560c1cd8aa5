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
        if rec["status"] == "ok" and not math.isnan(rec["value"]):
            row.scores[rec["task"]] = 100.0 * rec["value"]
            row.n[rec["task"]] = int(rec["n"])
            row.n_total[rec["task"]] = int(rec["n_total"])
        else:
            row.missing.append(rec["task"])
    return list(rows.values())


def format_table(rows: list[LeaderboardRow]) -> str:
    """A plain-text table for the terminal, with footnotes for partial results."""
    titles = columns(rows)
    suite = load_suite()
    header = ["Model", *titles.values(), suite.score_label]
    body = []
    notes = []
    for row in rows:
        cells = [row.model]
        for task in titles:
            cells.append(f"{row.scores[task]:.2f}" if task in row.scores else "—")
        h6 = row.h6
        if math.isnan(h6):
            cells.append("—")
        elif row.complete:
            cells.append(f"{h6:.2f}")
        else:
            cells.append(f"{h6:.2f}*")
            absent = [titles[t] for t in suite.tasks if t not in row.scores]
            notes.append(f"* {row.model}: {suite.score_label} incomplete, mean of {len(suite.tasks) - len(absent)} of "
                         f"{len(suite.tasks)} tasks ({', '.join(absent)} missing)")
        body.append(cells)
        if row.limited:
            parts = [f"{titles[t]} {row.n[t]}/{row.n_total[t]}" for t in titles if t in row.n]
            notes.append(f"{row.model}: limited run, documents evaluated: " + ", ".join(parts))
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + ([""] + notes if notes else []))
