"""The leaderboard v1 few-shot stream, and an lm-eval sampler that serves it.

At the commit the leaderboard ran (lm-eval b281b09), each task owned ONE ``random.Random``
seeded 42: it first shuffled the evaluation documents, then each document, walking the
shuffled order, drew its own ``rnd.sample(train_docs, k)``. So the shots a document gets
depend on the whole order, and a ``--limit N`` run is the first N documents of that order with
exactly the shots of the full run. lm-eval 0.4 draws with ``Random(1234)`` in dataset order,
which gives different prompts; this module reproduces v1.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from lm_eval.api.samplers import ContextSampler

V1_SEED = 42


@dataclass(frozen=True)
class FewShotSchedule:
    """Evaluation order and, per evaluated row index, the training row indices of its shots."""

    order: tuple[int, ...]
    shots: dict[int, tuple[int, ...]]

    def position(self) -> dict[int, int]:
        return {doc: pos for pos, doc in enumerate(self.order)}


def v1_schedule(n_eval: int, n_train: int, k: int, *, random_shots: bool = True) -> FewShotSchedule:
    """The v1 evaluation order and shot draws for a task with ``n_eval`` docs and ``n_train`` shots.

    ``random_shots=False`` (MMLU: the first k dev rows) and ``k == 0`` (TruthfulQA) still
    shuffle the order with seed 42, exactly as the v1 evaluator did for every task.
    """
    rnd = random.Random()
    rnd.seed(V1_SEED)
    order = list(range(n_eval))
    rnd.shuffle(order)
    shots: dict[int, tuple[int, ...]]
    if k == 0:
        shots = {i: () for i in order}
    elif not random_shots:
        fixed = tuple(range(k))
        shots = {i: fixed for i in order}
    else:
        shots = {i: tuple(rnd.sample(range(n_train), k)) for i in order}
    return FewShotSchedule(tuple(order), shots)


class ShotDoc(dict):
    """A processed few-shot document. What the task renders from it (text, target, choices) is
    memoized on the object itself (``rendered``, see ``evalsuite.tasks``), so a training row
    drawn as a shot by many documents is rendered once; the memo lives and dies with the
    document, so it can never answer for another one."""

    __slots__ = ("rendered",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rendered: dict[tuple[str, str | None], Any] = {}


class ShotPool:
    """The few-shot split's rows, each processed by the task's own ``process_docs`` on first use.

    The v1 stream draws shots by row index, so only the rows actually drawn by the documents
    being evaluated need processing: a 50-document HellaSwag run draws 500 of its 39,905
    training rows. :meth:`prepare` processes the missing rows of a batch in one call.
    """

    def __init__(self, rows: Sequence[dict[str, Any]], process: Callable[[Any], Any] | None = None) -> None:
        self._rows = rows
        self._process = process
        self._docs: dict[int, ShotDoc] = {}

    @property
    def n_processed(self) -> int:
        return len(self._docs)

    def prepare(self, indices: Iterable[int]) -> None:
        missing = sorted(set(indices).difference(self._docs))
        if not missing:
            return
        from evalsuite.tasks.data import process_rows

        docs = process_rows(self._process, [self._rows[i] for i in missing])
        self._docs.update(zip(missing, map(ShotDoc, docs)))

    def __getitem__(self, index: int) -> ShotDoc:
        if index not in self._docs:
            self.prepare([index])
        return self._docs[index]


class ScheduledSampler(ContextSampler):
    """An lm-eval sampler that returns the shots named by a schedule instead of drawing them.

    lm-eval's ``ConfigurableTask.fewshot_context`` asks its sampler for ``n`` documents without
    saying for which evaluation document; :meth:`serving` tells it. The documents come from a
    :class:`ShotPool` (``pool``), set by the task that owns the sampler. Formatting, delimiters
    and templates stay lm-eval's.
    """

    def __init__(self, df: Sequence[dict[str, Any]] | None = None, **kwargs: Any) -> None:
        super().__init__(df, **kwargs)
        self._next: tuple[int, ...] | None = None
        self.pool: ShotPool | None = None

    @contextmanager
    def serving(self, indices: Sequence[int]) -> Iterator[None]:
        self._next = tuple(indices)
        try:
            yield
        finally:
            self._next = None

    def sample(self, n: int, eval_doc: Any = None, df: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
        if self._next is None:
            raise RuntimeError("ScheduledSampler.sample called outside serving(); the shots would be unscheduled")
        if len(self._next) != n:
            raise RuntimeError(f"schedule holds {len(self._next)} shots but {n} were asked for")
        if self.pool is None:
            raise RuntimeError("ScheduledSampler has no shot pool; the task must set sampler.pool")
        return [self.pool[i] for i in self._next]
