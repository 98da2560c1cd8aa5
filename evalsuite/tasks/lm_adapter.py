"""The lm-eval adapter: leaderboard v1 tasks built on lm-eval 0.4.13's task configs.

The run side's half of :mod:`evalsuite.tasks` (the catalogue, :mod:`~evalsuite.tasks.catalogue`,
is the read side's): it loads a task's data, renders its prompts and scores its answers.

A task YAML names the lm-eval config whose templates it uses (they are byte-identical to v1)
and states where v1 differs: the split shots come from, the few-shot stream, the generation
stops, the metric and its aggregation. lm-eval's ``ConfigurableTask`` renders every prompt and
builds every request (so delimiters and Winogrande's partial evaluation are lm-eval's), our
:class:`~evalsuite.tasks.fewshot.ScheduledSampler` hands it the v1 shots, and lm-eval's
``process_results`` scores each document, except GSM8K, whose v1 strict match is not lm-eval's.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from jinja2.exceptions import UndefinedError

from evalsuite import compat
from evalsuite.tasks.data import SplitData, load_split, process_rows, row_location
from evalsuite.errors import DataFormatError
from evalsuite.tasks.fewshot import FewShotSchedule, ScheduledSampler, ShotDoc, ShotPool, v1_schedule
from evalsuite.tasks.catalogue import TaskSpec, load_spec
from evalsuite.tasks.scorers import GSM8K_INVALID, SampleScore, gsm8k_extract, get_scorer  # noqa: F401  (re-exported)

#: What a document's own content raises in lm-eval's processing and templates: a field missing
#: (KeyError, Jinja's UndefinedError), null or of the wrong type (TypeError, AttributeError on
#: None), a gold answer that is not among the choices or a value pyarrow cannot type (ValueError,
#: ArrowInvalid is one), an index out of range (IndexError). Only these become a one-line
#: DataFormatError naming the file and row; any other exception is a bug and keeps its traceback.
DATA_ERRORS: tuple[type[Exception], ...] = (KeyError, TypeError, ValueError, IndexError, AttributeError, UndefinedError)

@dataclass(frozen=True)
class DocPrompt:
    """Everything a model is asked about one document, in lm-eval ``Instance`` form.

    ``instances`` are what a backend receives; the other fields describe them for people,
    for parquet rows and for parity checks.
    """

    task: str
    subtask: str | None
    doc_index: int
    eval_position: int
    request_type: str  # "loglikelihood" | "generate_until"
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    until: tuple[str, ...] | None
    gold: str
    doc: dict[str, Any]
    instances: tuple[Any, ...]

    @cached_property
    def prompt_hash(self) -> str:
        payload = json.dumps([self.contexts, self.continuations, self.until], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        """The ``evalsuite prompts`` line: one document's exact requests."""
        row: dict[str, Any] = {"task": self.task}
        if self.subtask is not None:
            row["subtask"] = self.subtask
        row.update(doc_index=self.doc_index, eval_position=self.eval_position)
        if self.request_type == "generate_until":
            row.update(context=self.contexts[0], until=list(self.until or ()))
        elif len(self.contexts) > 1:
            row.update(contexts=list(self.contexts), continuation=self.continuations[0])
        else:
            row.update(context=self.contexts[0], continuations=list(self.continuations))
        return row


@dataclass
class TaskUnit:
    """One lm-eval task object with its documents: the whole task, or one MMLU subject."""

    subtask: str | None
    lm_task: Any
    docs: list[dict[str, Any]]
    row_indices: list[int]
    schedule: FewShotSchedule
    pool: ShotPool
    #: Row (as stored in the few-shot split) of each pool entry, to locate a broken shot.
    shot_row_indices: list[int] = field(default_factory=list)


