"""The catalogue: every fact about a task comes from its YAML (tasks/*.yaml), read without lm-eval."""
from __future__ import annotations

import pytest

from evalsuite.errors import EvalsuiteError, UnknownTaskError
from evalsuite.tasks import catalogue
from evalsuite.tasks.scorers import SCORERS

#: How the leaderboard's harness (b281b09) and SOLAR's model card name the six (the table that
#: lived in exports.py before the task YAMLs declared it): harness, leaderboard key, version,
#: shots, metric, card metric name, card dataset name, card dataset type, config, split.
V1 = {
    "arc": ("arc_challenge", "arc:challenge", 0, 25, "acc_norm", "normalized accuracy",
            "AI2 Reasoning Challenge (25-Shot)", "ai2_arc", "ARC-Challenge", "test"),
    "hellaswag": ("hellaswag", "hellaswag", 0, 10, "acc_norm", "normalized accuracy", "HellaSwag (10-Shot)",
                  "hellaswag", None, "validation"),
    "mmlu": ("hendrycksTest", "hendrycksTest", 1, 5, "acc", "accuracy", "MMLU (5-Shot)", "cais/mmlu", "all", "test"),
    "truthfulqa": ("truthfulqa_mc", "truthfulqa:mc", 1, 0, "mc2", None, "TruthfulQA (0-shot)", "truthful_qa",
                   "multiple_choice", "validation"),
    "winogrande": ("winogrande", "winogrande", 0, 5, "acc", "accuracy", "Winogrande (5-shot)", "winogrande",
                   "winogrande_xl", "validation"),
    "gsm8k": ("gsm8k", "gsm8k", 0, 5, "acc", "accuracy", "GSM8k (5-shot)", "gsm8k", "main", "test"),
}


@pytest.mark.parametrize("task", sorted(V1))
def test_export_names_come_from_the_yaml(task):
    from evalsuite.outputs.exports import v1_task

    v1 = v1_task(task)
    got = (v1.harness, v1.leaderboard, v1.version, v1.shots, v1.metric, v1.metric_name, v1.card_name, v1.dataset,
           v1.config, v1.split)
    assert got == V1[task]
    assert v1.grouped == (task == "mmlu")


def test_the_suite_declares_columns_and_h6():
    suite = catalogue.load_suite()
    assert suite.tasks == ("arc", "hellaswag", "mmlu", "truthfulqa", "winogrande", "gsm8k")
    assert (suite.score_key, suite.score_label) == ("h6", "H6")
    from evalsuite.analysis.leaderboard import LeaderboardRow, columns

    assert list(columns().values()) == ["ARC", "HellaSwag", "MMLU", "TruthfulQA", "Winogrande", "GSM8K"]
    row = LeaderboardRow("m", "r", scores={"arc": 50.0, "mmlu": 30.0, "capitals": 90.0})
    assert row.h6 == 40.0 and not row.complete  # a task outside the suite is a column, never part of H6
    assert list(columns([row]))[-1] == "capitals"


def test_scorers_and_grouping_are_declared():
    specs = {name: catalogue.load_spec(name) for name in catalogue.available_tasks()}
    assert {n: s.scorer for n, s in specs.items()} == {
        "arc": "acc_norm", "hellaswag": "acc_norm", "mmlu": "acc", "truthfulqa": "mc2", "winogrande": "acc",
        "gsm8k": "gsm8k_v1_strict"}
    assert all(s.scorer in SCORERS for s in specs.values())
    assert [n for n, s in specs.items() if s.is_generation] == ["gsm8k"]
    assert [n for n, s in specs.items() if s.macro_averaged] == ["mmlu"]
    assert all(s.contamination_text for s in specs.values())


def test_grouping_has_one_answer_for_compare_and_report():
    import pandas as pd

    from evalsuite.analysis.paired_stats import grouped_task

    rows = pd.DataFrame({"task": ["mmlu", "mmlu", "x", "x"], "subtask": ["a", "b", "s1", "s2"]})
    assert grouped_task("mmlu", rows) and not grouped_task("arc", rows)
    assert grouped_task("x", rows)  # a stored task no file defines: grouped when its rows have subjects


@pytest.mark.parametrize("name", ["../tasks/arc", "arc/../arc", "/etc/passwd", "ARC", "arc ", "a" * 300])
def test_hostile_task_names_are_unknown(name):
    with pytest.raises(UnknownTaskError) as exc:
        catalogue.load_spec(name)
    assert len(str(exc.value)) < 400 and "\n" not in str(exc.value)


def test_a_broken_user_yaml_is_one_line(tmp_path):
    (tmp_path / "mine.yaml").write_text("name: mine\ntitle: [unclosed\n")
    catalogue.use_task_dir(tmp_path)
    with pytest.raises(EvalsuiteError, match=r"mine\.yaml line \d+: not valid YAML"):
        catalogue.load_spec("mine")
    (tmp_path / "mine.yaml").write_text("- a list\n")
    with pytest.raises(EvalsuiteError, match="a task file is a YAML mapping"):
        catalogue.load_spec("mine")


def test_contamination_text_is_sandboxed(tmp_path):
    from evalsuite.run.contamination import document_text

    good = (catalogue.builtin_tasks_dir() / "gsm8k.yaml").read_text()
    body = good.replace("name: gsm8k", "name: mine").replace(
        'contamination_text: "{{ question }} {{ answer }}"', "contamination_text: \"{{ ''.__class__ }}\"")
    (tmp_path / "mine.yaml").write_text(body)
    catalogue.use_task_dir(tmp_path)
    assert document_text("gsm8k", {"question": "Q?", "answer": "#### 4"}) == "Q? #### 4"
    with pytest.raises(EvalsuiteError, match=r"mine\.yaml: contamination_text cannot be used"):
        document_text("mine", {"question": "Q?", "answer": "4"})
