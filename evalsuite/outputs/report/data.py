"""What a report or table is about: which stored runs, their scores, samples and manifests.

A comparison is a list of *entries*, one per (run, model) pair, picked from the results store
by model names, run ids or a tag (default: every model's latest run). Everything the report
shows is derived from the frames collected here, so the HTML, the paper table and the tests
all read the same numbers.
"""
from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from evalsuite.errors import EvalsuiteError
from evalsuite.analysis.leaderboard import LeaderboardRow
from evalsuite.tasks.catalogue import leaderboard_tasks, ordered, title


@dataclass(frozen=True)
class Entry:
    """One evaluated (run, model) pair; ``label`` is unique within a comparison."""

    run_id: str
    model: str
    label: str


@dataclass
class PublishedRow:
    """A published leaderboard row from the packaged CSV (values already x100)."""

    model: str
    hub_id: str
    type: str
    params_b: float | None
    h6: float
    scores: dict[str, float]
    confirmed: str  # all | partial | h6-only
    source: str

    @property
    def per_task_confirmed(self) -> bool:
        return self.confirmed == "all"


@dataclass
class ReportData:
    """The frames behind a report: entries, their runs/scores/samples, leaderboard rows."""

    entries: list[Entry]
    runs: Any  # pandas DataFrame, one row per entry
    scores: Any  # task-level and per-subject score rows of the entries
    samples: Any | None  # per-document rows of the entries (None when not loaded)
    rows: list[LeaderboardRow] = field(default_factory=list)  # same order as entries
    results_dir: Path = Path("results")
    notes: list[str] = field(default_factory=list)  # from the results API: newer unfinished runs, missing shards

    def entry(self, label: str) -> Entry:
        for entry in self.entries:
            if entry.label == label or entry.model == label:
                return entry
        raise EvalsuiteError(f"'{label}' is not among the compared models ({', '.join(e.label for e in self.entries)})")

    def run_row(self, entry: Entry) -> dict[str, Any]:
        frame = self.runs[(self.runs["run_id"] == entry.run_id) & (self.runs["model"] == entry.model)]
        return frame.iloc[0].to_dict()

    def tasks(self) -> list[str]:
        """Tasks present in any entry's scores, leaderboard tasks first in their usual order."""
        return ordered(set(self.scores["task"].dropna()) if len(self.scores) else set())


def load_published(path: str | Path | None = None) -> list[PublishedRow]:
    """The published leaderboard rows shipped with evalsuite (or read from ``path``)."""
    if path is None:
        text = resources.files("evalsuite.outputs.report").joinpath("published_h6.csv").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    rows = []
    for rec in csv.DictReader(text.splitlines()):
        rows.append(PublishedRow(
            model=rec["model"], hub_id=rec["hub_id"], type=rec["type"],
            params_b=float(rec["params_b"]) if rec.get("params_b") else None, h6=float(rec["h6"]),
            scores={t: float(rec[t]) for t in leaderboard_tasks() if rec.get(t)},
            confirmed=rec["confirmed"], source=rec["source"],
        ))
    return rows


def collect(results_dir: str | Path, *, models: list[str] | None = None, runs: list[str] | None = None,
            tag: str | None = None, with_samples: bool = True) -> ReportData:
    """Read everything a report needs about the selected runs through :mod:`evalsuite.store.run_views`.

    ``runs``: every model of each named run. ``models``: each model's latest finished run (within
    ``tag`` when given). ``tag`` alone: the latest run of every model carrying the tag. Nothing:
    the latest finished run of every stored model. Sharded runs arrive merged.
    """
    import pandas as pd

    from evalsuite.store.run_views import select_runs

    views = select_runs(results_dir, models=models, runs=runs, tag=tag)
    counts: dict[str, int] = {}
    for view in views:
        counts[view.model] = counts.get(view.model, 0) + 1
    entries = [Entry(v.run_id, v.model, v.model if counts[v.model] == 1 else f"{v.model} @ {v.run_id}") for v in views]
    runs_frame = pd.DataFrame([asdict(v.record) for v in views])
    scores = pd.concat([v.scores for v in views], ignore_index=True)
    samples = pd.concat([v.samples() for v in views], ignore_index=True) if with_samples else None
    rows = []
    for entry, view in zip(entries, views, strict=True):
        row = view.leaderboard_row()
        row.model = entry.label
        rows.append(row)
    notes = [note for view in views for note in view.notes]
    return ReportData(entries, runs_frame, scores, samples, rows, Path(results_dir), notes)


def fmt_score(value: float | None) -> str:
    """A score x100 with two decimals, or an em dash when absent."""
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def task_label(task: str) -> str:
    """A task's title from its YAML (its name when no task file defines it)."""
    return title(task)
