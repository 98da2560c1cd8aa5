"""Presentation once: one leaderboard table object, rendered by the terminal, the paper tables
and the report; statuses as enums whose stored text is unchanged."""
from __future__ import annotations

from evalsuite.analysis.leaderboard import LeaderboardRow, LeaderboardTable, format_table
from evalsuite.store.records import RUN_STATUSES, TASK_STATUSES
from evalsuite.store.status import FINISHED, RunStatus, TaskStatus


def test_statuses_are_their_stored_text():
    assert RUN_STATUSES == ("running", "ok", "partial", "failed", "interrupted")
    assert TASK_STATUSES == ("ok", "missing", "failed", "shard", "incomplete")
    assert RunStatus.OK == "ok" and f"{TaskStatus.MISSING}" == "missing" and str(RunStatus.INCOMPLETE) == "incomplete"
    assert FINISHED == ("ok", "partial")


def test_stored_statuses_read_back_as_plain_text(tiny_llama_dir, data_dir, tmp_path):
    """Runs written with the enums store the same strings as before (parquet columns of text)."""
    import pyarrow.parquet as pq

    from evalsuite import evaluate
    from evalsuite.store.parquet_store import ResultsStore

    evaluate(models=[str(tiny_llama_dir)], tasks="arc", limit=1, data_dir=data_dir, results_dir=tmp_path,
             progress=False, use_cache=False, audit=False)
    store = ResultsStore(tmp_path)
    assert [type(s) for s in store.runs()["status"]] == [str] and list(store.runs()["status"]) == ["ok"]
    assert set(store.scores()["status"]) == {"ok"}
    for path in tmp_path.rglob("*.parquet"):
        schema = pq.read_schema(path)
        if "status" in schema.names:
            assert str(schema.field("status").type) in ("string", "large_string"), path


def _rows():
    full = LeaderboardRow("full", "r1", scores={t: 50.0 for t in ("arc", "hellaswag", "mmlu", "truthfulqa",
                                                                   "winogrande", "gsm8k")},
                          n={"arc": 10}, n_total={"arc": 1172})
    part = LeaderboardRow("part", "r2", scores={"arc": 40.0, "mmlu": 30.0}, n={"arc": 5, "mmlu": 5},
                          n_total={"arc": 5, "mmlu": 5})
    none = LeaderboardRow("none", "r3", missing=["arc"])
    return [full, part, none]


def test_the_table_states_each_footnote_once():
    table = LeaderboardTable.of(_rows())
    full, part, none = table.rows
    assert list(table.columns.values()) == ["ARC", "HellaSwag", "MMLU", "TruthfulQA", "Winogrande", "GSM8K"]
    assert table.score_label == "H6" and table.score(full) == 50.0 and table.score(none) is None
    assert table.incomplete(full) is None and table.incomplete(none) is None
    incomplete = table.incomplete(part)
    assert (incomplete.present, incomplete.total) == (2, 6)
    assert incomplete.missing == ["HellaSwag", "TruthfulQA", "Winogrande", "GSM8K"]
    assert table.evaluated(full, only_limited=True) == [("ARC", 10, 1172)]


def test_terminal_and_paper_table_render_the_same_facts():
    from evalsuite.outputs.paper_table import TableRow, to_markdown

    text = format_table(_rows())
    assert "* part: H6 incomplete, mean of 2 of 6 tasks (HellaSwag, TruthfulQA, Winogrande, GSM8K missing)" in text
    assert "full: limited run, documents evaluated: ARC 10/1172" in text
    assert text.splitlines()[4].split()[-1] == "—"  # no suite task scored: no H6
    md = to_markdown([TableRow("part", values={"h6": 35.0, "arc": 40.0, "mmlu": 30.0}, h6_complete=False)])
    assert "35.00*" in md and "* H6 incomplete: mean of the tasks evaluated only." in md


def test_run_and_results_print_one_summary(tiny_llama_dir, data_dir, tmp_path, capsys):
    """A finished run's printed table and ``evalsuite results`` are the same text."""
    from evalsuite import evaluate
    from evalsuite.cli import main

    result = evaluate(models=[str(tiny_llama_dir)], tasks="arc,winogrande", limit=2, data_dir=data_dir,
                      results_dir=tmp_path, progress=False, use_cache=False)
    assert main(["results", "--results-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.rstrip("\n") == result.table()
