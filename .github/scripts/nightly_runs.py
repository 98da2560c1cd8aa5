"""The run ids the nightly HTML report shows, from ``evalsuite nightly --json``'s file.

The baseline and the candidate, each once and in that order; a night without a baseline (the
first night that failed, so none was set) shows the candidate alone, and a file without either
prints nothing (the workflow then skips the report). Never a ``KeyError`` traceback in the log.

Usage: ``runs=$(python .github/scripts/nightly_runs.py reports/nightly.json)``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def report_runs(data: object) -> list[str]:
    """Run ids of the ``baseline`` and ``candidate`` entries present, without repeats."""
    if not isinstance(data, dict):
        return []
    runs: list[str] = []
    for side in ("baseline", "candidate"):
        entry = data.get(side)
        run_id = entry.get("run_id") if isinstance(entry, dict) else None
        if isinstance(run_id, str) and run_id and run_id not in runs:
            runs.append(run_id)
    return runs


def main(argv: list[str]) -> int:
    try:
        data = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    except (IndexError, OSError, ValueError) as exc:
        print(f"nightly_runs: cannot read the nightly JSON ({exc})", file=sys.stderr)
        return 0  # no report, not a failed step: the job summary says what happened
    print(",".join(report_runs(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
