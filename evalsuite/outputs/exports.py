"""Exports of one stored run into the formats other tools read.

* ``lm_eval_results``: lm-evaluation-harness's ``results.json`` layout with the task names and
  metric keys the leaderboard's harness (b281b09) wrote: ``arc_challenge`` / ``acc_norm``,
  ``hellaswag`` / ``acc_norm``, ``hendrycksTest-<subject>`` / ``acc`` (57 entries; the MMLU
  column is their plain mean), ``truthfulqa_mc`` / ``mc2``, ``winogrande`` / ``acc``, ``gsm8k``
  / ``acc``, each with ``<metric>_stderr``, plus ``versions`` and ``n-shot``, so lm-eval's own
  ``lm_eval.utils.make_table`` renders it. ``naming="leaderboard"`` uses the leaderboard's own
  result keys instead (``harness|arc:challenge|25`` ...), which its ``read_evals.py`` matched.
  Values are 0-1 as lm-eval writes them. Only the leaderboard metric of each task is stored by
  evalsuite, so only it is exported (v1 also wrote ``acc`` for ARC and HellaSwag).
* ``model_index``: the Hugging Face model-card ``model-index`` block with the six entries as
  on SOLAR's card (dataset name/type/config/split, ``num_few_shot``, metric type and value
  x100), ``source`` naming this harness and the run (its url: the exported ``results.json``
  unless another is given).
* ``scores_csv``: one row per task and MMLU subject, plus H6.

The names and card fields of each task come from its YAML's ``export:`` block (shots, metric,
dataset config and split from the task itself; :class:`evalsuite.tasks.catalogue.ExportNames`),
so a user's own task (``--task-dir``) exports under its own name like the six.

Each task's self-audit (:mod:`evalsuite.run.audit`) goes along: ``evalsuite.run.audit`` in the lm-eval
JSON (status, n, agree, max |Δ|, note), the ``source`` name of each model-index entry
("audit: 8/8, max |Δ| 2e-05"), and the ``audit_*`` columns of the CSV task rows.

A limited run (``--limit``) is not a leaderboard result: the model-index refuses it unless
``allow_limited``, and then says "n = a of b" in each metric's name.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalsuite import __version__
from evalsuite.errors import EvalsuiteError
from evalsuite.outputs.csv_cells import csv_dict_writer
from evalsuite.store.run_views import is_missing, load_run  # load_run: the one read path, also for export's callers
from evalsuite.store.status import FINISHED, TaskStatus
from evalsuite.tasks.catalogue import TaskSpec, load_suite, lookup, ordered

#: Default ``source.url`` of the model-index: the lm-eval results file exported beside it (upload
#: both to the model repository), unless the user names where the results live (--source-url).
DEFAULT_SOURCE_URL = "results.json"


@dataclass(frozen=True)
class V1Task:
    """How the leaderboard's harness and a model card name one task: its YAML's ``export:``
    names with the task's own shots, metric, dataset config and split."""

    harness: str  # task name in lm-eval at b281b09 (MMLU: prefix of the 57 subject tasks)
    leaderboard: str  # the leaderboard's results key (before the "|shots")
    version: int
    shots: int
    metric: str
    metric_name: str | None  # the card's metric "name"
    card_name: str  # the card's dataset "name"
    dataset: str  # the card's dataset "type"
    config: str | None
    split: str
    grouped: bool  # the task's score is the mean of its subjects' (its rows per subject are exported)

    @classmethod
    def of(cls, spec: TaskSpec) -> V1Task:
        names = spec.export_names
        return cls(names.harness, names.leaderboard, names.version, spec.num_fewshot, spec.metric, names.metric_name,
                   names.card_name or spec.title, names.card_dataset or spec.dataset.hub_id, spec.dataset.config,
                   spec.eval_split, spec.macro_averaged)


def v1_task(task: str) -> V1Task | None:
    """A stored task's export names, or None when no task file defines it (pass its --task-dir)."""
    spec = lookup(task)
    return V1Task.of(spec) if spec else None


