"""``evalsuite results``: the latest stored scores as the leaderboard table."""
from __future__ import annotations

import argparse

from ._common import add_results_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "results", help="print stored scores as the leaderboard table",
        description="Print the latest run of each model (or one run) as models x (ARC, HellaSwag, MMLU, "
                    "TruthfulQA, Winogrande, GSM8K, H6).",
    )
    add_results_dir(parser)
    parser.add_argument("--run", metavar="ID", help="show this run instead of each model's latest")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from ..errors import EvalsuiteError
    from ..leaderboard import format_table, rows_from_scores
    from ..store import ResultsStore

    store = ResultsStore(args.results_dir)
    if args.run:
        scores = store.scores(run_id=args.run)
        if scores.empty:
            raise EvalsuiteError(f"no scores for run '{args.run}' in {args.results_dir}/; list runs with pandas.read_parquet('{args.results_dir}/runs')")
        rows = rows_from_scores(scores)
    else:
        latest = store.latest_run_ids()
        if not latest:
            raise EvalsuiteError(f"no results in {args.results_dir}/ yet; run `evalsuite run` first")
        rows = rows_from_scores(store.scores(), run_ids=latest)
    print(format_table(rows))
    return 0
