"""Scorers, registered by name: how one document's responses become its metric value.

A task YAML names its scorer (``scorer: acc_norm``); a task whose metric needs new arithmetic
adds one class here and one :func:`register_scorer` call, and nothing else in evalsuite
changes. The built-in scorers are the four the leaderboard needs:

* ``acc``: lm-eval's ``process_results`` gives the value; the prediction is the choice with the
  highest log-likelihood (ARC-style multiple choice, MMLU, Winogrande's partial evaluation).
* ``acc_norm``: the same value source; the prediction divides each log-likelihood by the
  choice's length in characters, as lm-eval's ``acc_norm`` does (ARC, HellaSwag).
* ``mc2``: TruthfulQA's probability mass on the true answers (lm-eval's value); its gold is
  the number of true answers (they come first among the choices).
* ``gsm8k_v1_strict``: a generation task scored by v1's strict ``#### <number>`` match with
  commas removed (lm-eval 0.4.13 also strips "." and "$", so its own scoring is not used).

Scorers see lm-eval's task object and the processed document; they import numpy only when
scoring, so the catalogue (read side) can ask whether a scorer generates without lm-eval.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class SampleScore:
    """The outcome of one document: what was predicted and the metric value."""

    value: float
    prediction: str
    loglikelihoods: tuple[float, ...] | None = None
    generation: str | None = None
    extracted: str | None = None


class Scorer:
    """Multiple choice scored by lm-eval's ``process_results``; the pick is the likeliest choice."""

    name: ClassVar[str] = "acc"
    #: True when the model generates text (``generate_until``) instead of scoring choices.
    generation: ClassVar[bool] = False

    def gold(self, lm_task: Any, doc: dict[str, Any]) -> int | str:
        """The right answer as stored with each sample: a choice index (or, generating, a text)."""
        gold = lm_task.doc_to_text(doc) if lm_task.multiple_input else lm_task.doc_to_target(doc)
        if isinstance(gold, str) and not gold.isdigit():
            gold = lm_task.doc_to_choice(doc).index(gold)
        return int(gold)

    def pick(self, lm_task: Any, doc: dict[str, Any], loglikelihoods: Any) -> int:
        import numpy as np

        return int(np.argmax(loglikelihoods))

    def score(self, lm_task: Any, doc: dict[str, Any], gold: str, responses: Sequence[Any],
              result_key: str) -> SampleScore:
        """One document's value from the backend's responses to its instances (in order)."""
        import numpy as np

        results = [(float(ll), bool(greedy)) for ll, greedy in responses]
        metrics = lm_task.process_results(doc, results)
        lls = np.array([r[0] for r in results])
        return SampleScore(float(metrics[result_key]), str(self.pick(lm_task, doc, lls)), tuple(float(x) for x in lls))


class NormalisedScorer(Scorer):
    """``acc_norm``: the pick divides each log-likelihood by its choice's length in characters."""

    name = "acc_norm"

    def pick(self, lm_task: Any, doc: dict[str, Any], loglikelihoods: Any) -> int:
        import numpy as np

        lengths = np.array([float(len(c)) for c in lm_task.doc_to_choice(doc)])
        return int(np.argmax(loglikelihoods / lengths))


class MC2Scorer(Scorer):
    """TruthfulQA's mc2; gold is the number of true answers (the first n choices are the true ones)."""

    name = "mc2"

    def gold(self, lm_task: Any, doc: dict[str, Any]) -> int | str:
        return sum(doc["mc2_targets"]["labels"])


_GSM8K_ANSWER = re.compile(r"#### (\-?[0-9\.\,]+)")
GSM8K_INVALID = "[invalid]"


def gsm8k_extract(text: str) -> str:
    """v1's strict GSM8K extraction: the first ``#### <number>``, commas removed."""
    match = _GSM8K_ANSWER.search(text)
    return match.group(1).strip().replace(",", "") if match else GSM8K_INVALID


class GSM8KStrictScorer(Scorer):
    """GSM8K as v1 scored it: the generated text's first ``#### <number>`` equals the gold's."""

    name = "gsm8k_v1_strict"
    generation = True

    def gold(self, lm_task: Any, doc: dict[str, Any]) -> int | str:
        return gsm8k_extract(doc["answer"])

    def score(self, lm_task: Any, doc: dict[str, Any], gold: str, responses: Sequence[Any],
              result_key: str) -> SampleScore:
        text = responses[0]
        extracted = gsm8k_extract(text)
        return SampleScore(float(extracted == gold), extracted, generation=text, extracted=extracted)


#: name -> scorer; a task YAML's ``scorer:`` is one of these names.
SCORERS: dict[str, Scorer] = {}


def register_scorer(scorer: Scorer) -> Scorer:
    """Make ``scorer`` available to task YAMLs under ``scorer.name`` (a name is registered once)."""
    if scorer.name in SCORERS and type(SCORERS[scorer.name]) is not type(scorer):
        raise ValueError(f"scorer '{scorer.name}' is already registered")
    SCORERS[scorer.name] = scorer
    return scorer


def get_scorer(name: str) -> Scorer:
    try:
        return SCORERS[name]
    except KeyError:
        from evalsuite.errors import EvalsuiteError

        raise EvalsuiteError(f"scorer '{name}' is not registered; use one of {', '.join(sorted(SCORERS))}") from None


for _scorer in (Scorer(), NormalisedScorer(), MC2Scorer(), GSM8KStrictScorer()):
    register_scorer(_scorer)
