"""``evalsuite dus``: build a depth up-scaled (SOLAR-style) model from a Llama/Mistral base."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evalsuite.models.dus import DusReport

from evalsuite.config import add_option


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dus", help="depth up-scale a Llama/Mistral base (SOLAR recipe): n -> 2(n-m) layers",
        description="Stack two copies of a base, the first without its last M layers and the second without "
                    "its first M, into a 2(n-M)-layer model saved as a Hugging Face checkpoint. No training: "
                    "the result scores below its base until continued pretraining. Evaluate a cached build "
                    "directly with the model name dus:BASE:M.",
    )
    parser.add_argument("base", metavar="BASE", help="alias (e.g. smollm2, mistral), Hub id, model folder or .gguf file")
    parser.add_argument("--overlap", "-m", type=_overlap, required=True, metavar="M",
                        help="layers dropped from the end of copy A and the start of copy B (SOLAR: 8)")
    parser.add_argument("--out", metavar="DIR",
                        help="output folder (default: evalsuite's cache, where the model dus:BASE:M is looked for, "
                             "so evaluating it builds nothing again; not the current folder)")
    parser.add_argument("--dry-run", action="store_true",
                        help="count layers and parameters from the config alone on the meta device; load no weights")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="dtype to load and save in (default: the base's registry dtype)")
    parser.add_argument("--recover-steps", type=_overlap, default=0, metavar="N",
                        help="optional: N continued-pretraining steps on CPU before saving (default 0: none); "
                             "prints held-out loss before and after")
    parser.add_argument("--recover-text", metavar="FILE",
                        help="plain text for --recover-steps; must not be benchmark data")
    add_option(parser, "trust_remote_code", help="allow a base that ships its own Python code (auto_map) to run it; "
                                                 "without it such a base is refused")
    add_option(parser, "verify_weights")
    parser.set_defaults(func=handle)


def _overlap(text: str) -> int:
    """A whole number of at least 0 (argparse type: --overlap, --recover-steps)."""
    from evalsuite.config import whole_number

    return whole_number(text, 0)


def build(base: str, overlap: int, out_dir: str | Path | None, dry_run: bool = False, dtype: str | None = None,
          recover_text: str | Path | None = None, recover_steps: int = 0, trust_remote_code: bool = False,
          verify_weights: bool = False, into_cache: bool = False) -> DusReport:
    """Up-scale the base a user named (alias, Hub id, local folder, .gguf, or for ``dry_run`` also
    a config.json): the dry run from its config alone, else from its materialized weights.
    The request is checked before the base is resolved, so a bad one costs nothing. A base that
    ships its own code is refused without ``trust_remote_code``; ``verify_weights`` hashes the
    base's weights in full for its identity.

    ``into_cache`` (the CLI without ``--out``): build into evalsuite's cache folder of
    ``dus:BASE:M`` (:func:`evalsuite.models.dus.cached_folder`), or find it built there; the
    model is then evaluated by that name and never built twice (``make dus-demo``). Hundreds of
    megabytes do not belong in the folder the user happens to stand in (a checkout)."""
    from evalsuite.models import dus
    from evalsuite.models.source import model_config, resolve_and_materialize

    if dry_run:
        return dus.dry_run_report(model_config(base, trust_remote_code), base, overlap, trust_remote_code)
    if into_cache and (recover_steps or dtype):
        raise dus.DusError("a build with --recover-steps or --dtype is not the model dus:BASE:M kept in the cache; "
                           "give it its own folder with --out DIR")
    dus.check_request("cache" if into_cache else out_dir, recover_text, recover_steps)
    source = resolve_and_materialize(base, verify_weights, trust_remote_code=trust_remote_code)
    if into_cache:
        target = dus.cached_folder(source, overlap, base)
        if (target / "dus.json").is_file() and (target / "config.json").is_file():  # built before: the same base content
            import json

            report = dus.DusReport(**json.loads((target / "dus.json").read_text()))
            report.notes.append("already built in the cache; nothing was rebuilt")
            return report
        out_dir = target
    return dus.build(source, overlap, out_dir, name=base, dtype=dtype, recover_text=recover_text,
                     recover_steps=recover_steps)


def handle(args: argparse.Namespace) -> int:
    from evalsuite.models.dus import DusError

    if args.dry_run and args.recover_steps:
        raise DusError("--recover-steps needs weights; drop --dry-run")
    if args.recover_text and not args.recover_steps:
        raise DusError("--recover-text is used only with --recover-steps N; add it or drop --recover-text")
    report = build(args.base, args.overlap, args.out, dry_run=args.dry_run, dtype=args.dtype,
                   recover_text=args.recover_text, recover_steps=args.recover_steps,
                   trust_remote_code=args.trust_remote_code, verify_weights=args.verify_weights,
                   into_cache=not args.out)
    for line in report.lines():
        print(line)
    if not args.dry_run:
        model = f"dus:{args.base}:{args.overlap}" if not args.out else report.out_dir
        print(f"evaluate it with: evalsuite run --models {model}")
    return 0
