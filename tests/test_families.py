"""Every model family, exactly: the engine gives lm-eval ``hf``'s answers or declines a fast path.

Tiny random models of each causal-LM family (seeded, built once per session) run real ARC,
HellaSwag and GSM8K prompts through the engine and through lm-eval's own ``HFLM`` (v1 settings).
"""
from __future__ import annotations

from typing import Any

import pytest
import torch

from conftest import SHARED_DATA, loglikelihood_tolerance
from families import FAMILIES, load_family
from evalsuite.backends import BackendOptions
from evalsuite.backends.engine import wrap_model
from evalsuite.backends.engine.plain import plain_loglikelihoods
from evalsuite.backends.lmeval_hf import wrap_hf_model
from evalsuite.run.evaluation import run_requests
from evalsuite.tasks import LoadedTask, load_spec

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="leaderboard data not available")

#: |Δ log-prob| allowed against lm-eval's hf model in float32 for one token; a summed
#: log-likelihood gets docs/exactness.md's per-token rule (conftest.loglikelihood_tolerance).
TOL = 1e-4
#: Fast paths a family must decline, and a word its reason must contain (everything else must
#: be taken: a decline where none is due is a slowdown the matrix should show).
DECLINED = {
    "bloom": ({"tree", "cache", "batched"}, "ALiBi"),
    "remote": ({"tree", "cache", "batched", "exact"}, "registry"),
    "gemma2": ({"tree", "batched"}, "soft-capping"),
    # its own cache format: an empty transformers cache fails; the probe's kept trunk finds it
    "remote-cache": ({"tree", "cache", "batched", "exact"}, "failed on the probe"),
    # past the switch the whole input takes the long factors: no shared past, no batched decoding
    "phi3-longrope": ({"tree", "cache", "batched"}, "rope factors switch"),
    "mamba": ({"tree", "cache", "batched", "exact"}, "registry"),
}
#: Families whose attention does not pass the engine's context to the attention function
#: (the probe finds it): on the CPU they run on the cache executor and exact generation.
NO_CONTEXT_PASSING = {"falcon", "stablelm"}
GEN_TOKENS = 16


def _prompts(task: str, n: int) -> list[Any]:
    return LoadedTask(load_spec(task), SHARED_DATA).prompts(n)


def _assert_same_lls(got: list[list[Any]], ref: list[list[Any]], label: str, lengths: list[int]) -> None:
    """Same answers, request by request; ``lengths``: each request's continuation tokens (flat)."""
    tokens = iter(lengths)
    for a, b in zip(got, ref, strict=True):
        for (ll, greedy), (ref_ll, ref_greedy) in zip(a, b, strict=True):
            tol = loglikelihood_tolerance(next(tokens))
            assert abs(ll - ref_ll) <= tol, f"{label}: {ll} vs lm-eval hf {ref_ll} (tolerance {tol:.1g})"
            assert greedy == ref_greedy, f"{label}: greedy flag differs"


def _lengths(engine: Any, prompts: list[Any]) -> list[int]:
    """Each request's continuation tokens, as the engine splits the pair."""
    return [len(engine.encode_pair(*inst.args)[1]) for p in prompts for inst in p.instances]


@pytest.fixture(scope="module")
def prompts() -> dict[str, list[Any]]:
    """Real 25-shot ARC and 10-shot HellaSwag prompts (past every short window) and 5-shot GSM8K."""
    gsm8k = _prompts("gsm8k", 2)
    for prompt in gsm8k:  # the task asks for up to 256 new tokens; GEN_TOKENS show the same routes
        for inst in prompt.instances:
            context, kwargs = inst.arguments
            inst.arguments = (context, {**kwargs, "max_gen_toks": GEN_TOKENS})
    return {"arc": _prompts("arc", 2), "hellaswag": _prompts("hellaswag", 1), "gsm8k": gsm8k}


def _expected(family: str, path: str) -> str:
    """What the engine must choose on this CPU for a fast path ``path`` asked for."""
    declined = DECLINED.get(family, (set(), ""))[0]
    if path in ("tree", "cache"):
        if path in declined:
            return "cache" if path == "tree" and "cache" not in declined else "plain"
        if path == "tree" and family in NO_CONTEXT_PASSING:
            return "cache"
        return path
    if path == "batched" and "batched" not in declined and family not in NO_CONTEXT_PASSING:
        return "batched"
    return "exact" if "exact" not in declined else "plain"


