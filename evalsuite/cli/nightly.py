"""``evalsuite nightly``: run a checkpoint, compare with the baseline, exit 0/1/2 (the CI flow)."""
from __future__ import annotations

import argparse
import shutil

from evalsuite.config import add_option, add_run_options
from evalsuite.cli.options import add_log_to, check_log_to, log_after
from evalsuite.cli.compare import add_thresholds


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
    add_run_options(parser, ["tasks", "limit", "task_dir", "data_dir", "backend", "device", "results_dir", "use_cache"])
    add_option(parser, "tag", help="run tag (default: nightly-YYYY-MM-DD)")
    add_thresholds(parser)
    parser.add_argument("--force", action="store_true", help="compare shared documents even if the runs differ")
    add_log_to(parser)
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from evalsuite.config import RunConfig
    from evalsuite.run.nightly import nightly
    from evalsuite.cli.compare import write_outputs

    check_log_to(args)
    config = RunConfig.from_args(args, models=args.model, progress=False)
    result = nightly(config=config, baseline=args.baseline, max_drop=args.max_drop, alpha=args.alpha, force=args.force)
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
