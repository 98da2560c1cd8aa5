"""What a report or table is about: which stored runs, their scores, samples and manifests.

A comparison is a list of *entries*, one per (run, model) pair, picked from the results store
by model names, run ids or a tag (default: every model's latest run). Everything the report
shows is derived from the frames collected here, so the HTML, the paper table and the tests
all read the same numbers.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import EvalsuiteError
from ..leaderboard import COLUMNS, LeaderboardRow, rows_from_scores
from ..store import ResultsStore
from ..tasks import LEADERBOARD_TASKS


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
class Comparison:
    """The frames behind a report: entries, their runs/scores/samples, leaderboard rows."""

    entries: list[Entry]
    runs: Any  # pandas DataFrame, one row per entry
    scores: Any  # task-level and per-subject score rows of the entries
    samples: Any | None  # per-document rows of the entries (None when not loaded)
    rows: list[LeaderboardRow] = field(default_factory=list)  # same order as entries
    results_dir: Path = Path("results")

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
        present = set(self.scores["task"].dropna()) if len(self.scores) else set()
        ordered = [t for t in LEADERBOARD_TASKS if t in present]
        return ordered + sorted(present - set(ordered))


def load_published(path: str | Path | None = None) -> list[PublishedRow]:
    """The published leaderboard rows shipped with evalsuite (or read from ``path``)."""
    if path is None:
        text = resources.files("evalsuite.report").joinpath("published_h6.csv").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    rows = []
    for rec in csv.DictReader(text.splitlines()):
        rows.append(PublishedRow(
            model=rec["model"], hub_id=rec["hub_id"], type=rec["type"],
            params_b=float(rec["params_b"]) if rec.get("params_b") else None, h6=float(rec["h6"]),
            scores={t: float(rec[t]) for t in LEADERBOARD_TASKS if rec.get(t)},
            confirmed=rec["confirmed"], source=rec["source"],
        ))
    return rows


def select_entries(store: ResultsStore, *, models: list[str] | None = None, runs: list[str] | None = None,
                   tag: str | None = None) -> list[Entry]:
    """The (run, model) pairs to compare, in the order the user named them.

    ``runs``: every model of each named run. ``models``: each model's latest run (within
    ``tag`` when given). ``tag`` alone: the latest run of every model carrying the tag. Nothing:
    the latest run of every stored model.
    """
    frame = store.runs()
    where = f"{store.root}/"
    if frame.empty:
        raise EvalsuiteError(f"no results in {where} yet; run `evalsuite run` first (or pass --results-dir)")
    frame = frame.sort_values("started_at", kind="stable")
    pairs: list[tuple[str, str]] = []
    if runs:
        for run_id in runs:
            hit = frame[frame["run_id"] == run_id]
            if hit.empty:
                known = ", ".join(dict.fromkeys(frame["run_id"].tolist()[-5:]))
                raise EvalsuiteError(f"no run '{run_id}' in {where}; recent runs: {known}")
            pairs.extend((run_id, m) for m in dict.fromkeys(hit["model"]))
    else:
        if tag is not None:
            frame = frame[frame["tag"] == tag]
            if frame.empty:
                raise EvalsuiteError(f"no run tagged '{tag}' in {where}; tag runs with `evalsuite run --tag {tag}`")
        latest = dict(zip(frame["model"], frame["run_id"], strict=True))
        names = models or list(latest)
        for name in names:
            if name not in latest:
                raise EvalsuiteError(f"no stored run of '{name}' in {where}" + (f" tagged '{tag}'" if tag else "")
                                     + f"; stored models: {', '.join(latest)}")
            pairs.append((latest[name], name))
    pairs = list(dict.fromkeys(pairs))
    counts: dict[str, int] = {}
    for _, model in pairs:
        counts[model] = counts.get(model, 0) + 1
    return [Entry(run_id, model, model if counts[model] == 1 else f"{model} @ {run_id}") for run_id, model in pairs]


def collect(results_dir: str | Path, *, models: list[str] | None = None, runs: list[str] | None = None,
            tag: str | None = None, with_samples: bool = True) -> Comparison:
    """Read everything a report needs about the selected entries from the results store."""
    store = ResultsStore(results_dir)
    entries = select_entries(store, models=models, runs=runs, tag=tag)
    wanted = {(e.run_id, e.model) for e in entries}

    def only(frame: Any) -> Any:
        if frame.empty:
            return frame
        keep = [(r, m) in wanted for r, m in zip(frame["run_id"], frame["model"], strict=True)]
        return frame[keep].reset_index(drop=True)

    run_ids = list(dict.fromkeys(e.run_id for e in entries))
    import pandas as pd

    def read(table: str) -> Any:
        parts = [store.read(table, run_id=r) for r in run_ids]
        return only(pd.concat(parts, ignore_index=True)) if parts else store.read(table)

    runs_frame = read("runs")
    scores = read("scores")
    samples = read("samples") if with_samples else None
    rows = []
    for entry in entries:
        part = scores[(scores["run_id"] == entry.run_id) & (scores["model"] == entry.model)]
        found = rows_from_scores(part)
        row = found[0] if found else LeaderboardRow(entry.model, entry.run_id)
        row.model = entry.label
        rows.append(row)
    return Comparison(entries, runs_frame, scores, samples, rows, Path(results_dir))


def fmt_score(value: float | None) -> str:
    """A score x100 with two decimals, or an em dash when absent."""
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def task_label(task: str) -> str:
    return COLUMNS.get(task, task)
