"""Exact or declined, decided per model: which of the engine's fast paths reproduce this model.

Why: the tree and cache executors run the decoder themselves (their own masks and positions)
and apply the output layer themselves; batched generation runs its own attention. Each family
brings details they must reproduce: windows per layer, attention soft-capping or sinks, ALiBi,
a transform after the output layer. A list of family names would be out of date with the next
family, so the decision is made from the loaded model, twice:

1. **Inspection.** One two-token forward with a recording attention function shows, per layer,
   whether attention is looked up in transformers' registry and with which extras (window,
   soft-cap, sinks, anything unknown); the config and the modelling module show the position
   scheme (ALiBi) and the head's transform after ``lm_head`` (Gemma-2 soft-capping, Cohere's
   ``logit_scale``, Granite's ``logits_scaling``).
2. **Probe.** A short synthetic input (longer than the model's windows, and past any length
   where its rope factors switch, where affordable) goes through the model's own full forward
   (:mod:`.plain`, at batch size 1 as lm-eval ``hf`` is the reference) and through each fast
   path the inspection allowed, planned with a small row size so that the plan keeps trunks
   and rows attend to them (and a second call reuses a remembered one) as in a real run; a
   path that disagrees beyond :data:`PROBE_TOL` (or raises) is declined. The head function is
   checked against the model's own logits the same way. The same requests batched with padding
   show whether the model's numbers depend on the batch (then the plain executor batches equal
   lengths only). Generation routes are judged against what lm-eval ``hf`` runs: the model's
   own ``generate`` at batch size 1.
3. **Rules** where the probe cannot reach: a model whose rope factors switch with the input's
   length (longrope, dynamic NTK; :func:`length_switches`) gets no shared pasts (a past computed
   below the switch is not what a full forward past it computes), no batched decoding, and
   equal-length plain batches.

What still fails in a real run (a remote model's cache code meeting an input the probe did not
have) is caught by the engine, which abandons that route for the model and redoes the call on
the next exact one (:func:`next_route`), saying so in the run's and the task's notes.

What a fast path cannot do exactly goes to the plain executor (log-likelihoods) or to exact /
plain generation. The decision (:class:`Capabilities`) is one line in the run notes.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from evalsuite import compat
from evalsuite.backends.engine.rope import length_switches, model_text_config

SPY_ATTENTION = "evalsuite_spy"
#: Keyword arguments of an attention call the fast paths reproduce (``sliding_window`` through
#: the per-layer windows, ``scaling`` passed on); anything else set is an extra they decline.
HANDLED_KWARGS = frozenset({"dropout", "scaling", "sliding_window", "position_ids", "use_cache", "cache_position",
                            "output_attentions", "is_causal", "head_mask"})
#: Largest per-token |Δ log-prob| between a fast path and the model's own forward on the probe.
#: float32: kernel rounding is ~1e-5 here; half precision rounds logits to ~1e-2, so only errors
#: well above that (a missing window or soft-cap: tenths of a nat and up) are caught there.
PROBE_TOL = {torch.float32: 1e-3, torch.float16: 0.25, torch.bfloat16: 0.25}
#: Longest probe input, by device type (a window longer than this is applied by rule, unprobed).
PROBE_MAX_TOKENS = {"cpu": 1024, "cuda": 8192}


@dataclass(frozen=True)
class Capabilities:
    """The engine's choice for one model: the executor of log-likelihood requests ("tree",
    "cache" or "plain"), the generation route ("batched", "exact" or "plain": see
    :mod:`.generation`), the attention window of each layer (None: full), and why."""

    loglikelihood: str
    generation: str
    windows: tuple[int | None, ...] = ()
    reasons: tuple[str, ...] = ()
    model_type: str = "model"
    #: the plain executor batches inputs of one length only (the model's numbers depend on padding)
    equal_lengths: bool = False
    #: fast paths and generation routes declined for this model (a runtime fallback skips them)
    declined: tuple[str, ...] = ()

    @property
    def note(self) -> str:
        """One line for the run notes, e.g. "bloom: ALiBi positions: plain forward"."""
        why = "; ".join(self.reasons) if self.reasons else "every fast path probed exact"
        return f"{self.model_type}: log-likelihoods {self.loglikelihood}, generation {self.generation} ({why})"


@dataclass
class Survey:
    """What inspection found: per layer, the attention keywords seen (None: the layer's attention
    never went through the registry), and what the model does besides attention."""

    layers: dict[int, dict[str, Any]] = field(default_factory=dict)
    n_layers: int = 0
    alibi: bool = False
    error: str | None = None

    @property
    def routed(self) -> bool:
        """Every layer looked its attention up in transformers' registry."""
        return self.n_layers > 0 and len(self.layers) == self.n_layers

    def windows(self) -> tuple[int | None, ...]:
        return tuple(_window(self.layers.get(i, {}).get("sliding_window")) for i in range(self.n_layers))

    def extras(self) -> list[str]:
        """Attention settings the registry-based fast paths do not reproduce."""
        found = set()
        for kwargs in self.layers.values():
            for key, value in kwargs.items():
                if key in HANDLED_KWARGS:
                    if key == "dropout" and value:
                        found.add("attention dropout")
                    continue
                if value is None or value is False:
                    continue
                found.add({"softcap": "attention logit soft-capping", "s_aux": "attention sinks"}.get(key, f"attention {key}"))
        return sorted(found)


