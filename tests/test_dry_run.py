"""``run --dry-run``: the counts are those of the real requests, and no weights are loaded.

Expected numbers are computed here the slow, direct way: every request tokenized by the
engine's own HFLM-style split, lm-eval's distinct inputs summed, and a real
:class:`~evalsuite.backends.engine.prefix_tree.PrefixTree` built per runner call.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import evalsuite
from evalsuite.backends import BackendOptions
from evalsuite.run.dry_run import CostPlan
from evalsuite.tasks.piecewise import PiecewiseEncoder
from evalsuite.run.speed_profile import fit_forward_time
from evalsuite.tasks import LoadedTask, load_spec

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def isolated_cache(tmp_path, monkeypatch):
    """evalsuite's cache in a tmp folder (the converted SmolLM2 is not needed by these tests)."""
    cache = tmp_path / "evalsuite-cache"
    monkeypatch.setenv("EVALSUITE_CACHE", str(cache))
    return cache


def _requests(task: LoadedTask, limit: int):
    prompts = task.prompts(limit)
    return prompts, [tuple(inst.args) for p in prompts for inst in p.instances]


@pytest.mark.parametrize("name,limit", [("arc", 4), ("hellaswag", 6), ("mmlu", 1), ("truthfulqa", 4),
                                        ("winogrande", 8), ("gsm8k", 6)])
def test_piecewise_tokenization_equals_plain_encoding(name, limit, data_dir, smollm2_tokenizer):
    task = LoadedTask(load_spec(name), data_dir)
    _, pairs = _requests(task, limit)
    texts = [c for c, _ in pairs]
    conts = [k if isinstance(k, str) else "" for _, k in pairs]
    encoder = PiecewiseEncoder(smollm2_tokenizer, verify=0)  # no self-check: compare everything here
    got = encoder.encode(texts, conts)
    plain = smollm2_tokenizer([t + k for t, k in zip(texts, conts)], add_special_tokens=False)["input_ids"]
    assert got == [tuple(ids) for ids in plain]
    assert not encoder.fallback
    if name in ("arc", "mmlu", "hellaswag"):  # shots and contexts were shared, not re-encoded
        assert encoder.pieces_encoded < len(texts) * (load_spec(name).num_fewshot + 1)


