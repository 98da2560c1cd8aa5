"""``evalsuite run --dry-run``: what a run will cost, before it starts, without loading weights.

For each model and task the plan counts, from the real requests tokenized by the model's own
tokenizer (:mod:`evalsuite.tasks.piecewise`, exact and fast):

* documents and requests;
* tokens lm-eval's ``hf`` model would run: every distinct model input once (it computes the
  requests of one context whose continuations differ only in their last token together, e.g.
  MMLU's " A".." D"), batch size 1, so no padding;
* tokens the evalsuite engine will run: the engine's own planner over the prefix tree of the
  requests as the runner sends them (:data:`~evalsuite.config.CHUNK_DOCS` documents per call),
  with the preambles it keeps across calls (:func:`~evalsuite.backends.engine.tokenize.plan_calls`): padding included;
* for generation (GSM8K), the prompt tokens and the budget: documents x 256 new tokens at most,
  and the expected count (each reference answer's length plus the stop);
* an estimated time on this machine from a short measured forward of the model
  (:mod:`evalsuite.run.speed_profile`): per-token cost at the task's median document length, and the cost of
  one decoding step.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from evalsuite.backends.registry import get_backend
from evalsuite.config import CHUNK_DOCS, RunConfig
from evalsuite.errors import DataFormatError
from evalsuite.run.audit_sample import PLAIN_TOKEN_COST
from evalsuite.run.preparation import default_dtype
from evalsuite.run.speed_profile import SpeedProfile

#: Shown for a generation task's budget; the protocol's ``max_gen_toks``.
MAX_NEW_TOKENS = 256
#: Up to this many prefix-tree tokens in a task, the engine's own planner is run on it (padding
#: and forward passes exact); it builds a node per token (~10 us each), so a full HellaSwag
#: (9.5 M) or MMLU (1.5 M) split gets the prefix-tree count instead.
PLANNER_TOKENS = 600_000


@dataclass
class TaskPlan:
    """One task's cost for one model."""

    task: str
    docs: int
    docs_total: int
    requests: int
    kind: str  # "loglikelihood" | "generate_until"
    lm_eval_tokens: int  # lm-eval hf: distinct model inputs, batch size 1
    engine_tokens: int  # the evalsuite engine's planner: tokens forwarded, padding included
    median_doc_tokens: int
    engine_unique_tokens: int = 0  # the prefix trees' size (less preambles kept between calls)
    forward_passes: int = 0  # from the engine's planner (0: not planned)
    scored_positions: int = 0
    engine_planned: bool = False  # engine_tokens from the engine's planner (else prefix-tree tokens)
    new_tokens_max: int = 0  # generation: docs x 256
    new_tokens_expected: int = 0  # generation: reference answer lengths + stop
    est_seconds: float | None = None  # for the chosen backend; generation: expected length
    est_seconds_max: float | None = None  # generation: every document runs to 256 tokens
    tokenizer_fallback: bool = False  # the fast tokenization disagreed with plain encoding
    plan_seconds: float = 0.0  # building the prompts, tokenizing and counting
    host_seconds: float = 0.0  # of est_seconds: the engine's tokenizing and prefix trees, timed on a sample now
    audit: Any = None  # the self-audit's sample (evalsuite.run.audit.AuditSample) when planned
    audit_est_seconds: float | None = None  # its estimated time on the plain executor


