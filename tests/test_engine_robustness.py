"""The engine on a card that is full, a model it ran before, and a route that breaks mid-run.

* Out-of-memory back-off: the real ``torch.OutOfMemoryError`` is raised by the tiny model's own
  decoder above a chosen number of rows (what a card does, which the CPU cannot show); every
  executor and every generation route halves its batch down to one row and gives the numbers
  of the run that never ran out; one row that does not fit is one line naming the task, the
  document and the length.
* The token budget from free memory (the decision, with CUDA's free memory given).
* The capability decision remembered per model content and engine code.
* The probe's plans keep trunks (the past a cache executor must reuse).
* A route that raises mid-run, through ``evaluate``: the task's row and the run's notes say so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import SHARED_DATA, build_tiny_llama
from evalsuite.backends import BackendOptions
from evalsuite.backends.engine import capabilities, decisions, memory, planner, wrap_model
from evalsuite.backends.engine.prefix_tree import tree_of
from evalsuite.errors import EvalsuiteError
from evalsuite.run.evaluation import run_requests
from evalsuite.tasks import LoadedTask, load_spec

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="leaderboard data not available")

#: per-request |Δ log-likelihood| allowed between a backed-off and an un-backed-off run (float32:
#: only the kernels' blocking at another batch shape differs)
TOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizer) -> tuple[Any, Any, Path]:
    from transformers import AutoModelForCausalLM

    folder = build_tiny_llama(tiny_tokenizer, tmp_path_factory.mktemp("oom-llama"))
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), tiny_tokenizer, folder


@pytest.fixture(scope="module")
def prompts() -> dict[str, list[Any]]:
    gsm8k = LoadedTask(load_spec("gsm8k"), SHARED_DATA).prompts(3)
    for prompt in gsm8k:
        for inst in prompt.instances:
            context, kwargs = inst.arguments
            inst.arguments = (context, {**kwargs, "max_gen_toks": 12})
    return {"arc": LoadedTask(load_spec("arc"), SHARED_DATA).prompts(3),
            "hellaswag": LoadedTask(load_spec("hellaswag"), SHARED_DATA).prompts(2), "gsm8k": gsm8k}


class CardLimit:
    """The decoder raises torch's real ``OutOfMemoryError`` for more than ``rows`` rows or more
    than ``tokens`` tokens in one row, as a full card does; ``hits`` counts the refusals."""

    def __init__(self, model: Any, rows: int | None = None, tokens: int | None = None) -> None:
        self.decoder, self.rows, self.tokens, self.hits = model.model, rows, tokens, 0
        self.forward = self.decoder.forward

    def __enter__(self) -> CardLimit:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None and ((self.rows and ids.shape[0] > self.rows) or (self.tokens and ids.shape[1] > self.tokens)):
                self.hits += 1
                raise torch.OutOfMemoryError(f"CUDA out of memory (test card: {tuple(ids.shape)})")
            return self.forward(*args, **kwargs)

        self.decoder.forward = guarded
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.decoder.forward  # the class's forward again


def _close(got: list[list[Any]], want: list[list[Any]]) -> None:
    for a, b in zip(got, want, strict=True):
        for (ll, greedy), (ref, ref_greedy) in zip(a, b, strict=True):
            assert abs(ll - ref) <= TOL and greedy == ref_greedy, (ll, ref)


@pytest.mark.parametrize("attention", ["tree", "cache", "plain"])
def test_every_executor_backs_off_to_one_row(tiny, prompts, attention):
    model, tokenizer, _ = tiny
    engine = wrap_model(model, tokenizer, BackendOptions(batch_size=8), attention=attention, token_budget=1024)
    assert engine.executor.name == attention
    want = {task: run_requests(engine, prompts[task]) for task in ("arc", "hellaswag")}
    engine.forget()
    with CardLimit(model, rows=1) as card:
        got = {task: run_requests(engine, prompts[task]) for task in ("arc", "hellaswag")}
    assert card.hits > 0 and engine.stats.oom_splits > 0
    for task in want:
        _close(got[task], want[task])


@pytest.mark.parametrize("mode", ["batched", "exact"])
def test_generation_backs_off_to_one_row(tiny, prompts, mode):
    model, tokenizer, _ = tiny
    engine = wrap_model(model, tokenizer, BackendOptions(max_gen_toks=12, generation=mode))
    assert engine.generator.route == mode
    want = run_requests(engine, prompts["gsm8k"])
    with CardLimit(model, rows=1) as card:
        got = run_requests(engine, prompts["gsm8k"])
    assert got == want
    if mode == "batched":  # three prompts decoded together ran out: then one at a time (3 // 2)
        assert card.hits >= 1 and engine.generator.oom_splits >= 1 and engine.stats.oom_splits >= 1


@pytest.mark.parametrize("attention,task", [("tree", "arc"), ("plain", "arc"), ("cache", "gsm8k")])
def test_one_row_that_does_not_fit_is_one_line(tiny, prompts, attention, task):
    model, tokenizer, _ = tiny
    engine = wrap_model(model, tokenizer, BackendOptions(batch_size=8, max_gen_toks=12), attention=attention)
    with CardLimit(model, tokens=200), pytest.raises(EvalsuiteError) as caught:
        run_requests(engine, prompts[task][:1])
    message = str(caught.value)
    assert "\n" not in message and "out of memory" in message and "one row at a time" in message
    doc = prompts[task][0].instances[0].doc_id
    name = prompts[task][0].instances[0].task_name
    assert f"{name} document {doc} (" in message and " tokens)" in message, message


# --------------------------------------------------------------------------- the token budget
def test_budget_from_free_memory_decision():
    from transformers import LlamaConfig

    big = LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                      num_key_value_heads=8)
    small = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                        num_key_value_heads=32)
    gib = 2**30
    assert memory.budget_from_free(2 * gib, big, 2, True) < memory.budget_from_free(40 * gib, big, 2, True)
    assert memory.budget_from_free(40 * gib, small, 2, True) > memory.budget_from_free(40 * gib, big, 2, True)
    assert memory.budget_from_free(40 * gib, small, 2, False) >= memory.budget_from_free(40 * gib, small, 2, True)
    assert memory.budget_from_free(0, big, 2, True) == memory.MIN_BUDGET
    assert memory.budget_from_free(10**15, small, 2, True) == memory.MAX_BUDGET
    for free in (1, 3, 17, 70):
        assert memory.budget_from_free(free * gib, big, 2, True) % 256 == 0


def test_budget_follows_the_device(tiny, monkeypatch):
    model, tokenizer, _ = tiny
    assert wrap_model(model, tokenizer, BackendOptions()).token_budget == planner.DEFAULT_TOKEN_BUDGET["cpu"]
    # CUDA: the free memory decides (the card's numbers given, as torch.cuda would report them)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * 2**30, 80 * 2**30))
    budget, note = memory.device_budget(model, torch.device("cuda", 0), True)
    assert budget == memory.budget_from_free(3 * 2**30, model.config, 4, True) and "3.0 GiB free" in note
    monkeypatch.setenv(memory.ENV_BUDGET, "300")
    engine = wrap_model(model, tokenizer, BackendOptions())
    assert engine.token_budget == 300 and memory.ENV_BUDGET in engine.engine_note


def test_spread_model_leaves_headroom_on_every_gpu():
    from evalsuite.models.loading import GPU_HEADROOM_MIN, gpu_max_memory

    gib = 2**30
    caps = gpu_max_memory([80 * gib, 80 * gib, 24 * gib])
    assert caps[0] == caps[1] == 80 * gib - 12 * gib
    assert caps[2] == 24 * gib - max(int(24 * gib * 0.15), GPU_HEADROOM_MIN)
    assert gpu_max_memory([gib]) == {0: 0}


# --------------------------------------------------------------------------- the probe's plan
@pytest.mark.parametrize("length", [16, 64, 200, 1000])
@pytest.mark.parametrize("copies_past", [True, False])
def test_probe_plans_keep_a_trunk_and_reuse_it(length, copies_past):
    requests = capabilities.probe_requests(4096, length)
    budgets = capabilities.probe_budgets(requests, "cpu", copies_past)
    first = max(1, len(requests) // 2)
    memory_keys: list[tuple[int, ...]] = []
    plans = []
    for part in (requests[:first], requests[first:]):
        plan = planner.plan_forwards(tree_of(part, 4096), budgets, list(memory_keys))
        for step in plan.steps:
            if isinstance(step, planner.Remember):
                planner.remember(memory_keys, step.key)
        plans.append(plan)
    assert capabilities.plan_keeps_trunks(plans[0]), plans[0].steps
    if length >= 2 * planner.FOLD_TRUNK:  # a shorter trunk is recomputed rather than reused, by design
        assert plans[1].reused_tokens > 0  # the second call starts from the remembered trunk


def test_the_cache_executor_is_declined_for_a_model_that_ignores_the_cache(tiny):
    """A model that drops the past it is handed (its attention recomputes from its own tokens)
    passes a probe without a trunk; the probe's kept trunk catches it."""
    model, tokenizer, _ = tiny
    forward = model.model.forward

    def ignore_cache(*args: Any, **kwargs: Any) -> Any:
        for key in ("past_key_values", "cache"):
            if kwargs.get(key) is not None and kwargs[key].get_seq_length() > 0:
                kwargs[key] = type(kwargs[key])()
        return forward(*args, **kwargs)

    model.model.forward = ignore_cache
    try:
        engine = wrap_model(model, tokenizer, BackendOptions(), attention="cache")
    finally:
        del model.model.forward
    assert engine.capabilities.loglikelihood != "cache" and "cache" in engine.capabilities.declined, engine.engine_note


