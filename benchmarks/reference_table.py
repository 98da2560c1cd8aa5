"""The reference table: SmolLM2 on the six leaderboard tasks, limited, on this machine.

Each task is its own run (one ``evaluate`` call, tagged ``reference-limit200``) so that its
command and wall time are recorded exactly; MMLU takes ``--mmlu-limit`` documents per subject,
the other tasks ``--limit`` documents (the first N of the v1 evaluation order, with the shots
of the full run). The results store goes to ``OUT/store`` (parquet, as ``results/``), and a
summary (commands, wall time per task, scores, the merged H6 row) to ``OUT/summary.json``.
Tasks already stored under the tag are skipped, so an interrupted run continues where it
stopped.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/reference_table.py --data-dir ../shared/data

(One torch thread: on this shared, oversubscribed 2-core machine a greedy decoding step of
SmolLM2 took 130 ms with one thread and 2.7 s with two, whose OpenMP threads wait for each
other at every operation.)

``--projection`` adds the dry-run plan of a full run on this machine (``evalsuite.plan_cost``) to
the summary without running anything else.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import evalsuite  # noqa: E402
from evalsuite.analysis.leaderboard import LEADERBOARD_TASKS, LeaderboardRow, format_table  # noqa: E402

TAG = "reference-limit200"


def stored_task_scores(store_dir: Path, summary: dict) -> dict[str, dict]:
    """task -> its stored task score (status ok) from the run the summary names for it."""
    from evalsuite.errors import EvalsuiteError
    from evalsuite.store.run_views import load_run

    out: dict[str, dict] = {}
    for task, info in summary.get("tasks", {}).items():
        try:
            view = load_run(info["run_id"], store_dir)
        except EvalsuiteError:
            continue
        record = view.task_scores().get(task)
        if view.usable and record is not None and record.status == "ok":
            out[task] = {"run_id": view.run_id, "value": record.value, "n": record.n, "n_total": record.n_total,
                         "wall_time_s": view.record.wall_time_s}
    return out


def merged_row(model: str, scores: dict[str, dict]) -> LeaderboardRow:
    row = LeaderboardRow(model, "+".join(sorted({s["run_id"] for s in scores.values()})))
    for task, rec in scores.items():
        row.scores[task] = 100.0 * rec["value"]
        row.n[task] = int(rec["n"])
        row.n_total[task] = int(rec["n_total"])
    row.missing = [t for t in LEADERBOARD_TASKS if t not in scores]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--mmlu-limit", type=int, default=20)
    parser.add_argument("--tasks", default=",".join(LEADERBOARD_TASKS))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "reference-smollm2"))
    parser.add_argument("--projection", action="store_true", help="only add the dry-run projection of a full run")
    args = parser.parse_args()
    out = Path(args.out)
    store_dir = out / "store"
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"tasks": {}}

    if args.projection:
        plan = evalsuite.plan_cost(models=[args.model], data_dir=args.data_dir, remeasure=True, progress=True)
        summary["full_run_projection"] = plan.to_dict()
        print(plan.table())
    else:
        done = stored_task_scores(store_dir, summary)
        for task in args.tasks.split(","):
            if task in done:
                print(f"{task}: already stored, skipped", flush=True)
                continue
            limit = args.mmlu_limit if task == "mmlu" else args.limit
            command = (f"evalsuite run --models {args.model} --tasks {task} --limit {limit} --data-dir {args.data_dir} "
                       f"--results-dir {store_dir.relative_to(REPO) if store_dir.is_relative_to(REPO) else store_dir} "
                       f"--tag {TAG} --no-cache")
            print(f"{task}: {command}", flush=True)
            start = time.perf_counter()
            result = evalsuite.evaluate(models=[args.model], tasks=[task], limit=limit, data_dir=args.data_dir,
                                        results_dir=store_dir, tag=TAG, use_cache=False, progress=True)
            seconds = time.perf_counter() - start
            summary["tasks"][task] = {"command": command, "run_id": result.run_id, "limit": limit,
                                      "wall_time_s": round(seconds, 1),
                                      "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}
            print(f"{task}: done in {seconds:.0f} s", flush=True)
            _write(summary_path, summary)

    scores = stored_task_scores(store_dir, summary)
    import torch

    threads = f"OMP_NUM_THREADS={torch.get_num_threads()} "
    for task, rec in scores.items():  # the run's own wall time (model load and the task, as stored)
        summary["tasks"][task]["run_wall_time_s"] = round(rec["wall_time_s"], 1) if rec["wall_time_s"] else None
        if not summary["tasks"][task]["command"].startswith("OMP_NUM_THREADS"):
            summary["tasks"][task]["command"] = threads + summary["tasks"][task]["command"]
    row = merged_row(args.model, scores)
    summary["model"] = args.model
    summary["tag"] = TAG
    summary["machine"] = f"{platform.machine()}, {platform.processor() or platform.system()}; shared 2-core CPU"
    summary["torch_threads"] = torch.get_num_threads()
    summary["scores_x100"] = {t: round(v, 2) for t, v in row.scores.items()}
    summary["n"] = row.n
    summary["n_total"] = row.n_total
    summary["h6"] = None if math.isnan(row.h6) else round(row.h6, 2)
    summary["h6_complete"] = row.complete
    _write(summary_path, summary)
    print(format_table([row]))
    return 0


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
