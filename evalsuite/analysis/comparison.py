"""Paired comparison of two stored runs: did the candidate really get worse than the baseline?

Both runs answer the same documents, so the comparison is paired on (task, subtask, doc_index):
a difference in scores is judged against the per-document disagreements, which is far more
sensitive than comparing two independent means. Tasks scored 0/1 per document (ARC,
HellaSwag, Winogrande, GSM8K) use the exact McNemar test (a binomial test on the discordant
pairs); TruthfulQA's mc2 (a probability per document) and MMLU's mean of subject means use a
paired bootstrap with a fixed seed (stratified by subject for MMLU). The 95% interval of the
delta is always the paired bootstrap's percentile interval.

A task *regressed* when it dropped by more than ``max_drop`` points (x100 scale) and the drop
is significant at ``alpha``: both, so that neither noise on small runs nor a tiny but
"significant" wobble on big runs fails a nightly build. A task that failed in the candidate
but not in the baseline counts as a regression too.

Runs are read through :mod:`evalsuite.store.run_views` (refs, shards, status) and the statistics come
from :mod:`evalsuite.analysis.paired_stats`, the module the HTML report uses too. Refs name runs: a run id
(``RUN@MODEL`` for a run of several models), a model alias (its latest finished run), ``tag:T``
(the latest run with that tag), ``latest`` (the latest finished run) or ``baseline`` (the run
recorded in ``<results>/baseline.json``).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from evalsuite.errors import EvalsuiteError
from evalsuite.store.run_views import RunView, load_run, read_baseline, set_baseline
from evalsuite.analysis.paired_stats import MIN_SHARED, Paired, grouped_task, paired
from evalsuite.store.parquet_store import ResultsStore
from evalsuite.store.status import RunStatus, TaskStatus

__all__ = ["RunComparison", "ComparisonRefused", "RunRef", "TaskComparison", "compare_runs", "read_baseline",
           "set_baseline"]

DEFAULT_MAX_DROP = 1.0
DEFAULT_ALPHA = 0.05


class ComparisonRefused(EvalsuiteError):
    """The runs are not comparable (different prompts or documents) and ``force`` was not given."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "runs are not comparable: " + "; ".join(problems) + "; rerun them alike or pass --force to compare shared documents"
        )


@dataclass(frozen=True)
class RunRef:
    """One side of a comparison: which run and model a ref resolved to."""

    ref: str
    run_id: str
    model: str
    started_at: str | None = None
    tag: str | None = None
    weights: str | None = None

    def label(self) -> str:
        return f"{self.model} (run {self.run_id}" + (f", tag {self.tag}" if self.tag else "") + ")"


@dataclass(frozen=True)
class TaskComparison(Paired):
    """One task's paired numbers (:class:`~evalsuite.analysis.paired_stats.Paired`, x100 points on the documents
    both runs share) and its verdict: regression | improvement | no change | failed | new | skipped."""

    verdict: str = "no change"
    note: str = ""


