"""``evalsuite report``: one self-contained HTML file comparing stored runs."""
from __future__ import annotations

import argparse

from evalsuite.cli.options import add_results_dir, add_task_dir


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="write an HTML comparison report of stored runs",
        description="Write one self-contained HTML file (no external resources): the leaderboard table with "
                    "published reference rows, charts with 95% intervals, MMLU by subject, paired differences "
                    "against a baseline, a sample browser and each run's manifest with comparability warnings.",
    )
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--models", type=_names, metavar="A,B", help="these models' latest runs (default: every model)")
    pick.add_argument("--runs", type=_names, metavar="ID,ID", help="every model of these run ids")
    parser.add_argument("--tag", metavar="T", help="only runs tagged T (latest per model)")
    parser.add_argument("--baseline", metavar="MODEL", help="model the others are compared with (default: the first)")
    parser.add_argument("--title", help="the report's title")
    parser.add_argument("--no-published", dest="published", action="store_false",
                        help="leave the published leaderboard rows out of the table")
    add_results_dir(parser)
    add_task_dir(parser)
    parser.add_argument("--out", metavar="FILE", help="HTML file to write (default: reports/report-<run id>.html)")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from evalsuite.outputs.report import build_report

    path = build_report(models=args.models, runs=args.runs, tag=args.tag, baseline=args.baseline,
                        results_dir=args.results_dir, out=args.out, title=args.title, published=args.published)
    print(f"report written to {path}")
    return 0
