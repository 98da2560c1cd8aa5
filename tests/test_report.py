"""The HTML report and the paper tables, on a real results store of two tiny real models.

The report is opened in headless Chromium through Selenium and chromedriver (the Debian
``chromium`` and ``chromium-driver`` packages): rows, charts and the sample browser must be in
the DOM, the screenshot must not be blank, sorting and the disagreement filter must work and
the console must stay free of errors. A missing browser is a failure, not a skip: a report
nobody has seen render is not tested.
"""
from __future__ import annotations

import io
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from conftest import build_tiny_llama, chromium_driver

TASKS = ["arc", "truthfulqa", "winogrande"]
LIMIT = 3


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, tiny_llama_dir, tiny_tokenizer, data_dir) -> Path:
    """Two tiny real models (different seeds) evaluated on three tasks, plus MMLU subject rows.

    A real MMLU run of 57 subjects costs minutes on a shared CPU, so the per-subject score rows
    the heatmap reads are written directly into the same store for the two real runs (values
    from a seeded generator, clearly not model output); everything else is real evaluation.
    """
    import numpy as np

    import evalsuite
    from evalsuite.store.parquet_store import ResultsStore

    other = build_tiny_llama(tiny_tokenizer, tmp_path_factory.mktemp("tiny-llama-b"), seed=1)
    root = tmp_path_factory.mktemp("report") / "results"
    result = evalsuite.evaluate(models=[str(tiny_llama_dir), str(other)], tasks=TASKS, limit=LIMIT,
                                data_dir=data_dir, backend="lm-eval-hf", results_dir=root, progress=False)
    store = ResultsStore(root)
    rng = np.random.default_rng(0)
    subjects = [f"subject_{i:02d}" for i in range(57)]
    for model in result.models:
        rows = [{"run_id": result.run_id, "model": model, "task": "mmlu", "subtask": s, "metric": "acc",
                 "value": float(rng.uniform(0.1, 0.6)), "stderr": 0.1, "n": 2, "n_total": 100, "status": "ok",
                 "error": None} for s in subjects]
        store.write_scores(result.run_id, model, "mmlu", rows)
    return root


@pytest.fixture(scope="module")
def models(store_dir) -> list[str]:
    from evalsuite.store.run_views import latest_runs

    return [view.model for view in latest_runs(store_dir)]


@pytest.fixture(scope="module")
def report_path(store_dir, tmp_path_factory) -> Path:
    from evalsuite.cli import main

    out = tmp_path_factory.mktemp("html") / "report.html"
    assert main(["report", "--results-dir", str(store_dir), "--out", str(out)]) == 0
    return out



def _column(driver, index: int) -> list[str]:
    rows = driver.find_elements("css selector", "#leaderboard tbody tr")
    return [r.find_elements("css selector", "td")[index].get_attribute("data-sort") for r in rows]


def _numbers(keys: list[str]) -> list[float]:
    return [float(k) for k in keys if k]


