"""Benchmark: the self-audit's share of a task's time on a full split, measured per task.

Why a benchmark of its own: on the small runs people make the audit's one-request floor
dominates, so the share of a full split cannot be read off them, and the dry run's estimate
prices a plain-executor token like an engine token. Here both rates are measured in one
process on the same documents, and the full split's sample comes from the runner's own choice:

1. the full split is planned as the runner plans it (:func:`evalsuite.run.dry_run._plan_task`
   with the default ``--audit-share``): its engine tokens and the audit's sample (plain tokens),
   timed, since the runner plans the sample the same way after each task;
2. on the first ``--limit`` documents, the engine answers (seconds per engine token, the dry
   run's count of those documents) and the audit re-checks every one of them with a share of 1
   (seconds per plain token: whole documents, as the full split's sample is made of, not just
   the floor's longest input);
3. projected share = (full sample's plain tokens x plain seconds per token + planning) /
   (full split's engine tokens x engine seconds per engine token).

The two runs alternate ``--rounds`` times and the best of each counts (the machine is shared).
GSM8K: engine = batched generation; audit = one forward over prompt + generated tokens per
prompt; tokens = prompt + expected new tokens, as the sample is budgeted.

    python benchmarks/audit_share.py --model smollm2 --limit 16 --threads 1 \\
        --out benchmarks/results/audit-share-cpu-smollm2-fp32.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evalsuite.backends import BackendOptions  # noqa: E402
from evalsuite.backends.engine import EngineLM, wrap_model  # noqa: E402
from evalsuite.run.audit import Auditor  # noqa: E402
from evalsuite.run.audit_sample import SHARE  # noqa: E402
from evalsuite.run.dry_run import TaskPlan, _plan_task  # noqa: E402
from evalsuite.tasks import DocPrompt, LoadedTask, load_spec  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RUN_ID = "audit-share-benchmark"


def plan(engine: EngineLM, loaded: LoadedTask, prompts: list[DocPrompt] | None, share: float) -> TaskPlan:
    """The runner's counting (engine tokens) and audit sample of ``prompts`` (None: the full split)."""
    population = loaded.prompts(None) if prompts is None else prompts
    return _plan_task(loaded, engine.tokenizer, engine.max_length, None, None, "evalsuite", None,
                      engine.device.type, prompts=population, audit=(share, RUN_ID))


def answer(engine: EngineLM, prompts: list[DocPrompt], generation: bool) -> tuple[list[list[Any]], float]:
    """The engine's answers per document, from cold, and the seconds they took."""
    instances = [inst for p in prompts for inst in p.instances]
    engine.forget()
    start = time.perf_counter()
    flat = engine.generate_until(instances) if generation else engine.loglikelihood(instances)
    seconds = time.perf_counter() - start
    grouped, at = [], 0
    for p in prompts:
        grouped.append(list(flat[at:at + len(p.instances)]))
        at += len(p.instances)
    return grouped, seconds


def measure(engine: EngineLM, loaded: LoadedTask, prompts: list[DocPrompt], rounds: int) -> dict[str, Any]:
    generation = loaded.spec.is_generation
    start = time.perf_counter()
    full = plan(engine, loaded, None, SHARE)
    planning = time.perf_counter() - start
    small = plan(engine, loaded, prompts, 1.0)
    every = Auditor(engine, share=1.0)
    engine_s = audit_s = float("inf")
    status: dict[str, Any] = {}
    for _ in range(rounds):  # alternating; the best of each counts
        grouped, seconds = answer(engine, prompts, generation)
        engine_s = min(engine_s, seconds)
        start = time.perf_counter()
        result = every.check(loaded, prompts, grouped, RUN_ID)
        audit_s = min(audit_s, time.perf_counter() - start)
        status = {"audit_status": result.status, "audit_n": result.n, "audit_agree": result.agree}
    # the audit's engine tokens: what its budget is a share of (generation: prompts + expected new tokens)
    engine_per_token = engine_s / max(1, small.audit.engine_tokens)
    plain_per_token = audit_s / max(1, small.audit.tokens)
    full_engine_s = full.audit.engine_tokens * engine_per_token
    full_audit_s = full.audit.tokens * plain_per_token + planning
    return {
        "docs": len(prompts), "full_docs": full.docs,
        "engine_tokens": small.audit.engine_tokens, "plain_tokens": small.audit.tokens, **status,
        "engine_seconds": engine_s, "audit_all_seconds": audit_s,
        "engine_s_per_engine_token": engine_per_token, "plain_s_per_plain_token": plain_per_token,
        "plain_over_engine_per_token": plain_per_token / engine_per_token,
        "full_engine_tokens": full.audit.engine_tokens, "full_sample_plain_tokens": full.audit.tokens,
        "full_sample_documents": len(full.audit.picked), "full_sample_token_share": full.audit.tokens / max(1, full.audit.engine_tokens),
        "full_planning_seconds": planning,
        "full_engine_seconds_projected": full_engine_s, "full_audit_seconds_projected": full_audit_s,
        "audit_share_projected_full": full_audit_s / full_engine_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tasks", default="arc,hellaswag,mmlu,truthfulqa,winogrande,gsm8k")
    parser.add_argument("--limit", type=int, default=16, help="documents measured per task (MMLU: per subject)")
    parser.add_argument("--mmlu-subjects", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("audit_share.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from evalsuite.models.loading import load_transformers
    from evalsuite.models.source import resolve_and_materialize

    model, tokenizer = load_transformers(resolve_and_materialize(args.model), args.dtype, args.device)
    engine = wrap_model(model, tokenizer, BackendOptions(device=args.device, dtype=args.dtype))
    report: dict[str, Any] = {
        "model": args.model, "dtype": args.dtype, "device": args.device, "share": SHARE,
        "machine": (torch.cuda.get_device_name() if args.device == "cuda"
                    else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"),
        "rounds": args.rounds, "tasks": {},
    }
    for task in [t for t in args.tasks.split(",") if t]:
        loaded = LoadedTask(load_spec(task), args.data_dir)
        prompts = loaded.prompts(args.limit)
        if task == "mmlu":
            subjects = list(dict.fromkeys(p.subtask for p in prompts))[:args.mmlu_subjects]
            prompts = [p for p in prompts if p.subtask in subjects]
        print(f"  {task}: {len(prompts)} documents", flush=True)
        row = report["tasks"][task] = measure(engine, loaded, prompts, args.rounds)
        print(f"  {task}: plain/engine per token {row['plain_over_engine_per_token']:.2f}, full sample "
              f"{row['full_sample_token_share']:.2%} of the engine tokens -> audit "
              f"{row['audit_share_projected_full']:.2%} of the task's time", flush=True)
        args.out.write_text(json.dumps(report, indent=2))  # partial results survive an interruption
    rows = report["tasks"].values()
    total_audit = sum(r["full_audit_seconds_projected"] for r in rows)
    total_engine = sum(r["full_engine_seconds_projected"] for r in rows)
    report["suite"] = {"audit_share_projected_full": total_audit / total_engine if total_engine else None}
    args.out.write_text(json.dumps(report, indent=2))
    worst = max(rows, key=lambda r: r["audit_share_projected_full"], default=None)
    if worst is not None:
        print(f"suite: audit {report['suite']['audit_share_projected_full']:.2%} of the time; "
              f"largest task share {worst['audit_share_projected_full']:.2%}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
