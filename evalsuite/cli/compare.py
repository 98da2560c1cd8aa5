"""``evalsuite compare BASELINE CANDIDATE``: paired per-task comparison of two runs."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from evalsuite.cli.options import add_results_dir, add_task_dir

REFS = ("a run id (RUN@MODEL for a run of several models), a model alias (its latest finished run), "
        "tag:T (the latest run tagged T), latest (the latest finished run) or baseline (`evalsuite baseline show`)")


def add_thresholds(parser: argparse.ArgumentParser) -> None:
    from evalsuite.analysis.comparison import DEFAULT_ALPHA, DEFAULT_MAX_DROP

    parser.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP, metavar="POINTS",
                        help=f"a regression is a drop of more than POINTS on the x100 scale (default: {DEFAULT_MAX_DROP:g})")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                        help=f"... that is also significant at this level (default: {DEFAULT_ALPHA:g}); McNemar's exact "
                             "test for 0/1 metrics, a paired bootstrap for mc2 and MMLU")
    parser.add_argument("--markdown", metavar="FILE", type=Path, help="also write the comparison as Markdown (CI job summaries)")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the comparison as JSON")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare two runs per task with paired significance tests",
        description="Compare CANDIDATE with BASELINE task by task on the documents both runs share: both scores, "
                    "the delta with its 95% interval, a paired test and a verdict. Exit status: 0 no regression, "
                    "1 a task regressed (or failed in the candidate), 2 bad input. Each side is " + REFS + ".",
    )
    parser.add_argument("baseline", help="the reference run")
    parser.add_argument("candidate", help="the run under test")
    add_results_dir(parser)
    add_task_dir(parser)
    add_thresholds(parser)
    parser.add_argument("--force", action="store_true",
                        help="compare even if the runs cover different documents or saw different prompts "
                             "(only the shared documents are compared)")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from evalsuite.analysis.comparison import compare_runs

    check_outputs(args.markdown, args.json)  # bad output paths are bad input: refused before comparing
    result = compare_runs(args.results_dir, args.baseline, args.candidate, max_drop=args.max_drop,
                          alpha=args.alpha, force=args.force)
    print(result.table())
    write_outputs(result, args.markdown, args.json)
    return result.exit_code


def check_outputs(markdown: Path | None, json_path: Path | None) -> None:
    """``--markdown``/``--json`` checked as :func:`write_outputs` will write them, before any work."""
    from evalsuite.fsutil import check_output

    for flag, path in (("--markdown", markdown), ("--json", json_path)):
        if path is not None:
            check_output(path, flag)


def write_outputs(result: Any, markdown: Path | None, json_path: Path | None) -> None:
    """``--markdown``/``--json``: never over a file evalsuite did not write, never into a store."""
    from evalsuite.fsutil import write_output

    for flag, path, text in (("--markdown", markdown, result.markdown), ("--json", json_path, result.to_json)):
        if path is not None:
            write_output(path, text(), flag)
