"""How fast a model runs on this machine: a short measured forward, for dry-run estimates.

The model is loaded once (the real weights, in the dtype and on the device of the run) and
timed on random token ids: a plain decoder forward of 1 x L tokens for a few lengths L (best of
three each), least-squares fitted as ``c0 + c1 * L + c2 * L**2`` seconds (a fixed cost per forward pass, the
weights' work per token, attention over the context), and greedy decoding steps at a cached
context (median of several). The
profile is kept in evalsuite's cache (``$EVALSUITE_CACHE/speed/``), keyed on the weights, dtype,
device, thread count, torch version and host, so later dry runs load nothing.

A kept profile is only as good as the load it was measured at: on a CPU shared with other work
the same forward takes several times longer. Each profile records the load average; a later dry
run on CPU compares it with the load now (:func:`busy`: runnable tasks per core, at least 1)
and scales every time by the ratio when it is within :data:`RESCALE_LIMIT`, or measures again
when the machine is in another regime altogether (a profile taken idle, used on a machine
running seven other jobs, promised 2 minutes for a 52-minute run).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evalsuite.fsutil import cache_dir, write_json

#: Decoder forward lengths timed (tokens in one row): five for three coefficients, so that one
#: timing disturbed by another process cannot set the fit alone (three points fit exactly).
LENGTHS = (128, 256, 512, 768, 1024)
#: Timings per length (the best counts).
REPEATS = 3
#: Context length held in the cache while decoding steps are timed, and steps timed (the median counts).
DECODE_CONTEXT, DECODE_STEPS = 512, 16
#: Positions the output layer is timed on.
HEAD_POSITIONS = 256
PROFILE_VERSION = 3
#: A kept CPU profile is scaled by (busy now / busy then) within this factor either way, and
#: measured again beyond it.
RESCALE_LIMIT = 2.0


@dataclass
class SpeedProfile:
    """Measured forward costs of one model on one machine."""

    model: str
    dtype: str
    device: str
    threads: int
    seconds_by_length: dict[str, float]  # "L" -> best seconds for a 1 x L decoder forward
    fixed_s: float  # c0: seconds per forward pass
    per_token_s: float  # c1: seconds per token
    attention_s: float  # c2: seconds per token per token of context (a 1 x L forward: c2 * L**2)
    decode_step_s: float  # one greedy step (full model, last position only) at DECODE_CONTEXT cached tokens
    head_s: float  # the output layer and log-softmax normaliser at one scored position
    measured_at: str
    load_average: float | None
    host: str
    cpus: int | None = None  # os.cpu_count() where it was measured
    load_scale: float = 1.0  # times were multiplied by this for the load now (1: as measured)
    load_now: float | None = None  # the load average the scale was taken at

    def scaled(self, factor: float, load_now: float) -> SpeedProfile:
        """This profile with every time multiplied by ``factor`` (the machine's load changed)."""
        return replace(self, seconds_by_length={k: v * factor for k, v in self.seconds_by_length.items()},
                       fixed_s=self.fixed_s * factor, per_token_s=self.per_token_s * factor,
                       attention_s=self.attention_s * factor, decode_step_s=self.decode_step_s * factor,
                       head_s=self.head_s * factor, load_scale=self.load_scale * factor, load_now=load_now)

    def per_token(self, length: int) -> float:
        """Seconds per token for documents of ``length`` tokens, the fixed cost aside."""
        return self.per_token_s + self.attention_s * max(1, length)

    def forward_seconds(self, tokens: int, length: int, forwards: int = 0) -> float:
        """Time to forward ``tokens`` tokens of documents ``length`` tokens long in ``forwards`` passes."""
        return tokens * self.per_token(length) + forwards * self.fixed_s

    def scoring_seconds(self, positions: int) -> float:
        """The output layer at ``positions`` scored positions."""
        return positions * self.head_s

    def generation_seconds(self, prompt_tokens: int, new_tokens: int) -> float:
        """Prefill of the prompt, then one decoding step per further new token."""
        return self.forward_seconds(prompt_tokens, prompt_tokens, 1) + max(0, new_tokens - 1) * self.decode_step_s

    def describe(self) -> str:
        from evalsuite.config import CHUNK_DOCS

        forwards = ", ".join(f"1x{k} {v * 1000:.0f} ms" for k, v in self.seconds_by_length.items())
        load = f", load average {self.load_average:.1f}" if self.load_average is not None else ""
        if self.load_scale != 1.0 and self.load_now is not None:
            load += (f"; times x{self.load_scale:.2f} for the load average now, {self.load_now:.1f} "
                     f"on {self.cpus} cores")
        return (f"from forwards of {self.model} measured {self.measured_at} on {self.host} ({self.dtype}, {self.device}, "
                f"{self.threads} thread{'s' if self.threads != 1 else ''}{load}): decoder forward of random tokens {forwards} (best of {REPEATS}), "
                f"fitted as {self.fixed_s * 1000:.1f} ms per pass + {self.per_token(256) * 1000:.2f} ms per token at "
                f"256 tokens of context, {self.per_token(1024) * 1000:.2f} ms at 1024; one greedy decoding step {self.decode_step_s * 1000:.0f} ms (median of {DECODE_STEPS}, "
                f"{DECODE_CONTEXT} tokens cached); output layer {self.head_s * 1000:.2f} ms per scored position. "
                f"A log-likelihood task costs its engine tokens at the per-token cost of its median document length, "
                f"plus the output layer at its scored positions; generation costs each prompt's prefill, then per call of "
                f"{CHUNK_DOCS} documents decoded together the longest generation's steps plus the other rows' token work (one step "
                f"per new token with --generation exact), plus lm-eval's tokenizing of each request and the engine's "
                f"prefix trees, timed now on a sample of the requests; batched generation has taken up to 1.7x this "
                f"estimate on a CPU (docs/dry-run.md, 'Estimate against actual'). The machine is shared: the estimate "
                f"holds at the load it was made at")


def profile_path(source: Any, dtype: str, device: str) -> Path:
    """Where the profile of this model, dtype and device on this machine is kept."""
    import torch

    key = json.dumps([PROFILE_VERSION, source.identity, dtype, device, torch.get_num_threads(), torch.__version__,
                      platform.node(), os.cpu_count()])
    return cache_dir() / "speed" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def measured_speed(source: Any, dtype: str, device: str, *, again: bool = False) -> SpeedProfile:
    """The kept profile, else a new measurement (loads the model once; SmolLM2: seconds)."""
    path = profile_path(source, dtype, device)
    why = ""
    if path.is_file() and not again:
        try:
            kept = SpeedProfile(**json.loads(path.read_text()))
        except (TypeError, ValueError):
            kept = None  # an older or broken profile: measure again
        if kept is not None:
            factor, now = load_factor(kept, device)
            if factor is None:
                return kept
            if 1 / RESCALE_LIMIT <= factor <= RESCALE_LIMIT:
                return kept.scaled(factor, now) if factor != 1.0 else kept
            why = (f" again (the load average is {now:.1f} now, {kept.load_average:.1f} when it was measured: "
                   f"another regime)")
    print(f"evalsuite: timing a few forwards of {source.spec.alias} ({dtype}, {device}) for the estimate{why}; "
          f"kept in {path.parent}", flush=True)
    profile = measure(source, dtype, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, asdict(profile), indent=1)
    return profile


def busy(load: float, cpus: int) -> float:
    """Runnable tasks per core, at least 1: a CPU-bound run takes about this many times as long
    as on the idle machine (each runnable task gets a fair share of the cores)."""
    return max(1.0, load / max(1, cpus))


def load_factor(profile: SpeedProfile, device: str) -> tuple[float | None, float]:
    """(how much slower a forward is now than when ``profile`` was measured, the load now):
    None on a GPU (the CPU's load does not set its speed) or where no load average exists."""
    cpus = os.cpu_count() or 1
    if not hasattr(os, "getloadavg") or device.split(":")[0] != "cpu" or profile.load_average is None:
        return None, 0.0
    now = os.getloadavg()[0]
    return busy(now, cpus) / busy(profile.load_average, profile.cpus or cpus), now


def measure(source: Any, dtype: str, device: str) -> SpeedProfile:
    import inspect

    import torch

    from evalsuite.models.loading import load_transformers

    model, _ = load_transformers(source, dtype, device)
    decoder = model.get_decoder()
    dev = next(model.parameters()).device
    vocab = model.config.get_text_config().vocab_size if hasattr(model.config, "get_text_config") else model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, max(LENGTHS)), generator=generator).to(dev)

    def timed(fn: Any) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    seconds: dict[str, float] = {}
    with torch.inference_mode():
        decoder(input_ids=ids[:, :32])  # warm-up
        for length in LENGTHS:
            seconds[str(length)] = min(timed(lambda n=length: decoder(input_ids=ids[:, :n])) for _ in range(REPEATS))
        from transformers import DynamicCache

        cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        cache = DynamicCache()
        out = model(input_ids=ids[:, :DECODE_CONTEXT], use_cache=True, logits_to_keep=1, **{cache_kw: cache})
        step = out.logits[:, -1].argmax(-1, keepdim=True)
        steps = []
        for _ in range(DECODE_STEPS):
            steps.append(timed(lambda: model(input_ids=step, use_cache=True, logits_to_keep=1, **{cache_kw: cache})))
        hidden = decoder(input_ids=ids[:, :HEAD_POSITIONS]).last_hidden_state[0]
        head = model.get_output_embeddings()
        head_s = min(timed(lambda: torch.logsumexp(head(hidden).float(), dim=-1)) for _ in range(REPEATS)) / HEAD_POSITIONS
    fixed, per_token, attention = fit_forward_time({int(k): v for k, v in seconds.items()})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return SpeedProfile(
        model=source.spec.alias, dtype=dtype, device=device, threads=torch.get_num_threads(),
        seconds_by_length=seconds, fixed_s=fixed, per_token_s=per_token, attention_s=attention,
        decode_step_s=statistics.median(steps), head_s=head_s,
        measured_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), load_average=load, host=platform.node(),
        cpus=os.cpu_count(),
    )