@dataclass
class RunComparison:
    baseline: RunRef
    candidate: RunRef
    max_drop: float
    alpha: float
    tasks: list[TaskComparison] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # only non-empty when forced
    forced: bool = False

    @property
    def regressed(self) -> list[TaskComparison]:
        return [t for t in self.tasks if t.verdict in ("regression", "failed")]

    @property
    def exit_code(self) -> int:
        return 1 if self.regressed else 0

    def summary(self) -> str:
        if self.regressed:
            return "REGRESSION in " + ", ".join(t.task for t in self.regressed)
        return "no regression"

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": asdict(self.baseline), "candidate": asdict(self.candidate),
            "max_drop": self.max_drop, "alpha": self.alpha, "forced": self.forced, "problems": self.problems,
            "regressed": [t.task for t in self.regressed], "exit_code": self.exit_code,
            "tasks": [{k: _json_num(v) for k, v in asdict(t).items()} for t in self.tasks],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def _rows(self) -> list[list[str]]:
        rows = []
        for t in self.tasks:
            rows.append([
                t.task, t.metric or "", _fmt(t.baseline), _fmt(t.candidate), _fmt(t.delta, sign=True),
                f"[{_fmt(t.ci_low, sign=True)}, {_fmt(t.ci_high, sign=True)}]" if not math.isnan(t.ci_low) else "",
                t.test, "" if math.isnan(t.p_value) else f"{t.p_value:.3g}", str(t.n),
                t.verdict.upper() if t.verdict in ("regression", "failed") else t.verdict,
            ])
        return rows

    HEADER = ["task", "metric", "baseline", "candidate", "delta", "95% CI", "test", "p", "n", "verdict"]

    def table(self) -> str:
        rows = [self.HEADER, *self._rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.HEADER))]
        lines = [f"baseline:  {self.baseline.label()}", f"candidate: {self.candidate.label()}", ""]
        for j, row in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            if j == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines += self._footer()
        return "\n".join(lines)

    def markdown(self) -> str:
        icon = ":x:" if self.regressed else ":white_check_mark:"
        lines = [f"### {icon} Nightly eval: {self.summary()}", "",
                 f"- baseline: `{self.baseline.label()}`", f"- candidate: `{self.candidate.label()}`", "",
                 "| " + " | ".join(self.HEADER) + " |", "|" + "---|" * len(self.HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in self._rows()]
        lines += [""] + [f"_{line}_" if line else "" for line in self._footer()]
        return "\n".join(lines) + "\n"

    def _footer(self) -> list[str]:
        lines = ["", f"Scores x100 on shared documents. Regression: drop > {self.max_drop:g} points and p < {self.alpha:g} "
                     f"(McNemar exact for 0/1 metrics, paired bootstrap otherwise). Result: {self.summary()}."]
        if self.problems:
            lines.append("Compared despite (--force): " + "; ".join(self.problems))
        return lines


# -- resolving refs ------------------------------------------------------------------------
def _ref(view: RunView, ref: str) -> RunRef:
    rec = view.record
    return RunRef(ref, view.run_id, view.model, str(rec.started_at) if rec.started_at else None, rec.tag,
                  rec.weights_hash or rec.model_id)


# -- the comparison ------------------------------------------------------------------------
def check_thresholds(max_drop: float, alpha: float) -> None:
    """--max-drop finite and >= 0, --alpha in (0, 1): NaN or infinity would make every verdict
    "no regression" (every comparison with NaN is false), so they are refused, not used."""
    import math

    if not (math.isfinite(max_drop) and max_drop >= 0):
        raise EvalsuiteError(f"--max-drop must be a finite number of points >= 0 (e.g. 1.0), got {max_drop}")
    if not (math.isfinite(alpha) and 0 < alpha < 1):
        raise EvalsuiteError(f"--alpha must be a significance level between 0 and 1 (e.g. 0.05), got {alpha}")


def compare_runs(store: ResultsStore | str | os.PathLike, baseline_ref: str, candidate_ref: str,
                 max_drop: float = DEFAULT_MAX_DROP, alpha: float = DEFAULT_ALPHA, force: bool = False) -> RunComparison:
    """Compare two stored runs task by task; raises :class:`ComparisonRefused` unless comparable."""
    check_thresholds(max_drop, alpha)
    base, cand = load_run(baseline_ref, store), load_run(candidate_ref, store)
    if (base.run_id, base.model) == (cand.run_id, cand.model):  # it would pass every time, proving nothing
        raise EvalsuiteError(f"'{baseline_ref}' and '{candidate_ref}' are the same run ({base.run_id}, {base.model}): "
                             f"a run compared with itself differs by nothing; name two different runs")
    for side, view in (("baseline", base), ("candidate", cand)):
        if view.status in (RunStatus.RUNNING, RunStatus.INCOMPLETE):
            raise EvalsuiteError(f"the {side} run {view.run_id} of {view.model} is {view.status}: "
                                 + "; ".join(view.notes or ["wait for it to finish"]))
    base_scores, cand_scores = base.task_scores(), cand.task_scores()
    base_samples, cand_samples = base.samples(), cand.samples()
    result = RunComparison(_ref(base, baseline_ref), _ref(cand, candidate_ref), max_drop, alpha, forced=force)
    problems: list[str] = []
    for task in [*base_scores, *[t for t in cand_scores if t not in base_scores]]:
        if task not in cand_scores or task not in base_scores:
            side = "candidate" if task not in cand_scores else "baseline"
            problems.append(f"{task}: not evaluated in the {side} run")
            continue
        b, c = base_scores[task], cand_scores[task]
        if c.status != TaskStatus.OK:
            verdict = "failed" if b.status == TaskStatus.OK else "skipped"
            result.tasks.append(_empty(task, b.metric, verdict, f"candidate {c.status}: {c.error or ''}".strip()))
            continue
        if b.status != TaskStatus.OK:
            result.tasks.append(_empty(task, b.metric, "new", f"baseline {b.status}: {b.error or ''}".strip()))
            continue
        compared, task_problems = _compare_task(task, b.metric, base_samples, cand_samples, max_drop, alpha)
        problems += task_problems
        if compared is not None:
            result.tasks.append(compared)
    if problems and not force:
        raise ComparisonRefused(problems)
    result.problems = problems
    if not result.tasks:
        raise EvalsuiteError(f"runs {base.run_id} and {cand.run_id} share no task to compare")
    return result


def _compare_task(task: str, metric: str | None, base: Any, cand: Any, max_drop: float,
                  alpha: float) -> tuple[TaskComparison | None, list[str]]:
    found = paired(base, cand, task, metric=metric, grouped=grouped_task(task, base))
    problems = []
    if found is None:
        return None, [f"{task}: no shared documents"]
    if found.n != found.n_baseline or found.n != found.n_candidate:
        problems.append(f"{task}: the runs cover different documents (baseline {found.n_baseline}, candidate "
                        f"{found.n_candidate}, shared {found.n}; different --limit or data?)")
    if found.prompts_differ:
        problems.append(f"{task}: {found.prompts_differ} of {found.n} shared documents saw different prompts "
                        f"(prompt_hash differs: task config, few-shot data or harness changed)")
    verdict = "no change"
    if found.significant(alpha) and found.delta < -max_drop:
        verdict = "regression"
    elif found.significant(alpha) and found.delta > max_drop:
        verdict = "improvement"
    notes = []
    if problems:
        notes.append("compared on shared documents only")
    if found.n < MIN_SHARED:
        notes.append(f"fewer than {MIN_SHARED} shared documents: never called significant")
    return TaskComparison(**asdict(found), verdict=verdict, note="; ".join(notes)), problems


def _empty(task: str, metric: str | None, verdict: str, note: str) -> TaskComparison:
    nan = math.nan
    return TaskComparison(task, metric, "none", 0, nan, nan, nan, nan, nan, nan, 0, 0, 0, verdict=verdict, note=note)


def _fmt(value: float, sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+.2f}" if sign else f"{value:.2f}"


def _json_num(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value
