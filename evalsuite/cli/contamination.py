"""``evalsuite contamination``: Min-K% Prob and the SOLAR card's reference comparison per document."""
from __future__ import annotations

import argparse

from evalsuite.config import add_option, add_run_options
from evalsuite.cli.options import quiet_progress


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.2, got '{text}'") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"k must be in (0, 1], got {value}; 0.2 is Min-20% Prob")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    from evalsuite.run.contamination import DEFAULT_MIN_K_THRESHOLD, DEFAULT_NEIGHBOURS, NEIGHBOUR_THRESHOLD

    parser = subparsers.add_parser(
        "contamination", help="check benchmark documents for signs of memorisation (Min-K%% Prob)",
        description="Score every benchmark document (question + gold answer, no few-shot context, one forward "
                    "pass) with Min-K% Prob under each model; with --reference also the SOLAR instruct card's "
                    "comparison (neighbours sampled by the reference, ranked by the model). Prints per task the "
                    "fraction of documents flagged with a bootstrap 95% interval and stores every document's "
                    "scores in the results store (table 'contamination'; shown by `evalsuite report`). "
                    "Docs: docs/contamination.md.",
    )
    add_option(parser, "models", required=True, help="comma-separated models to check (aliases, Hub ids, folders)")
    parser.add_argument("--reference", help="reference model (e.g. the base the checked model was trained from)")
    add_run_options(parser, ["tasks", "limit", "task_dir"])
    parser.add_argument("--k", type=_fraction, default=0.2, help="fraction of least likely tokens (default: 0.2)")
    parser.add_argument("--neighbours", type=int, default=DEFAULT_NEIGHBOURS, metavar="N",
                        help=f"with --reference: neighbours sampled per document (default: {DEFAULT_NEIGHBOURS}, "
                             "the card's method); 0 uses the cheaper Min-K%% difference to the reference")
    parser.add_argument("--threshold", type=float,
                        help=f"flag threshold of the rule in use (defaults: neighbour rank < {NEIGHBOUR_THRESHOLD}; "
                             f"Min-K%% difference > 0; without reference Min-K%% > {DEFAULT_MIN_K_THRESHOLD})")
    add_run_options(parser, ["data_dir", "device", "dtype", "results_dir", "trust_remote_code", "progress"])
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from evalsuite.config import RunConfig
    from evalsuite.run.contamination import check

    config = RunConfig.from_args(args)
    if not config.progress:
        quiet_progress()
    result = check(config=config, reference=args.reference, k=args.k, neighbours=args.neighbours,
                   threshold=args.threshold)
    print()
    print(result.table())
    print(f"\ncheck {result.check_id}: per-document scores in {result.results_dir}/contamination/")
    return 0
