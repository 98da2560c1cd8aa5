"""Greedy generation (GSM8K) as lm-eval's ``hf`` model and v1's ``model.generate(do_sample=False)``.

Semantics, identical in both modes: the context is encoded without special tokens and
left-truncated to ``max_length - max_gen_toks``; each step takes the argmax of the logits after
the model's own generation-config processors (repetition penalty, no-repeat n-grams, bad words,
minimum lengths...: exactly the ``LogitsProcessorList`` ``generate`` would build, applied to the
row's own tokens as at batch size 1); a row stops at an EOS id, once a stop string appears in
its text, or after ``max_gen_toks`` tokens; the text is decoded without special tokens and cut
at each stop string in turn.

Two modes (and a floor):

* ``exact``: one prompt at a time, prefill then one token per step over a ``DynamicCache``: the
  same calls as ``generate`` at batch size 1.
* ``plain`` (not a user mode: the floor :mod:`.capabilities` takes where neither of the others
  reproduces what lm-eval ``hf`` runs, e.g. remote code with its own cache format): the model's
  own ``generate`` at batch size 1, the very call lm-eval ``hf`` makes (its own cache, its own
  ``prepare_inputs_for_generation``), stopped by the same rules; exact by construction.
* ``batched`` (default): prompts of any lengths decode together. Each prompt is prefilled alone
  (the same numerics as batch size 1), its keys and values are copied into a slot of a
  preallocated per-layer buffer, and every decode step runs the active slots as one batch, each
  row at its own position and attending to its own slot only (:func:`slot_attention`). A row
  that stops leaves at once and the next prompt is prefilled into its slot; once none is left
  the last slot moves into the hole, so the batch stays dense. Each layer's sliding window (per
  layer, from the capabilities) limits what a row attends to. Per row the arithmetic is that of
  batch size 1 except for kernel blocking at a different batch size (float rounding in the last
  bits; the benchmark checks the texts against lm-eval's ``hf`` model).

Out of memory: batched decoding halves its slots and decodes the unfinished prompts again (the
finished ones keep their texts: each row's arithmetic does not depend on the others), down to
one slot; a prompt that does not fit alone raises :class:`~.memory.RowOutOfMemory`, which the
engine turns into one line naming the task, document and length. With a model spread over
several GPUs the slot buffers live on each layer's device and each step's positions and masks
are copied to it once.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from evalsuite import compat
from evalsuite.errors import EvalsuiteError
from evalsuite.backends import GENERATION_MODES
from evalsuite.backends.engine.memory import RowOutOfMemory, is_oom, release

log = logging.getLogger(__name__)

SLOT_ATTENTION = "evalsuite_slots"
#: Rows decoded together at most, by device type.
MAX_SLOTS = {"cpu": 32, "cuda": 128}
#: Bytes the slot buffers may take, by device type (a fraction of free memory on CUDA).
SLOT_MEMORY = {"cpu": 2 * 2**30}
#: Generation-config processors the engine applies (transformers' own objects, per row).
SUPPORTED_PROCESSORS = frozenset({
    "RepetitionPenaltyLogitsProcessor", "NoRepeatNGramLogitsProcessor", "NoBadWordsLogitsProcessor",
    "MinLengthLogitsProcessor", "MinNewTokensLengthLogitsProcessor", "SequenceBiasLogitsProcessor",
    "SuppressTokensLogitsProcessor", "SuppressTokensAtBeginLogitsProcessor", "ForcedBOSTokenLogitsProcessor",
    "ForcedEOSTokenLogitsProcessor", "InfNanRemoveLogitsProcessor", "ExponentialDecayLengthPenalty",
    "LogitNormalization",
})
STOP_LOOKBACK = 64
MODES = GENERATION_MODES


@dataclass
class Job:
    """One prompt being decoded."""

    index: int
    prompt: list[int]
    until: list[str]
    max_gen: int
    processors: Any
    eos: frozenset[int]
    new: list[int] = field(default_factory=list)
    slot: int = -1
    done: bool = False

    def reset(self) -> None:
        """Forget what was decoded (the prompt is decoded again, on another route or batch)."""
        self.new, self.slot, self.done = [], -1, False

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.new)

    def push(self, token: int, tokenizer: Any) -> bool:
        """Append a generated token; whether the row is done."""
        self.new.append(token)
        if token in self.eos or len(self.new) >= self.max_gen:
            self.done = True
            return True
        text = tokenizer.decode(self.new[-STOP_LOOKBACK:], skip_special_tokens=False)
        self.done = any(s and s in text for s in self.until)
        return self.done

    def text(self, tokenizer: Any) -> str:
        out = tokenizer.decode(self.new, skip_special_tokens=True)
        for term in self.until:
            if term:
                out = out.split(term)[0]
        return out


class Generator:
    """Greedy decoding for an :class:`~.lm.EngineLM`'s model and tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int, default_max_gen: int, mode: str = "batched",
                 max_rows: int | None = None, windows: tuple[int | None, ...] = (), route: str | None = None) -> None:
        if mode not in MODES:
            raise EvalsuiteError(f"unknown generation mode {mode!r}; choose one of {', '.join(MODES)}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.default_max_gen = default_max_gen
        self.mode = mode
        self.max_rows = max_rows
        self.device = next(model.parameters()).device
        self.cache_kw = compat.cache_keyword(model)
        #: per layer, the sliding window batched decoding applies (None: full attention)
        self.windows = tuple(windows)
        #: how requests are decoded: "batched", "exact" or "plain" (see the module docstring);
        #: by default exact in exact mode or for models outside the attention registry
        self.route = route or ("exact" if mode == "exact" or not compat.routes_attention_through_registry(model)
                               else "batched")
        #: when a list, each decoded row's logits are appended (the capability probe reads them)
        self.record: list[tuple[int, torch.Tensor]] | None = None
        self._processors: dict[tuple[int, int], tuple[Any, frozenset[int]]] = {}
        self.forward_calls = 0
        self.forwarded_tokens = 0
        #: times batched decoding halved its slots after running out of memory
        self.oom_splits = 0
        #: called with the error when the route raises; it sets another route (the engine's
        #: runtime fallback, :meth:`~.lm.EngineLM._abandon_generation`); None: the error propagates
        self.fallback: Any = None
        #: when set, called with each job the moment its generation is finished
        self.on_done: Callable[[Job], None] | None = None
        #: the token ids each (context, text) was decoded from: the self-audit checks them in one forward
        self.generated: dict[tuple[str, str], tuple[int, ...]] = {}

    # ------------------------------------------------------------------ requests
    def jobs(self, requests: Sequence[Any]) -> list[Job]:
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        eos_text = self.tokenizer.decode(self.tokenizer.eos_token_id, skip_special_tokens=False)
        out = []
        for index, req in enumerate(requests):
            context, gen_kwargs = req.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.default_max_gen)
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0.0:
                raise EvalsuiteError("the evalsuite engine decodes greedily only (do_sample=False, temperature=0)")
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_gen = int(kwargs.pop("max_gen_toks"))
            ids = self.tokenizer.encode(context, add_special_tokens=False)[-(self.max_length - max_gen):]
            processors, eos = self.processors(len(ids), max_gen)
            out.append(Job(index, ids, until, max_gen, processors, eos))
        return out

    def processors(self, prompt_length: int, max_gen: int) -> tuple[Any, frozenset[int]]:
        """The generation-config processors for a prompt length (some depend on it) and the EOS ids."""
        key = (prompt_length, max_gen)
        if key not in self._processors:
            processors, eos_ids = compat.greedy_logits_processors(self.model, prompt_length, max_gen, self.device)
            unknown = sorted({type(p).__name__ for p in processors} - SUPPORTED_PROCESSORS)
            if unknown:
                raise EvalsuiteError(
                    f"the model's generation_config asks generate() for {', '.join(unknown)}, which the evalsuite "
                    f"engine does not implement; use --backend lm-eval-hf for this model"
                )
            eos = set(eos_ids)
            if self.tokenizer.eos_token_id is not None:
                eos.add(int(self.tokenizer.eos_token_id))
            self._processors[key] = (processors if len(processors) else None, frozenset(eos))
        return self._processors[key]

    def generate(self, requests: Sequence[Any]) -> list[str]:
        """The requests' texts. A route that raises (not out of memory, not bad input) goes to
        :attr:`fallback`, which moves :attr:`route` on, and every prompt is decoded again."""
        jobs = self.jobs(requests)
        if not jobs:
            return []
        while True:
            try:
                self.run(jobs)
                break
            except Exception as exc:
                if (self.fallback is None or self.route == "plain" or isinstance(exc, (RowOutOfMemory, EvalsuiteError))
                        or is_oom(exc)):
                    raise
                self.fallback(exc)
                for job in jobs:
                    job.reset()
        texts = [job.text(self.tokenizer) for job in jobs]
        self.generated.update(((req.args[0], text), tuple(job.new)) for req, job, text in zip(requests, jobs, texts))
        return texts

    def run(self, jobs: list[Job]) -> None:
        """Decode the jobs not yet done on this generator's route (out of memory: see the module
        docstring)."""
        with torch.inference_mode():
            if self.route == "batched":
                self._batched_backoff([job for job in jobs if not job.done])
                return
            for job in jobs:
                if job.done:
                    continue
                try:
                    (self._exact if self.route == "exact" else self._plain)(job)
                    self._finished(job)
                except Exception as exc:
                    if not is_oom(exc):
                        raise
                    release(self.device)
                    raise RowOutOfMemory(job.index, job.length + job.max_gen - len(job.new)) from None

    def _batched_backoff(self, jobs: list[Job]) -> None:
        slots: int | None = None
        while True:
            todo = [job for job in jobs if not job.done]
            if not todo:
                return
            try:
                self._batched(todo, slots)
                return
            except Exception as exc:
                if not is_oom(exc):
                    raise
                release(self.device)
                used = self._used_slots
                if used <= 1:
                    job = max((j for j in todo if not j.done), key=lambda j: len(j.prompt), default=todo[0])
                    raise RowOutOfMemory(job.index, len(job.prompt) + job.max_gen) from None
                slots = used // 2
                self.oom_splits += 1
                log.warning("out of memory decoding %d prompts together; again with %d", used, slots)
                for job in todo:
                    if not job.done:
                        job.reset()

    def _finished(self, job: Job) -> None:
        if self.on_done is not None:
            self.on_done(job)

    def _next(self, job: Job, logits: torch.Tensor) -> int:
        """The greedy token from one row's last logits ``[vocab]`` after the processors."""
        if self.record is not None:
            self.record.append((job.index, logits.float().cpu()))
        if job.processors is not None:
            ids = torch.tensor([job.prompt + job.new], dtype=torch.long, device=logits.device)
            logits = job.processors(ids, logits[None].float())[0]
        return int(logits.argmax())

    # ------------------------------------------------------------------ exact: batch size 1
    def _exact(self, job: Job) -> None:
        cache = compat.new_cache()
        step = torch.tensor([job.prompt], dtype=torch.long, device=self.device)
        attn = torch.ones_like(step)
        while True:
            out = self.model(input_ids=step, attention_mask=attn, use_cache=True, logits_to_keep=1,
                             **{self.cache_kw: cache})
            self.forward_calls += 1
            self.forwarded_tokens += step.numel()
            token = self._next(job, out.logits[0, -1])
            if job.push(token, self.tokenizer):
                return
            step = torch.tensor([[token]], dtype=torch.long, device=self.device)
            attn = torch.cat([attn, torch.ones(1, 1, dtype=attn.dtype, device=self.device)], dim=1)

    # ------------------------------------------------------------------ plain: the model's own generate
    def _plain(self, job: Job) -> None:
        """``model.generate`` at batch size 1, as lm-eval ``hf`` calls it; each new token is
        pushed to the job, whose stop rules end the call (a stopping criterion)."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        tokenizer = self.tokenizer

        class Pushed(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
                done = job.done or job.push(int(input_ids[0, -1]), tokenizer)
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        ids = torch.tensor([job.prompt], dtype=torch.long, device=self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=job.max_gen, do_sample=False,
                                  stopping_criteria=StoppingCriteriaList([Pushed()]), pad_token_id=pad, use_cache=True,
                                  output_logits=self.record is not None, return_dict_in_generate=True)
        steps = out.sequences.shape[1] - len(job.prompt)
        self.forward_calls += steps
        self.forwarded_tokens += len(job.prompt) + max(0, steps - 1)
        if self.record is not None:
            for logits in out.logits[:len(job.new)]:
                self.record.append((job.index, logits[0].float().cpu()))

    # ------------------------------------------------------------------ batched: slots
    def _slots(self, jobs: list[Job], cap: int | None = None) -> tuple[int, int]:
        """(slots, capacity in tokens per slot) within the device's slot memory."""
        cfg = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") else self.model.config
        capacity = max(len(j.prompt) + j.max_gen for j in jobs)
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        per_token = 2 * cfg.num_hidden_layers * kv_heads * head_dim * next(self.model.parameters()).element_size()
        dev = self.device.type
        if dev == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            memory = free // 3
        else:
            memory = SLOT_MEMORY.get(dev, SLOT_MEMORY["cpu"])
        slots = max(1, min(cap or self.max_rows or MAX_SLOTS.get(dev, 32), len(jobs), memory // (capacity * per_token)))
        return slots, capacity

    def _batched(self, jobs: list[Job], cap: int | None = None) -> None:
        compat.register_attention(SLOT_ATTENTION, slot_attention)
        slots, capacity = self._slots(jobs, cap)
        self._used_slots = slots
        pending = sorted(jobs, key=lambda j: -len(j.prompt))[::-1]  # pop() takes the longest first
        state = SlotState(capacity, slots)
        active: list[Job] = []
        while pending or active:
            while pending and len(active) < slots:
                job = pending.pop()
                if self._prefill(job, state, len(active)):
                    continue  # done after its first token
                active.append(job)
            if not active:
                continue
            ids = torch.tensor([[j.new[-1]] for j in active], dtype=torch.long, device=self.device)
            pos = torch.tensor([[j.length - 1] for j in active], dtype=torch.long, device=self.device)
            state.begin_step(torch.tensor([j.length - 1 for j in active], device=self.device), self.windows)
            with compat.attention(self.model, SLOT_ATTENTION):
                out = self.model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=1,
                                 evalsuite_slots=state)
            self.forward_calls += 1
            self.forwarded_tokens += ids.numel()
            logits = out.logits[:, -1]
            finished = [b for b, job in enumerate(active) if job.push(self._next(job, logits[b]), self.tokenizer)]
            for b in finished:
                self._finished(active[b])
            for b in reversed(finished):  # fill holes from the back so indices stay valid
                last = len(active) - 1
                if pending:
                    queued: Job | None = pending.pop()
                    while queued is not None and self._prefill(queued, state, b):
                        queued = pending.pop() if pending else None
                    if queued is not None:
                        active[b] = queued
                        continue
                if b != last:
                    state.move(last, b)
                    active[b] = active[last]
                active.pop()

    def _prefill(self, job: Job, state: SlotState, slot: int) -> bool:
        """Run the prompt alone (as at batch size 1), keep its keys and values in ``slot``, take
        its first token; whether the job is already done."""
        cache = compat.new_cache()
        ids = torch.tensor([job.prompt], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1,
                         **{self.cache_kw: cache})
        self.forward_calls += 1
        self.forwarded_tokens += ids.numel()
        state.store(slot, compat.cache_layers(cache))
        done = job.push(self._next(job, out.logits[0, -1]), self.tokenizer)
        if done:
            self._finished(job)
        return done


class SlotState:
    """Per-layer key/value buffers ``[slots, kv_heads, capacity, head_dim]`` and, during one
    decode step, each active row's position (where its new key goes; it attends to 0..pos)."""

    def __init__(self, capacity: int, slots: int) -> None:
        self.capacity = capacity
        self.slots = slots
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lengths: dict[int, int] = {}
        self.positions: torch.Tensor | None = None
        #: per layer, its window; per distinct window, this step's mask
        self.windows: tuple[int | None, ...] = ()
        self.masks: dict[int | None, torch.Tensor] = {}
        #: this step's positions and masks copied to the other devices a model spans
        self._moved: dict[tuple[torch.device, int | None], torch.Tensor] = {}
        self.width = 0

    def store(self, slot: int, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        if not self.keys:  # allocated on the first prompt: its layers give the shapes and dtype
            for k, _ in layers:
                shape = (self.slots, k.shape[1], self.capacity, k.shape[3])
                self.keys.append(k.new_zeros(shape))
                self.values.append(k.new_zeros(shape))
        n = layers[0][0].shape[-2]
        for i, (k, v) in enumerate(layers):
            self.keys[i][slot, :, :n] = k[0]
            self.values[i][slot, :, :n] = v[0]
        self.lengths[slot] = n

    def move(self, source: int, target: int) -> None:
        n = self.lengths.pop(source)
        for k, v in zip(self.keys, self.values):
            k[target, :, :n] = k[source, :, :n]
            v[target, :, :n] = v[source, :, :n]
        self.lengths[target] = n

    def begin_step(self, positions: torch.Tensor, windows: tuple[int | None, ...] = ()) -> None:
        rows = positions.shape[0]
        for b in range(rows):
            self.lengths[b] = int(positions[b]) + 1
        self.positions = positions
        self.width = int(positions.max()) + 1
        keys = torch.arange(self.width, device=positions.device)
        visible = keys[None, :] <= positions[:, None]
        self.windows = tuple(windows)
        self.masks = {None: visible[:, None, None, :]}
        self._moved = {}
        for window in {w for w in self.windows if w is not None}:  # transformers' sliding masks: keys > position - window
            self.masks[window] = (visible & (keys[None, :] > positions[:, None] - window))[:, None, None, :]

    def mask(self, layer: int, device: torch.device | None = None) -> torch.Tensor:
        window = self.windows[layer] if layer < len(self.windows) else None
        return self._on(self.masks[window], device, window)

    def positions_on(self, device: torch.device) -> torch.Tensor:
        assert self.positions is not None
        return self._on(self.positions, device, -1)

    def _on(self, tensor: torch.Tensor, device: torch.device | None, key: int | None) -> torch.Tensor:
        """``tensor`` on ``device`` (a layer of a model spread over GPUs), copied once per step."""
        if device is None or tensor.device == device:
            return tensor
        if (device, key) not in self._moved:
            self._moved[(device, key)] = tensor.to(device)
        return self._moved[(device, key)]


def slot_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                   evalsuite_slots: SlotState | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """One decode step: ``query``/``key``/``value`` ``[rows, heads, 1, dim]``. Each row's new key
    and value go into its slot at its position; the row attends to its slot up to there. The
    query heads sharing a key/value head ride as one query sequence (no key/value repeat)."""
    state = evalsuite_slots
    if state is None or state.positions is None:
        raise RuntimeError(f"the {SLOT_ATTENTION!r} attention needs the generator's SlotState")
    rows, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    layer = module.layer_idx
    keys, values = state.keys[layer], state.values[layer]
    index = torch.arange(rows, device=keys.device)
    positions = state.positions_on(keys.device)  # the layer's device where a model spans GPUs
    keys[index, :, positions] = key[:, :, 0].to(keys.device)
    values[index, :, positions] = value[:, :, 0].to(keys.device)
    q = query.reshape(rows, kv_heads, heads // kv_heads, dim)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, keys[:rows, :, :state.width], values[:rows, :, :state.width], attn_mask=state.mask(layer, keys.device), scale=scaling
    )
    return out.reshape(rows, heads, 1, dim).transpose(1, 2), None
