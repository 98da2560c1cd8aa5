"""Every alias of the registry loads as the paper ran it, or says why not before anything loads."""
from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest

from evalsuite.backends import BACKENDS
from evalsuite.cli import main
from evalsuite.errors import EvalsuiteError
from evalsuite.models.registry import REGISTRY, check_route

REPO = Path(__file__).resolve().parent.parent
#: The paper's comparison (SOLAR 10.7B, Table 2): each must have an alias.
PAPER_BASELINES = {"solar", "mistral", "mixtral", "llama2-7b", "llama2-13b", "llama2-70b", "qwen-14b", "qwen-72b",
                   "yi-34b", "falcon-180b"}


def test_every_paper_baseline_has_an_alias_with_its_size():
    assert PAPER_BASELINES <= set(REGISTRY)
    for alias in PAPER_BASELINES:
        spec = REGISTRY[alias]
        assert spec.kind == "hub" and spec.params and spec.layers and spec.arch, alias


def test_transformers_native_qwen_releases_have_aliases():
    for alias in ("qwen1.5-14b", "qwen1.5-72b", "qwen2-7b", "qwen2-72b"):
        spec = REGISTRY[alias]
        assert spec.arch == "qwen2" and not spec.trust_remote_code and not spec.backends, alias
        for backend in BACKENDS:
            check_route(spec, backend)  # every backend runs them


def test_every_routed_backend_and_extra_exists():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for spec in REGISTRY.values():
        assert set(spec.backends) <= set(BACKENDS), spec.alias
        if spec.requires:
            assert spec.extra in extras, spec.alias
            declared = " ".join(extras[spec.extra]).lower()
            assert all(module in declared for module in spec.requires), spec.alias


@pytest.mark.parametrize("alias", ["qwen-14b", "qwen-72b"])
@pytest.mark.parametrize("backend", ["evalsuite", "lm-eval-hf"])
def test_qwen_v1_on_a_transformers_backend_says_flag_and_install(alias, backend):
    with pytest.raises(EvalsuiteError) as info:
        check_route(REGISTRY[alias], backend)
    message = str(info.value)
    assert "--backend vllm" in message and "pip install 'evalsuite[vllm,qwen]'" in message and "\n" not in message


@pytest.mark.skipif(importlib.util.find_spec("tiktoken") is not None, reason="tiktoken is installed here")
def test_qwen_v1_on_vllm_without_tiktoken_names_the_extra():
    with pytest.raises(EvalsuiteError, match=r"needs tiktoken, which is not installed; pip install 'evalsuite\[qwen\]'"):
        check_route(REGISTRY["qwen-14b"], "vllm")


def test_qwen_v1_is_refused_before_anything_loads(tmp_path, capsys, data_dir):
    code = main(["run", "--models", "qwen-14b", "--tasks", "arc", "--limit", "1", "--results-dir", str(tmp_path),
                 "--data-dir", str(data_dir)])
    assert code == 2
    assert "--backend vllm" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_qwen_v1_on_a_vllm_without_it():
    from evalsuite.backends.vllm import check_vllm_supports

    check_vllm_supports(REGISTRY["qwen-72b"], version="0.23.1")
    check_vllm_supports(REGISTRY["qwen2-72b"], version="0.33.0")  # Qwen2 is still in vLLM
    with pytest.raises(EvalsuiteError, match=r"vLLM 0.24.0 no longer runs.*pip install 'vllm<0.24'"):
        check_vllm_supports(REGISTRY["qwen-72b"], version="0.24.0")


def test_the_vllm_extra_pins_a_range_that_still_runs_qwen_v1():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pin = next(req for req in extras["vllm"] if req.startswith("vllm"))
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(pin.removeprefix("vllm"))
    assert "0.23.0" in spec and "0.24.0" not in spec and "0.9.0" not in spec
