"""The vLLM backend without vLLM or a GPU: the install message, the tensor parallel plan and fit
check (GPU memory passed in), and the translation of our options into lm-eval ``VLLM`` arguments."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from evalsuite.backends import BackendOptions, build_backend
from evalsuite.backends import vllm as backend
from evalsuite.cli import main
from evalsuite.errors import EvalsuiteError, ModelTooLargeError
from evalsuite.models.identity import ModelSource
from evalsuite.models.registry import resolve_model

H100 = 85_000_000_000  # what torch reports for an H100 80GB (79 GiB)
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def source(alias: str) -> ModelSource:
    spec = resolve_model(alias)
    return ModelSource(spec, spec.source, spec.revision, None)


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_missing_vllm_is_one_line_with_the_fix():
    with pytest.raises(EvalsuiteError, match=r"pip install 'evalsuite\[vllm\]'") as info:
        build_backend("vllm", source("solar"), BackendOptions(device="cuda", dtype="float16"))
    assert "\n" not in str(info.value)


def test_vllm_kwargs_carry_the_v1_settings():
    options = BackendOptions(device="cuda", dtype="bfloat16", batch_size="auto", tensor_parallel=4, data_parallel=2)
    kwargs = backend.vllm_kwargs(source("qwen-72b"), options)
    assert kwargs == {
        "pretrained": "Qwen/Qwen-72B", "revision": None, "trust_remote_code": True, "dtype": "bfloat16",
        "add_bos_token": False, "max_gen_toks": 256, "batch_size": "auto", "tensor_parallel_size": 4,
        "data_parallel_size": 2, "seed": 1234,
    }
    assert backend.vllm_kwargs(source("solar"), BackendOptions(batch_size=16))["batch_size"] == 16


def test_vllm_kwargs_are_parameters_of_lm_evals_vllm():
    """Read lm-eval's VLLM.__init__ from its source (importing it needs vllm)."""
    import lm_eval

    path = Path(lm_eval.__file__).parent / "models" / "vllm_causallms.py"
    tree = ast.parse(path.read_text())
    init = next(node for cls in tree.body if isinstance(cls, ast.ClassDef) and cls.name == "VLLM"
                for node in cls.body if isinstance(node, ast.FunctionDef) and node.name == "__init__")
    accepted = {arg.arg for arg in init.args.args}
    assert set(backend.vllm_kwargs(source("solar"), BackendOptions())) <= accepted


@pytest.mark.parametrize(("alias", "gpu_memory", "expected"), [
    ("solar", H100, 1), ("mistral", H100, 1), ("mixtral", H100, 2), ("llama2-70b", H100, 2),
    ("qwen-72b", H100, 4), ("falcon-180b", H100, 8), ("mixtral", 42_000_000_000, 4), ("yi-34b", 24 * 10**9, 4),
])
def test_default_tensor_parallel_from_the_registry(alias, gpu_memory, expected):
    spec = resolve_model(alias)
    assert backend.default_tensor_parallel(spec, spec.dtype, gpu_memory) == expected


def test_a_plan_that_cannot_fit_fails_before_loading(monkeypatch):
    monkeypatch.setattr(backend, "require_vllm", lambda: None)
    mixtral = resolve_model("mixtral")
    with pytest.raises(ModelTooLargeError, match="--tensor-parallel 2") as info:
        backend.plan_parallel(mixtral, "bfloat16", 1, gpu_memory=H100, gpu_count=8)
    assert "104 GiB" in str(info.value)
    assert backend.plan_parallel(mixtral, "bfloat16", None, gpu_memory=H100, gpu_count=8) == (2, 1)
    assert backend.plan_parallel(resolve_model("qwen-72b"), "bfloat16", None, 2, gpu_memory=H100, gpu_count=8) == (4, 2)
    with pytest.raises(EvalsuiteError, match="needs 8 GPUs but 4 are visible"):
        backend.plan_parallel(resolve_model("qwen-72b"), "bfloat16", 4, 2, gpu_memory=H100, gpu_count=4)
    with pytest.raises(EvalsuiteError, match="none is visible"):
        backend.plan_parallel(mixtral, "bfloat16", None, gpu_memory=H100, gpu_count=0)


def test_cli_refuses_a_tensor_parallel_too_small(monkeypatch, tmp_path, capsys, data_dir):
    """``evalsuite run --backend vllm`` on one (pretend) 80 GB GPU: Mixtral needs two."""
    monkeypatch.setattr(backend, "_visible_gpus", lambda: (H100, 1))
    monkeypatch.setattr(backend, "require_vllm", lambda: None)
    code = main(["run", "--models", "mixtral", "--backend", "vllm", "--tasks", "arc", "--limit", "1",
                 "--tensor-parallel", "1", "--results-dir", str(tmp_path), "--data-dir", str(data_dir)])
    assert code == 2
    assert "use --tensor-parallel 2" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before anything was stored or loaded