@pytest.mark.slow
def test_report_renders_sorts_and_filters_in_chromium(report_path, models, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    driver = chromium_driver(tmp_path)
    try:
        driver.get(report_path.resolve().as_uri())
        ours = driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr.ours")
        published = driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr.published")
        assert sorted(r.get_attribute("data-model") for r in ours) == sorted(models)
        assert len(published) == 15 and "SOLAR paper" in published[0].text
        # charts: the overall one, one per task (MMLU included), the heatmap, the differences
        for chart in ["chart-overall", *(f"chart-{t}" for t in [*TASKS, "mmlu"]), "mmlu-heatmap", "chart-deltas"]:
            svg = driver.find_elements(By.CSS_SELECTOR, f"#{chart} svg")
            assert svg and svg[0].size["height"] > 50, f"{chart} has no rendered SVG"
        assert len(driver.find_elements(By.CSS_SELECTOR, "#mmlu-heatmap svg text")) > 57
        docs = driver.find_elements(By.CSS_SELECTOR, ".doc")
        assert len(docs) == LIMIT * len(TASKS)
        assert docs[0].find_elements(By.CSS_SELECTOR, "details pre")  # the collapsible prompt

        # sorting: H6 (column 1) descending, then ascending; the model column alphabetically
        header = driver.find_elements(By.CSS_SELECTOR, "#leaderboard thead th")
        before = _column(driver, 1)
        header[1].click()
        after = _numbers(_column(driver, 1))
        assert after == sorted(after, reverse=True) and _column(driver, 1) != before
        assert header[1].get_attribute("aria-sort") == "descending"
        header[1].click()
        assert _numbers(_column(driver, 1)) == sorted(after)
        header[0].click()
        names = [n.lower() for n in _column(driver, 0)]
        assert names == sorted(names)

        # the disagreement filter hides exactly the documents where the models agree
        disagree = len(driver.find_elements(By.CSS_SELECTOR, ".doc.disagree"))
        driver.find_element(By.ID, "only-disagreements").click()
        visible = [d for d in driver.find_elements(By.CSS_SELECTOR, ".doc") if d.is_displayed()]
        assert len(visible) == disagree
        assert f"{disagree} of {len(docs)}" in driver.find_element(By.ID, "sample-count").text

        png = driver.get_screenshot_as_png()
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    finally:
        driver.quit()
    assert not errors, f"browser console errors: {errors}"
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert image.size[0] >= 1000 and colours is not None and len(colours) > 50, "screenshot looks blank"


@pytest.mark.slow
def test_report_explains_its_numbers_in_chromium(report_path, store_dir, tmp_path):
    """What the page shows, read from the rendered DOM: each pick is the largest of the numbers
    shown for it (acc_norm's per-character values, mc2's probability shares), Winogrande's
    options are whole sentences differing only in the marked part, every interval has width
    (0 of 3 included) and H6 has one, no difference on 3 documents is coloured significant,
    and neither local paths nor microseconds appear."""
    from selenium.webdriver.common.by import By

    driver = chromium_driver(tmp_path)
    try:
        driver.get(report_path.resolve().as_uri())
        checked = {}
        for table in driver.find_elements(By.CSS_SELECTOR, "table.choices"):
            metric = table.get_attribute("data-metric")
            rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
            cells = [r.find_elements(By.CSS_SELECTOR, "td[data-decider]") for r in rows]
            cells = [c for c in cells if c]
            for column in range(len(cells[0])):
                values = [float(c[column].get_attribute("data-decider")) for c in cells]
                picked = [i for i, c in enumerate(cells) if "pick" in c[column].get_attribute("class").split()]
                assert len(picked) == 1 and values[picked[0]] == max(values), (metric, values, picked)
                shown = cells[picked[0]][column].text.split()[0]  # the number on the page is that value
                assert abs(float(shown) - values[picked[0]]) < 1e-2
            checked[metric] = checked.get(metric, 0) + 1
        assert set(checked) == {"acc", "acc_norm", "mc2"}  # Winogrande, ARC, TruthfulQA

        for doc in driver.find_elements(By.CSS_SELECTOR, ".doc[data-task=winogrande]"):
            options = doc.find_elements(By.CSS_SELECTOR, "td.choice")
            marks = [o.find_element(By.TAG_NAME, "mark").text for o in options]
            texts = [o.text.split(": ", 1)[1].removesuffix(" gold") for o in options]
            assert len(set(marks)) == len(options) and all(m.strip() for m in marks)
            rest = {re.sub(r"<[^>]+>", "", re.sub(r"<mark>.*?</mark>", "\0", o.get_attribute("innerHTML")))
                    .split(": ", 1)[1].removesuffix(" gold") for o in options}
            assert len(rest) == 1  # the options differ only in the marked part
            sentence = texts[0]
            assert sentence[0].isupper() and sentence.rstrip()[-1] in ".!?\"'"  # whole sentences, not cut

        intervals = [r.find_elements(By.TAG_NAME, "td") for r in
                     driver.find_elements(By.CSS_SELECTOR, "#intervals tbody tr")]
        spans = {}
        for model, task, text in ((c[0].get_attribute("textContent"), c[1].get_attribute("textContent"),
                                   c[2].get_attribute("textContent")) for c in intervals):
            found = re.fullmatch(r"([\d.]+) \[([\d.]+), ([\d.]+)\]", text)
            assert found, (model, task, text)
            value, low, high = map(float, found.groups())
            assert low <= value <= high and high - low > 1, (model, task, text)
            spans[(model, task)] = (value, low, high)
        assert any(t.startswith("H6") for _, t in spans)

        deltas = driver.find_element(By.ID, "chart-deltas").get_attribute("innerHTML")
        assert "#b54a4a" not in deltas and "#4f9a5a" not in deltas  # 3 documents: no test applies
        assert "too few documents" in deltas
        for cell in driver.find_elements(By.CSS_SELECTOR, "#deltas tbody tr td:last-child"):
            assert cell.text in ("too few docs", "no shared documents")

        page = driver.find_element(By.TAG_NAME, "body").get_attribute("textContent")
        for field in driver.find_elements(By.XPATH, "//div[@class='manifest']//tr[th='started' or th='finished']/td"):
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", field.text), field.text
    finally:
        driver.quit()
    assert str(store_dir) not in page and str(store_dir.parent.parent) not in page
    assert not re.search(r"(?<![\w:/.])/(tmp|root|home|Users)/", page)


def test_report_is_self_contained(report_path):
    html = report_path.read_text(encoding="utf-8")
    external = re.findall(r"""(?:src|href|xlink:href)\s*=\s*["']?\s*(?:https?:)?//""", html, flags=re.I)
    assert not external, f"external resource references: {external}"
    assert not re.search(r"<link\b|<script\b[^>]*\bsrc=|@import|url\(\s*['\"]?https?:", html, flags=re.I)
    assert "<svg" in html and "<script>" in html


def test_report_states_partial_results(report_path):
    html = report_path.read_text(encoding="utf-8")
    assert f"n = {LIMIT} of 1172" in html  # ARC, limited
    assert "H6 incomplete" in html and "*" in html  # HellaSwag and GSM8K were not run
    assert "—" in html
    assert "per-task value unconfirmed" in html  # published rows with only H6 confirmed
    assert "Differences against" in html and "95% interval" in html


def test_comparability_warnings(store_dir, models):
    from evalsuite.outputs.report import collect
    from evalsuite.outputs.report.comparability import warnings

    comparison = collect(store_dir)
    assert warnings(comparison) == []  # same run, same settings
    runs = comparison.runs.copy()
    runs.loc[runs["model"] == models[1], "limit"] = 50
    runs.loc[runs["model"] == models[1], "dtype"] = "bfloat16"
    comparison.runs = runs
    samples = comparison.samples.copy()
    samples.loc[(samples["model"] == models[1]) & (samples["task"] == "arc"), "prompt_hash"] = "changed"
    comparison.samples = samples
    text = " ".join(warnings(comparison))
    assert "document limits" in text and "dtypes" in text and "arc" in text and "different prompts" in text


def test_paired_statistics_are_the_ones_compare_uses(store_dir, models):
    from evalsuite.analysis.comparison import compare_runs
    from evalsuite.outputs.report import collect
    from evalsuite.outputs.report.sections import deltas
    from evalsuite.analysis.paired_stats import paired

    n = 200
    base = pd.DataFrame({"task": "arc", "subtask": None, "doc_index": range(n), "value": [0.0] * n,
                         "prompt_hash": "h"})
    better = base.assign(value=[1.0 if i % 2 else 0.0 for i in range(n)])
    same = paired(base, base, "arc", metric="acc_norm", grouped=False)
    assert same.delta == 0 and not same.significant()
    up = paired(base, better, "arc", metric="acc_norm", grouped=False)
    assert up.n == n and math.isclose(up.delta, 50.0) and up.significant() and up.ci_low > 35 and up.test == "mcnemar"
    half = paired(base, better.iloc[: n // 2], "arc", metric="acc_norm", grouped=False)
    assert half.n == n // 2  # only documents both runs evaluated are compared
    # the report's difference table and `evalsuite compare` give the same numbers for the same pair of runs
    comparison = collect(store_dir)
    rows = {r["task"]: r for r in deltas(comparison, comparison.entries[0])["rows"]}
    compared = compare_runs(store_dir, models[0], models[1], force=True)
    for task in compared.tasks:
        row = rows[{"arc": "ARC", "truthfulqa": "TruthfulQA", "winogrande": "Winogrande"}.get(task.task, task.task)]
        assert row["delta"] == f"{task.delta:+.2f}" and row["p"] == f"{task.p_value:.3g}"
        assert row["ci"] == f"[{task.ci_low:+.2f}, {task.ci_high:+.2f}]"


def _markdown_rows(text: str) -> list[list[str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[2:]]


def test_markdown_table_matches_scores(store_dir, models):
    from evalsuite.store.parquet_store import ResultsStore
    from evalsuite.outputs.paper_table import paper_table
    from evalsuite.tasks import leaderboard_tasks

    text = paper_table("md", results_dir=store_dir)
    assert text.splitlines()[0] == "| Model | Size | Type | H6 | ARC | HellaSwag | MMLU | TruthfulQA | Winogrande | GSM8K |"
    scores = ResultsStore(store_dir).scores()
    task_rows = scores[scores["subtask"].isna() & (scores["status"] == "ok")]
    parsed = _markdown_rows(text)
    assert sorted(r[0] for r in parsed) == sorted(models)
    tasks = list(leaderboard_tasks())
    for row in parsed:
        values = {}
        for task, cell in zip(tasks, row[4:], strict=True):
            if cell != "—":
                values[task] = float(cell.replace("*", "").strip("†"))
        expected = task_rows[task_rows["model"] == row[0]].set_index("task")["value"] * 100
        assert set(values) == set(expected.index)
        for task, value in values.items():
            assert value == pytest.approx(round(expected[task], 2), abs=0.005)
        h6 = float(row[3].replace("*", "").strip("*"))
        assert h6 == pytest.approx(expected.mean(), abs=0.006) and row[3].endswith("*")  # incomplete H6
    # the best value of a column is bold, and only it
    arc = [float(r[4].strip("*")) for r in parsed]
    bold = [r[4].startswith("**") for r in parsed]
    assert bold[arc.index(max(arc))]


def _braces_balanced(text: str) -> bool:
    depth = 0
    for i, ch in enumerate(text):
        if ch in "{}" and i and text[i - 1] == "\\":
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def test_latex_table_is_well_formed(store_dir):
    from evalsuite.outputs.paper_table import paper_table

    text = paper_table("latex", results_dir=store_dir, published=True)
    lines = text.splitlines()
    assert lines[0].startswith(r"\begin{tabular}{") and r"\end{tabular}" in lines
    body = lines[: lines.index(r"\end{tabular}") + 1]
    assert _braces_balanced("\n".join(body))
    spec = re.match(r"\\begin\{tabular\}\{([lcr]+)\}", lines[0]).group(1)
    assert len(spec) == 10
    rows = [ln for ln in body if ln.endswith(r"\\")]
    assert len(rows) == 1 + 2 + 15  # header, our two models, published
    for row in rows:
        cells = re.split(r"(?<!\\)&", row[: -2])
        assert len(cells) == len(spec), row
    assert r"\textbf{74.20}" in text  # SOLAR 10.7B-Instruct has the best published H6
    assert all(ln.startswith("%") for ln in lines[len(body):])


def test_csv_and_html_tables(store_dir, models):
    from evalsuite.outputs.paper_table import paper_table

    frame = pd.read_csv(io.StringIO(paper_table("csv", results_dir=store_dir, published=True)))
    assert len(frame) == 17 and set(models) <= set(frame["Model"])
    assert list(frame.columns[:10]) == ["Model", "Size", "Type", "H6", "ARC", "HellaSwag", "MMLU", "TruthfulQA",
                                       "Winogrande", "GSM8K"]
    html = paper_table("html", results_dir=store_dir)
    assert html.count("<tr>") == 3 and "<b>" in html


def test_cli_errors_are_one_line(store_dir, capsys):
    from evalsuite.cli import main

    assert main(["report", "--results-dir", str(store_dir), "--models", "no-such-model"]) == 2
    assert "no finished run of 'no-such-model'" in capsys.readouterr().err
    assert main(["table", "--results-dir", str(store_dir / "empty")]) == 2
    assert main(["table", "--results-dir", str(store_dir / "empty"), "--published", "--format", "md"]) == 0
    assert "SOLAR 10.7B" in capsys.readouterr().out


def test_selection_by_run_tag_and_baseline(store_dir, models, tmp_path):
    from evalsuite.errors import EvalsuiteError
    from evalsuite.outputs.report import build_report, collect
    from evalsuite.store.run_views import latest_runs

    run_id = {v.model: v.run_id for v in latest_runs(store_dir)}[models[0]]
    out = build_report(runs=[run_id], baseline=models[1], results_dir=store_dir, out=tmp_path / "r.html",
                       published=False)
    html = out.read_text(encoding="utf-8")
    assert f"Differences against {models[1]}" in html and 'class="published"' not in html
    assert [e.model for e in collect(store_dir, models=[models[1]]).entries] == [models[1]]
    with pytest.raises(EvalsuiteError, match="not among the compared models"):
        build_report(results_dir=store_dir, baseline="nobody", out=tmp_path / "x.html")
    with pytest.raises(EvalsuiteError, match="no finished run tagged"):
        build_report(results_dir=store_dir, tag="nightly", out=tmp_path / "y.html")
