"""Sharding without Ray: two shards run one after the other in this process merge into exactly
the unsharded run (same samples, same task and subject scores), and broken shard sets are named."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from conftest import assert_same_printout, document_tolerance

from evalsuite.cli import main
from evalsuite.errors import EvalsuiteError
from evalsuite.store.run_views import latest_runs, load_run, run_views
from evalsuite.run.evaluation import evaluate
from evalsuite.store.shards import SHARD_STATUS, parse_shard, select
from evalsuite.store.parquet_store import ResultsStore

#: MMLU exercises subjects and the mean of subject means; GSM8K a generation task.
TASKS = "arc,mmlu,gsm8k"
LIMITS = 3
BACKEND = "evalsuite"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama_dir, data_dir) -> Path:
    """One store holding run ``full`` (unsharded) and run ``sh`` (shards 0/2 and 1/2)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sharded") / "results"
    common = dict(models=str(tiny_llama_dir), tasks=TASKS, limit=LIMITS, data_dir=data_dir, backend=BACKEND,
                  results_dir=root, progress=False)
    evaluate(**common, run_id="full")
    for index in range(2):
        evaluate(**common, run_id="sh", shard=(index, 2))
    return root


def same(a, b) -> bool:
    """Equal, with None and NaN (how pandas reads a missing value) equal to each other."""
    missing = lambda x: x is None or (isinstance(x, float) and math.isnan(x))  # noqa: E731
    return (missing(a) and missing(b)) or a == b


def keyed(samples) -> dict:
    return {(r["task"], r["subtask"] if isinstance(r["subtask"], str) else None, r["doc_index"]): r
            for r in samples.to_dict("records")}


def test_parse_and_select():
    assert parse_shard("1/4") == (1, 4)
    for bad in ["4/4", "x", "-1/2", "1/0"]:
        with pytest.raises(EvalsuiteError):
            parse_shard(bad)
    items = list(range(11))
    parts = [select(items, (i, 3)) for i in range(3)]
    assert sorted(x for p in parts for x in p) == items
    assert parts[1] == [1, 4, 7, 10]
    assert select(items, None) == items


def test_shard_needs_run_id(tiny_llama_dir, data_dir, tmp_path):
    with pytest.raises(EvalsuiteError, match="--run-id"):
        evaluate(str(tiny_llama_dir), "arc", limit=1, data_dir=data_dir, results_dir=tmp_path, shard=(0, 2))


def test_merged_shards_equal_unsharded(runs, tiny_tokenizer):
    tokenizer = tiny_tokenizer
    store = ResultsStore(runs)
    full, merged = store.samples(run_id="full"), store.samples(run_id="sh")
    assert len(full) == len(merged) and len(full) > 0
    full_rows, merged_rows = keyed(full), keyed(merged)
    assert full_rows.keys() == merged_rows.keys()
    for key, row in full_rows.items():
        other = merged_rows[key]
        assert other["value"] == row["value"], key
        assert other["prediction"] == row["prediction"], key
        assert other["prompt_hash"] == row["prompt_hash"], key
        if row["loglikelihoods"] is not None:
            tol = document_tolerance(row["continuations"], tokenizer)
            assert max(abs(a - b) for a, b in zip(other["loglikelihoods"], row["loglikelihoods"], strict=True)) <= tol, key

    (result,) = run_views(store, "sh")
    assert result.complete and result.shard_count == 2 and result.status == "ok"
    expected = store.scores(run_id="full").sort_values(["task", "subtask"], na_position="first")
    got = result.scores.sort_values(["task", "subtask"], na_position="first")
    assert len(got) == len(expected)
    for want, have in zip(expected.to_dict("records"), got.to_dict("records"), strict=True):
        for column in ("task", "subtask", "metric", "n", "n_total", "status", "value", "stderr"):
            assert same(have[column], want[column]), (column, want, have)


def test_raw_shard_rows_are_never_shown_as_scores(runs):
    store = ResultsStore(runs)
    raw = store.scores(run_id="sh")
    assert set(raw.loc[raw["subtask"].isna(), "status"]) == {SHARD_STATUS}
    (view,) = latest_runs(store)  # the sharded run is the model's latest finished run
    assert view.run_id == "sh" and SHARD_STATUS not in set(view.scores["status"])
    assert load_run("full", store).leaderboard_row().scores == view.leaderboard_row().scores


def test_results_command_shows_the_merged_run(runs, capsys):
    """The merged shards print the unsharded run's table. The audit line's counts agree too; its
    max |Δ| is float noise of each run's own batches (1e-6 here, 3e-6 there): numbers are
    compared to their printed precision."""
    assert main(["results", "--results-dir", str(runs), "--run", "full"]) == 0
    full_table = capsys.readouterr().out
    assert main(["results", "--results-dir", str(runs), "--run", "sh"]) == 0
    assert_same_printout(capsys.readouterr().out, full_table)


