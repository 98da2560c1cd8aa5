"""The plan: which tokens of a prefix tree go through the model, in which forward passes.

Pure Python on the tree's shape and a few budgets (no torch, no model), so the plan can be
tested on its own and counted before any weight loads (``run --dry-run``). The executor then
runs the steps in order.

How the tree is cut:

* a subtree small enough (``SMALL_ROW`` tokens) is one packed row in depth-first order; each
  token attends to its past and its own ancestors in the row (``Row.ends``);
* a larger subtree's trunk (its single-child chain) is forwarded alone with plain causal
  attention, and its keys and values become the *past* of everything below it;
* a short trunk shared by long branches (a task's first word) is recomputed in each branch
  instead of costing a forward pass of its own (``FOLD_TRUNK``); it is never a scored node;
* the rows below all trunks of one level are batched together, longest first, cut where padding
  would cost more than another forward pass (``Budgets.forward_cost``) and within the budgets;
* trunks starting at the root (few-shot preambles) are kept across calls, up to
  ``TRUNK_MEMORY`` of them: a later call starts from the longest agreeing prefix of one.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from evalsuite.backends.engine.prefix_tree import PrefixTree, common_prefix

#: Default tokens per forward pass (rows x padded row length) by device type. CPU matmuls
#: saturate early; GPUs need large batches to reach peak throughput.
DEFAULT_TOKEN_BUDGET = {"cpu": 2048, "cuda": 16384}
#: The fixed cost of one forward pass (reading every weight, the per-layer calls), in tokens'
#: worth of compute, by device type: what a batch split must save in padding to pay off.
FORWARD_COST = {"cpu": 48, "cuda": 512}
#: Root trunks (few-shot preambles) kept for the next calls.
TRUNK_MEMORY = 4
#: Rows x (past + row) key/value slots one forward may materialize, as a multiple of the token
#: budget, where each row gets its own copy of its past (the model's own attention).
KV_BUDGET_FACTOR = 4
#: A subtree this small is packed as one row; a larger one is split into its trunk and branches.
SMALL_ROW = 256
#: A shared trunk shorter than this is recomputed in each branch below it (no forward of its own).
FOLD_TRUNK = 32
#: Keys and values of trunks held at once while their branches wait, as a multiple of the
#: token budget (in tokens).
LIVE_KV_FACTOR = 4


@dataclass(frozen=True)
class Budgets:
    """What bounds one forward pass. ``kv_limit`` is set where rows copy their past (the model's
    own attention over a cache); ``None`` where they attend to it in place (tree attention)."""

    token_budget: int
    forward_cost: int
    kv_limit: int | None = None
    max_rows: int | None = None
    #: a subtree this small is one packed row (the capability probe sets it small, so that its
    #: short inputs are cut into kept trunks and rows below them, as a real run's are)
    small_row: int = SMALL_ROW

    @classmethod
    def for_device(cls, device_type: str, token_budget: int | None = None, copies_past: bool | None = None,
                   max_rows: int | None = None, small_row: int = SMALL_ROW) -> Budgets:
        budget = int(token_budget or DEFAULT_TOKEN_BUDGET.get(device_type, 4096))
        if copies_past is None:
            copies_past = device_type != "cpu"
        return cls(budget, FORWARD_COST.get(device_type, FORWARD_COST["cpu"]),
                   KV_BUDGET_FACTOR * budget if copies_past else None, max_rows, small_row)


@dataclass
class Row:
    """One packed row: tree nodes in pre-order; per token the exclusive end of the tokens that may
    attend to it (its subtree within the row); ``past``: the id of the computed trunk it sits
    below (None: the root)."""

    nodes: list[int]
    ends: list[int]
    past: int | None = None

    @property
    def is_chain(self) -> bool:
        """Every token sees all tokens before it: plain causal attention."""
        return all(end == len(self.nodes) for end in self.ends)


@dataclass
class Forward:
    """One forward pass of ``rows`` (each padded to the longest). With ``keep`` (a single chain
    row: a trunk or a piece of one) its keys and values, appended to its past's, become past
    ``keep``."""

    rows: list[Row]
    keep: int | None = None

    @property
    def width(self) -> int:
        return max(len(r.nodes) for r in self.rows)

    @property
    def padded_tokens(self) -> int:
        return len(self.rows) * self.width


@dataclass
class Reuse:
    """Past ``out`` is the first ``length`` tokens of the root trunk remembered under ``key``."""

    out: int
    key: tuple[int, ...]
    length: int


@dataclass
class Remember:
    """Keep past ``past`` (a root trunk) for later calls under its tokens ``key``."""

    key: tuple[int, ...]
    past: int


@dataclass
class Release:
    """Pasts no later step reads (their memory may go)."""

    pasts: list[int]


Step = Forward | Reuse | Remember | Release


@dataclass
class ForwardPlan:
    """The forward passes (and trunk bookkeeping) that compute one call's prefix tree; not the
    dry run's :class:`~evalsuite.run.dry_run.CostPlan` of a whole run."""

    steps: list[Step]
    #: past id -> (tree node it ends at, its length in tokens)
    pasts: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: tokens taken from remembered root trunks instead of computed
    reused_tokens: int = 0

    @property
    def forwards(self) -> list[Forward]:
        return [s for s in self.steps if isinstance(s, Forward)]


