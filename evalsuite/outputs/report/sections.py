"""The report's sections as plain dicts and lists, ready for the Jinja2 template.

Numbers are formatted here, once, so the template only lays out; every partial result is
spelt out (missing task "—", incomplete H6 "*", limited runs "n = 50 of 1172").
"""
from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from evalsuite.analysis.leaderboard import LeaderboardRow, LeaderboardTable
from evalsuite.analysis.paired_stats import MIN_SHARED, grouped_task, paired
from evalsuite.store.status import TaskStatus
from evalsuite.tasks.catalogue import leaderboard_tasks, load_suite, macro_averaged
from evalsuite.outputs.report import charts
from evalsuite.outputs.report.comparability import _as_dict
from evalsuite.outputs.report.data import ReportData, Entry, PublishedRow, fmt_score, task_label

#: Documents per task shown in the sample browser (disagreements first).
SAMPLES_PER_TASK = 12
MANIFEST_FIELDS = [
    ("run_id", "run id"), ("model_id", "model id"), ("model_kind", "kind"), ("revision", "revision"),
    ("weights_hash", "weights hash"), ("dtype", "dtype"), ("backend", "backend"), ("device", "device"),
    ("batch_size", "batch size"), ("limit", "limit"), ("status", "status"), ("tag", "tag"),
    ("started_at", "started"), ("finished_at", "finished"), ("wall_time_s", "wall time (s)"),
    ("evalsuite_version", "evalsuite"), ("git_commit", "git commit"), ("lm_eval_version", "lm-eval"),
    ("transformers_version", "transformers"), ("torch_version", "torch"), ("python_version", "python"),
    ("host", "host"), ("notes", "notes"),
]


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def leaderboard(comparison: ReportData, published: list[PublishedRow]) -> dict[str, Any]:
    """Rows of the sortable table: evaluated models first, then published reference rows."""
    table = LeaderboardTable.of(comparison.rows)
    titles = table.columns
    columns = ["h6", *titles]
    best: dict[str, float] = {}
    for row in comparison.rows:
        for col in columns:
            score = row.h6 if col == "h6" else row.scores.get(col, math.nan)
            if not _nan(score) and score > best.get(col, -math.inf):
                best[col] = score
    status = _task_status(comparison)
    rows = []
    for entry, row in zip(comparison.entries, comparison.rows, strict=True):
        cells = [_h6_cell(row, best)]
        for task in titles:
            value = row.scores.get(task)
            n, total = row.n.get(task), row.n_total.get(task)
            limited = value is not None and n is not None and total is not None and n < total
            cells.append({
                "text": fmt_score(value), "sort": "" if value is None else f"{value:.6f}",
                "best": value is not None and value == best.get(task),
                "note": f"n = {n} of {total}" if limited else ("" if value is not None
                                                                  else status.get((entry, task), "not run")),
                "title": "",
            })
        rows.append({"label": row.model, "published": False, "source": "", "cells": cells})
    for pub in sorted(published, key=lambda p: -p.h6):
        cells = [{"text": fmt_score(pub.h6), "sort": f"{pub.h6:.6f}", "best": False, "note": "", "title": ""}]
        for task in titles:
            value = pub.scores.get(task)
            cells.append({"text": fmt_score(value) + ("" if pub.per_task_confirmed else "†"),
                          "sort": "" if value is None else f"{value:.6f}", "best": False, "note": "",
                          "title": "" if pub.per_task_confirmed else "per-task value unconfirmed"})
        rows.append({"label": pub.model, "published": True, "source": pub.source, "confirmed": pub.confirmed,
                     "cells": cells})
    notes = []
    for row in comparison.rows:
        incomplete = table.incomplete(row)
        if incomplete is not None:
            notes.append(f"{row.model}: {table.score_label} incomplete (*), mean of {incomplete.present} of "
                         f"{incomplete.total} tasks; missing: {', '.join(incomplete.missing)}.")
    return {"headers": [table.score_label, *titles.values()], "rows": rows, "notes": notes}


def _task_status(comparison: ReportData) -> dict[tuple[Entry, str], str]:
    """(entry, task) -> "missing" (no data) or "failed" for task rows that carry no score."""
    scores = comparison.scores
    out: dict[tuple[Entry, str], str] = {}
    if scores.empty:
        return out
    rows = scores[scores["subtask"].isna() & (scores["status"] != TaskStatus.OK)]
    for entry in comparison.entries:
        mine = rows[(rows["run_id"] == entry.run_id) & (rows["model"] == entry.model)]
        for task, state in zip(mine["task"], mine["status"], strict=True):
            out[(entry, task)] = "no data" if state == TaskStatus.MISSING else state
    return out


