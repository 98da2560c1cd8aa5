"""The dry-run estimate against a real run, task by task, on this machine.

For each task: the plan (``evalsuite.plan_cost``, with a fresh speed measurement) of the first N
documents, then the same documents evaluated for real with the evalsuite engine exactly as the
runner sends them (``CHUNK_DOCS`` documents per call, no request cache), timed. The time
compared is the model's work (what the estimate predicts); loading the model and the data is
reported separately. MMLU takes ``--mmlu-limit`` documents per subject (5 x 57 = 285 by
default; 50 per subject would be 2,850 documents). Writes a JSON with both and their ratio.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/dryrun_vs_actual.py --limit 50 \\
        --out benchmarks/results/dryrun-vs-actual-smollm2.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import evalsuite  # noqa: E402
from evalsuite.backends import BackendOptions, build_backend  # noqa: E402
from evalsuite.config import CHUNK_DOCS  # noqa: E402
from evalsuite.tasks.data import resolve_data_dir  # noqa: E402
from evalsuite.analysis.leaderboard import LEADERBOARD_TASKS  # noqa: E402
from evalsuite.models.source import resolve_and_materialize  # noqa: E402
from evalsuite.run.evaluation import run_requests  # noqa: E402
from evalsuite.tasks import LoadedTask, load_spec  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--mmlu-limit", type=int, default=5)
    parser.add_argument("--tasks", default=",".join(LEADERBOARD_TASKS))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "dryrun-vs-actual-smollm2.json"))
    args = parser.parse_args()
    import torch

    data_dir = resolve_data_dir(args.data_dir)
    out = Path(args.out)
    # tasks measured earlier stay (rerun a task with --tasks to replace its row)
    report: dict = json.loads(out.read_text()) if out.is_file() else {"tasks": {}}
    report.update({"model": args.model, "machine": f"{platform.machine()}, shared 2-core CPU",
                   "torch_threads": torch.get_num_threads(), "limit": args.limit, "mmlu_limit": args.mmlu_limit})
    report.pop("speed", None)
    start = time.perf_counter()
    source = resolve_and_materialize(args.model)
    lm = build_backend("evalsuite", source, BackendOptions())
    report["model_load_s"] = round(time.perf_counter() - start, 1)
    first = True
    for name in args.tasks.split(","):
        limit = args.mmlu_limit if name == "mmlu" else args.limit
        # a fresh measurement before the first task, then the kept one
        planned = evalsuite.plan_cost(models=[args.model], tasks=[name], limit=limit, data_dir=data_dir,
                                 remeasure=first).models[0]
        first = False
        plan = planned.tasks[0]
        start = time.perf_counter()
        task = LoadedTask(load_spec(name), data_dir)
        prompts = task.prompts(limit)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        new_tokens = 0
        for begin in range(0, len(prompts), CHUNK_DOCS):
            responses = run_requests(lm, prompts[begin:begin + CHUNK_DOCS])
            if plan.kind == "generate_until":
                new_tokens += sum(len(lm.tok_encode(r[0])) for r in responses)
        actual = time.perf_counter() - start
        row = {
            "docs": plan.docs, "requests": plan.requests, "lm_eval_hf_tokens": plan.lm_eval_tokens,
            "engine_tokens": plan.engine_tokens, "median_doc_tokens": plan.median_doc_tokens,
            "estimated_s": round(plan.est_seconds, 1), "actual_s": round(actual, 1),
            "actual_over_estimate": round(actual / plan.est_seconds, 2), "task_load_s": round(load_s, 1),
            "load_average": round(os.getloadavg()[0], 1),
        }
        if plan.kind == "generate_until":
            row.update(estimated_max_s=round(plan.est_seconds_max, 1), new_tokens_expected=plan.new_tokens_expected,
                       new_tokens_max=plan.new_tokens_max, new_tokens_generated_approx=new_tokens)
        row["speed_profile"] = planned.speed.__dict__ if planned.speed else None  # what the estimate used
        report["tasks"][name] = row
        print(name, json.dumps(row), flush=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
    est = sum(r["estimated_s"] for r in report["tasks"].values())
    act = sum(r["actual_s"] for r in report["tasks"].values())
    report["total"] = {"estimated_s": round(est, 1), "actual_s": round(act, 1), "actual_over_estimate": round(act / est, 2)}
    out.write_text(json.dumps(report, indent=1) + "\n")
    print("total", json.dumps(report["total"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
