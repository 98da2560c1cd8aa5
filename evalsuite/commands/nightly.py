"""``evalsuite nightly``: run a checkpoint, compare with the baseline, exit 0/1/2 (the CI flow)."""
from __future__ import annotations

import argparse
import shutil

from ..backends import BACKENDS, DEFAULT_BACKEND
from ._common import add_data_dir, add_log_to, add_results_dir, check_log_to, log_after, positive_int
from .compare import add_thresholds


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "nightly", help="evaluate a checkpoint and fail on a real drop against the baseline",
        description="Evaluate --model, compare it with the baseline (the stored one, set from this run on the first "
                    "night) and write the comparison as Markdown and JSON to <results-dir>/nightly/. Rerunning an "
                    "interrupted nightly resumes it. Exit status: 0 no regression, 1 regression, 2 bad input.",
    )
    parser.add_argument("--model", required=True, help="checkpoint folder, alias, Hub id or .gguf file")
    parser.add_argument("--baseline", metavar="REF",
                        help="compare with this run instead of the stored baseline (run id, tag:T, model, latest)")
    parser.add_argument("--tasks", default="leaderboard", help="comma-separated tasks or suites (default: leaderboard)")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="first N documents per task (per subject for MMLU)")
    parser.add_argument("--tag", help="run tag (default: nightly-YYYY-MM-DD)")
    add_data_dir(parser)
    add_results_dir(parser)
    parser.add_argument("--backend", default=DEFAULT_BACKEND, choices=sorted(BACKENDS), help=f"default: {DEFAULT_BACKEND}")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    add_thresholds(parser)
    parser.add_argument("--force", action="store_true", help="compare shared documents even if the runs differ")
    parser.add_argument("--no-cache", action="store_true", help="bypass the request cache")
    add_log_to(parser)
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from ..nightly import nightly
    from .compare import write_outputs

    check_log_to(args)
    result = nightly(
        args.model, baseline=args.baseline, tasks=args.tasks, limit=args.limit, tag=args.tag, data_dir=args.data_dir,
        results_dir=args.results_dir, backend=args.backend, device=args.device, max_drop=args.max_drop,
        alpha=args.alpha, force=args.force, use_cache=not args.no_cache,
    )
    if result.comparison is None:
        print(result.markdown_path.read_text())
    else:
        print(result.comparison.table())
        write_outputs(result.comparison, args.markdown, args.json)
    for extra, source in ((args.markdown, result.markdown_path), (args.json, result.json_path)):
        if extra is not None and result.comparison is None:
            extra.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, extra)
    print(f"\nnightly run {result.run_id}: comparison in {result.markdown_path} and {result.json_path}")
    log_after(args, result.run_id)
    return result.exit_code