class LoadedTask:
    """A task with its data loaded: renders v1 prompts in evaluation order and scores results."""

    def __init__(self, spec: TaskSpec, data_dir: Path | None):
        compat.check_versions()  # prompts come from lm-eval's internals: refuse a release they may differ in
        self.spec = spec
        self.scorer = get_scorer(spec.scorer)
        self.data_files: dict[str, str] = {}
        eval_data = self._load(spec.eval_split, data_dir)
        shot_data = self._load(spec.fewshot_split, data_dir) if spec.fewshot_split else None
        self.eval_source = eval_data.source
        self._eval_rows = eval_data.rows  # as stored, to explain a row the templates cannot render
        self._shot_data = shot_data
        try:
            with compat.compiled_templates():
                self.units = self._build_units(eval_data, shot_data)
        except DATA_ERRORS as exc:  # lm-eval's document processing met a row it cannot read
            for data in (eval_data, shot_data):
                if data is not None and (found := _odd_row(data.rows)) is not None:
                    row, what = found
                    raise DataFormatError(f"{row_location(data.source, row)}: {what} ({_short(exc)}); fix or "
                                          f"remove the row, or replace the file with an intact copy") from None
            raise DataFormatError(f"{eval_data.source}: the {spec.name} documents cannot be prepared ({_short(exc)}); "
                                  f"replace the file with an intact copy") from None

    def _load(self, split: str, data_dir: Path | None) -> SplitData:
        data = load_split(self.spec.dataset, split, data_dir)
        self.data_files[data.source] = data.sha256
        return data

    @property
    def n_docs(self) -> int:
        return sum(len(u.docs) for u in self.units)

    def _build_units(self, eval_data: SplitData, shot_data: SplitData | None) -> list[TaskUnit]:
        spec = self.spec
        groups: dict[str | None, list[int]]  # None: the one group of an ungrouped task
        shot_groups: dict[str | None, list[int]]
        if spec.group_by is None:
            groups = {None: list(range(len(eval_data.rows)))}
            shot_groups = {None: list(range(len(shot_data.rows)))} if shot_data else {}
        else:
            groups = _group_rows(eval_data.rows, spec.group_by)
            shot_groups = _group_rows(shot_data.rows, spec.group_by) if shot_data else {}
        units = []
        for group, rows in sorted(groups.items(), key=lambda kv: (kv[0] is not None, kv[0] or "")):
            eval_rows = [eval_data.rows[i] for i in rows]
            shot_rows = [shot_data.rows[i] for i in shot_groups.get(group, [])] if shot_data else []
            lm_task, docs, pool = _make_lm_task(spec, group, eval_rows, shot_rows)
            schedule = v1_schedule(
                len(docs), len(shot_rows), spec.num_fewshot, random_shots=spec.shots == "v1_random"
            )
            shot_indices = shot_groups.get(group, []) if shot_data else []
            units.append(TaskUnit(group, lm_task, docs, rows, schedule, pool, list(shot_indices)))
        return units

    def prompts(self, limit: int | None = None) -> list[DocPrompt]:
        """Every document's requests, in v1 evaluation order (per subject for MMLU)."""
        out: list[DocPrompt] = []
        with compat.compiled_templates():  # lm-eval compiles each template per call otherwise
            for unit in self.units:
                order = unit.schedule.order if limit is None else unit.schedule.order[:limit]
                try:
                    unit.pool.prepare(i for local in order for i in unit.schedule.shots[local])
                except DATA_ERRORS as exc:  # lm-eval's document processing met a training row it cannot read
                    raise DataFormatError(self._shot_problem(exc)) from None
                for position, local in enumerate(order):
                    try:
                        out.append(self._prompt(unit, local, position))
                    except DATA_ERRORS as exc:  # a row the templates cannot render: say which, and which fields
                        raise DataFormatError(self._shot_row_problem(unit, local, exc)
                                              or self._row_problem(unit, local, exc)) from None
        return out

    def _shot_problem(self, exc: Exception) -> str:
        """The few-shot rows are processed when first drawn: a broken one, located as in ``__init__``."""
        data = self._shot_data
        found = _odd_row(data.rows) if data is not None else None
        if data is not None and found is not None:
            return (f"{row_location(data.source, found[0])}: {found[1]} ({_short(exc)}); fix or remove the row, "
                    f"or replace the file with an intact copy")
        source = data.source if data is not None else self.eval_source
        return f"{source}: the {self.spec.name} few-shot documents cannot be prepared ({_short(exc)}); replace the file with an intact copy"

    def _row_problem(self, unit: TaskUnit, local: int, exc: Exception) -> str:
        """``file line N: field 'x' is missing (...)``: a broken row, located and explained."""
        row = unit.row_indices[local]
        where = row_location(self.eval_source, row)
        return f"{where}: {_what_is_wrong(self._eval_rows, row, unit.lm_task)} ({_short(exc)}); fix or remove the row"

    def _shot_row_problem(self, unit: TaskUnit, local: int, exc: Exception) -> str | None:
        """When the document renders alone but not with its shots, the broken row is a few-shot
        (training) row: found by rendering the document with each of its shots in turn, and
        located in the few-shot split's file. None when the document itself is the problem."""
        data = self._shot_data
        if data is None or self.spec.num_fewshot == 0:
            return None
        task, doc = unit.lm_task, unit.docs[local]
        try:
            task.construct_requests(doc, task.fewshot_context(doc, 0), metadata=(self.spec.name, 0, 1))
            self._gold(unit, doc)
        except Exception:
            return None  # the evaluation row itself
        for shot in unit.schedule.shots[local]:
            try:
                with task.sampler.serving([shot]):
                    task.fewshot_context(doc, 1)
            except Exception:
                row = unit.shot_row_indices[shot] if shot < len(unit.shot_row_indices) else shot
                return (f"{row_location(data.source, row)} (a few-shot row): {_what_is_wrong(data.rows, row, task)} "
                        f"({_short(exc)}); fix or remove the row")
        return None

    def _prompt(self, unit: TaskUnit, local: int, position: int) -> DocPrompt:
        spec, task, doc = self.spec, unit.lm_task, unit.docs[local]
        if spec.num_fewshot > 0:
            with task.sampler.serving(unit.schedule.shots[local]):
                ctx = task.fewshot_context(doc, spec.num_fewshot)
        else:
            ctx = task.fewshot_context(doc, 0)
        doc_index = unit.row_indices[local]
        made = task.construct_requests(doc, ctx, metadata=(spec.name, doc_index, 1))
        instances = tuple(made) if isinstance(made, list) else (made,)
        if spec.is_generation:
            context, gen_kwargs = instances[0].args
            return DocPrompt(
                spec.name, unit.subtask, doc_index, position, "generate_until", (context,), (),
                tuple(gen_kwargs["until"]), str(self.scorer.gold(task, doc)), doc, instances,
            )
        pairs = [inst.args for inst in instances]
        contexts = tuple(dict.fromkeys(p[0] for p in pairs))
        continuations = tuple(dict.fromkeys(p[1] for p in pairs)) if len(contexts) > 1 else tuple(p[1] for p in pairs)
        return DocPrompt(
            spec.name, unit.subtask, doc_index, position, "loglikelihood", contexts, continuations,
            None, str(self._gold(unit, doc)), doc, instances,
        )

    def _gold(self, unit: TaskUnit, doc: dict[str, Any]) -> int | str:
        return self.scorer.gold(unit.lm_task, doc)

    def score(self, prompt: DocPrompt, responses: Sequence[Any]) -> SampleScore:
        """Score one document from the backend's responses to its instances (in order), by the
        task's scorer (:mod:`evalsuite.tasks.scorers`)."""
        unit = self._unit(prompt.subtask) if not self.scorer.generation else None
        return self.scorer.score(unit.lm_task if unit else None, prompt.doc, prompt.gold, responses, self.spec.result_key)

    def _unit(self, subtask: str | None) -> TaskUnit:
        for unit in self.units:
            if unit.subtask == subtask:
                return unit
        raise KeyError(subtask)


