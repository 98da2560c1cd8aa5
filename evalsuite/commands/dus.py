"""``evalsuite dus``: build a depth up-scaled (SOLAR-style) model from a Llama/Mistral base."""
from __future__ import annotations

import argparse


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
    parser.set_defaults(func=handle)


def _overlap(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of layers, got '{text}'") from None


def default_out(base: str, overlap: int) -> str:
    """``./dus-<base>-m<M>``: next to where the user runs it, named after what it holds."""
    from ..dus import safe_name

    return f"dus-{safe_name(base)}-m{overlap}"


def handle(args: argparse.Namespace) -> int:
    from ..dus import build

    out = None if args.dry_run else (args.out or default_out(args.base, args.overlap))
    report = build(args.base, args.overlap, out, dry_run=args.dry_run, dtype=args.dtype)
    for line in report.lines():
        print(line)
    if not args.dry_run:
        print(f"evaluate it with: evalsuite run --models {report.out_dir}")
    return 0