def _window(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def text_config(model: Any) -> Any:
    return model_text_config(model)


def decoder(model: Any) -> Any:
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


# --------------------------------------------------------------------------- inspection
def survey(model: Any) -> Survey:
    """A two-token forward of the decoder with a recording attention function in place."""
    found = Survey(n_layers=int(getattr(text_config(model), "num_hidden_layers", 0) or 0))
    found.alibi = _uses_alibi(model)
    seen: dict[int, dict[str, Any]] = {}

    def spy(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
            **kwargs: Any) -> tuple[torch.Tensor, None]:
        layer = getattr(module, "layer_idx", None)
        if layer is not None:
            record = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor) or k == "s_aux"}
            if getattr(module, "sinks", None) is not None:
                record["s_aux"] = True
            seen[int(layer)] = record
        heads, kv_heads = query.shape[1], key.shape[1]
        if heads != kv_heads:
            key, value = key.repeat_interleave(heads // kv_heads, 1), value.repeat_interleave(heads // kv_heads, 1)
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True,
                                                               scale=kwargs.get("scaling"))
        return out.transpose(1, 2).contiguous(), None

    compat.register_attention(SPY_ATTENTION, spy)
    device = next(model.parameters()).device
    try:
        with torch.inference_mode(), compat.attention(model, SPY_ATTENTION):
            decoder(model)(input_ids=torch.zeros(1, 2, dtype=torch.long, device=device),
                           position_ids=torch.arange(2, device=device)[None], use_cache=False)
    except Exception as exc:  # noqa: BLE001 - a decoder that cannot run this way has no registry path
        found.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
        seen.clear()
    found.layers = seen
    return found


def _uses_alibi(model: Any) -> bool:
    """ALiBi positions: said by the config (Falcon's ``alibi``, MPT's ``attn_config``) or by the
    modelling module, which builds an ALiBi bias (BLOOM)."""
    cfg = text_config(model)
    for key, value in cfg.to_dict().items():
        if "alibi" in key.lower() and value:
            return True
        if isinstance(value, dict) and any("alibi" in str(k).lower() and v for k, v in value.items()):
            return True
    for cls in (type(model), type(decoder(model))):
        module = sys.modules.get(cls.__module__)
        if module is not None and any("alibi" in name.lower() for name in vars(module)):
            # only a model whose config does not switch it off (Falcon's module has ALiBi code for alibi=True)
            if getattr(cfg, "alibi", True):
                return True
    return False


