"""``evalsuite nightly`` end to end on real tiny models: a real drop fails, no drop passes.

A random tiny model is at chance everywhere, so a degraded copy of it would not be worse. The
"good" model here is a tiny Llama trained for a few steps (contrastively, on the exact
Winogrande requests of the run) until it answers all of them right; the "degraded" model is
that checkpoint with Gaussian noise added to every weight matrix, saved as a new folder. The
drop is real (about 100% -> chance) and McNemar-significant, and nothing is mocked: the
runs go through the default backend and the comparison reads the parquet store.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import build_tiny_llama
from evalsuite.cli import main
from evalsuite.analysis.comparison import read_baseline

TASK, LIMIT = "winogrande", 40


def train_good(tokenizer, folder: Path, data_dir: Path, steps: int = 3) -> Path:
    """A tiny Llama that prefers the gold option of the first LIMIT Winogrande documents."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from evalsuite.tasks import LoadedTask, load_spec

    build_tiny_llama(tokenizer, folder, seed=1)
    model = AutoModelForCausalLM.from_pretrained(folder)
    prompts = LoadedTask(load_spec(TASK), data_dir).prompts(LIMIT)
    seqs, starts = [], []
    for prompt in prompts:
        for inst in prompt.instances:
            ctx, cont = inst.args
            c = tokenizer(ctx, add_special_tokens=False).input_ids
            w = tokenizer(cont, add_special_tokens=False).input_ids
            seqs.append(c + w)
            starts.append(len(c))
    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    targets = torch.full_like(ids, -100)
    for row, (s, n) in enumerate(zip(seqs, starts)):
        targets[row, n - 1:len(s) - 1] = torch.tensor(s[n:])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    gold = torch.tensor([int(p.gold) for p in prompts])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        scored = targets != -100  # project only the continuation positions onto the vocabulary
        token_ll = -F.cross_entropy(model.lm_head(hidden[scored]), targets[scored], reduction="none")
        rows = scored.nonzero()[:, 0]
        per_option = torch.zeros(len(seqs)).index_add(0, rows, token_ll).view(len(prompts), -1)  # [docs, options]
        F.cross_entropy(per_option, gold).backward()
        opt.step()
    model.save_pretrained(folder)
    return folder


