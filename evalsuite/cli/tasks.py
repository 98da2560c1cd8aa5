"""``evalsuite tasks``: the task definitions in ``tasks/``."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tasks", help="list tasks and suites with their v1 settings",
                                   description="Tasks defined in tasks/*.yaml (and --task-dir) and the suites that group them.")
    from evalsuite.cli.options import add_task_dir

    add_task_dir(parser)
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from evalsuite.tasks import available_suites, available_tasks, expand_tasks, load_spec

    for name in available_tasks():
        spec = load_spec(name)
        print(f"{name:<11} {spec.dataset.hub_id}/{spec.dataset.config or '-'} {spec.eval_split}, "
              f"{spec.num_fewshot}-shot ({spec.shots}), metric {spec.metric}" + ("" if spec.builtin else f" ({spec.folder})"))
    for suite in available_suites():
        print(f"{suite:<11} suite: {', '.join(expand_tasks([suite]))}")
    return 0