def head_function(model: Any) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[str]]:
    """The causal-LM head as the model applies it after the decoder: ``lm_head`` then the
    family's own transform (final logit soft-capping, a logit scale or divisor); and what was
    added, for the notes. The probe checks it against the model's own logits."""
    out = model.get_output_embeddings()
    cfg = text_config(model)
    cap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(model, "logit_scale", None)
    if scale is None:
        scale = getattr(cfg, "logit_scale", None)
    divisor = getattr(cfg, "logits_scaling", None)
    steps: list[str] = []
    if isinstance(scale, torch.Tensor) or isinstance(scale, bool) or not isinstance(scale, (int, float)):
        scale = None
    if scale is not None and float(scale) != 1.0:
        steps.append(f"logit scale {scale:g}")
    else:
        scale = None
    if isinstance(divisor, (int, float)) and not isinstance(divisor, bool) and float(divisor) != 1.0:
        steps.append(f"logits / {divisor:g}")
    else:
        divisor = None
    if isinstance(cap, (int, float)) and not isinstance(cap, bool) and cap:
        steps.append(f"final logit soft-cap {cap:g}")
    else:
        cap = None

    def head(hidden: torch.Tensor) -> torch.Tensor:
        logits = out(hidden)
        if scale is not None:
            logits = logits * scale
        if divisor is not None:
            logits = logits / divisor
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return head, steps


def layer_types(model: Any) -> list[str] | None:
    types = getattr(text_config(model), "layer_types", None)
    return list(types) if isinstance(types, (list, tuple)) else None