def _h6_cell(row: LeaderboardRow, best: dict[str, float]) -> dict[str, Any]:
    h6 = row.h6
    if math.isnan(h6):
        return {"text": "—", "sort": "", "best": False, "note": "", "title": "no task scored"}
    star = "" if row.complete else "*"
    return {"text": f"{h6:.2f}{star}", "sort": f"{h6:.6f}", "best": h6 == best.get("h6"),
            "note": "incomplete" if star else "", "title": "mean of the tasks present" if star else ""}


def task_charts(comparison: ReportData) -> dict[str, Any]:
    """One bar chart per task and one overall, with 95% intervals that hold on few documents
    (:mod:`evalsuite.analysis.intervals`: Wilson for accuracies, t for mc2; H6 from the tasks')."""
    from evalsuite.analysis.intervals import mean_interval, score_interval

    labels = [e.label for e in comparison.entries]
    scores = comparison.scores
    task_rows = scores[scores["subtask"].isna()] if len(scores) else scores
    tasks = comparison.tasks()
    values: dict[str, list[float]] = {t: [] for t in tasks}
    errors: dict[str, list[tuple[float, float]]] = {t: [] for t in tasks}
    notes: dict[str, list[str]] = {t: [] for t in tasks}
    for entry in comparison.entries:
        mine = task_rows[(task_rows["run_id"] == entry.run_id) & (task_rows["model"] == entry.model)]
        by_task = {r["task"]: r for r in mine.to_dict("records")}
        for task in tasks:
            rec = by_task.get(task)
            if rec is None or rec["status"] != TaskStatus.OK or _nan(rec["value"]):
                values[task].append(math.nan)
                errors[task].append((math.nan, math.nan))
                notes[task].append(f"{charts._short(entry.label, 18)}: " + (rec["status"] if rec else "not run"))
                continue
            values[task].append(100 * rec["value"])
            low, high = score_interval(rec["metric"], float(rec["value"]), float(rec["stderr"]) if not _nan(rec["stderr"])
                                       else math.nan, int(rec["n"] or 0))
            errors[task].append((100 * low, 100 * high))
            if rec["n_total"] and rec["n"] < rec["n_total"]:
                notes[task].append(f"{charts._short(entry.label, 18)}: n = {int(rec['n'])} of {int(rec['n_total'])}")
    per_task = [{"task": t, "title": task_label(t),
                 "svg": charts.bars_with_ci(labels, values[t], errors[t], task_label(t), notes[t])} for t in tasks]
    # the overall chart always shows all six leaderboard tasks, so a missing one is visibly missing
    columns = list(leaderboard_tasks()) + [t for t in tasks if t not in leaderboard_tasks()]
    nan_col = [math.nan] * len(labels)
    none = [(math.nan, math.nan)] * len(labels)
    h6 = [r.h6 for r in comparison.rows]
    h6_ci = [mean_interval([values[t][i] for t in leaderboard_tasks() if t in values and not math.isnan(values[t][i])],
                           [errors[t][i] for t in leaderboard_tasks() if t in values and not math.isnan(values[t][i])])
             for i in range(len(labels))]
    matrix = [[values.get(t, nan_col)[i] for t in columns] + [h6[i]] for i in range(len(labels))]
    errs = [[errors.get(t, none)[i] for t in columns] + [h6_ci[i]] for i in range(len(labels))]
    suite_label = load_suite().score_label
    h6_name = suite_label if all(r.complete for r in comparison.rows) else f"{suite_label}*"
    overall = charts.overall(labels, [task_label(t) for t in columns] + [h6_name], matrix, errs) if tasks else ""
    intervals = [{"label": label, "task": task_label(t), "text": _interval_text(values[t][i], errors[t][i])}
                 for t in tasks for i, label in enumerate(labels) if not math.isnan(values[t][i])]
    intervals += [{"label": label, "task": h6_name, "text": _interval_text(h6[i], h6_ci[i])}
                  for i, label in enumerate(labels) if not math.isnan(h6[i])]
    return {"overall": overall, "tasks": per_task, "intervals": intervals}


def _interval_text(value: float, interval: tuple[float, float]) -> str:
    if math.isnan(value):
        return "—"
    low, high = interval
    return f"{value:.1f}" + ("" if math.isnan(low) else f" [{low:.1f}, {high:.1f}]")


