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
    from ..sharding import all_scores, merge_run
    from ..store import ResultsStore

    store = ResultsStore(args.results_dir)
    notes: list[str] = []
    if args.run:
        merged = merge_run(store, args.run)  # a sharded run's shards merged into one
        scores, notes = merged.scores, merged.notes()
        if scores.empty:
            raise EvalsuiteError(f"no scores for run '{args.run}' in {args.results_dir}/; list runs with pandas.read_parquet('{args.results_dir}/runs')")
        rows = rows_from_scores(scores)
    else:
        latest = store.latest_run_ids()
        if not latest:
            raise EvalsuiteError(f"no results in {args.results_dir}/ yet; run `evalsuite run` first")
        rows = rows_from_scores(all_scores(store), run_ids=latest)
    print("\n".join([format_table(rows), *notes]))
    return 0
