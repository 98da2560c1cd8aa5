"""The contamination check: Min-K% Prob, the card's neighbour comparison, storage, CLI and report.

A planted signal on tiny real models: a copy of a tiny Llama is trained on two ARC test
documents and checked against the untrained original; the planted documents must score above
the unseen ones on every score. The real SmolLM2 experiment lives in
``benchmarks/contamination_planted.py``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

LIMIT = 6
PLANTED = 2


def test_min_k_prob_and_rules():
    from evalsuite.run.contamination import default_rule, min_k_prob, neighbour_rank
    from evalsuite.errors import EvalsuiteError

    logprobs = [-1.0, -5.0, -0.5, -3.0, -2.0, -0.1, -0.2, -0.3, -4.0, -0.4]
    assert min_k_prob(logprobs, 0.2) == pytest.approx(-4.5)  # the two least likely of ten
    assert min_k_prob(logprobs, 1.0) == pytest.approx(np.mean(logprobs))
    assert min_k_prob([-2.0, -1.0], 0.2) == -2.0  # never fewer than one token
    assert math.isnan(min_k_prob([], 0.2))
    with pytest.raises(EvalsuiteError, match="k must be a fraction"):
        min_k_prob(logprobs, 0)
    assert neighbour_rank(-1.0, [-0.5, -2.0, -3.0, -4.0]) == 0.25
    card = default_rule(reference=True, neighbours=100)
    assert card.score == "neighbour_rank" and card.flags(0.05) and not card.flags(0.1) and not card.flags(math.nan)
    delta = default_rule(reference=True, neighbours=0)
    assert delta.score == "min_k_delta" and delta.flags(0.01) and not delta.flags(-0.01)
    alone = default_rule(reference=False, neighbours=100, threshold=-2.5)
    assert alone.score == "min_k" and alone.flags(-2.0) and not alone.flags(-3.0) and "uncalibrated" in alone.text


def test_document_texts(data_dir):
    """Question + gold answer from the raw rows, in the v1 evaluation order a --limit run uses."""
    from evalsuite.run.contamination import document_text, load_documents
    from evalsuite.tasks import LoadedTask, load_spec

    docs = load_documents("arc,winogrande,truthfulqa,gsm8k", data_dir, limit=3)
    assert [d.task for d in docs] == ["arc"] * 3 + ["winogrande"] * 3 + ["truthfulqa"] * 3 + ["gsm8k"] * 3
    arc_rows = [json.loads(x) for x in (data_dir / "allenai__ai2_arc/ARC-Challenge/test.jsonl").read_text().splitlines()]
    run_order = [p.doc_index for p in LoadedTask(load_spec("arc"), data_dir).prompts(3)]
    assert [d.doc_index for d in docs[:3]] == run_order
    for doc in docs[:3]:
        row = arc_rows[doc.doc_index]
        gold = row["choices"]["text"][row["choices"]["label"].index(row["answerKey"])]
        assert doc.text == f"{row['question']} {gold}"
    for doc in docs[3:6]:
        assert "_" not in doc.text
    assert "####" in docs[-1].text
    assert document_text("mmlu", {"question": " Q? ", "choices": ["a", "b", "c", "d"], "answer": 2}) == "Q? c"
    assert document_text("hellaswag", {"query": "Ctx: she", "choices": ["x", "runs."], "gold": "1"}) == "Ctx: she runs."


def _engine(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evalsuite.backends import BackendOptions
    from evalsuite.backends.engine import wrap_model

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return wrap_model(model, AutoTokenizer.from_pretrained(folder), BackendOptions())


def test_token_logprobs_agree_with_engine_loglikelihood(tiny_llama_dir):
    """Each text scored after the EOS token equals the engine's log-likelihood of it after EOS."""
    from evalsuite.run.contamination import token_logprobs

    lm = _engine(tiny_llama_dir)
    texts = ["The air stays cleaner.", "Cities control the amount of pollution that is allowed to come from cars.",
             "A"]
    scored = token_logprobs(lm, texts)
    eos = lm.tokenizer.eos_token
    for text, result in zip(texts, scored, strict=True):
        context, continuation = lm.encode_pair(eos, text)
        assert context == [lm.tokenizer.eos_token_id] and result.tokens == continuation
        assert len(result.logprobs) == len(result.tokens) and all(x <= 0 for x in result.logprobs)
        (expected, _), = lm.loglikelihood_pairs([(eos, text)])
        assert sum(result.logprobs) == pytest.approx(expected, abs=1e-3)