@dataclass
class ModelPlan:
    """The plan of one model over the tasks: what ``evaluate`` would do, with its cost."""

    model: str
    model_id: str
    backend: str
    device: str
    dtype: str
    limit: int | None
    max_length: int
    tasks: list[TaskPlan] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    speed: SpeedProfile | None = None
    token_budget: int | None = None  # the engine's tokens per forward planned with (None: the device's default)
    budget_note: str | None = None  # how that budget was set (CUDA)

    @property
    def est_seconds(self) -> float | None:
        values = [t.est_seconds for t in self.tasks]
        return None if not values or any(v is None for v in values) else float(sum(values))  # type: ignore[arg-type]

    @property
    def est_seconds_max(self) -> float | None:
        values = [t.est_seconds_max if t.est_seconds_max is not None else t.est_seconds for t in self.tasks]
        return None if not values or any(v is None for v in values) else float(sum(values))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["est_seconds"], out["est_seconds_max"] = self.est_seconds, self.est_seconds_max
        return out

    def table(self) -> str:
        """The plan as the terminal shows it."""
        header = ["task", "docs", "requests", "lm-eval hf tokens", "engine tokens", "new tokens (gen)", "est. time"]
        audited = any(t.audit is not None for t in self.tasks)
        if audited:
            header.append("audit")
        rows = []
        for t in self.tasks:
            docs = f"{t.docs}" + (f"/{t.docs_total}" if t.docs != t.docs_total else "")
            if t.kind == "generate_until":
                new = f"<= {t.new_tokens_max:,} (~{t.new_tokens_expected:,})"
                est = f"{_duration(t.est_seconds)} (<= {_duration(t.est_seconds_max)})"
            else:
                new, est = "-", _duration(t.est_seconds)
            engine = f"{t.engine_tokens:,}" + ("*" if t.kind == "loglikelihood" and not t.engine_planned else "")
            rows.append([t.task, docs, f"{t.requests:,}", f"{t.lm_eval_tokens:,}", engine, new, est])
            if audited:
                rows[-1].append(_audit_cell(t))
        total_est = _duration(self.est_seconds)
        if self.est_seconds_max is not None and self.est_seconds_max != self.est_seconds:
            total_est += f" (<= {_duration(self.est_seconds_max)})"
        rows.append(["total", f"{sum(t.docs for t in self.tasks):,}", f"{sum(t.requests for t in self.tasks):,}",
                     f"{sum(t.lm_eval_tokens for t in self.tasks):,}", f"{sum(t.engine_tokens for t in self.tasks):,}",
                     f"<= {sum(t.new_tokens_max for t in self.tasks):,}" if any(t.new_tokens_max for t in self.tasks) else "-",
                     total_est])
        if audited:
            tokens = sum(t.audit.tokens for t in self.tasks if t.audit is not None)
            seconds = [t.audit_est_seconds for t in self.tasks if t.audit is not None]
            known = [s for s in seconds if s is not None]  # no time without a speed profile
            cell = f"{tokens:,} tok"
            if len(known) == len(seconds):
                cell += f", {_duration(sum(known))}" + _share(sum(known), self.est_seconds)
            rows[-1].append(cell)
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = [f"dry run: {self.model} ({self.model_id}), {self.dtype} on {self.device}, backend {self.backend}, "
                 f"{'limit ' + str(self.limit) + ' per task (per subject for MMLU)' if self.limit else 'full splits'}; "
                 f"nothing was evaluated"]
        for i, r in enumerate([header, *rows]):
            lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
            if i == 0 or i == len(rows) - 1:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("tokens: what runs through the model; lm-eval hf = every distinct request input at batch size 1, "
                     "engine = the engine's planner on the prefix trees (shared prefixes once per call, padding "
                     f"included); new tokens: generation budget, documents x {MAX_NEW_TOKENS} (~ expected: reference "
                     "answer lengths + stop)")
        if audited:
            lines.append("audit: the self-audit's sample, re-run on the plain executor after each task (tokens, "
                         "estimated time, its share of the task's time): within --audit-share of the task's engine tokens, a plain "
                         f"token priced at {PLAIN_TOKEN_COST:g} engine tokens, at least one request "
                         "(docs/exactness.md)")
        if any(t.kind == "loglikelihood" and not t.engine_planned for t in self.tasks):
            lines.append(f"* prefix-tree tokens, without the engine's padding (a task with up to {PLANNER_TOKENS:,} of them "
                         "is planned by the engine's own planner, padding included: +1-2 % on HellaSwag and ARC)")
        lines.append("planned in " + ", ".join(f"{t.task} {t.plan_seconds:.1f} s" for t in self.tasks)
                     + " (prompts, tokenization, counting)")
        if self.budget_note:
            lines.append(f"engine budget: {self.budget_note}")
        if self.speed is not None:
            lines.append(f"time: {self.speed.describe()}")
        else:
            lines.append("time: not estimated (no speed measurement; run without --no-measure on the machine that will run it)")
        for name, why in self.unavailable.items():
            lines.append(f"{name}: not planned: {why}")
        if any(t.tokenizer_fallback for t in self.tasks):
            lines.append("note: piecewise tokenization disagreed with plain encoding for "
                         + ", ".join(t.task for t in self.tasks if t.tokenizer_fallback) + "; those tasks were encoded plainly")
        return "\n".join(lines)


