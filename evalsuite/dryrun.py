"""``evalsuite run --dry-run``: what a run will cost, before it starts, without loading weights.

For each model and task the plan counts, from the real requests tokenized by the model's own
tokenizer (:mod:`evalsuite.piecewise`, exact and fast):

* documents and requests;
* tokens lm-eval's ``hf`` model would run: every distinct model input once (it computes the
  requests of one context whose continuations differ only in their last token together, e.g.
  MMLU's " A".." D"), batch size 1, so no padding;
* tokens the evalsuite engine will run: the engine's own planner over the prefix tree of the
  requests as the runner sends them (:data:`~evalsuite.runner.CHUNK_DOCS` documents per call),
  with the preambles it keeps across calls (:func:`engine_plan`): padding included;
* for generation (GSM8K), the prompt tokens and the budget: documents x 256 new tokens at most,
  and the expected count (each reference answer's length plus the stop);
* an estimated time on this machine from a short measured forward of the model
  (:mod:`evalsuite.speed`): per-token cost at the task's median document length, and the cost of
  one decoding step.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .speed import SpeedProfile

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
        total_est = _duration(self.est_seconds)
        if self.est_seconds_max is not None and self.est_seconds_max != self.est_seconds:
            total_est += f" (<= {_duration(self.est_seconds_max)})"
        rows.append(["total", f"{sum(t.docs for t in self.tasks):,}", f"{sum(t.requests for t in self.tasks):,}",
                     f"{sum(t.lm_eval_tokens for t in self.tasks):,}", f"{sum(t.engine_tokens for t in self.tasks):,}",
                     f"<= {sum(t.new_tokens_max for t in self.tasks):,}" if any(t.new_tokens_max for t in self.tasks) else "-",
                     total_est])
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
        if any(t.kind == "loglikelihood" and not t.engine_planned for t in self.tasks):
            lines.append(f"* prefix-tree tokens, without the engine's padding (a task with up to {PLANNER_TOKENS:,} of them "
                         "is planned by the engine's own planner, padding included: +1-2 % on HellaSwag and ARC)")
        lines.append("planned in " + ", ".join(f"{t.task} {t.plan_seconds:.1f} s" for t in self.tasks)
                     + " (prompts, tokenization, counting)")
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
class Plan:
    """What ``evaluate(..., dry_run=True)`` returns: one :class:`ModelPlan` per model."""

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


@dataclass
class EngineCount:
    tokens: int  # prefix-tree tokens over all calls, less the preambles reused from earlier calls
    unique: int  # prefix-tree tokens summed over calls
    reused: int  # preamble tokens kept from an earlier call


def engine_tokens(calls: Iterable[Sequence[tuple[int, ...]]]) -> EngineCount:
    """The prefix-tree tokens of log-likelihood requests sent a call at a time, fast.

    Each item is one call's model inputs. The tree of a set of sequences has sum(lengths) -
    sum(common prefix of neighbours in sorted order) nodes (``PrefixTree.n_tokens``, see the
    tests); a call's shared root trunk is reused when at least ``FOLD_TRUNK`` of its tokens agree
    with one of the last ``TRUNK_MEMORY`` kept, as the engine does. This is what the engine's
    planner (:func:`engine_plan`) starts from, without padding and without the short openings
    it recomputes per branch; it costs a sort per call instead of a node object per token.
    """
    from .backends.engine import FOLD_TRUNK, TRUNK_MEMORY

    kept: list[tuple[int, ...]] = []
    unique = reused = 0
    for call in calls:
        seqs = sorted(set(call))
        if not seqs:
            continue
        common = [_common(a, b) for a, b in zip(seqs, seqs[1:])]
        unique += sum(map(len, seqs)) - sum(common)
        # root trunks: runs of neighbours sharing at least FOLD_TRUNK tokens (a shorter shared
        # opening is recomputed per branch), each trunk the run's common prefix; the engine
        # takes them in request order, keeping the last TRUNK_MEMORY
        first_seen: dict[tuple[int, ...], int] = {}
        for position, seq in enumerate(call):
            first_seen.setdefault(seq, position)
        trunks: list[tuple[int, tuple[int, ...]]] = []
        start = 0
        for end in range(1, len(seqs) + 1):
            if end < len(seqs) and common[end - 1] >= FOLD_TRUNK:
                continue
            trunk = seqs[start] if end - start == 1 else seqs[start][: min(common[start:end - 1])]
            trunks.append((min(first_seen[x] for x in seqs[start:end]), trunk))
            start = end
        for _, trunk in sorted(trunks):
            best = max((_common(trunk, k) for k in kept), default=0)
            if best >= FOLD_TRUNK:
                reused += best
            kept = [k for k in kept if k != trunk][-(TRUNK_MEMORY - 1):] + [trunk]
    return EngineCount(unique - reused, unique, reused)


def engine_plan(calls: Iterable[list[tuple[list[int], list[int]]]], max_length: int, device_type: str = "cpu") -> Any:
    """What the evalsuite engine runs for log-likelihood requests sent a call at a time.

    Each item of ``calls`` is one ``loglikelihood`` call of the runner (``CHUNK_DOCS``
    documents), as the requests' ``(context, continuation)`` token ids split as lm-eval's ``hf``
    model splits them. Per call: the engine's own prefix tree and planner, with the root trunks
    it keeps between calls, the same loop as ``evalsuite.backends.engine.plan_requests`` but on
    requests tokenized here (:mod:`evalsuite.piecewise`) and built one call at a time, so a
    whole split is never held as token lists. Returns the engine's ``PlanSummary``.
    """
    from .backends.engine import planner

    budgets = planner.Budgets.for_device(device_type, None, None)
    return planner.summarize_calls(((prefix_tree(b, max_length), len(b)) for b in calls if b), budgets)


def prefix_tree(batch: Sequence[tuple[list[int], list[int]]], max_length: int) -> Any:
    """The engine's ``tree_of(batch, max_length)``, node for node, built faster.

    ``tree_of`` walks every token of every request through the trie; but a request shares most
    of its input with the one before it (the four endings of a HellaSwag context), so here the
    nodes of the prefix shared with the previous request (up to its first scored position) are
    taken from that request's path, and only the rest is walked. Same nodes, numbering, child
    order and scores (``tests/test_dryrun.py`` compares them); a full HellaSwag split walks
    ~10 M tokens instead of ~35 M.
    """
    from .backends.engine.prefix_tree import PrefixTree, Score, truncated_inputs

    tree = PrefixTree()
    token, parent, depth, children, scores = tree.token, tree.parent, tree.depth, tree.children, tree.scores
    previous: tuple[int, ...] = ()
    path: list[int] = []  # path[i]: the node at position i of the previous request
    for index, (context_enc, continuation_enc) in enumerate(batch):
        if not continuation_enc:
            raise ValueError("empty continuation after tokenization")
        inputs = tuple(truncated_inputs(context_enc, continuation_enc, max_length))
        if len(continuation_enc) > len(inputs):
            raise ValueError("a request needs 1..len(inputs) target tokens")
        first_scored = len(inputs) - len(continuation_enc)
        shared = min(_common(inputs, previous), first_scored)
        walked = path[:shared]
        node = walked[-1] if shared else 0
        for pos in range(shared, len(inputs)):
            tok = inputs[pos]
            child = children[node].get(tok)
            if child is None:
                child = len(token)
                token.append(tok)
                parent.append(node)
                depth.append(depth[node] + 1)
                children.append({})
                children[node][tok] = child
            node = child
            walked.append(node)
            if pos >= first_scored:
                scores.setdefault(node, []).append(Score(index, continuation_enc[pos - first_scored]))
        path, previous = walked, inputs
    tree.finalize()
    return tree


def _common(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Length of the common prefix of two token tuples (binary search over C-level slices)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def plan(
    models: Sequence[str] | str | None = None,
    tasks: Sequence[str] | str | None = None,
    *,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    backend: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    trust_remote_code: bool = False,
    shard: tuple[int, int] | None = None,
    measure: bool = True,
    remeasure: bool = False,
    progress: bool = False,
    generation: str = "batched",
    verify_weights: bool = False,
) -> Plan:
    """The dry-run plan of ``evaluate`` with the same arguments: counts and estimated time.

    No weights are loaded for the counts (the tokenizer and config only). ``measure`` times a
    few forwards of the model once per machine, model, dtype and device (loading it for that,
    a few seconds for SmolLM2) and keeps the result in evalsuite's cache; ``remeasure`` times
    them again.
    """
    from .backends import DEFAULT_BACKEND
    from .data import resolve_data_dir
    from .errors import MissingDataError
    from .loading import materialize
    from .models import resolve_model
    from .runner import check_device, check_selection, default_dtype
    from .tasks import load_tasks

    backend = backend or DEFAULT_BACKEND
    device, model_names, task_names = check_selection(models, tasks, limit, backend, device)
    check_device(device)
    root = resolve_data_dir(data_dir)
    loaded, unavailable = load_tasks(task_names, root)
    if not loaded:
        raise MissingDataError("; ".join(f"{t}: {why}" for t, why in unavailable.items()))
    out = []
    for name in model_names:
        spec = resolve_model(name, trust_remote_code=trust_remote_code)
        source = materialize(spec, verify_weights)
        chosen_dtype = default_dtype(spec, device, dtype)
        tokenizer, max_length = _tokenizer_and_length(source)
        speed = None
        if measure and backend != "vllm":
            from .speed import measured_speed

            speed = measured_speed(source, chosen_dtype, device, again=remeasure)
        model_plan = ModelPlan(spec.alias, source.path if spec.kind != "hub" else spec.source, backend, device,
                               chosen_dtype, limit, max_length, unavailable=dict(unavailable), speed=speed)
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(list(loaded.values()), desc=f"planning {spec.alias}", unit="task", disable=not progress,
                   file=sys.stderr, dynamic_ncols=True, leave=False)
        for task in bar:
            bar.set_postfix_str(task.spec.name)
            start = time.perf_counter()
            task_plan = _plan_task(task, tokenizer, max_length, limit, shard, backend, speed, device.split(":")[0],
                                   generation)
            task_plan.plan_seconds = time.perf_counter() - start
            model_plan.tasks.append(task_plan)
        out.append(model_plan)
    return Plan(out)


def _tokenizer_and_length(source: Any) -> tuple[Any, int]:
    """The model's tokenizer and context length (resolved as lm-eval's ``hf`` model does)."""
    from transformers import AutoConfig, AutoTokenizer

    from .errors import EvalsuiteError

    kwargs = {"revision": source.revision, "trust_remote_code": bool(source.spec.trust_remote_code)}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
        config = AutoConfig.from_pretrained(source.path, **kwargs)
    except OSError as exc:
        raise EvalsuiteError(
            f"could not read the tokenizer and config of {source.path}: {str(exc).splitlines()[0]}; "
            f"check the name and your Hub access, or use a local folder"
        ) from None
    config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return tokenizer, int(value)
    tok_max = getattr(tokenizer, "model_max_length", None)
    return tokenizer, int(tok_max) if tok_max is not None and tok_max < 10**12 else 2048


def _plan_task(task: Any, tokenizer: Any, max_length: int, limit: int | None, shard: tuple[int, int] | None,
               backend: str, speed: SpeedProfile | None, device_type: str = "cpu", generation: str = "batched") -> TaskPlan:
    from .backends.engine import DEFAULT_TOKEN_BUDGET, SMALL_ROW
    from .backends.engine.prefix_tree import empty_context_pair, truncated_inputs
    from .piecewise import PiecewiseEncoder
    from .runner import CHUNK_DOCS
    from .sharding import select

    prompts = select(task.prompts(limit), shard)
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
        if speed is not None:
            mode = generation if backend == "evalsuite" else "exact"  # lm-eval hf: batch size 1, as v1 ran
            result.est_seconds = _generation_seconds(speed, lengths, expected, mode, device_type)
            result.est_seconds_max = _generation_seconds(speed, lengths, [MAX_NEW_TOKENS] * len(lengths), mode, device_type)
        return result

    requests = [tuple(inst.args) for p in prompts for inst in p.instances]
    wholes = encoder.prepare([c for c, _ in requests], [k for _, k in requests])
    # lm-eval's pair split: trailing spaces of the context move to the continuation, and the
    # continuation is what follows the context's own encoding in the whole one
    contexts = list(dict.fromkeys(c.rstrip() for c, _ in requests if c))
    context_ids = dict(zip(contexts, encoder.encode(contexts)))
    eos = tokenizer.eos_token_id

    def split(index: int) -> tuple[list[int], list[int]]:
        context, _ = requests[index]
        whole = list(wholes[index])
        if context == "":  # v1: an empty context is the EOS token
            return empty_context_pair(eos, whole)
        ctx = list(context_ids[context.rstrip()])
        return ctx, whole[len(ctx):]

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

    def inputs_per_call() -> Iterable[list[tuple[int, ...]]]:
        nonlocal lm_eval_tokens, scored
        docs = iter(prompts)
        for chunk in calls():
            inputs = [tuple(truncated_inputs(c, k, max_length)) for c, k in chunk]
            at = 0
            while at < len(chunk):
                n = len(next(docs).instances)
                doc_lengths.append(max(map(len, inputs[at:at + n])))
                at += n
            distinct = {x: len(k) for x, (_, k) in zip(inputs, chunk)}
            lm_eval_tokens += sum(map(len, distinct))
            scored += sum(distinct.values())
            yield inputs

    count = engine_tokens(inputs_per_call())
    median = int(statistics.median(doc_lengths)) if doc_lengths else 0
    result = TaskPlan(spec.name, len(prompts), task.n_docs, len(requests), "loglikelihood", lm_eval_tokens,
                      count.tokens, median, engine_unique_tokens=count.tokens, scored_positions=scored,
                      tokenizer_fallback=encoder.fallback)
    if count.unique <= PLANNER_TOKENS:  # small enough: the engine's own planner, padding and passes exact
        summary = engine_plan(calls(), max_length, device_type)
        result.engine_tokens, result.forward_passes = summary.forwarded_tokens, summary.forward_passes
        result.scored_positions, result.engine_planned = summary.scored_positions, True
        result.engine_unique_tokens = summary.unique_tokens - summary.reused_tokens
    if speed is not None:
        if backend == "evalsuite":
            passes = result.forward_passes or (sum(1 for n in doc_lengths if n > SMALL_ROW)
                                               + result.engine_tokens // DEFAULT_TOKEN_BUDGET.get(device_type, DEFAULT_TOKEN_BUDGET["cpu"]) + len(doc_lengths) // CHUNK_DOCS + 1)
            result.est_seconds = (speed.forward_seconds(result.engine_tokens, median, passes)
                                  + speed.scoring_seconds(result.scored_positions))
        else:  # lm-eval hf: one pass per distinct input, the output layer at every position
            result.est_seconds = (speed.forward_seconds(lm_eval_tokens, median, len(requests))
                                  + speed.scoring_seconds(lm_eval_tokens))
    return result


def _generation_seconds(speed: SpeedProfile, prompts: list[int], new: list[int], mode: str, device_type: str) -> float:
    """Greedy generation as the engine runs it, a runner call (``CHUNK_DOCS`` prompts) at a time.

    ``exact``: each prompt alone, prefill then one step per new token. ``batched``: each prompt
    prefilled alone, then the call's prompts decode together (up to the engine's slots), so a
    call costs its longest generation's steps, plus each further row's token work.
    """
    from .runner import CHUNK_DOCS

    if mode == "exact":
        return sum(speed.generation_seconds(n, g) for n, g in zip(prompts, new))
    from .backends.engine.generation import MAX_SLOTS

    slots = MAX_SLOTS.get(device_type, MAX_SLOTS["cpu"])
    total = 0.0
    for start in range(0, len(prompts), CHUNK_DOCS):
        lengths, gens = prompts[start:start + CHUNK_DOCS], new[start:start + CHUNK_DOCS]
        total += sum(speed.forward_seconds(n, n, 1) for n in lengths)  # prefills, one prompt each
        for begin in range(0, len(gens), slots):  # rows decoded together
            rows, context = gens[begin:begin + slots], max(lengths[begin:begin + slots])
            total += max(rows) * speed.decode_step_s + (sum(rows) - max(rows)) * speed.per_token(context)
    return total


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
