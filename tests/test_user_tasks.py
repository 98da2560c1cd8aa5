"""A user's own task from a folder (``--task-dir``): docs/tasks.md's worked example, end to end.

The files and commands are read from docs/tasks.md itself, so the page and this test cannot
drift apart; only the model differs (a tiny real llama built in the session instead of
SmolLM2) and the data folder is the test data's. The task runs, is stored, and shows in
``results``, the paper table, the exports and the report.
"""
from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import pytest

from evalsuite.cli import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "tasks.md"


def _doc_files() -> dict[str, str]:
    """``File `path`:`` followed by a fenced block, as the page shows them."""
    text = DOC.read_text(encoding="utf-8")
    return {m.group(1): m.group(2) for m in re.finditer(r"File `([^`]+)`[^\n]*:\n\n```\w*\n(.*?)```", text, re.S)}


def _doc_commands() -> list[list[str]]:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"Then:\n\n```bash\n(.*?)```", text, re.S).group(1)
    return [shlex.split(line.split("  #")[0]) for line in block.splitlines() if line.strip()]


@pytest.fixture()
def worked_example(tmp_path, monkeypatch):
    files = _doc_files()
    assert set(files) == {"my_tasks/capitals.yaml", "my_tasks/capitals/lm_eval.yaml", "my_tasks/capitals/dev.jsonl",
                          "my_tasks/capitals/test.jsonl"}
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(argv: list[str], model: Path, data_dir: Path, capsys) -> str:
    argv = [a for a in argv[1:]]  # drop "evalsuite"
    argv = [str(model) if a == "smollm2" else str(data_dir) if a == "../shared/data" else a for a in argv]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, (argv, out, err)
    return out


def test_worked_example_end_to_end(worked_example, tiny_llama_dir, data_dir, capsys):
    commands = {c[1]: c for c in _doc_commands()}
    assert list(commands) == ["tasks", "prompts", "run", "results", "table", "export", "report"]

    listed = _run(commands["tasks"], tiny_llama_dir, data_dir, capsys)
    assert re.search(r"^capitals\s+my-org/capitals/- test, 2-shot \(first_n\), metric acc", listed, re.M)

    prompt = json.loads(_run(commands["prompts"], tiny_llama_dir, data_dir, capsys))
    row = [json.loads(line) for line in (worked_example / "my_tasks/capitals/test.jsonl").read_text().splitlines()][
        prompt["doc_index"]]  # the v1 evaluation order (seed 42) decides which question comes first
    assert prompt["context"] == ("Question: What is the capital of France?\nAnswer: Paris\n\n"
                                 "Question: What is the capital of Japan?\nAnswer: Tokyo\n\n"
                                 f"Question: What is the capital of {row['country']}?\nAnswer:")
    assert prompt["continuations"] == [" " + c for c in row["choices"]]

    _run(commands["run"], tiny_llama_dir, data_dir, capsys)
    from evalsuite.store.parquet_store import ResultsStore

    store = ResultsStore(worked_example / "results")
    scores = store.scores()
    row = scores[(scores["task"] == "capitals") & scores["subtask"].isna()].iloc[0]
    samples = store.samples()
    mine = samples[samples["task"] == "capitals"]
    assert row["status"] == "ok" and row["metric"] == "acc" and row["n"] == 5 and row["n_total"] == 5
    assert len(mine) == 5 and sorted(mine["gold"]) == sorted(["1", "0", "2", "0", "1"])
    # the stored value is the mean of the per-document values, each 1 when the pick is the gold
    assert row["value"] == pytest.approx(mine["value"].mean())
    assert all((mine["prediction"] == mine["gold"]) == (mine["value"] == 1.0))
    value = 100 * row["value"]

    results = _run(commands["results"], tiny_llama_dir, data_dir, capsys)
    header = results.splitlines()[0].split()
    assert header[-2:] == ["Capitals", "H6"] and header[1:7] == ["ARC", "HellaSwag", "MMLU", "TruthfulQA", "Winogrande", "GSM8K"]
    assert f"{value:.2f}" in results.splitlines()[2]

    table = _run(commands["table"], tiny_llama_dir, data_dir, capsys)
    assert table.splitlines()[0].endswith("| GSM8K | Capitals |")
    assert f"{value:.2f}" in table.splitlines()[2].split("|")[-2]

    _run(commands["export"], tiny_llama_dir, data_dir, capsys)
    folder = next((worked_example / "exports").iterdir())
    exported = json.loads((folder / "results.json").read_text())
    assert exported["results"]["capitals"]["acc"] == pytest.approx(row["value"])
    assert exported["n-shot"]["capitals"] == 2 and "arc_challenge" in exported["results"]
    rows = list(csv.DictReader((folder / "scores.csv").open()))
    assert [r["lm_eval_task"] for r in rows if r["task"] == "capitals"] == ["capitals"]
    card = (folder / "model-index.yaml").read_text()
    assert "name: Capitals" in card and "type: my-org/capitals" in card

    _run(commands["report"], tiny_llama_dir, data_dir, capsys)
    html = (worked_example / "report.html").read_text()
    assert "<th>Capitals</th>" in html or ">Capitals<" in html
    assert "What is the capital of Peru?" in html  # the sample browser shows the task's documents


def test_task_dir_from_environment(worked_example, monkeypatch):
    from evalsuite.tasks import available_tasks, load_spec

    assert "capitals" not in available_tasks()
    monkeypatch.setenv("EVALSUITE_TASK_DIR", str(worked_example / "my_tasks"))
    assert "capitals" in available_tasks()
    spec = load_spec("capitals")
    assert not spec.builtin and spec.lm_eval_config_path == worked_example / "my_tasks" / "capitals" / "lm_eval.yaml"


def test_user_task_files_are_checked(worked_example, capsys):
    """A built-in name, a missing field, a name unlike its file, an unknown scorer: one line each, exit 2."""
    folder = worked_example / "my_tasks"
    good = (folder / "capitals.yaml").read_text()
    cases = {
        "arc.yaml": ("name: arc\n", "task 'arc' is built in"),
        "capitals.yaml": (good.replace("eval_split: test\n", ""), "field 'eval_split' is missing"),
        "other.yaml": (good, "field 'name' is 'capitals' but the file is other.yaml"),
        "mine.yaml": (good.replace("name: capitals", "name: mine") + "scorer: f1\n", "scorer 'f1' is not registered"),
    }
    for name, (body, expected) in cases.items():
        backup = {p: p.read_text() for p in folder.glob("*.yaml")}
        (folder / name).write_text(body)
        code = main(["prompts", "--task", name.removesuffix(".yaml"), "--task-dir", str(folder), "--limit", "1"])
        err = capsys.readouterr().err
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, (name, err)
        for p in folder.glob("*.yaml"):
            p.unlink()
        for p, text in backup.items():
            p.write_text(text)
    assert main(["prompts", "--task", "capitals", "--task-dir", str(folder / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
