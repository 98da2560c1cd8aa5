"""``evalsuite results``: the latest stored scores as the leaderboard table."""
from __future__ import annotations

import argparse

from evalsuite.cli.options import add_results_dir, add_task_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "results", help="print stored scores as the leaderboard table",
        description="Print the latest run of each model (or one run) as models x (ARC, HellaSwag, MMLU, "
                    "TruthfulQA, Winogrande, GSM8K, H6).",
    )
    add_results_dir(parser)
    add_task_dir(parser)
    parser.add_argument("--run", metavar="ID", help="show this run (shards merged) instead of each model's latest "
                                                     "finished run")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from evalsuite.analysis.leaderboard import run_summary
    from evalsuite.store.run_views import latest_runs, run_views

    views = run_views(args.results_dir, args.run) if args.run else latest_runs(args.results_dir)
    if not views:
        from evalsuite.errors import EvalsuiteError

        raise EvalsuiteError(f"no finished run in {args.results_dir}/ yet; run `evalsuite run` first")
    print(run_summary(views))
    return 0