def remember(keys: list[tuple[int, ...]], key: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Put ``key`` last (most recent) in ``keys``; return the evicted keys beyond ``TRUNK_MEMORY``."""
    if key in keys:
        keys.remove(key)
    keys.append(key)
    evicted = []
    while len(keys) > TRUNK_MEMORY:
        evicted.append(keys.pop(0))
    return evicted


def reusable(memory: Sequence[tuple[int, ...]], tokens: Sequence[int], limit: int) -> tuple[int, tuple[int, ...] | None]:
    """The trunk-reuse rule: the longest agreeing prefix (at most ``limit`` tokens) of ``tokens``
    with a remembered root trunk, and that trunk; ``(0, None)`` when shorter than ``FOLD_TRUNK``
    (recomputing it is cheaper than a forward of its own)."""
    common, source = 0, None
    for key in memory:
        n = common_prefix(key, tokens[:limit])
        if n > common:
            common, source = n, key
    return (common, source) if common >= FOLD_TRUNK else (0, None)


def plan_forwards(tree: PrefixTree, budgets: Budgets, memory: Sequence[tuple[int, ...]] = ()) -> ForwardPlan:
    """The steps that compute every node of ``tree`` (finalized) once; ``memory`` holds the keys
    of root trunks kept from earlier calls, least recent first."""
    return _Planner(tree, budgets, list(memory)).run()


class _Planner:
    def __init__(self, tree: PrefixTree, budgets: Budgets, memory: list[tuple[int, ...]]) -> None:
        if tree.size == [] and tree.n_tokens:
            raise ValueError("finalize() the tree before planning")
        self.tree = tree
        self.budgets = budgets
        self.memory = memory
        self.out = ForwardPlan([])

    def run(self) -> ForwardPlan:
        if self.tree.n_tokens:
            self._walk([(0, None)])
        return self.out

    def _new_past(self, end_node: int) -> int:
        past = len(self.out.pasts)
        self.out.pasts[past] = (end_node, self.tree.depth[end_node])
        return past

    def _past_length(self, past: int | None) -> int:
        return 0 if past is None else self.out.pasts[past][1]

    def _walk(self, frontier: list[tuple[int, int | None]]) -> None:
        """Every node below the frontier nodes, each of whose path is in its past: first the
        small subtrees below all of them as batched rows, then each bigger subtree's trunk, its
        branches walked a group at a time so that the trunks' keys and values held stay bounded."""
        rows: list[Row] = []
        trunks: list[tuple[list[int], int | None]] = []
        for node, past in frontier:
            self._split(node, past, (), rows, trunks)
        if rows:
            self._rows(rows)
        group: list[tuple[int, int | None]] = []
        held = 0
        for chain, past in trunks:
            new_past = self._root_trunk(chain) if past is None else self._trunk(chain, past)
            group.append((chain[-1], new_past))
            held += self._past_length(new_past)
            if held >= LIVE_KV_FACTOR * self.budgets.token_budget:
                self._finish(group)
                group, held = [], 0
        if group:
            self._finish(group)

    def _finish(self, group: list[tuple[int, int | None]]) -> None:
        self._walk(group)
        self.out.steps.append(Release([p for _, p in group if p is not None]))

    def _split(self, node: int, past: int | None, prefix: tuple[int, ...], rows: list[Row],
               trunks: list[tuple[list[int], int | None]]) -> None:
        tree = self.tree
        for child in tree.children[node].values():
            if tree.size[child] + len(prefix) <= self.budgets.small_row:
                rows.append(self._row(child, prefix, past))
                continue
            chain = tree.chain(child)
            if self._fold(chain, prefix):
                self._split(chain[-1], past, prefix + tuple(chain), rows, trunks)
            else:
                trunks.append((list(prefix) + chain, past))

    def _fold(self, chain: list[int], prefix: tuple[int, ...]) -> bool:
        """Recompute rather than forward a trunk: short (with the prefix), followed by a
        branching, and not scored (a scored node must be computed exactly once)."""
        tree = self.tree
        return (
            len(prefix) + len(chain) < FOLD_TRUNK
            and len(tree.children[chain[-1]]) > 1
            and not any(n in tree.scores for n in chain)
        )

    def _row(self, child: int, prefix: tuple[int, ...], past: int | None) -> Row:
        tree = self.tree
        nodes = tree.preorder(child)
        width = len(prefix) + len(nodes)
        ends = [width] * len(prefix) + [len(prefix) + i + tree.size[n] for i, n in enumerate(nodes)]
        return Row(list(prefix) + nodes, ends, past)

    def _root_trunk(self, chain: list[int]) -> int | None:
        """A root trunk, started from the longest agreeing remembered one (never past its first
        scored node: scores belong to this call), and remembered in turn."""
        tree = self.tree
        tokens = tuple(tree.token[n] for n in chain)
        scored = next((i for i, n in enumerate(chain) if n in tree.scores), len(chain))
        common, source = reusable(self.memory, tokens, scored)
        past: int | None = None
        if source is not None:
            past = self._new_past(chain[common - 1])
            self.out.steps.append(Reuse(past, source, common))
            self.out.reused_tokens += common
        if common < len(chain):
            reused = past
            past = self._trunk(chain[common:], past)
            if reused is not None:
                self.out.steps.append(Release([reused]))  # superseded by the extended trunk
        assert past is not None
        self.out.steps.append(Remember(tokens, past))
        remember(self.memory, tokens)
        return past

    def _trunk(self, chain: list[int], past: int | None) -> int:
        """Forward a chain below ``past`` in pieces of at most the token budget."""
        budget = self.budgets.token_budget
        for begin in range(0, len(chain), budget):
            piece = chain[begin:begin + budget]
            new = self._new_past(piece[-1])
            self.out.steps.append(Forward([Row(piece, [len(piece)] * len(piece), past)], keep=new))
            if past is not None and begin > 0:
                self.out.steps.append(Release([past]))  # an intermediate piece: superseded
            past = new
        assert past is not None
        return past

    def _rows(self, rows: list[Row]) -> None:
        """Pack the small rows below each past, then forward all of them in cost-cut batches."""
        by_past: dict[int | None, list[Row]] = {}
        for row in rows:
            by_past.setdefault(row.past, []).append(row)
        packed: list[Row] = []
        for group in by_past.values():
            packed.extend(_pack_small(sorted(group, key=lambda r: -len(r.nodes))))
        for batch in cut_batches(sorted(packed, key=lambda r: -len(r.nodes)), self.budgets, self._past_length):
            self.out.steps.append(Forward(batch))


def cut_batches(rows: list[Row], budgets: Budgets, past_length: Callable[[int | None], int] = lambda _: 0) -> list[list[Row]]:
    """Cut rows (longest first) into consecutive batches at the least cost in tokens: each row
    padded to its batch's first, plus ``forward_cost`` per batch, within the budgets. A small
    dynamic program: rows number in the hundreds."""
    b = budgets
    best = [0.0] + [float("inf")] * len(rows)
    cut = [0] * (len(rows) + 1)
    for end in range(1, len(rows) + 1):
        longest_past = 0
        for begin in range(end - 1, -1, -1):
            count, width = end - begin, len(rows[begin].nodes)
            longest_past = max(longest_past, past_length(rows[begin].past))
            if count > 1 and (
                count * width > b.token_budget
                or (b.kv_limit is not None and count * (longest_past + width) > b.kv_limit)
                or (b.max_rows and count > b.max_rows)
            ):
                break  # an earlier start only adds rows and width
            cost = best[begin] + count * width + b.forward_cost
            if cost < best[end]:
                best[end], cut[end] = cost, begin
    batches: list[list[Row]] = []
    end = len(rows)
    while end > 0:
        batches.append(rows[cut[end]:end])
        end = cut[end]
    return batches[::-1]


def _pack_small(rows: list[Row]) -> list[Row]:
    """Merge short rows below one past (longest first) into rows no longer than the longest, so
    many tiny subtrees (single answers below a cached question) do not each cost a padded row."""
    if len(rows) < 2:
        return rows
    width = len(rows[0].nodes)
    packed: list[Row] = [rows[0]]
    for row in rows[1:]:
        last = packed[-1]
        if len(last.nodes) + len(row.nodes) <= width:
            offset = len(last.nodes)
            packed[-1] = Row(last.nodes + row.nodes, last.ends + [e + offset for e in row.ends], last.past)
        else:
            packed.append(row)
    return packed


@dataclass
class PlanSummary:
    """What running a set of requests costs the engine, known before any weight loads.

    ``forwarded_tokens`` counts padding; ``real_tokens`` the tokens in rows (unique ones plus
    short shared openings recomputed per branch); ``unique_tokens`` the prefix tree's size (what
    a perfect prefix-sharing engine runs); ``reused_tokens`` root-trunk tokens taken from an
    earlier call; ``requests`` includes generation requests, whose prompt tokens are in
    ``prompt_tokens`` and whose new-token budget is ``generation_budget``.
    """

    requests: int = 0
    unique_tokens: int = 0
    forwarded_tokens: int = 0
    real_tokens: int = 0
    forward_passes: int = 0
    scored_positions: int = 0
    reused_tokens: int = 0
    prompt_tokens: int = 0
    generation_budget: int = 0

    def add(self, other: PlanSummary) -> PlanSummary:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self


def summarize(tree: PrefixTree, the_plan: ForwardPlan, requests: int) -> PlanSummary:
    forwards = the_plan.forwards
    return PlanSummary(
        requests=requests,
        unique_tokens=tree.n_tokens,
        forwarded_tokens=sum(f.padded_tokens for f in forwards),
        real_tokens=sum(len(r.nodes) for f in forwards for r in f.rows),
        forward_passes=len(forwards),
        scored_positions=sum(1 for f in forwards for r in f.rows for n in r.nodes if n in tree.scores),
        reused_tokens=the_plan.reused_tokens,
    )


def summarize_calls(trees: Iterable[tuple[PrefixTree, int]], budgets: Budgets) -> PlanSummary:
    """What a sequence of calls costs, each a (prefix tree, request count), planned in order with
    the root trunks remembered between calls as the executor remembers them."""
    memory: list[tuple[int, ...]] = []
    total = PlanSummary()
    for tree, requests in trees:
        the_plan = plan_forwards(tree, budgets, memory)
        for step in the_plan.steps:
            if isinstance(step, Remember):
                remember(memory, step.key)
        total.add(summarize(tree, the_plan, requests))
    return total


@dataclass
class TreeCount:
    """Prefix-tree tokens of calls, counted without building the trees (:func:`count_calls`)."""

    tokens: int  # prefix-tree tokens over all calls, less the root trunks reused from earlier calls
    unique: int  # prefix-tree tokens summed over calls
    reused: int  # root-trunk tokens taken from an earlier call


def count_calls(calls: Iterable[Sequence[tuple[int, ...]]]) -> TreeCount:
    """The prefix-tree tokens of log-likelihood calls, fast, for splits too large to plan.

    Each item is one call's model inputs. The tree of a set of sequences has sum(lengths) -
    sum(common prefix of neighbours in sorted order) nodes (``PrefixTree.n_tokens``); a call's
    root trunks are the runs of sorted neighbours sharing at least ``FOLD_TRUNK`` tokens (a
    shorter opening is recomputed per branch), taken in request order and reused by
    :func:`reusable`, remembered by :func:`remember`, as :func:`plan_forwards` does. Without
    padding and without the short openings recomputed per branch; it costs a sort per call
    instead of a node object per token.
    """
    kept: list[tuple[int, ...]] = []
    unique = reused = 0
    for call in calls:
        seqs = sorted(set(call))
        if not seqs:
            continue
        common = [common_prefix(a, b) for a, b in zip(seqs, seqs[1:])]
        unique += sum(map(len, seqs)) - sum(common)
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
            reused += reusable(kept, trunk, len(trunk))[0]
            remember(kept, trunk)
    return TreeCount(unique - reused, unique, reused)
