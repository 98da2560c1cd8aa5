"""Parity with the leaderboard v1 protocol, on the real data.

The expected requests here are built from ``shared/docs/leaderboard-v1.md`` alone (plain
string formatting and the seed-42 recipe), independently of lm-eval and of evalsuite's task
code, and compared with what evalsuite sends to the model.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from evalsuite.tasks import LoadedTask, expand_tasks, load_spec

def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def v1_stream(n_eval: int, n_train: int, k: int, draw: bool = True):
    rnd = random.Random()
    rnd.seed(42)
    order = list(range(n_eval))
    rnd.shuffle(order)
    shots = {i: (rnd.sample(range(n_train), k) if draw and k else list(range(k))) for i in order}
    return order, shots


def join(shots: list[str], query: str, description: str = "") -> str:
    return description + "".join(s + "\n\n" for s in shots) + query


def prompts(task: str, data_dir: Path, limit: int):
    return LoadedTask(load_spec(task), data_dir).prompts(limit)


# -- the first documents and their shots, as the v1 recipe picks them ------------------------
def test_v1_stream_first_documents_and_shots():
    from evalsuite.tasks.fewshot import v1_schedule

    arc = v1_schedule(1172, 1119, 25)
    assert arc.order[:3] == (595, 716, 511)
    assert arc.shots[595][:5] == (888, 201, 205, 908, 340)
    assert arc.shots[716][:5] == (293, 475, 944, 520, 941)
    wino = v1_schedule(1267, 40398, 5)
    assert wino.order[:2] == (187, 719)
    assert wino.shots[187] == (5906, 19340, 21411, 27230, 11510)
    gsm = v1_schedule(1319, 7473, 5)
    assert gsm.order[:3] == (588, 1214, 57)
    assert gsm.shots[588] == (7268, 4403, 1111, 3183, 3716)
    # a limited run is an exact prefix of the full run, shots included
    assert all(len(arc.shots[i]) == 25 for i in arc.order)


def test_arc_requests_match_protocol(data_dir):
    root = data_dir / "allenai__ai2_arc" / "ARC-Challenge"
    test, train = read_jsonl(root / "test.jsonl"), read_jsonl(root / "train.jsonl")
    order, shots = v1_stream(len(test), len(train), 25)

    def gold(doc):
        return doc["choices"]["label"].index(doc["answerKey"])

    def text(doc):
        return "Question: " + doc["question"] + "\nAnswer:"

    got = prompts("arc", data_dir, 4)
    assert [p.doc_index for p in got] == order[:4]
    for position, p in enumerate(got):
        doc = test[order[position]]
        shot_strs = [text(train[j]) + " " + train[j]["choices"]["text"][gold(train[j])] for j in shots[order[position]]]
        assert p.eval_position == position
        assert p.contexts == (join(shot_strs, text(doc)),)
        assert p.continuations == tuple(" " + c for c in doc["choices"]["text"])
        assert p.gold == str(gold(doc))
        assert not p.contexts[0].startswith("\n")


def test_arc_numeric_answer_keys_map_to_positions(data_dir):
    task = LoadedTask(load_spec("arc"), data_dir)
    numeric = [p for p in task.prompts() if p.doc["answerKey"].isdigit()]
    assert numeric, "ARC-Challenge test has rows with answer keys 1-4"
    for p in numeric[:5]:
        assert p.gold == str(int(p.doc["answerKey"]) - 1)


def test_mmlu_requests_match_protocol(data_dir):
    root = data_dir / "cais__mmlu" / "all"
    test, dev = read_jsonl(root / "test.jsonl"), read_jsonl(root / "dev.jsonl")
    subjects = sorted({r["subject"] for r in test})
    assert len(subjects) == 57

    def text(doc):
        letters = "".join(f"{l}. {c}\n" for l, c in zip("ABCD", doc["choices"]))
        return doc["question"].strip() + "\n" + letters + "Answer:"

    got = prompts("mmlu", data_dir, 2)
    assert len(got) == 2 * 57
    by_subject = {}
    for p in got:
        by_subject.setdefault(p.subtask, []).append(p)
    assert sorted(by_subject) == subjects
    for subject in ("abstract_algebra", "high_school_us_history", "world_religions"):
        rows = [i for i, r in enumerate(test) if r["subject"] == subject]
        shots = [r for r in dev if r["subject"] == subject][:5]
        order, _ = v1_stream(len(rows), 5, 5, draw=False)
        description = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        shot_strs = [text(s) + " " + "ABCD"[s["answer"]] for s in shots]
        for position, p in enumerate(by_subject[subject]):
            doc = test[rows[order[position]]]
            assert p.doc_index == rows[order[position]]
            assert p.contexts == (join(shot_strs, text(doc), description),)
            assert p.continuations == (" A", " B", " C", " D")
            assert p.gold == str(doc["answer"])


QA_PROMPT = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


def test_truthfulqa_requests_match_protocol(data_dir):
    rows = read_jsonl(data_dir / "truthful_qa" / "multiple_choice" / "validation.jsonl")
    order, _ = v1_stream(len(rows), 0, 0)
    got = prompts("truthfulqa", data_dir, 3)
    for position, p in enumerate(got):
        doc = rows[order[position]]
        assert p.doc_index == order[position]
        assert p.contexts == (QA_PROMPT + "\n\nQ: " + doc["question"] + "\nA:",)
        assert p.continuations == tuple(" " + c for c in doc["mc2_targets"]["choices"])


def test_winogrande_partial_evaluation_matches_protocol(data_dir):
    root = data_dir / "winogrande" / "winogrande_xl"
    val, train = read_jsonl(root / "validation.jsonl"), read_jsonl(root / "train.jsonl")
    order, shots = v1_stream(len(val), len(train), 5)

    def shot(doc):
        i = doc["sentence"].index("_")
        option = doc["option" + doc["answer"]]
        return doc["sentence"][:i] + option + " " + doc["sentence"][i + 1:].strip()

    got = prompts("winogrande", data_dir, 3)
    for position, p in enumerate(got):
        doc = val[order[position]]
        i = doc["sentence"].index("_")
        prefix = "".join(shot(train[j]) + "\n\n" for j in shots[order[position]])
        assert p.contexts == (prefix + doc["sentence"][:i] + doc["option1"], prefix + doc["sentence"][:i] + doc["option2"])
        assert p.continuations == (" " + doc["sentence"][i + 1:].strip(),)
        assert p.gold == str(int(doc["answer"]) - 1)
        assert p.to_json()["contexts"] == list(p.contexts)


def test_gsm8k_requests_match_protocol(data_dir):
    root = data_dir / "gsm8k" / "main"
    test, train = read_jsonl(root / "test.jsonl"), read_jsonl(root / "train.jsonl")
    order, shots = v1_stream(len(test), len(train), 5)
    got = prompts("gsm8k", data_dir, 3)
    for position, p in enumerate(got):
        doc = test[order[position]]
        shot_strs = ["Question: " + train[j]["question"] + "\nAnswer: " + train[j]["answer"] for j in shots[order[position]]]
        assert p.contexts == (join(shot_strs, "Question: " + doc["question"] + "\nAnswer:"),)
        assert p.until == (":", "Question:", "Question")
        assert p.instances[0].args[1]["max_gen_toks"] == 256
        assert p.instances[0].args[1]["do_sample"] is False
        assert p.gold == re.search(r"#### (\-?[0-9\.\,]+)", doc["answer"]).group(1).replace(",", "")


def read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def hellaswag_preprocess(text: str) -> str:
    """leaderboard-v1.md: strip, " [title]" -> ". ", delete ``\\[.*?\\]``, "  " -> " "."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_query(doc: dict) -> str:
    return hellaswag_preprocess(doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize())


