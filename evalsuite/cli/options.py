"""Options shared by several subcommands, defined once."""
from __future__ import annotations

import argparse

from evalsuite.config import add_option
from evalsuite.config import positive_int  # noqa: F401  (the argparse type of other commands' counts)


def add_results_dir(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "results_dir")


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "data_dir")


def add_task_dir(parser: argparse.ArgumentParser) -> None:
    """``--task-dir DIR``: every command that reads tasks offers it (:func:`evalsuite.cli.main` applies it)."""
    add_option(parser, "task_dir")


def add_log_to(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-to", metavar="TRACKER",
                        help="after the run, log params, scores and the HTML report to mlflow:URI "
                             "(e.g. mlflow:file:/tmp/mlruns) or wandb:PROJECT (offline unless WANDB_MODE is set)")


def check_log_to(args: argparse.Namespace) -> None:
    """Refuse a bad --log-to (or a missing tracker client) before hours of evaluation."""
    if getattr(args, "log_to", None):
        from evalsuite.outputs.trackers import parse_target

        parse_target(args.log_to)


def log_after(args: argparse.Namespace, run_id: str) -> None:
    """The --log-to hook: one call once the run's results are stored. A tracker failure only
    warns: the exit status stays the run's, and the results are in the store either way."""
    if getattr(args, "log_to", None):
        import sys

        from evalsuite.errors import EvalsuiteError
        from evalsuite.outputs.trackers import log_run

        try:
            for line in log_run(args.log_to, run_id, args.results_dir):
                print(f"logged to {line}")
        except EvalsuiteError as exc:
            print(f"warning: {exc}; retry with evalsuite.outputs.trackers.log_run('{args.log_to}', '{run_id}', "
                  f"'{args.results_dir}')", file=sys.stderr)


def quiet_progress() -> None:
    """``--no-progress``: off for every library's bars too, not only evalsuite's: transformers'
    weight loading and GGUF conversion, the Hugging Face Hub's downloads and datasets'
    processing (``TQDM_DISABLE`` is tqdm's default for bars that do not say; evalsuite's own
    bars pass ``disable`` themselves)."""
    import os

    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()
