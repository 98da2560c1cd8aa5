"""Measure the half-precision noise the self-audit must tolerate: the engine's fast path against
the plain executor (both correct, batched differently) on real prompts, per request and per
continuation token. The audit's bf16/fp16 tolerances (evalsuite.run.audit.HALF_TOLERANCE_PER_TOKEN)
are chosen above what this measures, with margin; the numbers go to docs/exactness.md.

    python benchmarks/audit_tolerance.py --model smollm2 --dtype bfloat16 --limit 3 \\
        --out benchmarks/results/audit-tolerance-cpu-smollm2-bf16.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evalsuite.run.audit import tolerance  # noqa: E402
from evalsuite.backends import BackendOptions  # noqa: E402
from evalsuite.backends.engine import wrap_model  # noqa: E402
from evalsuite.backends.engine.plain import plain_loglikelihoods  # noqa: E402
from evalsuite.tasks import LoadedTask, load_spec  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tasks", default="arc,hellaswag,mmlu,truthfulqa,winogrande")
    parser.add_argument("--limit", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from evalsuite.models.loading import load_transformers
    from evalsuite.models.source import resolve_and_materialize

    model, tokenizer = load_transformers(resolve_and_materialize(args.model), args.dtype, args.device)
    engine = wrap_model(model, tokenizer, BackendOptions(device=args.device, dtype=args.dtype))
    report = {"model": args.model, "dtype": args.dtype, "device": args.device, "executor": engine.executor.name,
              "tasks": {}}
    for task in args.tasks.split(","):
        prompts = LoadedTask(load_spec(task), args.data_dir).prompts(args.limit)
        instances = [inst for p in prompts for inst in p.instances]
        pairs = [engine.encode_pair(*inst.args) for inst in instances]
        clock = time.perf_counter()
        fast = engine.loglikelihood(instances)
        with torch.inference_mode():
            plain = plain_loglikelihoods(model, pairs, max_length=engine.max_length, logits_dtype=engine.logits_dtype)
        deltas = [abs(a[0] - b[0]) for a, b in zip(fast, plain, strict=True)]
        per_token = [d / len(cont) for d, (_, cont) in zip(deltas, pairs, strict=True)]
        report["tasks"][task] = {
            "requests": len(instances), "continuation_tokens_max": max(len(c) for _, c in pairs),
            "max_abs_diff": max(deltas), "mean_abs_diff": sum(deltas) / len(deltas),
            "max_abs_diff_per_token": max(per_token),
            "greedy_flips": sum(a[1] != b[1] for a, b in zip(fast, plain, strict=True)),
            "beyond_audit_tolerance": sum(d > tolerance(args.dtype, len(c)) for d, (_, c) in zip(deltas, pairs)),
            "seconds": time.perf_counter() - clock,
        }
        row = report["tasks"][task]
        print(f"{task}: {row['requests']} requests, max |d| {row['max_abs_diff']:.2e}, max |d|/token "
              f"{row['max_abs_diff_per_token']:.2e}, greedy flips {row['greedy_flips']}, beyond tolerance "
              f"{row['beyond_audit_tolerance']}", flush=True)
    report["max_abs_diff_per_token"] = max(r["max_abs_diff_per_token"] for r in report["tasks"].values())
    report["audit_tolerance_per_token"] = tolerance(args.dtype, 1)
    print(f"max |d|/token {report['max_abs_diff_per_token']:.2e}; audit tolerance {report['audit_tolerance_per_token']:g}/token")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
