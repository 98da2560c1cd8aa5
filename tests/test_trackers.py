"""``--log-to``: a run's params, scores and report in a real local MLflow file store and a W&B offline run.

MLflow is read back through MLflow's own client. W&B has no reader for offline runs in its
Python client, so the test checks the run's transaction log holds what was logged.
"""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, tiny_llama_dir, data_dir):
    """One CLI run of a tiny real model, logged to a fresh MLflow file store."""
    from evalsuite.cli import main

    root = tmp_path_factory.mktemp("trackers")
    results, mlruns = root / "results", root / "mlruns"
    with pytest.MonkeyPatch.context() as env:  # MLflow writes an install id under ~/.config unless told not to
        env.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        env.setenv("XDG_CONFIG_HOME", str(root / "config"))
        before = dict(os.environ)
        code = main(["run", "--models", str(tiny_llama_dir), "--tasks", "arc,winogrande", "--limit", "2",
                     "--data-dir", str(data_dir), "--results-dir", str(results), "--no-progress", "--no-cache",
                     "--tag", "tracked", "--log-to", f"mlflow:file:{mlruns}"])
        assert code == 0 and dict(os.environ) == before  # the file-store opt-in does not leak
    return {"results": results, "uri": f"file:{mlruns}", "model": tiny_llama_dir.name}


@pytest.mark.slow
def test_mlflow_file_store_read_back(logged_run, monkeypatch, tmp_path):
    import mlflow

    from evalsuite.store.parquet_store import ResultsStore

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    client = mlflow.MlflowClient(tracking_uri=logged_run["uri"])
    experiment = client.get_experiment_by_name("evalsuite")
    [run] = client.search_runs([experiment.experiment_id])
    store = ResultsStore(logged_run["results"])
    stored = store.runs().iloc[0]
    params = run.data.params
    assert params["model"] == logged_run["model"] and params["run_id"] == stored["run_id"]
    assert (params["dtype"], params["backend"], params["limit"], params["tag"]) == ("float32", "evalsuite", "2", "tracked")
    assert params["weights_hash"] == stored["weights_hash"] and params["tasks"] == "arc,winogrande"
    scores = store.scores()
    tasks = scores[scores["subtask"].isna()].set_index("task")
    for task in ("arc", "winogrande"):
        assert run.data.metrics[task] == pytest.approx(100 * tasks.loc[task, "value"])
        assert run.data.metrics[f"{task}_n"] == 2
    assert run.data.metrics["h6"] == pytest.approx(100 * tasks["value"].mean())
    assert run.data.metrics["h6_complete"] == 0.0 and run.info.status == "FINISHED"
    assert run.data.tags["evalsuite.run_id"] == stored["run_id"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert len(artifacts) == 1
    html = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=artifacts.pop(),
                                               tracking_uri=logged_run["uri"], dst_path=str(tmp_path))
    text = open(html, encoding="utf-8").read()
    assert "<svg" in text and logged_run["model"] in text and "Contamination check" in text
    [results] = client.list_artifacts(run.info.run_id, "results")
    assert results.path.endswith(".json")


def test_bad_targets_are_refused_before_the_run(tiny_llama_dir, capsys, tmp_path):
    from evalsuite.cli import main

    code = main(["run", "--models", str(tiny_llama_dir), "--tasks", "arc", "--limit", "1",
                 "--results-dir", str(tmp_path / "r"), "--log-to", "neptune:x"])
    assert code == 2 and "is not mlflow:URI or wandb:PROJECT" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before anything ran


@pytest.mark.slow
def test_wandb_offline_run(logged_run, monkeypatch, tmp_path):
    from evalsuite.store.parquet_store import ResultsStore
    from evalsuite.outputs.trackers import log_run

    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_id = ResultsStore(logged_run["results"]).runs().iloc[0]["run_id"]
    [line] = log_run("wandb:evalsuite-test", run_id, logged_run["results"])
    assert "wandb (offline)" in line
    import wandb

    wandb.teardown()  # the service writes the offline file; stopping it waits for the last bytes
    [log] = list((tmp_path / "wandb_dir").glob("wandb/offline-run-*/run-*.wandb"))
    data = log.read_bytes()
    for text in (run_id, logged_run["model"], "h6", "winogrande_n", "evalsuite-test", "weights_hash"):
        assert text.encode() in data, text


def test_nightly_logs_its_run(tiny_llama_dir, data_dir, monkeypatch, tmp_path):
    import mlflow

    from evalsuite.cli import main

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    uri = f"file:{tmp_path / 'mlruns'}"
    code = main(["nightly", "--model", str(tiny_llama_dir), "--tasks", "arc", "--limit", "2", "--data-dir",
                 str(data_dir), "--results-dir", str(tmp_path / "results"), "--log-to", f"mlflow:{uri}"])
    assert code == 0  # the first night becomes the baseline
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("evalsuite").experiment_id])
    assert run.data.params["tag"].startswith("nightly-") and "arc" in run.data.metrics


def test_a_tracker_failure_keeps_the_run(tiny_llama_dir, data_dir, monkeypatch, tmp_path, capsys):
    from evalsuite.cli import main
    from evalsuite.store.run_views import load_run

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    results = tmp_path / "results"
    code = main(["run", "--models", str(tiny_llama_dir), "--tasks", "arc", "--limit", "1", "--data-dir",
                 str(data_dir), "--results-dir", str(results), "--no-progress", "--log-to",
                 f"mlflow:file:{blocker}/mlruns"])
    err = capsys.readouterr().err
    assert code == 0 and "warning: logging run" in err and "evalsuite.outputs.trackers.log_run(" in err
    assert load_run("latest", results).status == "ok"
