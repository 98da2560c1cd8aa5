"""The plain executor: the model's own full forward on each distinct input, as lm-eval's ``hf`` does.

Why it exists: the tree and cache executors reimplement parts of a forward pass (positions,
masks, the output layer) to share prefixes. Where a model does something they cannot reproduce
exactly (ALiBi positions, an unknown head transform, a window the probe rejects), the engine
must not approximate: it falls back to this path, which calls ``model(input_ids).logits`` (the
family's own code, causal-LM head included) and is exact by construction.

What it mirrors of lm-eval's ``HFLM._loglikelihood_tokens`` (causal models): each request's
input is ``(context + continuation)[-(max_length + 1):][:-1]``; inputs are batched by length
(longest first), right-padded with id 0 and run without an attention mask (HFLM passes none:
right padding is never attended to by a real token of a causal model); the log-softmax is taken
in ``logits_dtype`` (HFLM's ``softmax_dtype``; None = the logits' own dtype) and the greedy flag
compares the argmax at every continuation position. Unlike HFLM, requests whose inputs are equal
(single-token continuations of one context) share one forward, and only the positions from the
first continuation position on go through the output layer where the model's forward accepts
``logits_to_keep`` (the head is per position, so the values are the same).

"Exact by construction" holds for models whose forward of a row does not depend on the rest of
the batch. A model whose rope factors switch with the input's length (longrope past
``original_max_position_embeddings``, dynamic NTK scaling) sees the padded width, not its own
length, so a short input batched with a long one is computed differently than at batch size 1
(lm-eval ``hf``'s reference). For such models (``equal_lengths``; by default the rule of
:func:`.rope.length_switches`) a batch holds inputs of one length only.

Out of memory: a batch is split in halves down to one input; an input that does not fit alone
raises :class:`~.memory.RowOutOfMemory` (the engine names its task and document).
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from evalsuite.backends.engine.memory import RowOutOfMemory, is_oom, release
from evalsuite.backends.engine.prefix_tree import truncated_inputs
from evalsuite.backends.engine.rope import length_switches
from evalsuite.backends.engine.scoring import Tally


def accepts_logits_to_keep(model: Any) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


#: Inputs per forward of the plain executor (lm-eval ``hf``'s batch sizes are the user's; this
#: path runs rows of nearly one length, so 8 keeps the padding and the logits small).
PLAIN_BATCH = 8


def padded_tokens(inputs: Sequence[Sequence[int]], batch_size: int = PLAIN_BATCH) -> int:
    """Tokens the plain executor forwards for ``inputs``: the distinct ones, batched as
    :func:`plain_tally` batches them, each batch padded to its longest input. What the
    self-audit's budget counts (a sparse sample's rows differ in length; padding is work too)."""
    distinct = sorted({tuple(x) for x in inputs}, key=lambda x: (-len(x), x))
    return sum(len(batch[0]) * len(batch) for batch in plain_batches(distinct, batch_size, False))


def plain_batches(inputs: list[tuple[int, ...]], batch_size: int, equal_lengths: bool) -> list[list[tuple[int, ...]]]:
    """Inputs sorted longest first in batches of ``batch_size``, never mixing lengths with ``equal_lengths``."""
    size = max(1, int(batch_size))
    batches: list[list[tuple[int, ...]]] = []
    for inp in inputs:
        last = batches[-1] if batches else None
        if last is None or len(last) >= size or (equal_lengths and len(last[0]) != len(inp)):
            batches.append([inp])
        else:
            last.append(inp)
    return batches


def plain_tally(model: Any, requests: Sequence[tuple[list[int], list[int]]], *, max_length: int,
                batch_size: int = PLAIN_BATCH, logits_dtype: torch.dtype | None = None,
                equal_lengths: bool | None = None) -> Tally:
    """Per-request continuation log-probs and greedy flags from the model's own full forward."""
    tally = Tally(len(requests))
    if not requests:
        return tally
    if equal_lengths is None:
        equal_lengths = bool(length_switches(model, max_length))
    by_input: dict[tuple[int, ...], list[int]] = {}
    for index, (context, continuation) in enumerate(requests):
        if not continuation:
            raise ValueError("a log-likelihood request needs a non-empty continuation")
        if len(continuation) > max_length:
            raise ValueError(f"a continuation of {len(continuation)} tokens exceeds max_length {max_length}")
        by_input.setdefault(tuple(truncated_inputs(list(context), list(continuation), max_length)), []).append(index)
    inputs = sorted(by_input, key=lambda x: (-len(x), x))
    keep_kw = accepts_logits_to_keep(model)
    pending = plain_batches(inputs, batch_size, equal_lengths)[::-1]  # pop() takes the first
    with torch.inference_mode():
        while pending:
            chunk = pending.pop()
            try:
                _forward_chunk(model, chunk, by_input, requests, tally, keep_kw, logits_dtype)
            except Exception as exc:
                if not is_oom(exc):
                    raise
                release(next(model.parameters()).device)
                if len(chunk) == 1:
                    raise RowOutOfMemory(by_input[chunk[0]][0], len(chunk[0])) from None
                half = len(chunk) // 2
                pending.extend([chunk[half:], chunk[:half]])
                tally.oom_splits += 1
    return tally