def _exported(rows: dict[tuple[str, str | None], dict[str, Any]]) -> list[tuple[str, V1Task]]:
    """The run's tasks the catalogue knows, leaderboard tasks first in column order."""
    out = []
    for task in ordered({t for t, _ in rows}):
        v1 = v1_task(task)
        if v1 is not None:
            out.append((task, v1))
    return out


def _ok_rows(view: Any) -> dict[tuple[str, str | None], dict[str, Any]]:
    """(task, subtask) -> score row, for rows that carry a value."""
    out = {}
    for rec in view.scores.to_dict("records"):
        value = rec.get("value")
        if rec.get("status") == TaskStatus.OK and not is_missing(value):
            sub = rec.get("subtask")
            out[(rec["task"], sub if isinstance(sub, str) else None)] = rec
    return out


def _num(value: Any) -> float | str:
    return "N/A" if is_missing(value) else float(value)


# -- lm-eval results.json --------------------------------------------------------------------
def lm_eval_results(view: Any, naming: str = "harness") -> dict[str, Any]:
    """lm-eval's results dict for the run (see the module docstring)."""
    if naming not in ("harness", "leaderboard"):
        raise EvalsuiteError(f"unknown naming '{naming}'; use harness (lm-eval task names) or leaderboard")
    rows = _ok_rows(view)
    results: dict[str, dict[str, Any]] = {}
    versions: dict[str, int] = {}
    n_shot: dict[str, int] = {}
    n_samples: dict[str, dict[str, int]] = {}
    audits: dict[str, dict[str, Any]] = {}
    for task, v1 in _exported(rows):
        if (task, None) in rows and isinstance(rows[(task, None)].get("audit_status"), str):
            audits[task] = _audit_fields(rows[(task, None)])
        if v1.grouped:
            entries = [(f"{v1.harness}-{sub}", rec) for (t, sub), rec in sorted(rows.items(), key=lambda kv: str(kv[0][1]))
                       if t == task and sub is not None]
        else:
            entries = [(v1.harness, rows[(task, None)])] if (task, None) in rows else []
        for name, rec in entries:
            key = name if naming == "harness" else f"harness|{name.replace(v1.harness, v1.leaderboard)}|{v1.shots}"
            results[key] = {v1.metric: float(rec["value"]), f"{v1.metric}_stderr": _num(rec["stderr"])}
            versions[key] = v1.version
            n_shot[key] = v1.shots
            n_samples[key] = {"original": int(rec["n_total"] or 0), "effective": int(rec["n"] or 0)}
    if not results:
        raise EvalsuiteError(f"run {view.run_id} of {view.model} has no finished leaderboard task to export")
    record = view.record
    limit: Any = getattr(record, "limit", None)  # None, NaN (parquet's absent) or a number
    return {
        "results": results,
        "versions": versions,
        "n-shot": n_shot,
        "higher_is_better": {k: {next(iter(v)): True} for k, v in results.items()},
        "n-samples": n_samples,
        "config": {
            "model": "evalsuite", "model_args": f"pretrained={getattr(record, 'model_id', None) or view.model}",
            "model_name": view.model, "dtype": getattr(record, "dtype", None), "backend": getattr(record, "backend", None),
            "batch_size": getattr(record, "batch_size", None),
            "limit": None if is_missing(limit) else int(limit),
            "bootstrap_iters": 0, "description_dict": {},
        },
        "git_hash": getattr(record, "git_commit", None),
        "evalsuite": {"version": __version__, "run_id": view.run_id, "model": view.model,
                      "status": view.status, "protocol": "Open LLM Leaderboard v1 (lm-eval b281b09)",
                      "naming": naming,
                      "leaderboard": leaderboard_values(view), "audit": audits},
    }


