"""The ``evalsuite`` backend: lm-eval's ``LM`` interface scored over a prefix tree.

Why not lm-eval's ``hf`` model: it forwards every (context, continuation) pair in full, so a
25-shot ARC question is run four times (once per choice), every MMLU question re-runs its
subject's 5-shot preamble, and the output layer and log-softmax are computed over every
position of every sequence although only the continuation positions are read.

This engine tokenizes each request exactly as ``HFLM`` does (so the numbers agree with it),
puts the model inputs of all requests into one :class:`~.prefix_tree.PrefixTree` and walks it:

* a subtree small enough to be one row is forwarded as one packed row in depth-first order with
  a tree attention mask (each token sees the cached prefix and its own ancestors), with positions
  equal to the token's depth; rows are batched longest first under a token budget;
* a larger subtree's trunk is forwarded once into a ``DynamicCache`` and its children are then
  processed against that cache (the cache is restored afterwards; no copies are kept);
* the output layer and log-softmax run only on hidden states at positions that predict a
  continuation token.

So each unique token is computed exactly once. Generation is plain greedy decoding with a KV
cache that reproduces ``HFLM``'s ``generate_until`` token for token (see :meth:`EngineLM.generate_until`).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM

from ..loading import ModelSource, load_transformers
from . import BackendOptions
from .prefix_tree import PrefixTree

log = logging.getLogger(__name__)

#: Default tokens per forward pass (rows x padded row length) by device type. CPU matmuls
#: saturate early; GPUs need large batches to reach peak throughput.
DEFAULT_TOKEN_BUDGET = {"cpu": 2048, "cuda": 16384}
#: Positions projected onto the vocabulary at once: bounds the [positions, vocab] logits tensor.
SCORE_CHUNK = 512
#: Rows x (cached prefix + row) key/value slots one forward may materialize, as a multiple of the
#: token budget: a batch of rows below a cached prefix copies that prefix once per row.
KV_BUDGET_FACTOR = 4
#: A subtree this small is always packed as one row; a larger one only if its trunk (the part
#: shared by all its branches) is at least this share of it.
SMALL_ROW = 256
ROW_TRUNK_SHARE = 0.75
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
    """What the last calls cost: tokens forwarded (padding included), unique tokens, positions scored."""

    forwarded_tokens: int = 0
    real_tokens: int = 0
    unique_tokens: int = 0
    scored_positions: int = 0
    forward_calls: int = 0
    oom_splits: int = 0
    seconds: float = 0.0

    def reset(self) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, type(getattr(self, name))())


@dataclass
class _Row:
    """One packed row of a forward pass: trie nodes in pre-order plus, per token, the exclusive
    end of the tokens that may attend to it (its subtree within the row)."""

    nodes: list[int]
    ends: list[int]


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
        self.stats = EngineStats()
        # transformers renamed ``past_key_values`` to ``cache`` (the old name warns, then goes away)
        import inspect

        params = inspect.signature(self.base.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

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
        """HFLM's split: trailing context spaces move to the continuation, the whole string is
        encoded once and the continuation is what follows the context's own encoding."""
        if context == "":
            cont = self.tok_encode(continuation)
            if self.prefix_token_id != cont[0]:
                return [self.prefix_token_id], cont
            return cont[:1], cont[1:]
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tok_encode(context + continuation)
        context_enc = self.tok_encode(context)
        return context_enc, whole[len(context_enc):]

    def build_tree(self, pairs: Sequence[tuple[str, str]]) -> PrefixTree:
        """All requests' model inputs in one trie; HFLM's left truncation to ``max_length`` applied."""
        tree = PrefixTree()
        for index, (context, continuation) in enumerate(pairs):
            context_enc, continuation_enc = self.encode_pair(context, continuation)
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
            self._process(tree, 0, None, tally)
        self.stats.seconds += time.perf_counter() - start
        return [(tally.logprob[i], tally.greedy[i]) for i in range(len(pairs))]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError("the leaderboard tasks need no rolling log-likelihoods")

    def _process(self, tree: PrefixTree, node: int, cache: Any, tally: _Tally) -> None:
        """Compute every node below ``node``, whose path is already in ``cache`` (None at the root).

        Children whose subtree fits a row are packed and batched; a bigger child has its trunk
        forwarded into the cache, is recursed into, and the cache is then restored.
        """
        small: list[int] = []
        big: list[int] = []
        for child in tree.children[node].values():
            (small if self._fits_row(tree, child) else big).append(child)
        if small:
            rows = [self._row(tree, child) for child in small]
            self._run_rows(tree, rows, cache, tally)
        for child in big:
            trunk = tree.chain(child)
            saved = self._snapshot(cache)
            if cache is None:
                from transformers import DynamicCache

                cache = DynamicCache()
            for begin in range(0, len(trunk), self.token_budget):
                part = trunk[begin:begin + self.token_budget]
                self._forward([_Row(part, [len(part)] * len(part))], tree, cache, tally)
            self._process(tree, trunk[-1], cache, tally)
            if saved is None:
                cache = None
            else:
                self._restore(cache, saved)

    def _fits_row(self, tree: PrefixTree, child: int) -> bool:
        """Whether ``child``'s subtree should be one packed row rather than a trunk in the cache.

        A packed row's attention is computed over the whole row (masked pairs included), so a
        subtree that is mostly separate branches (several questions below a shared preamble)
        wastes quadratic work as a row; it is cheaper to cache its trunk and batch the branches.
        """
        size = tree.size[child]
        if size > self.token_budget:
            return False
        return size <= SMALL_ROW or len(tree.chain(child)) >= ROW_TRUNK_SHARE * size

    @staticmethod
    def _row(tree: PrefixTree, child: int) -> _Row:
        nodes = tree.preorder(child)
        return _Row(nodes, [i + tree.size[n] for i, n in enumerate(nodes)])

    def _run_rows(self, tree: PrefixTree, rows: list[_Row], cache: Any, tally: _Tally) -> None:
        """Batch rows longest first so each batch stays within the token budget (and row limit)."""
        rows = self._pack_small(sorted(rows, key=lambda r: -len(r.nodes)))
        past = 0 if cache is None else cache.get_seq_length()
        batch: list[_Row] = []
        for row in rows:
            width = len(batch[0].nodes) if batch else len(row.nodes)
            grown = len(batch) + 1
            if batch and (
                grown * width > self.token_budget
                # each row gets its own copy of the cached prefix while the layers concatenate
                or grown * (past + width) > KV_BUDGET_FACTOR * self.token_budget
                or (self.max_rows and len(batch) >= self.max_rows)
            ):
                self._forward_safe(batch, tree, cache, tally)
                batch = []
            batch.append(row)
        if batch:
            self._forward_safe(batch, tree, cache, tally)

    def _pack_small(self, rows: list[_Row]) -> list[_Row]:
        """Merge short rows (sorted longest first) into rows no longer than the longest one, so
        many tiny subtrees (single answers below a cached question) do not each cost a padded row."""
        if len(rows) < 2:
            return rows
        width = len(rows[0].nodes)
        packed: list[_Row] = [rows[0]]
        for row in rows[1:]:
            last = packed[-1]
            if len(last.nodes) + len(row.nodes) <= width:
                offset = len(last.nodes)
                packed[-1] = _Row(last.nodes + row.nodes, last.ends + [e + offset for e in row.ends])
            else:
                packed.append(_Row(list(row.nodes), list(row.ends)))
        return packed

    def _forward_safe(self, rows: list[_Row], tree: PrefixTree, cache: Any, tally: _Tally) -> None:
        """Forward a batch; on out-of-memory split it in halves and retry each."""
        saved = self._snapshot(cache)
        try:
            self._forward(rows, tree, cache, tally, restore=saved)
        except Exception as exc:  # noqa: BLE001 - only OOM is handled
            if not _is_oom(exc) or len(rows) == 1:
                raise
            self._restore(cache, saved)
            if self._device.type == "cuda":
                torch.cuda.empty_cache()
            self.stats.oom_splits += 1
            log.warning("out of memory on a batch of %d rows; splitting it in two", len(rows))
            half = len(rows) // 2
            self._forward_safe(rows[:half], tree, cache, tally)
            self._forward_safe(rows[half:], tree, cache, tally)

    @staticmethod
    def _snapshot(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        if cache is None:
            return None
        return [(layer.keys, layer.values) for layer in cache.layers]

    @staticmethod
    def _restore(cache: Any, saved: list[tuple[torch.Tensor, torch.Tensor]] | None) -> None:
        """Put back the cache tensors of a snapshot (``DynamicLayer.update`` concatenates into new
        tensors, so the snapshot's tensors are untouched by later forwards)."""
        if cache is None or saved is None:
            return
        for layer, (keys, values) in zip(cache.layers, saved):
            layer.keys, layer.values = keys, values

    def _forward(
        self,
        rows: list[_Row],
        tree: PrefixTree,
        cache: Any,
        tally: _Tally,
        restore: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        """One forward pass of packed rows against ``cache`` and scoring of the rows' scored nodes.

        With ``restore`` the cache is put back afterwards (rows are leaves of the walk); without
        it (a trunk, one row) the cache keeps the new tokens for the children.
        """
        batch, width = len(rows), max(len(r.nodes) for r in rows)
        past = 0 if cache is None else cache.get_seq_length()
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
        idx = torch.arange(width)
        # query i may see key j of the row iff j <= i < ends[j] (j is i or one of its ancestors)
        local = (idx[None, :, None] >= idx[None, None, :]) & (idx[None, :, None] < ends[:, None, :])
        mask = torch.cat([torch.ones(batch, width, past, dtype=torch.bool), local], dim=2)[:, None]
        mask = mask.to(self._device)
        if batch == 1 and rows[0].ends == [width] * width:
            mask = None  # a plain chain: the model's own causal masking (fast causal kernels when nothing is cached)
        elif self.float_mask:
            dtype = next(self.model.parameters()).dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=self._device).masked_fill(~mask, torch.finfo(dtype).min)
        if cache is not None and batch > 1:
            for layer in cache.layers:  # views, no copy: the concatenation in update() materializes them
                layer.keys = layer.keys.expand(batch, -1, -1, -1)
                layer.values = layer.values.expand(batch, -1, -1, -1)
        try:
            out = self.base(
                input_ids=ids.to(self._device),
                attention_mask=mask,
                position_ids=pos.to(self._device),
                use_cache=cache is not None,
                **{self._cache_kw: cache},
            )
            hidden = out.last_hidden_state
            self.stats.forward_calls += 1
            self.stats.forwarded_tokens += batch * width
            self.stats.real_tokens += real
            self._score(rows, tree, hidden, tally)
        finally:
            if restore is not None:
                self._restore(cache, restore)

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
            logprobs = F.log_softmax(self.lm_head(h).float(), dim=-1)
            greedy = logprobs.argmax(dim=-1).tolist()
            targets: list[int] = []
            owners: list[tuple[int, int]] = []
            for k, node in enumerate(scored_nodes[sl]):
                for score in tree.scores[node]:
                    targets.append(score.target)
                    owners.append((k, score.request))
            rows_idx = torch.tensor([k for k, _ in owners], device=logprobs.device)
            picked = logprobs[rows_idx, torch.tensor(targets, device=logprobs.device)].tolist()
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