def test_piecewise_tokenization_with_a_start_sensitive_tokenizer(data_dir):
    """A SentencePiece-style tokenizer (Metaspace, "▁" prepended at the start of a string only),
    trained here on real prompts: pieces at a prompt's start are encoded as starts."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    task = LoadedTask(load_spec("arc"), data_dir)
    _, pairs = _requests(task, 3)
    texts = [c + k for c, k in pairs]
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    raw.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    encoder = PiecewiseEncoder(tokenizer, verify=0)
    got = encoder.encode([c for c, _ in pairs], [k for _, k in pairs])
    assert encoder._start == "start"
    assert got == [tuple(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


@pytest.mark.parametrize("name,limit", [("mmlu", 3), ("hellaswag", 40), ("winogrande", 40), ("truthfulqa", 40)])
def test_engine_plan_equals_the_engines_plan_requests(name, limit, data_dir, smollm2_tokenizer):
    """The dry run's engine count is the engine's own planner on the engine's own tokenization
    (``plan_requests``), call by call as the runner sends the documents; MMLU's 3 per subject
    span subjects across calls (preambles kept between calls), HellaSwag/Winogrande/TruthfulQA's
    40 documents are two calls."""
    from evalsuite.backends.engine import plan_requests
    from evalsuite.run.dry_run import _plan_task
    from evalsuite.config import CHUNK_DOCS

    task = LoadedTask(load_spec(name), data_dir)
    prompts, _ = _requests(task, limit)
    chunks = [sum(len(p.instances) for p in prompts[i:i + CHUNK_DOCS]) for i in range(0, len(prompts), CHUNK_DOCS)]
    expected = plan_requests(smollm2_tokenizer, [i for p in prompts for i in p.instances], 8192, "cpu", chunks=chunks)
    got = _plan_task(task, smollm2_tokenizer, 8192, limit, None, "evalsuite", None)
    assert got.engine_planned  # small enough for the engine's planner
    assert got.engine_tokens == expected.forwarded_tokens
    assert got.engine_unique_tokens == expected.unique_tokens - expected.reused_tokens
    assert (got.forward_passes, got.scored_positions) == (expected.forward_passes, expected.scored_positions)
    if name == "mmlu":
        assert expected.reused_tokens > 0  # a subject's preamble carried into the next call
    # the fast count used for large tasks: the same prefix trees, the kept preambles modelled
    from evalsuite.backends.engine.prefix_tree import truncated_inputs
    from evalsuite.backends.engine.planner import count_calls
    from evalsuite.backends.engine.tokenize import encode_pairs

    encoded = encode_pairs(smollm2_tokenizer, [tuple(i.args) for p in prompts for i in p.instances])
    calls, at = [], 0
    for n in chunks:
        calls.append([tuple(truncated_inputs(c, k, 8192)) for c, k in encoded[at:at + n]])
        at += n
    fast = count_calls(calls)
    assert fast.unique == expected.unique_tokens
    assert abs(fast.reused - expected.reused_tokens) <= 0.1 * expected.reused_tokens


def test_fast_tree_builder_equals_inserting_every_request(data_dir, smollm2_tokenizer):
    """The engine's ``tree_of`` (reusing the previous request's path) is node for node the trie
    built by walking every token of every request (``PrefixTree.insert``)."""
    from evalsuite.backends.engine.prefix_tree import PrefixTree, tree_of, truncated_inputs
    from evalsuite.backends.engine.tokenize import encode_pairs

    for name, limit in (("hellaswag", 8), ("mmlu", 1), ("winogrande", 16), ("truthfulqa", 8)):
        _, pairs = _requests(LoadedTask(load_spec(name), data_dir), limit)
        batch = encode_pairs(smollm2_tokenizer, pairs)
        for max_length in (8192, 300):  # and with left truncation
            slow = PrefixTree()
            for index, (context, continuation) in enumerate(batch):
                slow.insert(index, truncated_inputs(context, continuation, max_length), continuation)
            slow.finalize()
            fast = tree_of(batch, max_length)
            assert (fast.token, fast.parent, fast.depth, fast.size) == (slow.token, slow.parent, slow.depth, slow.size)
            assert [list(c.items()) for c in fast.children] == [list(c.items()) for c in slow.children]
            assert list(fast.scores.items()) == list(slow.scores.items())


def test_dry_run_counts_the_real_requests_without_loading_weights(tiny_llama_dir, data_dir, tmp_path,
                                                                  isolated_cache, monkeypatch):
    import evalsuite.models.loading
    import evalsuite.models.source
    from evalsuite.backends.engine import wrap_model
    from evalsuite.config import CHUNK_DOCS

    from evalsuite.run.speed_profile import measured_speed

    # the short timed forward is its own step, done once and kept in the cache
    measured_speed(evalsuite.models.source.resolve_and_materialize(str(tiny_llama_dir)), "float32", "cpu")

    def no_weights(*args, **kwargs):
        raise AssertionError("the dry run loaded weights")

    monkeypatch.setattr(evalsuite.models.loading, "load_transformers", no_weights)
    results = tmp_path / "results"
    plan = evalsuite.plan_cost(models=[str(tiny_llama_dir)], tasks=["arc", "mmlu", "gsm8k"], limit=2,
                               data_dir=data_dir, results_dir=results)
    assert isinstance(plan, CostPlan) and not results.exists()
    monkeypatch.undo()
    by_task = {t.task: t for t in plan.models[0].tasks}

    # the expected numbers, the slow way: the engine's own tokenization and PrefixTree per call
    from transformers import AutoModelForCausalLM, AutoTokenizer

    engine = wrap_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir),
                        BackendOptions())
    for name in ("arc", "mmlu"):
        prompts, _ = _requests(LoadedTask(load_spec(name), data_dir), 2)
        lm_eval_tokens = 0
        for start in range(0, len(prompts), CHUNK_DOCS):
            pairs = [tuple(inst.args) for p in prompts[start:start + CHUNK_DOCS] for inst in p.instances]
            encoded = [engine._encode_pair(c, k) for c, k in pairs]  # lm-eval's own split
            lm_eval_tokens += sum(len(x) for x in {tuple(c + k)[:-1] for c, k in encoded})
        got = by_task[name]
        assert (got.docs, got.requests) == (len(prompts), sum(len(p.instances) for p in prompts))
        assert got.lm_eval_tokens == lm_eval_tokens
        assert 0 < got.engine_unique_tokens <= got.engine_tokens < got.lm_eval_tokens
        assert got.est_seconds is not None and got.est_seconds > 0
    assert by_task["mmlu"].engine_tokens < 0.7 * by_task["mmlu"].lm_eval_tokens  # each subject preamble once per call
    gsm = by_task["gsm8k"]
    prompts, _ = _requests(LoadedTask(load_spec("gsm8k"), data_dir), 2)
    assert gsm.lm_eval_tokens == sum(len(engine.tok_encode(p.contexts[0])) for p in prompts)
    assert gsm.new_tokens_max == 2 * 256 and 0 < gsm.new_tokens_expected <= gsm.new_tokens_max
    assert gsm.est_seconds_max >= gsm.est_seconds > 0
    # the speed measurement went to the isolated cache, and the table names every task
    assert list((isolated_cache / "speed").glob("*.json"))
    table = plan.table()
    assert all(name in table for name in ("arc", "mmlu", "gsm8k", "total", "time: from forwards"))
    # the self-audit's cost: the very sample the run's audit takes (same counting, same seed)
    from evalsuite.run.audit import Auditor
    from evalsuite.run.audit_sample import PLAIN_TOKEN_COST

    auditor = Auditor(engine)
    for name in ("arc", "mmlu", "gsm8k"):
        task, got = LoadedTask(load_spec(name), data_dir), by_task[name]
        assert got.audit == auditor.sample(task, task.prompts(2), "dry-run")
        assert got.audit.tokens > 0 and got.audit_est_seconds > 0
        assert got.audit.budget == int(0.03 * got.audit.engine_tokens / PLAIN_TOKEN_COST)
        assert got.audit.tokens <= got.audit.budget or (not got.audit.documents and got.audit.partial)
    assert "audit" in table.splitlines()[1] and "audit: the self-audit's sample" in table


@pytest.mark.slow
def test_cli_dry_run_prints_the_plan_and_writes_no_results(tiny_llama_dir, data_dir, tmp_path, isolated_cache):
    import os

    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "evalsuite.cli", "run", "--dry-run", "--no-measure", "--models",
                           str(tiny_llama_dir), "--tasks", "winogrande,truthfulqa", "--limit", "3", "--data-dir",
                           str(data_dir), "--results-dir", str(results)],
                          capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "EVALSUITE_CACHE": str(isolated_cache)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line.split() and line.split()[0] in ("winogrande", "truthfulqa", "total")}
    assert set(rows) == {"winogrande", "truthfulqa", "total"}
    assert rows["winogrande"][1] == "3/1267" and rows["truthfulqa"][1] == "3/817"
    assert "time: not estimated" in proc.stdout
    assert not results.exists() and not (isolated_cache / "speed").exists()


def test_forward_time_fit_is_non_negative_and_exact_on_a_quadratic():
    c0, c1, c2 = fit_forward_time({128: 0.01 + 128 * 1e-3 + 128**2 * 1e-7, 512: 0.01 + 512 * 1e-3 + 512**2 * 1e-7,
                                   1024: 0.01 + 1024 * 1e-3 + 1024**2 * 1e-7})
    assert (c0, c1, c2) == pytest.approx((0.01, 1e-3, 1e-7), rel=1e-6)
    noisy = fit_forward_time({128: 1.4, 512: 7.6, 1024: 11.4})  # a loaded machine: concave timings
    assert all(c >= 0 for c in noisy)


def test_plan_to_dict_is_json(tiny_llama_dir, data_dir, isolated_cache):
    plan = evalsuite.plan_cost(models=[str(tiny_llama_dir)], tasks=["winogrande"], limit=2, data_dir=data_dir, measure=False)
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["models"][0]["tasks"][0]["task"] == "winogrande"


# -- the engine's token budget on CUDA: the run's rule on the card's memory less the weights -------
H100, H200, A100_40GB = 85_000_000_000, 150_754_820_096, 42_505_273_344  # what torch reports
SOLAR_PARAMS, MIXTRAL_PARAMS = 10_731_524_096, 46_702_792_704


def _solar_config():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                       num_hidden_layers=48, vocab_size=32000)


def test_the_cuda_dry_run_budget_follows_the_cards_memory(monkeypatch):
    """The planned budget is the run's budget_from_free on (card - weights), not the fixed 16,384:
    SOLAR in bf16 gets more on an H200 than on an H100, and far less on a 40 GB A100."""
    from evalsuite.backends.engine import DEFAULT_TOKEN_BUDGET
    from evalsuite.backends.engine.memory import ENV_BUDGET, MIN_BUDGET, budget_from_free
    from evalsuite.run.dry_run import gpu_token_budget

    config, weights = _solar_config(), SOLAR_PARAMS * 2
    budgets = {}
    for name, memory in {"H100": H100, "H200": H200, "A100": A100_40GB}.items():
        budget, note = gpu_token_budget(config, "bfloat16", SOLAR_PARAMS, [memory])
        assert budget == budget_from_free(memory - weights, config, 2, copies_past=True), name
        assert "does not load the model" in note and f"token budget {budget}" in note
        budgets[name] = budget
    assert budgets["A100"] < DEFAULT_TOKEN_BUDGET["cuda"] < budgets["H100"] < budgets["H200"]
    # several GPUs, model fits on GPU 0: GPU 0's memory (the run puts it there alone)
    assert gpu_token_budget(config, "bfloat16", SOLAR_PARAMS, [H100] * 4)[0] == budgets["H100"]
    # Mixtral over two H100s: spread evenly, each card holding half the weights
    spread, note = gpu_token_budget(config, "bfloat16", MIXTRAL_PARAMS, [H100, H100])
    assert spread == budget_from_free(H100 - MIXTRAL_PARAMS * 2 // 2, config, 2, copies_past=True)
    assert "2 x 79 GiB" in note
    # float32 weights that leave nothing free: the smallest budget, not a negative one
    assert gpu_token_budget(config, "float32", SOLAR_PARAMS, [A100_40GB])[0] == MIN_BUDGET
    monkeypatch.setenv(ENV_BUDGET, "4096")  # the run's override wins here too
    assert gpu_token_budget(config, "bfloat16", SOLAR_PARAMS, [H200]) == (4096, f"token budget 4096 ({ENV_BUDGET})")


def test_a_cuda_dry_run_reads_this_machines_cards(monkeypatch):
    """plan_cost's helper on a stand-in device reader (no GPU here): SOLAR from the registry on
    the GPUs torch would list; ``cuda:1`` plans for that card alone."""
    from types import SimpleNamespace

    from evalsuite.models import devices
    from evalsuite.models.identity import ModelSource
    from evalsuite.models.registry import resolve_model
    from evalsuite.run.dry_run import _cuda_budget, gpu_token_budget

    spec = resolve_model("solar")
    model = SimpleNamespace(opened=SimpleNamespace(config=_solar_config()), source=ModelSource(spec, spec.source, None, None))
    monkeypatch.setattr(devices, "torch_gpus", lambda: [devices.GpuInfo("NVIDIA H100", H100),
                                                        devices.GpuInfo("NVIDIA A100-SXM4-40GB", A100_40GB)])
    assert _cuda_budget(model, "bfloat16", "cuda") == gpu_token_budget(_solar_config(), "bfloat16", SOLAR_PARAMS, [H100])
    assert _cuda_budget(model, "bfloat16", "cuda:1") == gpu_token_budget(_solar_config(), "bfloat16", SOLAR_PARAMS,
                                                                         [A100_40GB])
    monkeypatch.setattr(devices, "torch_gpus", lambda: [])
    assert _cuda_budget(model, "bfloat16", "cuda") == (None, None)


def test_the_task_plan_counts_passes_with_the_given_budget(tiny_tokenizer, data_dir):
    """_plan_task plans the engine's forwards with the budget it is given (a CUDA dry run's),
    exactly as the engine's planner does with that budget; without one, the device's default."""
    from evalsuite.backends.engine.tokenize import plan_calls
    from evalsuite.run.dry_run import _plan_task

    task = LoadedTask(load_spec("arc"), data_dir)
    default = _plan_task(task, tiny_tokenizer, 2048, 8, None, "evalsuite", None, "cuda")
    small = _plan_task(task, tiny_tokenizer, 2048, 8, None, "evalsuite", None, "cuda", token_budget=1024)
    assert default.engine_planned and small.engine_planned
    assert small.forward_passes > default.forward_passes
    prompts, _ = _requests(task, 8)
    from evalsuite.backends.engine.tokenize import encode_pairs

    encoded = encode_pairs(tiny_tokenizer, [tuple(i.args) for p in prompts for i in p.instances])
    assert small.forward_passes == plan_calls([encoded], 2048, "cuda", 1024).forward_passes


@pytest.mark.parametrize("name", ["winogrande", "arc"])
def test_the_dry_runs_audit_estimate_stays_within_the_share(name, tiny_tokenizer, data_dir):
    """Where the budget, not the one-request floor, sets the sample, the audit's estimated time
    is within --audit-share of the task's: the estimate prices a plain token as the budget does."""
    from evalsuite.run.dry_run import _plan_task
    from evalsuite.run.speed_profile import SpeedProfile

    speed = SpeedProfile("tiny", "float32", "cpu", 1, {}, fixed_s=0.04, per_token_s=1.3e-3, attention_s=3.5e-7,
                         decode_step_s=0.06, head_s=5e-4, measured_at="now", load_average=None, host="test")
    task = LoadedTask(load_spec(name), data_dir)
    plan = _plan_task(task, tiny_tokenizer, 2048, 400, None, "evalsuite", speed, "cpu", audit=(0.03, "run"))
    assert len(plan.audit.documents) >= 2 and plan.audit.tokens <= plan.audit.budget
    assert 0 < plan.audit_est_seconds <= 0.03 * plan.est_seconds


