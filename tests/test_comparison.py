"""``compare_runs`` and ``evalsuite compare``/``baseline`` on stored runs with known per-sample outcomes.

The runs are written straight into a real results store (no model needed), so every number the
comparison reports can be checked against a hand computation: McNemar's exact p-value from the
discordant pairs, the paired bootstrap for mc2 and MMLU's mean of subjects.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from scipy.stats import binomtest

from evalsuite.cli import main
from evalsuite.analysis.comparison import ComparisonRefused, compare_runs, read_baseline, set_baseline
from evalsuite.errors import EvalsuiteError
from evalsuite.store.run_views import load_run
from evalsuite.store.parquet_store import ResultsStore

T0 = datetime(2026, 11, 20, tzinfo=UTC)


def write_run(store: ResultsStore, run_id: str, model: str, tasks: dict[str, list[float]], *, minutes: int = 0,
              tag: str | None = None, prompt_salt: str = "", status: str = "ok", groups: dict[str, list[str]] | None = None,
              metrics: dict[str, str] | None = None) -> None:
    """A run whose task ``t`` has per-document values ``tasks[t]`` (doc_index = position)."""
    metrics = metrics or {}
    store.write_run({"run_id": run_id, "model": model, "tasks": list(tasks), "started_at": T0 + timedelta(minutes=minutes),
                     "status": status, "tag": tag, "backend": "evalsuite", "weights_hash": f"sha256:{model}"})
    for task, values in tasks.items():
        metric = metrics.get(task, "acc")
        subtasks = (groups or {}).get(task) or [None] * len(values)
        samples = [{"run_id": run_id, "model": model, "task": task, "subtask": sub, "doc_index": i, "eval_position": i,
                    "prompt_hash": f"h{task}{i}{prompt_salt}", "metric": metric, "value": v}
                   for i, (v, sub) in enumerate(zip(values, subtasks))]
        store.write_samples(run_id, model, task, samples)
        store.write_scores(run_id, model, task, [{"run_id": run_id, "model": model, "task": task, "metric": metric,
                                                  "value": float(np.mean(values)), "n": len(values), "status": "ok"}])


@pytest.fixture()
def store(tmp_path) -> ResultsStore:
    return ResultsStore(tmp_path / "results")


def test_mcnemar_regression_matches_hand_computation(store):
    base = [1.0] * 60 + [0.0] * 40
    cand = [0.0] * 20 + [1.0] * 40 + [1.0] * 2 + [0.0] * 38  # 20 lost, 2 gained
    write_run(store, "r1", "m", {"winogrande": base})
    write_run(store, "r2", "m", {"winogrande": cand}, minutes=1)
    result = compare_runs(store, "r1", "r2")
    (task,) = result.tasks
    assert task.test == "mcnemar" and task.n == 100
    assert task.baseline == pytest.approx(60.0) and task.candidate == pytest.approx(42.0)
    assert task.delta == pytest.approx(-18.0)
    assert task.p_value == pytest.approx(binomtest(2, 22, 0.5).pvalue)
    assert task.ci_low < -18 < task.ci_high < 0
    assert task.verdict == "regression" and result.exit_code == 1
    assert "REGRESSION in winogrande" in result.table()


def test_small_or_insignificant_drops_are_no_change(store):
    base = [1.0] * 50 + [0.0] * 50
    write_run(store, "r1", "m", {"winogrande": base, "arc": base})
    # winogrande: 3 lost, 1 gained -> -2 points, not significant; arc: identical
    wino = [0.0] * 3 + [1.0] * 47 + [1.0] + [0.0] * 49
    write_run(store, "r2", "m", {"winogrande": wino, "arc": base}, minutes=1)
    result = compare_runs(store, "r1", "r2")
    verdicts = {t.task: t for t in result.tasks}
    assert verdicts["winogrande"].verdict == "no change" and verdicts["winogrande"].p_value > 0.05
    assert verdicts["arc"].delta == 0 and verdicts["arc"].p_value == 1.0
    assert result.exit_code == 0
    # the same drop is not a regression when --max-drop allows it, even if it were significant
    big = [0.0] * 20 + [1.0] * 30 + [0.0] * 50
    write_run(store, "r3", "m", {"winogrande": big, "arc": base}, minutes=2)
    assert compare_runs(store, "r1", "r3").exit_code == 1
    assert compare_runs(store, "r1", "r3", max_drop=25.0).exit_code == 0


def test_improvement_and_bootstrap_for_mc2(store):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.5, 80)
    write_run(store, "r1", "m", {"truthfulqa": list(base)}, metrics={"truthfulqa": "mc2"})
    write_run(store, "r2", "m", {"truthfulqa": list(base + 0.1)}, minutes=1, metrics={"truthfulqa": "mc2"})
    task = compare_runs(store, "r1", "r2").tasks[0]
    assert task.test == "bootstrap" and task.verdict == "improvement"
    assert task.delta == pytest.approx(10.0) and task.p_value < 0.01
    again = compare_runs(store, "r1", "r2").tasks[0]  # fixed seed: identical numbers
    assert (again.ci_low, again.ci_high, again.p_value) == (task.ci_low, task.ci_high, task.p_value)


def test_mmlu_is_a_mean_of_subjects(store):
    groups = ["a"] * 10 + ["b"] * 90
    base = [1.0] * 10 + [0.0] * 90  # subject a 100%, b 0% -> 50
    cand = [0.0] * 10 + [0.0] * 90  # -> 0
    write_run(store, "r1", "m", {"mmlu": base}, groups={"mmlu": groups})
    write_run(store, "r2", "m", {"mmlu": cand}, minutes=1, groups={"mmlu": groups})
    task = compare_runs(store, "r1", "r2").tasks[0]
    assert task.test == "bootstrap"
    assert task.baseline == pytest.approx(50.0) and task.delta == pytest.approx(-50.0)


def test_refuses_different_prompts_or_documents_unless_forced(store):
    write_run(store, "r1", "m", {"arc": [1.0] * 10, "winogrande": [1.0] * 10})
    write_run(store, "r2", "m", {"arc": [1.0] * 10, "winogrande": [1.0] * 10}, minutes=1, prompt_salt="x")
    with pytest.raises(ComparisonRefused, match="arc: 10 of 10 shared documents saw different prompts"):
        compare_runs(store, "r1", "r2")
    write_run(store, "r3", "m", {"arc": [1.0] * 6}, minutes=2)
    with pytest.raises(ComparisonRefused) as refused:
        compare_runs(store, "r1", "r3")
    assert any("arc: the runs cover different documents (baseline 10, candidate 6, shared 6" in p for p in refused.value.problems)
    assert any("winogrande: not evaluated in the candidate run" in p for p in refused.value.problems)
    forced = compare_runs(store, "r1", "r3", force=True)
    assert [t.task for t in forced.tasks] == ["arc"] and forced.tasks[0].n == 6 and forced.problems


def test_failed_candidate_task_is_a_regression(store):
    write_run(store, "r1", "m", {"arc": [1.0] * 10})
    store.write_run({"run_id": "r2", "model": "m", "started_at": T0 + timedelta(minutes=1), "status": "partial"})
    store.write_scores("r2", "m", "arc", [{"run_id": "r2", "model": "m", "task": "arc", "status": "failed",
                                            "error": "RuntimeError: boom", "n": 0}])
    result = compare_runs(store, "r1", "r2")
    assert result.tasks[0].verdict == "failed" and "boom" in result.tasks[0].note and result.exit_code == 1


def test_refs_and_baseline(store):
    write_run(store, "r1", "good", {"arc": [1.0] * 10}, tag="nightly-1")
    write_run(store, "r2", "other", {"arc": [1.0] * 10}, minutes=1, tag="nightly-2")
    write_run(store, "r3", "good", {"arc": [1.0] * 10}, minutes=2, status="running")  # interrupted: never "latest"
    assert load_run("latest", store).run_id == "r2"
    assert load_run("tag:nightly-1", store).run_id == "r1"
    assert load_run("good", store).run_id == "r1"
    assert load_run("r3", store).run_id == "r3"  # an explicit id is taken as given
    with pytest.raises(EvalsuiteError, match="no baseline set"):
        load_run("baseline", store)
    with pytest.raises(EvalsuiteError, match="known tags: nightly-1, nightly-2"):
        load_run("tag:nope", store)
    set_baseline(store, "tag:nightly-1")
    assert read_baseline(store.root)["run_id"] == "r1"
    assert load_run("baseline", store).run_id == "r1"
    assert not list(store.root.glob(".baseline-*"))  # written atomically, no temp left


def test_cli_compare_exit_codes_and_outputs(store, tmp_path, capsys):
    write_run(store, "r1", "m", {"winogrande": [1.0] * 60 + [0.0] * 40})
    write_run(store, "r2", "m", {"winogrande": [0.0] * 20 + [1.0] * 40 + [0.0] * 40}, minutes=1)
    root = str(store.root)
    assert main(["baseline", "set", "r1", "--results-dir", root]) == 0
    assert main(["baseline", "show", "--results-dir", root]) == 0
    assert "run r1" in capsys.readouterr().out
    md, js = tmp_path / "out" / "c.md", tmp_path / "out" / "c.json"
    assert main(["compare", "baseline", "latest", "--results-dir", root, "--markdown", str(md), "--json", str(js)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "winogrande" in out
    assert "| winogrande | acc | 60.00 | 40.00 | -20.00 |" in md.read_text()
    data = json.loads(js.read_text())
    assert data["regressed"] == ["winogrande"] and data["exit_code"] == 1 and data["tasks"][0]["test"] == "mcnemar"
    assert main(["compare", "r1", "r1", "--results-dir", root]) == 2  # a run against itself proves nothing
    assert "are the same run (r1, m)" in capsys.readouterr().err
    assert main(["compare", "baseline", "r1", "--results-dir", root]) == 2  # the same run under two names
    assert main(["compare", "r1", "nope", "--results-dir", root]) == 2
    assert "is not a run id" in capsys.readouterr().err
