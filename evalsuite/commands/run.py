"""``evalsuite run``: evaluate models on tasks and store the results."""
from __future__ import annotations

import argparse

from ..backends import BACKENDS, DEFAULT_BACKEND, GENERATION_MODES
from ._common import add_data_dir, add_log_to, add_results_dir, batch_size, check_log_to, log_after, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="evaluate models on the leaderboard tasks",
        description="Evaluate models on tasks exactly as the Open LLM Leaderboard (v1) did, print the "
                    "leaderboard table and store every score and per-sample result as parquet. "
                    "Exit status: 0 every task scored; 1 a task failed or had no data (the others still ran "
                    "and are stored; the table says why); 2 bad input found before anything ran; 130 "
                    "interrupted (Ctrl-C or SIGTERM: rerun with --resume).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", default="smollm2",
                        help="comma-separated aliases (see `evalsuite models`), Hub ids, model folders, "
                             ".gguf files or dus:BASE:M (default: smollm2)")
    parser.add_argument("--tasks", default="leaderboard",
                        help="comma-separated tasks or suites: arc, hellaswag, mmlu, truthfulqa, winogrande, "
                             "gsm8k, leaderboard (default: leaderboard, all six with H6)")
    parser.add_argument("--limit", type=positive_int, metavar="N",
                        help="evaluate the first N documents of the v1 evaluation order (per subject for MMLU)")
    add_data_dir(parser)
    parser.add_argument("--backend", default=DEFAULT_BACKEND, choices=sorted(BACKENDS),
                        help=f"scoring backend (default: {DEFAULT_BACKEND}; lm-eval-hf is lm-eval's own hf model)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="weights dtype (default: float32 on CPU, the registry's dtype on GPU)")
    parser.add_argument("--batch-size", default="auto", type=batch_size,
                        help="a positive whole number or auto (default). lm-eval-hf: requests per batch; "
                             "evalsuite engine: at most this many rows per forward pass and sequences decoded "
                             "together (its token budget batches by itself under auto)")
    parser.add_argument("--generation", choices=GENERATION_MODES, default=GENERATION_MODES[0],
                        help="evalsuite backend's greedy decoding (GSM8K): batched (default: prompts of any length "
                             "decode together) or exact (one prompt at a time, batch-size-1 arithmetic)")
    add_results_dir(parser)
    parser.add_argument("--tag", help="label stored with the run, e.g. nightly-2026-11-26")
    parser.add_argument("--run-id", help="run id to use (default: a new one)")
    add_log_to(parser)
    scale = parser.add_argument_group("running at scale (README: Running at scale)")
    scale.add_argument("--tensor-parallel", type=positive_int, metavar="N",
                       help="vllm: GPUs one model is split over (default: from the registry and GPU memory)")
    scale.add_argument("--data-parallel", type=positive_int, default=1, metavar="M",
                       help="vllm: model replicas on this machine, through Ray (default: 1)")
    scale.add_argument("--shard", metavar="I/N",
                       help="evaluate documents p %% N == I of each task; N machines with one --run-id form one run")
    scale.add_argument("--ray", metavar="ADDRESS",
                       help="fan --shards shards out over a Ray cluster (ADDRESS, or 'local' to start one here)")
    scale.add_argument("--shards", type=positive_int, metavar="N", help="with --ray: number of shards")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a model's own Python code (registry models that need it are allowed already)")
    parser.add_argument("--dry-run", action="store_true",
                        help="load no weights and evaluate nothing: print per task the documents, requests, tokens "
                             "(lm-eval hf and the evalsuite engine), generation budget and estimated time")
    parser.add_argument("--no-measure", action="store_true",
                        help="with --dry-run: skip the short timed forward of the model (no time estimate)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--no-cache", action="store_true",
                        help="compute every request again, bypassing the request cache (`evalsuite cache info`)")
    # the self-audit option (issue 17; evalsuite.audit)
    parser.add_argument("--no-audit", action="store_true",
                        help="skip the evalsuite engine's self-audit (after each task a seeded ~1%% sample, at least "
                             "8 requests, re-scored by the model's plain forward; beyond tolerance the task is "
                             "scored again the plain way); score rows then say 'not audited'")
    parser.add_argument("--resume", action="store_true",
                        help="continue the latest interrupted run of the same models/tasks/limit/backend/tag (or "
                             "--run-id's) under its run id; says so when there is none. Without it an existing "
                             "--run-id is refused. Cached requests are never recomputed either way")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from ..runner import evaluate

    scale = _scale_kwargs(args)
    if args.dry_run:
        from ..dryrun import plan

        print(plan(args.models, args.tasks, limit=args.limit, data_dir=args.data_dir, backend=args.backend,
                   device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                   shard=scale["shard"], measure=not args.no_measure, progress=not args.no_progress,
                   generation=args.generation).table())
        return 0
    check_log_to(args)
    if args.log_to and scale["shard"]:
        from ..errors import EvalsuiteError

        raise EvalsuiteError("--log-to logs a whole run, not one shard: once all shards are in, log the merged "
                             "run from Python with evalsuite.trackers.log_run(TARGET, RUN_ID), or use --ray")
    if args.ray or args.shards:
        return _handle_ray(args, args.batch_size, scale)
    result = evaluate(
        models=args.models, tasks=args.tasks, limit=args.limit, data_dir=args.data_dir, backend=args.backend,
        device=args.device, dtype=args.dtype, batch_size=args.batch_size, results_dir=args.results_dir, tag=args.tag,
        run_id=args.run_id, resume=args.resume, trust_remote_code=args.trust_remote_code,
        progress=not args.no_progress, use_cache=not args.no_cache, generation=args.generation,
        audit=not args.no_audit, **scale,
    )
    print()
    print(result.table())
    print(f"\nrun {result.run_id}: scores and per-sample results in {result.results_dir}/ "
          f"(runs, scores, samples parquet tables)")
    if scale["shard"]:
        index, count = scale["shard"]
        print(f"shard {index}/{count} done; once all {count} shards are in {result.results_dir}/, "
              f"`evalsuite results --run {result.run_id}` shows the merged run")
    else:  # one shard is not a run to log; the merged run is (--ray logs it)
        log_after(args, result.run_id)
    return result.exit_code


def _scale_kwargs(args: argparse.Namespace) -> dict:
    """--tensor-parallel, --data-parallel and --shard as ``evaluate`` keyword arguments."""
    from ..errors import EvalsuiteError
    from ..sharding import parse_shard

    shard = parse_shard(args.shard) if args.shard else None
    if shard and (args.ray or args.shards):
        raise EvalsuiteError("--shard runs one shard here; --ray with --shards N runs all N: give one or the other")
    if shard and not args.run_id:
        raise EvalsuiteError("--shard needs --run-id: give every shard the same run id so they form one run")
    return {"shard": shard, "tensor_parallel": args.tensor_parallel, "data_parallel": args.data_parallel}


def _handle_ray(args: argparse.Namespace, batch: int | str, scale: dict) -> int:
    """``--ray ADDRESS --shards N``: every shard as a Ray task, then the merged table."""
    from ..distributed import run_on_ray
    from ..errors import EvalsuiteError

    if not (args.ray and args.shards):
        raise EvalsuiteError("--ray and --shards go together: --ray ADDRESS|local --shards N")
    scale.pop("shard")
    result = run_on_ray(
        args.ray, args.shards, run_id=args.run_id,
        models=args.models, tasks=args.tasks, limit=args.limit, data_dir=args.data_dir, backend=args.backend,
        device=args.device, dtype=args.dtype, batch_size=batch, results_dir=args.results_dir, tag=args.tag,
        trust_remote_code=args.trust_remote_code, use_cache=not getattr(args, "no_cache", False),
        audit=not getattr(args, "no_audit", False), **scale,
    )
    print()
    print(result.table())
    print(f"\nrun {result.run_id} ({args.shards} shards merged): results in {args.results_dir}/")
    log_after(args, result.run_id)
    return result.exit_code
