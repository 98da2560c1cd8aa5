"""An installed wheel (not the editable checkout) lists and renders the six tasks: the task
definitions in the top-level tasks/ folder ship inside the package."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _source_copy(dest: Path) -> Path:
    """The package's sources in a scratch folder: setuptools writes build/ and *.egg-info next to
    the sources it builds, and a test must not write into the checkout."""
    skip = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                                  "results", "reports", "benchmarks")
    shutil.copytree(REPO, dest, symlinks=True, ignore=skip)  # evalsuite/task_defs stays a link to tasks/
    return dest


@pytest.mark.slow
def test_installed_wheel_lists_and_renders_the_six_tasks(tmp_path, data_dir):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    source = _source_copy(tmp_path / "source")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("evalsuite-*.whl")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    # run from an unrelated folder, with the wheel's copy first on the path (not the checkout)
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("EVALSUITE_TASK_DIR", None)
    where = subprocess.run([sys.executable, "-c", "import evalsuite, evalsuite.tasks as t; "
                            "print(evalsuite.__file__); print(t.tasks_dir())"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    package_file, tasks_dir = where.stdout.split()
    assert package_file.startswith(str(site)) and tasks_dir.startswith(str(site)), where.stdout
    listed = subprocess.run([sys.executable, "-m", "evalsuite.cli", "tasks"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    names = {line.split()[0] for line in listed.stdout.splitlines()}
    assert {"arc", "hellaswag", "mmlu", "truthfulqa", "winogrande", "gsm8k", "leaderboard"} <= names
    shown = subprocess.run([sys.executable, "-m", "evalsuite.cli", "prompts", "--task", "leaderboard", "--limit", "1",
                            "--data-dir", str(data_dir)], capture_output=True, text=True, env=env, cwd=tmp_path,
                           timeout=600)
    assert shown.returncode == 0, shown.stderr[-2000:]
    lines = [json.loads(line) for line in shown.stdout.splitlines()]
    assert {line["task"] for line in lines} == {"arc", "hellaswag", "mmlu", "truthfulqa", "winogrande", "gsm8k"}
    assert all(line.get("context") or line.get("contexts") for line in lines)
