"""The nightly workflow's --limit: what the user set, else a default that fits a CPU runner.

GitHub-hosted jobs stop after 6 hours. The full six tasks take about 23 h of SmolLM2 on a CPU
(`evalsuite run --dry-run`), so a CPU night without NIGHTLY_LIMIT evaluates the first
CPU_DEFAULT_LIMIT documents per task (per subject for MMLU), which the dry run puts at about
CPU_ESTIMATE_H hours (docs/nightly.md has the arithmetic). A GPU runner (NIGHTLY_DEVICE=cuda*)
evaluates the full tasks by default. NIGHTLY_LIMIT=all asks for the full tasks anywhere.

Usage in the workflow: ``limit=$(python .github/scripts/nightly_limit.py "$LIMIT" "$DEVICE")``;
prints the number of documents, or nothing for full tasks; exits 2 with one line on bad input.
"""
from __future__ import annotations

import sys

#: Documents per task (per MMLU subject) on a CPU runner when NIGHTLY_LIMIT is unset.
CPU_DEFAULT_LIMIT = 100
#: The dry run's estimate for that limit on the reference CPU (hours), see docs/nightly.md.
CPU_ESTIMATE_H = 2.9


def choose_limit(limit: str, device: str) -> int | None:
    """``limit`` as given (a positive whole number, or ``all`` for full tasks), else the default
    for ``device``: CPU_DEFAULT_LIMIT on ``cpu``, full tasks on a GPU."""
    text = (limit or "").strip().lower()
    if text == "all":
        return None
    if text:
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"NIGHTLY_LIMIT must be a positive whole number or 'all', got '{limit}'")
        return int(text)
    device = (device or "cpu").strip().lower()
    if device.startswith("cuda"):
        return None
    if device != "cpu":
        raise ValueError(f"NIGHTLY_DEVICE must be cpu, cuda or cuda:N, got '{device}'")
    return CPU_DEFAULT_LIMIT


def main(argv: list[str]) -> int:
    limit, device = (argv + ["", ""])[:2]
    try:
        chosen = choose_limit(limit, device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("" if chosen is None else chosen)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
