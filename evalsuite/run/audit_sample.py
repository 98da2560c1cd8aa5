"""Which requests the self-audit re-computes: a sample within a cost budget (issue 23).

Its own module because both the audit (:mod:`evalsuite.run.audit`, at run time) and the dry run
(:mod:`evalsuite.run.dry_run`, which prints the audit's cost) choose it, from per-document costs
the dry run's counting gives: a pure function of the task's documents, the share, the run id and
the task, so a resumed run, every shard and the dry run choose the same requests.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

#: The share of a task's engine work (its engine tokens, the dry run's count) the audit may spend
#: on the plain executor by default (``--audit-share``); at least one request per task is audited
#: whatever it is.
SHARE = 0.03
#: What one token through the plain executor costs, in engine tokens, when the budget is spent.
#: Counted token for token, a 3 % sample took 3.1-3.4 % of the task's time: the plain forward
#: of a few long rows runs 3-14 % slower per token than the engine's packed forwards (measured
#: per task, SmolLM2 fp32 on this CPU, ``benchmarks/audit_share.py``). Pricing a plain token
#: at 1.25 keeps the audit within the share of the task's *time* with room for a slower
#: machine; the GPU check measures the ratio on the card.
PLAIN_TOKEN_COST = 1.25


@dataclass(frozen=True)
class DocCost:
    """What auditing one document costs on the plain executor, in tokens (the dry run counts it)."""

    tokens: int  # what the plain executor forwards for the document alone: its distinct inputs, each
    # batch padded to its longest (generation: prompt + expected new tokens)
    longest: int  # its longest input
    longest_request: int  # that request's position in the document


@dataclass(frozen=True)
class AuditSample:
    """Which requests of a task are audited: whole documents, and perhaps one request alone (the
    floor's long input, when its whole document does not fit the budget). Indices are into the
    task's documents (the whole population for a sharded run)."""

    documents: tuple[int, ...]
    partial: tuple[int, int] | None  # (document, request)
    tokens: int  # the plain executor's tokens for the sample
    budget: int  # plain tokens: share x engine tokens / PLAIN_TOKEN_COST
    engine_tokens: int  # the task's engine tokens (the dry run's count)

    def requests_of(self, document: int) -> tuple[int, ...] | None:
        """The requests of ``document`` audited: None for all of them, () for none."""
        if document in self.documents:
            return None
        return (self.partial[1],) if self.partial is not None and self.partial[0] == document else ()

    @property
    def picked(self) -> list[int]:
        """Every document with at least one audited request, ascending."""
        return sorted({*self.documents, *([self.partial[0]] if self.partial else [])})

    def requests(self, sizes: Sequence[int]) -> int:
        """Requests audited, given each document's request count."""
        return sum(sizes[i] for i in self.documents) + (1 if self.partial else 0)


def seed_of(run_id: str, task: str) -> int:
    return int(hashlib.sha256(f"{run_id}\0{task}".encode()).hexdigest()[:16], 16)


def choose_sample(costs: Sequence[DocCost], engine_tokens: int, share: float, run_id: str, task: str) -> AuditSample:
    """The audit's sample of a task: plain-executor tokens within ``share`` x ``engine_tokens``
    / :data:`PLAIN_TOKEN_COST` (the plain executor's tokens priced in engine tokens).

    The floor: the document with the longest input (windows and truncation show on long inputs;
    a seeded choice among equally long ones), whole if it fits the budget, else that input
    alone. Then whole documents in a seeded order (run id and task), each one that still fits.
    A share of 1 takes every document.
    A pure function of the task's documents: a resumed run and every shard choose the same."""
    if not costs:
        return AuditSample((), None, 0, 0, engine_tokens)
    budget = int(share * engine_tokens / PLAIN_TOKEN_COST)
    if share >= 1:  # everything (the plain path has no prefix sharing: its tokens exceed the engine's)
        return AuditSample(tuple(range(len(costs))), None, sum(c.tokens for c in costs), budget, engine_tokens)
    order = list(range(len(costs)))
    random.Random(seed_of(run_id, task)).shuffle(order)
    floor = max(order, key=lambda i: costs[i].longest)  # first of the longest in the seeded order
    whole, partial = [], None
    if costs[floor].tokens <= budget:
        whole.append(floor)
        spent = costs[floor].tokens
    else:
        partial, spent = (floor, costs[floor].longest_request), costs[floor].longest
    for index in order:
        if index != floor and spent + costs[index].tokens <= budget:
            whole.append(index)
            spent += costs[index].tokens
    return AuditSample(tuple(sorted(whole)), partial, spent, budget, engine_tokens)


__all__ = ["PLAIN_TOKEN_COST", "SHARE", "AuditSample", "DocCost", "choose_sample", "seed_of"]
