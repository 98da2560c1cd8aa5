"""The prefix-tree engine must give lm-eval's ``hf`` answers: same log-likelihoods (to 1e-3),
same greedy flags and predictions, identical generations, on real leaderboard prompts.

A tiny random Llama (real tokenizer, real prompts) makes the comparisons cheap; SmolLM2 checks a
few documents with real weights. No test asserts a wall-clock time.
"""
from __future__ import annotations

from typing import Any

import pytest
import torch

from conftest import SHARED_DATA, loglikelihood_tolerance
from evalsuite.backends import BackendOptions
from evalsuite.backends.engine import FOLD_TRUNK, wrap_model
from evalsuite.backends.engine.planner import Budgets, Row, cut_batches
from evalsuite.backends.lmeval_hf import wrap_hf_model
from evalsuite.tasks import LoadedTask, load_spec

DATA_DIR = SHARED_DATA
TOL = 1e-3

pytestmark = pytest.mark.skipif(not DATA_DIR.is_dir(), reason="leaderboard data not available")


class _Req:
    """The part of an lm-eval ``Instance`` a backend reads."""

    def __init__(self, *args: Any) -> None:
        self.args = args


@pytest.fixture(scope="module")
def smollm2(smollm2_source) -> tuple[Any, Any]:
    """The real SmolLM2, loaded once per module (its tests are in the slow lane: conftest)."""
    from evalsuite.models.loading import load_transformers

    return load_transformers(smollm2_source, "float32", "cpu")


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer: Any) -> tuple[Any, Any]:
    import transformers

    tokenizer = tiny_tokenizer
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )
    return transformers.LlamaForCausalLM(config).eval(), tokenizer


@pytest.fixture(scope="module")
def tiny_pair(tiny: tuple[Any, Any]) -> tuple[Any, Any]:
    model, tokenizer = tiny
    options = BackendOptions(device="cpu", dtype="float32", batch_size=4)
    # a small token budget so the tests also exercise trunks in the cache, chunking and batching
    return wrap_model(model, tokenizer, options, token_budget=256), wrap_hf_model(model, tokenizer, options)


def _prompts(task: str, limit: int, keep: int | None = None) -> tuple[LoadedTask, list[Any]]:
    loaded = LoadedTask(load_spec(task), DATA_DIR)
    prompts = loaded.prompts(limit)
    return loaded, prompts[:keep] if keep else prompts


def _compare_ll(engine: Any, hf: Any, loaded: LoadedTask, prompts: list[Any]) -> None:
    instances = [inst for p in prompts for inst in p.instances]
    ours = engine.loglikelihood(instances)
    ref = hf.loglikelihood(instances, disable_tqdm=True)
    assert len(ours) == len(ref) == len(instances)
    deltas = [abs(a[0] - b[0]) for a, b in zip(ours, ref)]
    tolerances = [loglikelihood_tolerance(len(engine.encode_pair(*inst.args)[1]), TOL) for inst in instances]
    assert all(d <= t for d, t in zip(deltas, tolerances)), f"max |delta loglikelihood| {max(deltas)}"
    assert [a[1] for a in ours] == [b[1] for b in ref]
    assert all(isinstance(a[0], float) and isinstance(a[1], bool) for a in ours)
    at = 0
    for prompt in prompts:
        n = len(prompt.instances)
        mine, theirs = loaded.score(prompt, ours[at:at + n]), loaded.score(prompt, ref[at:at + n])
        assert mine.prediction == theirs.prediction
        assert mine.value == pytest.approx(theirs.value, abs=1e-3)
        at += n


@pytest.mark.parametrize("attention", ["tree", "cache"])
@pytest.mark.parametrize(
    ("task", "limit", "keep"),
    [("arc", 3, None), ("mmlu", 3, 9), ("truthfulqa", 4, None), ("winogrande", 6, None)],
)
def test_loglikelihood_matches_hflm_on_real_prompts(
    tiny_pair: tuple[Any, Any], task: str, limit: int, keep: int | None, attention: str
) -> None:
    """Both attention paths: the CPU tree attention and the model's own attention over a
    ``DynamicCache`` (what CUDA and sliding-window models use)."""
    default, hf = tiny_pair
    assert default.executor.name == "tree"  # a CPU Llama: the tree path is the default here
    engine = wrap_model(default.model, default.tokenizer, default.options, token_budget=256, attention=attention)
    assert engine.executor.name == attention
    loaded, prompts = _prompts(task, limit, keep)
    engine.forget()
    engine.stats.reset()
    _compare_ll(engine, hf, loaded, prompts)
    # every unique token forwarded once; only a short shared opening may be recomputed per document
    assert engine.stats.reused_tokens == 0
    recomputed = engine.stats.real_tokens - engine.stats.unique_tokens
    assert 0 <= recomputed < FOLD_TRUNK * len(prompts)