# --------------------------------------------------------------------------- the decision remembered
def test_decision_is_reused_for_the_same_model_and_code_only(tiny, monkeypatch):
    model, tokenizer, _ = tiny
    calls = []
    decide = capabilities.decide
    monkeypatch.setattr(capabilities, "decide", lambda *a, **k: calls.append(1) or decide(*a, **k))
    first = wrap_model(model, tokenizer, BackendOptions(), decision_key="weights-a|files-a")
    second = wrap_model(model, tokenizer, BackendOptions(), decision_key="weights-a|files-a")
    assert len(calls) == 1 and not first.decision_reused and second.decision_reused
    assert second.capabilities == first.capabilities and "reused" in second.engine_note
    wrap_model(model, tokenizer, BackendOptions(), decision_key="weights-b|files-a")  # other content
    wrap_model(model, tokenizer, BackendOptions(generation="exact"), decision_key="weights-a|files-a")  # other mode
    assert len(calls) == 3
    monkeypatch.setattr(decisions, "code_version", lambda: "another engine")
    assert not wrap_model(model, tokenizer, BackendOptions(), decision_key="weights-a|files-a").decision_reused
    monkeypatch.undo()
    monkeypatch.setattr(capabilities, "decide", lambda *a, **k: calls.append(1) or decide(*a, **k))
    key = decisions.full_key("weights-a|files-a", model, first.max_length, None, "batched")
    decisions.path_of(key).write_text("{not json")  # damaged: probed again, rewritten
    assert not wrap_model(model, tokenizer, BackendOptions(), decision_key="weights-a|files-a").decision_reused
    assert decisions.load(key) == first.capabilities