def load_tasks(names: Sequence[str], data_dir: Path | None,
               revisions: dict[str | None, str] | None = None) -> tuple[dict[str, LoadedTask], dict[str, str]]:
    """The tasks whose data loads, and for the others why not (a missing or unreadable file);
    ``revisions``: Hub dataset revisions (:func:`evalsuite.tasks.data.parse_data_revision`)."""
    from dataclasses import replace

    from evalsuite.errors import MissingDataError
    from evalsuite.tasks.data import with_revision

    loaded: dict[str, LoadedTask] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        try:
            spec = load_spec(name)
            loaded[name] = LoadedTask(replace(spec, dataset=with_revision(spec.dataset, revisions or {})), data_dir)
        except (MissingDataError, DataFormatError) as exc:
            unavailable[name] = str(exc)
    return loaded, unavailable


def _short(exc: BaseException) -> str:
    return ((f"{type(exc).__name__}: {exc}".splitlines()) or [type(exc).__name__])[0][:160]


def _template_fields(template: Any) -> list[str]:
    """Top-level document fields a Jinja template string reads (empty for functions and constants)."""
    if not isinstance(template, str) or "{{" not in template:
        return []
    import jinja2
    from jinja2 import meta

    return sorted(meta.find_undeclared_variables(jinja2.Environment().parse(template)))


def _what_is_wrong(rows: list[dict[str, Any]], row: int, lm_task: Any) -> str:
    """Why row ``row`` cannot be rendered: fields missing or null where another row has them,
    else the gold answer's fields and their values."""
    doc = rows[row]
    reference = rows[0] if row else (rows[1] if len(rows) > 1 else {})
    missing = [k for k in reference if k not in doc]
    nulls = [k for k, v in doc.items() if v is None and reference.get(k) is not None]
    if missing or nulls:
        return "; ".join([*(f"field '{k}' is missing" for k in missing), *(f"field '{k}' is null" for k in nulls)])
    fields = _template_fields(lm_task.config.doc_to_target)
    what = "the gold answer cannot be read" + (f" from field(s) {', '.join(fields)}" if fields else "")
    if fields:
        what += " (" + ", ".join(f"{f}={doc.get(f)!r}" for f in fields if f in doc) + ")"
    return what