def test_preamble_is_reused_across_calls(tiny_pair: tuple[Any, Any]) -> None:
    """The runner sends chunks of documents: a later chunk of the same MMLU subject reuses the
    5-shot preamble computed by the first, with the same answers as one call over all."""
    engine, _ = tiny_pair
    _, prompts = _prompts("mmlu", 4, 4)
    instances = [inst for p in prompts for inst in p.instances]
    engine.forget()
    whole = engine.loglikelihood(instances)
    engine.forget()
    engine.stats.reset()
    first = engine.loglikelihood(instances[:8])
    assert engine.stats.reused_tokens == 0
    second = engine.loglikelihood(instances[8:])
    # what the two calls' trunks share: the tokens common to all four documents (the shots)
    contexts = [engine.encode_pair(*inst.args)[0] for inst in instances]
    common = 0
    while all(len(c) > common and c[common] == contexts[0][common] for c in contexts):
        common += 1
    assert common > 100 and engine.stats.reused_tokens == common
    assert [r[1] for r in first + second] == [r[1] for r in whole]
    tolerances = [loglikelihood_tolerance(len(engine.encode_pair(*inst.args)[1])) for inst in instances]
    assert all(abs(a[0] - b[0]) <= tol for a, b, tol in zip(first + second, whole, tolerances, strict=True))


def test_shared_prefixes_are_computed_once(tiny_pair: tuple[Any, Any]) -> None:
    """MMLU questions of one subject share the 5-shot preamble: far fewer unique tokens than HFLM runs."""
    engine, _ = tiny_pair
    _, prompts = _prompts("mmlu", 4, 4)
    pairs = [inst.args for p in prompts for inst in p.instances]
    tree = engine.build_tree(pairs)
    full = sum(len(c) + len(x) - 1 for c, x in (engine.encode_pair(*pair) for pair in pairs))
    assert tree.n_tokens < full / 3
    one_doc = sum(len(engine.encode_pair(*pair)[0]) for pair in pairs[:1])
    assert tree.n_tokens < one_doc * 2  # the second..fourth questions add only their own text


def test_synthetic_hellaswag_like_and_edge_cases(tiny_pair: tuple[Any, Any]) -> None:
    """Multi-token endings, an empty context (prefix token), a trailing-space context, a shared context."""
    engine, hf = tiny_pair
    ctx = "A man is sitting on a roof. He"
    endings = [" is using wrap to wrap a pair of skis.", " is ripping level tiles off.",
               " is holding a rubik's cube.", " starts pulling up roofing on a roof."]
    pairs = [(ctx, e) for e in endings]
    pairs += [("", "Hello world"), ("The answer is ", "42"), ("The answer is", " 42"), (ctx, endings[0])]
    requests = [_Req(*p) for p in pairs]
    ours = engine.loglikelihood(requests)
    ref = hf.loglikelihood(requests, disable_tqdm=True)
    for a, b in zip(ours, ref, strict=True):
        assert abs(a[0] - b[0]) <= TOL
        assert a[1] == b[1]
    assert ours[0] == ours[-1]  # a duplicate request gets the same answer


def test_left_truncation_matches_hflm(tiny: tuple[Any, Any]) -> None:
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = tiny
    options = BackendOptions()
    engine = wrap_model(model, tokenizer, options, max_length=48)
    hf = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, add_bos_token=False, max_length=48)
    _, prompts = _prompts("arc", 1)
    requests = list(prompts[0].instances)
    for a, b in zip(engine.loglikelihood(requests), hf.loglikelihood(requests, disable_tqdm=True), strict=True):
        assert abs(a[0] - b[0]) <= TOL and a[1] == b[1]