def test_a_cpu_dry_run_keeps_the_cpu_budget(tiny_llama_dir, data_dir, isolated_cache):
    plan = evalsuite.plan_cost(models=[str(tiny_llama_dir)], tasks=["arc"], limit=2, data_dir=data_dir, measure=False,
                               device="cpu")
    assert plan.models[0].token_budget is None and "engine budget" not in plan.table()


def test_durations_carry_the_hour():
    from evalsuite.run.dry_run import _duration

    assert _duration(1079.7 * 60) == "18 h 00 min"
    assert _duration(61 * 60) == "61 min"
    assert _duration(45) == "45 s"


@pytest.mark.slow  # two dry runs and two runs of MMLU, ARC and Winogrande (and again where load hit one side)
def test_estimate_is_within_1_5x_of_the_run(tiny_llama_dir, data_dir, tmp_path, isolated_cache, monkeypatch):
    """The dry run's time against the run it predicts, on the same machine at the same load: a
    tiny model on MMLU (57 subjects, each its own 5-shot preamble: where the estimate was 17x
    short), ARC and Winogrande. Estimate and run alternate twice in this one process and the
    sums are compared, so a burst of load on the shared machine moves both sides."""
    import time

    import evalsuite.run.evaluation as evaluation

    spent: dict[str, float] = {}
    real = evaluation._score_prompts

    def timed(lm, task, *args, **kwargs):  # the run's work on each task, as the estimate covers it
        start = time.perf_counter()
        try:
            return real(lm, task, *args, **kwargs)
        finally:
            spent[task.spec.name] = spent.get(task.spec.name, 0.0) + time.perf_counter() - start

    monkeypatch.setattr(evaluation, "_score_prompts", timed)
    common = dict(models=str(tiny_llama_dir), tasks="mmlu,arc,winogrande", limit=2, data_dir=data_dir,
                  progress=False, use_cache=False, audit=False)
    ratios = []
    for attempt in range(3):  # "at the same load": a round where a burst of load hit one side only is measured again
        spent.clear()
        estimated = 0.0
        for turn in range(2):
            plan = evalsuite.plan_cost(**common, remeasure=attempt == turn == 0)
            assert all(t.host_seconds > 0 for t in plan.models[0].tasks)
            estimated += plan.models[0].est_seconds
            evalsuite.evaluate(**common, results_dir=tmp_path / f"results{attempt}-{turn}")
        ratios.append(sum(spent.values()) / estimated)
        if 1 / 1.5 <= ratios[-1] <= 1.5:
            break
    assert 1 / 1.5 <= ratios[-1] <= 1.5, (ratios, spent)


