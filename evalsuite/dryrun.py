"""``evalsuite run --dry-run``: what a run will cost, before it starts, without loading weights.

For each model and task the plan counts, from the real requests tokenized by the model's own
tokenizer (:mod:`evalsuite.piecewise`, exact and fast):

* documents and requests;
* tokens lm-eval's ``hf`` model would run: every distinct model input once (it computes the
  requests of one context whose continuations differ only in their last token together, e.g.
  MMLU's " A".." D"), batch size 1, so no padding;
* tokens the evalsuite engine will run: the prefix tree over the requests as the runner sends
  them (:data:`~evalsuite.runner.CHUNK_DOCS` documents per call), less the preamble it keeps
  across calls (:func:`engine_tokens`);
* for generation (GSM8K), the prompt tokens and the budget: documents x 256 new tokens at most,
  and the expected count (each reference answer's length plus the stop);
* an estimated time on this machine from a short measured forward of the model
  (:mod:`evalsuite.speed`): per-token cost at the task's median document length, and the cost of
  one decoding step.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .speed import SpeedProfile

#: Shown for a generation task's budget; the protocol's ``max_gen_toks``.
MAX_NEW_TOKENS = 256


@dataclass
class TaskPlan:
    """One task's cost for one model."""

    task: str
    docs: int
    docs_total: int
    requests: int
    kind: str  # "loglikelihood" | "generate_until"
    lm_eval_tokens: int  # lm-eval hf: distinct model inputs, batch size 1
    engine_tokens: int  # the evalsuite engine: prefix-tree tokens per call, less kept preambles
    median_doc_tokens: int
    new_tokens_max: int = 0  # generation: docs x 256
    new_tokens_expected: int = 0  # generation: reference answer lengths + stop
    est_seconds: float | None = None  # for the chosen backend; generation: expected length
    est_seconds_max: float | None = None  # generation: every document runs to 256 tokens
    tokenizer_fallback: bool = False  # the fast tokenization disagreed with plain encoding
    plan_seconds: float = 0.0  # building the prompts, tokenizing and counting

    @property
    def saving(self) -> float:
        return self.lm_eval_tokens / self.engine_tokens if self.engine_tokens else math.nan


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
            rows.append([t.task, docs, f"{t.requests:,}", f"{t.lm_eval_tokens:,}", f"{t.engine_tokens:,}", new, est])
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
                     "engine = shared prefixes once per call (padding not counted); new tokens: generation budget, "
                     f"documents x {MAX_NEW_TOKENS} (~ expected: reference answer lengths + stop)")
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

    def to_dict(self) -> dict[str, Any]:
        return {"models": [m.to_dict() for m in self.models]}


@dataclass
class EngineCount:
    tokens: int  # tokens the engine forwards (unique per call, less reused preambles)
    unique: int  # prefix-tree tokens summed over calls
    reused: int  # preamble tokens kept from an earlier call


