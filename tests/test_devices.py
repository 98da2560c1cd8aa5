"""``--device auto``: the decision with a stand-in GPU reader, the first line of a run, and the
refusal of CPU runs that cannot finish within a day (real registry sizes, no download)."""
from __future__ import annotations

import pytest

from evalsuite.cli import main
from evalsuite.config import RunConfig
from evalsuite.errors import EvalsuiteError
from evalsuite.models import devices
from evalsuite.models.devices import GpuInfo, check_cpu_run, cpu_seconds, describe_device, resolve_device
from evalsuite.models.registry import REGISTRY
from evalsuite.tasks import expand_tasks

H100 = GpuInfo("NVIDIA H100 80GB HBM3", 85_045_231_616)
H200 = GpuInfo("NVIDIA H200", 150_754_820_096)
LEADERBOARD = expand_tasks("leaderboard")


def test_auto_follows_the_visible_gpus():
    assert resolve_device("auto", lambda: [H100]) == "cuda"
    assert resolve_device("auto", lambda: [H100, H100]) == "cuda"  # every GPU the model needs (device_map)
    assert resolve_device("auto", lambda: []) == "cpu"
    assert resolve_device("cpu", lambda: [H100]) == "cpu"  # an explicit choice is kept
    assert resolve_device("cuda:1", lambda: []) == "cuda:1"


def test_auto_is_the_default_and_resolves_to_cpu_here():
    assert RunConfig().device == "auto"
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert RunConfig(models="smollm2", tasks="arc").validate(gpu=False).device == expected
    assert RunConfig(models="smollm2", backend="vllm").validate(gpu=False).device == "cuda"


def test_the_first_line_names_the_device_and_the_gpus():
    line = describe_device("cuda", "auto", lambda: [H200, H200])
    assert line == "device cuda (auto): 2 x NVIDIA H200 (140 GiB)"
    assert describe_device("cuda:1", "cuda:1", lambda: [H100, H200]) == "device cuda:1 (--device): 1 x NVIDIA H200 (140 GiB)"
    assert describe_device("cpu", "auto", lambda: []).startswith("device cpu (auto: no GPU visible;")


@pytest.mark.parametrize("alias", ["smollm2", "smollm2-dus"])
def test_small_models_are_never_refused(alias):
    spec = REGISTRY[alias]
    check_cpu_run(alias, spec.params, LEADERBOARD, None, cores=1)  # full leaderboard, one core
    check_cpu_run(alias, 200_000_000, LEADERBOARD, None, cores=1)  # SmolLM2 up-scaled (44 layers)


def test_a_large_model_on_the_cpu_is_refused_unless_short():
    solar = REGISTRY["solar"]
    assert cpu_seconds(solar.params, LEADERBOARD, None, cores=16) > 86400
    with pytest.raises(EvalsuiteError, match=r"--device cpu to run on the CPU anyway") as info:
        check_cpu_run("solar", solar.params, LEADERBOARD, None, cores=16)
    assert "\n" not in str(info.value) and "10.7B" in str(info.value)
    check_cpu_run("solar", solar.params, LEADERBOARD, 3, cores=16)  # --limit 3: minutes
    check_cpu_run("mystery", None, LEADERBOARD, None)  # unknown size: the dry run is the judge


@pytest.fixture()
def big_ram(monkeypatch):
    """A machine whose RAM holds SOLAR in float32 (the RAM check comes before the time check)."""
    from evalsuite.models import memory

    monkeypatch.setattr(memory, "available_memory", lambda device: (2**40, "available RAM"))


def test_beyond_the_ram_is_said_first(monkeypatch):
    from evalsuite.errors import ModelTooLargeError
    from evalsuite.models import memory

    monkeypatch.setattr(devices, "torch_gpus", lambda: [])
    monkeypatch.setattr(memory, "available_memory", lambda device: (16 * 2**30, "available RAM"))
    with pytest.raises(ModelTooLargeError, match="needs about 48 GiB in float32"):
        RunConfig(models="solar", tasks="leaderboard").validate(gpu=False)


def test_cli_refuses_solar_on_an_auto_cpu_before_anything(tmp_path, capsys, data_dir, monkeypatch, big_ram):
    monkeypatch.setattr(devices, "torch_gpus", lambda: [])  # this machine, whatever it has
    code = main(["run", "--models", "solar", "--tasks", "leaderboard", "--results-dir", str(tmp_path),
                 "--data-dir", str(data_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert "would take about" in err and "--device cpu" in err
    assert not (tmp_path / "runs").exists()


def test_explicit_cpu_is_not_refused_for_time(monkeypatch, big_ram):
    monkeypatch.setattr(devices, "torch_gpus", lambda: [])
    config = RunConfig(models="solar", tasks="leaderboard", device="cpu").validate(gpu=False)
    assert config.device == "cpu"
    with pytest.raises(EvalsuiteError, match="would take about"):
        RunConfig(models="solar", tasks="leaderboard").validate(gpu=False)
    # the dry run measures instead of refusing
    assert RunConfig(models="solar", tasks="leaderboard").validate(gpu=False, cpu_budget=False).device == "cpu"


def test_a_run_says_its_device_first(tmp_path, capsys, data_dir, tiny_llama_dir):
    from evalsuite.run.evaluation import evaluate

    evaluate(str(tiny_llama_dir), "arc", limit=1, data_dir=data_dir, results_dir=tmp_path, progress=False, audit=False,
             use_cache=False)
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("evalsuite:")]
    assert lines[0].startswith("evalsuite: device cpu (auto")
    assert "dtype float32" in lines[1] and "backend evalsuite" in lines[1]