def test_out_of_memory_splits_the_batch(tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A budget that batches several questions per forward; an OOM on any batch > 1 row splits it."""
    engine = wrap_model(*tiny, BackendOptions(), token_budget=512)
    _, prompts = _prompts("winogrande", 8)
    reference = engine.loglikelihood([i for p in prompts for i in p.instances])
    base = engine.executor.base
    real_forward = base.forward
    calls = {"oom": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if kwargs["input_ids"].shape[0] > 1:
            calls["oom"] += 1
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(base, "forward", flaky)
    engine.stats.reset()
    again = engine.loglikelihood([i for p in prompts for i in p.instances])
    assert calls["oom"] > 0 and engine.stats.oom_splits > 0
    assert [a[1] for a in again] == [r[1] for r in reference]
    requests = [i for p in prompts for i in p.instances]
    tolerances = [loglikelihood_tolerance(len(engine.encode_pair(*inst.args)[1])) for inst in requests]
    assert all(abs(a[0] - r[0]) <= tol for a, r, tol in zip(again, reference, tolerances, strict=True))


def test_generation_identical_to_hflm_tiny(tiny_pair: tuple[Any, Any]) -> None:
    """A random model rambles, so stop strings and the token limit are really exercised."""
    engine, hf = tiny_pair
    _, prompts = _prompts("gsm8k", 3)
    requests = [_Req(p.contexts[0], {"until": ["Question:", "\n\n"], "max_gen_toks": 24, "do_sample": False})
                for p in prompts]
    requests += [_Req(prompts[0].contexts[0], {"until": ["the"], "max_gen_toks": 40})]
    requests += list(prompts[1].instances)  # the task's own stops
    requests += [_Req(requests[0].args[0], dict(requests[0].args[1]))]  # equal length: decoded in one batch
    ours = engine.generate_until(requests)
    ref = hf.generate_until(requests, disable_tqdm=True)
    assert ours == ref
    assert any(len(text) > 20 for text in ours)


def test_generation_identical_to_hflm_smollm2(smollm2: tuple[Any, Any]) -> None:
    model, tokenizer = smollm2
    options = BackendOptions(max_gen_toks=48)
    engine, hf = wrap_model(model, tokenizer, options), wrap_hf_model(model, tokenizer, options)
    _, prompts = _prompts("gsm8k", 2)
    requests = [inst for p in prompts for inst in p.instances]
    ours = engine.generate_until(requests)
    assert ours == hf.generate_until(requests, disable_tqdm=True)
    assert all(text.strip() for text in ours)


@pytest.mark.parametrize(("task", "limit", "keep"), [("truthfulqa", 2, None), ("mmlu", 2, 2), ("winogrande", 2, None)])
def test_smollm2_matches_hflm(smollm2: tuple[Any, Any], task: str, limit: int, keep: int | None) -> None:
    model, tokenizer = smollm2
    options = BackendOptions()
    loaded, prompts = _prompts(task, limit, keep)
    _compare_ll(wrap_model(model, tokenizer, options), wrap_hf_model(model, tokenizer, options), loaded, prompts)


def test_batches_keep_padding_low_within_the_budget(tiny_pair: tuple[Any, Any]) -> None:
    """Rows of very different widths are not padded to the longest: the batch cuts pay off."""
    from evalsuite.backends.engine import FORWARD_COST

    engine, _ = tiny_pair  # token budget 256
    widths = [200, 190, 120, 60, 60, 58, 12, 10, 10, 9, 8, 8, 8, 7, 3]
    rows = [Row(list(range(w)), [w] * w) for w in widths]
    batches = cut_batches(rows, Budgets.for_device("cpu", 256, copies_past=False))
    assert [len(r.nodes) for b in batches for r in b] == widths  # every row once, in order
    assert all(len(b) * len(b[0].nodes) <= engine.token_budget or len(b) == 1 for b in batches)
    padded = sum(len(b) * len(b[0].nodes) for b in batches)
    cost = padded + FORWARD_COST["cpu"] * len(batches)
    one_per_row = sum(widths) + FORWARD_COST["cpu"] * len(widths)
    greedy_fill = 0  # longest-first filling up to the budget, as before
    at = 0
    while at < len(widths):
        count = max(1, min(len(widths) - at, engine.token_budget // widths[at]))
        greedy_fill += count * widths[at] + FORWARD_COST["cpu"]
        at += count
    assert cost <= min(one_per_row, greedy_fill)
    assert padded - sum(widths) < 0.25 * sum(widths)