# --------------------------------------------------------------------------- the probe
def probe_requests(vocab: int, length: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Synthetic requests of ``length`` tokens at most: one long context with branching
    continuations (shared trunks, tree rows) and a second context sharing its first half."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (length + 16,), generator=gen).tolist()
    context = ids[:length - 4]
    other = ids[:length // 2] + ids[length:length + 6]
    return [
        (context, ids[length - 4:length - 1]),
        (context, ids[length + 6:length + 8]),
        (context, ids[length + 8:length + 9]),
        (context[:-3], ids[length + 9:length + 12]),
        (other, ids[length + 12:length + 14]),
    ]


#: rope types whose frequencies depend on the input's length, and the config key of the switch
def probe_budgets(requests: list[tuple[list[int], list[int]]], device_type: str, copies_past: bool) -> Any:
    """The planner's budgets for the probe: rows of at most 8 tokens and a token budget of a
    third of the longest input, so that the plan keeps trunks (in pieces), rows attend to them,
    and a second call reuses a remembered one, as in a real run (:func:`plan_keeps_trunks`)."""
    from evalsuite.backends.engine import planner

    budget = max(16, max(len(c) + len(x) for c, x in requests) // 3)
    return planner.Budgets.for_device(device_type, budget, copies_past, 4, small_row=8)


def plan_keeps_trunks(the_plan: Any) -> bool:
    """Whether a plan computes a kept trunk and has rows attending to a computed past."""
    from evalsuite.backends.engine import planner

    forwards = [s for s in the_plan.steps if isinstance(s, planner.Forward)]
    return any(f.keep is not None for f in forwards) and any(r.past is not None for f in forwards for r in f.rows)


def probe_length(model: Any, max_length: int, windows: tuple[int | None, ...]) -> int:
    """Past every window shorter than the context and every length where the rope factors
    switch (where affordable), else a short input."""
    device = next(model.parameters()).device.type
    cap = PROBE_MAX_TOKENS.get(device, PROBE_MAX_TOKENS["cpu"])
    finite = [w for w in windows if w is not None and w < max_length and w + 24 <= cap]
    # four windows long: the probe's trunk pieces (a third of it) then run past a window too
    want = min(cap, 4 * max(finite) + 24) if finite else 64
    # past a switch, with the second probe context (about half as long) below it
    switches = [n for n, _ in length_switches(model, max_length) if n + 32 <= cap]
    if switches:
        want = max(want, min(cap, max(switches) + 32))
    return max(16, min(want, max_length - 2))


def max_difference(got: list[list[float]], want: list[list[float]]) -> float:
    """Largest per-token |Δ| between two lists of per-request log-probs (NaN or a shape mismatch: inf)."""
    worst = 0.0
    for a, b in zip(got, want, strict=True):
        if len(a) != len(b):
            return float("inf")
        for x, y in zip(a, b):
            d = abs(x - y)
            if d != d:
                return float("inf")
            worst = max(worst, d)
    return worst


def tolerance(model: Any) -> float:
    return PROBE_TOL.get(next(model.parameters()).dtype, PROBE_TOL[torch.float16])


def rule_windows(model: Any) -> tuple[int | None, ...]:
    """Per-layer windows from the config alone (for decoders the survey could not watch):
    ``layer_types``, else Qwen2's ``use_sliding_window``/``max_window_layers``, else one window."""
    cfg = text_config(model)
    n = int(getattr(cfg, "num_hidden_layers", 0) or 0)
    window = _window(getattr(cfg, "sliding_window", None))
    if window is None or getattr(cfg, "use_sliding_window", True) is False:
        return (None,) * n
    types = layer_types(model)
    if types:
        return tuple(window if t == "sliding_attention" else None for t in types)
    first = getattr(cfg, "max_window_layers", None)
    if isinstance(first, int):
        return tuple(window if i >= first else None for i in range(n))
    return (window,) * n


# --------------------------------------------------------------------------- the decision
def head_difference(model: Any, head: Callable[[torch.Tensor], torch.Tensor], ids: list[int]) -> float:
    """Max |Δ log-prob| between the model's own logits and ``head`` on its decoder's hidden states."""
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    with torch.inference_mode():
        want = torch.log_softmax(model(input_ids=x, use_cache=False).logits.float(), dim=-1)
        hidden = decoder(model)(input_ids=x, use_cache=False).last_hidden_state
        got = torch.log_softmax(head(hidden).float(), dim=-1)
    d = (got - want).abs().max()
    return float("inf") if torch.isnan(d) else float(d)


def probe_generation(model: Any, tokenizer: Any, route: str, windows: tuple[int | None, ...], length: int,
                     reference: dict[str, Any] | None = None) -> float:
    """Max |Δ log-prob| of each decoded step's logits on ``route`` against what lm-eval ``hf``
    runs, the model's own ``generate`` at batch size 1 (the "plain" route), two prompts of
    different lengths; up to and including the first step where the two pick different tokens
    (later steps condition on different texts). inf where the route decodes fewer steps.
    ``reference``: a dict kept between calls for one model and length (``generate`` runs once)."""
    from evalsuite.backends.engine.generation import Generator, Job

    vocab = int(getattr(text_config(model), "vocab_size", None) or len(tokenizer))
    draw = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, vocab, (n,), generator=draw).tolist() for n in (length, max(4, length - 7))]
    decoded = reference if reference is not None else {}
    for name in ("plain", route):
        if name in decoded and name == "plain":
            continue
        gen = Generator(model, tokenizer, length + 64, 6, "batched", windows=windows, route=name)
        gen.record = []
        # the model's own generation-config processors and EOS ids, as generate() applies them
        jobs = [Job(i, p, [], 6, *gen.processors(len(p), 6)) for i, p in enumerate(prompts)]
        gen.run(jobs)
        decoded[name] = [(job.new, [lg for index, lg in gen.record if index == job.index]) for job in jobs]
    worst = 0.0
    for (want_ids, want), (got_ids, got) in zip(decoded["plain"], decoded[route]):
        for step, expected in enumerate(want):
            if step >= len(got):
                return float("inf")
            d = (torch.log_softmax(got[step], -1) - torch.log_softmax(expected, -1)).abs().max()
            worst = max(worst, float("inf") if torch.isnan(d) else float(d))
            if got_ids[step] != want_ids[step]:
                break
    return worst


def first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:80]}"