def _odd_row(rows: list[dict[str, Any]]) -> tuple[int, str] | None:
    """The first row lacking a field (or holding null where) the first row has a value."""
    if not rows:
        return None
    reference = rows[0]
    for index, row in enumerate(rows):
        for key, value in reference.items():
            if key not in row:
                return index, f"field '{key}' is missing"
            if row[key] is None and value is not None:
                return index, f"field '{key}' is null"
    return None


def _group_rows(rows: list[dict[str, Any]], key: str) -> dict[str | None, list[int]]:
    groups: dict[str | None, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row[key], []).append(i)
    return groups


@lru_cache(maxsize=1)
def _task_class() -> type:
    """lm-eval's ``ConfigurableTask`` with a few-shot document's fields rendered once.

    A training row drawn as a shot by many documents (HellaSwag: 100,420 draws from 39,905
    rows; an MMLU subject: the same 5 dev rows for every question) is a
    :class:`~evalsuite.tasks.fewshot.ShotDoc`, which keeps what lm-eval's ``doc_to_text`` /
    ``doc_to_target`` / ``doc_to_choice`` returned for it. The memo lives on the document
    itself, so it cannot outlive it or answer for another one; other documents go straight
    to lm-eval.
    """
    from lm_eval.api.task import ConfigurableTask

    def memoized(name: str) -> Any:
        compute = getattr(ConfigurableTask, name)

        def method(self: Any, doc: Any, field: Any = None) -> Any:
            if not isinstance(doc, ShotDoc) or not (field is None or isinstance(field, str)):
                return compute(self, doc, field)
            key = (name, field)
            if key not in doc.rendered:
                doc.rendered[key] = compute(self, doc, field)
            return doc.rendered[key]

        method.__name__ = name
        method.__doc__ = compute.__doc__
        return method

    return type("V1Task", (ConfigurableTask,), {name: memoized(name) for name in ("doc_to_text", "doc_to_target", "doc_to_choice")})


def _make_lm_task(spec: TaskSpec, group: str | None, eval_rows: list[dict], shot_rows: list[dict]) -> tuple[Any, list[dict], ShotPool]:
    """An lm-eval ``ConfigurableTask`` from lm-eval's own config, fed our rows and v1 shots.

    The config's ``process_docs`` (HellaSwag's preprocessing) is lm-eval's, but evalsuite calls
    it: on the evaluation rows once, and on few-shot rows only when the v1 stream draws them
    (:class:`~evalsuite.tasks.fewshot.ShotPool`), instead of lm-eval processing the whole training
    split (39,905 HellaSwag rows) for every task object. Returns the task, its processed
    evaluation documents and its shot pool.
    """
    import datasets

    # lm-eval logs a warning per task object about custom datasets and fewshot defaults.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    config = compat.load_lm_eval_yaml(spec.lm_eval_config_path)
    for key in ("tag", "group", "task_alias", "dataset_kwargs", "filter_list"):
        config.pop(key, None)
    config.update(spec.overrides)
    process = config.pop("process_docs", None)
    docs = process_rows(process, eval_rows)
    pool = ShotPool(shot_rows, process)
    # lm-eval reads its dataset only to check the first document's fields when the task is
    # made; evalsuite serves every document itself (``docs``), so one row is enough (hashing
    # 10,042 HellaSwag rows into an Arrow dataset cost half a second per load).
    dataset = datasets.DatasetDict({spec.eval_split: datasets.Dataset.from_list(docs[:1])})
    for key in ("training_split", "validation_split", "test_split"):
        config[key] = None
    config[{"train": "training_split", "validation": "validation_split", "test": "test_split"}.get(spec.eval_split, "test_split")] = spec.eval_split
    config.update(
        task=f"evalsuite_{spec.name}" + (f"_{group}" if group else ""),
        custom_dataset=lambda **_: dataset,
        num_fewshot=spec.num_fewshot,
        fewshot_split=None,
        # the shots come from the pool; lm-eval only formats them
        fewshot_config={"sampler": ScheduledSampler, "samples": []} if spec.num_fewshot > 0 else None,
    )
    if spec.description is not None:
        config["description"] = spec.description.format(group=(group or "").replace("_", " "))
    task = _task_class()(config=config)
    if spec.num_fewshot > 0:
        task.sampler.pool = pool
    return task, docs, pool
