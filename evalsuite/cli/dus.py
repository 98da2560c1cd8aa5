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
    parser.add_argument("--out", metavar="DIR", help="output folder (default: ./dus-<base>-m<M>)")
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


def default_out(base: str, overlap: int) -> str:
    """``./dus-<base>-m<M>``: next to where the user runs it, named after what it holds."""
    from evalsuite.models.dus import safe_name

    return f"dus-{safe_name(base)}-m{overlap}"


def build(base: str, overlap: int, out_dir: str | Path | None, dry_run: bool = False, dtype: str | None = None,
          recover_text: str | Path | None = None, recover_steps: int = 0, trust_remote_code: bool = False,
          verify_weights: bool = False) -> DusReport:
    """Up-scale the base a user named (alias, Hub id, local folder, .gguf, or for ``dry_run`` also
    a config.json): the dry run from its config alone, else from its materialized weights.
    The request is checked before the base is resolved, so a bad one costs nothing. A base that
    ships its own code is refused without ``trust_remote_code``; ``verify_weights`` hashes the
    base's weights in full for its identity."""
    from evalsuite.models import dus
    from evalsuite.models.source import model_config, resolve_and_materialize

    if dry_run:
        return dus.dry_run_report(model_config(base, trust_remote_code), base, overlap, trust_remote_code)
    dus.check_request(out_dir, recover_text, recover_steps)
    source = resolve_and_materialize(base, verify_weights, trust_remote_code=trust_remote_code)
    return dus.build(source, overlap, out_dir, name=base, dtype=dtype, recover_text=recover_text,
                     recover_steps=recover_steps)


def handle(args: argparse.Namespace) -> int:
    from evalsuite.models.dus import DusError

    if args.dry_run and args.recover_steps:
        raise DusError("--recover-steps needs weights; drop --dry-run")
    if args.recover_text and not args.recover_steps:
        raise DusError("--recover-text is used only with --recover-steps N; add it or drop --recover-text")
    out = None if args.dry_run else (args.out or default_out(args.base, args.overlap))
    report = build(args.base, args.overlap, out, dry_run=args.dry_run, dtype=args.dtype,
                   recover_text=args.recover_text, recover_steps=args.recover_steps,
                   trust_remote_code=args.trust_remote_code, verify_weights=args.verify_weights)
    for line in report.lines():
        print(line)
    if not args.dry_run:
        print(f"evaluate it with: evalsuite run --models {report.out_dir}")
    return 0