def decide(model: Any, tokenizer: Any, max_length: int, requested: str | None,
           probe_executor: Callable[[str, tuple[int | None, ...], list[str] | None,
                                     list[tuple[list[int], list[int]]]], list[list[float]]],
           generation_mode: str = "batched") -> tuple[Capabilities, Callable[[torch.Tensor], torch.Tensor]]:
    """The executor and generation route for ``model`` and the head function its fast paths use.

    ``requested`` ("tree", "cache", "plain" or None for the device's default) is honoured when
    exact, else the plain executor is taken and the reason given. ``probe_executor(name,
    windows, layer_types, requests)`` returns the per-request log-probs of an executor."""
    from evalsuite.backends.engine import tree_attention
    from evalsuite.backends.engine.plain import plain_tally

    cfg = text_config(model)
    model_type = str(getattr(cfg, "model_type", None) or type(model).__name__)
    found = survey(model)
    windows = found.windows() if found.routed else rule_windows(model)
    types = layer_types(model)
    head, head_steps = head_function(model)
    tol = tolerance(model)
    reasons: list[str] = []
    declined: dict[str, str] = {}  # fast path -> why not
    switches = length_switches(model, max_length)
    if found.alibi:
        declined["tree"] = declined["cache"] = "ALiBi positions"
    if switches:
        at = ", ".join(f"{kind} at {n} tokens" for n, kind in switches)
        declined.setdefault("tree", f"rope factors switch with the input's length ({at})")
        declined.setdefault("cache", declined["tree"])
    extras = found.extras()
    if not found.routed:
        declined.setdefault("tree", "attention outside transformers' registry")
    elif extras:
        declined.setdefault("tree", ", ".join(extras))
    elif not tree_attention.supported(model):
        declined.setdefault("tree", "tree attention is CPU-only")
    if len(set(windows)) > 1 and not (types and len(types) == len(windows)):
        declined.setdefault("cache", "per-layer windows without layer_types")
    length = probe_length(model, max_length, windows)
    vocab = int(getattr(cfg, "vocab_size", None) or len(tokenizer))
    requests = probe_requests(vocab, length)
    if "tree" not in declined or "cache" not in declined:
        try:
            head_off = head_difference(model, head, requests[0][0][:16])
        except Exception as exc:  # noqa: BLE001 - a decoder without hidden states: no fast path
            head_off, why = float("inf"), f"no decoder hidden states ({first_line(exc)})"
        else:
            why = f"the model's logits are not lm_head(hidden){' + ' + ', '.join(head_steps) if head_steps else ''}"
        if not head_off <= tol:
            for name in ("tree", "cache"):
                declined.setdefault(name, why)
    if head_steps:
        reasons.append("head: lm_head + " + ", ".join(head_steps))
    device = next(model.parameters()).device.type
    default = ["tree", "cache"] if device == "cpu" else ["cache"]
    order = [requested, *(n for n in default if n != requested)] if requested in ("tree", "cache") else default
    chosen = "plain"
    # the reference is lm-eval hf at batch size 1; the same requests padded into one batch show
    # whether this model's numbers depend on the batch
    reference = plain_tally(model, requests, max_length=max_length, batch_size=1, logits_dtype=torch.float32).logprobs
    padded = plain_tally(model, requests, max_length=max_length, batch_size=len(requests), logits_dtype=torch.float32,
                         equal_lengths=False).logprobs
    padding_off = max_difference(padded, reference)
    equal_lengths = bool(switches) or not padding_off <= tol
    if equal_lengths:
        why = f"off by {padding_off:.1e} padded" if not padding_off <= tol else "by rule"
        reasons.append(f"padded batches change this model's numbers ({why}): plain batches of equal lengths")
    if requested != "plain":
        for name in order:
            if name in declined:
                continue
            off, error = probe_path(name, windows, types, requests, reference, probe_executor)
            if error is None and off <= tol:
                chosen = name
                break
            declined[name] = (f"{name} executor failed on the probe ({error})" if error
                              else f"{name} executor off by {off:.1e} on the probe")
    if chosen == "plain":
        why_not = [declined[n] for n in order if n in declined] or ["requested"]
        reasons.append(f"{'; '.join(dict.fromkeys(why_not))}: plain forward")
    elif any(w is not None for w in windows):
        shown = sorted({w for w in windows if w is not None})
        crossed = "probed past it" if length > max(shown) else f"beyond the {length}-token probe: applied by rule"
        reasons.append(f"window {'/'.join(map(str, shown))} on {sum(w is not None for w in windows)}/{len(windows)} "
                       f"layers ({crossed})")
    if chosen != order[0] and chosen != "plain" and order[0] in declined:
        reasons.append(f"{order[0]} declined: {declined[order[0]]}")
    routes_declined: list[str] = []
    generation = _generation_route(model, tokenizer, found, extras, windows, generation_mode, tol, length, reasons,
                                   switches, routes_declined)
    return Capabilities(chosen, generation, windows, tuple(reasons), model_type, equal_lengths,
                        tuple(sorted(set(declined) | set(routes_declined)))), head


