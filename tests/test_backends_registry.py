"""The backend registry: one interface, one entry per backend, no backend name tested elsewhere.

A backend is a module with ``build(source, options)`` plus one :class:`BackendInfo`
registration. These tests check that the rest of evalsuite asks the registry (never compares a
backend's name), that each backend's own options are RunConfig fields and flags declared by
the backend, that real backends satisfy the :class:`Backend` protocol, and that a backend
added by one registration runs end to end with a tiny real model.
"""
from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import pytest

from evalsuite.backends import BackendOptions, build_backend
from evalsuite.backends.registry import REGISTRY, Backend, BackendInfo, all_options, get_backend, register
from evalsuite.config import RunConfig
from evalsuite.errors import EvalsuiteError

PACKAGE = Path(__file__).resolve().parent.parent / "evalsuite"


def _name_tests(path: Path) -> list[str]:
    """Comparisons of a value with a backend's name (``backend == "vllm"``, ``in ("vllm", ...)``) and
    backends built by a literal name, in one source file."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set(REGISTRY)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            literals = [c for c in [node.left, *node.comparators] for c in ([c] if not isinstance(c, (ast.Tuple, ast.List, ast.Set)) else c.elts)
                        if isinstance(c, ast.Constant) and c.value in names]
            if literals:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
        if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "build_backend"
                and node.args and isinstance(node.args[0], ast.Constant)):
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} (build_backend by name)")
    return found


def test_no_backend_name_is_tested_outside_backends():
    offenders = [hit for path in sorted(PACKAGE.rglob("*.py")) if "backends" not in path.relative_to(PACKAGE).parts
                 for hit in _name_tests(path)]
    assert offenders == []


def test_the_name_check_finds_a_name_test(tmp_path):
    """The check above can fail: a comparison with a backend name is found."""
    probe = PACKAGE / "_probe_backend_name.py"
    try:
        probe.write_text('def f(backend):\n    return backend != "vllm" or backend in ("lm-eval-hf", "x")\n')
        assert len(_name_tests(probe)) == 2
    finally:
        probe.unlink()


def test_each_backend_option_is_declared_once_by_its_backend():
    declared = {opt.name: info.name for info in REGISTRY.values() for opt in info.options}
    assert declared == {"generation": "evalsuite", "tensor_parallel": "vllm", "data_parallel": "vllm"}
    by_name = {f.name: f for f in fields(RunConfig)}
    for opt in all_options():
        field = by_name[opt.name]
        assert field.default == opt.default and field.metadata["help"] == opt.help
        assert field.metadata["choices"] == opt.choices and field.metadata["group"] == opt.group


@pytest.mark.parametrize("options, message", [
    ({"generation": "greedy"}, "unknown --generation 'greedy'; choose one of batched, exact"),
    ({"tensor_parallel": 0}, "--tensor-parallel must be a positive whole number, got 0"),
    ({"data_parallel": 1.5}, "--data-parallel must be a positive whole number, got 1.5"),
    ({"backend": "sglang"}, "unknown backend 'sglang'; choose one of evalsuite, lm-eval-hf, vllm"),
    ({"tensor_parallel": 2}, "--tensor-parallel and --data-parallel need --backend vllm"),
])
def test_backend_options_are_checked_from_their_declarations(options, message, tiny_llama_dir, tmp_path):
    from evalsuite import evaluate

    with pytest.raises(EvalsuiteError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        evaluate(models=[str(tiny_llama_dir)], tasks="arc", limit=1, results_dir=tmp_path, **options)


def test_capabilities_replace_name_tests():
    assert get_backend("vllm").gpu_only and get_backend("vllm").plans_parallel
    assert get_backend("vllm").cost_model is None  # the dry run does not time vLLM in this process
    assert get_backend("evalsuite").cost_model == "engine" and get_backend("evalsuite").token_logprobs
    assert get_backend("lm-eval-hf").cost_model == "per_request" and not get_backend("lm-eval-hf").plans_parallel
    assert RunConfig(tasks="arc", backend="vllm").validate(gpu=False).device == "cuda"
    assert RunConfig(tasks="arc").validate(gpu=False).device == "cpu"


@pytest.mark.parametrize("name", ["evalsuite", "lm-eval-hf"])
def test_real_backends_satisfy_the_protocol(name, tiny_llama_dir):
    from evalsuite.models.registry import resolve_model
    from evalsuite.models.source import materialize

    lm = build_backend(name, materialize(resolve_model(str(tiny_llama_dir))), BackendOptions())
    assert isinstance(lm, Backend)
    assert lm.engine_note is None or isinstance(lm.engine_note, str)


TOY = '''"""A backend of one's own: lm-eval's hf model under another name (the whole module)."""
from evalsuite.backends.lmeval_hf import build as hf_build


def build(source, options):
    lm = hf_build(source, options)
    lm.engine_note = "toy backend: lm-eval hf underneath"
    return lm
'''


def test_a_new_backend_is_one_module_and_one_registration(tiny_llama_dir, data_dir, tmp_path, monkeypatch):
    """What adding SGLang would take: its module and one ``register`` call; the run stores it by name."""
    from evalsuite import evaluate
    from evalsuite.store.parquet_store import ResultsStore

    (tmp_path / "toy_backend.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    register(BackendInfo("toy", "toy_backend:build", cost_model="per_request", summary="a test's backend"))
    try:
        result = evaluate(models=[str(tiny_llama_dir)], tasks="arc", limit=2, data_dir=data_dir, backend="toy",
                          results_dir=tmp_path / "results", progress=False, use_cache=False, audit=False)
        runs = ResultsStore(result.results_dir).runs()
        assert list(runs["backend"]) == ["toy"] and list(runs["status"]) == ["ok"]
        assert "toy backend: lm-eval hf underneath" in runs["notes"].iloc[0]
        scores = ResultsStore(result.results_dir).scores()
        assert scores.loc[scores["task"] == "arc", "n"].iloc[0] == 2
    finally:
        REGISTRY.pop("toy")
