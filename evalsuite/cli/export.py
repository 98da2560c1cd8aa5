"""``evalsuite export``: a stored run as lm-eval results.json, a model-card model-index block and CSV."""
from __future__ import annotations

import argparse

from evalsuite.cli.options import add_results_dir, add_task_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    from evalsuite.outputs.exports import DEFAULT_SOURCE_URL, FORMATS

    parser = subparsers.add_parser(
        "export", help="write a run as lm-eval results.json, a model-card model-index block and CSV",
        description="Export one stored run: results.json in lm-eval's layout with the v1 task names and metric "
                    "keys (lm-eval's own make_table reads it), model-index.yaml for a Hugging Face model card (the "
                    "six leaderboard entries as on SOLAR's card), and scores.csv. Docs: docs/exports.md.",
    )
    parser.add_argument("ref", nargs="?", default="latest",
                        help="run id, RUN@MODEL, model alias (its latest finished run), tag:T, latest (default) "
                             "or baseline")
    parser.add_argument("--format", dest="formats", default="all", choices=["all", *FORMATS],
                        help="one format, or all three (default)")
    parser.add_argument("--out", metavar="DIR", help="folder to write into (default: exports/<run id>__<model>/)")
    parser.add_argument("--naming", default="harness", choices=["harness", "leaderboard"],
                        help="results.json task keys: lm-eval's v1 task names (arc_challenge, hendrycksTest-...; "
                             "default) or the leaderboard's (harness|arc:challenge|25, ...)")
    parser.add_argument("--name", help="model name in the model-index (default: the model id's last part)")
    parser.add_argument("--source-url", default=DEFAULT_SOURCE_URL,
                        help=f"model-index source url: where the results live (default: {DEFAULT_SOURCE_URL}, "
                             "the file exported beside it)")
    parser.add_argument("--allow-limited", action="store_true",
                        help="export a --limit run's model-index anyway, each metric marked 'n = a of b documents'")
    add_results_dir(parser)
    add_task_dir(parser)
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from evalsuite.outputs.exports import FORMATS, export

    formats = FORMATS if args.formats == "all" else (args.formats,)
    written = export(args.ref, results_dir=args.results_dir, formats=formats, out_dir=args.out, naming=args.naming,
                     name=args.name, allow_limited=args.allow_limited, source_url=args.source_url)
    for fmt, path in written.items():
        print(f"{fmt:12} {path}")
    return 0