def test_missing_shard_is_reported_not_scored(runs, tmp_path):
    partial = tmp_path / "results"
    shutil.copytree(runs, partial, ignore=shutil.ignore_patterns("*shard1of2*"))
    (result,) = run_views(ResultsStore(partial), "sh")
    assert not result.complete and result.status == "incomplete"
    assert sorted(result.missing_shards) == sorted(TASKS.split(","))
    assert all(v == [1] for v in result.missing_shards.values())
    task_rows = result.scores[result.scores["subtask"].isna()]
    assert set(task_rows["status"]) == {"incomplete"}
    notes = "\n".join(result.notes)
    assert "1/2" in notes and "--run-id sh" in notes


def _copy_shard0_as(runs, target, part: str):
    """A store holding arc's shard 0 files twice: as themselves and renamed to ``part``."""
    for table in ("runs", "samples", "scores"):
        folder = target / table
        folder.mkdir(parents=True)
        for path in (runs / table).glob("sh__*shard0of2.parquet" if table == "runs" else "sh__*arc__shard0of2.parquet"):
            shutil.copy(path, folder / path.name)
            shutil.copy(path, folder / path.name.replace("shard0of2", part))
    return ResultsStore(target)


def test_mixed_counts_and_duplicates_are_errors(runs, tmp_path):
    with pytest.raises(EvalsuiteError, match="mixes shard counts"):
        run_views(_copy_shard0_as(runs, tmp_path / "mixed", "shard1of3"), "sh")
    with pytest.raises(EvalsuiteError, match="scored by two shards"):
        run_views(_copy_shard0_as(runs, tmp_path / "dup", "shard1of2"), "sh")


def test_rerun_of_an_interrupted_shard_replaces_its_files(runs, tiny_llama_dir, data_dir, tmp_path):
    rerun = tmp_path / "results"
    shutil.copytree(runs, rerun)
    before = sorted(p.name for p in (rerun / "samples").iterdir())
    store = ResultsStore(rerun)
    row = {k: None if isinstance(v, float) and math.isnan(v) else v
           for k, v in store.runs(run_id="sh", shard="1/2").drop(columns=["part"]).to_dict("records")[0].items()}
    store.write_run({**row, "status": "interrupted"}, "shard1of2")
    with pytest.raises(EvalsuiteError, match="already exists"):  # never rewritten without --resume
        evaluate(str(tiny_llama_dir), TASKS, limit=LIMITS, data_dir=data_dir, backend=BACKEND, results_dir=rerun,
                 progress=False, run_id="sh", shard=(1, 2))
    evaluate(str(tiny_llama_dir), TASKS, limit=LIMITS, data_dir=data_dir, backend=BACKEND, results_dir=rerun,
             progress=False, run_id="sh", shard=(1, 2), resume=True)
    assert sorted(p.name for p in (rerun / "samples").iterdir()) == before
    store = ResultsStore(rerun)
    assert len(store.samples(run_id="sh")) == len(store.samples(run_id="full"))
    assert run_views(store, "sh")[0].complete


def test_shards_with_different_settings_are_an_error(runs, tmp_path):
    odd = tmp_path / "results"
    shutil.copytree(runs, odd)
    store = ResultsStore(odd)
    row = {k: None if isinstance(v, float) and math.isnan(v) else v
           for k, v in store.runs(run_id="sh").drop(columns=["part"]).to_dict("records")[0].items()}
    store.write_run({**row, "limit": LIMITS + 1}, "shard1of2")
    with pytest.raises(EvalsuiteError, match="differ in limit"):
        run_views(store, "sh")


def test_compare_report_and_table_read_a_sharded_run_like_the_unsharded_one(runs, tmp_path):
    """Every reader goes through the results API: a sharded run is one run to all of them."""
    from evalsuite.analysis.comparison import compare_runs
    from evalsuite.outputs.report import build_report
    from evalsuite.outputs.paper_table import paper_table

    model = run_views(runs, "sh")[0].model
    for candidate in ("sh", f"sh@{model}"):
        comparison = compare_runs(runs, "full", candidate)
        assert {t.task for t in comparison.tasks} == set(TASKS.split(","))
        assert all(t.verdict == "no change" and t.delta == 0 and t.n == LIMITS * (57 if t.task == "mmlu" else 1)
                   for t in comparison.tasks), comparison.table()
        assert comparison.exit_code == 0
    assert paper_table("md", results_dir=runs, runs=["sh"]) == paper_table("md", results_dir=runs, runs=["full"])
    expected = load_run("full", runs).leaderboard_row().scores
    html = build_report(runs=["sh"], results_dir=runs, out=tmp_path / "sh.html", published=False).read_text()
    assert all(f"{value:.2f}" in html for value in expected.values())
