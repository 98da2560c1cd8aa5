"""A prefix tree (trie) of token ids: the unit of work the scoring engine computes once per node.

Every log-likelihood request becomes one path from the root (its model input tokens); requests
that share a prefix (a question's choices, a subject's few-shot preamble) share the nodes of that
prefix, so the engine forwards each node exactly once. Nodes are integers, created in insertion
order, so a parent always has a smaller id than its children; subtree sizes then come from one
reverse sweep.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Score:
    """One scored position of one request: the output at this node predicts ``target``."""

    request: int
    target: int


@dataclass
class PrefixTree:
    """Token trie with the scored positions hung on its nodes.

    Node 0 is the root and holds no token; every other node is one token at absolute
    position ``depth[node] - 1``.
    """

    token: list[int] = field(default_factory=lambda: [-1])
    parent: list[int] = field(default_factory=lambda: [-1])
    depth: list[int] = field(default_factory=lambda: [0])
    children: list[dict[int, int]] = field(default_factory=lambda: [{}])
    scores: dict[int, list[Score]] = field(default_factory=dict)
    size: list[int] = field(default_factory=list)

    def insert(self, request: int, inputs: list[int], targets: list[int]) -> None:
        """Add a request: ``inputs`` are fed to the model, the last ``len(targets)`` of them predict ``targets``.

        ``targets[k]`` is predicted by the output at input position ``len(inputs) - len(targets) + k``.
        """
        if not targets or len(targets) > len(inputs):
            raise ValueError("a request needs 1..len(inputs) target tokens")
        first_scored = len(inputs) - len(targets)
        node = 0
        for pos, tok in enumerate(inputs):
            child = self.children[node].get(tok)
            if child is None:
                child = len(self.token)
                self.token.append(tok)
                self.parent.append(node)
                self.depth.append(self.depth[node] + 1)
                self.children.append({})
                self.children[node][tok] = child
            node = child
            if pos >= first_scored:
                self.scores.setdefault(node, []).append(Score(request, targets[pos - first_scored]))
        self.size = []  # invalidated

    @property
    def n_tokens(self) -> int:
        """Unique tokens: what a perfect prefix-sharing engine must run through the model."""
        return len(self.token) - 1

    def finalize(self) -> None:
        """Compute subtree sizes (tokens in a node's subtree, itself included)."""
        size = [1] * len(self.token)
        size[0] = 0
        for node in range(len(self.token) - 1, 0, -1):
            parent = self.parent[node]
            if parent > 0:
                size[parent] += size[node]
            else:
                size[0] += size[node]
        self.size = size

    def preorder(self, node: int) -> list[int]:
        """The subtree of ``node`` in depth-first pre-order: a node's descendants directly follow it,
        so ``node`` at row index i covers indices ``[i, i + size[node])``, which is what the attention mask needs."""
        out: list[int] = []
        stack = [node]
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(reversed(list(self.children[n].values())))
        return out

    def chain(self, node: int) -> list[int]:
        """``node`` and the single-child nodes below it, down to the first branching (or leaf) node."""
        out = [node]
        while len(self.children[node]) == 1:
            node = next(iter(self.children[node].values()))
            out.append(node)
        return out


def empty_context_pair(prefix_token: int, continuation_enc: list[int]) -> tuple[list[int], list[int]]:
    """lm-eval's (and v1's) split of a request with an empty context: the prefix token (v1: EOS) is
    the context, unless the continuation already starts with it."""
    if continuation_enc[:1] == [prefix_token]:
        return continuation_enc[:1], continuation_enc[1:]
    return [prefix_token], continuation_enc


def truncated_inputs(context_enc: list[int], continuation_enc: list[int], max_length: int) -> list[int]:
    """HFLM's (and v1's) left truncation: the model input is ``(ctx + cont)[-(max_length + 1):][:-1]``."""
    return (context_enc + continuation_enc)[-(max_length + 1):][:-1]


def tree_of(encoded: Sequence[tuple[list[int], list[int]]], max_length: int) -> PrefixTree:
    """The prefix tree of encoded ``(context, continuation)`` requests after left truncation.

    Node for node what :meth:`PrefixTree.insert` of each request in turn builds (same numbering,
    child order and scores; ``tests/test_dry_run.py`` compares them on real requests), but faster: a request
    shares most of its input with the one before it (the four endings of a HellaSwag context),
    so the nodes of the prefix shared with the previous request (up to its first scored
    position) are taken from that request's path and only the rest is walked. A full HellaSwag
    split walks ~10 M tokens instead of ~35 M.
    """
    tree = PrefixTree()
    token, parent, depth, children, scores = tree.token, tree.parent, tree.depth, tree.children, tree.scores
    previous: tuple[int, ...] = ()
    path: list[int] = []  # path[i]: the node at position i of the previous request
    for index, (context_enc, continuation_enc) in enumerate(encoded):
        if not continuation_enc:
            raise ValueError("empty continuation after tokenization")
        inputs = tuple(truncated_inputs(context_enc, continuation_enc, max_length))
        if len(continuation_enc) > len(inputs):
            raise ValueError("a request needs 1..len(inputs) target tokens")
        first_scored = len(inputs) - len(continuation_enc)
        shared = min(common_prefix(inputs, previous), first_scored)
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


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two token sequences (binary search over C-level slices)."""
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
