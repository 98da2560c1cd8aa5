"""Experiment trackers: a finished run's parameters, scores and report in MLflow or W&B.

``--log-to mlflow:URI`` (``file:/path``, ``sqlite:///mlflow.db``, ``http://host:5000``) logs,
through MLflow's own client, one MLflow run per evaluated model into experiment ``evalsuite``
(or ``$MLFLOW_EXPERIMENT_NAME``): params (model identity, dtype, backend, device, limit, tag,
versions), metrics (each task x100 with its stderr, H6, and whether H6 is complete) and, as
artifacts, the HTML report and the lm-eval ``results.json`` of the run.
``--log-to wandb:PROJECT`` does the same with Weights & Biases, offline unless ``WANDB_MODE``
says otherwise (``wandb sync`` uploads an offline run later).

Logging happens after the results are stored, so a tracker failure never loses a result.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalsuite.errors import EvalsuiteError
from evalsuite.store.run_views import is_missing

EXPERIMENT = "evalsuite"
PARAM_FIELDS = ("model_id", "model_kind", "revision", "weights_hash", "dtype", "backend", "device", "batch_size",
                "limit", "tag", "evalsuite_version", "git_commit", "lm_eval_version",
                "transformers_version", "torch_version")
EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}


@dataclass(frozen=True)
class Target:
    kind: str  # "mlflow" | "wandb"
    location: str  # MLflow tracking URI, or W&B project

    def __str__(self) -> str:
        return f"{self.kind}:{self.location}"


def parse_target(spec: str) -> Target:
    """``mlflow:URI`` or ``wandb:PROJECT``; checks the client is installed before any work starts."""
    kind, _, location = spec.partition(":")
    if kind not in EXTRAS or not location:
        raise EvalsuiteError(f"--log-to '{spec}' is not mlflow:URI or wandb:PROJECT "
                             "(e.g. mlflow:file:/tmp/mlruns, mlflow:http://localhost:5000, wandb:my-project)")
    import importlib.util

    if importlib.util.find_spec(EXTRAS[kind]) is None:
        raise EvalsuiteError(f"--log-to {kind} needs the {kind} client: pip install 'evalsuite[{kind}]'")
    return Target(kind, location)


@dataclass
class Payload:
    """What is logged for one (run, model): the same for every tracker."""

    run_id: str
    model: str
    params: dict[str, str]
    metrics: dict[str, float]
    artifacts: list[Path]


def payloads(run_id: str, results_dir: str | Path, folder: Path) -> list[Payload]:
    """One payload per model of the run; the run's report and each model's results.json are written into ``folder``."""
    from evalsuite.outputs.exports import _ok_rows, leaderboard_values, lm_eval_results
    from evalsuite.outputs.report import build_report
    from evalsuite.store.run_views import run_views
    from evalsuite.store.parquet_store import slug

    out = []
    views = run_views(results_dir, run_id)
    # one report of the whole run (it shows every model of it), attached to each model's entry
    report = build_report(runs=[run_id], results_dir=results_dir, out=folder / f"report-{slug(run_id)}.html",
                          title=f"evalsuite run {run_id}") if views else None
    for view in views:
        model = view.model
        record = vars(view.record)
        params = {"run_id": run_id, "model": model, **{k: _text(record.get(k)) for k in PARAM_FIELDS}}
        params["status"] = view.status
        tasks = record.get("tasks")
        params["tasks"] = ",".join(tasks if tasks is not None else [])
        metrics: dict[str, float] = {}
        for (task, subtask), rec in _ok_rows(view).items():
            if subtask is not None:
                continue
            metrics[task] = 100.0 * float(rec["value"])
            if not is_missing(rec["stderr"]):
                metrics[f"{task}_stderr"] = 100.0 * float(rec["stderr"])
            metrics[f"{task}_n"] = float(rec["n"])
        values = leaderboard_values(view)
        if values.get("h6") is not None:
            metrics["h6"] = float(values["h6"])
            metrics["h6_complete"] = 1.0 if values["h6_complete"] else 0.0
        stem = f"{run_id}__{slug(model)}"
        assert report is not None  # built whenever there are views
        artifacts = [report]
        try:
            import json

            results = folder / f"results-{stem}.json"
            results.write_text(json.dumps(lm_eval_results(view), indent=2, default=str), encoding="utf-8")
            artifacts.append(results)
        except EvalsuiteError:
            pass  # no finished leaderboard task: the report still says what happened
        out.append(Payload(run_id, model, params, metrics, artifacts))
    return out


def log_run(target: Target | str, run_id: str, results_dir: str | Path = "results") -> list[str]:
    """Log every model of ``run_id`` to ``target``; returns where each went (one line per model)."""
    target = parse_target(target) if isinstance(target, str) else target
    with tempfile.TemporaryDirectory(prefix="evalsuite-log-") as tmp:
        items = payloads(run_id, results_dir, Path(tmp))
        log = _mlflow if target.kind == "mlflow" else _wandb
        try:
            return [log(target.location, item) for item in items]
        except EvalsuiteError:
            raise
        except Exception as exc:  # the tracker's own errors, stated in one line
            raise EvalsuiteError(f"logging run {run_id} to {target} failed ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}); the results are stored in "
                                 f"{results_dir}/") from None


@contextmanager
def _file_store_allowed(uri: str):
    """MLflow 3 refuses ``file:`` stores unless asked; naming one in --log-to is asking."""
    key = "MLFLOW_ALLOW_FILE_STORE"
    local = uri.startswith("file:") or "://" not in uri
    before = os.environ.get(key)
    if local and before is None:
        os.environ[key] = "true"
    try:
        yield
    finally:
        if local and before is None:
            os.environ.pop(key, None)


def _mlflow(uri: str, item: Payload) -> str:
    import mlflow

    with _file_store_allowed(uri):
        client = mlflow.MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        run = client.create_run(experiment_id, run_name=f"{item.model} {item.run_id}",
                                tags={"evalsuite.run_id": item.run_id, "evalsuite.model": item.model})
        mlflow_id = run.info.run_id
        try:
            for key, value in item.params.items():
                client.log_param(mlflow_id, key, value)
            for key, number in item.metrics.items():
                client.log_metric(mlflow_id, key, number)
            for path in item.artifacts:
                client.log_artifact(mlflow_id, str(path), "report" if path.suffix == ".html" else "results")
        except Exception:
            client.set_terminated(mlflow_id, status="FAILED")
            raise
        client.set_terminated(mlflow_id)
    return f"mlflow {uri}: experiment '{name}', run {mlflow_id} ({item.model})"


def _wandb(project: str, item: Payload) -> str:
    import wandb

    mode = os.environ.get("WANDB_MODE", "offline")
    # wandb types ``mode`` as a Literal; WANDB_MODE is the user's string, which wandb itself checks
    run = wandb.init(project=project, name=f"{item.model} {item.run_id}", mode=mode, config=item.params,  # type: ignore[arg-type]
                     reinit="create_new", settings=wandb.Settings(silent=True))
    try:
        run.summary.update(item.metrics)
        artifact = wandb.Artifact(f"evalsuite-{item.run_id}", type="evaluation")
        for path in item.artifacts:
            artifact.add_file(str(path))
        run.log_artifact(artifact)
    finally:
        run.finish()
    return f"wandb ({mode}) project '{project}': run {run.id} in {run.dir} ({item.model})"


def _text(value: Any) -> str:
    return "" if is_missing(value) else str(value)
