"""Contamination checks: how much of a benchmark could a model have memorised?

Two scores per benchmark document, both from the model's token log-probabilities of the
document text alone (one forward pass, no few-shot context, no prompt template):

* **Min-K% Prob** (Shi et al. 2023, "Detecting Pretraining Data from Large Language Models",
  arXiv 2310.16789): the mean log-probability of the k% least likely tokens of the text
  (k = 20% by default, at least one token). Text seen in training rarely has very unlikely
  tokens, so a higher (less negative) value points to memorisation. The raw value depends on
  the model and the text, so it is a ranking score, not a calibrated test.
* **The SOLAR instruct card's reference comparison** (the ``minkprob_w/_ref`` score of
  swj0419/detect-pretrain-code-contamination, which the card reports as ``result < 0.1, %``):
  a *reference* model continues the first 40% of the document's words ``neighbours`` times by
  sampling (as many new tokens as the document has words left); the checked model scores each
  such neighbour and the document by their mean token log-probability (neighbours cut at 150
  tokens); the document's score is the fraction of neighbours the checked model finds MORE
  likely than the document. A document the model prefers to nearly all of its paraphrase-like
  neighbours (score < 0.1) is flagged; the card reads a task as contaminated when more than
  0.9 of its documents are flagged.

With a reference model the cheap calibrated difference ``min_k_delta`` (Min-K% of the model
minus that of the reference, the reference-model idea of Carlini et al. applied to Min-K%) is
stored as well. Which score flags a document is stated in every summary (:class:`Rule`).

"The document text" is the benchmark's raw fields, not the evaluation prompt, as the method's
code forms it: question + " " + gold answer (ARC, MMLU, TruthfulQA with its mc1 gold answer,
GSM8K with its worked solution), HellaSwag's query + " " + gold ending, and Winogrande's
sentence with the blank filled by the right option (:func:`document_text`).

What this can show: that a model assigns a benchmark's exact text unusually high likelihood,
relative to a reference or to its own neighbours of the text. What it cannot show: that a
score is inflated (a model can memorise and still answer wrongly, or learn the answers from a
paraphrase this check never sees), nor clear a model (contamination through rephrased data
leaves the exact text unlikely); and on a model trained on text like the benchmark's the
scores move for unseen documents too.
"""
from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evalsuite.errors import DataFormatError, EvalsuiteError, MissingDataError
from evalsuite.analysis.paired_stats import bootstrap_means

if TYPE_CHECKING:
    from evalsuite.config import RunConfig

DEFAULT_K = 0.20
#: Words of the document given to the reference model before it samples a neighbour.
PREFIX_RATIO = 0.4
#: Sampling as the method's code ran it: transformers' then-default top-k 50 at temperature 1
#: (transformers 5 no longer filters by default, so it is set explicitly).
SAMPLING_TOP_K = 50
#: Neighbours per document in the card's method.
DEFAULT_NEIGHBOURS = 100
#: Neighbours are scored on at most this many tokens (the method truncates them so).
NEIGHBOUR_MAX_TOKENS = 150
#: The card's per-document threshold: flagged when fewer than 10% of neighbours beat the document.
NEIGHBOUR_THRESHOLD = 0.1
#: The card's task-level reading: "contaminated" when more than this fraction is flagged.
TASK_CONTAMINATED_RATE = 0.9
#: Without a reference there is no calibrated threshold; this default is a stated convention:
#: the k% least likely tokens average a probability above e^-3 (about 1 in 20).
DEFAULT_MIN_K_THRESHOLD = -3.0
BOOTSTRAP_SAMPLES = 2000
SEED = 20261130
TABLE = "contamination"


# -- scores ----------------------------------------------------------------------------------
def min_k_prob(logprobs: Sequence[float], k: float = DEFAULT_K) -> float:
    """Mean log-probability of the ``k`` fraction of least likely tokens (at least one)."""
    if not 0 < k <= 1:
        raise EvalsuiteError(f"k must be a fraction in (0, 1], got {k}; e.g. --k 0.2 for Min-20%")
    values = np.sort(np.asarray(logprobs, dtype=float))
    if values.size == 0:
        return math.nan
    count = max(1, int(values.size * k))
    return float(values[:count].mean())


def neighbour_rank(doc_mean_logprob: float, neighbour_mean_logprobs: Sequence[float]) -> float:
    """Fraction of neighbours the model finds more likely (lower loss) than the document."""
    values = np.asarray(neighbour_mean_logprobs, dtype=float)
    return float(np.mean(values > doc_mean_logprob)) if values.size else math.nan


