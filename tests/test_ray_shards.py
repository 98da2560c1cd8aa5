"""The Ray launcher on a local two-CPU Ray cluster: two shards in two worker processes merge into
exactly the run this process computes unsharded."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer

from conftest import assert_same_printout, loglikelihood_tolerance

from evalsuite.cli import main
from evalsuite.run.ray_shards import run_on_ray, shard_resources
from evalsuite.run.evaluation import evaluate
from evalsuite.store.parquet_store import ResultsStore

TASKS = "arc,mmlu"
LIMIT = 2
BACKEND = "evalsuite"


def test_shard_resources():
    assert shard_resources("smollm2", "evalsuite", "cpu", None) == {"num_cpus": 1, "num_gpus": 0}
    assert shard_resources("solar,mixtral", "evalsuite", "cuda", None) == {"num_cpus": 1, "num_gpus": 2}
    assert shard_resources(["qwen-72b"], "vllm", "cuda", None) == {"num_cpus": 1, "num_gpus": 4}
    assert shard_resources("solar", "vllm", "cuda", 1, data_parallel=2) == {"num_cpus": 1, "num_gpus": 2}


@pytest.mark.slow
def test_ray_shards_merge_to_the_unsharded_run(tiny_llama_dir, data_dir, tmp_path, capsys):
    pytest.importorskip("ray")
    results = tmp_path / "results"
    common = dict(models=str(tiny_llama_dir), tasks=TASKS, limit=LIMIT, data_dir=data_dir, backend=BACKEND,
                  results_dir=results)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluate(**common, run_id="local", progress=False)
    finally:
        torch.set_num_threads(threads)
    (merged,) = run_on_ray("local", 2, run_id="ray", num_cpus=2, **common).views()

    assert merged.complete and merged.shard_count == 2 and merged.status == "ok"
    store = ResultsStore(results)
    shard_files = sorted(p.name for p in (results / "samples").glob("ray__*"))
    assert len(shard_files) == 2 * len(TASKS.split(",")) and all("shard" in f for f in shard_files)
    local = {(r["task"], r["subtask"], r["doc_index"]): r for r in store.samples(run_id="local").to_dict("records")}
    ray = {(r["task"], r["subtask"], r["doc_index"]): r for r in store.samples(run_id="ray").to_dict("records")}
    assert local.keys() == ray.keys()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    for key, row in local.items():
        assert ray[key]["value"] == row["value"], key
        tokens = max(len(tokenizer.encode(c, add_special_tokens=False)) for c in row["continuations"])
        for got, want in zip(ray[key]["loglikelihoods"], row["loglikelihoods"], strict=True):
            assert abs(got - want) <= loglikelihood_tolerance(tokens), key

    expected = store.scores(run_id="local")
    expected = expected[expected["subtask"].isna()].set_index("task")
    got = merged.scores[merged.scores["subtask"].isna()].set_index("task")
    for task in TASKS.split(","):
        assert got.loc[task, "status"] == "ok"
        assert got.loc[task, "n"] == expected.loc[task, "n"]
        assert got.loc[task, "value"] == expected.loc[task, "value"]
        assert math.isclose(got.loc[task, "stderr"], expected.loc[task, "stderr"], rel_tol=1e-12)

    capsys.readouterr()
    main(["results", "--results-dir", str(results), "--run", "local"])
    local_table = capsys.readouterr().out
    main(["results", "--results-dir", str(results), "--run", "ray"])
    # each process's own batches round differently: the audit's max |Δ| (4e-06 vs 3e-06) is noise
    assert_same_printout(capsys.readouterr().out, local_table)