def subject_heatmap(comparison: ReportData) -> dict[str, Any] | None:
    """Subjects x models from the per-subject score rows of the first task whose YAML averages
    its subjects (MMLU's 57), or None when no such task was run."""
    scores = comparison.scores
    grouped = [t for t in comparison.tasks() if macro_averaged(t)]
    if not grouped:
        return None
    task = grouped[0]
    sub = scores[(scores["task"] == task) & scores["subtask"].notna()] if len(scores) else scores
    if sub.empty:
        return None
    subjects = sorted(set(sub["subtask"]))
    labels = [e.label for e in comparison.entries]
    matrix = np.full((len(subjects), len(labels)), np.nan)
    counts = []
    for j, entry in enumerate(comparison.entries):
        mine = sub[(sub["run_id"] == entry.run_id) & (sub["model"] == entry.model)]
        n = total = 0
        for rec in mine.to_dict("records"):
            if rec["status"] == TaskStatus.OK and not _nan(rec["value"]):
                matrix[subjects.index(rec["subtask"]), j] = 100 * rec["value"]
            n += int(rec["n"] or 0)
            total += int(rec["n_total"] or 0)
        counts.append(f"{entry.label}: not evaluated" if not n else f"{entry.label}: n = {n} of {total}"
                      if n < total else f"{entry.label}: all {total} documents")
    title = f"{task_label(task)} by subject ({len(subjects)} subjects; grey —: not evaluated)"
    return {"svg": charts.heatmap(subjects, labels, matrix, title), "counts": counts, "n_subjects": len(subjects)}


def deltas(comparison: ReportData, baseline: Entry) -> dict[str, Any]:
    """Paired differences of every other entry against the baseline, per task."""
    samples = comparison.samples
    rows: list[dict[str, Any]] = []  # the template's rows: mixed values
    if samples is not None and not samples.empty:
        base = samples[(samples["run_id"] == baseline.run_id) & (samples["model"] == baseline.model)]
        for entry in comparison.entries:
            if entry == baseline:
                continue
            cand = samples[(samples["run_id"] == entry.run_id) & (samples["model"] == entry.model)]
            for task in comparison.tasks():
                metric = _metric(comparison, task)
                result = paired(base, cand, task, metric=metric, grouped=grouped_task(task, base))
                if result is None:
                    rows.append({"candidate": entry.label, "task": task_label(task), "n_shared": 0})
                    continue
                rows.append({
                    "candidate": entry.label, "task": task_label(task), "n_shared": result.n,
                    "baseline": f"{result.baseline:.2f}", "value": f"{result.candidate:.2f}",
                    "delta": f"{result.delta:+.2f}", "delta_raw": result.delta,
                    "ci": "—" if math.isnan(result.ci_low) else f"[{result.ci_low:+.2f}, {result.ci_high:+.2f}]",
                    "low": result.ci_low, "high": result.ci_high, "significant": result.significant(),
                    "p": f"{result.p_value:.3g}", "test": result.test,
                    "prompts_differ": result.prompts_differ,
                })
    shown = [r for r in rows if r["n_shared"]]
    svg = charts.forest([f"{charts._short(r['candidate'], 22)} · {r['task']}"
                         + (" (too few documents)" if r["n_shared"] < MIN_SHARED else "") for r in shown],
                        [r["delta_raw"] for r in shown], [r["low"] for r in shown], [r["high"] for r in shown],
                        f"Paired differences vs {charts._short(baseline.label, 40)}",
                        [r["significant"] for r in shown]) if shown else ""
    return {"baseline": baseline.label, "rows": rows, "svg": svg}


def _metric(comparison: ReportData, task: str) -> str | None:
    """The metric a task's stored scores name (decides McNemar vs bootstrap, as in ``compare``)."""
    scores = comparison.scores
    found = scores.loc[(scores["task"] == task) & scores["subtask"].isna(), "metric"].dropna()
    return str(found.iloc[0]) if len(found) else None


def manifests(comparison: ReportData) -> list[dict[str, Any]]:
    """Per entry: what was run, field by field, plus its task config and data hashes."""
    out = []
    for entry in comparison.entries:
        run = comparison.run_row(entry)
        fields = []
        for key, label in MANIFEST_FIELDS:
            value: Any = run.get(key)  # a parquet cell (None or NaN where absent), then its text
            if key == "limit":
                value = "none (full)" if _nan(value) else int(value)
            elif key == "wall_time_s" and not _nan(value):
                value = f"{value:.1f}"
            elif key in ("started_at", "finished_at") and hasattr(value, "strftime") and not _nan(value):
                value = value.strftime("%Y-%m-%d %H:%M:%S UTC")  # to the second: microseconds say nothing here
            fields.append((label, "—" if _nan(value) or value == "" else no_local_paths(str(value))))
        tasks = run.get("tasks")
        out.append({
            "label": entry.label, "fields": fields, "audits": _audits(comparison, entry),
            "tasks": ", ".join(tasks) if tasks is not None else "—",
            "config_hashes": sorted(_as_dict(run.get("task_config_hashes")).items()),
            "data_hashes": sorted(_as_dict(run.get("data_hashes")).items()),
        })
    return out