@dataclass(frozen=True)
class Rule:
    """Which score flags a document, stated with its threshold in every summary."""

    score: str  # "neighbour_rank" | "min_k_delta" | "min_k"
    threshold: float

    def flags(self, value: float) -> bool:
        if value is None or math.isnan(value):
            return False
        return value < self.threshold if self.score == "neighbour_rank" else value > self.threshold

    @property
    def text(self) -> str:
        if self.score == "neighbour_rank":
            return f"fewer than {self.threshold:g} of the reference's neighbours more likely (SOLAR card)"
        if self.score == "min_k_delta":
            return f"Min-K% above the reference's by more than {self.threshold:g}"
        return f"Min-K% above {self.threshold:g} (no reference: uncalibrated)"


def default_rule(reference: bool, neighbours: int, threshold: float | None = None) -> Rule:
    if reference and neighbours > 0:
        return Rule("neighbour_rank", NEIGHBOUR_THRESHOLD if threshold is None else threshold)
    if reference:
        return Rule("min_k_delta", 0.0 if threshold is None else threshold)
    return Rule("min_k", DEFAULT_MIN_K_THRESHOLD if threshold is None else threshold)


def check_threshold(rule: Rule) -> None:
    """A finite threshold, and for the neighbour rank (a fraction of neighbours) one in (0, 1]:
    NaN flags nothing and 0 or infinity flag nothing or everything, whatever the model did."""
    if not math.isfinite(rule.threshold):
        raise EvalsuiteError(f"--threshold must be a finite number, got {rule.threshold}")
    if rule.score == "neighbour_rank" and not 0 < rule.threshold <= 1:
        raise EvalsuiteError(f"--threshold is a fraction of neighbours with --reference, in (0, 1] (default "
                             f"{NEIGHBOUR_THRESHOLD}), got {rule.threshold}")


# -- documents -------------------------------------------------------------------------------
def document_text(task: str, doc: dict[str, Any]) -> str:
    """The text whose likelihood is checked: the benchmark's own fields, no prompt template,
    as the task's YAML declares them (``contamination_text``, a Jinja template of the document)."""
    from evalsuite.tasks.catalogue import load_spec

    from jinja2.exceptions import SecurityError, TemplateSyntaxError

    spec = load_spec(task)
    if spec.contamination_text is None:
        raise EvalsuiteError(f"task '{task}' declares no contamination_text (the document fields whose text is "
                             "checked); add one to its YAML (docs/tasks.md)")
    try:
        return _text_template(spec.contamination_text).render(doc)
    except (SecurityError, TemplateSyntaxError) as exc:
        raise EvalsuiteError(f"{spec.folder / (task + '.yaml')}: contamination_text cannot be used ({exc}); "
                             "write it from the document's fields (docs/tasks.md)") from None


