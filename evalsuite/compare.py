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

Refs name runs: a run id (``RUN@MODEL`` for a run of several models), a model alias (its
latest finished run), ``tag:T`` (the latest run with that tag), ``latest`` (the latest finished
run) or ``baseline`` (the run recorded in ``<results>/baseline.json``).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EvalsuiteError
from .store import ResultsStore

DEFAULT_MAX_DROP = 1.0
DEFAULT_ALPHA = 0.05
BOOTSTRAP_SAMPLES = 2000
SEED = 20261126
BASELINE_FILE = "baseline.json"
BINARY_METRICS = {"acc", "acc_norm", "exact_match"}
FINISHED = {"ok", "partial"}


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


@dataclass
class TaskComparison:
    """One task's verdict. Scores and deltas are x100 points, on the documents both runs share."""

    task: str
    metric: str | None
    test: str  # mcnemar | bootstrap | none
    baseline: float
    candidate: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    verdict: str  # regression | improvement | no change | failed | new | skipped
    note: str = ""


@dataclass
class Comparison:
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
def resolve_ref(store: ResultsStore, ref: str) -> RunRef:
    """The run (and model) a ref names; see the module docstring for the forms."""
    runs = store.runs()
    if runs.empty:
        raise EvalsuiteError(f"no runs in {store.root}/ yet; run `evalsuite run` first")
    runs = runs.sort_values("started_at")
    finished = runs[runs["status"].isin(FINISHED)]
    ref = ref.strip()
    if ref == "baseline":
        base = read_baseline(store.root)
        if base is None:
            raise EvalsuiteError(f"no baseline set in {store.root}/; set one with `evalsuite baseline set RUN|tag:T|MODEL`")
        return _row_ref(runs, ref, base["run_id"], base["model"])
    if ref == "latest":
        if finished.empty:
            raise EvalsuiteError(f"no finished run in {store.root}/; run `evalsuite run` first")
        row = finished.iloc[-1]
        return _row_ref(runs, ref, row["run_id"], row["model"])
    if ref.startswith("tag:"):
        tagged = finished[finished["tag"] == ref[4:]]
        if tagged.empty:
            tags = sorted({t for t in runs["tag"].dropna()})
            raise EvalsuiteError(f"no finished run tagged '{ref[4:]}' in {store.root}/; known tags: {', '.join(tags) or 'none'}")
        row = tagged.iloc[-1]
        return _row_ref(runs, ref, row["run_id"], row["model"])
    run_id, _, model = ref.partition("@")
    if run_id in set(runs["run_id"]):
        models = list(runs[runs["run_id"] == run_id]["model"])
        if model:
            if model not in models:
                raise EvalsuiteError(f"run {run_id} has no model '{model}'; it has {', '.join(models)}")
        elif len(models) > 1:
            raise EvalsuiteError(f"run {run_id} evaluated {', '.join(models)}; name one as {run_id}@MODEL")
        return _row_ref(runs, ref, run_id, model or models[0])
    for name in (ref, Path(os.path.expanduser(ref)).name):
        mine = finished[finished["model"] == name]
        if not mine.empty:
            return _row_ref(runs, ref, mine.iloc[-1]["run_id"], name)
    raise EvalsuiteError(
        f"'{ref}' is not a run id, model with a finished run, tag:T, latest or baseline in {store.root}/; "
        f"see the runs with pandas.read_parquet('{store.root}/runs')"
    )


def _row_ref(runs: Any, ref: str, run_id: str, model: str) -> RunRef:
    rows = runs[(runs["run_id"] == run_id) & (runs["model"] == model)]
    if rows.empty:
        raise EvalsuiteError(f"run {run_id} of {model} is not in the store any more; set another baseline")
    row = rows.iloc[-1]
    tag = row["tag"] if isinstance(row["tag"], str) else None
    weights = row["weights_hash"] if isinstance(row["weights_hash"], str) else row["model_id"]
    return RunRef(ref, str(run_id), str(model), str(row["started_at"]), tag, weights)


