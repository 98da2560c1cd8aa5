"""The nightly workflow as GitHub runs it: parsed from its YAML, its shell steps run with bash
(``bash -e``, as Actions does) against a recording stand-in for ``evalsuite``."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / ".github" / "workflows" / "nightly-eval.yml"
#: The current major of each action the workflow uses (Node 24 releases; docs/nightly.md).
CURRENT_MAJORS = {"actions/checkout": 7, "actions/setup-python": 6, "actions/cache/restore": 6,
                  "actions/cache/save": 6, "actions/upload-artifact": 7, "actions/download-artifact": 7}


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _steps() -> dict[str, dict]:
    return {step.get("name", step.get("uses")): step for step in _workflow()["jobs"]["nightly"]["steps"]}


def test_no_expression_is_pasted_into_a_shell_script():
    """``${{ inputs.x }}`` inside ``run:`` is text GitHub pastes into the script before bash reads
    it: a quote in an input runs as code. Inputs reach scripts as environment variables only."""
    for name, step in _steps().items():
        if "run" in step:
            assert "${{" not in step["run"], name


def test_hf_token_comes_from_the_secret():
    job = _workflow()["jobs"]["nightly"]
    assert re.fullmatch(r"\$\{\{\s*secrets\.HF_TOKEN\s*\}\}", job["env"]["HF_TOKEN"].strip())
    assert "HF_TOKEN" not in json.dumps(_workflow().get("env", {}))  # not in the workflow-wide env


def test_actions_are_at_their_current_major():
    used = {step["uses"] for step in _workflow()["jobs"]["nightly"]["steps"] if "uses" in step}
    assert used
    for ref in used:
        action, _, version = ref.partition("@")
        assert action in CURRENT_MAJORS, f"{action}: add its current major to CURRENT_MAJORS"
        assert int(version.lstrip("v").split(".")[0]) >= CURRENT_MAJORS[action], ref


@pytest.fixture()
def runner(tmp_path):
    """A job folder with the repository's scripts and a stand-in ``evalsuite`` that records its
    arguments (one per line) and exits 0."""
    shutil.copytree(REPO / ".github" / "scripts", tmp_path / ".github" / "scripts")
    (tmp_path / "reports").mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "evalsuite"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done >> "$CALLS"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"),
           "RESULTS": "results", "GITHUB_STEP_SUMMARY": str(tmp_path / "summary")}

    def run(step: str, **extra: str) -> tuple[int, list[str]]:
        script = _steps()[step]["run"]
        done = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env={**env, **extra},
                              capture_output=True, text=True, timeout=60)
        calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
        return done.returncode, calls

    run.folder = tmp_path  # type: ignore[attr-defined]
    return run


def _night(folder: Path, data: dict) -> None:
    (folder / "reports" / "nightly.json").write_text(json.dumps(data))


def test_report_after_a_failed_first_night_without_baseline(runner):
    """`evalsuite nightly`'s JSON when the first night failed: no ``baseline`` key at all."""
    _night(runner.folder, {"baseline_set": False, "candidate": {"run_id": "r1", "model": "smollm2"},
                           "regressed": [], "exit_code": 1})
    code, calls = runner("HTML report")
    assert code == 0
    assert calls[:3] == ["report", "--runs", "r1"]


def test_report_with_a_baseline_and_without_any_json(runner):
    _night(runner.folder, {"baseline": {"run_id": "r0"}, "candidate": {"run_id": "r1"}})
    assert runner("HTML report")[1][:3] == ["report", "--runs", "r0,r1"]
    (runner.folder / "calls").unlink()
    (runner.folder / "reports" / "nightly.json").unlink()
    assert runner("HTML report") == (0, [])  # nothing to report: no call, no failure
    _night(runner.folder, {"baseline": {"run_id": "r0"}, "candidate": {"run_id": "r0"}})
    assert runner("HTML report")[1][:3] == ["report", "--runs", "r0"]


def test_accept_baseline_input_is_data_not_code(runner):
    hostile = 'x"; touch pwned; echo "'
    code, calls = runner("Accept a new baseline", ACCEPT_BASELINE=hostile)
    assert code == 0
    assert calls[:3] == ["baseline", "set", hostile]
    assert not (runner.folder / "pwned").exists()
    step = _steps()["Accept a new baseline"]
    assert step["env"]["ACCEPT_BASELINE"].replace(" ", "") == "${{inputs.accept_baseline}}"


def test_fail_step_reads_the_exit_status_from_the_environment(runner):
    code, _ = runner("Fail on regression", RC="1")
    assert code == 1
