"""What loading HellaSwag costs, stage by stage, and this checkout against an older one.

HellaSwag's train split (39,905 rows, 45 MB of text, 11 MB as parquet) is read for every
HellaSwag run because the v1 stream draws shots from it. This measures the stages separately
(parquet read, ``datasets.Dataset.from_list``, lm-eval's ``process_docs`` through
``datasets.map``, turning the result into a list, the same ``process_docs`` over plain rows)
and the whole of ``LoadedTask`` plus prompt building for 50 and for all documents, for this
checkout and for ``--baseline`` (a folder holding an older evalsuite, e.g. from
``git archive 39cebf2 | tar -x -C /tmp/evalsuite-old``). Each variant runs in its own process,
alternating, ``--rounds`` times; the best time of each stage counts (the machine is shared).

    python benchmarks/hellaswag_loading.py --baseline /tmp/evalsuite-old --out benchmarks/results/hellaswag-loading.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def stages(data_dir: Path) -> dict[str, float]:
    """Run in a child process whose ``sys.path`` starts with the code under test."""
    import datasets

    datasets.disable_progress_bars()
    out: dict[str, float] = {}

    def timed(name: str, fn):
        start = time.perf_counter()
        value = fn()
        out[name] = round(time.perf_counter() - start, 3)
        return value

    from evalsuite.tasks import LoadedTask, load_spec

    spec = load_spec("hellaswag")
    task = timed("LoadedTask", lambda: LoadedTask(spec, data_dir))
    timed("prompts(50)", lambda: task.prompts(50))
    timed("prompts(all)", lambda: task.prompts())
    if os.environ.get("HELLASWAG_STAGES"):
        import pyarrow.parquet as pq
        from evalsuite.compat import load_lm_eval_yaml

        from evalsuite.tasks import lm_eval_tasks_root

        path = data_dir / "Rowan__hellaswag" / "default" / "train.parquet"
        table = timed("train: parquet read", lambda: pq.read_table(path))
        rows = timed("train: to_pylist", lambda: table.to_pylist())
        dataset = timed("train: Dataset.from_list", lambda: datasets.Dataset.from_list(rows))
        process = load_lm_eval_yaml(lm_eval_tasks_root() / spec.lm_eval_config)["process_docs"]
        processed = timed("train: process_docs via datasets.map", lambda: process(dataset))
        timed("train: list(processed)", lambda: list(processed))
        from evalsuite.tasks.data import process_rows

        timed("train: process_docs over plain rows (evalsuite)", lambda: process_rows(process, rows))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--baseline", help="folder with an older evalsuite checkout to compare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    data_dir = Path(args.data_dir).resolve()
    if args.child:
        print(json.dumps(stages(data_dir)))
        return 0
    variants = {"this checkout": REPO}
    if args.baseline:
        variants["baseline"] = Path(args.baseline).resolve()
    best: dict[str, dict[str, float]] = {name: {} for name in variants}
    for _ in range(args.rounds):
        for name, code in variants.items():
            env = {**os.environ, "PYTHONPATH": str(code)}
            if name == "this checkout":
                env["HELLASWAG_STAGES"] = "1"
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--data-dir", str(data_dir)],
                                  capture_output=True, text=True, env=env, cwd=code, check=True)
            for stage, seconds in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                best[name][stage] = min(seconds, best[name].get(stage, float("inf")))
    report = {"rounds": args.rounds, "best_seconds": best, "load_average": os.getloadavg()[0]}
    if args.baseline:
        report["baseline_over_this"] = {s: round(best["baseline"][s] / best["this checkout"][s], 2)
                                        for s in best["baseline"] if best["this checkout"].get(s)}
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
