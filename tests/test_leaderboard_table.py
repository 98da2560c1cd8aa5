"""The leaderboard table from real parquet score rows: H6 is the mean of the six tasks x100, a
missing task is named and never counted as zero, limited runs say how many documents they scored."""
from __future__ import annotations

import math

import pytest

from evalsuite.analysis import leaderboard
from evalsuite.store.records import ScoreRecord
from evalsuite.store.parquet_store import ResultsStore


SIX = ("arc", "hellaswag", "mmlu", "truthfulqa", "winogrande", "gsm8k")


# ---------------------------------------------------------------------------- H6 / leaderboard table
def _scores(tmp_path, rows: list[ScoreRecord]):
    """The rows written to and read back from a real results store, as every reader sees them."""
    store = ResultsStore(tmp_path / "results")
    files: dict[tuple[str, str, str], list[ScoreRecord]] = {}
    for row in rows:  # one file per (run, model, task), subject rows with their task's row
        files.setdefault((row.run_id, row.model, row.task), []).append(row)
    for (run_id, model, task), group in files.items():
        store.write_scores(run_id, model, task, group)
    return store.read("scores")


def _task(model: str, task: str, value: float | None, *, status: str = "ok", n: int = 10, n_total: int = 10,
          run_id: str = "r1") -> ScoreRecord:
    return ScoreRecord(run_id=run_id, model=model, task=task, metric="acc", value=value, stderr=0.01, n=n,
                       n_total=n_total, status=status)


def test_h6_is_the_mean_of_six_task_scores_x100(tmp_path):
    values = dict(zip(SIX, (0.50, 0.25, 0.30, 0.45, 0.60, 0.10)))
    frame = _scores(tmp_path, [_task("m", t, v) for t, v in values.items()]
                    + [ScoreRecord(run_id="r1", model="m", task="mmlu", subtask="anatomy", value=0.9, n=5,
                                   n_total=5, status="ok")])  # subject rows never enter H6
    (row,) = leaderboard.rows_from_scores(frame)
    assert row.scores == pytest.approx({t: 100 * v for t, v in values.items()})
    assert row.h6 == pytest.approx((50 + 25 + 30 + 45 + 60 + 10) / 6)  # 36.666...
    assert row.complete and not row.limited and row.missing == []
    table = leaderboard.format_table([row])
    assert table.splitlines()[2].split() == ["m", "50.00", "25.00", "30.00", "45.00", "60.00", "10.00", "36.67"]
    assert "*" not in table


def test_missing_tasks_are_named_never_counted_as_zero(tmp_path):
    frame = _scores(tmp_path, [_task("m", "arc", 0.40), _task("m", "hellaswag", 0.60),
                               _task("m", "mmlu", None, status="missing"),
                               _task("m", "gsm8k", float("nan"), status="failed")])
    (row,) = leaderboard.rows_from_scores(frame)
    assert row.h6 == pytest.approx(50.0)  # mean of the two present, not (40 + 60 + 0 + ...) / 6
    assert not row.complete and sorted(row.missing) == ["gsm8k", "mmlu"]
    lines = leaderboard.format_table([row]).splitlines()
    assert lines[2].split() == ["m", "40.00", "60.00", "—", "—", "—", "—", "50.00*"]
    assert lines[-1] == "* m: H6 incomplete, mean of 2 of 6 tasks (MMLU, TruthfulQA, Winogrande, GSM8K missing)"


def test_limited_runs_say_how_many_documents_and_rows_are_per_run_and_model(tmp_path):
    frame = _scores(tmp_path, [_task("a", "arc", 0.5, n=3, n_total=1172), _task("b", "arc", 0.7, run_id="r2"),
                               _task("a", "arc", 0.2, run_id="r0")])
    rows = {(r.run_id, r.model): r for r in leaderboard.rows_from_scores(frame)}
    assert set(rows) == {("r1", "a"), ("r2", "b"), ("r0", "a")}
    assert rows[("r1", "a")].limited and not rows[("r2", "b")].limited
    assert "a: limited run, documents evaluated: ARC 3/1172" in leaderboard.format_table([rows[("r1", "a")]])
    # run_ids picks one run per model
    picked = leaderboard.rows_from_scores(frame, run_ids={"a": "r0", "b": "r2"})
    assert sorted((r.model, r.scores["arc"]) for r in picked) == [("a", pytest.approx(20.0)), ("b", pytest.approx(70.0))]


def test_a_model_with_no_score_has_no_h6(tmp_path):
    (row,) = leaderboard.rows_from_scores(_scores(tmp_path, [_task("m", "arc", None, status="missing")]))
    assert math.isnan(row.h6)
    assert leaderboard.format_table([row]).splitlines()[2].split()[-1] == "—"