@lru_cache(maxsize=64)
def _text_template(source: str) -> Any:
    """The task file's template, compiled once; sandboxed, since a task file may come from a
    user's folder (it reads the document's fields and calls plain str/list methods, no more)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False).from_string(source)


@dataclass(frozen=True)
class Document:
    task: str
    subtask: str | None
    doc_index: int
    eval_position: int
    text: str

    @property
    def text_hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]


def load_documents(tasks: Sequence[str] | str | None, data_dir: str | Path | None = None,
                   limit: int | None = None) -> list[Document]:
    """The documents of ``tasks`` in v1 evaluation order (``limit``: the same prefix a run uses)."""
    from evalsuite.tasks.data import resolve_data_dir
    from evalsuite.tasks import LoadedTask, expand_tasks, load_spec

    root = resolve_data_dir(data_dir)
    return documents_of([LoadedTask(load_spec(name), root) for name in expand_tasks(tasks)], limit)


def documents_of(tasks: Sequence[Any], limit: int | None = None) -> list[Document]:
    """The documents of loaded tasks in v1 evaluation order (``limit``: the same prefix a run uses)."""
    docs: list[Document] = []
    for task in tasks:
        name = task.spec.name
        for unit in task.units:
            order = unit.schedule.order if limit is None else unit.schedule.order[:limit]
            for position, local in enumerate(order):
                docs.append(Document(name, unit.subtask, unit.row_indices[local], position,
                                     document_text(name, unit.docs[local])))
    return docs


# -- log-probabilities -------------------------------------------------------------------------
def token_logprobs(lm: Any, texts: Sequence[str]) -> list[Any]:
    """Per text, its tokens and their log-probabilities from the engine (EOS in front):
    :meth:`evalsuite.backends.engine.EngineLM.token_logprobs`."""
    return list(lm.token_logprobs(list(texts)))


def sample_neighbours(ref_lm: Any, text: str, count: int, seed: int, ratio: float = PREFIX_RATIO) -> list[str]:
    """``count`` sampled continuations by the reference of the first ``ratio`` of the words."""
    import torch

    words = text.split()
    cut = math.ceil(len(words) * ratio)
    prefix = " ".join(words[:cut])
    tokenizer, model = ref_lm.tokenizer, ref_lm.model
    ids = [tokenizer.eos_token_id, *tokenizer(prefix, add_special_tokens=False)["input_ids"]]
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    with torch.no_grad():
        output = model.generate(
            torch.tensor([ids], device=device), attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=device),
            do_sample=True, temperature=1.0, top_p=1.0, top_k=SAMPLING_TOP_K, max_new_tokens=max(1, len(words) - cut), min_new_tokens=1,
            num_return_sequences=count,
            pad_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.batch_decode(output[:, 1:], skip_special_tokens=True)


# -- the check -------------------------------------------------------------------------------
@dataclass
class DocumentScore:
    document: Document
    n_tokens: int
    min_k: float
    mean_logprob: float
    ref_min_k: float = math.nan
    ref_mean_logprob: float = math.nan
    neighbour_rank: float = math.nan
    n_neighbours: int = 0

    @property
    def min_k_delta(self) -> float:
        return self.min_k - self.ref_min_k

    def value(self, score: str) -> float:
        return float(getattr(self, score))


def score_documents(lm: Any, docs: Sequence[Document], k: float = DEFAULT_K) -> list[DocumentScore]:
    """Min-K% and mean log-probability of every document under ``lm`` (one forward each)."""
    scored = token_logprobs(lm, [d.text for d in docs])
    return [DocumentScore(d, len(s.logprobs), min_k_prob(s.logprobs, k),
                          float(np.mean(s.logprobs)) if s.logprobs else math.nan)
            for d, s in zip(docs, scored, strict=True)]


def add_reference(scores: Sequence[DocumentScore], ref_scores: Sequence[DocumentScore]) -> None:
    for mine, ref in zip(scores, ref_scores, strict=True):
        mine.ref_min_k, mine.ref_mean_logprob = ref.min_k, ref.mean_logprob


def add_neighbour_ranks(lm: Any, scores: Sequence[DocumentScore], neighbours: Sequence[Sequence[str]],
                        progress: bool = False, desc: str = "neighbours") -> None:
    """The card's score for each document from its (reference-sampled) neighbours."""
    from tqdm.auto import tqdm

    pairs = zip(scores, neighbours, strict=True)
    for score, texts in tqdm(pairs, total=len(scores), desc=desc, unit="doc", disable=not progress, file=sys.stderr):
        scored = token_logprobs(lm, list(texts))
        means = [float(np.mean(s.logprobs[:NEIGHBOUR_MAX_TOKENS])) for s in scored if s.logprobs]
        score.neighbour_rank = neighbour_rank(score.mean_logprob, means)
        score.n_neighbours = len(means)


def _doc_seed(doc: Document, seed: int) -> int:
    return int(hashlib.sha256(f"{seed}:{doc.text_hash}".encode()).hexdigest()[:8], 16)


def neighbours_for(ref_lm: Any, docs: Sequence[Document], count: int, seed: int = SEED,
                   progress: bool = False) -> list[list[str]]:
    """Neighbours of every document, seeded per document text (so reruns sample the same)."""
    from tqdm.auto import tqdm

    return [sample_neighbours(ref_lm, d.text, count, _doc_seed(d, seed))
            for d in tqdm(docs, desc="neighbours", unit="doc", disable=not progress, file=sys.stderr)]


@dataclass
class TaskSummary:
    """One task of one check: documents, the rule, the flagged fraction and its 95% interval."""

    model: str
    reference: str | None
    task: str
    n: int
    flagged: int
    rate: float
    low: float
    high: float
    rule: str
    mean_min_k: float
    mean_ref_min_k: float
    k: float = DEFAULT_K

    @property
    def card_rule(self) -> bool:
        """Whether documents were flagged by the card's neighbour rule, the one its task-level reading is for."""
        return "SOLAR card" in self.rule

    @property
    def likely_contaminated(self) -> bool:
        """The card's task-level reading; never set by another rule (their rates mean something else)."""
        return self.card_rule and self.rate > TASK_CONTAMINATED_RATE


