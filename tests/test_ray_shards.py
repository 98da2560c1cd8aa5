"""The Ray launcher on a local two-CPU Ray cluster: two shards in two worker processes merge into
exactly the run this process computes unsharded."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer

from conftest import assert_same_printout, loglikelihood_tolerance

from evalsuite.cli import main
from evalsuite.models.devices import GpuInfo
from evalsuite.run.ray_shards import cluster_gpu_memory, run_on_ray, shard_resources, sizing_line
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


# what torch reports (total_memory) for each card
H100, H200, A100_40GB = 85_000_000_000, 150_754_820_096, 42_505_273_344


@pytest.mark.parametrize(("models", "memory", "gpus"), [
    ("mistral", H100, 1), ("mistral", A100_40GB, 1), ("solar", A100_40GB, 1),
    ("mixtral", H200, 1), ("mixtral", H100, 2), ("mixtral", A100_40GB, 4),
    ("llama2-70b", H200, 2), ("llama2-70b", A100_40GB, 4),
    ("qwen-72b", H200, 2), ("qwen-72b", H100, 4), ("qwen-72b", A100_40GB, 8),
    ("falcon-180b", H200, 4), ("falcon-180b", H100, 8), ("solar,mixtral", H200, 1), ("solar,mixtral", A100_40GB, 4),
])
def test_shard_gpus_follow_the_clusters_card(models, memory, gpus):
    """The single-machine rule (vllm.default_tensor_parallel) on the card's memory, for vLLM and
    for the engine on cuda: an H200 shard runs Mixtral on one GPU, a 40 GB A100 shard needs four."""
    for backend in ("vllm", "evalsuite"):
        assert shard_resources(models, backend, "cuda", None, gpu_memory=memory)["num_gpus"] == gpus, backend
    assert shard_resources(models, "vllm", "cuda", None, 2, gpu_memory=memory)["num_gpus"] == 2 * gpus
    assert shard_resources(models, "vllm", "cuda", 8, gpu_memory=memory)["num_gpus"] == 8  # --tensor-parallel wins
    assert shard_resources(models, "evalsuite", "cpu", None, gpu_memory=memory)["num_gpus"] == 0
    # --dtype float32 doubles the weights: SOLAR (one 40 GB card in bf16) needs two
    assert shard_resources("solar", "evalsuite", "cuda", None, gpu_memory=A100_40GB, dtype="float32")["num_gpus"] == 2


class StandInRay:
    """A Ray cluster as the probe sees it (no GPU cluster exists here): its resources, and the
    answer (or the error) of the one-GPU task that reads the card."""

    class Task:
        def __init__(self, ray):
            self.ray = ray

        def options(self, **options):
            self.ray.options = options
            return self

        def remote(self):
            return "ref"

    def __init__(self, resources, answer=None, error=None):
        self.resources, self.answer, self.error = resources, answer, error
        self.options, self.cancelled = None, False

    def cluster_resources(self):
        return self.resources

    def remote(self, func):
        return self.Task(self)

    def get(self, ref, timeout=None):
        if self.error:
            raise self.error
        return self.answer

    def cancel(self, ref, force=False):
        self.cancelled = True


def test_the_probe_reads_the_card_then_the_driver_then_gives_up():
    nvidia = {"CPU": 64.0, "GPU": 8.0, "accelerator_type:H200": 1.0}
    ray = StandInRay(nvidia, answer=(H200, "NVIDIA H200"))
    assert cluster_gpu_memory(ray, reader=lambda: []) == (H200, "measured by a Ray task on the cluster's NVIDIA H200")
    assert ray.options["num_gpus"] == 1
    # every GPU busy: the task times out and is cancelled; the driver's own card stands in
    busy = StandInRay(nvidia, error=TimeoutError())
    memory, where = cluster_gpu_memory(busy, reader=lambda: [GpuInfo("NVIDIA H100", H100)])
    assert memory == H100 and busy.cancelled and "this machine's NVIDIA H100" in where and "TimeoutError" in where
    assert cluster_gpu_memory(busy, reader=lambda: []) == (None, "the Ray task did not answer (TimeoutError)")
    no_gpu = StandInRay({"CPU": 4.0})
    assert cluster_gpu_memory(no_gpu, reader=lambda: []) == (None, "the Ray cluster has no GPU")
    assert no_gpu.options is None  # no task asked for a GPU that is not there
    mixed = StandInRay({"GPU": 8.0, "accelerator_type:A100": 1.0, "accelerator_type:H100": 1.0},
                       answer=(A100_40GB, "NVIDIA A100-SXM4-40GB"))
    assert "mixes A100, H100 cards" in cluster_gpu_memory(mixed, reader=lambda: [])[1]


def test_the_sizing_line_says_what_was_used_and_what_overrides():
    line = sizing_line({"num_gpus": 1}, H200, "measured by a Ray task on the cluster's NVIDIA H200", vllm=True,
                       tensor_parallel=None)
    assert line == ("each shard reserves 1 GPU(s), sized for 140 GiB per GPU (measured by a Ray task on the "
                    "cluster's NVIDIA H200); --tensor-parallel N overrides")
    fallback = sizing_line({"num_gpus": 2}, None, "the Ray cluster has no GPU", vllm=True, tensor_parallel=None)
    assert "registry's 80 GB GPU counts" in fallback and "could not be learned (the Ray cluster has no GPU)" in fallback
    assert "--tensor-parallel" not in sizing_line({"num_gpus": 2}, None, "x", vllm=False, tensor_parallel=None)
    assert sizing_line({"num_gpus": 4}, None, "", vllm=True, tensor_parallel=4).endswith("(--tensor-parallel 4)")


def test_the_probe_on_a_local_ray_cluster_without_gpus():
    """A real local Ray (one CPU): no GPU to measure, so the registry's counts are used."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=1, num_gpus=0, include_dashboard=False, logging_level="ERROR")
    try:
        assert cluster_gpu_memory(ray, reader=lambda: []) == (None, "the Ray cluster has no GPU")
    finally:
        ray.shutdown()


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


def test_a_ray_run_sizes_its_shards_from_the_probed_card(capsys, monkeypatch):
    """What run_on_ray reserves once connected: Mixtral on an H200 cluster, one GPU per shard."""
    from evalsuite.config import RunConfig
    from evalsuite.models import devices

    monkeypatch.setattr(devices, "torch_gpus", lambda: [])  # this driver has no card (as on a GPU-less head)
    from evalsuite.run.ray_shards import _sized_resources

    h200 = StandInRay({"GPU": 8.0}, answer=(H200, "NVIDIA H200"))
    config = RunConfig.build(None, models="mixtral", backend="vllm", device="cuda")
    assert _sized_resources(h200, config) == {"num_cpus": 1, "num_gpus": 1}
    assert "each shard reserves 1 GPU(s), sized for 140 GiB per GPU" in capsys.readouterr().err
    no_gpu = StandInRay({"CPU": 4.0})
    assert _sized_resources(no_gpu, config) == {"num_cpus": 1, "num_gpus": 2}  # the registry's count
    assert "could not be learned (the Ray cluster has no GPU" in capsys.readouterr().err
    pinned = StandInRay({"GPU": 8.0}, answer=(H200, "NVIDIA H200"))
    assert _sized_resources(pinned, RunConfig.build(config, tensor_parallel=4)) == {"num_cpus": 1, "num_gpus": 4}
    assert pinned.options is None  # --tensor-parallel given: nothing to probe
