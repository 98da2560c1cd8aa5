"""Why two runs' numbers may not be comparable, stated loudly rather than discovered later.

Runs compare fairly only when they asked the same questions (task config and prompt hashes),
of the same data (file hashes), on the same number of documents, at the same precision. Each
difference found becomes one warning sentence naming the runs and what differs.
"""
from __future__ import annotations

from typing import Any

from evalsuite.outputs.report.data import ReportData, Entry
from evalsuite.store.status import TaskStatus


def _as_dict(value: Any) -> dict[str, str]:
    """Parquet maps come back as lists of (key, value) pairs; None/NaN means empty."""
    if value is None or (isinstance(value, float)):
        return {}
    if isinstance(value, dict):
        return dict(value)
    return {k: v for k, v in value}


def warnings(comparison: ReportData) -> list[str]:
    """One sentence per incomparability among the compared entries."""
    out: list[str] = []
    entries = comparison.entries
    if len(entries) < 2:
        return out
    runs = {e: comparison.run_row(e) for e in entries}

    def spread(field: str, what: str) -> None:
        values = {e.label: _plain(runs[e].get(field)) for e in entries}
        if len(set(values.values())) > 1:
            out.append(f"Different {what}: " + ", ".join(f"{k} = {v}" for k, v in values.items())
                       + ". Scores are not directly comparable.")

    spread("limit", "document limits (--limit)")
    spread("dtype", "dtypes")
    spread("backend", "backends")
    _map_conflicts(out, entries, runs, "task_config_hashes", "task config hash")
    _map_conflicts(out, entries, runs, "data_hashes", "data file hash")
    _n_conflicts(out, comparison)
    _prompt_conflicts(out, comparison)
    return out


def _plain(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "none (full)"
    return str(value)


def _map_conflicts(out: list[str], entries: list[Entry], runs: dict[Entry, dict[str, Any]], field: str,
                   what: str) -> None:
    maps = {e: _as_dict(runs[e].get(field)) for e in entries}
    keys = sorted(set().union(*[set(m) for m in maps.values()]))
    for key in keys:
        seen = {e.label: maps[e][key] for e in entries if key in maps[e]}
        if len(set(seen.values())) > 1:
            out.append(f"Different {what} for {key}: " + ", ".join(f"{k} = {v[:12]}" for k, v in seen.items())
                       + ". The runs did not evaluate the same thing.")


def _n_conflicts(out: list[str], comparison: ReportData) -> None:
    scores = comparison.scores
    if scores.empty:
        return
    task_rows = scores[scores["subtask"].isna() & (scores["status"] == TaskStatus.OK)]
    for task, part in task_rows.groupby("task"):
        ns = dict(zip(part["model"] + " @ " + part["run_id"], part["n"], strict=True))
        if len(set(ns.values())) > 1:
            out.append(f"{task}: different numbers of documents evaluated ("
                       + ", ".join(f"{k}: {v}" for k, v in ns.items()) + ").")


def _prompt_conflicts(out: list[str], comparison: ReportData) -> None:
    samples = comparison.samples
    if samples is None or samples.empty:
        return
    frame = samples[["task", "subtask", "doc_index", "prompt_hash"]].assign(subtask=samples["subtask"].fillna(""))
    counts = frame.groupby(["task", "subtask", "doc_index"])["prompt_hash"].nunique()
    bad = counts[counts > 1]
    for task, n in bad.groupby(level=0).size().items():
        out.append(f"{task}: {n} shared document(s) were asked with different prompts (prompt hashes differ); "
                   "per-document comparisons on them are meaningless.")
