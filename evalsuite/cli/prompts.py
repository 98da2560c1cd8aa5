"""``evalsuite prompts``: the exact requests of a task, as JSON Lines, in evaluation order."""
from __future__ import annotations

import argparse
import json
import sys

from evalsuite.cli.options import add_data_dir, add_task_dir
from evalsuite.config import limit_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prompts", help="print the exact requests a task sends to the model (JSON Lines)",
        description="One JSON line per document, in v1 evaluation order: task, doc_index (row in the split "
                    "as stored), eval_position, the full few-shot context and the continuations (choice "
                    "tasks), contexts + continuation (Winogrande) or until (GSM8K).",
    )
    parser.add_argument("--task", required=True, help="one task: arc, hellaswag, mmlu, truthfulqa, winogrande, gsm8k")
    parser.add_argument("--limit", type=limit_arg, metavar="N", help="first N documents (per subject for MMLU)")
    add_data_dir(parser)
    add_task_dir(parser)
    parser.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from evalsuite.tasks.data import resolve_data_dir
    from evalsuite.tasks import LoadedTask, expand_tasks, load_spec

    names = expand_tasks([args.task])
    if not args.out:
        _write(sys.stdout, names, args)
        return 0
    from evalsuite.fsutil import atomic_path, check_output, note_output

    replacing = check_output(args.out, "--out")  # never over a file evalsuite did not write, never into a store
    tasks = [LoadedTask(load_spec(name), resolve_data_dir(args.data_dir)) for name in names]
    with atomic_path(args.out) as tmp:  # a failed write leaves the old file (or none), never half of one
        out = _open_out(args.out, tmp)
        try:
            _write(out, tasks, args)
        finally:
            out.close()
    note_output(args.out)
    if replacing:
        print(f"evalsuite: {replacing}", file=sys.stderr)
    return 0


def _write(out, tasks, args: argparse.Namespace) -> None:
    """Every prompt of ``tasks`` (names or loaded tasks) as one JSON line."""
    from evalsuite.tasks.data import resolve_data_dir
    from evalsuite.tasks import LoadedTask, load_spec

    for task in tasks:
        if isinstance(task, str):
            task = LoadedTask(load_spec(task), resolve_data_dir(args.data_dir))
        for prompt in task.prompts(args.limit):
            out.write(json.dumps(prompt.to_json(), ensure_ascii=False) + "\n")


def _open_out(path: str, tmp):
    """``--out FILE`` (its temporary sibling ``tmp``) opened for writing; a folder, a path under
    a file or a missing or read-only folder is one line naming the path, not a traceback."""
    from evalsuite.errors import EvalsuiteError

    try:
        return open(tmp, "w", encoding="utf-8")
    except OSError as exc:
        raise EvalsuiteError(f"cannot write --out {path} ({exc.strerror}); give a file path in an existing, "
                             f"writable folder") from None