def bootstrap_interval(flags: Sequence[bool], samples: int = BOOTSTRAP_SAMPLES, seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the flagged fraction (documents resampled)."""
    values = np.asarray(flags, dtype=float)
    if values.size == 0:
        return math.nan, math.nan
    means = bootstrap_means(values, None, np.random.default_rng(seed), samples)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def summarize(frame: Any) -> list[TaskSummary]:
    """Per (check, model, task) summaries of stored document rows."""
    out: list[TaskSummary] = []
    if frame is None or frame.empty:
        return out
    for (_, model, task), part in frame.groupby(["check_id", "model", "task"], sort=False):
        flags = part["flagged"].astype(bool).tolist()
        low, high = bootstrap_interval(flags)
        ref = part["reference"].iloc[0]
        out.append(TaskSummary(model, ref if isinstance(ref, str) else None, task, len(flags), int(sum(flags)),
                               float(np.mean(flags)), low, high, str(part["rule"].iloc[0]),
                               float(part["min_k"].mean()), float(part["ref_min_k"].mean()), float(part["k"].iloc[0])))
    return out


@dataclass
class ContaminationResult:
    check_id: str
    results_dir: Path
    rule: Rule
    k: float
    summaries: list[TaskSummary] = field(default_factory=list)

    def table(self) -> str:
        return format_summaries(self.summaries)


def format_summaries(summaries: Sequence[TaskSummary]) -> str:
    header = ["model", "reference", "task", "docs", "flagged", "rate", "95% CI", "Min-K% model", "Min-K% ref"]
    body = [[s.model, s.reference or "—", s.task, str(s.n), str(s.flagged), f"{s.rate:.2f}",
             f"[{s.low:.2f}, {s.high:.2f}]", f"{s.mean_min_k:.3f}",
             "—" if math.isnan(s.mean_ref_min_k) else f"{s.mean_ref_min_k:.3f}"] for s in summaries]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *body]]
    rules = sorted({s.rule for s in summaries})
    notes = [f"flagged: {r}" for r in rules]
    if any(s.card_rule for s in summaries):
        notes.append(f"the card reads a task as contaminated when more than {TASK_CONTAMINATED_RATE} of its "
                     "documents are flagged; the interval shows how far a rate on these documents can be trusted")
    return "\n".join(lines + [""] + notes)


def new_check_id() -> str:
    import secrets

    return "c-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def check(models: Sequence[str] | str | None = None, *, config: RunConfig | None = None, reference: str | None = None,
          k: float = DEFAULT_K, neighbours: int = DEFAULT_NEIGHBOURS, threshold: float | None = None, seed: int = SEED,
          **options: Any) -> ContaminationResult:
    """Score every document of ``tasks`` under each model (and the reference); store and summarize.

    The models, tasks, limit, data, device, dtype, batch size, results folder, remote code and
    progress come from a :class:`~evalsuite.config.RunConfig` (or its fields as keyword
    arguments); the backend is always the evalsuite engine.
    """
    from evalsuite.config import RunConfig, split_names

    config = RunConfig.build(config, models=models, **options)
    if not split_names(config.models):
        raise EvalsuiteError("--models needs at least one model to check")
    if neighbours < 0:
        raise EvalsuiteError(f"--neighbours must be 0 or more, got {neighbours}")
    min_k_prob([0.0], k)  # validates k before anything loads
    from evalsuite.backends.registry import logprob_backend

    config = RunConfig.build(config, backend=logprob_backend()).validate()  # always the log-probability backend
    assert isinstance(config.models, tuple) and isinstance(config.tasks, tuple)  # validate() made both tuples of names
    names, device, dtype, batch_size = list(config.models), config.device, config.dtype, config.batch_size
    progress, results_dir = config.progress, config.results_dir
    check_threshold(default_rule(reference is not None, neighbours, threshold))
    # the run's preparation (evalsuite.run.preparation): every model resolved, sized and opened
    # before the reference's pass (hours on a full split) rather than when a model's turn comes
    from evalsuite.run.preparation import load_task_data, open_models, resolve_models
    from evalsuite.store.status import TaskStatus
    from evalsuite.store.parquet_store import ResultsStore
    from evalsuite.tasks.data import parse_data_revision, resolve_data_dir

    every = [*names, *([reference] if reference is not None else [])]
    specs = resolve_models(config, every)
    ResultsStore(results_dir).check_writable(create=False)
    loaded, unavailable = load_task_data(list(config.tasks), resolve_data_dir(config.data_dir),
                                         parse_data_revision(config.data_revision))
    if unavailable:  # a check covers every task asked for: a task without (good) data is refused
        status, why = next(iter(unavailable.values()))
        raise (MissingDataError if status == TaskStatus.MISSING else DataFormatError)(why)
    sources = {name: model.source for name, model in zip(every, open_models(specs, config))}
    rule = default_rule(reference is not None, neighbours, threshold)
    docs = documents_of(list(loaded.values()), config.limit)
    check_id = new_check_id()
    created = datetime.now(UTC)
    ref_scores: list[DocumentScore] | None = None
    ref_neighbours: list[list[str]] | None = None
    ref_id = None
    if reference is not None:
        ref_lm, reference, ref_id = _load(sources[reference], device, dtype, batch_size)
        _say(f"reference {reference}: scoring {len(docs)} documents")
        ref_scores = score_documents(ref_lm, docs, k)
        if rule.score == "neighbour_rank":
            ref_neighbours = neighbours_for(ref_lm, docs, neighbours, seed, progress)
        del ref_lm
    result = ContaminationResult(check_id, Path(results_dir), rule, k)
    for name in names:
        started = time.perf_counter()
        lm, name, model_id = _load(sources[name], device, dtype, batch_size)
        scores = score_documents(lm, docs, k)
        if ref_scores is not None:
            add_reference(scores, ref_scores)
        if ref_neighbours is not None:
            add_neighbour_ranks(lm, scores, ref_neighbours, progress, desc=f"{name} neighbours")
        rows = rows_of(check_id, name, model_id, reference, ref_id, scores, rule, k, created)
        write_rows(results_dir, check_id, name, rows)
        _say(f"{name}: {len(scores)} documents in {time.perf_counter() - started:.0f} s")
        del lm
    result.summaries = summarize(read_checks(results_dir, check_id=check_id))
    return result


def _load(source: Any, device: str, dtype: str | None, batch_size: int | str) -> tuple[Any, str, str]:
    """The evalsuite engine for a prepared model (:func:`evalsuite.run.preparation.open_models`: resolved,
    sized and opened), its alias (as runs store it) and its weights identity."""
    from evalsuite.backends import BackendOptions, build_backend
    from evalsuite.backends.registry import logprob_backend

    from evalsuite.models.loading import resolve_dtype

    spec = source.spec
    dtype = resolve_dtype(spec, device, dtype)[0]
    lm = build_backend(logprob_backend(), source, BackendOptions(device=device, dtype=dtype, batch_size=batch_size))
    return lm, spec.alias, source.identity


def rows_of(check_id: str, model: str, model_id: str | None, reference: str | None, reference_id: str | None,
            scores: Sequence[DocumentScore], rule: Rule, k: float, created: datetime) -> list[dict[str, Any]]:
    rows = []
    for s in scores:
        d = s.document
        rows.append({
            "check_id": check_id, "model": model, "model_id": model_id, "reference": reference,
            "reference_id": reference_id, "task": d.task, "subtask": d.subtask, "doc_index": d.doc_index,
            "eval_position": d.eval_position, "text_hash": d.text_hash, "n_tokens": s.n_tokens, "k": k,
            "min_k": s.min_k, "mean_logprob": s.mean_logprob, "ref_min_k": s.ref_min_k,
            "ref_mean_logprob": s.ref_mean_logprob, "min_k_delta": s.min_k_delta,
            "neighbour_rank": s.neighbour_rank, "n_neighbours": s.n_neighbours, "rule": rule.text,
            "threshold": rule.threshold, "flagged": rule.flags(s.value(rule.score)), "created_at": created,
        })
    return rows


# -- the results store (table ``contamination``: records.ContaminationRecord) ---------------------
def write_rows(results_dir: str | Path, check_id: str, model: str, rows: list[dict[str, Any]]) -> None:
    from evalsuite.store.parquet_store import ResultsStore, slug

    ResultsStore(results_dir).write_records(TABLE, f"{check_id}__{slug(model)}", rows)


def read_checks(results_dir: str | Path, *, check_id: str | None = None, models: Sequence[str] | None = None,
                latest: bool = False) -> Any:
    """Stored document rows (``latest``: only each model's most recent check)."""
    from evalsuite.store.parquet_store import ResultsStore

    frame = ResultsStore(results_dir).read(TABLE, check_id=check_id).drop(columns=["part"], errors="ignore")
    if models is not None and not frame.empty:
        frame = frame[frame["model"].isin(list(models))]
    if latest and not frame.empty:
        newest = frame.groupby("model")["created_at"].transform("max")
        frame = frame[frame["created_at"] == newest]
    return frame.reset_index(drop=True)


def _say(message: str) -> None:
    print(f"evalsuite: {message}", file=sys.stderr, flush=True)