@dataclass
class CostPlan:
    """What a run will cost (:func:`plan_cost`, ``evalsuite run --dry-run``): one :class:`ModelPlan` per model.
    (Not the engine's :class:`~evalsuite.backends.engine.planner.ForwardPlan` of one call.)"""

    models: list[ModelPlan]

    def table(self) -> str:
        return "\n\n".join(m.table() for m in self.models)

    @property
    def exit_code(self) -> int:
        """What the real run would exit with: 1 when a task has no data or broken data (it would be
        recorded ``missing``/``failed`` and the others run), else 0."""
        return 1 if any(m.unavailable for m in self.models) else 0

    def to_dict(self) -> dict[str, Any]:
        return {"models": [m.to_dict() for m in self.models]}


def plan_cost(
    models: Sequence[str] | str | None = None,
    tasks: Sequence[str] | str | None = None,
    *,
    config: RunConfig | None = None,
    **options: Any,
) -> CostPlan:
    """The dry-run plan of ``evaluate`` with the same options: counts and estimated time.

    Takes a :class:`~evalsuite.config.RunConfig` (or its fields as keyword arguments). No
    weights are loaded for the counts (the tokenizer and config only). ``measure`` (a config
    field) times a few forwards of the model once per machine, model, dtype and device (loading
    it for that, a few seconds for SmolLM2) and keeps the result in evalsuite's cache;
    ``remeasure`` times them again.
    """
    from evalsuite.run.preparation import prepare

    if config is None:
        options.setdefault("progress", False)  # called directly, the plan is quiet unless asked
    # the run's own preparation: every input check the run makes first, so the dry run exits as
    # the run would; models are opened (config, tokenizer), their weights are not loaded
    prepared = prepare(RunConfig.build(config, models=models, tasks=tasks, **options), dry_run=True)
    config = prepared.config
    device, limit, backend, shard = config.device, config.limit, config.backend, config.shard_pair
    loaded = prepared.loaded
    unavailable = {name: why for name, (_, why) in prepared.unavailable.items()}
    out = []
    for model in prepared.models:
        spec, source = model.spec, model.source
        chosen_dtype = default_dtype(spec, device, config.dtype)
        tokenizer, max_length = model.opened.tokenizer, model.opened.max_length
        speed = None
        if config.measure and get_backend(backend).cost_model is not None:  # a model timed in this process
            from evalsuite.run.speed_profile import measured_speed

            speed = measured_speed(source, chosen_dtype, device, again=config.remeasure)
        budget, budget_note = _cuda_budget(model, chosen_dtype, device) if device.startswith("cuda") else (None, None)
        model_plan = ModelPlan(spec.alias, source.path if spec.kind != "hub" else spec.source, backend, device,
                               chosen_dtype, limit, max_length, unavailable=dict(unavailable), speed=speed,
                               token_budget=budget, budget_note=budget_note)
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(list(loaded.values()), desc=f"planning {spec.alias}", unit="task", disable=not config.progress,
                   file=sys.stderr, dynamic_ncols=True, leave=False)
        for task in bar:
            bar.set_postfix_str(task.spec.name)
            start = time.perf_counter()
            audited = (config.audit_share, config.run_id or "dry-run") if get_backend(backend).audits and config.audit else None
            try:
                task_plan = _plan_task(task, tokenizer, max_length, limit, shard, backend, speed,
                                       device.split(":")[0], config.generation, audit=audited, token_budget=budget)
            except DataFormatError as exc:  # as the run: the task is recorded failed, the others go on (exit 1)
                model_plan.unavailable[task.spec.name] = str(exc)
                continue
            task_plan.plan_seconds = time.perf_counter() - start
            model_plan.tasks.append(task_plan)
        out.append(model_plan)
    return CostPlan(out)