def probe_path(name: str, windows: tuple[int | None, ...], types: list[str] | None,
               requests: list[tuple[list[int], list[int]]], reference: list[list[float]],
               probe_executor: Callable[..., list[list[float]]]) -> tuple[float, str | None]:
    """(max per-token |Δ| of fast path ``name`` on the probe requests, None), or (inf, the first
    line of the error) where it raises."""
    try:
        return max_difference(probe_executor(name, windows, types, requests), reference), None
    except Exception as exc:  # noqa: BLE001 - a path that cannot run this model is declined
        return float("inf"), first_line(exc)


def _generation_route(model: Any, tokenizer: Any, found: Survey, extras: list[str], windows: tuple[int | None, ...],
                      mode: str, tol: float, length: int, reasons: list[str],
                      switches: list[tuple[int, str]] = (), declined: list[str] | None = None) -> str:  # type: ignore[assignment]
    """"batched" where asked and exact, else "exact" (the model's own cache), else "plain" (the
    model's own ``generate``, the reference the others are judged against)."""
    routes = ["batched", "exact", "plain"] if mode == "batched" else ["exact", "plain"]
    declined = declined if declined is not None else []
    reference: dict[str, Any] = {}  # generate()'s tokens and logits, computed once
    for route in routes[:-1]:
        if route == "batched" and (found.alibi or not found.routed or extras or switches):
            why = ("ALiBi positions" if found.alibi else ", ".join(extras) if extras
                   else "rope factors switch with the length" if switches and found.routed
                   else "attention outside the registry")
            reasons.append(f"batched generation declined: {why}")
            declined.append(route)
            continue
        try:
            off = probe_generation(model, tokenizer, route, windows, min(length, 96), reference)
        except Exception as exc:  # noqa: BLE001
            reasons.append(f"{route} generation failed on the probe ({first_line(exc)})")
            declined.append(route)
            continue
        if off <= tol:
            return route
        reasons.append(f"{route} generation off by {off:.1e} against generate() on the probe")
        declined.append(route)
    return routes[-1]


#: Fallback order of the log-likelihood executors and of the generation routes.
LOGLIKELIHOOD_ROUTES = ("tree", "cache", "plain")
GENERATION_ROUTES = ("batched", "exact", "plain")


def next_route(current: str, declined: tuple[str, ...] | set[str]) -> str:
    """The route after ``current`` in its fallback order that was not declined ("plain" last)."""
    order = LOGLIKELIHOOD_ROUTES if current in LOGLIKELIHOOD_ROUTES[:2] else GENERATION_ROUTES
    later = order[order.index(current) + 1:] if current in order else order[-1:]
    return next((r for r in later if r not in declined), order[-1])