@pytest.mark.parametrize("family", FAMILIES)
def test_family_matches_lm_eval_hf(family, family_dirs, prompts):
    """Both executors and both generation modes give lm-eval hf's numbers, or the fast path is
    declined (the plain path taken, the reason said)."""
    model, tokenizer = load_family(family_dirs[family])
    options = BackendOptions(batch_size=4, max_gen_toks=GEN_TOKENS)
    # lm-eval hf as v1 ran it (batch size 1: its left-padded generation batches are not the
    # unpadded arithmetic for models that ignore the attention mask, such as the remote one)
    reference = wrap_hf_model(model, tokenizer, BackendOptions(max_gen_toks=GEN_TOKENS))
    ref = {task: run_requests(reference, p) for task, p in prompts.items()}
    for attention in ("tree", "cache"):
        engine = wrap_model(model, tokenizer, options, attention=attention)
        chosen = engine.capabilities.loglikelihood
        assert chosen == _expected(family, attention), f"{family}: {engine.engine_note}"
        if chosen != attention:  # only the tree executor may fall back to the cache one
            assert chosen in ("plain", "cache") and engine.capabilities.reasons
            if family in DECLINED and chosen == "plain":
                assert DECLINED[family][1] in engine.engine_note
        for task in ("arc", "hellaswag"):
            _assert_same_lls(run_requests(engine, prompts[task]), ref[task], f"{family} {attention}->{chosen} {task}",
                             _lengths(engine, prompts[task]))
    checked = set()
    for mode in ("batched", "exact"):
        engine = wrap_model(model, tokenizer, BackendOptions(batch_size=4, max_gen_toks=GEN_TOKENS, generation=mode))
        route = engine.capabilities.generation
        assert route == (_expected(family, mode) if mode == "batched" else _expected(family, "exact")), engine.engine_note
        if route not in checked:  # the plain route (a full forward per token) is slow: checked once
            assert run_requests(engine, prompts["gsm8k"]) == ref["gsm8k"], f"{family} generation {mode}->{route}"
            checked.add(route)