def _train_copy(source: Path, target: Path, texts: list[str], steps: int = 40) -> Path:
    """A copy of ``source`` trained on ``texts`` (EOS in front, as they are scored)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rows = [torch.tensor([[tokenizer.eos_token_id, *tokenizer(t, add_special_tokens=False)["input_ids"]]])
            for t in texts]
    model.train()
    for step in range(steps):
        ids = rows[step % len(rows)]
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory, tiny_llama_dir, data_dir):
    """A run of the trained copy, and a contamination check of it against the original."""
    import evalsuite
    from evalsuite.run.contamination import check, load_documents

    root = tmp_path_factory.mktemp("contamination")
    docs = load_documents("arc", data_dir, limit=LIMIT)
    trained = _train_copy(tiny_llama_dir, root / "trained", [d.text for d in docs[:PLANTED]])
    results = root / "results"
    run = evalsuite.evaluate(models=[str(trained), str(tiny_llama_dir)], tasks=["arc"], limit=2, data_dir=data_dir,
                             results_dir=results, progress=False, use_cache=False)
    result = check([str(trained)], reference=str(tiny_llama_dir), tasks="arc", limit=LIMIT, data_dir=data_dir,
                   neighbours=8, results_dir=results, progress=False)
    return {"results": results, "trained": trained.name, "reference": tiny_llama_dir.name, "check": result,
            "docs": docs, "run": run, "reference_dir": str(tiny_llama_dir)}


def test_planted_documents_stand_out(planted_store):
    from evalsuite.run.contamination import read_checks

    frame = read_checks(planted_store["results"], check_id=planted_store["check"].check_id)
    assert len(frame) == LIMIT and set(frame["reference"]) == {planted_store["reference"]}
    planted = {d.doc_index for d in planted_store["docs"][:PLANTED]}
    is_planted = frame["doc_index"].isin(planted)
    for score in ("min_k", "min_k_delta", "mean_logprob"):
        assert frame.loc[is_planted, score].min() > frame.loc[~is_planted, score].max(), score
    assert frame.loc[is_planted, "neighbour_rank"].max() < frame.loc[~is_planted, "neighbour_rank"].min()
    assert (frame["n_neighbours"] == 8).all() and frame["text_hash"].str.len().eq(16).all()
    # the stored flag is the card's rule applied to the stored score
    assert (frame["flagged"] == (frame["neighbour_rank"] < 0.1)).all()
    assert frame.loc[is_planted, "flagged"].all()


def test_summary_and_interval(planted_store):
    from evalsuite.run.contamination import read_checks, summarize

    result = planted_store["check"]
    [summary] = result.summaries
    frame = read_checks(planted_store["results"], check_id=result.check_id)
    assert summary.n == LIMIT and summary.flagged == int(frame["flagged"].sum())
    assert summary.rate == pytest.approx(frame["flagged"].mean())
    assert summary.low <= summary.rate <= summary.high and 0 <= summary.low and summary.high <= 1
    assert "SOLAR card" in summary.rule and summarize(frame)[0].rate == summary.rate
    assert "95% CI" in result.table() and "flagged: fewer than 0.1" in result.table()


def test_cli_check_and_errors(planted_store, data_dir, capsys):
    from evalsuite.cli import main
    from evalsuite.run.contamination import read_checks

    results = planted_store["results"]
    args = ["contamination", "--models", planted_store["reference_dir"], "--tasks", "arc", "--limit", "2",
            "--data-dir", str(data_dir), "--results-dir", str(results), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Min-K% above -3 (no reference: uncalibrated)" in out and "check c-" in out
    latest = read_checks(results, models=[planted_store["reference"]], latest=True)
    assert len(latest) == 2 and latest["reference"].isna().all()
    assert main([*args[:4], "nope", *args[5:]]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert main([*args, "--k", "2"]) == 2
    assert "k must be in (0, 1]" in capsys.readouterr().err


@pytest.mark.slow
def test_report_shows_the_check_in_chromium(planted_store, tmp_path):
    from selenium.webdriver.common.by import By

    from evalsuite.run.contamination import read_checks
    from evalsuite.outputs.report import build_report
    from conftest import chromium_driver

    out = build_report(runs=[planted_store["run"].run_id], results_dir=planted_store["results"],
                       out=tmp_path / "report.html", published=False)
    checked = set(read_checks(planted_store["results"])["model"])  # the CLI test may have checked the reference
    driver = chromium_driver(tmp_path)
    try:
        driver.get(out.resolve().as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "#contamination tbody tr")
        by_model = {r.get_attribute("data-model"): r for r in rows}
        assert set(by_model) == checked & {planted_store["trained"], planted_store["reference"]}
        cells = [c.text for c in by_model[planted_store["trained"]].find_elements(By.CSS_SELECTOR, "td")]
        summary = planted_store["check"].summaries[0]
        assert cells[1] == planted_store["reference"] and cells[2] == "ARC" and cells[3] == str(LIMIT)
        assert cells[4] == str(summary.flagged) and cells[5] == f"{summary.rate:.2f}"
        assert cells[6] == f"[{summary.low:.2f}, {summary.high:.2f}]" and "SOLAR card" in cells[-1]
        section = driver.find_element(By.ID, "sec-contamination")
        assert section.is_displayed()
        unchecked = planted_store["reference"] not in checked
        assert (f"Not checked: {planted_store['reference']}" in section.text) == unchecked
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    finally:
        driver.quit()
    assert not errors