def _plan_task(task: Any, tokenizer: Any, max_length: int, limit: int | None, shard: tuple[int, int] | None,
               backend: str, speed: SpeedProfile | None, device_type: str = "cpu", generation: str = "batched",
               prompts: Sequence[Any] | None = None, audit: tuple[float, str] | None = None,
               token_budget: int | None = None) -> TaskPlan:
    """One task's plan. ``prompts``: these documents instead of the task's (the self-audit plans
    a sharded task's whole population); ``audit``: (share, run id) also chooses the self-audit's
    sample (:func:`evalsuite.run.audit.choose_sample`) from the per-document costs counted here;
    ``token_budget``: the engine's tokens per forward (default: the device type's,
    :data:`~evalsuite.backends.engine.DEFAULT_TOKEN_BUDGET`; on CUDA :func:`gpu_token_budget`)."""
    from evalsuite.backends.engine import DEFAULT_TOKEN_BUDGET, SMALL_ROW
    from evalsuite.backends.engine.plain import padded_tokens
    from evalsuite.backends.engine.planner import count_calls
    from evalsuite.backends.engine.prefix_tree import truncated_inputs
    from evalsuite.backends.engine.tokenize import pair_ids, plan_calls, split_pair
    from evalsuite.tasks.piecewise import PiecewiseEncoder
    from evalsuite.store.shards import select

    from evalsuite.run.audit_sample import DocCost, choose_sample

    prompts = select(task.prompts(limit), shard) if prompts is None else list(prompts)
    encoder = PiecewiseEncoder(tokenizer)
    spec = task.spec
    if spec.is_generation:
        contexts = [p.contexts[0] for p in prompts]
        keep = max_length - MAX_NEW_TOKENS
        lengths = [min(len(ids), keep) for ids in encoder.encode(contexts)]
        answers = encoder.encode([" " + p.doc["answer"] for p in prompts])
        expected = [min(MAX_NEW_TOKENS, len(a) + 3) for a in answers]  # the answer, "\n\n", "Question"
        result = TaskPlan(spec.name, len(prompts), task.n_docs, len(prompts), "generate_until", sum(lengths),
                          sum(lengths), int(statistics.median(lengths)) if lengths else 0,
                          new_tokens_max=MAX_NEW_TOKENS * len(prompts), new_tokens_expected=sum(expected),
                          tokenizer_fallback=encoder.fallback)
        if audit is not None:  # one forward over prompt + generated tokens per audited prompt
            result.audit = choose_sample([DocCost(n + g, n, 0) for n, g in zip(lengths, expected)],
                                         result.engine_tokens + result.new_tokens_expected, audit[0], audit[1], spec.name)
        if speed is not None:
            # the engine decodes as --generation says; lm-eval hf one prompt at a time, as v1 ran
            mode = generation if get_backend(backend).cost_model == "engine" else "exact"
            result.est_seconds = _generation_seconds(speed, lengths, expected, mode, device_type)
            result.est_seconds_max = _generation_seconds(speed, lengths, [MAX_NEW_TOKENS] * len(lengths), mode, device_type)
        result.audit_est_seconds = _audit_seconds(result, speed)
        return result

    requests = [tuple(inst.args) for p in prompts for inst in p.instances]
    # the engine's pair split (split_pair, pair_ids), on ids from the piecewise encoder: the
    # whole request text (context + continuation, as split_pair leaves it) and each context
    wholes = encoder.prepare([c for c, _ in requests], [k for _, k in requests])
    moved = [split_pair(c, k)[0] for c, k in requests]
    contexts = list(dict.fromkeys(c for c in moved if c is not None))
    context_ids = dict(zip(contexts, encoder.encode(contexts)))
    eos = tokenizer.eos_token_id

    def split(index: int) -> tuple[list[int], list[int]]:
        context = moved[index]
        return pair_ids(None if context is None else context_ids[context], wholes[index], eos)

    def calls() -> Iterable[list[tuple[list[int], list[int]]]]:
        """The runner's calls, one chunk of documents each, split as lm-eval splits requests."""
        at = 0
        for start in range(0, len(prompts), CHUNK_DOCS):
            chunk: list[tuple[list[int], list[int]]] = []
            for p in prompts[start:start + CHUNK_DOCS]:
                chunk.extend(split(i) for i in range(at, at + len(p.instances)))
                at += len(p.instances)
            yield chunk

    # every task: the exact distinct inputs and prefix-tree tokens, fast
    lm_eval_tokens = scored = 0
    doc_lengths: list[int] = []
    doc_costs: list[Any] = []  # the plain executor's tokens per document (padding included), for the self-audit

    def inputs_per_call() -> Iterable[list[tuple[int, ...]]]:
        nonlocal lm_eval_tokens, scored
        docs = iter(prompts)
        for chunk in calls():
            inputs = [tuple(truncated_inputs(c, k, max_length)) for c, k in chunk]
            at = 0
            while at < len(chunk):
                n = len(next(docs).instances)
                doc_lengths.append(max(map(len, inputs[at:at + n])))
                longest = max(range(n), key=lambda j: len(inputs[at + j]))
                doc_costs.append(DocCost(padded_tokens(inputs[at:at + n]), len(inputs[at + longest]), longest))
                at += n
            distinct = {x: len(k) for x, (_, k) in zip(inputs, chunk)}
            lm_eval_tokens += sum(map(len, distinct))
            scored += sum(distinct.values())
            yield inputs

    count = count_calls(inputs_per_call())
    median = int(statistics.median(doc_lengths)) if doc_lengths else 0
    result = TaskPlan(spec.name, len(prompts), task.n_docs, len(requests), "loglikelihood", lm_eval_tokens,
                      count.tokens, median, engine_unique_tokens=count.tokens, scored_positions=scored,
                      tokenizer_fallback=encoder.fallback)
    if count.unique <= PLANNER_TOKENS:  # small enough: the engine's own planner, padding and passes exact
        summary = plan_calls(calls(), max_length, device_type, token_budget)
        result.engine_tokens, result.forward_passes = summary.forwarded_tokens, summary.forward_passes
        result.scored_positions, result.engine_planned = summary.scored_positions, True
        result.engine_unique_tokens = summary.unique_tokens - summary.reused_tokens
    if audit is not None:
        result.audit = choose_sample(doc_costs, result.engine_tokens, audit[0], audit[1], spec.name)
    if speed is not None:
        engine = get_backend(backend).cost_model == "engine"
        result.host_seconds = _host_seconds(tokenizer, requests, next(iter(calls()), []), max_length, engine)
        if engine:
            budget = token_budget or DEFAULT_TOKEN_BUDGET.get(device_type, DEFAULT_TOKEN_BUDGET["cpu"])
            passes = result.forward_passes or (sum(1 for n in doc_lengths if n > SMALL_ROW)
                                               + result.engine_tokens // budget + len(doc_lengths) // CHUNK_DOCS + 1)
            result.est_seconds = (speed.forward_seconds(result.engine_tokens, median, passes)
                                  + speed.scoring_seconds(result.scored_positions) + result.host_seconds)
        else:  # lm-eval hf: one pass per distinct input, the output layer at every position
            result.est_seconds = (speed.forward_seconds(lm_eval_tokens, median, len(requests))
                                  + speed.scoring_seconds(lm_eval_tokens) + result.host_seconds)
    result.audit_est_seconds = _audit_seconds(result, speed)
    return result


def gpu_token_budget(model_config: Any, dtype: str, params: int, gpu_totals: Sequence[int]) -> tuple[int, str]:
    """The engine's token budget a CUDA run of this model will get, and how it was set (for the
    dry run's notes), without loading the model.

    The run computes it once the weights are loaded, from the free memory
    (:func:`evalsuite.backends.engine.memory.device_budget`); the dry run applies the same rule
    (:func:`~evalsuite.backends.engine.memory.budget_from_free`, the cache executor's
    key/value copies counted, as the planner assumes on CUDA) to the memory the weights leave
    free: ``gpu_totals`` (bytes of each visible GPU) less the weights in ``dtype``, on GPU 0
    where the model fits there, else spread evenly over every GPU (``device_map="auto"``), the
    fullest keeping at least its headroom (:func:`evalsuite.models.loading.gpu_max_memory`).
    ``EVALSUITE_TOKEN_BUDGET`` wins, as in the run."""
    from evalsuite.backends.engine.memory import ENV_BUDGET, budget_from_free, env_budget
    from evalsuite.models.loading import gpu_max_memory
    from evalsuite.models.memory import DTYPE_BYTES, required_bytes, weight_bytes

    forced = env_budget()
    if forced is not None:
        return forced, f"token budget {forced} ({ENV_BUDGET})"
    cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    weights = weight_bytes(params, dtype)
    totals = list(gpu_totals)
    if len(totals) <= 1 or required_bytes(params, dtype) <= totals[0]:  # GPU 0 holds it (gpu_device_map)
        totals, free = totals[:1], max(0, totals[0] - weights)
    else:
        kept = gpu_max_memory(totals)
        free = min(max(total - weights // len(totals), total - kept[i]) for i, total in enumerate(totals))
    budget = budget_from_free(free, cfg, DTYPE_BYTES.get(dtype, 4), copies_past=True)
    cards = f"{len(totals)} x {totals[0] / 2**30:.0f} GiB" if len(totals) > 1 else f"{totals[0] / 2**30:.0f} GiB"
    return budget, (f"token budget {budget} per forward, estimated from the GPU memory ({cards}) less the "
                    f"weights ({weights / 2**30:.1f} GiB in {dtype}): {free / 2**30:.1f} GiB free; the dry run "
                    f"does not load the model, the run sizes it from the memory free once the weights are loaded")


def _cuda_budget(model: Any, dtype: str, device: str) -> tuple[int | None, str | None]:
    """:func:`gpu_token_budget` for a prepared model on this machine's GPUs (``cuda:N``: that one)."""
    from evalsuite.models.devices import torch_gpus
    from evalsuite.models.memory import param_count

    gpus = [gpu.total_memory for gpu in torch_gpus()]
    index = device.partition(":")[2]
    if index.isdigit():
        gpus = gpus[int(index):int(index) + 1]
    if not gpus:
        return None, None
    return gpu_token_budget(model.opened.config, dtype, param_count(model.source), gpus)


#: Requests of the first call whose tokenizing (and prefix tree) is timed for the estimate.
HOST_SAMPLE = 64


def _host_seconds(tokenizer: Any, requests: Sequence[tuple[str, str]], first_call: list[tuple[list[int], list[int]]],
                  max_length: int, engine: bool) -> float:
    """What the run spends off the model on these requests, timed here on a sample and scaled
    up: lm-eval's pair encoding (the whole request, then its context: two full tokenizations of
    every 5-shot or 25-shot context, per request) and, for the engine, building each call's
    prefix tree. On a small model or a busy CPU this is a real share of the run (MMLU with a
    tiny model: about half), and the forward timings of the speed profile do not contain it."""
    from evalsuite.backends.engine.prefix_tree import tree_of

    if not requests:
        return 0.0
    step = max(1, len(requests) // HOST_SAMPLE)
    sample = list(requests[::step])[:HOST_SAMPLE]
    start = time.perf_counter()
    for context, continuation in sample:
        tokenizer.encode(context + continuation, add_special_tokens=False)
        tokenizer.encode(context.rstrip(), add_special_tokens=False)
    per_char = (time.perf_counter() - start) / max(1, sum(len(c) + len(k) for c, k in sample))
    total = per_char * sum(len(c) + len(k) for c, k in requests)
    if engine and first_call:
        start = time.perf_counter()
        tree_of(first_call, max_length)
        per_token = (time.perf_counter() - start) / max(1, sum(len(c) + len(k) for c, k in first_call))
        total += per_token * sum(len(c) + len(k) for c, k in requests) / 4  # ~4 characters per token
    return total


def _audit_seconds(plan: TaskPlan, speed: SpeedProfile | None) -> float | None:
    """The self-audit's sample on the plain executor, at the price its budget sets: its tokens
    (padding included), each :data:`~evalsuite.run.audit_sample.PLAIN_TOKEN_COST` engine tokens
    at the per-token cost of the task's median length. The price is measured to cover what the
    plain path spends beyond its tokens (its forwards of a document at a time, its output layer
    at the continuations), so no per-pass cost is added on top (``benchmarks/audit_share.py``)."""
    if plan.audit is None or speed is None:
        return None
    return speed.forward_seconds(int(plan.audit.tokens * PLAIN_TOKEN_COST), plan.median_doc_tokens)


def _generation_seconds(speed: SpeedProfile, prompts: list[int], new: list[int], mode: str, device_type: str) -> float:
    """Greedy generation as the engine runs it, a runner call (``CHUNK_DOCS`` prompts) at a time.

    ``exact``: each prompt alone, prefill then one step per new token. ``batched``: each prompt
    prefilled alone, then the call's prompts decode together (up to the engine's slots), so a
    call costs its longest generation's steps, plus each further row's token work.
    """

    if mode == "exact":
        return sum(speed.generation_seconds(n, g) for n, g in zip(prompts, new))
    from evalsuite.backends.engine.generation import MAX_SLOTS

    slots = MAX_SLOTS.get(device_type, MAX_SLOTS["cpu"])
    total = 0.0
    for start in range(0, len(prompts), CHUNK_DOCS):
        lengths, gens = prompts[start:start + CHUNK_DOCS], new[start:start + CHUNK_DOCS]
        total += sum(speed.forward_seconds(n, n, 1) for n in lengths)  # prefills, one prompt each
        for begin in range(0, len(gens), slots):  # rows decoded together
            rows, context = gens[begin:begin + slots], max(lengths[begin:begin + slots])
            total += max(rows) * speed.decode_step_s + (sum(rows) - max(rows)) * speed.per_token(context)
    return total


def _audit_cell(plan: TaskPlan) -> str:
    if plan.audit is None:
        return "-"
    cell = f"{plan.audit.tokens:,} tok"
    if plan.audit_est_seconds is None:
        return cell
    return f"{cell}, {_duration(plan.audit_est_seconds)}{_share(plan.audit_est_seconds, plan.est_seconds)}"


def _share(audit_seconds: float, task_seconds: float | None) -> str:
    """The audit's estimated time as a share of the task's (one decimal: 3.0 % is not 3.1 %)."""
    return f" ({audit_seconds / task_seconds:.1%})" if task_seconds else ""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    hours, rest = divmod(int(round(minutes)), 60)  # 1079.7 min is 18 h 00 min, not 17 h 60 min
    return f"{hours} h {rest:02d} min"
