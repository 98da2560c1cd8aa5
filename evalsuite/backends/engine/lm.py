"""``EngineLM``: lm-eval's ``TemplateLM`` whose log-likelihoods compute each shared prefix once.

Why not lm-eval's ``hf`` model: it forwards every (context, continuation) pair in full, so a
25-shot ARC question is run four times (once per choice), every MMLU question re-runs its
subject's 5-shot preamble, and the output layer and log-softmax run over every position of
every sequence although only the continuation positions are read.

The pair split (trailing context spaces move to the continuation, the whole string is encoded
and the continuation is what follows the context's encoding; an empty context becomes the
prefix token) is ``TemplateLM``'s own, inherited. The requests' model inputs go into one
:class:`~.prefix_tree.PrefixTree`, :func:`~.planner.plan_forwards` cuts it into forward passes, the
executor chosen at construction runs them, and :mod:`.scoring` reads the targets' log-probs.

A route that raises in a real run (an executor, a generation route: remote code meeting an
input the probe did not have) is abandoned for the model: the call is redone on the next exact
route (tree, then cache, then plain; batched, then exact, then plain), a route not probed yet is
probed first, and the event goes to :attr:`EngineLM.fallbacks` (the task's row and the run's
notes). Out of memory is not a defect of the route: the forward is split (:mod:`.memory`).
"""
from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from lm_eval.api.model import TemplateLM

from evalsuite import compat
from evalsuite.backends import BackendOptions
from evalsuite.backends.engine import capabilities, decisions, planner, scoring
from evalsuite.backends.engine.executors import Executor, Past, select_executor
from evalsuite.backends.engine.generation import Generator
from evalsuite.backends.engine.plain import PlainExecutor, plain_tally
from evalsuite.backends.engine.prefix_tree import PrefixTree, empty_context_pair, tree_of, truncated_inputs
from evalsuite.backends.engine.tokenize import resolve_max_length
from evalsuite.backends.engine.memory import RowOutOfMemory, device_budget, is_oom, release
from evalsuite.errors import EvalsuiteError

log = logging.getLogger(__name__)

#: Rows of one plain-executor forward when --batch-size is "auto".
PLAIN_ROWS = 8


@dataclass
class EngineStats:
    """What the calls since the last reset cost: tokens forwarded (padding included), real
    tokens (unique ones plus short shared openings recomputed per branch, less reused ones),
    unique tokens, positions scored, root-trunk tokens reused from an earlier call."""

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


@dataclass
class TokenLogprobs:
    """A text's token ids (no special tokens) and each token's log-probability given the ones
    before it, the first given the v1 empty-context prefix (the EOS token)."""

    tokens: list[int]
    logprobs: list[float]