# --------------------------------------------------------------------------- through a run
def test_a_run_reuses_the_decision_and_notes_a_route_abandoned(tiny, tmp_path, monkeypatch):
    """Two runs of one model folder: the second reuses the decision (the run notes say so); a
    changed model folder is probed again; a route that raises mid-run is named in the task's row
    and in the run's notes, and the run ends ok. evalsuite's cache is this test's own, so no
    earlier test's decision for the same tiny model is found."""
    from evalsuite.run.evaluation import evaluate

    monkeypatch.setenv("EVALSUITE_CACHE", str(tmp_path / "evalsuite-cache"))

    _, _, folder = tiny
    calls = []
    decide = capabilities.decide
    monkeypatch.setattr(capabilities, "decide", lambda *a, **k: calls.append(1) or decide(*a, **k))

    def run(results: Path) -> Any:
        return evaluate(str(folder), tasks="arc", limit=2, data_dir=SHARED_DATA, results_dir=results, batch_size=4,
                        progress=False, use_cache=False, audit=False)

    first, second = run(tmp_path / "r1"), run(tmp_path / "r2")
    notes = [second.store.runs().iloc[0]["notes"], first.store.runs().iloc[0]["notes"]]
    assert len(calls) == 1 and "decision reused" in notes[0] and "decision reused" not in notes[1]
    config = folder / "generation_config.json"
    config.write_text(config.read_text().replace("{", '{"_note": "changed",', 1))  # another model's files
    run(tmp_path / "r3")
    assert len(calls) == 2
    # a route that raises in the run: the tree executor meets an error the probe never saw
    from evalsuite.backends.engine import executors

    real = executors.TreeAttentionExecutor._run

    def breaks_on_long_rows(self, ids, pos, local, pasts, keep):
        if ids.shape[1] > 300:
            raise IndexError("tuple index out of range")
        return real(self, ids, pos, local, pasts, keep)

    monkeypatch.setattr(executors.TreeAttentionExecutor, "_run", breaks_on_long_rows)
    third = run(tmp_path / "r4")
    row = third.scores().query("task == 'arc' and subtask != subtask").iloc[0]
    assert row["status"] == "ok" and "tree executor raised IndexError" in row["engine_note"], row["engine_note"]
    assert "tree executor raised IndexError" in third.store.runs().iloc[0]["notes"]
    assert third.store.runs().iloc[0]["status"] == "ok"


