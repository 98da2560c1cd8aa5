"""``evalsuite prompts``: the exact requests of a task, as JSON Lines, in evaluation order."""
from __future__ import annotations

import argparse
import json
import sys

from evalsuite.cli.options import add_data_dir, add_task_dir, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prompts", help="print the exact requests a task sends to the model (JSON Lines)",
        description="One JSON line per document, in v1 evaluation order: task, doc_index (row in the split "
                    "as stored), eval_position, the full few-shot context and the continuations (choice "
                    "tasks), contexts + continuation (Winogrande) or until (GSM8K).",
    )
    parser.add_argument("--task", required=True, help="one task: arc, hellaswag, mmlu, truthfulqa, winogrande, gsm8k")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="first N documents (per subject for MMLU)")
    add_data_dir(parser)
    add_task_dir(parser)
    parser.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from evalsuite.tasks.data import resolve_data_dir
    from evalsuite.tasks import LoadedTask, expand_tasks, load_spec

    names = expand_tasks([args.task])
    out = _open_out(args.out) if args.out else sys.stdout
    try:
        for name in names:
            task = LoadedTask(load_spec(name), resolve_data_dir(args.data_dir))
            for prompt in task.prompts(args.limit):
                out.write(json.dumps(prompt.to_json(), ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _open_out(path: str):
    """``--out FILE`` opened for writing; a folder, a path under a file or a missing or read-only
    folder is one line naming the path, not a traceback."""
    from evalsuite.errors import EvalsuiteError

    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise EvalsuiteError(f"cannot write --out {path} ({exc.strerror}); give a file path in an existing, "
                             f"writable folder") from None