def test_probe_declines_a_wrong_fast_path(family_dirs):
    """A head the engine does not know (patched into the model) is caught by the probe: the
    fast paths are declined and the plain forward gives the model's own numbers."""
    model, tokenizer = load_family(family_dirs["llama"])
    forward = type(model).forward

    def skewed(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        out.logits = out.logits * 1.5
        return out

    model.forward = skewed.__get__(model)
    engine = wrap_model(model, tokenizer, BackendOptions(batch_size=4))
    assert engine.capabilities.loglikelihood == "plain"
    assert "not lm_head(hidden)" in engine.engine_note
    prompts = _prompts("arc", 1)
    _assert_same_lls(run_requests(engine, prompts), run_requests(wrap_hf_model(model, tokenizer, BackendOptions()),
                                                                 prompts), "patched head", _lengths(engine, prompts))


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
        _assert_same_lls(run_requests(engine, prompts), ref, f"plain engine {task}", _lengths(engine, prompts))
        pairs = [engine.encode_pair(*inst.args) for p in prompts for inst in p.instances]
        direct = plain_loglikelihoods(model, pairs, max_length=engine.max_length, batch_size=2)
        _assert_same_lls([direct], [[r for resp in ref for r in resp]], f"plain_loglikelihoods {task}",
                         [len(x) for _, x in pairs])
    # left truncation exactly as HFLM's: a max_length shorter than the prompts
    pairs = [p for p in pairs if len(p[1]) <= 40]
    short = plain_loglikelihoods(model, pairs, max_length=40)
    short_hf = wrap_hf_model(model, tokenizer, options)
    short_hf._max_length = 40
    _assert_same_lls([short], [short_hf._loglikelihood_tokens([(("", ""), c, x) for c, x in pairs])], "truncated",
                     [len(x) for _, x in pairs])
    text = ["The quick brown fox jumps over the lazy dog."]
    got, want = engine.token_logprobs(text)[0], tree.token_logprobs(text)[0]
    assert got.tokens == want.tokens
    assert max(abs(a - b) for a, b in zip(got.logprobs, want.logprobs)) <= TOL


def test_a_route_that_raises_mid_run_is_abandoned(family_dirs, prompts, monkeypatch):
    """The round-two probe (no kept trunk) accepted the cache executor and exact generation for
    remote code with its own cache format, which then raised on the first real prompt. Given that
    decision, the engine abandons each route when it raises, redoes the call on the next exact
    one, says so, and gives lm-eval hf's numbers; no traceback."""
    from evalsuite.backends.engine import capabilities, planner

    model, tokenizer = load_family(family_dirs["remote-cache"])
    # the probe as it was: no kept trunk in its plan (SMALL_ROW rows), so the empty cache never met
    monkeypatch.setattr(capabilities, "probe_budgets",
                        lambda requests, device, copies: planner.Budgets.for_device(device, 64, copies, 4))
    real_generation = capabilities.probe_generation
    monkeypatch.setattr(capabilities, "probe_generation", lambda model, tok, route, *a: (
        0.0 if route == "exact" else real_generation(model, tok, route, *a)))
    engine = wrap_model(model, tokenizer, BackendOptions(batch_size=4, max_gen_toks=GEN_TOKENS, generation="exact"),
                        attention="cache")
    assert (engine.capabilities.loglikelihood, engine.capabilities.generation) == ("cache", "exact"), engine.engine_note
    monkeypatch.undo()  # the fallback probes the next route with today's probe
    reference = wrap_hf_model(model, tokenizer, BackendOptions(max_gen_toks=GEN_TOKENS))
    arc, gsm8k = prompts["arc"][:1], prompts["gsm8k"][:1]
    _assert_same_lls(run_requests(engine, arc), run_requests(reference, arc), "after fallback", _lengths(engine, arc))
    assert engine.executor.name == "plain" and "cache" in engine.capabilities.declined
    assert run_requests(engine, gsm8k) == run_requests(reference, gsm8k)
    assert engine.generator.route == "plain"
    note = engine.engine_note
    assert "the cache executor raised IndexError" in note and "redone on the plain executor" in note, note
    assert "exact generation raised" in note and "decoded again on the plain route" in note, note
    assert len(engine.fallbacks) == 2  # each route abandoned once, not per call
    later = prompts["arc"][1:]
    _assert_same_lls(run_requests(engine, later), run_requests(reference, later), "a later call",
                     _lengths(engine, later))
    assert len(engine.fallbacks) == 2


def test_length_switching_rope_plain_batches_reproduce_batch_size_one(family_dirs, prompts):
    """Longrope past its switch: lm-eval hf at batch size 1 computes a short input with the short
    factors; padded into a batch with a long one it would get the long factors. The plain
    executor batches equal lengths only for such a model, so it gives the batch-1 numbers."""
    from evalsuite.backends.engine.plain import plain_tally
    from families import LONGROPE_SWITCH

    model, tokenizer = load_family(family_dirs["phi3-longrope"])
    engine = wrap_model(model, tokenizer, BackendOptions(batch_size=8))
    assert engine.capabilities.equal_lengths and engine.executor.name == "plain", engine.engine_note
    pairs = [engine.encode_pair(*inst.args) for inst in prompts["arc"][0].instances]
    # the same questions cut below the switch, batched with the long ones
    pairs += [(c[-(LONGROPE_SWITCH // 2):], x) for c, x in pairs]
    reference = wrap_hf_model(model, tokenizer, BackendOptions(batch_size=1))
    want = reference._loglikelihood_tokens([(("", ""), c, x) for c, x in pairs])
    assert {len(c + x) > LONGROPE_SWITCH for c, x in pairs} == {True, False}
    got = plain_loglikelihoods(model, pairs, max_length=engine.max_length, batch_size=len(pairs))  # the rule decides
    _assert_same_lls([got], [want], "plain, equal lengths", [len(x) for _, x in pairs])
    _assert_same_lls([engine.loglikelihood_pairs([])], [[]], "empty", [])
    padded = plain_tally(model, pairs, max_length=engine.max_length, batch_size=len(pairs), equal_lengths=False).results()
    assert max(abs(a - b) for (a, _), (b, _) in zip(padded, want)) > 10 * TOL  # the test can fail
