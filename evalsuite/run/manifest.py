"""What a run was: versions, code commit and host, recorded beside every result.

"Why do my numbers differ?" is answered from this: two runs are comparable only when the
model identity, dtype, prompts (task config hashes) and data (file hashes) agree.
"""
from __future__ import annotations

import platform
import socket
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TypedDict

from evalsuite import __version__


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The evalsuite checkout's commit (with ``+dirty`` for local changes), or ``unknown``."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


class Environment(TypedDict):
    """The run record's environment fields (:class:`evalsuite.store.records.RunRecord`), by name."""

    evalsuite_version: str
    git_commit: str
    lm_eval_version: str
    transformers_version: str
    torch_version: str
    python_version: str
    host: str
    pid: int
    pid_started: float


def environment() -> Environment:
    """Versions, code commit, host and the process: a ``running`` row of a dead process is an
    interrupted run (the start time guards against a reused pid)."""
    import os

    import psutil

    return {
        "evalsuite_version": __version__,
        "git_commit": git_commit(),
        "lm_eval_version": _version("lm_eval"),
        "transformers_version": _version("transformers"),
        "torch_version": _version("torch"),
        "python_version": platform.python_version(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_started": psutil.Process(os.getpid()).create_time(),
    }
