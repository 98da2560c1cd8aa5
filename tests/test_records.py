"""The store's typed records: schemas come from the dataclasses, files carry a schema version,
older files stay readable and files from a newer evalsuite are refused by name."""
from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evalsuite.store import records
from evalsuite.errors import StoreError
from evalsuite.store.records import RunRecord, SampleRecord, ScoreRecord
from evalsuite.store.run_views import load_run
from evalsuite.store.parquet_store import ResultsStore


def test_schemas_are_the_dataclasses():
    for table, record_type in records.TABLES.items():
        schema = records.schema(table)
        assert schema.names == [f.name for f in dataclasses.fields(record_type)]
        assert schema.metadata[records.VERSION_KEY] == str(records.SCHEMA_VERSION).encode()
    assert records.schema("runs").field("task_config_hashes").type == pa.map_(pa.string(), pa.string())
    assert records.schema("samples").field("loglikelihoods").type == pa.list_(pa.float64())
    with pytest.raises(ValueError, match="unknown scores column"):
        records.as_row("scores", {"run_id": "r", "model": "m", "task": "arc", "score": 1.0})


def test_written_files_carry_the_version_and_read_back_as_records(tmp_path):
    store = ResultsStore(tmp_path)
    path = store.write_run(RunRecord("r1", "m", status="ok", task_config_hashes={"arc": "abc"}, limit=5))
    store.write_scores("r1", "m", "arc", [ScoreRecord("r1", "m", "arc", None, "acc_norm", 0.5, 0.1, 4, 10, "ok")])
    store.write_samples("r1", "m", "arc", [SampleRecord("r1", "m", "arc", doc_index=i, eval_position=i, value=1.0)
                                           for i in range(4)])
    assert records.file_version(pq.read_schema(path)) == records.SCHEMA_VERSION
    view = load_run("r1", store)
    assert view.record.task_config_hashes == {"arc": "abc"} and view.record.limit == 5
    assert view.task_scores()["arc"] == ScoreRecord("r1", "m", "arc", None, "acc_norm", 0.5, 0.1, 4, 10, "ok", None)


def test_version_1_files_stay_readable(tmp_path):
    """A runs file as evalsuite wrote it before versioning: no metadata, no columns added since."""
    store = ResultsStore(tmp_path)
    old_columns = [f for f in records.schema("runs") if f.name not in
                   ("model_files_hash", "backend_settings", "shard", "pid", "pid_started", "error")]
    old = pa.schema(old_columns)  # no metadata: version 1
    (tmp_path / "runs").mkdir()
    pq.write_table(pa.Table.from_pylist([{"run_id": "r0", "model": "m", "status": "ok"}], schema=old),
                   tmp_path / "runs" / "r0__m.parquet")
    store.write_scores("r0", "m", "arc", [ScoreRecord("r0", "m", "arc", None, "acc", 0.25, None, 4, 4, "ok")])
    view = load_run("m", store)
    assert view.run_id == "r0" and view.record.pid is None and view.leaderboard_row().scores == {"arc": 25.0}


def test_files_from_a_newer_evalsuite_are_refused_by_name(tmp_path):
    store = ResultsStore(tmp_path)
    schema = records.schema("runs").with_metadata({records.VERSION_KEY: b"99"})
    (tmp_path / "runs").mkdir()
    path = tmp_path / "runs" / "r9__m.parquet"
    pq.write_table(pa.Table.from_pylist([{"run_id": "r9", "model": "m"}], schema=schema), path)
    with pytest.raises(StoreError, match="upgrade evalsuite") as err:
        store.runs(run_id="r9")
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert store.runs().empty and store.unreadable == {path: str(err.value)}  # other runs stay readable


def test_audit_counts_are_stored_and_read_as_integers(tmp_path):
    """audit_n and audit_agree are int64 in the file and counts when read (8, not 8.0), though
    the subject rows beside the task row have none."""
    store = ResultsStore(tmp_path)
    store.write_run(RunRecord("r1", "m", status="ok", tasks=["mmlu"]))
    rows = [ScoreRecord("r1", "m", "mmlu", None, "acc", 0.5, 0.1, 4, 10, "ok", audit_status="agree", audit_n=8,
                        audit_agree=8, audit_max_abs_diff=2e-5),
            ScoreRecord("r1", "m", "mmlu", "anatomy", "acc", 0.5, 0.1, 4, 10, "ok")]
    path = store.write_scores("r1", "m", "mmlu", rows)
    assert pq.read_schema(path).field("audit_n").type == pa.int64()
    scores = store.scores(run_id="r1")
    assert str(scores["audit_n"].dtype) == str(scores["audit_agree"].dtype) == "Int64"
    task_row = scores[scores["subtask"].isna()].iloc[0]
    assert task_row["audit_n"] == 8 and str(task_row["audit_n"]) == "8"
    assert scores["audit_n"].isna().sum() == 1
    assert load_run("r1", store).task_scores()["mmlu"].audit_n == 8
