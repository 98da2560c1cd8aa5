"""Honest status, as a user and a CI job meet it: exit codes, run and task statuses, "latest",
interruptions and resuming. Real runs of a tiny real model on real data (small --limit)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from evalsuite.cli import main
from evalsuite.tasks.fewshot import v1_schedule
from evalsuite.store.run_views import latest_runs, load_run, run_views
from evalsuite.run.evaluation import evaluate
from evalsuite.store.parquet_store import ResultsStore

ARC = Path("allenai__ai2_arc") / "ARC-Challenge"


def arc_copy(data_dir: Path, target: Path, edit=None) -> tuple[Path, int]:
    """A data folder with ARC only; ``edit(row)`` changes the first document of the v1 order.
    Returns the folder and the line number (1-based) of the edited row."""
    folder = target / ARC
    folder.mkdir(parents=True)
    shutil.copy(data_dir / ARC / "train.jsonl", folder / "train.jsonl")
    lines = (data_dir / ARC / "test.jsonl").read_text(encoding="utf-8").splitlines()
    first = v1_schedule(len(lines), 1119, 25).order[0]
    if edit is not None:
        row = json.loads(lines[first])
        edit(row)
        lines[first] = json.dumps(row)
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target, first + 1


def run(*args: str, results: Path) -> int:
    return main(["run", *args, "--results-dir", str(results), "--no-progress"])


def test_exit_codes_ok_failed_missing_and_bad_input(tiny_llama_dir, data_dir, tmp_path, capsys):
    results = tmp_path / "results"
    model = ["--models", str(tiny_llama_dir), "--limit", "2"]
    # every task scored: 0
    assert run(*model, "--tasks", "arc", "--data-dir", str(data_dir), results=results) == 0
    # the only task fails on a broken row: the table is printed, the run is failed, exit 1
    broken, line = arc_copy(data_dir, tmp_path / "broken", edit=lambda row: row.pop("answerKey"))
    capsys.readouterr()
    assert run(*model, "--tasks", "arc", "--data-dir", str(broken), results=results) == 1
    out = capsys.readouterr().out
    where = f"{broken / ARC / 'test.jsonl'} line {line}: field 'answerKey' is missing"
    assert where in out and "arc: failed:" in out
    failed_run = ResultsStore(results).runs().sort_values("started_at").iloc[-1]
    assert failed_run["status"] == "failed" and failed_run["finished_at"] is not pd.NaT
    # one task ok, one without data: the ok one is stored, exit 1, the table says why
    arc_only, _ = arc_copy(data_dir, tmp_path / "arc-only")
    assert run(*model, "--tasks", "arc,gsm8k", "--data-dir", str(arc_only), results=results) == 1
    assert "gsm8k: missing: no data for openai/gsm8k" in capsys.readouterr().out
    # bad input found before anything ran: 2, one line, nothing written
    before = len(ResultsStore(results).runs())
    for bad in (["--tasks", ""], ["--tasks", ","], ["--device", "tpu"], ["--device", "cuda:x"], ["--batch-size", "abc"],
                ["--batch-size", "0"], ["--batch-size", "-2"], ["--backend", "lm-eval-hf", "--batch-size", "abc"]):
        args = [*model, "--tasks", "arc", "--data-dir", str(data_dir)]
        code = run(*args, *bad, results=results)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (bad, err)
    assert len(ResultsStore(results).runs()) == before


def test_corrupt_data_file_is_failed_not_missing(tiny_llama_dir, data_dir, tmp_path):
    broken, _ = arc_copy(data_dir, tmp_path / "data")
    (broken / ARC / "test.jsonl").write_bytes(b'{"id": "x", "question": "caf\xe9"}\n')  # invalid UTF-8
    shutil.copytree(data_dir / "winogrande", broken / "winogrande")
    result = evaluate(models=str(tiny_llama_dir), tasks="arc,winogrande", limit=2, data_dir=broken,
                      results_dir=tmp_path / "results", progress=False)
    (view,) = result.views()
    scores = view.task_scores()
    assert scores["arc"].status == "failed" and "line 1 is not valid UTF-8" in scores["arc"].error
    assert scores["winogrande"].status == "ok" and view.status == "partial" and result.exit_code == 1
    empty, _ = arc_copy(data_dir, tmp_path / "empty")
    (empty / ARC / "test.jsonl").write_text("\n")
    shutil.copytree(data_dir / "winogrande", empty / "winogrande")
    (view,) = evaluate(models=str(tiny_llama_dir), tasks="arc,winogrande", limit=2, data_dir=empty,
                       results_dir=tmp_path / "results", progress=False).views()
    assert view.task_scores()["arc"].status == "failed" and "holds no rows" in view.task_scores()["arc"].error


def test_a_failed_or_interrupted_run_never_hides_earlier_results(tiny_llama_dir, data_dir, tmp_path, monkeypatch,
                                                                capsys):
    results = tmp_path / "results"
    good = evaluate(models=str(tiny_llama_dir), tasks="truthfulqa,winogrande", limit=3, data_dir=data_dir,
                    results_dir=results, progress=False)
    expected = good.views()[0].leaderboard_row().scores
    assert expected["truthfulqa"] > 0  # mc2 is a probability: a distinctive number to look for
    # a run whose model does not load (an input error): recorded as failed, with the reason
    import evalsuite.run.evaluation
    from evalsuite.errors import EvalsuiteError

    def broken_backend(*args, **kwargs):
        raise EvalsuiteError("weights are corrupt")

    monkeypatch.setattr(evalsuite.run.evaluation, "build_backend", broken_backend)
    # (--no-cache: with every answer in the request cache the model would not be loaded at all)
    assert run("--models", str(tiny_llama_dir), "--tasks", "truthfulqa,winogrande", "--limit", "3", "--data-dir",
               str(data_dir), "--no-cache", results=results) == 1
    assert "truthfulqa: failed: the model did not load (weights are corrupt)" in capsys.readouterr().out

    # Ctrl-C while the model loads: recorded as interrupted, the message says how to resume
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evalsuite.run.evaluation, "build_backend", interrupted)
    assert run("--models", str(tiny_llama_dir), "--tasks", "truthfulqa,winogrande", "--limit", "3", "--data-dir",
               str(data_dir), "--no-cache", results=results) == 130
    assert "rerun the same command with --resume" in capsys.readouterr().err
    monkeypatch.undo()
    statuses = ResultsStore(results).runs().sort_values("started_at")["status"].tolist()
    assert statuses == ["ok", "failed", "interrupted"]

    (latest,) = latest_runs(results)
    assert latest.run_id == good.run_id and latest.leaderboard_row().scores == expected
    assert any("interrupted" in note for note in latest.notes)
    assert main(["results", "--results-dir", str(results)]) == 0
    shown = capsys.readouterr().out
    for value in expected.values():
        assert f"{value:.2f}" in shown
    assert main(["table", "--results-dir", str(results)]) == 0
    table = capsys.readouterr().out
    assert all(f"{value:.2f}" in table for value in expected.values())
    report = tmp_path / "report.html"
    assert main(["report", "--results-dir", str(results), "--out", str(report), "--no-published"]) == 0
    html = report.read_text(encoding="utf-8")
    assert all(f"{value:.2f}" in html for value in expected.values())


def test_a_running_row_of_a_dead_process_reads_as_interrupted(tmp_path):
    store = ResultsStore(tmp_path / "results")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    store.write_run({"run_id": "r1", "model": "m", "status": "running", "host": socket.gethostname(),
                     "pid": int(dead.stdout), "pid_started": 0.0})
    store.write_run({"run_id": "r2", "model": "m", "status": "running", "host": socket.gethostname(),
                     "pid": os.getpid(), "pid_started": __import__("psutil").Process().create_time()})
    assert load_run("r1", store).status == "interrupted"
    assert load_run("r2", store).status == "running"  # this very process: still alive


def test_run_id_reuse_and_resume_say_what_happens(tiny_llama_dir, data_dir, tmp_path, capsys):
    results = tmp_path / "results"
    common = ["--models", str(tiny_llama_dir), "--tasks", "winogrande", "--limit", "2", "--data-dir", str(data_dir)]
    assert run(*common, "--run-id", "nightly", results=results) == 0
    assert run(*common, "--run-id", "nightly", results=results) == 2
    assert "run 'nightly' already exists" in capsys.readouterr().err
    assert run(*common, "--run-id", "nightly", "--resume", results=results) == 2  # finished: never rewritten
    assert "is finished (ok)" in capsys.readouterr().err
    assert len(run_views(results, "nightly")) == 1
    capsys.readouterr()
    assert run(*common, "--resume", "--tag", "other", results=results) == 0
    assert "nothing to resume" in capsys.readouterr().err


def cached_entries(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


@pytest.mark.slow
def test_sigterm_marks_the_run_interrupted_and_says_how_to_resume(tiny_llama_dir, data_dir, tmp_path):
    cache = tmp_path / "cache" / "requests.sqlite"
    results = tmp_path / "results"
    env = {**os.environ, "EVALSUITE_REQUEST_CACHE": str(cache)}
    command = [sys.executable, "-m", "evalsuite.cli", "run", "--models", str(tiny_llama_dir), "--tasks",
               "arc,winogrande", "--limit", "40", "--data-dir", str(data_dir), "--results-dir", str(results),
               "--no-progress"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while cached_entries(cache) == 0 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted (SIGTERM)" in err and "--resume" in err
    (view,) = run_views(results, ResultsStore(results).runs()["run_id"].iloc[0])
    assert view.status == "interrupted" and view.record.error == "interrupted by SIGTERM"


def test_finished_run_row_keeps_how_the_dtype_was_chosen(tiny_llama_dir, data_dir, tmp_path):
    """The notes written when the run starts (dtype choice) survive the final rewrite, once."""
    result = evaluate(models=[str(tiny_llama_dir)], tasks=["winogrande"], limit=1, data_dir=data_dir,
                      results_dir=tmp_path / "results", progress=False)
    notes = ResultsStore(tmp_path / "results").runs(run_id=result.run_id)["notes"].item()
    assert notes.count("dtype float32 (the CPU default") == 1, notes
    assert notes.count("request cache") <= 1, notes
