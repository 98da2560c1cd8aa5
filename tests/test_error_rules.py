"""Errors where they belong: only errors of the user's input or data are caught and stated in
one line; anything else is a bug that keeps its traceback and fails the run loudly, with the
run row still closed as ``failed`` so the store stays honest.

One test per rule, on a tiny real model and the real data (the bugs are planted with
monkeypatch where a real one would come from: the backend, the model's loading).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from evalsuite.cli import main
from evalsuite.errors import DataFormatError, EvalsuiteError, ModelTooLargeError
from evalsuite.store.parquet_store import ResultsStore

REPO = Path(__file__).resolve().parent.parent


def run(*args: str, results: Path) -> int:
    return main(["run", *args, "--results-dir", str(results), "--no-progress", "--no-cache"])


def _rows(results: Path):
    return ResultsStore(results).runs().sort_values("started_at")


def test_a_bug_in_the_backend_fails_the_run_loudly_and_the_row_says_failed(tiny_llama_dir, data_dir, tmp_path,
                                                                             monkeypatch):
    from evalsuite.backends.engine.lm import EngineLM

    def broken(self, requests, disable_tqdm=True):
        raise RuntimeError("planted bug in loglikelihood")

    monkeypatch.setattr(EngineLM, "loglikelihood", broken)
    results = tmp_path / "results"
    with pytest.raises(RuntimeError, match="planted bug"):  # the CLI lets it through: traceback, exit 1
        run("--models", str(tiny_llama_dir), "--tasks", "winogrande,truthfulqa", "--limit", "2", "--data-dir",
            str(data_dir), results=results)
    (row,) = _rows(results).to_dict("records")
    assert row["status"] == "failed"
    assert row["error"].startswith("RuntimeError: planted bug") and "internal error" in row["error"]
    assert ResultsStore(results).scores().empty  # no task was recorded as if its data were at fault


def test_an_assertion_while_the_model_loads_is_a_bug_not_a_model_that_did_not_load(tiny_llama_dir, data_dir,
                                                                                  tmp_path, monkeypatch):
    import evalsuite.run.evaluation

    def broken(*args, **kwargs):
        raise AssertionError("planted bug in the backend's construction")

    monkeypatch.setattr(evalsuite.run.evaluation, "build_backend", broken)
    results = tmp_path / "results"
    with pytest.raises(AssertionError, match="planted bug"):
        run("--models", str(tiny_llama_dir), "--tasks", "winogrande", "--limit", "2", "--data-dir", str(data_dir),
            results=results)
    (row,) = _rows(results).to_dict("records")
    assert row["status"] == "failed" and row["error"].startswith("AssertionError: planted bug")
    assert ResultsStore(results).scores().empty


def test_a_model_that_does_not_load_for_an_input_reason_fails_its_tasks_in_one_line(tiny_llama_dir, data_dir,
                                                                                   tmp_path, monkeypatch, capsys):
    import evalsuite.run.evaluation

    def too_large(*args, **kwargs):
        raise ModelTooLargeError("needs 99 GB, 8 GB free; use --dtype bfloat16 or a GPU")

    monkeypatch.setattr(evalsuite.run.evaluation, "build_backend", too_large)
    results = tmp_path / "results"
    assert run("--models", str(tiny_llama_dir), "--tasks", "winogrande", "--limit", "2", "--data-dir", str(data_dir),
               results=results) == 1
    out = capsys.readouterr()
    assert "winogrande: failed: the model did not load (needs 99 GB" in out.out and "Traceback" not in out.err
    (row,) = _rows(results).to_dict("records")
    assert row["status"] == "failed" and "did not load" in row["error"]


def test_broken_data_fails_only_its_task_and_the_others_run(tiny_llama_dir, data_dir, tmp_path, monkeypatch):
    from evalsuite.tasks import LoadedTask

    real = LoadedTask.prompts

    def prompts(self, limit=None):
        if self.spec.name == "truthfulqa":
            raise DataFormatError("truthfulqa row 3: field 'mc2_targets' is missing; fix or remove the row")
        return real(self, limit)

    monkeypatch.setattr(LoadedTask, "prompts", prompts)
    results = tmp_path / "results"
    assert run("--models", str(tiny_llama_dir), "--tasks", "truthfulqa,winogrande", "--limit", "2", "--data-dir",
               str(data_dir), results=results) == 1
    (row,) = _rows(results).to_dict("records")
    assert row["status"] == "partial"
    scores = ResultsStore(results).scores().set_index("task")
    assert scores.loc["truthfulqa", "status"] == "failed" and "mc2_targets" in scores.loc["truthfulqa", "error"]
    assert scores.loc["winogrande", "status"] == "ok"


def test_bad_input_is_one_line_and_exit_2_before_anything_runs(tmp_path):
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "evalsuite.cli", "run", "--device", "tpu", "--tasks", "arc",
                           "--results-dir", str(results)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: unknown --device 'tpu'; use auto, cpu, cuda or cuda:N"]
    assert not results.exists()


def test_a_bad_value_found_mid_run_is_one_line_and_closes_the_row(tiny_llama_dir, data_dir, tmp_path, monkeypatch,
                                                                 capsys):
    from evalsuite.backends.engine.lm import EngineLM

    def refused(self, requests, disable_tqdm=True):
        raise EvalsuiteError("a request is longer than the model's context; use a model with a longer one")

    monkeypatch.setattr(EngineLM, "loglikelihood", refused)
    results = tmp_path / "results"
    assert run("--models", str(tiny_llama_dir), "--tasks", "winogrande", "--limit", "2", "--data-dir", str(data_dir),
               results=results) == 2
    assert capsys.readouterr().err.strip().endswith("error: a request is longer than the model's context; use a "
                                                    "model with a longer one")
    (row,) = _rows(results).to_dict("records")
    assert row["status"] == "failed" and "longer than the model's context" in row["error"]


@pytest.mark.slow  # a CLI run end to end: the full suite, not the fast lane
def test_ray_shards_split_input_errors_from_bugs():
    """A shard that hit a bug makes the launcher raise it (with the worker's traceback); a shard
    refused for bad input is listed to rerun; Ray itself is real (a local cluster)."""
    ray = pytest.importorskip("ray")
    from evalsuite.run.ray_shards import _connect, _wait_all

    def shard(kind: str) -> str:
        if kind == "bug":
            raise KeyError("planted bug")
        if kind == "input":
            raise EvalsuiteError("unknown task 'nope'")
        return "here"

    started = _connect(ray, "local", 1)
    try:
        task = ray.remote(shard).options(num_cpus=1, max_retries=0)
        failures, bug = _wait_all(ray, {task.remote(k): i for i, k in enumerate(["ok", "input", "bug"])}, 3)
    finally:
        if started:
            ray.shutdown()
    assert set(failures) == {1, 2} and failures[1] == "EvalsuiteError: unknown task 'nope'"
    assert isinstance(bug, ray.exceptions.RayTaskError) and "planted bug" in str(bug)
    assert "in shard" in str(bug) and "raise KeyError" in str(bug)  # the worker's traceback travels with it
