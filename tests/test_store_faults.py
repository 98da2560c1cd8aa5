"""The results store under concurrency and faults: nothing lost, clear one-line errors."""
from __future__ import annotations

import errno

import pytest

from conftest import run_concurrently
from evalsuite.errors import StoreError
from evalsuite.store.parquet_store import ResultsStore


def _write_many(root: str, writer: int) -> None:
    store = ResultsStore(root)
    for i in range(25):
        run_id = f"w{writer}-{i:02d}"
        store.write_run({"run_id": run_id, "model": "m", "status": "ok"})
        store.write_samples(run_id, "m", "arc", [{"run_id": run_id, "model": "m", "task": "arc", "doc_index": d,
                                                  "value": 1.0} for d in range(30)])


def test_two_processes_writing_one_store_lose_nothing(tmp_path):
    root = str(tmp_path / "results")
    assert run_concurrently(_write_many, [(root, k) for k in range(2)]) == [0, 0]
    store = ResultsStore(root)
    assert len(store.runs()) == 50 and len(store.samples()) == 50 * 30
    assert not list((tmp_path / "results").rglob(".tmp-*"))


def test_an_unreadable_file_is_named_and_other_tables_stay_readable(tmp_path):
    store = ResultsStore(tmp_path / "results")
    store.write_run({"run_id": "r1", "model": "m", "status": "ok"})
    store.write_scores("r1", "m", "arc", [{"run_id": "r1", "model": "m", "task": "arc", "status": "ok"}])
    broken = store.table_dir("scores") / "r0__m__arc.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(StoreError) as err:
        store.scores(run_id="r0")  # a read of the broken file's run names it
    message = str(err.value)
    assert str(broken) in message and "\n" not in message and "move it out" in message
    assert len(store.scores()) == 1 and store.unreadable[broken] == message  # whole-table reads skip it, noted
    assert list(store.runs()["run_id"]) == ["r1"]  # the runs table is unaffected
    assert len(store.scores(run_id="r1")) == 1  # reads of other runs skip the broken file


def test_a_full_disk_is_a_clear_error_and_leaves_no_partial_file(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path / "results")
    store.write_run({"run_id": "r1", "model": "m", "status": "ok"})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("evalsuite.store.parquet_store.pq.write_table", full)
    with pytest.raises(StoreError, match="disk full while writing .*r2__m.parquet; free space and rerun"):
        store.write_run({"run_id": "r2", "model": "m", "status": "ok"})
    monkeypatch.undo()
    assert list(store.runs()["run_id"]) == ["r1"]
    assert not list((tmp_path / "results").rglob(".tmp-*"))


def test_a_failed_task_is_recorded_and_the_others_are_kept(tiny_llama_dir, data_dir, tmp_path, monkeypatch):
    from evalsuite.analysis.comparison import compare_runs
    from evalsuite.run.evaluation import evaluate
    from evalsuite.tasks import LoadedTask

    from evalsuite.errors import DataFormatError

    real_score = LoadedTask.score

    def flaky(self, prompt, responses):  # broken data found while scoring (a bug would propagate: test_error_rules)
        if self.spec.name == "winogrande":
            raise DataFormatError("winogrande row 2: field 'answer' is empty; fix or remove the row")
        return real_score(self, prompt, responses)

    results = tmp_path / "results"
    ok = evaluate(models=str(tiny_llama_dir), tasks="arc,winogrande", limit=3, data_dir=data_dir,
                  results_dir=results, progress=False)
    monkeypatch.setattr(LoadedTask, "score", flaky)
    bad = evaluate(models=str(tiny_llama_dir), tasks="arc,winogrande", limit=3, data_dir=data_dir,
                   results_dir=results, progress=False)
    scores = bad.scores().set_index("task")
    assert scores.loc["arc", "status"] == "ok" and scores.loc["arc", "n"] == 3
    assert scores.loc["winogrande", "status"] == "failed"
    assert scores.loc["winogrande", "error"] == "winogrande row 2: field 'answer' is empty; fix or remove the row"
    assert list(bad.store.runs(run_id=bad.run_id)["status"]) == ["partial"]
    assert len(bad.samples("arc")) == 3
    comparison = compare_runs(results, ok.run_id, bad.run_id)
    verdicts = {t.task: t.verdict for t in comparison.tasks}
    assert verdicts == {"arc": "no change", "winogrande": "failed"} and comparison.exit_code == 1