def _audit_fields(rec: dict[str, Any]) -> dict[str, Any]:
    """A task row's self-audit (:mod:`evalsuite.run.audit`) with JSON-ready values."""
    from evalsuite.analysis.audit_lines import describe_row

    return {"status": rec["audit_status"], "n": None if is_missing(rec.get("audit_n")) else int(rec["audit_n"]),
            "agree": None if is_missing(rec.get("audit_agree")) else int(rec["audit_agree"]),
            "max_abs_diff": None if is_missing(rec.get("audit_max_abs_diff")) else float(rec["audit_max_abs_diff"]),
            "note": rec.get("audit_note") if isinstance(rec.get("audit_note"), str) else None,
            "text": describe_row(rec)}


def leaderboard_values(view: Any) -> dict[str, Any]:
    """The six columns (then any other task scored) and H6, x100, as the leaderboard shows them
    (MMLU: plain mean of subjects)."""
    from evalsuite.analysis.leaderboard import columns

    row = view.leaderboard_row()
    key = load_suite().score_key
    out: dict[str, Any] = {task: round(row.scores[task], 4) for task in columns([row]) if task in row.scores}
    out[key] = None if math.isnan(row.h6) else round(row.h6, 4)
    out[f"{key}_complete"] = row.complete
    return out


# -- model-index ---------------------------------------------------------------------------------
def model_index(view: Any, *, name: str | None = None, allow_limited: bool = False,
                source_url: str = DEFAULT_SOURCE_URL) -> dict[str, Any]:
    """The ``model-index`` metadata (a dict; :func:`model_index_yaml` writes the YAML block)."""
    if view.status not in FINISHED:
        raise EvalsuiteError(f"run {view.run_id} of {view.model} is {view.status}: finish it before publishing its scores")
    rows = _ok_rows(view)
    results = []
    limited = []
    for task, v1 in _exported(rows):
        rec = rows.get((task, None))
        if rec is None:
            continue
        n, total = int(rec["n"] or 0), int(rec["n_total"] or 0)
        metric: dict[str, Any] = {"type": v1.metric, "value": round(100 * float(rec["value"]), 2)}
        label = v1.metric_name
        if total and n < total:
            limited.append(f"{task} ({n} of {total})")
            label = f"{label or v1.metric} (n = {n} of {total} documents)"
        if label:
            metric["name"] = label
        dataset: dict[str, Any] = {"name": v1.card_name, "type": v1.dataset}
        if v1.config:
            dataset["config"] = v1.config
        dataset.update(split=v1.split, args={"num_few_shot": v1.shots})
        from evalsuite.analysis.audit_lines import describe_row

        audit = describe_row(rec)  # the card's source name says how the number was checked
        results.append({"task": {"type": "text-generation", "name": "Text Generation"}, "dataset": dataset,
                        "metrics": [metric],
                        "source": {"url": source_url, "name": f"evalsuite {__version__} (run {view.run_id}"
                                                              f"{'; ' + audit if audit else ''})"}})
    if not results:
        raise EvalsuiteError(f"run {view.run_id} of {view.model} has no finished leaderboard task to export")
    if limited and not allow_limited:
        raise EvalsuiteError(
            f"run {view.run_id} is limited ({', '.join(limited)}): its scores are not leaderboard results; "
            "export a full run, pass --allow-limited to export them marked as such, or pick --format lm-eval or csv"
        )
    return {"model-index": [{"name": name or _card_name(view), "results": results}]}


def _card_name(view: Any) -> str:
    model_id = getattr(view.record, "model_id", None)
    return Path(str(model_id)).name if model_id and "/" in str(model_id) else view.model


def model_index_yaml(index: dict[str, Any]) -> str:
    """The block to paste into a model card's YAML front matter (between the ``---`` lines)."""
    import yaml

    return yaml.safe_dump(index, sort_keys=False, allow_unicode=True)


# -- CSV -------------------------------------------------------------------------------------
CSV_COLUMNS = ["run_id", "model", "model_id", "task", "lm_eval_task", "subtask", "metric", "score", "stderr", "n",
               "n_total", "status", "audit_status", "audit_n", "audit_agree", "audit_max_abs_diff"]


