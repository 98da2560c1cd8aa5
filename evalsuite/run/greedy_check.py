"""The generation audit: is a generated text the model's greedy decoding? One forward, no re-decoding.

Why: re-generating a sampled prompt one token at a time costs as much as generating it did (a
GSM8K audit of a 16-document run cost more than the run's whole generation). A text is greedy
when every one of its tokens is the argmax of the model's logits at its position, given the
prompt and the tokens before it, and the decoding then stops as it did. All those positions are
in one forward over prompt + generated tokens (the model's own forward, batch size 1, as the
prefill of ``generate`` runs it), so that is what :func:`check_greedy` runs:

* a text the engine decoded in this process is checked on its recorded token ids
  (:attr:`~evalsuite.backends.engine.generation.Generator.generated`, stop tokens included):
  one forward, then the recorded tokens replayed through the generator's own stop rule must end
  at the last one with exactly the text. A text served by the request cache has no ids:
* the text is encoded again; where the model's argmax is a different split of the same text
  (byte-level tokenizers can spell a word two ways) the check follows the model's token and
  forwards once more from the same prompt;
* a position whose generated token is not the argmax but within ``tolerance`` of it (log-prob
  gap) is a near tie, noted and not failed: batched and one-at-a-time decoding round differently
  in the last bits (bfloat16 especially), and either token is greedy to that precision. The
  check goes on from the generated token, so every later position is judged on the text the
  engine wrote;
* the stop: the decoding after the text is continued greedily over the forward's cache, a few
  tokens (or the argmax within tolerance of the best that ends the text: a near tie at the
  stop), exactly as the generator stops (:class:`~evalsuite.backends.engine.generation.Job`:
  an EOS id, a stop string, or the token limit), and the cut text must equal the generated one.

The generation-config processors (repetition penalty...) are applied per position as the
generator applies them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import torch

from evalsuite import compat

#: Tokens the decoding after a text may take to produce its stop string.
STOP_STEPS = 16
#: Times a text may be re-split to follow the model's own tokenization.
RESPLITS = 8
#: Alternatives to the argmax tried at the stop (within tolerance).
STOP_ALTERNATIVES = 5


@dataclass(frozen=True)
class GreedyCheck:
    ok: bool
    near_ties: int = 0
    forwards: int = 0
    why: str = ""


def check_greedy(generator: Any, request: Any, text: str, tolerance: float) -> GreedyCheck:
    """Whether ``text`` is what ``generator``'s model decodes greedily for ``request`` (see the module)."""
    tokenizer = generator.tokenizer
    job = generator.jobs([request])[0]
    if any(s and s in text for s in job.until):
        return GreedyCheck(False, why="the text contains a stop string")
    recorded = getattr(generator, "generated", {}).get((request.args[0], text))
    if recorded:  # computed in this process: the very tokens decoded, stop tokens included
        return _check_tokens(generator, job, list(recorded), text, tolerance)
    new = tokenizer.encode(text, add_special_tokens=False) if text else []
    with torch.inference_mode():
        logits, cache = _forward(generator, job.prompt + new, len(new) + 1)
        forwards, ties, k = 1, 0, 0
        while k < len(new):
            logprobs = _logprobs(job, logits[k], job.prompt + new[:k])
            best = int(logprobs.argmax())
            if best != new[k]:
                head = tokenizer.decode(new[:k] + [best], skip_special_tokens=True)
                if (best not in job.eos and text.startswith(head)
                        and len(head) > len(tokenizer.decode(new[:k], skip_special_tokens=True))):
                    # the same text split the model's way: follow its token, forward the rest again
                    rest = text[len(head):]
                    new = new[:k] + [best] + (tokenizer.encode(rest, add_special_tokens=False) if rest else [])
                    logits, cache = _forward_rest(generator, job.prompt, new, k, logits, cache)
                    forwards += 1
                elif float(logprobs[best] - logprobs[new[k]]) <= tolerance:
                    ties += 1
                else:
                    return GreedyCheck(False, ties, forwards, f"token {k + 1} of the text is not the greedy choice "
                                       f"(log-prob gap {float(logprobs[best] - logprobs[new[k]]):.2g})")
            k += 1
        if len(new) > job.max_gen:
            return GreedyCheck(False, ties, forwards, f"longer than the token limit ({job.max_gen})")
        stop, tie = _stops_as_generated(generator, job, new, text, logits[len(new)], cache, tolerance)
    if not stop:
        return GreedyCheck(False, ties, forwards, "the decoding does not stop where the text ends")
    return GreedyCheck(True, ties + tie, forwards)


