"""The command line end to end, and its answers to bad input.

``evalsuite run`` on a tiny real model writes parquet that reads back with the numbers it
printed; every user mistake gets one line on stderr, exit status 2, and no traceback.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from evalsuite.cli import main
from evalsuite.tasks.data import file_sha256

REPO = Path(__file__).resolve().parent.parent


def evalsuite_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evalsuite.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=900)


def parse_table(text: str) -> dict[str, dict[str, str]]:
    lines = [l for l in text.splitlines() if l.strip()]
    start = next(i for i, l in enumerate(lines) if l.startswith("Model"))
    header = lines[start].split()
    rows = {}
    for line in lines[start + 2:]:
        cells = line.split()
        if len(cells) != len(header):
            break
        rows[cells[0]] = dict(zip(header, cells))
    return rows


@pytest.mark.slow
def test_run_writes_parquet_that_reads_back_as_printed(tiny_llama_dir, data_dir, tmp_path):
    results = tmp_path / "results"
    proc = evalsuite_cli("run", "--models", str(tiny_llama_dir), "--tasks", "arc,truthfulqa,winogrande",
                         "--limit", "3", "--data-dir", str(data_dir), "--results-dir", str(results),
                         "--backend", "lm-eval-hf", "--tag", "e2e")
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = parse_table(proc.stdout)
    model = tiny_llama_dir.name
    assert set(table) == {model}
    scores = pd.read_parquet(results / "scores")
    samples = pd.read_parquet(results / "samples")
    runs = pd.read_parquet(results / "runs")
    assert len(runs) == 1 and runs["status"].item() == "ok" and runs["tag"].item() == "e2e"
    assert runs["limit"].item() == 3 and runs["weights_hash"].item().startswith("sha256:")
    data_hashes = dict(runs["data_hashes"].item())
    arc_test = (data_dir / "allenai__ai2_arc" / "ARC-Challenge" / "test.jsonl").resolve()
    assert data_hashes[str(arc_test)] == file_sha256(arc_test)
    column = {"arc": "ARC", "truthfulqa": "TruthfulQA", "winogrande": "Winogrande"}
    for task, col in column.items():
        value = scores[(scores["task"] == task) & scores["subtask"].isna()]["value"].item()
        assert f"{100 * value:.2f}" == table[model][col]
        per_sample = samples[samples["task"] == task]
        assert len(per_sample) == 3
        assert value == pytest.approx(per_sample["value"].mean())
    assert table[model]["HellaSwag"] == "—"
    assert table[model]["H6"].endswith("*")  # incomplete: three of six tasks
    assert "run " in proc.stdout and str(results) in proc.stdout

    # `evalsuite results` shows the same numbers from the store
    shown = evalsuite_cli("results", "--results-dir", str(results))
    assert shown.returncode == 0, shown.stderr
    assert parse_table(shown.stdout) == table


def test_prompts_command_prints_v1_contexts(data_dir, capsys):
    assert main(["prompts", "--task", "arc", "--limit", "5", "--data-dir", str(data_dir)]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [l["eval_position"] for l in lines] == [0, 1, 2, 3, 4]
    assert lines[0]["doc_index"] == 595
    assert lines[0]["context"].count("\n\nQuestion: ") == 25
    assert all(c.startswith(" ") for c in lines[0]["continuations"])


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["run", "--models", "mixtrall"], r"unknown model 'mixtrall'.*did you mean mixtral"),
        (["run", "--tasks", "arcc"], r"unknown task 'arcc' \(did you mean arc"),
        (["prompts", "--task", "mmlux"], r"unknown task 'mmlux'"),
        (["run", "--models", "falcon-180b", "--tasks", "arc"], r"falcon-180b has 179.5B parameters .* GiB"),
        (["run", "--models", "./no-such-dir/model.gguf"], r"GGUF file .* does not exist"),
        (["run", "--data-dir", "/no/such/folder", "--tasks", "arc"], r"data folder /no/such/folder does not exist"),
    ],
)
def test_bad_input_one_line_error(args, pattern, capsys, tmp_path):
    code = main([*args, "--results-dir", str(tmp_path)] if args[0] == "run" else args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert re.search(pattern, err), err


def test_limit_zero_is_rejected(capsys):
    assert main(["run", "--limit", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must be at least 1" in err[0] and err[0].startswith("error: ")


def test_missing_task_data_names_expected_file(tmp_path, capsys):
    code = main(["prompts", "--task", "gsm8k", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(tmp_path / "openai__gsm8k" / "main" / "test.jsonl") in err


def test_malformed_data_file(data_dir, tmp_path, capsys):
    folder = tmp_path / "truthful_qa" / "multiple_choice"
    folder.mkdir(parents=True)
    good = (data_dir / "truthful_qa" / "multiple_choice" / "validation.jsonl").read_text().splitlines()
    (folder / "validation.jsonl").write_text("\n".join(good[:3] + ['{"question": "cut off', *good[3:5]]) + "\n")
    code = main(["prompts", "--task", "truthfulqa", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "validation.jsonl line 4 is not valid JSON" in err


def test_suite_with_missing_task_reports_missing_not_zero(tiny_llama_dir, data_dir, tmp_path, capsys):
    """A data folder without GSM8K: the suite still runs the rest, shows GSM8K as missing, exits 1."""
    partial = tmp_path / "data"
    partial.mkdir()
    shutil.copytree(data_dir / "truthful_qa", partial / "truthful_qa")
    results = tmp_path / "results"
    code = main(["run", "--models", str(tiny_llama_dir), "--tasks", "truthfulqa,gsm8k", "--limit", "2",
                 "--data-dir", str(partial), "--results-dir", str(results), "--backend", "lm-eval-hf",
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "gsm8k: no data, not evaluated: no data for openai/gsm8k (main)" in captured.err
    assert "gsm8k: missing: no data for openai/gsm8k" in captured.out  # the table says why
    row = parse_table(captured.out)[tiny_llama_dir.name]
    assert row["GSM8K"] == "—" and row["TruthfulQA"] != "—"
    scores = pd.read_parquet(results / "scores")
    gsm = scores[scores["task"] == "gsm8k"]
    assert gsm["status"].item() == "missing" and pd.isna(gsm["value"].item())


def test_help_texts_show_a_single_percent_sign():
    """argparse %-formats argument help but not descriptions: a ``%%`` must never reach the screen."""
    from evalsuite.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    texts = {"evalsuite": parser.format_help()}
    texts.update({name: sub.format_help() for name, sub in subparsers.choices.items()})
    doubled = [name for name, text in texts.items() if "%%" in text]
    assert doubled == []
    assert "95% interval" in texts["compare"] and "Min-K% Prob" in texts["contamination"]
