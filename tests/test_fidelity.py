"""Fidelity: the numbers evalsuite stores are the numbers the model gives on the v1 prompts.

Each stored per-choice log-likelihood is recomputed here from scratch with plain transformers
(the context/continuation split as lm-eval tokenizes it, no BOS, summed log-softmax), and
compared with what lm-eval's own ``hf`` model returns for the same requests.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import evalsuite
from evalsuite.backends import BACKENDS, BackendOptions, get_backend
from evalsuite.backends.lmeval_hf import wrap_hf_model
from evalsuite.tasks.data import file_sha256
from evalsuite.run.evaluation import run_requests
from evalsuite.tasks import LoadedTask, load_spec


def manual_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """Sum of log p(continuation tokens | context), tokenized the way lm-eval splits the pair."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    cont = whole[len(ctx):]
    ids = torch.tensor([whole])
    with torch.no_grad():  # logits at the positions that predict the continuation only (the vocabulary is large)
        logits = model(ids, logits_to_keep=len(cont) + 1).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return float(sum(logprobs[i, tok] for i, tok in enumerate(cont)))


def _load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def _backends():
    return [b for b in ("lm-eval-hf", "evalsuite") if b in BACKENDS and _importable(get_backend(b).builder)]


def _importable(target: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(target.split(":")[0]) is not None


@pytest.mark.slow
@pytest.mark.parametrize("backend", _backends())
def test_stored_loglikelihoods_equal_manual_and_lm_eval(backend, tiny_llama_dir, data_dir, tmp_path):
    tasks = ["arc", "hellaswag", "mmlu", "truthfulqa", "winogrande"]
    result = evalsuite.evaluate(models=[str(tiny_llama_dir)], tasks=tasks, limit=2, data_dir=data_dir,
                                backend=backend, results_dir=tmp_path / "results", progress=False)
    samples = result.samples()
    assert set(samples["task"]) == set(tasks)
    model, tokenizer = _load(tiny_llama_dir)
    reference = wrap_hf_model(model, tokenizer, BackendOptions())
    for name in tasks:
        task = LoadedTask(load_spec(name), data_dir)
        prompts = task.prompts(2)
        manual_subjects = sorted({p.subtask for p in prompts})[::10]
        ref_responses = run_requests(reference, prompts)
        stored = samples[samples["task"] == name].set_index(["subtask", "doc_index"] if name == "mmlu" else ["doc_index"])
        for prompt, response in zip(prompts, ref_responses):
            key = (prompt.subtask, prompt.doc_index) if name == "mmlu" else prompt.doc_index
            row = stored.loc[key]
            ref_lls = [ll for ll, _ in response]
            np.testing.assert_allclose(row["loglikelihoods"], ref_lls, atol=1e-3, rtol=0)
            if name != "mmlu" or prompt.subtask in manual_subjects:  # the slow plain-torch check on a sample of MMLU
                manual = [manual_loglikelihood(model, tokenizer, *inst.args) for inst in prompt.instances]
                np.testing.assert_allclose(ref_lls, manual, atol=1e-3, rtol=0)
            ref_score = task.score(prompt, response)
            assert row["prediction"] == ref_score.prediction
            assert row["value"] == pytest.approx(ref_score.value, abs=1e-3)  # mc2 moves with 1e-3 log-likelihood noise
            assert row["prompt_hash"] == prompt.prompt_hash


def test_hellaswag_acc_norm_by_characters_of_the_preprocessed_ending(tiny_llama_dir, data_dir, tmp_path):
    """v1 HellaSwag is acc_norm: log-likelihood / characters of the preprocessed ending (no leading space)."""
    result = evalsuite.evaluate(models=[str(tiny_llama_dir)], tasks=["hellaswag"], limit=3, data_dir=data_dir,
                                results_dir=tmp_path / "results", progress=False)
    samples = result.samples("hellaswag")
    model, tokenizer = _load(tiny_llama_dir)
    for row in samples.to_dict("records"):
        manual = [manual_loglikelihood(model, tokenizer, row["contexts"][0], c) for c in row["continuations"]]
        np.testing.assert_allclose(row["loglikelihoods"], manual, atol=1e-3, rtol=0)
        endings = [c[1:] for c in row["continuations"]]  # the preprocessed endings, without lm-eval's " "
        norm = np.array(manual) / np.array([len(e) for e in endings])
        assert row["prediction"] == str(int(np.argmax(norm)))
        assert row["value"] == float(int(np.argmax(norm)) == int(row["gold"]))
    scores = result.scores()
    assert scores.loc[scores["task"] == "hellaswag", "value"].item() == pytest.approx(samples["value"].mean())
    runs = result.store.runs(run_id=result.run_id)
    hashes = dict(runs["data_hashes"].item())  # both files of the split the run read, with their sha256
    folder = data_dir / "Rowan__hellaswag" / "default"
    assert hashes == {str(folder / f): file_sha256(folder / f) for f in ("validation.parquet", "train.parquet")}


def test_gsm8k_generation_and_strict_match(tiny_llama_dir, data_dir, tmp_path):
    result = evalsuite.evaluate(models=[str(tiny_llama_dir)], tasks=["gsm8k"], limit=1, data_dir=data_dir,
                                backend="lm-eval-hf", results_dir=tmp_path / "results", progress=False)
    row = result.samples("gsm8k").iloc[0]
    model, tokenizer = _load(tiny_llama_dir)
    ids = tokenizer(row["contexts"][0], add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=256, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=False)
    for stop in [":", "Question:", "Question", tokenizer.eos_token]:
        text = text.split(stop)[0]
    assert row["generation"] == text
    assert row["extracted"] == "[invalid]" or row["extracted"] in text


@pytest.mark.slow
def test_smollm2_matches_manual_on_real_prompts(smollm2_source, data_dir, tmp_path):
    result = evalsuite.evaluate(models=["smollm2"], tasks=["truthfulqa", "winogrande"], limit=2, data_dir=data_dir,
                                backend="lm-eval-hf", results_dir=tmp_path / "results", progress=False)
    model, tokenizer = _load(smollm2_source.path)
    samples = result.samples()
    assert len(samples) == 4
    for row in samples.to_dict("records"):
        if row["task"] == "winogrande":
            pairs = [(c, row["continuations"][0]) for c in row["contexts"]]
        else:
            pairs = [(row["contexts"][0], c) for c in row["continuations"]]
        manual = [manual_loglikelihood(model, tokenizer, c, k) for c, k in pairs]
        np.testing.assert_allclose(row["loglikelihoods"], manual, atol=1e-3, rtol=0)
        if row["task"] == "truthfulqa":
            p = np.exp(np.array(manual))
            n_true = int(row["gold"])
            assert row["value"] == pytest.approx(p[:n_true].sum() / p.sum(), abs=1e-3)
    runs = result.store.runs(run_id=result.run_id)
    assert "Q4_1" in runs["notes"].item()
    assert runs["weights_hash"].item().startswith("gguf-sha256:")
    assert not math.isnan(result.scores()["value"].iloc[0])
