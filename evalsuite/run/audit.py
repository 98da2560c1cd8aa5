"""The self-audit: every engine run re-checks a sample of each task against the plain executor.

Why: a list of model families that were tested is not a guarantee; the next family brings the
next detail (a window, a soft-cap, a position scheme) that a fast path may miss. So after each
task the runner hands what the engine answered to :class:`Auditor`, which

* chooses a sample within a cost budget (:func:`choose_sample`): plain-executor tokens (padding
  included), each priced at :data:`~evalsuite.run.audit_sample.PLAIN_TOKEN_COST` engine tokens,
  within ``--audit-share`` (:data:`SHARE`, 3 %) of the task's engine tokens, both counted by the
  dry run's own counting, so the audit stays within that share of the task's time; the floor is the document with the task's longest input (whole if it
  fits, else that request alone), so at least one request is always audited; then whole
  documents in a seeded order (run id and task) while they fit. A pure function of the task's
  documents: a resumed run and every shard audit the same requests as an unsharded run;
* log-likelihood tasks: re-scores the sample with the plain executor
  (:func:`~evalsuite.backends.engine.plain.plain_loglikelihoods`: the model's own full forward
  on each input, as lm-eval's ``hf`` model runs it; a document at a time, so the forwards are
  the tokens the budget counted) and compares |Δ ll|, the greedy flags and
  the predictions of whole documents. A request agrees when |Δ ll| is within tolerance and (in
  float32) its greedy flag is the same; the audit passes when every sampled request agrees. A
  prediction that differs while every number is within tolerance is a near tie (two choices
  closer than the rounding), noted in ``audit_note``, not a failure: either answer is right
  to that precision;
* generation tasks: one plain forward over prompt + generated tokens per sampled prompt
  (:mod:`evalsuite.run.greedy_check`): every generated token must be the greedy choice (a near
  tie within the dtype's per-token tolerance is noted, not failed) and the decoding must stop
  where the text ends.

An audit beyond tolerance never leaves a silently different number: the task is scored again
on :class:`PlainLM` (plain forward, exact generation), its score row says so, and the request
cache forgets the rejected answers. Answers served from the request cache are audited like
computed ones (the sample is drawn from everything the task stored), so a resumed run proves
its numbers too.

Tolerances (per request, on the summed log-likelihood): float32 :data:`FP32_TOLERANCE`, or
:data:`FP32_TOLERANCE_PER_TOKEN` per continuation token for continuations over 33 tokens
(HellaSwag's endings, where fp32 summation alone reaches 6.7e-4 between correct executors).
Half precision is rounded, and two correct executors batch differently, so their sums differ
by rounding that grows with the continuation: bfloat16 keeps 8 significant bits (measured on
SmolLM2: up to 0.035 nats per continuation token between the fast path and the plain forward,
0.76 on a 66-token HellaSwag ending; the tolerance is about three times that), float16 10 bits
(a quarter of it); the tolerance is per continuation token (:data:`HALF_TOLERANCE_PER_TOKEN`)
with a floor of one token. The figures and their measurement
are in docs/exactness.md, "The self-audit".
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evalsuite.analysis.audit_lines import AUDIT_STATUSES, describe, describe_row, summary_lines
from evalsuite.run.audit_sample import SHARE, AuditSample, DocCost, choose_sample

#: |Δ ll| allowed per request in float32 ...
FP32_TOLERANCE = 1e-3
#: ... or this much per continuation token where more: HellaSwag's 40-100-token endings sum to
#: -100 nats and more, and two correct float32 executors already differ by 6.7e-4 there.
FP32_TOLERANCE_PER_TOKEN = 3e-5
#: |Δ ll| allowed per continuation token in half precision (see the module docstring).
HALF_TOLERANCE_PER_TOKEN = {"bfloat16": 0.1, "float16": 0.025}

@dataclass(frozen=True)
class Audit:
    """One task's audit, as stored in its score row (``audit_*`` columns)."""

    status: str
    n: int | None = None  # requests re-scored (log-likelihood) or re-generated
    agree: int | None = None  # of those, how many matched (and documents' predictions, see note)
    max_abs_diff: float | None = None  # max |Δ ll| over the sample (None for generation)
    note: str | None = None

    def fields(self) -> dict[str, Any]:
        return {"audit_status": self.status, "audit_n": self.n, "audit_agree": self.agree,
                "audit_max_abs_diff": self.max_abs_diff, "audit_note": self.note}


