"""Counting the engine's work from a tokenizer alone: ``plan_requests`` for ``run --dry-run``.

The engine itself tokenizes through lm-eval's ``TemplateLM._encode_pair`` (two encodes per
request; at ~2 ms per MMLU request that is ~4% of the engine's own time per request, so it
keeps the inherited code). Counting a full split is tokenization only, so here the same split
is made with each distinct string encoded once, in one batched call of the fast tokenizer
(tests check it gives ``_encode_pair``'s ids exactly).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from evalsuite.backends.engine import planner
from evalsuite.backends.engine.prefix_tree import empty_context_pair, tree_of

DEFAULT_MAX_GEN = 256
#: A model's context length when neither its config nor its tokenizer states one (HFLM's default).
DEFAULT_MAX_LENGTH = 2048


def _args(item: Any) -> tuple[Any, ...]:
    return tuple(item.args) if hasattr(item, "args") else tuple(item)


Encoder = Callable[[list[str]], list[list[int]]]


def encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], batch: int = 4096,
                 encode: Encoder | None = None) -> list[tuple[list[int], list[int]]]:
    """``TemplateLM``'s pair split with the v1 prefix (EOS for an empty context), batched: each
    distinct string encoded once, without special tokens (by ``encode`` if given: any function
    giving ``tokenizer(texts, add_special_tokens=False)["input_ids"]``, e.g. a faster exact one)."""
    eos = tokenizer.eos_token_id
    moved = [split_pair(context, continuation) for context, continuation in pairs]
    texts = list(dict.fromkeys(t for c, x in moved for t in ((x,) if c is None else (c, c + x))))
    encoded: dict[str, list[int]] = {}
    for begin in range(0, len(texts), batch):
        part = texts[begin:begin + batch]
        ids = encode(part) if encode is not None else tokenizer(part, add_special_tokens=False)["input_ids"]
        encoded.update(zip(part, ids))
    return [pair_ids(None, encoded[x], eos) if c is None else pair_ids(encoded[c], encoded[c + x], eos)
            for c, x in moved]


def split_pair(context: str, continuation: str) -> tuple[str | None, str]:
    """``TemplateLM``'s text split of a request: the context's trailing spaces move to the
    continuation; ``None`` for an empty context (its ids are the v1 prefix, :func:`pair_ids`)."""
    if context == "":
        return None, continuation
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    return context, continuation


def pair_ids(context_enc: Sequence[int] | None, whole_enc: Sequence[int], prefix_token: int) -> tuple[list[int], list[int]]:
    """``TemplateLM``'s id split: the continuation is what follows the context's own encoding in
    the encoding of context + continuation (``whole_enc``); an empty context (``None``) is the
    prefix token (v1: EOS), ``whole_enc`` then the continuation's encoding."""
    if context_enc is None:
        return empty_context_pair(prefix_token, list(whole_enc))
    return list(context_enc), list(whole_enc)[len(context_enc):]


def resolve_max_length(config: Any, tokenizer: Any) -> int:
    """The model's context length from its config, resolved like HFLM's (and v1's) ``max_length``:
    the config's ``n_positions``, ``max_position_embeddings`` or ``n_ctx``, else the tokenizer's
    ``model_max_length`` when it is a real value, else ``DEFAULT_MAX_LENGTH``."""
    config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if tok_max is not None and tok_max < 10**12:
        return int(tok_max)
    return DEFAULT_MAX_LENGTH


def plan_calls(calls: Iterable[Sequence[tuple[list[int], list[int]]]], max_length: int, device_type: str = "cpu",
               token_budget: int | None = None, attention: str | None = None) -> planner.PlanSummary:
    """What the engine runs for encoded ``(context, continuation)`` requests sent a call at a
    time: per call its prefix tree, planned with the root trunks kept between calls, the
    device's budgets (``attention``: the executor, see :func:`plan_requests`)."""
    copies_past = None if attention is None else attention == "cache"
    budgets = planner.Budgets.for_device(device_type, token_budget, copies_past)
    return planner.summarize_calls(((tree_of(b, max_length), len(b)) for b in calls if b), budgets)


def plan_requests(
    tokenizer: Any,
    requests: Sequence[Any],
    max_length: int,
    device_type: str = "cpu",
    chunks: Sequence[int] | None = None,
    token_budget: int | None = None,
    attention: str | None = None,
    encode: Encoder | None = None,
) -> planner.PlanSummary:
    """What the engine will run for ``requests``, without a model: tokenized as the engine does,
    planned by the same planner with the device's default budgets.

    ``requests``: lm-eval ``Instance``s or their ``args`` tuples: ``(context, continuation)``
    for log-likelihoods, ``(context, gen_kwargs)`` for generation (counted as prompt tokens
    after truncation plus the new-token budget). ``chunks``: request counts of the successive
    backend calls (the runner sends 32 documents at a time); root trunks carry over between
    calls as in the engine. Default: one call. ``attention``: the executor the engine will use,
    "tree" (CPU default) or "cache" (CUDA default; also CPU models with a short sliding window).
    ``encode``: texts -> token ids without special tokens, in place of the tokenizer's batched
    call (tokenization is the cost on full splits).
    """
    items = [_args(r) for r in requests]
    ll = [i for i, a in enumerate(items) if not isinstance(a[1], dict)]
    gen = [i for i, a in enumerate(items) if isinstance(a[1], dict)]
    summary = planner.PlanSummary()
    if gen:
        contexts = [items[i][0] for i in gen]
        ids = encode(contexts) if encode is not None else tokenizer(contexts, add_special_tokens=False)["input_ids"]
        for i, enc in zip(gen, ids):
            max_gen = int(items[i][1].get("max_gen_toks", DEFAULT_MAX_GEN))
            summary.prompt_tokens += len(enc[-(max_length - max_gen):])
            summary.generation_budget += max_gen
        summary.requests += len(gen)
    if not ll:
        return summary
    encoded = dict(zip(ll, encode_pairs(tokenizer, [items[i][:2] for i in ll], encode=encode)))
    sizes = list(chunks) if chunks else [len(items)]
    calls, at = [], 0
    for size in sizes:
        batch = [encoded[i] for i in range(at, at + size) if i in encoded]
        at += size
        if batch:
            calls.append(batch)
    return summary.add(plan_calls(calls, max_length, device_type, token_budget, attention))


__all__ = ["encode_pairs", "pair_ids", "plan_calls", "plan_requests", "resolve_max_length", "split_pair"]
