"""A run killed with ``kill -9`` and started again with the same command finishes the work
without recomputing what was cached, under the same run id, with results identical to an
uninterrupted run.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from evalsuite.run.evaluation import evaluate
from evalsuite.store.parquet_store import ResultsStore

TASKS, LIMIT = "arc,winogrande", 64
COLUMNS = ["task", "subtask", "doc_index", "prompt_hash", "loglikelihoods", "prediction", "value"]


def cached_entries(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    except sqlite3.Error:
        return 0


def samples(results: Path, run_id: str) -> pd.DataFrame:
    df = ResultsStore(results).samples(run_id=run_id)[COLUMNS]
    df["loglikelihoods"] = df["loglikelihoods"].map(list)
    return df.sort_values(["task", "doc_index"]).reset_index(drop=True)


@pytest.mark.slow
def test_kill_9_then_same_command_resumes(tiny_llama_dir, data_dir, tmp_path):
    cache = tmp_path / "cache"
    results = tmp_path / "results"
    env = {**os.environ, "EVALSUITE_REQUEST_CACHE": str(cache / "requests.sqlite")}
    command = [sys.executable, "-m", "evalsuite.cli", "run", "--models", str(tiny_llama_dir), "--tasks", TASKS,
               "--limit", str(LIMIT), "--data-dir", str(data_dir), "--results-dir", str(results), "--resume",
               "--no-progress"]

    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    while cached_entries(cache / "requests.sqlite") == 0 and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = cached_entries(cache / "requests.sqlite")
    assert first.returncode == -signal.SIGKILL, first.stdout.read().decode()[-2000:]
    assert killed_at > 0
    (killed_run,) = ResultsStore(results).runs()["run_id"]
    assert set(ResultsStore(results).runs()["status"]) == {"running"}
    from evalsuite.store.run_views import run_views

    assert [v.status for v in run_views(results, killed_run)] == ["interrupted"]  # its process is gone

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"resuming run {killed_run}" in second.stderr
    runs = ResultsStore(results).runs()
    assert list(runs["run_id"]) == [killed_run] and list(runs["status"]) == ["ok"]  # one complete run
    notes = runs["notes"][0]
    hits = int(notes.split("request cache: ")[1].split(" answered")[0])
    computed = int(notes.split("from cache, ")[1].split(" computed")[0])
    assert hits >= killed_at and computed > 0  # cached work was reused, the rest was computed once
    assert cached_entries(cache / "requests.sqlite") == hits + computed

    reference = evaluate(models=str(tiny_llama_dir), tasks=TASKS, limit=LIMIT, data_dir=data_dir,
                         results_dir=tmp_path / "reference", progress=False, use_cache=False)
    pd.testing.assert_frame_equal(samples(results, killed_run), samples(tmp_path / "reference", reference.run_id))


def test_interrupted_mid_chunk_keeps_each_answered_request(tiny_llama_dir, data_dir, tmp_path, monkeypatch):
    """Ctrl-C in the middle of a call to the engine (here in the twelfth forward pass of the first
    32-document chunk, after the first documents' branches were scored): the requests answered so far are in the request cache, and the resumed run
    computes only the others, with the samples of an uninterrupted run."""
    from evalsuite.backends.engine.lm import EngineLM
    from evalsuite.run.evaluation import RunInterrupted

    common = dict(models=str(tiny_llama_dir), tasks="arc", limit=40, data_dir=data_dir, progress=False, audit=False)
    reference = evaluate(**common, results_dir=tmp_path / "reference", use_cache=False)
    total = sum(len(p.instances) for p in _arc_prompts(data_dir, 40))

    cache = tmp_path / "cache" / "requests.sqlite"
    monkeypatch.setenv("EVALSUITE_REQUEST_CACHE", str(cache))
    real_forward, forwards = EngineLM._forward_safe, []

    def interrupted_forward(self, *args, **kwargs):  # Ctrl-C arriving in the run's twelfth forward pass
        forwards.append(self.answer_hook is not None)  # (not the capability probe's forwards)
        if sum(forwards) == 12:
            raise KeyboardInterrupt
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(EngineLM, "_forward_safe", interrupted_forward)
    with pytest.raises(RunInterrupted):
        evaluate(**common, results_dir=tmp_path / "results")
    kept = cached_entries(cache)
    assert 0 < kept < min(total, 32 * 4)  # answers of an unfinished first chunk (32 documents x 4 choices)

    monkeypatch.setattr(EngineLM, "_forward_safe", real_forward)
    resumed = evaluate(**common, results_dir=tmp_path / "results", resume=True)
    notes = ResultsStore(tmp_path / "results").runs(run_id=resumed.run_id)["notes"].iloc[0]
    assert f"request cache: {kept} answered from cache, {total - kept} computed" in notes
    pd.testing.assert_frame_equal(samples(tmp_path / "results", resumed.run_id),
                                  samples(tmp_path / "reference", reference.run_id))


def _arc_prompts(data_dir: Path, limit: int) -> list:
    from evalsuite.tasks import LoadedTask, load_spec

    return LoadedTask(load_spec("arc"), data_dir).prompts(limit)


def test_progress_moves_within_a_chunk(tiny_llama_dir, data_dir, tmp_path, monkeypatch):
    """The bar of a task moves with the engine's forward passes, not once per 32-document call:
    each update comes from inside a call (one chunk here), and they add up to the documents."""
    import tqdm.auto

    updates: list[float] = []

    class Recording(tqdm.auto.tqdm):
        def update(self, n=1):
            updates.append(n)
            return super().update(n)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    evaluate(models=str(tiny_llama_dir), tasks="arc", limit=32, data_dir=data_dir, progress=True, audit=False,
             use_cache=False, results_dir=tmp_path / "results")
    assert sum(updates) == 32 and len([n for n in updates if n > 0]) >= 8 and max(updates) < 32