#: An absolute or home-relative local path (not a Hub id, not a URL): the report names only its last part.
_LOCAL_PATH = re.compile(r"(?<![\w.:/~-])~?/(?:[^\s/;,()'\"]+/)+([^\s/;,()'\"]+)/?")


def no_local_paths(text: str) -> str:
    """``text`` with each local path shortened to ``…/<last part>``: a report is mailed and
    published, and the folders of the machine that ran it are nobody else's business."""
    return _LOCAL_PATH.sub(lambda m: f"…/{m.group(1)}", text)


def _audits(comparison: ReportData, entry: Entry) -> list[tuple[str, str, str]]:
    """(task, "audit: 8/8, max |Δ| 2e-05", note) per task row of the entry that carries a self-audit."""
    from evalsuite.analysis.audit_lines import describe_row

    scores = comparison.scores
    if "audit_status" not in scores.columns:
        return []
    mine = scores[(scores["run_id"] == entry.run_id) & (scores["model"] == entry.model) & scores["subtask"].isna()]
    out = []
    for rec in mine.to_dict("records"):
        text = describe_row(rec)
        if text:
            note = rec.get("audit_note")
            out.append((str(rec["task"]), text, note if isinstance(note, str) else ""))
    return sorted(out)


def sample_browser(comparison: ReportData, per_task: int = SAMPLES_PER_TASK) -> list[dict[str, Any]]:
    """Per task, documents shared by the compared runs, disagreements first, with each model's pick
    and the numbers that decided it (:func:`_pick`)."""
    samples = comparison.samples
    if samples is None or samples.empty:
        return []
    labels = {(e.run_id, e.model): e.label for e in comparison.entries}
    frame = samples.assign(subtask=samples["subtask"].fillna(""))
    out = []
    for task in comparison.tasks():
        part = frame[frame["task"] == task]
        if part.empty:
            continue
        metric = _metric(comparison, task)
        docs: dict[tuple[str, int], dict[str, Any]] = {}
        for rec in part.sort_values(["subtask", "doc_index"]).to_dict("records"):
            key = (rec["subtask"], int(rec["doc_index"]))
            doc = docs.setdefault(key, _doc_view(task, rec, metric))
            doc["picks"].append(_pick(labels[(rec["run_id"], rec["model"])], rec, metric))
        chosen = list(docs.values())
        for doc in chosen:
            doc["disagree"] = len({p["prediction"] for p in doc["picks"]}) > 1
        chosen.sort(key=lambda d: (not d["disagree"], -len(d["picks"])))
        out.append({"task": task, "title": task_label(task), "total": len(chosen),
                    "disagreements": sum(d["disagree"] for d in chosen), "docs": chosen[:per_task]})
    return out


def _doc_view(task: str, rec: dict[str, Any], metric: str | None = None) -> dict[str, Any]:
    contexts = list(rec["contexts"]) if rec["contexts"] is not None else []
    continuations = list(rec["continuations"]) if rec["continuations"] is not None else []
    prompt_label = "prompt"
    if len(contexts) > 1:  # Winogrande: the options are the contexts, the continuation is shared
        preamble, choices = _options(contexts, continuations[0] if continuations else "")
        prompt, prompt_label = preamble, "shared few-shot preamble"
    else:
        prompt = contexts[0] if contexts else ""
        choices = [{"before": c, "differs": "", "after": ""} for c in continuations]
    gold = rec["gold"]
    texts = [c["before"] + c["differs"] + c["after"] for c in choices]
    true_choices: list[int] = []
    gold_text = gold
    if gold is not None and str(gold).isdigit():
        if metric == "mc2":  # the first ``gold`` choices are the true ones (tasks.lm_adapter)
            true_choices = list(range(min(int(gold), len(choices))))
            gold_text = f"choices 0–{int(gold) - 1} are true" if int(gold) > 1 else "choice 0 is true"
        elif int(gold) < len(choices):
            true_choices = [int(gold)]
            gold_text = f"{gold}: {texts[int(gold)].strip()}"
    return {"task": task, "subtask": rec["subtask"], "doc_index": int(rec["doc_index"]), "prompt": prompt,
            "prompt_label": prompt_label, "prompt_tail": prompt[-300:], "choices": choices, "gold": gold,
            "gold_text": gold_text, "true_choices": true_choices, "true_word": "true" if metric == "mc2" else "gold",
            "metric": metric or "", "generative": rec["generation"] is not None and not choices[1:], "picks": []}