def _check_tokens(generator: Any, job: Any, new: list[int], text: str, tolerance: float) -> GreedyCheck:
    """The recorded tokens of ``text``: one forward; each must be greedy (or a near tie), and
    replaying them must stop at the last one with exactly ``text``."""
    with torch.inference_mode():
        logits, _ = _forward(generator, job.prompt + new[:-1], len(new))
        ties = 0
        for k, token in enumerate(new):
            logprobs = _logprobs(job, logits[k], job.prompt + new[:k])
            gap = float(logprobs.max() - logprobs[token])
            if gap > tolerance:
                return GreedyCheck(False, ties, 1, f"token {k + 1} of the text is not the greedy choice "
                                   f"(log-prob gap {gap:.2g})")
            ties += int(gap > 0 and int(logprobs.argmax()) != token)
    replay = replace(job, new=[])
    for k, token in enumerate(new):
        if replay.push(token, generator.tokenizer) != (k == len(new) - 1):
            return GreedyCheck(False, ties, 1, "the decoding does not stop where the text ends")
    if replay.text(generator.tokenizer) != text:
        return GreedyCheck(False, ties, 1, "the tokens do not decode to the text")
    return GreedyCheck(True, ties, 1)


def _forward(generator: Any, ids: list[int], keep: int, cache: Any = None, seen: int = 0) -> tuple[torch.Tensor, Any]:
    """The last ``keep`` positions' logits of one forward over ``ids`` (batch size 1), after
    ``seen`` tokens already in ``cache`` (a new cache when None), and the cache."""
    from evalsuite.backends.engine.plain import accepts_logits_to_keep

    model = generator.model
    cache = compat.new_cache() if cache is None else cache
    kwargs = {"logits_to_keep": keep} if accepts_logits_to_keep(model) else {}
    tensor = torch.tensor([ids], dtype=torch.long, device=generator.device)
    mask = torch.ones(1, seen + len(ids), dtype=torch.long, device=generator.device)
    out = model(input_ids=tensor, attention_mask=mask, use_cache=True, **{generator.cache_kw: cache}, **kwargs)
    return out.logits[0, -keep:], cache


def _forward_rest(generator: Any, prompt: list[int], new: list[int], k: int, logits: torch.Tensor,
                  cache: Any) -> tuple[torch.Tensor, Any]:
    """The logits after ``new`` was re-split from token ``k`` on: rows up to ``k`` are kept, the
    rest forwarded again over the cache cut back to the prompt and ``new[:k]`` (from scratch where
    the cache is not of the per-layer form)."""
    kept = len(prompt) + k
    try:  # the same keys and values, cut to the first ``kept`` positions
        cut = compat.cache_from_layers([(keys[..., :kept, :], values[..., :kept, :])
                                        for keys, values in compat.cache_layers(cache)])
    except (AttributeError, TypeError, ValueError):  # a cache of another form
        cut = None
    if cut is not None:
        rest, cut = _forward(generator, new[k:], len(new) - k, cut, kept)
        return torch.cat([logits[:k + 1], rest]), cut
    return _forward(generator, prompt + new, len(new) + 1)


def _logprobs(job: Any, logits: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """Log-probabilities of one position after the generation-config processors (as the generator applies them)."""
    if job.processors is not None:
        tensor = torch.tensor([ids], dtype=torch.long, device=logits.device)
        logits = job.processors(tensor, logits[None].float())[0]
    return torch.log_softmax(logits.float(), dim=-1)


def _stops_as_generated(generator: Any, job: Any, new: list[int], text: str, logits: torch.Tensor, cache: Any,
                        tolerance: float) -> tuple[bool, int]:
    """Whether greedy decoding after ``new`` ends with exactly ``text`` (and whether it took a near tie)."""
    if len(new) >= job.max_gen:  # the token limit ended it
        return True, 0
    logprobs = _logprobs(job, logits, job.prompt + new)
    best = int(logprobs.argmax())
    top = torch.topk(logprobs, min(STOP_ALTERNATIVES, logprobs.numel()))
    candidates = [best] + [int(t) for v, t in zip(top.values, top.indices)
                           if int(t) != best and float(logprobs[best] - v) <= tolerance]
    for n, first in enumerate(candidates):
        state = copy.deepcopy(cache) if n + 1 < len(candidates) else cache
        if _decodes_to(generator, replace(job, new=list(new)), first, text, state):
            return True, int(n > 0)
    return False, 0


def _decodes_to(generator: Any, job: Any, token: int, text: str, cache: Any) -> bool:
    """Push ``token`` then decode greedily over ``cache`` until the job stops (or STOP_STEPS);
    whether its text is ``text``."""
    tokenizer = generator.tokenizer
    for _ in range(STOP_STEPS):
        if job.push(token, tokenizer):
            return job.text(tokenizer) == text
        step = torch.tensor([[token]], dtype=torch.long, device=generator.device)
        attention = torch.ones(1, job.length, dtype=torch.long, device=generator.device)
        out = generator.model(input_ids=step, attention_mask=attention, use_cache=True, logits_to_keep=1,
                              **{generator.cache_kw: cache})
        token = int(_logprobs(job, out.logits[0, -1], job.prompt + job.new).argmax())
    return False