def scores_csv(view: Any) -> str:
    """Task and subject rows (score and stderr x100), then H6; failed or missing tasks say so."""
    buffer = io.StringIO()
    writer = csv_dict_writer(buffer, CSV_COLUMNS, lineterminator="\n")  # formulas neutralised (outputs.csv_cells)
    writer.writeheader()
    model_id = getattr(view.record, "model_id", None)
    frame = view.scores.sort_values(["task", "subtask"], na_position="first", kind="stable")
    for rec in frame.to_dict("records"):
        v1 = v1_task(rec["task"])
        sub = rec["subtask"] if isinstance(rec["subtask"], str) else ""
        name = (f"{v1.harness}-{sub}" if sub else ("" if v1.grouped else v1.harness)) if v1 else ""
        writer.writerow({"run_id": view.run_id, "model": view.model, "model_id": model_id, "task": rec["task"],
                         "lm_eval_task": name, "subtask": sub, "metric": rec["metric"],
                         "score": _pct(rec["value"]), "stderr": _pct(rec["stderr"]),
                         "n": int(rec["n"] or 0), "n_total": "" if is_missing(rec["n_total"])
                         else int(rec["n_total"]), "status": rec["status"],
                         **_audit_csv(rec)})
    values = leaderboard_values(view)
    suite = load_suite()
    key = suite.score_key
    if values.get(key) is not None:
        count = {6: "six"}.get(len(suite.tasks), str(len(suite.tasks)))
        writer.writerow({"run_id": view.run_id, "model": view.model, "model_id": model_id, "task": key,
                         "metric": f"mean of {count}" if values[f"{key}_complete"] else "mean of tasks present (incomplete)",
                         "score": f"{values[key]:.4f}", "status": TaskStatus.OK if values[f"{key}_complete"] else TaskStatus.INCOMPLETE})
    return buffer.getvalue()


def _audit_csv(rec: dict[str, Any]) -> dict[str, Any]:
    """The audit columns of a CSV row (empty for subject rows and rows without an audit)."""
    if not isinstance(rec.get("audit_status"), str):
        return {}
    fields = _audit_fields(rec)
    return {"audit_status": fields["status"], "audit_n": "" if fields["n"] is None else fields["n"],
            "audit_agree": "" if fields["agree"] is None else fields["agree"],
            "audit_max_abs_diff": "" if fields["max_abs_diff"] is None else f"{fields['max_abs_diff']:.3g}"}


def _pct(value: Any) -> str:
    return "" if is_missing(value) else f"{100 * float(value):.4f}"


# -- writing -----------------------------------------------------------------------------------
FORMATS = ("lm-eval", "model-index", "csv")
FILE_NAMES = {"lm-eval": "results.json", "model-index": "model-index.yaml", "csv": "scores.csv"}


def export(ref: str, *, results_dir: str | Path = "results", formats: tuple[str, ...] = FORMATS,
           out_dir: str | Path | None = None, naming: str = "harness", name: str | None = None,
           allow_limited: bool = False, source_url: str = DEFAULT_SOURCE_URL) -> dict[str, Path]:
    """Write the chosen formats of run ``ref`` into ``out_dir`` (default ``exports/<run>__<model>``)."""
    from evalsuite.store.parquet_store import slug

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise EvalsuiteError(f"unknown export format {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    view = load_run(ref, results_dir)
    texts = {}
    if "lm-eval" in formats:
        texts["lm-eval"] = json.dumps(lm_eval_results(view, naming), indent=2, default=str) + "\n"
    if "model-index" in formats:
        texts["model-index"] = model_index_yaml(model_index(view, name=name, allow_limited=allow_limited,
                                                                    source_url=source_url))
    if "csv" in formats:
        texts["csv"] = scores_csv(view)
    folder = Path(out_dir) if out_dir else Path("exports") / f"{view.run_id}__{slug(view.model)}"
    from evalsuite.fsutil import check_output, write_output

    for fmt in texts:  # every file checked before any is written: never over a file evalsuite did not write
        check_output(folder / FILE_NAMES[fmt], "--out")
    written = {}
    for fmt, text in texts.items():
        written[fmt] = write_output(folder / FILE_NAMES[fmt], text, "--out")
    return written
