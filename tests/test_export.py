"""``evalsuite export``: lm-eval results.json, the model-card model-index and CSV, read back by their tools.

The store holds real evaluations of a tiny real model on all six tasks (one document each, 57
for MMLU), run twice under different tags, so run references resolve to different runs.
"""
from __future__ import annotations

import io
import json

import pandas as pd
import pytest
import yaml

SIX = ["arc", "hellaswag", "mmlu", "truthfulqa", "winogrande", "gsm8k"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_llama_dir, data_dir):
    import evalsuite

    root = tmp_path_factory.mktemp("export") / "results"
    first = evalsuite.evaluate(models=[str(tiny_llama_dir)], tasks="leaderboard", limit=1, data_dir=data_dir,
                               results_dir=root, progress=False, tag="first")
    second = evalsuite.evaluate(models=[str(tiny_llama_dir)], tasks="arc,winogrande", limit=2, data_dir=data_dir,
                                results_dir=root, progress=False, tag="second")
    return {"root": root, "first": first, "second": second, "model": tiny_llama_dir.name}


def _task_rows(store, run):
    scores = run.scores()
    return scores[scores["subtask"].isna()].set_index("task")


def test_run_references(store):
    from evalsuite.outputs.exports import load_run

    root, first, second = store["root"], store["first"], store["second"]
    assert load_run("latest", root).run_id == second.run_id
    assert load_run(store["model"], root).run_id == second.run_id
    assert load_run("tag:first", root).run_id == first.run_id
    assert load_run(first.run_id, root).run_id == first.run_id
    assert load_run(f"{first.run_id}@{store['model']}", root).model == store["model"]


def test_lm_eval_results_read_by_lm_eval(store, tmp_path):
    from lm_eval.utils import make_table

    from evalsuite.cli import main

    args = ["export", "tag:first", "--results-dir", str(store["root"]), "--out", str(tmp_path)]
    assert main(args) == 2 and not list(tmp_path.iterdir())  # all three: the model-index refuses a limited run
    assert main([*args, "--format", "lm-eval"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    rows = _task_rows(store, store["first"])
    names = {"arc": "arc_challenge", "hellaswag": "hellaswag", "truthfulqa": "truthfulqa_mc",
             "winogrande": "winogrande", "gsm8k": "gsm8k"}
    for task, key in names.items():
        metric = rows.loc[task, "metric"]
        assert results["results"][key][metric] == pytest.approx(rows.loc[task, "value"])
        assert results["n-shot"][key] == {"arc": 25, "hellaswag": 10, "truthfulqa": 0}.get(task, 5)
    subjects = [k for k in results["results"] if k.startswith("hendrycksTest-")]
    assert len(subjects) == 57 and results["versions"][subjects[0]] == 1
    mmlu = sum(results["results"][k]["acc"] for k in subjects) / 57
    assert mmlu == pytest.approx(rows.loc["mmlu", "value"])  # the MMLU column is the plain mean
    assert results["evalsuite"]["leaderboard"]["mmlu"] == pytest.approx(100 * rows.loc["mmlu", "value"], abs=1e-3)
    # lm-eval's own table renderer reads it: every task, its metric and value
    table = make_table(results)
    cells = next([c.strip() for c in ln.split("|")] for ln in table.splitlines() if ln.startswith("|arc_challenge"))
    assert cells[5] == "acc_norm" and float(cells[7]) == pytest.approx(rows.loc["arc", "value"], abs=1e-4)
    assert table.count("|hendrycksTest-") == 57 and "|truthfulqa_mc" in table and "mc2" in table


def test_leaderboard_naming_read_like_the_leaderboard(store):
    """The leaderboard's read_evals: per column, the mean of its metric over keys containing the benchmark."""
    from evalsuite.outputs.exports import lm_eval_results, load_run

    results = lm_eval_results(load_run("tag:first", store["root"]), naming="leaderboard")["results"]
    assert "harness|arc:challenge|25" in results and "harness|truthfulqa:mc|0" in results
    columns = {"arc": ("arc:challenge", "acc_norm"), "hellaswag": ("hellaswag", "acc_norm"),
               "mmlu": ("hendrycksTest", "acc"), "truthfulqa": ("truthfulqa:mc", "mc2"),
               "winogrande": ("winogrande", "acc"), "gsm8k": ("gsm8k", "acc")}
    rows = _task_rows(store, store["first"])
    for task, (benchmark, metric) in columns.items():
        values = [v[metric] for k, v in results.items() if benchmark in k]
        assert sum(values) / len(values) == pytest.approx(rows.loc[task, "value"]), task


def test_model_index_read_by_yaml_and_huggingface_hub(store, tmp_path):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    from evalsuite.cli import main

    args = ["export", "tag:first", "--results-dir", str(store["root"]), "--out", str(tmp_path), "--format",
            "model-index", "--name", "tiny-dus"]
    assert main(args) == 2  # a limited run is not a leaderboard result
    assert main([*args, "--allow-limited"]) == 0
    text = (tmp_path / "model-index.yaml").read_text()
    index = yaml.safe_load(text)["model-index"]
    name, results = model_index_to_eval_results(index)
    assert name == "tiny-dus" and len(results) == 6
    by_type = {r.dataset_type: r for r in results}
    assert set(by_type) == {"ai2_arc", "hellaswag", "cais/mmlu", "truthful_qa", "winogrande", "gsm8k"}
    rows = _task_rows(store, store["first"])
    arc = by_type["ai2_arc"]
    assert (arc.dataset_config, arc.dataset_split, arc.dataset_args, arc.metric_type) == \
        ("ARC-Challenge", "test", {"num_few_shot": 25}, "acc_norm")
    assert arc.metric_value == pytest.approx(round(100 * rows.loc["arc", "value"], 2))
    assert "n = 1 of 1172 documents" in arc.metric_name and "evalsuite" in arc.source_name
    assert by_type["truthful_qa"].metric_type == "mc2" and by_type["truthful_qa"].dataset_args == {"num_few_shot": 0}
    card = ModelCard(f"---\n{text}---\n\n# tiny-dus\n")
    assert len(card.data.eval_results) == 6 and card.data.model_name == "tiny-dus"


def test_csv(store, tmp_path):
    from evalsuite.outputs.exports import load_run, scores_csv

    frame = pd.read_csv(io.StringIO(scores_csv(load_run("tag:first", store["root"]))))
    tasks = frame[frame["subtask"].isna() & (frame["task"] != "h6")].set_index("task")
    rows = _task_rows(store, store["first"])
    assert set(tasks.index) == set(SIX)
    for task in SIX:
        assert tasks.loc[task, "score"] == pytest.approx(100 * rows.loc[task, "value"], abs=1e-4)
    assert (frame["lm_eval_task"].str.startswith("hendrycksTest-", na=False)).sum() == 57
    h6 = frame[frame["task"] == "h6"].iloc[0]
    assert h6["score"] == pytest.approx(100 * rows.loc[SIX, "value"].mean(), abs=1e-3) and h6["status"] == "ok"
    incomplete = pd.read_csv(io.StringIO(scores_csv(load_run("tag:second", store["root"]))))
    assert incomplete[incomplete["task"] == "h6"].iloc[0]["status"] == "incomplete"


def test_export_errors_are_one_line(store, capsys, tmp_path):
    from evalsuite.cli import main

    assert main(["export", "tag:nope", "--results-dir", str(store["root"]), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no finished run tagged 'nope'") and len(err.strip().splitlines()) == 1
    assert main(["export", "--results-dir", str(tmp_path / "empty")]) == 2
