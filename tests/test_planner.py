"""The engine's planner on its own: properties over random prefix trees, no torch, no model.

Trees are built from random requests that share random preambles (the shape of few-shot
prompts), with budgets small enough that trunks are cut in pieces, rows are packed and batches
are cut. Every plan must compute each scored node exactly once and every node at least once,
give each row the past its attention mask assumes, stay within its budgets, reuse remembered
trunks only where they agree, and release every past it makes.
"""
from __future__ import annotations

import random
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from evalsuite.backends.engine import planner
from evalsuite.backends.engine.planner import FOLD_TRUNK, TRUNK_MEMORY, Budgets, Forward, Release, Remember, Reuse
from evalsuite.backends.engine.prefix_tree import PrefixTree


def random_tree(seed: int, n_preambles: int, n_requests: int, max_preamble: int, vocab: int) -> PrefixTree:
    rnd = random.Random(seed)
    preambles = [[rnd.randrange(vocab) for _ in range(rnd.randrange(max_preamble + 1))] for _ in range(n_preambles)]
    tree = PrefixTree()
    for index in range(n_requests):
        context = rnd.choice(preambles) + [rnd.randrange(vocab) for _ in range(rnd.randrange(1, 40))]
        targets = [rnd.randrange(vocab) for _ in range(rnd.randrange(1, 6))]
        inputs = (context + targets)[:-1]
        tree.insert(index, inputs, targets)
    tree.finalize()
    return tree


def path_tokens(tree: PrefixTree, node: int) -> list[int]:
    out = []
    while node > 0:
        out.append(tree.token[node])
        node = tree.parent[node]
    return out[::-1]


def check_plan(tree: PrefixTree, plan: planner.ForwardPlan, budgets: Budgets, memory: list[tuple[int, ...]]) -> None:
    computed: dict[int, int] = {}
    covered: set[int] = set()
    live: dict[int, int] = {}  # past id -> end node
    released: set[int] = set()
    memory = list(memory)
    reused = 0
    for step in plan.steps:
        if isinstance(step, Forward):
            assert step.rows
            if step.keep is not None:
                assert len(step.rows) == 1 and step.rows[0].is_chain
                assert len(step.rows[0].nodes) <= budgets.token_budget
            elif len(step.rows) > 1:
                assert step.padded_tokens <= budgets.token_budget
                if budgets.kv_limit is not None:
                    longest = max(plan.pasts[r.past][1] if r.past is not None else 0 for r in step.rows)
                    assert len(step.rows) * (longest + step.width) <= budgets.kv_limit
            for row in step.rows:
                assert len(row.ends) == len(row.nodes)
                top = 0 if row.past is None else live[row.past]  # the past must be live
                for i, node in enumerate(row.nodes):
                    # a packed row may repeat a folded opening: an ancestor is its nearest copy before i
                    index = {n: j for j, n in enumerate(row.nodes[:i])}
                    computed[node] = computed.get(node, 0) + 1
                    covered.add(node)
                    # the row's mask shows each token exactly its ancestors within the row ...
                    visible = {j for j in range(i + 1) if i < row.ends[j]}
                    ancestors, up = {i}, tree.parent[node]
                    while up != top:  # ... and every ancestor below the past is in the row
                        assert up in index, "an ancestor is neither in the row nor in its past"
                        ancestors.add(index[up])
                        up = tree.parent[up]
                    assert visible == ancestors
            if step.keep is not None:
                live[step.keep] = step.rows[0].nodes[-1]
        elif isinstance(step, Reuse):
            assert step.key in memory
            assert step.length >= FOLD_TRUNK
            end = plan.pasts[step.out][0]
            assert tuple(path_tokens(tree, end)) == step.key[:step.length]
            path, node = [], end
            while node > 0:
                path.append(node)
                node = tree.parent[node]
            assert not any(n in tree.scores for n in path), "a scored node taken from an earlier call"
            covered.update(path)
            live[step.out] = end
            reused += step.length
        elif isinstance(step, Remember):
            assert step.past in live and tuple(path_tokens(tree, live[step.past])) == step.key
            planner.remember(memory, step.key)
            assert len(memory) <= TRUNK_MEMORY
        elif isinstance(step, Release):
            for past in step.pasts:
                assert past in live and past not in released
                released.add(past)
                del live[past]
    scored = set(tree.scores)
    assert all(computed.get(node) == 1 for node in scored), "a scored node computed twice or never"
    assert covered == set(range(1, len(tree.token))), "a node never computed"
    assert not live, "a past never released"
    assert reused == plan.reused_tokens
    # only short unscored trunks (folded openings) are recomputed, once per branch below them
    for node, count in computed.items():
        assert count == 1 or (node not in tree.scores and count <= len(tree.children[node]) * tree.size[node])


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n_preambles=st.integers(1, 4),
    n_requests=st.integers(1, 40),
    max_preamble=st.sampled_from([0, 20, 120, 400, 900]),
    vocab=st.sampled_from([2, 5, 50]),
    token_budget=st.sampled_from([64, 256, 2048]),
    copies_past=st.booleans(),
)
def test_plan_properties(seed, n_preambles, n_requests, max_preamble, vocab, token_budget, copies_past):
    tree = random_tree(seed, n_preambles, n_requests, max_preamble, vocab)
    budgets = Budgets.for_device("cpu", token_budget, copies_past=copies_past)
    plan = planner.plan_forwards(tree, budgets)
    check_plan(tree, plan, budgets, [])
    assert plan.reused_tokens == 0
    summary = planner.summarize(tree, plan, n_requests)
    assert summary.real_tokens >= summary.unique_tokens == tree.n_tokens
    assert summary.forwarded_tokens >= summary.real_tokens


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), split=st.integers(1, 30))
def test_trunk_memory_is_reused_as_stated(seed, split):
    """Two calls over requests sharing long preambles: the second starts its root trunks from the
    first call's where they agree, and computes the same scored nodes as one call would."""
    rnd = random.Random(seed)
    preamble = [rnd.randrange(50) for _ in range(300)]
    requests = []
    for _ in range(32):
        context = preamble + [rnd.randrange(50) for _ in range(rnd.randrange(5, 30))]
        requests.append((context, [rnd.randrange(50)]))
    budgets = Budgets.for_device("cpu")

    def tree_of(reqs):
        tree = PrefixTree()
        for i, (ctx, cont) in enumerate(reqs):
            tree.insert(i, (ctx + cont)[:-1], cont)
        tree.finalize()
        return tree

    first_tree, second_tree = tree_of(requests[:split]), tree_of(requests[split:])
    first = planner.plan_forwards(first_tree, budgets)
    check_plan(first_tree, first, budgets, [])
    memory = [s.key for s in first.steps if isinstance(s, Remember)]
    assert memory and all(len(k) >= len(preamble) for k in memory)
    second = planner.plan_forwards(second_tree, budgets, memory)
    check_plan(second_tree, second, budgets, memory)
    assert second.reused_tokens >= len(preamble)  # the preamble is not computed again
    computed = sum(len(r.nodes) for f in second.forwards for r in f.rows)
    assert computed <= second_tree.n_tokens - len(preamble)


def test_planner_and_plan_requests_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from evalsuite.backends.engine import plan_requests, planner\n"
            "from evalsuite.backends.engine.prefix_tree import tree_of\n"
            "t = tree_of([([1, 2, 3], [4]), ([1, 2, 5], [6, 7])], 2048)\n"
            "print(planner.summarize(t, planner.plan_forwards(t, planner.Budgets.for_device('cpu')), 2).unique_tokens)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "5"  # 1 2 3 | 5 6