def test_other_backends_refuse_parallel_flags(tmp_path, capsys, data_dir):
    code = main(["run", "--models", "smollm2", "--tensor-parallel", "2", "--tasks", "arc", "--limit", "1",
                 "--results-dir", str(tmp_path), "--data-dir", str(data_dir)])
    assert code == 2
    assert "need --backend vllm" in capsys.readouterr().err


def test_gpu_device_map_spreads_only_models_that_need_it():
    """The transformers backends' placement on ``--device cuda`` (fake GPU memory and count)."""
    from evalsuite.models.loading import gpu_device_map

    assert gpu_device_map(source("solar"), "bfloat16", gpu_memory=H100, gpu_count=4) == {"": 0}
    assert gpu_device_map(source("mixtral"), "bfloat16", gpu_memory=H100, gpu_count=2) == "auto"
    assert gpu_device_map(source("mixtral"), "bfloat16", gpu_memory=H100, gpu_count=1) == {"": 0}


# -- one engine per model, whole tasks, the card's real memory (issue 22) --------------------------
H200 = 150_754_820_096  # what torch reports for an H200 (140 GiB)


def test_one_h200_runs_mixtral_at_tensor_parallel_1():
    mixtral = resolve_model("mixtral")
    assert backend.default_tensor_parallel(mixtral, "bfloat16", H200) == 1
    assert backend.default_tensor_parallel(mixtral, "bfloat16", H100) == 2
    assert backend.default_tensor_parallel(resolve_model("qwen2-72b"), "bfloat16", H200) == 2


class StandInLLM:
    """vLLM's ``LLM`` as the pool sees it: counts constructions, answers each request with its
    own first token id (so order mistakes show)."""

    built = 0

    def __init__(self) -> None:
        type(self).built += 1

    def generate(self, requests, params):
        assert len(requests) == len(params)
        return [request[0] for request in requests]


def test_replicas_start_once_per_model_not_per_call():
    StandInLLM.built = 0
    stopped = []
    pool = backend.ReplicaPool(3, lambda i: StandInLLM(), lambda replica, reqs, ps: replica.generate(reqs, ps),
                               lambda handles: handles, stopped.append)
    for task_size in (7, 1, 32, 5):  # four whole tasks of one model
        requests = [[i, 99] for i in range(task_size)]
        assert pool.generate(requests, ["greedy"] * task_size) == list(range(task_size))
    assert StandInLLM.built == 3  # one engine per replica for every task of the model
    pool.release()
    assert len(stopped) == 3
    pool.generate([[5]], ["greedy"])  # the next model starts its own
    assert StandInLLM.built == 6


def test_runner_sends_vllm_whole_tasks(data_dir):
    """The runner's call site: one backend call per task for vLLM, 32-document chunks otherwise."""
    from evalsuite.config import CHUNK_DOCS
    from evalsuite.run.evaluation import _score_prompts, whole_task_chunk
    from evalsuite.tasks import LoadedTask, load_spec

    class CountingLM:
        calls = 0

        def loglikelihood(self, instances):
            type(self).calls += 1
            return [(-1.0, False)] * len(instances)

    task = LoadedTask(load_spec("arc"), data_dir)
    prompts = task.prompts(70)
    _score_prompts(CountingLM(), task, prompts, "m", "r", False, whole_task_chunk("vllm"))
    assert CountingLM.calls == 1
    CountingLM.calls = 0
    _score_prompts(CountingLM(), task, prompts, "m", "r", False, whole_task_chunk("evalsuite"))
    assert CountingLM.calls == -(-70 // CHUNK_DOCS)


def test_ray_with_data_parallel_is_refused_up_front(tmp_path, capsys, data_dir, monkeypatch):
    import evalsuite.run.ray_shards as ray_shards

    monkeypatch.setattr(ray_shards, "_import_ray", lambda: pytest.fail("Ray must not start"))
    code = main(["run", "--models", "solar", "--backend", "vllm", "--data-parallel", "2", "--ray", "local",
                 "--shards", "2", "--tasks", "arc", "--limit", "1", "--results-dir", str(tmp_path),
                 "--data-dir", str(data_dir)])
    assert code == 2
    assert "use --shards 4 instead" in capsys.readouterr().err


def test_a_models_replicas_are_released_when_its_tasks_are_done(tmp_path):
    """The runner releases the backend's replicas after the model, through the request cache."""
    from evalsuite.run.evaluation import _close
    from evalsuite.run.request_cache import CachedLM

    class Backend:
        released = 0

        def release_replicas(self):
            type(self).released += 1

    _close(CachedLM(Backend(), "key", tmp_path / "cache.sqlite"))
    _close(Backend())
    _close(object())  # a backend without replicas: nothing to do
    assert Backend.released == 2