# --------------------------------------------------------------------------- rules
def test_fallback_order_skips_declined_routes():
    assert capabilities.next_route("tree", set()) == "cache"
    assert capabilities.next_route("tree", {"cache"}) == "plain"
    assert capabilities.next_route("cache", set()) == "plain"
    assert capabilities.next_route("batched", set()) == "exact"
    assert capabilities.next_route("batched", {"exact"}) == "plain"
    assert capabilities.next_route("exact", set()) == "plain"


def test_length_switches_read_from_the_rope_settings():
    from transformers import LlamaConfig, Phi3Config

    class Model:  # the two attributes length_switches reads
        def __init__(self, config: Any) -> None:
            self.config = config

    phi = Phi3Config(hidden_size=64, num_attention_heads=4, max_position_embeddings=131072,
                     original_max_position_embeddings=4096,
                     rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 8,
                                      "long_factor": [2.0] * 8, "original_max_position_embeddings": 4096})
    assert capabilities.length_switches(Model(phi), 131072) == [(4096, "longrope")]
    assert capabilities.length_switches(Model(phi), 4096) == []  # never longer than the switch: no effect
    dynamic = LlamaConfig(max_position_embeddings=2048, rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                                                        "rope_theta": 1e4})
    assert capabilities.length_switches(Model(dynamic), 8192) == [(2048, "dynamic")]
    assert capabilities.length_switches(Model(LlamaConfig()), 8192) == []
    assert memory.is_oom(torch.OutOfMemoryError("x")) and memory.is_oom(MemoryError())
    assert not memory.is_oom(IndexError("tuple index out of range"))


def test_slot_state_copies_positions_and_masks_to_a_layer_device_once_per_step():
    """A model spread over GPUs: each layer's slot buffers live on its device, and the step's
    positions and masks are copied there once (the "meta" device stands in for a second GPU)."""
    from evalsuite.backends.engine.generation import SlotState

    state = SlotState(capacity=8, slots=2)
    state.begin_step(torch.tensor([3, 5]), windows=(None, 4))
    other = torch.device("meta")
    assert state.positions_on(torch.device("cpu")) is state.positions
    moved = state.positions_on(other)
    assert moved.device == other and state.positions_on(other) is moved  # copied once
    assert state.mask(1, other).device == other and state.mask(1, other) is state.mask(1, other)
    assert state.mask(0, other).shape == state.mask(0).shape
    state.begin_step(torch.tensor([4, 6]), windows=(None, 4))
    assert state.positions_on(other) is not moved  # a new step, new copies
