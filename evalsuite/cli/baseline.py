"""``evalsuite baseline set|show``: the accepted run that nightly evaluations are compared with."""
from __future__ import annotations

import argparse

from evalsuite.cli.options import add_results_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "baseline", help="set or show the accepted baseline run",
        description="The baseline is the run `evalsuite compare baseline latest` and `evalsuite nightly` compare "
                    "with; it is stored in <results-dir>/baseline.json.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    set_parser = actions.add_parser("set", help="accept a run as the baseline")
    set_parser.add_argument("ref", metavar="RUN|tag:T|MODEL",
                            help="a run id (RUN@MODEL for several models), tag:T, a model alias or latest")
    add_results_dir(set_parser)
    set_parser.set_defaults(func=handle_set)
    show = actions.add_parser("show", help="print the baseline run")
    add_results_dir(show)
    show.set_defaults(func=handle_show)


def handle_set(args: argparse.Namespace) -> int:
    from evalsuite.store.run_views import set_baseline

    view = set_baseline(args.results_dir, args.ref)
    print(f"baseline: {view.describe()}")
    return 0


def handle_show(args: argparse.Namespace) -> int:
    from evalsuite.store.run_views import read_baseline
    from evalsuite.errors import EvalsuiteError

    base = read_baseline(args.results_dir)
    if base is None:
        raise EvalsuiteError(f"no baseline set in {args.results_dir}/; set one with `evalsuite baseline set RUN|tag:T|MODEL`")
    tag = f", tag {base['tag']}" if base.get("tag") else ""
    print(f"baseline: {base['model']} (run {base['run_id']}{tag}), set {base.get('set_at', '?')} from '{base.get('ref')}'")
    return 0