@pytest.fixture(scope="module")
def hellaswag_rows(data_dir):
    root = data_dir / "Rowan__hellaswag" / "default"
    return read_parquet(root / "validation.parquet"), read_parquet(root / "train.parquet")


def test_hellaswag_requests_match_protocol(data_dir, hellaswag_rows):
    """HellaSwag on the real files: 10 shots per document drawn from train by the v1 stream.

    The train file in shared/data is rebuilt (its README): in some WikiHow rows one "." that
    v1 would print is missing. The expected prompts here come from the same rows, so this checks
    the protocol on these files; prompts built from the Hub's raw train file may differ from
    them by that "." in a WikiHow shot (which rows are drawn does not change).
    """
    val, train = hellaswag_rows
    assert (len(val), len(train)) == (10042, 39905)
    order, shots = v1_stream(len(val), len(train), 10)
    # the first documents and the training rows the v1 stream draws for them
    assert order[:3] == [9792, 1027, 5366]
    assert shots[9792] == [3656, 36651, 3421, 19327, 24999, 26324, 6280, 26942, 15277, 39293]
    assert shots[1027] == [695, 29714, 25160, 30422, 28056, 6637, 22257, 1702, 29758, 33896]

    task = LoadedTask(load_spec("hellaswag"), data_dir)
    schedule = task.units[0].schedule
    assert list(schedule.order) == order
    assert all(list(schedule.shots[i]) == shots[i] for i in order[:200])

    limit = 6
    got = task.prompts(limit)
    assert [p.doc_index for p in got] == order[:limit]
    for position, p in enumerate(got):
        doc = val[order[position]]
        shot_strs = [hellaswag_query(train[j]) + " " + hellaswag_preprocess(train[j]["endings"][int(train[j]["label"])])
                     for j in shots[order[position]]]
        assert p.eval_position == position
        assert p.contexts == (join(shot_strs, hellaswag_query(doc)),)
        assert p.continuations == tuple(" " + hellaswag_preprocess(e) for e in doc["endings"])
        assert p.gold == doc["label"]
    # a WikiHow document: brackets gone, " [title]" became ". "
    first = got[0]
    assert "[" not in first.contexts[0] and "How to increase breast size with a bra. Check your bra size." in first.contexts[0]
    # only the training rows these documents draw were processed, not all 39,905
    assert task.units[0].pool.n_processed == len({j for i in order[:limit] for j in shots[i]})
    assert task.data_files == {
        str(data_dir / "Rowan__hellaswag" / "default" / "validation.parquet"): sha256_of(data_dir / "Rowan__hellaswag" / "default" / "validation.parquet"),
        str(data_dir / "Rowan__hellaswag" / "default" / "train.parquet"): sha256_of(data_dir / "Rowan__hellaswag" / "default" / "train.parquet"),
    }