def test_a_kept_profile_follows_the_load(tiny_llama_dir, isolated_cache, monkeypatch, capsys):
    """A profile measured at one load is scaled for another (busy cores: load / cores), and
    measured again when the machine is in another regime (beyond 2x)."""
    from evalsuite.models.registry import resolve_model
    from evalsuite.models.source import materialize
    from evalsuite.run import speed_profile

    source = materialize(resolve_model(str(tiny_llama_dir)))
    cpus = speed_profile.os.cpu_count()
    monkeypatch.setattr(speed_profile.os, "getloadavg", lambda: (1.0 * cpus, 0.0, 0.0))
    first = speed_profile.measured_speed(source, "float32", "cpu", again=True)
    assert first.load_average == 1.0 * cpus and first.load_scale == 1.0
    monkeypatch.setattr(speed_profile.os, "getloadavg", lambda: (1.5 * cpus, 0.0, 0.0))
    capsys.readouterr()
    busier = speed_profile.measured_speed(source, "float32", "cpu")
    assert "timing a few forwards" not in capsys.readouterr().out  # scaled, not measured
    assert busier.load_scale == pytest.approx(1.5) and busier.fixed_s == pytest.approx(1.5 * first.fixed_s)
    assert busier.per_token(512) == pytest.approx(1.5 * first.per_token(512))
    assert "x1.50 for the load average now" in busier.describe()
    monkeypatch.setattr(speed_profile.os, "getloadavg", lambda: (5.0 * cpus, 0.0, 0.0))
    again = speed_profile.measured_speed(source, "float32", "cpu")
    said = capsys.readouterr().out
    assert "timing a few forwards of" in said and "another regime" in said
    assert again.load_average == 5.0 * cpus and again.load_scale == 1.0