def _forward_chunk(model: Any, chunk: list[tuple[int, ...]], by_input: dict[tuple[int, ...], list[int]],
                   requests: Sequence[tuple[list[int], list[int]]], tally: Tally, keep_kw: bool,
                   logits_dtype: torch.dtype | None) -> None:
    """One right-padded batch of inputs through the model's own forward, into ``tally``."""
    device = next(model.parameters()).device
    width = len(chunk[0])
    ids = torch.zeros(len(chunk), width, dtype=torch.long)
    for b, inp in enumerate(chunk):
        ids[b, :len(inp)] = torch.tensor(inp, dtype=torch.long)
    # the earliest position any request of the chunk reads: only those go through the head
    first = min(len(inp) - len(requests[i][1]) for inp in chunk for i in by_input[inp])
    first = max(first, 0)
    kwargs = {"logits_to_keep": width - first} if keep_kw and first > 0 else {}
    logits = model(ids.to(device), **kwargs).logits
    offset = width - logits.shape[1]  # positions dropped in front by logits_to_keep
    logprobs = torch.log_softmax(logits, dim=-1, dtype=logits_dtype)
    for b, inp in enumerate(chunk):
        for request in by_input[inp]:
            cont = requests[request][1]
            n = len(cont)
            rows = logprobs[b, len(inp) - n - offset:len(inp) - offset]
            target = torch.tensor(cont, dtype=torch.long, device=rows.device)
            tally.logprobs[request] = rows.gather(1, target[:, None])[:, 0].float().tolist()
            tally.greedy[request] = bool((rows.argmax(dim=-1) == target).all())


def plain_loglikelihoods(model: Any, requests: Sequence[tuple[list[int], list[int]]], *, max_length: int,
                         batch_size: int = PLAIN_BATCH, logits_dtype: torch.dtype | None = None,
                         equal_lengths: bool | None = None) -> list[tuple[float, bool]]:
    """The model's own full forward (``model(input_ids).logits``, its whole causal-LM head
    included) on each distinct input (context+continuation ids, left-truncated to ``max_length``
    exactly as lm-eval's hf model does: ``inputs = (ctx+cont)[-(max_length+1):][:-1]``), batched
    by length with right padding like HFLM, no prefix sharing; returns (sum of continuation
    log-probs, greedy?) per request. The sum is taken in ``logits_dtype`` as HFLM takes it.
    ``equal_lengths``: see :func:`plain_tally` (the engine passes its capabilities' verdict)."""
    tally = plain_tally(model, requests, max_length=max_length, batch_size=batch_size, logits_dtype=logits_dtype,
                        equal_lengths=equal_lengths)
    dtype = logits_dtype or next(model.parameters()).dtype
    return tally.results(dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32)


class PlainExecutor:
    """The executor name the engine reports when every log-likelihood goes through
    :func:`plain_tally` (no planned forwards, no pasts)."""

    name = "plain"
    copies_past = True

    def __init__(self, model: Any) -> None:
        self.model = model