def fit_forward_time(seconds: dict[int, float]) -> tuple[float, float, float]:
    """Non-negative ``(c0, c1, c2)`` with ``c0 + c1 * L + c2 * L**2`` closest to the timings.

    Least squares over every subset of the three terms, keeping the best fit whose coefficients
    are all non-negative (a noisy machine can make the full fit go negative).
    """
    import numpy as np

    lengths = np.array(sorted(seconds), dtype=float)
    times = np.array([seconds[int(x)] for x in lengths])
    columns = np.stack([np.ones_like(lengths), lengths, lengths**2], axis=1)
    best: tuple[float, tuple[float, float, float]] | None = None
    for mask in ((1, 1, 1), (1, 1, 0), (0, 1, 1), (0, 1, 0), (1, 0, 1)):
        use = [i for i in range(3) if mask[i]]
        coef, *_ = np.linalg.lstsq(columns[:, use], times, rcond=None)
        if (coef < 0).any():
            continue
        full = [0.0, 0.0, 0.0]
        for i, c in zip(use, coef):
            full[i] = float(c)
        error = float(((columns @ np.array(full) - times) ** 2).sum())
        if best is None or error < best[0] - 1e-15:
            best = (error, (full[0], full[1], full[2]))
    if best is None:  # cannot happen for positive timings: c1 alone is non-negative
        return 0.0, float(times.sum() / lengths.sum()), 0.0
    return best[1]
