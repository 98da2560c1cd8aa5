"""``evalsuite models``: the registry of model aliases."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list model aliases with Hub id, size and memory need",
                                   description="The model registry. Any Hub id, model folder or .gguf file works too.")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from evalsuite.models.memory import weight_bytes
    from evalsuite.models.registry import list_models

    header = ("alias", "source", "params", "layers", "dtype", "weights", "GPUs(80GB)", "notes")
    rows = []
    for spec in list_models():
        size = weight_bytes(spec.params, spec.dtype) if spec.params else None
        flags = [f for f, on in (("remote code", spec.trust_remote_code), ("gated", spec.gated)) if on]
        rows.append((spec.alias, spec.source, f"{spec.params / 1e9:.2f}B" if spec.params else "?",
                     str(spec.layers or "?"), spec.dtype, f"{size / 1e9:.1f} GB" if size else "?",
                     str(spec.min_gpus_80gb), "; ".join(flags + ([spec.notes] if spec.notes else []))))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return 0
