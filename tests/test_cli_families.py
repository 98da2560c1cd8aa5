"""Every family through ``evalsuite run`` from the CLI, default backend against ``--backend
lm-eval-hf``, on local model folders (issue 17's "Done when"). One run per backend holds every
family, so the models load once each; the remote-code stand-in generates one full forward per
token (its own cache is out of the engine's reach), so it runs ARC only here; its generation
is checked against lm-eval hf in tests/test_families.py."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from transformers import AutoTokenizer

from conftest import REPO, SHARED_DATA, document_tolerance
from families import FAMILIES
from evalsuite.models.registry import REGISTRY

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="leaderboard data not available")

#: (families, tasks) of each CLI run.
GROUPS = (([f for f in FAMILIES if f != "remote"], "arc,gsm8k"), (["remote"], "arc"))


def _run(folders: list[Path], tasks: str, backend: str, results: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    proc = subprocess.run(
        [sys.executable, "-m", "evalsuite.cli", "run", "--models", ",".join(map(str, folders)), "--tasks", tasks,
         "--limit", "1", "--data-dir", str(SHARED_DATA), "--results-dir", str(results), "--backend", backend,
         "--trust-remote-code", "--no-cache", "--no-progress"],
        capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    runs = pd.read_parquet(results / "runs")
    assert len(runs) == len(folders) and (runs["status"] == "ok").all()
    return pd.read_parquet(results / "samples").sort_values(["model", "task", "doc_index"]), runs


@pytest.mark.parametrize("group", range(len(GROUPS)))
def test_cli_run_default_backend_matches_lm_eval_hf(group, family_dirs, tmp_path):
    """``evalsuite run`` with the default backend on every family's folder stores lm-eval hf's
    numbers and texts (no traceback), and each model's run notes say which executor ran and why."""
    families, tasks = GROUPS[group]
    folders = [family_dirs[f] for f in families]
    ours, runs = _run(folders, tasks, "evalsuite", tmp_path / "evalsuite")
    ref, _ = _run(folders, tasks, "lm-eval-hf", tmp_path / "lm-eval-hf")
    for family in families:
        # a folder is keyed by its name, unless that is a registry alias (mixtral): name-<hash>
        key = family if family not in REGISTRY else next(k for k in runs["model"] if k.startswith(family + "-"))
        note = runs.loc[runs["model"] == key, "notes"].iloc[0] or ""
        assert "log-likelihoods" in note and "generation" in note, (family, note)
        mine, theirs = ours[ours["model"] == key], ref[ref["model"] == key]
        assert set(mine["task"]) == set(tasks.split(",")), family
        arc, ref_arc = mine[mine["task"] == "arc"], theirs[theirs["task"] == "arc"]
        tokenizer = AutoTokenizer.from_pretrained(family_dirs[family])
        for got, want, continuations in zip(arc["loglikelihoods"], ref_arc["loglikelihoods"], ref_arc["continuations"],
                                            strict=True):
            tol = document_tolerance(continuations, tokenizer)
            assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= tol, family
        assert list(arc["prediction"]) == list(ref_arc["prediction"]), family
        assert list(mine[mine["task"] == "gsm8k"]["generation"]) == list(theirs[theirs["task"] == "gsm8k"]["generation"]), family
