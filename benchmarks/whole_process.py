"""Benchmark: a whole ``evalsuite run`` process, engine (audit on and off) against lm-eval's ``hf`` model.

What a user's wall clock sees: each run is its own process (the venv's ``evalsuite run``, default
settings: the evalsuite engine with its self-audit at the default ``--audit-share``), from start
to exit, so model loading, the capability probe, prompt building, the audit and the store are in
it. The same run with ``--no-audit`` gives the audit's cost, and ``--backend lm-eval-hf`` (lm-eval's
own ``HFLM`` inside the same runner, batch size 1 as v1 ran) the reference. Each run gets a fresh
request cache, so every answer is computed. The runs of one task follow each other, so the load
of the shared machine moves less between them; the ratios are the figures.

Same answers: the engine's stored predictions (log-likelihood tasks) or generated texts (GSM8K)
are compared with lm-eval ``hf``'s, document by document.

    python benchmarks/whole_process.py --model smollm2 --runs arc=16,hellaswag=8,gsm8k=16 \\
        --data-dir ../shared/data --out benchmarks/results/whole-process-cpu-smollm2-fp32.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"
VARIANTS = {"engine": [], "engine_no_audit": ["--no-audit"], "lm_eval_hf": ["--backend", "lm-eval-hf"]}


def run_once(model: str, task: str, limit: int, data_dir: Path, work: Path, name: str, extra: list[str],
             threads: int) -> dict[str, Any]:
    """One whole ``evalsuite run`` process, timed; its stored answers and audit row."""
    import pandas as pd

    results = work / name
    env = {**os.environ, "EVALSUITE_REQUEST_CACHE": str(work / f"{name}.sqlite"), "OMP_NUM_THREADS": str(threads)}
    command = [str(Path(sys.executable).parent / "evalsuite"), "run", "--models", model, "--tasks", task, "--limit", str(limit),
               "--data-dir", str(data_dir), "--results-dir", str(results), "--run-id", name, "--no-progress", *extra]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    samples = pd.concat(pd.read_parquet(p) for p in (results / "samples").rglob("*.parquet"))
    samples = samples.sort_values(["subtask", "doc_index"], na_position="first")
    scores = pd.concat(pd.read_parquet(p) for p in (results / "scores").rglob("*.parquet"))
    row = scores[scores["subtask"].isna()].iloc[0]
    answers = samples["generation"].tolist() if "generation" in samples and samples["generation"].notna().any() \
        else samples["prediction"].astype(str).tolist()
    audit = {k: (None if pd.isna(row[k]) else row[k].item() if hasattr(row[k], "item") else row[k])
             for k in ("audit_status", "audit_n", "audit_agree", "audit_max_abs_diff", "audit_note")}
    return {"seconds": seconds, "answers": answers, "value": float(row["value"]), **audit}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--runs", default="arc=16,hellaswag=8,gsm8k=16", help="task=documents,...")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every run (OMP_NUM_THREADS)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"model": args.model, "threads": args.threads, "machine": platform.processor() or
                              platform.machine(), "load_before": os.getloadavg(), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for item in args.runs.split(","):
            task, limit = item.split("=")
            out: dict[str, Any] = {"docs": int(limit)}
            for name, extra in VARIANTS.items():
                out[name] = run_once(args.model, task, int(limit), args.data_dir, Path(tmp), f"{task}-{name}", extra,
                                     args.threads)
                print(f"{task} {limit} docs, {name}: {out[name]['seconds']:.1f} s", flush=True)
            hf = out["lm_eval_hf"]
            out["speedup"] = hf["seconds"] / out["engine"]["seconds"]
            out["speedup_no_audit"] = hf["seconds"] / out["engine_no_audit"]["seconds"]
            out["audit_seconds"] = out["engine"]["seconds"] - out["engine_no_audit"]["seconds"]
            out["same_answers"] = sum(a == b for a, b in zip(out["engine"]["answers"], hf["answers"], strict=True))
            out["same_answers_no_audit"] = sum(a == b for a, b in zip(out["engine_no_audit"]["answers"], hf["answers"],
                                                                      strict=True))
            report["runs"][task] = out
            args.out.write_text(json.dumps(report, indent=2))
    report["load_after"] = os.getloadavg()
    args.out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return 0


def markdown(report: dict[str, Any]) -> str:
    """The table of docs/speed.md for a report."""
    lines = ["| run | lm-eval hf s | engine s (audit on) | engine s (--no-audit) | speed-up, audit included | "
             "speed-up without the audit | same answers | audit |", "|---|---|---|---|---|---|---|---|"]
    for task, r in report["runs"].items():
        e = r["engine"]
        lines.append(f"| {task}, {r['docs']} documents | {r['lm_eval_hf']['seconds']:.1f} | {e['seconds']:.1f} | "
                     f"{r['engine_no_audit']['seconds']:.1f} | **{r['speedup']:.2f}x** | {r['speedup_no_audit']:.2f}x | "
                     f"{r['same_answers']}/{r['docs']} | {e['audit_status']} {e['audit_agree']}/{e['audit_n']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