def tolerance(dtype: str, continuation_tokens: int) -> float:
    """|Δ ll| allowed for one request of ``continuation_tokens`` tokens scored in ``dtype``."""
    per_token = HALF_TOLERANCE_PER_TOKEN.get(str(dtype).replace("torch.", ""))
    if per_token is None:
        return max(FP32_TOLERANCE, FP32_TOLERANCE_PER_TOKEN * continuation_tokens)
    return per_token * max(1, continuation_tokens)


class PlainLM:
    """The engine's model scored the plain way: :func:`plain_loglikelihoods` for log-likelihoods
    (the engine's own pair split), one-prompt-at-a-time generation. Always exact; slower."""

    def __init__(self, engine: Any) -> None:
        from evalsuite.backends.engine.generation import Generator

        self.engine = engine
        # one prompt at a time over the model's cache; where the capabilities found that cache
        # use inexact (remote code with its own cache format), the full forward per step
        route = "plain" if getattr(engine.generator, "route", None) == "plain" else "exact"
        self.generator = Generator(engine.model, engine.tokenizer, engine.max_length, engine.max_gen_toks,
                                   mode="exact", route=route)

    def pairs(self, requests: Sequence[Any]) -> list[tuple[list[int], list[int]]]:
        return [self.engine.encode_pair(*req.args) for req in requests]

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        return self.scored(self.pairs(requests))

    def scored(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """:func:`plain_loglikelihoods` of requests already split by :meth:`pairs`."""
        import torch

        from evalsuite.backends.engine.plain import plain_loglikelihoods

        if not pairs:
            return []
        with torch.inference_mode():
            return plain_loglikelihoods(self.engine.model, pairs, max_length=self.engine.max_length,
                                        logits_dtype=self.engine.logits_dtype)

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        return self.generator.generate(requests)


class Auditor:
    """Audits each task of one model's run (see the module docstring)."""

    def __init__(self, lm: Any, *, enabled: bool = True, share: float = SHARE) -> None:
        self.lm = lm  # what the runner asks: the engine, perhaps behind the request cache
        inner = getattr(lm, "lm", lm)
        from evalsuite.backends.engine import lm as engine_lm

        self.engine = inner if isinstance(inner, engine_lm.EngineLM) else None
        self.enabled = enabled
        self.share = share
        self._plain: PlainLM | None = None

    @property
    def plain(self) -> PlainLM:
        if self._plain is None:
            self._plain = PlainLM(self.engine)
        return self._plain

    @property
    def dtype(self) -> str:
        assert self.engine is not None  # asked only of an audit of the engine
        return str(next(self.engine.model.parameters()).dtype).replace("torch.", "")

    def sample(self, task: Any, population: Sequence[Any], run_id: str) -> AuditSample:
        """The task's sample, costed by the dry run's counting with the engine's tokenizer."""
        from evalsuite.run.dry_run import _plan_task

        engine = self.engine
        assert engine is not None  # a sample is drawn only for an audit of the engine
        plan = _plan_task(task, engine.tokenizer, engine.max_length, None, None, "evalsuite", None,
                          engine.device.type, prompts=population, audit=(self.share, run_id))
        return plan.audit

    def check(self, task: Any, prompts: Sequence[Any], responses: Sequence[Sequence[Any]], run_id: str,
              population: Sequence[Any] | None = None) -> Audit:
        """The audit of one task from its documents and what was answered (per document).

        ``population``: all the task's documents when ``prompts`` is one shard of them; the
        sample is drawn from it and each shard audits its part, so the shards' audits add up to
        the unsharded run's."""
        if self.engine is None:
            return Audit("not applicable")
        if not self.enabled:
            return Audit("not audited")
        if not prompts:
            return Audit("agree", 0, 0, None, "no documents")
        if task.spec.is_generation and getattr(self.engine.generator, "route", "batched") != "batched":
            return Audit("not applicable", note="generation already runs one prompt at a time "
                                                f"({self.engine.generator.route}): the audit's own path")
        if not task.spec.is_generation and self.engine.executor.name == "plain":
            return Audit("not applicable", note="log-likelihoods already run on the plain executor (the model's "
                                                "capabilities declined the fast paths): the audit's own path")
        everything = list(population) if population is not None else list(prompts)
        sample = self.sample(task, everything, run_id)
        mine = {(p.subtask, p.doc_index): i for i, p in enumerate(prompts)}
        picks = [(mine[key], sample.requests_of(d)) for d in sample.picked
                 if (key := (everything[d].subtask, everything[d].doc_index)) in mine]
        if not picks:
            return Audit("agree", 0, 0, None, "no document of this shard drawn")
        cost = (f"{sample.tokens:,} plain tokens, {sample.tokens / max(1, sample.engine_tokens):.1%} of the task's "
                f"{sample.engine_tokens:,} engine tokens")
        if task.spec.is_generation:
            return self._check_generation(prompts, responses, [i for i, _ in picks], cost)
        return self._check_loglikelihood(task, prompts, responses, picks, cost)

    def _check_loglikelihood(self, task: Any, prompts: Sequence[Any], responses: Sequence[Sequence[Any]],
                             picks: list[tuple[int, tuple[int, ...] | None]], cost: str) -> Audit:
        chosen = [(i, range(len(prompts[i].instances)) if which is None else which) for i, which in picks]
        requests = [prompts[i].instances[j] for i, which in chosen for j in which]
        fast = [tuple(responses[i][j]) for i, which in chosen for j in which]
        pairs = self.plain.pairs(requests)
        # a document at a time: its inputs are nearly one length (a shared context), so the
        # batches carry little padding and few logits, and the work is what the budget counted
        plain, at = [], 0
        for _, which in chosen:
            plain.extend(self.plain.scored(pairs[at:at + len(which)]))
            at += len(which)
        lengths = [len(cont) for _, cont in pairs]
        diffs = [abs(float(f[0]) - float(p[0])) for f, p in zip(fast, plain, strict=True)]
        # half precision: a greedy flag may flip at a near tie of the vocabulary's argmax (noise
        # within tolerance); float32 flags must match
        strict_flags = self.dtype not in HALF_TOLERANCE_PER_TOKEN
        agree = sum(d <= tolerance(self.dtype, n) and (bool(f[1]) == bool(p[1]) or not strict_flags)
                    for d, n, f, p in zip(diffs, lengths, fast, plain, strict=True))
        flips, at, whole = 0, 0, 0
        for (i, which), _ in zip(chosen, picks, strict=True):
            k = len(which)
            mine, ref = fast[at:at + k], plain[at:at + k]
            at += k
            if k == len(prompts[i].instances):  # a whole document: its prediction is compared too
                whole += 1
                if task.score(prompts[i], mine).prediction != task.score(prompts[i], ref).prediction:
                    flips += 1
        worst = max(diffs) if diffs else 0.0
        parts = len(chosen) - whole
        note = f"{whole} whole document(s)" + (f" and {parts} long request(s) alone" if parts else "")
        note += f", {cost}, {self.dtype}"
        if flips:
            note += f", {flips} prediction(s) differ"
        if agree == len(requests):  # a prediction that flips with every number within tolerance is a near tie
            return Audit("agree", len(requests), agree, worst, note + (" (near ties)" if flips else ""))
        return Audit("rerun", len(requests), agree, worst,
                     note + "; beyond tolerance: re-scored on the plain executor")

    def _check_generation(self, prompts: Sequence[Any], responses: Sequence[Sequence[Any]], picked: list[int],
                          cost: str) -> Audit:
        from evalsuite.run.greedy_check import check_greedy

        assert self.engine is not None  # generation is checked only for an audit of the engine
        generator = self.engine.generator
        results = [check_greedy(generator, prompts[i].instances[0], responses[i][0], tolerance(self.dtype, 1))
                   for i in picked]
        agree = sum(r.ok for r in results)
        ties = sum(r.near_ties for r in results)
        note = (f"{len(picked)} prompt(s) checked by one forward over prompt + generated tokens, {cost}, {self.dtype}"
                + (f", {ties} near tie(s) within tolerance" if ties else ""))
        if agree == len(results):
            return Audit("agree", len(results), agree, None, note)
        why = "; ".join(r.why for r in results if not r.ok)
        return Audit("rerun", len(results), agree, None,
                     f"{note}; {why}: re-generated one prompt at a time")

    def forget_cached(self, prompts: Sequence[Any]) -> None:
        """Drop the task's answers from the request cache: the audit rejected them."""
        discard = getattr(self.lm, "discard", None)
        if discard is not None and prompts:
            kind = prompts[0].request_type
            discard(kind, [inst for p in prompts for inst in p.instances])


def say(message: str) -> None:
    print(f"evalsuite: {message}", file=sys.stderr, flush=True)


__all__ = ["Audit", "Auditor", "PlainLM", "AUDIT_STATUSES", "FP32_TOLERANCE", "FP32_TOLERANCE_PER_TOKEN",
           "HALF_TOLERANCE_PER_TOKEN",
           "SHARE", "AuditSample", "DocCost", "choose_sample", "describe", "describe_row", "summary_lines", "tolerance"]