# -- the baseline file ------------------------------------------------------------------------
def read_baseline(results_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(results_dir) / BASELINE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or "run_id" not in data or "model" not in data:
            raise ValueError("run_id or model missing")
    except (OSError, ValueError) as exc:
        raise EvalsuiteError(f"{path} is unreadable ({exc}); set the baseline again with `evalsuite baseline set`") from None
    return data


def set_baseline(store: ResultsStore, ref: str) -> RunRef:
    """Record the run ``ref`` names as the accepted baseline (written atomically)."""
    run = resolve_ref(store, ref)
    payload = {**asdict(run), "set_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    store.root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".baseline-", suffix=".json", dir=store.root)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, store.root / BASELINE_FILE)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise EvalsuiteError(f"could not write {store.root / BASELINE_FILE} ({exc.strerror}); check space and permissions") from None
    return run


# -- the comparison ------------------------------------------------------------------------
def compare_runs(store: ResultsStore | str | os.PathLike, baseline_ref: str, candidate_ref: str,
                 max_drop: float = DEFAULT_MAX_DROP, alpha: float = DEFAULT_ALPHA, force: bool = False) -> Comparison:
    """Compare two stored runs task by task; raises :class:`ComparisonRefused` unless comparable."""
    if not isinstance(store, ResultsStore):
        store = ResultsStore(store)
    if max_drop < 0 or not 0 < alpha < 1:
        raise EvalsuiteError(f"--max-drop must be >= 0 and --alpha in (0, 1), got {max_drop} and {alpha}")
    base, cand = resolve_ref(store, baseline_ref), resolve_ref(store, candidate_ref)
    base_scores, cand_scores = _task_status(store, base), _task_status(store, cand)
    base_samples, cand_samples = _samples(store, base), _samples(store, cand)
    result = Comparison(base, cand, max_drop, alpha, forced=force)
    problems: list[str] = []
    for task in [*base_scores, *[t for t in cand_scores if t not in base_scores]]:
        if task not in cand_scores or task not in base_scores:
            side = "candidate" if task not in cand_scores else "baseline"
            problems.append(f"{task}: not evaluated in the {side} run")
            continue
        (b_status, b_error, metric), (c_status, c_error, _) = base_scores[task], cand_scores[task]
        if c_status != "ok":
            verdict = "failed" if b_status == "ok" else "skipped"
            result.tasks.append(_empty(task, metric, verdict, f"candidate {c_status}: {c_error or ''}".strip()))
            continue
        if b_status != "ok":
            result.tasks.append(_empty(task, metric, "new", f"baseline {b_status}: {b_error or ''}".strip()))
            continue
        compared, task_problems = _compare_task(task, metric, base_samples, cand_samples, max_drop, alpha)
        problems += task_problems
        if compared is not None:
            result.tasks.append(compared)
    if problems and not force:
        raise ComparisonRefused(problems)
    result.problems = problems
    if not result.tasks:
        raise EvalsuiteError(f"runs {base.run_id} and {cand.run_id} share no task to compare")
    return result


def _task_status(store: ResultsStore, run: RunRef) -> dict[str, tuple[str, str | None, str | None]]:
    scores = store.scores(run_id=run.run_id, model=run.model)
    scores = scores[scores["subtask"].isna()]
    return {row.task: (row.status, row.error, row.metric) for row in scores.itertuples()}


def _samples(store: ResultsStore, run: RunRef) -> Any:
    samples = store.samples(run_id=run.run_id, model=run.model)
    samples = samples[["task", "subtask", "doc_index", "prompt_hash", "metric", "value"]].copy()
    samples["subtask"] = samples["subtask"].fillna("")
    return samples


def _compare_task(task: str, metric: str | None, base: Any, cand: Any, max_drop: float,
                  alpha: float) -> tuple[TaskComparison | None, list[str]]:
    from .tasks import load_spec

    keys = ["subtask", "doc_index"]
    b, c = base[base["task"] == task], cand[cand["task"] == task]
    merged = b.merge(c, on=keys, suffixes=("_b", "_c"))
    problems = []
    if len(merged) != len(b) or len(merged) != len(c):
        problems.append(f"{task}: the runs cover different documents (baseline {len(b)}, candidate {len(c)}, "
                        f"shared {len(merged)}; different --limit or data?)")
    changed = int((merged["prompt_hash_b"] != merged["prompt_hash_c"]).sum())
    if changed:
        problems.append(f"{task}: {changed} of {len(merged)} shared documents saw different prompts "
                        f"(prompt_hash differs: task config, few-shot data or harness changed)")
    if merged.empty:
        return None, problems or [f"{task}: no shared documents"]
    try:
        grouped = load_spec(task).aggregate == "mean_of_groups"
    except EvalsuiteError:
        grouped = merged["subtask"].nunique() > 1
    x = merged["value_b"].to_numpy(dtype=float)
    y = merged["value_c"].to_numpy(dtype=float)
    groups = merged["subtask"].to_numpy()
    binary = not grouped and metric in BINARY_METRICS and np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all()
    rng = np.random.default_rng([SEED, zlib.crc32(task.encode())])
    boot = _bootstrap(y - x, groups if grouped else None, rng)
    score_b, score_c = _score(x, groups, grouped), _score(y, groups, grouped)
    delta = score_c - score_b
    if binary:
        from scipy.stats import binomtest

        worse = int(((x == 1) & (y == 0)).sum())
        better = int(((x == 0) & (y == 1)).sum())
        p = binomtest(better, worse + better, 0.5).pvalue if worse + better else 1.0
        test = "mcnemar"
    else:
        p = float((1 + np.sum(np.abs(boot - delta) >= abs(delta))) / (len(boot) + 1)) if delta else 1.0
        test = "bootstrap"
    lo, hi = np.percentile(boot, [2.5, 97.5])
    verdict = "no change"
    if p < alpha and delta * 100 < -max_drop:
        verdict = "regression"
    elif p < alpha and delta * 100 > max_drop:
        verdict = "improvement"
    note = "" if not problems else "compared on shared documents only"
    return TaskComparison(task, metric, test, 100 * score_b, 100 * score_c, 100 * delta, 100 * float(lo),
                          100 * float(hi), float(p), len(merged), verdict, note), problems


def _score(values: np.ndarray, groups: np.ndarray, grouped: bool) -> float:
    if not grouped:
        return float(values.mean())
    return float(np.mean([values[groups == g].mean() for g in np.unique(groups)]))


def _bootstrap(diff: np.ndarray, groups: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of the mean difference (of subject means when ``groups`` is given)."""
    if groups is None:
        return _boot_means(diff, rng)
    per_group = [_boot_means(diff[groups == g], rng) for g in np.unique(groups)]
    return np.mean(per_group, axis=0)


def _boot_means(values: np.ndarray, rng: np.random.Generator, samples: int = BOOTSTRAP_SAMPLES) -> np.ndarray:
    n = len(values)
    out = np.empty(samples)
    step = max(1, 2_000_000 // max(n, 1))
    for start in range(0, samples, step):
        rows = min(step, samples - start)
        out[start:start + rows] = values[rng.integers(0, n, size=(rows, n))].mean(axis=1)
    return out


def _empty(task: str, metric: str | None, verdict: str, note: str) -> TaskComparison:
    nan = math.nan
    return TaskComparison(task, metric, "none", nan, nan, nan, nan, nan, nan, 0, verdict, note)


def _fmt(value: float, sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+.2f}" if sign else f"{value:.2f}"


def _json_num(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value
