"""Scoring: log-probabilities of the targets at the scored positions of a forward pass.

Only hidden states at positions that predict a continuation token go through the output layer.
The log-softmax is taken in the dtype v1 took it in (:func:`evalsuite.compat.v1_logits_dtype`):
float32 for models whose logits were upcast (Llama, Mistral, every fp32 model), the model's own
half precision otherwise, where the per-request sum is also taken in that dtype as v1 did.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from evalsuite.backends.engine.planner import Row
from evalsuite.backends.engine.prefix_tree import PrefixTree

#: Positions projected onto the vocabulary at once: bounds the [positions, vocab] logits tensor.
SCORE_CHUNK = 512


@dataclass
class Tally:
    """Per-request log-probabilities of the scored tokens and the greedy flag."""

    n: int
    logprobs: list[list[float]] = field(default_factory=list)
    greedy: list[bool] = field(default_factory=list)
    #: batches the plain executor split in halves after running out of memory
    oom_splits: int = 0

    def __post_init__(self) -> None:
        self.logprobs = [[] for _ in range(self.n)]
        self.greedy = [True] * self.n

    def results(self, dtype: torch.dtype = torch.float32) -> list[tuple[float, bool]]:
        """``(sum of log-probs, all greedy)`` per request; a half-precision sum as v1 took it."""
        return [self.result(request, dtype) for request in range(self.n)]

    def result(self, request: int, dtype: torch.dtype = torch.float32) -> tuple[float, bool]:
        """One request's ``(sum of log-probs, all greedy)``, as :meth:`results` gives it."""
        lp, greedy = self.logprobs[request], self.greedy[request]
        if dtype == torch.float32:
            return float(sum(lp)), greedy
        return float(torch.tensor(lp, dtype=dtype).sum()), greedy


def score(lm_head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, rows: list[Row], tree: PrefixTree, tally: Tally,
          dtype: torch.dtype = torch.float32) -> int:
    """Add the rows' scored positions to ``tally``; returns how many positions were scored."""
    where_b: list[int] = []
    where_t: list[int] = []
    nodes: list[int] = []
    for b, row in enumerate(rows):
        for t, node in enumerate(row.nodes):
            if node in tree.scores:
                where_b.append(b)
                where_t.append(t)
                nodes.append(node)
    for begin in range(0, len(nodes), SCORE_CHUNK):
        sl = slice(begin, begin + SCORE_CHUNK)
        h = hidden[torch.tensor(where_b[sl]), torch.tensor(where_t[sl])]
        logits = lm_head(h)
        targets: list[int] = []
        owners: list[tuple[int, int]] = []
        for k, node in enumerate(nodes[sl]):
            for s in tree.scores[node]:
                targets.append(s.target)
                owners.append((k, s.request))
        rows_idx = torch.tensor([k for k, _ in owners], device=logits.device)
        cols = torch.tensor(targets, device=logits.device)
        if dtype == torch.float32:
            logits = logits.float()
            # log-softmax read at the targets only: logit - logsumexp, no [positions, vocab] output
            greedy = logits.argmax(dim=-1).tolist()
            picked = (logits[rows_idx, cols] - torch.logsumexp(logits, dim=-1)[rows_idx]).tolist()
        else:  # v1 in half precision: log-softmax in that dtype, argmax of it
            logprobs = torch.log_softmax(logits.to(dtype), dim=-1)
            greedy = logprobs.argmax(dim=-1).tolist()
            picked = logprobs[rows_idx, cols].float().tolist()
        for (k, request), target, value in zip(owners, targets, picked):
            tally.logprobs[request].append(value)
            if greedy[k] != target:
                tally.greedy[request] = False
    return len(nodes)