def sha256_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_hellaswag_fast_processing_equals_lm_eval_datasets_path(hellaswag_rows):
    """evalsuite runs lm-eval's own ``process_docs`` over plain rows; it must give exactly what
    lm-eval gets through ``datasets.Dataset.map``, on real rows of both splits."""
    import datasets
    from evalsuite.compat import load_lm_eval_yaml

    from evalsuite.tasks.data import process_rows
    from evalsuite.tasks import lm_eval_tasks_root

    process = load_lm_eval_yaml(lm_eval_tasks_root() / load_spec("hellaswag").lm_eval_config)["process_docs"]
    val, train = hellaswag_rows
    for rows in (val[:1500], train[:1000] + train[-1000:]):
        assert process_rows(process, rows) == [dict(d) for d in process(datasets.Dataset.from_list(rows))]


def test_limited_run_is_prefix_of_full_run(data_dir):
    task = LoadedTask(load_spec("winogrande"), data_dir)
    full = task.prompts()
    short = task.prompts(7)
    assert [p.to_json() for p in short] == [p.to_json() for p in full[:7]]
    assert len(full) == 1267


def test_leaderboard_suite_expands_to_six_tasks_in_column_order():
    assert expand_tasks(["leaderboard"]) == ["arc", "hellaswag", "mmlu", "truthfulqa", "winogrande", "gsm8k"]
    assert expand_tasks("arc,leaderboard") == ["arc", "hellaswag", "mmlu", "truthfulqa", "winogrande", "gsm8k"]


@pytest.mark.parametrize("task,expected", [("arc", "acc_norm"), ("hellaswag", "acc_norm"), ("mmlu", "acc"),
                                           ("truthfulqa", "mc2"), ("winogrande", "acc"), ("gsm8k", "acc")])
def test_v1_metrics(task, expected):
    assert load_spec(task).metric == expected
