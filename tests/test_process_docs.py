"""A task's ``process_docs`` on real rows (HellaSwag's preprocessing through lm-eval), and a task
without one keeps its rows as stored."""
from __future__ import annotations


from evalsuite import tasks


# ---------------------------------------------------------------------------- process_docs
def _hellaswag_process_docs():
    from evalsuite import compat

    spec = tasks.load_spec("hellaswag")
    config = compat.load_lm_eval_yaml(tasks.lm_eval_tasks_root() / spec.lm_eval_config)
    return spec, config["process_docs"]


def test_hellaswag_process_docs_on_real_rows(data_dir):
    """lm-eval's HellaSwag preprocessing through evalsuite's row-list path, on real validation rows:
    the WikiHow brackets become sentences, and the result equals lm-eval's own datasets path."""
    import datasets

    from evalsuite.tasks.data import load_split, process_rows

    spec, process = _hellaswag_process_docs()
    rows = load_split(spec.dataset, spec.eval_split, data_dir).rows
    picked = [rows[0], rows[3243], rows[1]]
    assert picked[1]["source_id"] == "wikihow~4"  # the data this test was written against
    docs = process_rows(process, picked)
    assert docs[0]["query"] == "Roof shingle removal: A man is sitting on a roof. He"
    assert docs[0]["choices"][3] == "starts pulling up roofing on a roof." and docs[0]["gold"] == 3
    assert docs[1]["query"] == ("Personal Care and Style: How to become a fashion consultant. Obtain your high school "
                                "diploma or ged. This job requires a high school diploma or equivalent, so make sure "
                                "to apply yourself and finish school. If your high school offers these classes, take "
                                "art, design, and sewing to familiarize yourself with foundational concepts in fashion.")
    # "[title]" at the very start has no leading space to turn into ". ": it is dropped, its space stays
    assert docs[1]["choices"][3] == (" Earn a bachelor's degree in a fashion-related field. Degrees for the fashion "
                                     "industry include art, fashion merchandising, and marketing.")
    assert all(set(d) >= {"query", "choices", "gold"} and "ctx_a" in d for d in docs)  # map keeps the raw fields
    through_arrow = process(datasets.Dataset.from_list(picked)).to_list()
    assert [(d["query"], d["choices"], d["gold"]) for d in docs] == [
        (d["query"], d["choices"], d["gold"]) for d in through_arrow]


def test_a_task_without_process_docs_keeps_its_rows(data_dir):
    from evalsuite import compat
    from evalsuite.tasks.data import load_split, process_rows

    spec = tasks.load_spec("arc")
    config = compat.load_lm_eval_yaml(tasks.lm_eval_tasks_root() / spec.lm_eval_config)
    assert config.get("process_docs") is None
    rows = load_split(spec.dataset, spec.eval_split, data_dir).rows[:3]
    assert process_rows(None, rows) == rows and process_rows(_hellaswag_process_docs()[1], []) == []