def engine_tokens(chunks: Iterable[Sequence[tuple[int, ...]]]) -> EngineCount:
    """Tokens the evalsuite engine forwards for log-likelihood requests sent a chunk at a time.

    Each chunk is one ``loglikelihood`` call (the runner sends ``CHUNK_DOCS`` documents at
    once) given as the requests' model inputs. Per call the engine builds one
    :class:`~evalsuite.backends.prefix_tree.PrefixTree` and forwards each of its nodes once; it
    keeps the last few root trunks (an MMLU subject's 5-shot preamble, TruthfulQA's fixed one)
    for the next call. Counted here without building the tree: the tree of a set of sequences
    has sum(lengths) - sum(common prefix of neighbours in sorted order) nodes (equal to
    ``PrefixTree.n_tokens``, see the tests), and a chunk's shared root trunk is reused when at
    least ``FOLD_TRUNK`` of its tokens agree with a kept one. Padding, and short shared
    prefixes the engine recomputes per branch, are not counted.

    The one place that models the engine's plan: to be replaced by the engine's own planner
    (``evalsuite.backends.engine.plan_requests``) once it is on main.
    """
    from .backends.engine import FOLD_TRUNK, TRUNK_MEMORY

    kept: list[tuple[int, ...]] = []
    unique = reused = 0
    for chunk in chunks:
        seqs = sorted(set(chunk))
        if not seqs:
            continue
        unique += sum(map(len, seqs)) - sum(_common(a, b) for a, b in zip(seqs, seqs[1:]))
        trunk = seqs[0][: _common(seqs[0], seqs[-1])] if len(seqs) > 1 else seqs[0]
        best = max((_common(trunk, k) for k in kept), default=0)
        if best >= FOLD_TRUNK:
            reused += best
        kept = (kept + [trunk])[-TRUNK_MEMORY:]
    return EngineCount(unique - reused, unique, reused)


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
) -> Plan:
    """The dry-run plan of ``evaluate`` with the same arguments: counts and estimated time.

    No weights are loaded for the counts (the tokenizer and config only). ``measure`` times a
    few forwards of the model once per machine, model, dtype and device (loading it for that,
    a few seconds for SmolLM2) and keeps the result in evalsuite's cache; ``remeasure`` times
    them again.
    """
    from .backends import BACKENDS, DEFAULT_BACKEND
    from .data import resolve_data_dir
    from .errors import EvalsuiteError, MissingDataError
    from .loading import materialize
    from .models import resolve_model
    from .runner import _split, check_device, default_dtype
    from .tasks import expand_tasks, load_tasks

    backend = backend or DEFAULT_BACKEND
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise EvalsuiteError(f"--limit must be a positive number of documents, got {limit}; omit it for full runs")
    if backend not in BACKENDS:
        raise EvalsuiteError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if backend == "vllm" and device == "cpu":
        device = "cuda"
    check_device(device)
    model_names = _split(models) or ["smollm2"]
    task_names = expand_tasks(tasks)
    root = resolve_data_dir(data_dir)
    loaded, unavailable = load_tasks(task_names, root)
    if not loaded:
        raise MissingDataError("; ".join(f"{t}: {why}" for t, why in unavailable.items()))
    out = []
    for name in model_names:
        spec = resolve_model(name, trust_remote_code=trust_remote_code)
        source = materialize(spec)
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
            task_plan = _plan_task(task, tokenizer, max_length, limit, shard, backend, speed)
            task_plan.plan_seconds = time.perf_counter() - start
            model_plan.tasks.append(task_plan)
        out.append(model_plan)
    return Plan(out)


def _tokenizer_and_length(source: Any) -> tuple[Any, int]:
    """The model's tokenizer and context length (resolved as lm-eval's ``hf`` model does)."""
    from transformers import AutoConfig, AutoTokenizer

    from .errors import EvalsuiteError

    kwargs = {"revision": source.revision, "trust_remote_code": source.spec.trust_remote_code}
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
               backend: str, speed: SpeedProfile | None) -> TaskPlan:
    from .backends.engine import DEFAULT_TOKEN_BUDGET, SMALL_ROW
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
            result.est_seconds = sum(speed.generation_seconds(n, g) for n, g in zip(lengths, expected))
            result.est_seconds_max = sum(speed.generation_seconds(n, MAX_NEW_TOKENS) for n in lengths)
        return result

    requests = [inst.args for p in prompts for inst in p.instances]
    wholes = encoder.prepare([c for c, _ in requests], [k for _, k in requests])
    doc_lengths: list[int] = []
    distinct_inputs = [0]  # lm-eval hf: each distinct input of a call once

    def calls() -> Iterable[list[tuple[int, ...]]]:
        """The runner's calls, one chunk of documents each, as the requests' model inputs
        (left-truncated as lm-eval's hf model does); built one at a time."""
        at = 0
        for start in range(0, len(prompts), CHUNK_DOCS):
            chunk: list[tuple[int, ...]] = []
            for p in prompts[start:start + CHUNK_DOCS]:
                mine = [wholes[i][-(max_length + 1):][:-1] for i in range(at, at + len(p.instances))]
                at += len(p.instances)
                doc_lengths.append(max(map(len, mine)))
                chunk.extend(mine)
            distinct_inputs[0] += sum(map(len, set(chunk)))
            yield chunk

    count = engine_tokens(calls())
    lm_eval_tokens = distinct_inputs[0]
    median = int(statistics.median(doc_lengths)) if doc_lengths else 0
    result = TaskPlan(spec.name, len(prompts), task.n_docs, len(requests), "loglikelihood", lm_eval_tokens,
                      count.tokens, median, tokenizer_fallback=encoder.fallback)
    if speed is not None:
        if backend == "evalsuite":  # a pass per long document's trunk, then rows under the token budget
            passes = sum(1 for n in doc_lengths if n > SMALL_ROW) + count.tokens // DEFAULT_TOKEN_BUDGET["cpu"] + 1
            result.est_seconds = speed.forward_seconds(count.tokens, median, passes)
        else:  # one pass per distinct request
            result.est_seconds = speed.forward_seconds(lm_eval_tokens, median, len(requests))
    return result


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{int(minutes // 60)} h {int(round(minutes % 60)):02d} min"
