"""The ``evalsuite`` backend: lm-eval's ``LM`` interface scored over a prefix tree.

Why not lm-eval's ``hf`` model: it forwards every (context, continuation) pair in full, so a
25-shot ARC question is run four times (once per choice), every MMLU question re-runs its
subject's 5-shot preamble, and the output layer and log-softmax are computed over every
position of every sequence although only the continuation positions are read.

This engine tokenizes each request exactly as ``HFLM`` does (so the numbers agree with it),
puts the model inputs of all requests into one :class:`~.prefix_tree.PrefixTree` and walks it:

* a subtree small enough to be one row is forwarded as one packed row in depth-first order with
  a tree attention mask (each token sees its past and its own ancestors), with positions equal
  to the token's depth; rows below all the trunks computed so far are batched together, longest
  first, under a token budget;
* a larger subtree's trunk is forwarded once, alone, with plain causal attention, and its
  keys and values become the past of everything below it;
* a short trunk shared by long branches (a task's first word) is recomputed in each branch
  instead of costing a forward pass of its own;
* the output layer and log-softmax run only on hidden states at positions that predict a
  continuation token.

So each unique token is computed once (bar those few recomputed shared tokens). Generation is
plain greedy decoding with a KV cache that reproduces ``HFLM``'s ``generate_until`` token for
token (see :meth:`EngineLM.generate_until`).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lm_eval.api.model import LM

from ..loading import ModelSource, load_transformers
from . import BackendOptions
from . import tree_attention
from .prefix_tree import PrefixTree

log = logging.getLogger(__name__)

#: Default tokens per forward pass (rows x padded row length) by device type. CPU matmuls
#: saturate early; GPUs need large batches to reach peak throughput.
DEFAULT_TOKEN_BUDGET = {"cpu": 2048, "cuda": 16384}
#: The fixed cost of one forward pass (reading every weight, the per-layer calls), in tokens'
#: worth of compute, by device type: what a batch split must save in padding to pay off.
FORWARD_COST = {"cpu": 48, "cuda": 512}
#: Root trunks (few-shot preambles) kept for the next calls.
TRUNK_MEMORY = 4
#: Positions projected onto the vocabulary at once: bounds the [positions, vocab] logits tensor.
SCORE_CHUNK = 512
#: Rows x (cached prefix + row) key/value slots one forward may materialize, as a multiple of the
#: token budget: a batch of rows below a cached prefix copies that prefix once per row.
KV_BUDGET_FACTOR = 4
#: A subtree this small is packed as one row; a larger one is split into its trunk and branches.
SMALL_ROW = 256
#: A shared trunk shorter than this is recomputed in each branch below it (no forward of its own).
FOLD_TRUNK = 32
#: Keys and values of trunks held at once while their branches wait to be batched, as a
#: multiple of the token budget (in tokens).
LIVE_KV_FACTOR = 4
DEFAULT_MAX_LENGTH = 2048


def build(source: ModelSource, options: BackendOptions) -> EngineLM:
    """The engine for a model source, loaded with the options' dtype on the options' device."""
    model, tokenizer = load_transformers(source, options.dtype, options.device)
    return wrap_model(model, tokenizer, options)


def wrap_model(model: Any, tokenizer: Any, options: BackendOptions, **kwargs: Any) -> EngineLM:
    """The engine around an already-loaded transformers causal LM (tests build tiny ones)."""
    return EngineLM(model, tokenizer, options, **kwargs)


def _is_oom(exc: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc)


@dataclass
class EngineStats:
    """What the last calls cost: tokens forwarded (padding included), real tokens (unique ones
    plus short shared prefixes recomputed per branch, less reused ones), unique tokens,
    positions scored, root-trunk tokens reused from an earlier call."""

    forwarded_tokens: int = 0
    real_tokens: int = 0
    unique_tokens: int = 0
    scored_positions: int = 0
    reused_tokens: int = 0
    forward_calls: int = 0
    oom_splits: int = 0
    seconds: float = 0.0

    def reset(self) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, type(getattr(self, name))())


#: Computed keys and values of one path of the tree, per layer ``(keys, values)`` shaped
#: ``[1, kv_heads, length, head_dim]``; never modified once made, so any number of rows may
#: attend to it. ``None`` is the empty path (the root).
Past = list[tuple[torch.Tensor, torch.Tensor]] | None


def _past_length(past: Past) -> int:
    return 0 if past is None else int(past[0][0].shape[-2])


@dataclass
class _Row:
    """One packed row of a forward pass: trie nodes in pre-order plus, per token, the exclusive
    end of the tokens that may attend to it (its subtree within the row), below ``past``."""

    nodes: list[int]
    ends: list[int]
    past: Past = None

    @property
    def is_chain(self) -> bool:
        """Every token sees all tokens before it: plain causal attention."""
        return all(end == len(self.nodes) for end in self.ends)


@dataclass
class _Tally:
    """Per-request running sums of log-probabilities and the greedy flag."""

    logprob: list[float]
    greedy: list[bool]


class EngineLM(LM):
    """lm-eval ``LM`` whose log-likelihoods compute each shared token prefix once."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        options: BackendOptions,
        token_budget: int | None = None,
        max_length: int | None = None,
        max_rows: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model  # a transformers causal LM (Llama/Mistral/Qwen2-like) in eval mode
        self.tokenizer = tokenizer
        self.options = options
        self._device = next(model.parameters()).device
        dev_type = self._device.type
        self.token_budget = int(token_budget or DEFAULT_TOKEN_BUDGET.get(dev_type, 4096))
        # rows per forward; the token budget is what bounds memory, so by default rows are unlimited
        self.max_rows = max_rows
        self.max_gen_toks = int(options.max_gen_toks)
        self._max_length = max_length
        self.base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        self.lm_head = model.get_output_embeddings()
        attn = getattr(model.config, "_attn_implementation", "sdpa") or "sdpa"
        self.float_mask = attn == "eager"
        # the CPU attention that reads a shared past in place (see tree_attention); models with a
        # sliding window shorter than the context keep the model's own attention
        window = getattr(model.config, "sliding_window", None)
        if not getattr(model.config, "use_sliding_window", True):
            window = None
        self.tree_attention = tree_attention.supported(model) and (window is None or window >= self.max_length)
        self.stats = EngineStats()
        self._trunk_memory: dict[tuple[int, ...], Past] = {}
        # transformers renamed ``past_key_values`` to ``cache`` (the old name warns, then goes away)
        import inspect

        params = inspect.signature(self.base.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def forget(self) -> None:
        """Drop the root trunks kept from earlier calls (benchmarks time each call from cold)."""
        self._trunk_memory.clear()

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (with ``device_map="auto"`` that is the first device)."""
        return self._device

    # ------------------------------------------------------------------ tokenization (as HFLM)
    @property
    def max_length(self) -> int:
        """The model's context length, resolved like HFLM's ``max_length``."""
        if self._max_length:
            return self._max_length
        cfg = getattr(self.model.config, "text_config", None) or self.model.config
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(cfg, attr, None)
            if value is not None:
                return int(value)
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if tok_max is not None and tok_max < 10**12:
            return int(tok_max)
        return DEFAULT_MAX_LENGTH

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    def tok_encode(self, text: str) -> list[int]:
        """No special tokens: the leaderboard's v1 setting (HFLM with ``add_bos_token=False``)."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """HFLM's split of one request (see :meth:`encode_pairs`)."""
        return self.encode_pairs([(context, continuation)])[0]

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """HFLM's split: trailing context spaces move to the continuation, the whole string is
        encoded and the continuation is what follows the context's own encoding; an empty
        context becomes the prefix token. Each distinct string is encoded once, all in one
        batched tokenizer call (a question's choices share their context)."""
        moved: list[tuple[str | None, str]] = []  # None: the context was empty
        for context, continuation in pairs:
            if context == "":
                moved.append((None, continuation))
                continue
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces > 0:
                context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
            moved.append((context, continuation))
        texts = list(dict.fromkeys(t for c, x in moved for t in ((x,) if c is None else (c, c + x))))
        encoded = dict(zip(texts, self.tokenizer(texts, add_special_tokens=False)["input_ids"])) if texts else {}
        out: list[tuple[list[int], list[int]]] = []
        for context, continuation in moved:
            if context is None:
                cont = list(encoded[continuation])
                out.append(([self.prefix_token_id], cont) if self.prefix_token_id != cont[0] else (cont[:1], cont[1:]))
                continue
            context_enc = list(encoded[context]) if context else []
            out.append((context_enc, list(encoded[context + continuation])[len(context_enc):]))
        return out

    def build_tree(self, pairs: Sequence[tuple[str, str]]) -> PrefixTree:
        """All requests' model inputs in one trie; HFLM's left truncation to ``max_length`` applied."""
        tree = PrefixTree()
        for index, ((context_enc, continuation_enc), (_, continuation)) in enumerate(zip(self.encode_pairs(pairs), pairs)):
            if not continuation_enc:
                raise ValueError(f"empty continuation after tokenization: {continuation!r}")
            full = (context_enc + continuation_enc)[-(self.max_length + 1):]
            tree.insert(index, full[:-1], continuation_enc)
        tree.finalize()
        return tree

    # ------------------------------------------------------------------ log-likelihood
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(sum of continuation log-probs, continuation is the greedy one)`` per request, in request order."""
        pairs = [tuple(req.args) for req in requests]
        return self.loglikelihood_pairs(pairs)  # type: ignore[arg-type]

    def loglikelihood_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """The same on plain ``(context, continuation)`` strings."""
        if not pairs:
            return []
        start = time.perf_counter()
        tree = self.build_tree(pairs)
        tally = _Tally([0.0] * len(pairs), [True] * len(pairs))
        self.stats.unique_tokens += tree.n_tokens
        with torch.inference_mode():
            self._walk(tree, [(0, None)], tally)
        self.stats.seconds += time.perf_counter() - start
        return [(tally.logprob[i], tally.greedy[i]) for i in range(len(pairs))]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError("the leaderboard tasks need no rolling log-likelihoods")

    # ------------------------------------------------------------------ the walk over the tree
    def _walk(self, tree: PrefixTree, frontier: list[tuple[int, Past]], tally: _Tally) -> None:
        """Compute every node below the ``frontier`` nodes, each of whose path is in its ``Past``.

        Small subtrees below *all* frontier nodes are packed into rows and batched together (so
        the four answers of each of many ARC questions share one forward); each bigger subtree's
        trunk is forwarded alone with causal attention, and the subtrees below the new trunks are
        walked together, a group at a time so that the cached keys and values stay bounded.
        """
        rows: list[_Row] = []
        trunks: list[tuple[list[int], Past]] = []
        for node, past in frontier:
            self._split(tree, node, past, (), rows, trunks)
        if rows:
            self._run_rows(tree, rows, tally)
        group: list[tuple[int, Past]] = []
        held = 0
        for chain, past in trunks:
            new_past = self._root_trunk(tree, chain, tally) if past is None else self._forward_trunk(tree, chain, past, tally)
            group.append((chain[-1], new_past))
            held += _past_length(new_past)
            if held >= LIVE_KV_FACTOR * self.token_budget:
                self._walk(tree, group, tally)
                group, held = [], 0
        if group:
            self._walk(tree, group, tally)

    def _split(
        self, tree: PrefixTree, node: int, past: Past, prefix: tuple[int, ...],
        rows: list[_Row], trunks: list[tuple[list[int], Past]],
    ) -> None:
        """Sort the children of ``node`` into packed rows and trunks to cache.

        ``prefix`` holds uncomputed nodes above ``node``: a short trunk shared by several long
        branches, such as a task's opening word, is recomputed in each branch rather than
        forwarded on its own: a forward pass has a fixed cost worth dozens of tokens, and at the
        root the branches then keep the causal fast path (no past).
        """
        for child in tree.children[node].values():
            if self._fits_row(tree, child, len(prefix)):
                rows.append(self._row(tree, child, prefix, past))
                continue
            chain = tree.chain(child)
            if self._fold(tree, chain, prefix):
                self._split(tree, chain[-1], past, prefix + tuple(chain), rows, trunks)
            else:
                trunks.append((list(prefix) + chain, past))

    @staticmethod
    def _fold(tree: PrefixTree, trunk: list[int], prefix: tuple[int, ...]) -> bool:
        """Whether a trunk is short enough to recompute below rather than cache: under
        ``FOLD_TRUNK`` tokens (with the prefix), not scored (a scored node must be computed
        exactly once) and followed by a branching."""
        return (
            len(prefix) + len(trunk) < FOLD_TRUNK
            and len(tree.children[trunk[-1]]) > 1
            and not any(n in tree.scores for n in trunk)
        )

    def _fits_row(self, tree: PrefixTree, child: int, extra: int = 0) -> bool:
        """Whether ``child``'s subtree (below ``extra`` prefix tokens) is one packed row rather
        than a trunk in the cache followed by its branches.

        A packed row's attention is computed over the whole row (masked pairs included), while
        a trunk forwarded alone attends causally (half the work) and its branches then attend
        to the cache: so only small subtrees are packed, where one forward beats two.
        """
        return tree.size[child] + extra <= SMALL_ROW

    @staticmethod
    def _row(tree: PrefixTree, child: int, prefix: tuple[int, ...] = (), past: Past = None) -> _Row:
        nodes = tree.preorder(child)
        width = len(prefix) + len(nodes)
        ends = [width] * len(prefix) + [len(prefix) + i + tree.size[n] for i, n in enumerate(nodes)]
        return _Row(list(prefix) + nodes, ends, past)

    def _root_trunk(self, tree: PrefixTree, chain: list[int], tally: _Tally) -> Past:
        """A trunk starting at the root, starting from an earlier call's trunk where they agree.

        The runner sends a task's documents a chunk at a time, so an MMLU subject's 5-shot
        preamble or TruthfulQA's fixed one would otherwise be recomputed for every chunk; the
        last few root trunks are kept (their keys and values are never modified, and the keys
        and values of a prefix are the prefix of them). Scored positions are always computed
        (their scores belong to this call's requests).
        """
        tokens = tuple(tree.token[n] for n in chain)
        scored = next((i for i, n in enumerate(chain) if n in tree.scores), len(chain))
        common, past = 0, None
        for key, kept in self._trunk_memory.items():
            n = 0
            limit = min(len(key), scored)
            while n < limit and key[n] == tokens[n]:
                n += 1
            if n > common:
                common, past = n, [(k[:, :, :n], v[:, :, :n]) for k, v in kept]
        if common < FOLD_TRUNK:
            common, past = 0, None
        self.stats.reused_tokens += common
        if common < len(chain):
            past = self._forward_trunk(tree, chain[common:], past, tally)
        self._trunk_memory.pop(tokens, None)
        self._trunk_memory[tokens] = past  # most recent last
        while len(self._trunk_memory) > TRUNK_MEMORY:
            self._trunk_memory.pop(next(iter(self._trunk_memory)))
        return past

    def _forward_trunk(self, tree: PrefixTree, chain: list[int], past: Past, tally: _Tally) -> Past:
        """Forward a chain below ``past`` (in token-budget pieces) and return the extended past."""
        for begin in range(0, len(chain), self.token_budget):
            part = chain[begin:begin + self.token_budget]
            past = self._forward([_Row(part, [len(part)] * len(part), past)], tree, tally, keep=True)
        return past

    def _run_rows(self, tree: PrefixTree, rows: list[_Row], tally: _Tally) -> None:
        """Pack the rows below each past, then forward them in batches (see :meth:`_batches`)."""
        by_past: dict[int, list[_Row]] = {}
        for row in rows:
            by_past.setdefault(id(row.past), []).append(row)
        packed: list[_Row] = []
        for group in by_past.values():
            packed.extend(self._pack_small(sorted(group, key=lambda r: -len(r.nodes))))
        for batch in self._batches(sorted(packed, key=lambda r: -len(r.nodes))):
            self._forward_safe(batch, tree, tally)

    def _batches(self, rows: list[_Row]) -> list[list[_Row]]:
        """Cut rows (longest first) into consecutive batches at the least cost, counted in tokens:
        every row is padded to its batch's first (longest) row, and every forward pays a fixed
        overhead (``FORWARD_COST``). A batch stays within the token budget, the row limit and,
        where each row gets its own copy of its past (the model's own attention), the key/value
        budget. A small dynamic program: rows number in the hundreds."""
        fixed = FORWARD_COST.get(self._device.type, FORWARD_COST["cpu"])
        kv_limit = None if self.tree_attention else KV_BUDGET_FACTOR * self.token_budget
        best = [0.0] + [float("inf")] * len(rows)
        cut = [0] * (len(rows) + 1)
        for end in range(1, len(rows) + 1):
            longest_past = 0
            for begin in range(end - 1, -1, -1):
                count, width = end - begin, len(rows[begin].nodes)
                longest_past = max(longest_past, _past_length(rows[begin].past))
                if count > 1 and (
                    count * width > self.token_budget
                    or (kv_limit is not None and count * (longest_past + width) > kv_limit)
                    or (self.max_rows and count > self.max_rows)
                ):
                    break  # an earlier start only adds rows and width
                cost = best[begin] + count * width + fixed
                if cost < best[end]:
                    best[end], cut[end] = cost, begin
        batches: list[list[_Row]] = []
        end = len(rows)
        while end > 0:
            batches.append(rows[cut[end]:end])
            end = cut[end]
        return batches[::-1]

    def _pack_small(self, rows: list[_Row]) -> list[_Row]:
        """Merge short rows below one past (sorted longest first) into rows no longer than the
        longest one, so many tiny subtrees (single answers below a cached question) do not each
        cost a padded row."""
        if len(rows) < 2:
            return rows
        width = len(rows[0].nodes)
        packed: list[_Row] = [rows[0]]
        for row in rows[1:]:
            last = packed[-1]
            if len(last.nodes) + len(row.nodes) <= width:
                offset = len(last.nodes)
                packed[-1] = _Row(last.nodes + row.nodes, last.ends + [e + offset for e in row.ends], last.past)
            else:
                packed.append(row)
        return packed

    def _forward_safe(self, rows: list[_Row], tree: PrefixTree, tally: _Tally) -> None:
        """Forward a batch; on out-of-memory split it in halves and retry each."""
        try:
            self._forward(rows, tree, tally)
        except Exception as exc:  # noqa: BLE001 - only OOM is handled
            if not _is_oom(exc) or len(rows) == 1:
                raise
            if self._device.type == "cuda":
                torch.cuda.empty_cache()
            self.stats.oom_splits += 1
            log.warning("out of memory on a batch of %d rows; splitting it in two", len(rows))
            half = len(rows) // 2
            self._forward_safe(rows[:half], tree, tally)
            self._forward_safe(rows[half:], tree, tally)

    def _cache(self, rows: list[_Row], batch: int) -> tuple[Any, int]:
        """A ``DynamicCache`` holding each row's past (None if no row has one) and its length.

        Rows below one past see it through broadcast views (the layers' concatenation then
        materializes one copy per row); rows below different pasts get them stacked, right-padded
        to the longest (the mask hides the padding).
        """
        pasts = [row.past for row in rows]
        length = max(_past_length(p) for p in pasts)
        if length == 0:
            return None, 0
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        first = next(p for p in pasts if p is not None)
        same = all(p is first for p in pasts)
        cache = DynamicCache()
        for layer_idx, (keys, values) in enumerate(first):
            if same:
                keys, values = keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1)
            else:
                shape = (batch, keys.shape[1], length, keys.shape[3])
                keys, values = keys.new_zeros(shape), values.new_zeros(shape)
                for b, past in enumerate(pasts):
                    if past is not None:
                        n = _past_length(past)
                        keys[b, :, :n] = past[layer_idx][0][0]
                        values[b, :, :n] = past[layer_idx][1][0]
            layer = DynamicLayer()
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
            cache.layers.append(layer)
        return cache, length

    def _forward(self, rows: list[_Row], tree: PrefixTree, tally: _Tally, keep: bool = False) -> Past:
        """One forward pass of packed rows below their pasts; scores the rows' scored nodes.

        With ``keep`` (one row: a trunk) the row's past extended by the row is returned.
        """
        batch, width = len(rows), max(len(r.nodes) for r in rows)
        ids = torch.zeros(batch, width, dtype=torch.long)
        pos = torch.zeros(batch, width, dtype=torch.long)
        ends = torch.zeros(batch, width, dtype=torch.long)
        real = 0
        for b, row in enumerate(rows):
            n = len(row.nodes)
            real += n
            ids[b, :n] = torch.tensor([tree.token[x] for x in row.nodes])
            pos[b, :n] = torch.tensor([tree.depth[x] - 1 for x in row.nodes])
            ends[b, :n] = torch.tensor(row.ends)
            if n < width:  # padding sees only itself and is seen by nobody else
                ends[b, n:] = torch.arange(n + 1, width + 1)
                pos[b, n:] = pos[b, n - 1] if n else 0
        local = None  # plain causal rows need no mask
        if not all(r.is_chain for r in rows):
            idx = torch.arange(width)
            # query i may see key j of the row iff j <= i < ends[j] (j is i or one of its ancestors)
            local = (idx[None, :, None] >= idx[None, None, :]) & (idx[None, :, None] < ends[:, None, :])
        if self.tree_attention:
            hidden, kept = self._forward_tree(rows, ids, pos, local, keep)
        else:
            hidden, kept = self._forward_cache(rows, ids, pos, local, keep)
        self.stats.forward_calls += 1
        self.stats.forwarded_tokens += batch * width
        self.stats.real_tokens += real
        self._score(rows, tree, hidden, tally)
        return kept

    def _forward_tree(
        self, rows: list[_Row], ids: torch.Tensor, pos: torch.Tensor, local: torch.Tensor | None, keep: bool
    ) -> tuple[torch.Tensor, Past]:
        """The forward with :mod:`.tree_attention`: pasts are attended in place, never copied."""
        by_past: dict[int, tuple[Any, list[int]]] = {}
        for b, row in enumerate(rows):
            if row.past is not None:
                by_past.setdefault(id(row.past), (row.past, []))[1].append(b)
        groups = [(torch.tensor(members), past) for past, members in by_past.values()]
        mask = None
        if local is not None:
            mask = torch.zeros(local.shape, dtype=torch.float32).masked_fill_(~local, float("-inf"))[:, None]
        ctx = tree_attention.TreeContext(groups, mask, keep)
        with tree_attention.active(self.model):
            out = self.base(input_ids=ids, position_ids=pos, use_cache=False, evalsuite_tree=ctx)
        return out.last_hidden_state, (ctx.kept_past() if keep else None)

    def _forward_cache(
        self, rows: list[_Row], ids: torch.Tensor, pos: torch.Tensor, local: torch.Tensor | None, keep: bool
    ) -> tuple[torch.Tensor, Past]:
        """The forward with the model's own attention and a ``DynamicCache`` of the rows' pasts."""
        batch, width = ids.shape
        cache, past = self._cache(rows, batch)
        mask: torch.Tensor | None = None
        if local is not None or (past > 0 and batch > 1):
            if local is None:
                local = torch.ones(width, width, dtype=torch.bool).tril()[None].expand(batch, width, width)
            seen = torch.tensor([_past_length(r.past) for r in rows])
            visible = (torch.arange(past)[None, :] < seen[:, None])[:, None, :].expand(batch, width, past)
            mask = torch.cat([visible, local], dim=2)[:, None].to(self._device)
            if self.float_mask:
                dtype = next(self.model.parameters()).dtype
                mask = torch.zeros(mask.shape, dtype=dtype, device=self._device).masked_fill(~mask, torch.finfo(dtype).min)
        # else: causal attention, which the model builds itself (fast kernels when nothing is
        # cached); right padding is harmless as no real token attends to a later position
        if keep and cache is None:
            from transformers import DynamicCache

            cache = DynamicCache()
        out = self.base(
            input_ids=ids.to(self._device),
            attention_mask=mask,
            position_ids=pos.to(self._device),
            use_cache=cache is not None,
            **{self._cache_kw: cache},
        )
        return out.last_hidden_state, ([(layer.keys, layer.values) for layer in cache.layers] if keep else None)

    def _score(self, rows: list[_Row], tree: PrefixTree, hidden: torch.Tensor, tally: _Tally) -> None:
        """Project only the scored positions onto the vocabulary and add their log-probs to the tally."""
        where_b: list[int] = []
        where_t: list[int] = []
        scored_nodes: list[int] = []
        for b, row in enumerate(rows):
            for t, node in enumerate(row.nodes):
                if node in tree.scores:
                    where_b.append(b)
                    where_t.append(t)
                    scored_nodes.append(node)
        if not scored_nodes:
            return
        self.stats.scored_positions += len(scored_nodes)
        for begin in range(0, len(scored_nodes), SCORE_CHUNK):
            sl = slice(begin, begin + SCORE_CHUNK)
            h = hidden[torch.tensor(where_b[sl]), torch.tensor(where_t[sl])]
            logits = self.lm_head(h).float()
            # log-softmax read at the targets only: logit - logsumexp, no [positions, vocab] output
            norm = torch.logsumexp(logits, dim=-1)
            greedy = logits.argmax(dim=-1).tolist()
            targets: list[int] = []
            owners: list[tuple[int, int]] = []
            for k, node in enumerate(scored_nodes[sl]):
                for score in tree.scores[node]:
                    targets.append(score.target)
                    owners.append((k, score.request))
            rows_idx = torch.tensor([k for k, _ in owners], device=logits.device)
            picked = (logits[rows_idx, torch.tensor(targets, device=logits.device)] - norm[rows_idx]).tolist()
            for (k, request), target, value in zip(owners, targets, picked):
                tally.logprob[request] += value
                if greedy[k] != target:
                    tally.greedy[request] = False

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations cut at the first stop string, exactly as HFLM's.

        Like HFLM (and ``model.generate``), each prompt's context is prefilled in one forward
        pass and decoded one token at a time with a KV cache and the output layer on the last
        position only; prompts of equal token length and equal settings share a batch (no
        padding, so nothing changes numerically). The context is left-truncated to
        ``max_length - max_gen_toks`` tokens and the output is post-processed like HFLM's:
        decode the new tokens, then cut at each stop string in turn.
        """
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        eos_text = self.tokenizer.decode(self.tokenizer.eos_token_id, skip_special_tokens=False)
        jobs: dict[tuple[Any, ...], list[int]] = {}
        prepared: list[tuple[list[int], list[str], int]] = []
        for index, req in enumerate(requests):
            context, gen_kwargs = req.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0.0:
                raise ValueError("the evalsuite engine decodes greedily only (do_sample=False, temperature=0)")
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_gen = int(kwargs.pop("max_gen_toks"))
            ids = self.tok_encode(context)[-(self.max_length - max_gen):]
            prepared.append((ids, until, max_gen))
            jobs.setdefault((len(ids), tuple(until), max_gen), []).append(index)
        results: list[str] = [""] * len(requests)
        with torch.inference_mode():
            for (_, until, max_gen), indices in sorted(jobs.items(), key=lambda kv: -kv[0][0]):
                limit = len(indices) if self.max_rows is None else self.max_rows
                for begin in range(0, len(indices), limit):
                    group = indices[begin:begin + limit]
                    outs = self._greedy([prepared[i][0] for i in group], list(until), max_gen)
                    for i, text in zip(group, outs):
                        results[i] = text
        return results

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif isinstance(gen_eos, Iterable):
            ids.update(int(x) for x in gen_eos)
        return {i for i in ids if i is not None}

    def _greedy(self, prompts: list[list[int]], until: list[str], max_gen: int) -> list[str]:
        """Greedy decoding of equal-length prompts; each stops at EOS or once a stop string appears."""
        from transformers import DynamicCache

        batch = len(prompts)
        ids = torch.tensor(prompts, dtype=torch.long, device=self._device)
        attn = torch.ones_like(ids)
        cache = DynamicCache()
        eos = self._eos_ids()
        new: list[list[int]] = [[] for _ in range(batch)]
        done = [False] * batch
        step_input = ids
        for _ in range(max_gen):
            out = self.model(
                input_ids=step_input, attention_mask=attn, use_cache=True, logits_to_keep=1, **{self._cache_kw: cache}
            )
            self.stats.forward_calls += 1
            self.stats.forwarded_tokens += step_input.numel()
            nxt = out.logits[:, -1, :].float().argmax(dim=-1)
            for b, tok in enumerate(nxt.tolist()):
                if done[b]:
                    continue
                new[b].append(tok)
                if tok in eos:
                    done[b] = True
                else:
                    text = self.tokenizer.decode(new[b][-64:], skip_special_tokens=False)
                    if any(s and s in text for s in until):
                        done[b] = True
            if all(done):
                break
            step_input = nxt[:, None]
            attn = torch.cat([attn, torch.ones(batch, 1, dtype=attn.dtype, device=attn.device)], dim=1)
        outs = []
        for toks in new:
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            for term in until:
                if term:
                    text = text.split(term)[0]
            outs.append(text)
        return outs