def noised_copy(folder: Path, target: Path, std: float = 0.5, seed: int = 7) -> Path:
    """``folder``'s model with N(0, std) added to every weight matrix: a real degradation."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.add_(torch.randn(param.shape, generator=gen) * std)
    model.save_pretrained(target)
    for name in folder.iterdir():
        if name.name.startswith("tokenizer") or name.name == "special_tokens_map.json":
            shutil.copy(name, target / name.name)
    return target


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer, data_dir) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("nightly-models")
    good = train_good(tiny_tokenizer, root / "good", data_dir)
    return good, noised_copy(good, root / "degraded")


def test_nightly_passes_on_itself_and_fails_on_a_degraded_copy(models, data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EVALSUITE_REQUEST_CACHE", str(tmp_path / "requests.sqlite"))
    good, degraded = models
    results = tmp_path / "results"
    common = ["--tasks", TASK, "--limit", str(LIMIT), "--data-dir", str(data_dir), "--results-dir", str(results)]

    # first night: no baseline yet, so this run becomes it
    assert main(["nightly", "--model", str(good), "--tag", "night-1", *common]) == 0
    assert read_baseline(results)["tag"] == "night-1"
    assert "first night" in capsys.readouterr().out

    # the same model again: no regression (and every request comes from the cache)
    assert main(["nightly", "--model", str(good), "--tag", "night-2", *common]) == 0
    out = capsys.readouterr().out
    assert "no regression" in out and "winogrande" in out

    # a noised copy of it: a real, significant drop -> exit 1, naming the task
    md = tmp_path / "summary.md"
    assert main(["nightly", "--model", str(degraded), "--tag", "night-3", "--markdown", str(md), *common]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION in winogrande" in out
    summary = md.read_text()
    assert "REGRESSION in winogrande" in summary and "| winogrande | acc |" in summary
    (report,) = [json.loads(p.read_text()) for p in (results / "nightly").glob("*.json")
                 if json.loads(p.read_text()).get("regressed")]
    (task,) = report["tasks"]
    assert task["baseline"] >= 90 and task["delta"] < -25 and task["p_value"] < 0.001

    # comparing against an explicit ref works too, and the baseline did not move
    assert main(["compare", "tag:night-1", "tag:night-2", "--results-dir", str(results)]) == 0
    assert read_baseline(results)["tag"] == "night-1"


# -- the workflow (issue 18: a nightly that finishes and remembers) -------------------------------
WORKFLOW = Path(__file__).resolve().parent.parent / ".github" / "workflows" / "nightly-eval.yml"
LIMIT_SCRIPT = WORKFLOW.parent.parent / "scripts" / "nightly_limit.py"


def _limit_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("nightly_limit", LIMIT_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_workflow_keeps_the_store_in_an_artifact_chain_and_caches_only_the_request_cache():
    import yaml

    workflow = yaml.safe_load(WORKFLOW.read_text())
    job = workflow["jobs"]["nightly"]
    steps = {step.get("name"): step for step in job["steps"]}
    assert job["timeout-minutes"] <= 360
    assert workflow["permissions"]["actions"] == "read"
    restore = steps["Restore the results store"]
    assert restore["uses"].startswith("actions/download-artifact@") and restore["with"]["name"] == "nightly-store"
    assert "steps.previous.outputs.run_id" in restore["with"]["run-id"]
    keep = steps["Keep the results store for the next night"]
    assert keep["uses"].startswith("actions/upload-artifact@") and "always()" in keep["if"]
    assert "steps.nightly.outcome != 'skipped'" in keep["if"]
    assert keep["with"]["name"] == "nightly-store" and keep["with"]["retention-days"] >= 30
    for step in job["steps"]:  # the Actions cache holds the request cache only, never the store
        if str(step.get("uses", "")).startswith("actions/cache"):
            assert step["with"]["path"].strip() == "${{ env.EVALSUITE_CACHE }}"
    choose = steps["Choose the document limit"]["run"]
    assert "nightly_limit.py" in choose and "GITHUB_ENV" in choose
    order = [step.get("name") for step in job["steps"]]
    assert order.index("Choose the document limit") < order.index("Evaluate and compare with the baseline")
    assert order.index("Restore the results store") < order.index("Evaluate and compare with the baseline")


@pytest.mark.parametrize("limit,device,expected", [
    ("", "cpu", "default"), ("", "", "default"), ("", "cuda", None), ("", "cuda:1", None),
    ("25", "cpu", 25), ("25", "cuda", 25), ("all", "cpu", None), (" ALL ", "cuda", None),
])
def test_nightly_limit_defaults(limit, device, expected):
    module = _limit_module()
    want = module.CPU_DEFAULT_LIMIT if expected == "default" else expected
    assert module.choose_limit(limit, device) == want


@pytest.mark.parametrize("limit,device", [("0", "cpu"), ("-3", "cpu"), ("1.5", "cpu"), ("ten", "cpu"), ("", "tpu")])
def test_nightly_limit_refuses_bad_values(limit, device, capsys):
    module = _limit_module()
    assert module.main([limit, device]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: NIGHTLY_")


def test_default_cpu_limit_fits_the_job_limit_by_the_documented_estimate():
    """The default's dry-run estimate (docs/nightly.md) leaves more than half of the 6 h job for
    installing, converting the model and the estimate's own error (GSM8K runs up to 1.7x over)."""
    module = _limit_module()
    assert 0 < module.CPU_ESTIMATE_H * 1.7 < 6 - 1
    docs = (Path(__file__).resolve().parent.parent / "docs" / "nightly.md").read_text()
    assert f"--limit {module.CPU_DEFAULT_LIMIT}" in docs
