"""The model side of v1 in both transformers backends, and the engine's interfaces for others.

Each v1 detail on a tiny real model: the dtype of the log-softmax, the generation config's
processors, EOS for an empty context, the config's dtype, the tokenizer's period clean-up.
Then ``plan_requests`` (counts without a model, equal to what the engine runs) and
``token_logprobs`` (against a plain forward).
"""
from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from conftest import SHARED_DATA, build_tiny_llama
from evalsuite import compat
from evalsuite.backends import BackendOptions
from evalsuite.backends.engine import plan_requests, wrap_model
from evalsuite.backends.engine.tokenize import encode_pairs
from evalsuite.backends.lmeval_hf import wrap_hf_model
from evalsuite.errors import EvalsuiteError


class _Req:
    def __init__(self, *args: Any) -> None:
        self.args = args


def _tiny(tokenizer: Any, cls: str = "Llama", dtype: torch.dtype = torch.float32, seed: int = 0, **extra: Any) -> Any:
    import transformers

    torch.manual_seed(seed)
    config = getattr(transformers, f"{cls}Config")(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **extra,
    )
    model = getattr(transformers, f"{cls}ForCausalLM")(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    return model.to(dtype).eval()


def _manual(model: Any, prefix: list[int], cont: list[int], dtype: torch.dtype) -> float:
    """v1's procedure: one forward, log-softmax in ``dtype``, gather, sum in that dtype."""
    ids = torch.tensor([prefix + cont])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prefix) - 1:-1]
    logprobs = torch.log_softmax(logits.to(dtype), dim=-1)
    return float(logprobs[torch.arange(len(cont)), torch.tensor(cont)].sum())


PAIRS = [("The capital of France is", " Paris, a city on the Seine."), ("Two plus two is", " four."),
         ("The capital of France is", " Lyon.")]


