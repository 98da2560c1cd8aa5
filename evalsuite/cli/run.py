"""``evalsuite run``: evaluate models on tasks and store the results."""
from __future__ import annotations

import argparse
from dataclasses import replace
from typing import TYPE_CHECKING

from evalsuite.config import add_run_options
from evalsuite.cli.options import add_log_to, check_log_to, log_after, positive_int, quiet_progress

if TYPE_CHECKING:
    from evalsuite.config import RunConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="evaluate models on the leaderboard tasks",
        description="Evaluate models on tasks exactly as the Open LLM Leaderboard (v1) did, print the "
                    "leaderboard table and store every score and per-sample result as parquet. "
                    "Exit status: 0 every task scored (with --shard: every task of this shard's part); 1 a task failed or had no data (the others still ran "
                    "and are stored; the table says why); 2 bad input found before anything ran; 130 "
                    "interrupted by Ctrl-C (SIGINT), 143 by SIGTERM (rerun with --resume). A dry run exits as the "
                    "run would: 1 when a task has no data or broken data.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scale = parser.add_argument_group("running at scale (docs/scaling.md)")
    add_run_options(parser, groups={"scale": scale})  # every RunConfig field, declared in evalsuite.config
    add_log_to(parser)
    scale.add_argument("--ray", metavar="ADDRESS",
                       help="fan --shards shards out over a Ray cluster (ADDRESS, or 'local' to start one here)")
    scale.add_argument("--shards", type=positive_int, metavar="N", help="with --ray: number of shards")
    parser.add_argument("--dry-run", action="store_true",
                        help="load no weights and evaluate nothing: print per task the documents, requests, tokens "
                             "(lm-eval hf and the evalsuite engine), generation budget and estimated time")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from evalsuite.config import RunConfig
    from evalsuite.errors import EvalsuiteError
    from evalsuite.run.evaluation import evaluate

    if args.shard and (args.ray or args.shards):
        raise EvalsuiteError("--shard runs one shard here; --ray with --shards N runs all N: give one or the other")
    # the GPU is checked after the models (evaluate); the dry run is how a slow CPU run is measured
    config = RunConfig.from_args(args).validate(gpu=False, cpu_budget=not args.dry_run)
    if not config.progress:
        quiet_progress()
    # every check of the command line first, so that the dry run refuses what the run refuses
    check_log_to(args)
    if args.log_to and config.shard:
        raise EvalsuiteError("--log-to logs a whole run, not one shard: once all shards are in, log the merged "
                             "run from Python with evalsuite.outputs.trackers.log_run(TARGET, RUN_ID), or use --ray")
    if (args.ray or args.shards) and not (args.ray and args.shards):
        raise EvalsuiteError("--ray and --shards go together: --ray ADDRESS|local --shards N")
    if args.dry_run:
        from evalsuite.run.dry_run import plan_cost

        planned = plan_cost(config=config)
        print(planned.table())
        return planned.exit_code
    if args.ray or args.shards:
        return _handle_ray(args, config)
    result = evaluate(config=replace(config, device=args.device))  # evaluate says how "auto" chose
    print()
    print(result.table())
    print(f"\nrun {result.run_id}: scores and per-sample results in {result.results_dir}/ "
          f"(runs, scores, samples parquet tables)")
    if config.shard:
        assert isinstance(config.shard, tuple)  # validate() parsed "I/N"
        index, count = config.shard
        print(f"shard {index}/{count} done; once all {count} shards are in {result.results_dir}/, "
              f"`evalsuite results --run {result.run_id}` shows the merged run")
    else:  # one shard is not a run to log; the merged run is (--ray logs it)
        log_after(args, result.run_id)
    return result.exit_code


def _handle_ray(args: argparse.Namespace, config: RunConfig) -> int:
    """``--ray ADDRESS --shards N``: every shard as a Ray task, then the merged table."""
    from evalsuite.run.ray_shards import run_on_ray
    from evalsuite.errors import EvalsuiteError

    if not (args.ray and args.shards):
        raise EvalsuiteError("--ray and --shards go together: --ray ADDRESS|local --shards N")
    result = run_on_ray(args.ray, args.shards, config=config)
    print()
    print(result.table())
    print(f"\nrun {result.run_id} ({args.shards} shards merged): results in {args.results_dir}/")
    log_after(args, result.run_id)
    return result.exit_code
