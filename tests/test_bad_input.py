"""Bad input as users meet it: one line naming the file/row/field or the fix, exit status 2 (or a
failed task), never a traceback. Most cases stop before any model loads."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalsuite.cli import main
from evalsuite.tasks.fewshot import v1_schedule

ARC = Path("allenai__ai2_arc") / "ARC-Challenge"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real command in a fresh process (what a user's shell runs)."""
    return subprocess.run([sys.executable, "-m", "evalsuite.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)


@pytest.mark.parametrize("content", [b"", b"not a gguf file at all", b"GGUF\x03\x00\x00\x00\x10"])
def test_broken_gguf_is_one_line(content, tmp_path, capsys, data_dir):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    assert main(["run", "--models", str(path), "--tasks", "winogrande", "--limit", "1", "--data-dir", str(data_dir),
                 "--results-dir", str(tmp_path / "r")]) == 2
    assert str(path) in one_line_error(capsys)


def test_offline_hub_id_is_one_line_and_quick(tmp_path):
    """No network and an empty Hub cache: one line within seconds, not a minute of retries."""
    started = time.monotonic()
    proc = cli("run", "--models", "some-org/some-model", "--tasks", "arc", "--results-dir", str(tmp_path / "r"),
               env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "not reachable" in err[0] and "some-org/some-model" in err[0], proc.stderr[-2000:]
    assert time.monotonic() - started < 60


def test_missing_relative_folder_is_not_a_hub_id(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["run", "--models", "checkpoints/step100", "--results-dir", str(tmp_path / "r")]) == 2
        assert "model folder checkpoints/step100 does not exist" in one_line_error(capsys)
        assert main(["run", "--models", "./step100", "--results-dir", str(tmp_path / "r")]) == 2
        assert "does not exist" in one_line_error(capsys)
    finally:
        os.chdir(old)


@pytest.mark.parametrize("edit,expected", [
    (lambda row: row.pop("answerKey"), "field 'answerKey' is missing"),
    (lambda row: row.update(answerKey="Z"), "the gold answer cannot be read from field(s) answerKey, choices"),
])
def test_prompts_on_a_broken_row_names_file_line_and_field(edit, expected, data_dir, tmp_path, capsys):
    folder = tmp_path / ARC
    folder.mkdir(parents=True)
    shutil.copy(data_dir / ARC / "train.jsonl", folder / "train.jsonl")
    lines = (data_dir / ARC / "test.jsonl").read_text(encoding="utf-8").splitlines()
    first = v1_schedule(len(lines), 1119, 25).order[0]
    row = json.loads(lines[first])
    edit(row)
    lines[first] = json.dumps(row)
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["prompts", "--task", "arc", "--limit", "1", "--data-dir", str(tmp_path)]) == 2
    error = one_line_error(capsys)
    assert f"{folder / 'test.jsonl'} line {first + 1}: {expected}" in error


def test_invalid_utf8_names_the_line(data_dir, tmp_path, capsys):
    folder = tmp_path / "truthful_qa" / "multiple_choice"
    folder.mkdir(parents=True)
    good = (data_dir / "truthful_qa" / "multiple_choice" / "validation.jsonl").read_bytes().splitlines()
    (folder / "validation.jsonl").write_bytes(b"\n".join(good[:2] + [b'{"question": "caf\xe9"}'] + good[2:4]) + b"\n")
    assert main(["prompts", "--task", "truthfulqa", "--data-dir", str(tmp_path)]) == 2
    assert "validation.jsonl line 3 is not valid UTF-8" in one_line_error(capsys)


def test_read_only_results_folder(tmp_path, capsys):
    """A folder this user cannot write (root can write almost anywhere, not into /sys)."""
    results = tmp_path / "results"
    results.mkdir()
    results.chmod(stat.S_IRUSR | stat.S_IXUSR)
    target = results if os.geteuid() != 0 else Path("/sys/evalsuite-results")
    try:
        assert main(["run", "--models", "smollm2", "--tasks", "arc", "--results-dir", str(target)]) == 2
        assert f"cannot write results to {target}" in one_line_error(capsys)
    finally:
        results.chmod(stat.S_IRWXU)


def test_results_folder_under_a_file(tmp_path, capsys, tiny_llama_dir):
    blocker = tmp_path / "results"
    blocker.write_text("I am a file")
    assert main(["run", "--models", str(tiny_llama_dir), "--tasks", "arc", "--results-dir",
                 str(blocker / "inner")]) == 2
    assert f"cannot write results to {blocker / 'inner'}" in one_line_error(capsys)
    from evalsuite.errors import StoreError
    from evalsuite.store.parquet_store import ResultsStore

    with pytest.raises(StoreError, match="could not write"):  # the writer itself, no secondary traceback
        ResultsStore(blocker).write_run({"run_id": "r", "model": "m"})


def test_a_file_is_not_a_model_folder(tmp_path, capsys):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    assert main(["run", "--models", str(weights), "--results-dir", str(tmp_path / "r")]) == 2
    assert "is a file; give a model folder" in one_line_error(capsys)
