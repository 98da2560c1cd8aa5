"""``evalsuite table``: the paper-style results table (SOLAR Table 2 layout)."""
from __future__ import annotations

import argparse

from evalsuite.cli.options import add_results_dir, add_task_dir


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    from evalsuite.outputs.paper_table import FORMATS

    parser = subparsers.add_parser(
        "table", help="print the paper-style table (Markdown, LaTeX, CSV or HTML)",
        description="Print Model, Size, Type, H6, ARC, HellaSwag, MMLU, TruthfulQA, Winogrande, GSM8K for stored "
                    "runs (each model's latest), best value per column in bold, sorted by H6.",
    )
    parser.add_argument("--format", choices=FORMATS, default="md", help="output format (default: md)")
    parser.add_argument("--published", action="store_true", help="add the published leaderboard rows")
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--models", type=_names, metavar="A,B", help="these models' latest runs (default: every model)")
    pick.add_argument("--runs", type=_names, metavar="ID,ID", help="every model of these run ids")
    parser.add_argument("--tag", metavar="T", help="only runs tagged T")
    add_results_dir(parser)
    add_task_dir(parser)
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from evalsuite.outputs.paper_table import paper_table

    print(paper_table(args.format, results_dir=args.results_dir, models=args.models, runs=args.runs, tag=args.tag,
                      published=args.published))
    return 0