class _Upcasting(torch.nn.Module):
    """Stands in for remote code (not a transformers module) whose forward upcasts its logits."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*args, **kwargs)
        out.logits = out.logits.float()
        return out

    def get_output_embeddings(self) -> Any:
        return self.inner.get_output_embeddings()


def test_scoring_dtype_follows_the_model_class(tiny_tokenizer):
    """Llama upcast its logits in v1's transformers: float32. A class that did not (Qwen2 here,
    as Falcon and Qwen v1's remote code) is scored in its own bf16, sum included, by both backends.
    A forward that upcasts by itself is detected by the probe."""
    tok = tiny_tokenizer
    llama = _tiny(tok, "Llama", torch.bfloat16)
    assert compat.v1_logits_dtype(llama) == torch.float32
    assert compat.v1_logits_dtype(_Upcasting(_tiny(tok, "Qwen2", torch.bfloat16))) == torch.float32
    qwen = _tiny(tok, "Qwen2", torch.bfloat16)
    assert compat.v1_logits_dtype(qwen) == torch.bfloat16
    options = BackendOptions(dtype="bfloat16")
    for model, dtype in ((qwen, torch.bfloat16), (llama, torch.float32)):
        engine, hf = wrap_model(model, tok, options), wrap_hf_model(model, tok, options)
        ours = engine.loglikelihood([_Req(*p) for p in PAIRS])
        ref = hf.loglikelihood([_Req(*p) for p in PAIRS], disable_tqdm=True)
        for (ctx, cont), mine, theirs in zip(PAIRS, ours, ref):
            c, x = engine.encode_pair(ctx, cont)
            manual = _manual(model, c, x, dtype)
            if dtype == torch.bfloat16:  # bf16 sums land on the bf16 grid: v1's rounding, not float noise
                assert mine[0] == float(torch.tensor(mine[0], dtype=torch.bfloat16))
            assert abs(mine[0] - manual) <= 0.02 * max(1.0, abs(manual)) and abs(theirs[0] - manual) <= 0.02 * max(1.0, abs(manual))


def _generation_requests(n: int = 4) -> list[_Req]:
    texts = ["Question: Tom has 3 apples and buys 4 more. How many apples?\nAnswer:",
             "Question: A train goes 60 km in an hour. How far in 3 hours?\nAnswer:",
             "Once upon a time", "The recipe needs two cups of"]
    return [_Req(t, {"until": ["Question:", "\n\n"], "max_gen_toks": 16, "do_sample": False}) for t in texts[:n]]


def test_generation_config_processors_as_generate(smollm2_tokenizer):
    """Repetition penalty, no-repeat n-grams, bad words, a minimum of new tokens and extra EOS ids
    from the model's generation_config: the engine (batched and exact) gives generate()'s text."""
    tok = smollm2_tokenizer
    model = _tiny(tok, seed=3)
    bad = tok.encode(" the", add_special_tokens=False)
    model.generation_config.update(repetition_penalty=1.4, no_repeat_ngram_size=2, bad_words_ids=[bad],
                                   min_new_tokens=5, eos_token_id=[tok.eos_token_id, tok.encode(".", add_special_tokens=False)[0]])
    requests = _generation_requests(2)
    hf = wrap_hf_model(model, tok, BackendOptions(batch_size=1))  # v1: batch size 1, model.generate
    ref = hf.generate_until(requests, disable_tqdm=True)
    plain = wrap_hf_model(_tiny(tok, seed=3), tok, BackendOptions(batch_size=1)).generate_until(requests, disable_tqdm=True)
    assert ref != plain  # the processors changed what generate() produces
    for mode in ("batched", "exact"):
        assert wrap_model(model, tok, BackendOptions(generation=mode)).generate_until(requests) == ref


@pytest.mark.parametrize("setting", [{"num_beams": 2}, {"guidance_scale": 1.5}])
def test_unsupported_generation_config_is_refused(tiny_tokenizer, setting):
    model = _tiny(tiny_tokenizer)
    model.generation_config.update(**setting)
    engine = wrap_model(model, tiny_tokenizer, BackendOptions())
    with pytest.raises(EvalsuiteError, match="lm-eval-hf") as info:
        engine.generate_until(_generation_requests(1))
    assert "\n" not in str(info.value)


def test_empty_context_is_eos_in_both_backends(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.bos_token_id != tok.eos_token_id  # else the test could not tell them apart
    model = _tiny(tok)
    engine, hf = wrap_model(model, tok, BackendOptions()), wrap_hf_model(model, tok, BackendOptions())
    cont = tok.encode("Hello world, again", add_special_tokens=False)
    assert engine.encode_pair("", "Hello world, again") == ([tok.eos_token_id], cont)
    manual = _manual(model, [tok.eos_token_id], cont, torch.float32)
    for lm in (engine, hf):
        assert lm.loglikelihood([_Req("", "Hello world, again")], **({} if lm is engine else {"disable_tqdm": True}))[0][0] == pytest.approx(manual, abs=1e-4)


def test_config_dtype_outside_the_registry(tiny_tokenizer, tmp_path):
    from evalsuite.models.loading import resolve_dtype
    from evalsuite.models.registry import resolve_model

    folder = build_tiny_llama(tiny_tokenizer, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (folder / "config.json").write_text(json.dumps(config))
    spec = resolve_model(str(folder))
    assert resolve_dtype(spec, "cuda", None)[0] == "bfloat16"  # the config's, as v1 loaded it
    assert resolve_dtype(spec, "cpu", None)[0] == "float32"  # the documented CPU default
    assert resolve_dtype(spec, "cuda", "float16")[0] == "float16"
    solar = resolve_model("solar")
    assert resolve_dtype(solar, "cuda", None)[0] == "float16"  # registry aliases keep theirs


def test_tokenizer_cleans_up_like_period_transformers(tiny_tokenizer, tmp_path):
    """A tokenizer config without ``clean_up_tokenization_spaces`` decodes " ." as "." (4.3x);
    one that says False keeps the space. Both backends decode with the tokenizer loaded here."""
    from evalsuite.models.loading import load_transformers
    from evalsuite.models.registry import resolve_model
    from evalsuite.models.source import materialize

    folder = build_tiny_llama(tiny_tokenizer, tmp_path / "m")
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("clean_up_tokenization_spaces", None)
    cfg_path.write_text(json.dumps(cfg))
    ids = tiny_tokenizer.encode("#### 5 . Done , yes", add_special_tokens=False)
    _, tok = load_transformers(materialize(resolve_model(str(folder))), "float32", "cpu")
    assert tok.decode(ids) == "#### 5. Done, yes"
    cfg["clean_up_tokenization_spaces"] = False
    cfg_path.write_text(json.dumps(cfg))
    _, tok = load_transformers(materialize(resolve_model(str(folder))), "float32", "cpu")
    assert tok.decode(ids) == "#### 5 . Done , yes"


# ---------------------------------------------------------------------------- interfaces
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="leaderboard data not available")


@needs_data
def test_batched_pair_split_is_template_lm_s(tiny_tokenizer):
    """plan_requests' one-call tokenization gives TemplateLM._encode_pair's ids on real prompts."""
    from evalsuite.tasks import LoadedTask, load_spec

    engine = wrap_model(_tiny(tiny_tokenizer), tiny_tokenizer, BackendOptions())
    pairs = [("", "Hello"), ("Answer: ", "yes"), ("ctx", " a"), ("ctx  ", "b ")]
    for task in ("arc", "mmlu", "winogrande", "truthfulqa"):
        pairs += [inst.args for p in LoadedTask(load_spec(task), SHARED_DATA).prompts(2)[:4] for inst in p.instances]
    assert encode_pairs(tiny_tokenizer, pairs) == [engine.encode_pair(c, x) for c, x in pairs]


@needs_data
@pytest.mark.parametrize("attention", ["tree", "cache"])
def test_plan_requests_counts_what_the_engine_runs(tiny_tokenizer, attention):
    """Without a model the plan counts the tokens, forwards and scored positions the engine runs,
    across chunked calls (root trunks kept between them) as the runner sends them."""
    from evalsuite.tasks import LoadedTask, load_spec

    tok = tiny_tokenizer
    engine = wrap_model(_tiny(tok), tok, BackendOptions(), token_budget=512, attention=attention)
    prompts = LoadedTask(load_spec("mmlu"), SHARED_DATA).prompts(4)[:4]  # one subject
    chunks = [[i for p in prompts[:2] for i in p.instances], [i for p in prompts[2:] for i in p.instances]]
    engine.stats.reset()
    for chunk in chunks:
        engine.loglikelihood(chunk)
    summary = plan_requests(tok, chunks[0] + chunks[1], engine.max_length, "cpu", chunks=[len(c) for c in chunks],
                            token_budget=512, attention=attention)
    s = engine.stats
    assert (summary.forwarded_tokens, summary.real_tokens, summary.forward_passes, summary.scored_positions,
            summary.reused_tokens, summary.unique_tokens) == (
        s.forwarded_tokens, s.real_tokens, s.forward_calls, s.scored_positions, s.reused_tokens, s.unique_tokens)
    assert summary.reused_tokens > 100  # the subject's 5-shot preamble, from the first call
    gen = plan_requests(tok, [_Req("Question: 1+1?\nAnswer:", {"until": [":"], "max_gen_toks": 7})], 2048)
    assert gen.prompt_tokens == len(tok.encode("Question: 1+1?\nAnswer:", add_special_tokens=False))
    assert gen.generation_budget == 7


def test_token_logprobs_match_a_plain_forward(tiny_tokenizer):
    tok = tiny_tokenizer
    model = _tiny(tok)
    engine = wrap_model(model, tok, BackendOptions())
    texts = ["The quick brown fox jumps over the lazy dog.", "The quick brown fox", "Zebra", ""]
    out = engine.token_logprobs(texts)
    for text, got in zip(texts, out):
        ids = tok.encode(text, add_special_tokens=False)
        assert got.tokens == ids and len(got.logprobs) == len(ids)
        if not ids:
            continue
        with torch.no_grad():
            logits = model(torch.tensor([[tok.eos_token_id] + ids])).logits[0, :-1].float()
        expected = torch.log_softmax(logits, -1)[torch.arange(len(ids)), torch.tensor(ids)]
        assert got.logprobs == pytest.approx(expected.tolist(), abs=1e-4)


def test_unsupported_library_versions_fail_with_one_line():
    with pytest.raises(EvalsuiteError) as info:
        compat.check_versions({"transformers": "4.55.2", "lm_eval": "0.4.13"})
    assert "transformers>=4.56,<6" in str(info.value) and "\n" not in str(info.value)
    compat.check_versions({"transformers": "5.24.0", "lm_eval": "0.4.13"})


def test_template_patch_is_scoped():
    from lm_eval import utils

    original = utils.apply_template
    with compat.compiled_templates():
        assert utils.apply_template is not original
        with compat.compiled_templates():
            assert utils.apply_template("{{x}}!", {"x": 1}) == "1!"
        assert utils.apply_template is not original
    assert utils.apply_template is original


