"""Every model family, exactly: the engine gives lm-eval ``hf``'s answers or declines a fast path.

Tiny random models of each causal-LM family (seeded, built once per session) run real ARC,
HellaSwag and GSM8K prompts through the engine and through lm-eval's own ``HFLM`` (v1 settings).
"""
from __future__ import annotations

from typing import Any

import pytest
import torch

from conftest import SHARED_DATA
from evalsuite.backends import BackendOptions
from evalsuite.backends.engine import wrap_model
from evalsuite.backends.engine.plain import plain_loglikelihoods
from evalsuite.backends.lmeval_hf import wrap_hf_model
from evalsuite.runner import run_requests
from evalsuite.tasks import LoadedTask, load_spec

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="leaderboard data not available")

#: |Δ log-likelihood| allowed against lm-eval's hf model in float32.
TOL = 1e-4


def _prompts(task: str, n: int) -> list[Any]:
    return LoadedTask(load_spec(task), SHARED_DATA).prompts(n)


def _assert_same_lls(got: list[list[Any]], ref: list[list[Any]], label: str) -> None:
    for a, b in zip(got, ref, strict=True):
        for (ll, greedy), (ref_ll, ref_greedy) in zip(a, b, strict=True):
            assert abs(ll - ref_ll) <= TOL, f"{label}: {ll} vs lm-eval hf {ref_ll}"
            assert greedy == ref_greedy, f"{label}: greedy flag differs"


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_llama_dir)


def test_plain_executor_is_lm_eval_hf(tiny_llama):
    """The plain executor (the model's own forward per distinct input) gives HFLM's numbers, and
    a whole engine runs on it (log-likelihoods and per-token log-probs)."""
    model, tokenizer = tiny_llama
    options = BackendOptions(batch_size=3)
    reference = wrap_hf_model(model, tokenizer, options)
    engine = wrap_model(model, tokenizer, options, attention="plain")
    tree = wrap_model(model, tokenizer, options, attention="tree")
    assert engine.executor.name == "plain"
    for task in ("arc", "hellaswag"):
        prompts = _prompts(task, 3)
        ref = run_requests(reference, prompts)
        _assert_same_lls(run_requests(engine, prompts), ref, f"plain engine {task}")
        pairs = [engine.encode_pair(*inst.args) for p in prompts for inst in p.instances]
        direct = plain_loglikelihoods(model, pairs, max_length=engine.max_length, batch_size=2)
        _assert_same_lls([direct], [[r for resp in ref for r in resp]], f"plain_loglikelihoods {task}")
    # left truncation exactly as HFLM's: a max_length shorter than the prompts
    pairs = [p for p in pairs if len(p[1]) <= 40]
    short = plain_loglikelihoods(model, pairs, max_length=40)
    short_hf = wrap_hf_model(model, tokenizer, options)
    short_hf._max_length = 40
    _assert_same_lls([short], [short_hf._loglikelihood_tokens([(("", ""), c, x) for c, x in pairs])], "truncated")
    text = ["The quick brown fox jumps over the lazy dog."]
    got, want = engine.token_logprobs(text)[0], tree.token_logprobs(text)[0]
    assert got.tokens == want.tokens
    assert max(abs(a - b) for a, b in zip(got.logprobs, want.logprobs)) <= TOL