def _options(contexts: list[str], continuation: str) -> tuple[str, list[dict[str, str]]]:
    """Winogrande's options as whole sentences: the few-shot preamble they share (up to the last
    blank line common to all), then per option its sentence and the shared continuation, split
    into (before, differs, after) at whole words so the part that differs can be marked."""
    shared = len(_common_prefix(contexts))
    cut = contexts[0].rfind("\n\n", 0, shared)
    cut = cut + 2 if cut >= 0 else 0
    own = [c[cut:] + continuation for c in contexts]
    a = len(_common_prefix(own))
    while a > 0 and any(a < len(o) and o[a].isalnum() and o[a - 1].isalnum() for o in own):
        a -= 1  # not inside a word
    b = len(_common_prefix([o[::-1] for o in own]))
    b = min(b, min(len(o) for o in own) - a)
    while b > 0 and any(o[len(o) - b].isalnum() and o[len(o) - b - 1].isalnum() for o in own):
        b -= 1
    return contexts[0][:cut], [{"before": o[:a], "differs": o[a:len(o) - b], "after": o[len(o) - b:]} for o in own]


def _common_prefix(texts: list[str]) -> str:
    import os

    return os.path.commonprefix(texts) if texts else ""


def _pick(label: str, rec: dict[str, Any], metric: str | None = None) -> dict[str, Any]:
    """One model's answer to a document: per choice the number the metric picks by (``decider``),
    the raw log-likelihoods beside it where that number is another, and whether ✓/✗ applies."""
    lls = [float(x) for x in rec["loglikelihoods"]] if rec["loglikelihoods"] is not None else []
    continuations = list(rec["continuations"]) if rec["continuations"] is not None else []
    decider, name, raw = lls, "log-likelihood", []
    if metric == "acc_norm" and len(continuations) == len(lls):
        # lm-eval's acc_norm: log-likelihood / len(choice), the choice without its leading " " delimiter
        lengths = [max(1, len(c[1:] if c.startswith(" ") else c)) for c in continuations]
        decider, name, raw = [ll / n for ll, n in zip(lls, lengths)], "log-likelihood per character", lls
    elif metric == "mc2" and lls:
        top = max(lls)
        weights = [math.exp(ll - top) for ll in lls]
        decider, name, raw = [w / sum(weights) for w in weights], "share of probability", lls
    digits = 4 if metric in ("acc_norm", "mc2") else 2
    value = rec["value"]
    return {"label": label, "prediction": rec["prediction"], "correct": bool(value and value > 0),
            "judged": metric != "mc2", "value": "—" if _nan(value) else f"{float(value):.3f}",
            "decider": [f"{x:.{digits}f}" for x in decider], "decider_sort": [repr(x) for x in decider],
            "decider_name": name if lls else "", "raw": [f"{x:.2f}" for x in raw],
            "loglikelihoods": [f"{x:.2f}" for x in lls], "generation": rec["generation"], "extracted": rec["extracted"]}


def contamination(comparison: ReportData) -> dict[str, Any]:
    """Each compared model's latest contamination check: per task, the flagged fraction and its interval."""
    from evalsuite.run.contamination import read_checks, summarize

    models = list(dict.fromkeys(e.model for e in comparison.entries))
    frame = read_checks(comparison.results_dir, models=models, latest=True)
    rows = []
    for s in summarize(frame):
        rows.append({"model": s.model, "reference": s.reference or "—", "task": task_label(s.task), "n": s.n,
                     "flagged": s.flagged, "rate": f"{s.rate:.2f}", "ci": f"[{s.low:.2f}, {s.high:.2f}]",
                     "rule": s.rule, "k": f"{100 * s.k:g}%", "min_k": f"{s.mean_min_k:.3f}",
                     "ref_min_k": "—" if math.isnan(s.mean_ref_min_k) else f"{s.mean_ref_min_k:.3f}",
                     "hot": s.likely_contaminated})
    checked = {r["model"] for r in rows}
    checks = sorted(set(frame["check_id"])) if len(frame) else []
    return {"rows": rows, "checks": checks, "unchecked": [m for m in models if m not in checked]}
