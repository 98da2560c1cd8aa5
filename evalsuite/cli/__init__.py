"""The ``evalsuite`` command: a thin layer over the Python API.

Each subcommand lives in ``evalsuite/cli/<name>.py`` and exposes ``register(subparsers)``;
this module discovers them, so adding a command touches no shared file. Errors a user can
fix (:class:`~evalsuite.errors.EvalsuiteError`, and argparse usage errors) print one line and exit
with status 2; an interrupted run says how to resume and exits 130 (SIGINT) or 143 (SIGTERM).
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from typing import NoReturn

from evalsuite import __version__
from evalsuite.errors import EvalsuiteError

#: Modules of this package that are not subcommands.
NOT_COMMANDS = {"options", "__main__"}
#: Order of the subcommands in ``--help``; discovered ones not listed here follow.
ORDER = ["run", "results", "prompts", "models", "tasks", "report", "table", "compare", "baseline",
         "nightly", "cache", "dus"]


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line naming the fix (``--help``), exit status 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="evalsuite",
        description="Open LLM Leaderboard (v1) evaluations: exact to the protocol, fast, stored as parquet.",
        epilog="Run `evalsuite COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"evalsuite {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = [m.name for m in pkgutil.iter_modules(__path__) if m.name not in NOT_COMMANDS]
    for name in sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, one line already printed)
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "task_dir", None):  # the user's own tasks join the catalogue for this command
            from evalsuite.tasks import use_task_dir

            use_task_dir(args.task_dir)
        return int(args.func(args) or 0)
    except EvalsuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as shell tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except KeyboardInterrupt as exc:
        from evalsuite.run.evaluation import RunInterrupted

        if isinstance(exc, RunInterrupted):
            print(exc.message(), file=sys.stderr)
            return 143 if exc.signame == "SIGTERM" else 130
        print("interrupted: results of tasks that finished are in the results store; rerun the same command "
              "with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
