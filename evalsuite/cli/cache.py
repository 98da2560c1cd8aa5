"""``evalsuite cache info|clear``: the request cache that makes interrupted runs resumable, and
the engine's capability decisions (:mod:`evalsuite.backends.engine.decisions`)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cache", help="show or clear the request cache and the engine's capability decisions",
        description="Every computed request is cached, keyed on everything that can change its answer (the "
                    "weights hash or Hub commit, the model's config/tokenizer/generation-config files, dtype, "
                    "device type, backend and its settings, remote code, library versions and a hash of the "
                    "scoring code) and the exact request, so a rerun of an interrupted `evalsuite run` computes "
                    "only what is missing and nothing stale is ever served. The cache is "
                    "$EVALSUITE_REQUEST_CACHE, else $EVALSUITE_CACHE/requests.sqlite (default "
                    "~/.cache/evalsuite/requests.sqlite). The engine's capability decisions (which executor and "
                    "generation route each model runs on, probed once per model and engine code) are kept in "
                    "$EVALSUITE_CACHE/capabilities; `clear` deletes them too, so nothing computed is reused.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("info", help="entries, size on disk and entries per model identity").set_defaults(func=handle_info)
    clear = actions.add_parser("clear", help="delete cached responses (all, or one model identity's) and every "
                                             "capability decision")
    clear.add_argument("--model", metavar="IDENTITY", help="only this model identity (as `evalsuite cache info` lists it)")
    clear.set_defaults(func=handle_clear)


def handle_info(args: argparse.Namespace) -> int:
    from evalsuite.run.request_cache import info

    found = info()
    print(f"request cache {found.path}: {found.entries} entries, {found.size_bytes / 2**20:.1f} MiB")
    for model, count in found.per_model.items():
        print(f"  {count:>9}  {model}")
    from evalsuite.backends.engine import decisions

    where, count, size = decisions.listing()
    print(f"capability decisions {where}: {count} stored, {size / 2**10:.1f} KiB")
    return 0


def handle_clear(args: argparse.Namespace) -> int:
    from evalsuite.run.request_cache import cache_path, clear

    deleted = clear(model=args.model)
    if deleted < 0:
        print(f"deleted the unusable request cache {cache_path()} (a new one is created on the next run)")
    else:
        print(f"deleted {deleted} cached responses from {cache_path()}")
    from evalsuite.backends.engine import decisions

    # keyed by hashes: one model's cannot be picked out, and a decision costs only a probe to redo
    removed = decisions.clear()
    print(f"deleted {removed} capability decisions from {decisions.folder()}"
          + (" (every model's: they cannot be picked out per model)" if args.model else "")
          + "; each model's next run probes it again")
    return 0