class EngineLM(TemplateLM):
    """lm-eval ``LM`` whose log-likelihoods compute each shared token prefix once."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        options: BackendOptions,
        token_budget: int | None = None,
        max_length: int | None = None,
        attention: str | None = None,
        decision_key: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model  # a transformers causal LM in eval mode
        self.tokenizer = tokenizer
        self.options = options
        self._device = next(model.parameters()).device
        self.max_gen_toks = int(options.max_gen_toks)
        self._max_length = max_length or resolve_max_length(model.config, tokenizer)
        # --batch-size N (an int) caps the rows of one forward pass and the sequences decoded
        # together; by default ("auto") the token budget alone bounds a forward
        max_rows = options.batch_size if isinstance(options.batch_size, int) else None
        self.logits_dtype = compat.v1_logits_dtype(model)
        #: root trunks kept across calls (key: their tokens), least recent first
        self._trunk_memory: OrderedDict[tuple[int, ...], Past] = OrderedDict()
        self.stats = EngineStats()
        #: when set, called as ``answer_hook(indices, answers, done)`` after each forward pass (each
        #: finished generation) with the requests of the current call answered by it and the share
        #: of the call's forward passes (generations) done, so the request cache keeps answers and
        #: progress moves before the whole call returns
        self.answer_hook: Callable[[list[int], list[Any], float], None] | None = None
        self.lm_head = capabilities.head_function(model)[0]  # the probe scores through it
        self._max_rows, self._token_budget = max_rows, token_budget
        #: what went differently in the run than the capabilities said (a route abandoned), in order
        self.fallbacks: list[str] = []
        #: the request instances of the call being scored (their task and document name an error)
        self._instances: Sequence[Any] | None = None
        #: what is exact for this model, decided by inspection and a probe (:mod:`.capabilities`),
        #: or the decision an earlier run made for the same model content and engine code
        #: (:mod:`.decisions`, keyed by ``decision_key``)
        self._decision_key = decisions.full_key(decision_key, model, self._max_length, attention, options.generation)
        cached = decisions.load(self._decision_key) if self._decision_key else None
        self.decision_reused = cached is not None
        if cached is not None:
            self.capabilities = cached
        else:
            self.capabilities, self.lm_head = capabilities.decide(model, tokenizer, self._max_length, attention,
                                                                  self._probe, options.generation)
            if self._decision_key:
                decisions.store(self._decision_key, self.capabilities)
        self.executor = self._executor(self.capabilities.loglikelihood, self.capabilities.windows)
        self._set_budgets()
        self.generator = Generator(model, tokenizer, self._max_length, self.max_gen_toks, options.generation, max_rows,
                                   windows=self.capabilities.windows, route=self.capabilities.generation)
        self.stats.reset()  # the probe's forwards are not the run's

    def _set_budgets(self) -> None:
        """The planner's budgets for the current executor: the given token budget, else on CUDA
        one from the free memory (:func:`.memory.device_budget`), else the device's default."""
        budget, self.budget_note = (self._token_budget, None) if self._token_budget else device_budget(
            self.model, self._device, self.executor.copies_past)
        self.budgets = planner.Budgets.for_device(self._device.type, budget, self.executor.copies_past, self._max_rows)

    @property
    def engine_note(self) -> str:
        """Which executor and generation route this model runs on and why, whether the decision
        was reused from an earlier run, and any route abandoned during the run (for the run notes)."""
        parts = [self.capabilities.note]
        if self.decision_reused:
            parts.append("capability decision reused from an earlier run of this model and engine (not probed again)")
        budget_note = getattr(self, "budget_note", None)
        if budget_note:
            parts.append(budget_note)
        return "; ".join(parts + self.fallbacks)

    def _executor(self, name: str, windows: tuple[int | None, ...]) -> Executor | PlainExecutor:
        return select_executor(self.model, name, windows, capabilities.layer_types(self.model))

    def _probe(self, name: str, windows: tuple[int | None, ...], layer_types: list[str] | None,
               requests: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        """Per-request log-probs (float32) of ``requests`` through executor ``name``, with a small
        token budget so that trunks are kept and rows attend to pasts as in a real run."""
        saved = self.__dict__.get("executor"), self.__dict__.get("budgets"), self._trunk_memory
        self.executor = select_executor(self.model, name, windows, layer_types)
        self.budgets = capabilities.probe_budgets(requests, self._device.type, self.executor.copies_past)
        self._trunk_memory = OrderedDict()
        try:
            # two calls: the first keeps a root trunk, the second starts from it (as a task's
            # later documents start from the preamble the first ones computed)
            first = max(1, len(requests) // 2)
            tally = scoring.Tally(len(requests))
            with torch.inference_mode():
                for part in (range(first), range(first, len(requests))):
                    sub = scoring.Tally(len(part))
                    self.run_plan(tree_of([requests[i] for i in part], self.max_length), sub,
                                  logits_dtype=torch.float32)
                    for k, i in enumerate(part):
                        tally.logprobs[i] = sub.logprobs[k]
            return tally.logprobs
        finally:
            # written back as read, through the instance dict: during __init__'s probe neither is set
            # yet (None here), and __init__ sets both right after
            self.__dict__.update(executor=saved[0], budgets=saved[1])
            self._trunk_memory = saved[2]

    @property
    def token_budget(self) -> int:
        return self.budgets.token_budget

    def forget(self) -> None:
        """Drop the root trunks kept from earlier calls (benchmarks time each call from cold)."""
        self._trunk_memory.clear()

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (with ``device_map="auto"`` that is the first device)."""
        return self._device

    # ------------------------------------------------------------------ tokenization (TemplateLM)
    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """v1: an empty context is ``[eos_token_id]`` (lm-eval 0.4.13 would use BOS)."""
        return self.tokenizer.eos_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """No special tokens, ever: the leaderboard's v1 setting (HFLM with ``add_bos_token=False``)."""
        return self.tokenizer.encode(string, add_special_tokens=False)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """The ``(context, continuation)`` ids of one request, as :meth:`loglikelihood` makes them."""
        if context == "":
            return empty_context_pair(self.prefix_token_id, self.tok_encode(continuation))
        return self._encode_pair(context, continuation)

    def build_tree(self, pairs: Sequence[tuple[str, str]]) -> PrefixTree:
        """All requests' model inputs in one trie (left truncation to ``max_length`` applied)."""
        return tree_of([self.encode_pair(c, x) for c, x in pairs], self.max_length)

    # ------------------------------------------------------------------ log-likelihood
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        """``TemplateLM``'s (its pair split), without a tokenizing progress bar by default."""
        self._instances = requests
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._instances = None

    def loglikelihood_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """:meth:`loglikelihood` on plain ``(context, continuation)`` strings."""
        return self._loglikelihood_tokens([((c, x), *self.encode_pair(c, x)) for c, x in pairs])

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """``(sum of continuation log-probs, continuation is the greedy one)`` per request, in order."""
        if not requests:
            return []
        start = time.perf_counter()
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        while True:
            try:
                tally = self._score_pairs(pairs)
                break
            except RowOutOfMemory as exc:
                raise self._too_large(exc, "scoring") from None
            except Exception as exc:
                if is_oom(exc) or isinstance(exc, EvalsuiteError) or self.executor.name == "plain":
                    raise
                self._abandon_executor(exc)
        self.stats.seconds += time.perf_counter() - start
        return tally.results(self.logits_dtype)

    def _score_pairs(self, pairs: list[tuple[list[int], list[int]]]) -> scoring.Tally:
        """The requests through the current executor."""
        if self.executor.name == "plain":
            return self._plain(pairs)
        tree = tree_of(pairs, self.max_length)
        tally = scoring.Tally(len(pairs))
        self.stats.unique_tokens += tree.n_tokens
        with torch.inference_mode():
            self.run_plan(tree, tally, after_forward=self._answered_hook(tree, tally))
        return tally

    # ------------------------------------------------------------------ a route abandoned mid-run
    def _abandon_executor(self, exc: BaseException) -> None:
        """The executor raised in a real run: go to the next one that is exact for this model
        (probing it now if the decision did not), forget its pasts, note why."""
        old = self.executor.name
        declined = set(self.capabilities.declined) | {old}
        new = capabilities.next_route(old, declined)
        while new != "plain":
            off, error = capabilities.probe_path(
                new, self.capabilities.windows, capabilities.layer_types(self.model),
                *self._probe_inputs(), self._probe)
            if error is None and off <= capabilities.tolerance(self.model):
                break
            declined.add(new)
            new = capabilities.next_route(new, declined)
        self._trunk_memory.clear()
        self.executor = self._executor(new, self.capabilities.windows)
        self._set_budgets()
        self.capabilities = replace(self.capabilities, loglikelihood=new, declined=tuple(sorted(declined)))
        self._note_fallback(f"the {old} executor raised {capabilities.first_line(exc)} in the run: abandoned for this "
                            f"model, log-likelihoods redone on the {new} executor")

    def _probe_inputs(self) -> tuple[list[tuple[list[int], list[int]]], list[list[float]]]:
        """The capability probe's requests and their reference log-probs (lm-eval hf at batch 1)."""
        length = capabilities.probe_length(self.model, self.max_length, self.capabilities.windows)
        vocab = int(getattr(capabilities.text_config(self.model), "vocab_size", None) or len(self.tokenizer))
        requests = capabilities.probe_requests(vocab, length)
        reference = plain_tally(self.model, requests, max_length=self.max_length, batch_size=1,
                                logits_dtype=torch.float32).logprobs
        return requests, reference

    def _note_fallback(self, event: str) -> None:
        log.warning("%s", event)
        self.fallbacks.append(event)
        if self._decision_key:  # the next run starts on the route this one ended on
            decisions.store(self._decision_key, replace(self.capabilities,
                                                        reasons=self.capabilities.reasons + (event,)))

    def _too_large(self, exc: RowOutOfMemory, what: str) -> EvalsuiteError:
        """One line naming the task, document and length that do not fit even alone."""
        where = "a request"
        if self._instances is not None and 0 <= exc.request < len(self._instances):
            inst = self._instances[exc.request]
            task, doc = getattr(inst, "task_name", None), getattr(inst, "doc_id", None)
            where = f"{task or 'a task'} document {doc if doc is not None else '?'}"
        return EvalsuiteError(
            f"out of memory {what} {where} ({exc.length} tokens) even one row at a time on {self._device}; "
            f"free memory on the device, use a smaller --dtype, or more GPUs"
        )

    def _answered_hook(self, tree: PrefixTree, tally: scoring.Tally) -> Callable[[float], None] | None:
        """After each forward pass: hand the requests whose every target is now scored to
        :attr:`answer_hook` (each request once, with the value the call will return)."""
        hook = self.answer_hook
        if hook is None:
            return None
        needed = Counter(s.request for scores in tree.scores.values() for s in scores)
        pending = set(range(tally.n))

        def report(done_share: float) -> None:
            done = sorted(r for r in pending if len(tally.logprobs[r]) >= needed[r])
            pending.difference_update(done)
            hook(done, [tally.result(r, self.logits_dtype) for r in done], done_share)

        return report

    def _plain(self, requests: Sequence[tuple[list[int], list[int]]]) -> scoring.Tally:
        """The requests through the plain executor (the model's own full forward per input)."""
        rows = self.options.batch_size if isinstance(self.options.batch_size, int) else PLAIN_ROWS
        tally = plain_tally(self.model, requests, max_length=self.max_length, batch_size=rows,
                            logits_dtype=self.logits_dtype, equal_lengths=self.capabilities.equal_lengths)
        self.stats.forward_calls += -(-len({tuple(c + x) for c, x in requests}) // rows)
        self.stats.oom_splits += tally.oom_splits
        return tally

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError("the leaderboard tasks need no rolling log-likelihoods")

    def run_plan(self, tree: PrefixTree, tally: scoring.Tally, logits_dtype: torch.dtype | None = None,
                 after_forward: Callable[[float], None] | None = None) -> None:
        """Plan the tree against the remembered root trunks, then run the steps in order
        (``after_forward`` is called after each forward pass with the share of them done)."""
        the_plan = planner.plan_forwards(tree, self.budgets, list(self._trunk_memory))
        self.stats.reused_tokens += the_plan.reused_tokens
        pasts: dict[int, Past] = {}
        passes, done = sum(isinstance(step, planner.Forward) for step in the_plan.steps), 0
        for step in the_plan.steps:
            if isinstance(step, planner.Forward):
                kept = self._forward_safe(step.rows, pasts, tree, tally, keep=step.keep is not None,
                                          logits_dtype=logits_dtype)
                if step.keep is not None:
                    assert kept is not None  # a kept forward is one row: it returns its past or raises
                    pasts[step.keep] = kept
                done += 1
                if after_forward is not None:
                    after_forward(done / passes)
            elif isinstance(step, planner.Reuse):
                source = self._trunk_memory[step.key]
                pasts[step.out] = [(k[:, :, :step.length], v[:, :, :step.length]) for k, v in source]
            elif isinstance(step, planner.Remember):  # the planner's own keep-and-evict rule
                for evicted in planner.remember(list(self._trunk_memory), step.key):
                    del self._trunk_memory[evicted]
                self._trunk_memory[step.key] = pasts[step.past]
                self._trunk_memory.move_to_end(step.key)
            elif isinstance(step, planner.Release):
                for past in step.pasts:
                    pasts.pop(past, None)

    def _forward_safe(self, rows: list[planner.Row], pasts: dict[int, Past], tree: PrefixTree,
                      tally: scoring.Tally, keep: bool = False, logits_dtype: torch.dtype | None = None) -> Past | None:
        """One planned forward; on out-of-memory split the batch in halves and retry each."""
        executor = self.executor
        assert isinstance(executor, Executor)  # planned forwards never run on "plain" (plain_tally does)
        try:
            hidden, kept = executor.forward(rows, [None if r.past is None else pasts[r.past] for r in rows],
                                                 tree, keep)
        except Exception as exc:  # noqa: BLE001 - only OOM is handled
            if not is_oom(exc):
                raise
            release(self._device)
            if len(rows) == 1:
                row = rows[0]
                past = 0 if row.past is None else _past_tokens(pasts[row.past])
                raise RowOutOfMemory(_request_below(tree, row.nodes[-1]), past + len(row.nodes)) from None
            self.stats.oom_splits += 1
            log.warning("out of memory on a batch of %d rows; splitting it in two", len(rows))
            half = len(rows) // 2
            self._forward_safe(rows[:half], pasts, tree, tally, logits_dtype=logits_dtype)
            self._forward_safe(rows[half:], pasts, tree, tally, logits_dtype=logits_dtype)
            return None
        width = max(len(r.nodes) for r in rows)
        self.stats.forward_calls += 1
        self.stats.forwarded_tokens += len(rows) * width
        self.stats.real_tokens += sum(len(r.nodes) for r in rows)
        self.stats.scored_positions += scoring.score(self.lm_head, hidden, rows, tree, tally,
                                                     logits_dtype or self.logits_dtype)
        return kept

    # ------------------------------------------------------------------ per-token log-probs
    def token_logprobs(self, texts: Sequence[str]) -> list[TokenLogprobs]:
        """Each text's tokens and per-token log-probabilities (first token given the EOS prefix):
        one forward per document, no few-shot context, through the same tree and planner."""
        encoded = [self.tok_encode(t) for t in texts]
        requests = []
        for ids in encoded:
            if not ids:
                continue
            inputs = truncated_inputs([self.prefix_token_id], ids, self.max_length)
            requests.append((inputs, ids[-len(inputs):]))
        if self.executor.name == "plain":  # (inputs + the last target, targets): the same positions scored
            tally = self._plain([(inputs[:1], inputs[1:] + targets[-1:]) for inputs, targets in requests])
        else:
            tree = PrefixTree()
            for index, (inputs, targets) in enumerate(requests):
                tree.insert(index, inputs, targets)
            tree.finalize()
            tally = scoring.Tally(len(requests))
            with torch.inference_mode():
                self.run_plan(tree, tally)
        out, at = [], 0
        for ids in encoded:
            if not ids:
                out.append(TokenLogprobs([], []))
                continue
            lps = tally.logprobs[at]
            out.append(TokenLogprobs(ids[-len(lps):], [float(x) for x in lps]))
            at += 1
        return out

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations cut at the first stop string, as HFLM's (see :mod:`.generation`)."""
        gen = self.generator
        calls, tokens, splits = gen.forward_calls, gen.forwarded_tokens, gen.oom_splits
        gen.fallback = self._abandon_generation  # a route that raises: the next exact one
        hook, finished = self.answer_hook, []

        def on_done(job: Any) -> None:
            finished.append(job.index)
            hook([job.index], [job.text(self.tokenizer)], min(1.0, len(finished) / len(requests)))  # type: ignore[misc]

        gen.on_done = None if hook is None else on_done
        self._instances = requests
        try:
            out = gen.generate(requests)
        except RowOutOfMemory as exc:
            raise self._too_large(exc, "generating for") from None
        finally:
            self._instances = None
            gen.on_done = None
        self.stats.forward_calls += gen.forward_calls - calls
        self.stats.forwarded_tokens += gen.forwarded_tokens - tokens
        self.stats.oom_splits += gen.oom_splits - splits
        return out

    def _abandon_generation(self, exc: BaseException) -> None:
        """The generation route raised in a real run: the next route exact for this model (a
        route not probed yet is probed against ``generate`` first), every prompt of the call again."""
        old = self.generator.route
        declined = set(self.capabilities.declined) | {old}
        new = capabilities.next_route(old, declined)
        tol = capabilities.tolerance(self.model)
        while new != "plain":
            length = capabilities.probe_length(self.model, self.max_length, self.capabilities.windows)
            try:
                off = capabilities.probe_generation(self.model, self.tokenizer, new, self.capabilities.windows,
                                                    min(length, 96))
            except Exception:  # noqa: BLE001 - a route that cannot run this model is skipped
                off = float("inf")
            if off <= tol:
                break
            declined.add(new)
            new = capabilities.next_route(new, declined)
        self.generator.route = new
        self.capabilities = replace(self.capabilities, generation=new, declined=tuple(sorted(declined)))
        self._note_fallback(f"{old} generation raised {capabilities.first_line(exc)} in the run: abandoned for this "
                            f"model, the call's prompts decoded again on the {new} route")


def _past_tokens(past: Past) -> int:
    return int(past[0][0].shape[-2]) if past else 0


def _request_below(tree: PrefixTree, node: int) -> int:
    """A request whose input runs through ``node`` (the first scored node found below it)."""
    while node not in tree.scores and tree.children[node]:
        node = next(iter(tree.children[node].values()))
    return tree.scores[node][0].request if node in tree.scores else -1
