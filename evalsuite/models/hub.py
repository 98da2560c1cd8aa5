"""Models from the Hugging Face Hub: a revision pinned to its commit, and one-line errors offline.

Why pin: ``main`` moves. The small files of a model (config, tokenizer, generation config, remote
code) are fetched first and the commit they came from becomes the revision everything else is
loaded at and the identity results are cached under, so a model updated on the Hub is a new
model to evalsuite, never a stale cache hit.

Why probe: without a network, ``huggingface_hub`` retries for tens of seconds and then fails
with a long chained traceback. A short connection probe decides first; offline, only the local
Hub cache is consulted and a model that is not there is one line saying how to provide it.
"""
from __future__ import annotations

import os
import socket
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

from evalsuite.errors import EvalsuiteError

#: The files fetched to identify a model: everything but the weights.
SMALL_FILES = ["*.json", "*.model", "*.txt", "*.py", "*.tiktoken", "*.jinja"]
PROBE_TIMEOUT_S = 3.0


def offline_mode() -> bool:
    """HF_HUB_OFFLINE is set: the user asked for the local Hub caches only."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


@cache
def hub_reachable() -> bool:
    """Whether the Hub endpoint accepts a connection (False at once when HF_HUB_OFFLINE is set)."""
    if offline_mode():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def local_only(kind: str) -> dict[str, bool]:
    """``local_files_only`` for a Hub model while the Hub is unreachable (no minute of retries);
    nothing for other kinds of model (``kind`` is :attr:`ModelSpec.kind`)."""
    if kind != "hub":
        return {}
    return {} if hub_reachable() else {"local_files_only": True}


@cache
def resolve_snapshot(repo_id: str, revision: str | None) -> tuple[str, Path]:
    """``(commit, folder)`` of the model's small files at ``revision`` (default ``main``); resolved
    once per process, so every part of a run sees the same commit."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    online = hub_reachable()
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=SMALL_FILES, local_files_only=not online)
    except GatedRepoError:
        raise EvalsuiteError(f"{repo_id} is gated on the Hugging Face Hub: accept its licence at "
                             f"https://huggingface.co/{repo_id} and log in (`hf auth login` or HF_TOKEN), or pass a "
                             f"local folder") from None
    except RepositoryNotFoundError:
        raise EvalsuiteError(f"no model '{repo_id}' on the Hugging Face Hub (or it is private); check the id at "
                             f"https://huggingface.co/{repo_id}, log in (`hf auth login` or HF_TOKEN), or pass a "
                             f"local folder") from None
    except RevisionNotFoundError:
        raise EvalsuiteError(f"{repo_id} has no revision '{revision}' on the Hub; check --revision") from None
    except Exception as exc:  # LocalEntryNotFoundError offline; HTTP and validation errors online
        if online:
            reason = (f"{type(exc).__name__}: {exc}".splitlines() or ["error"])[0][:160]
            raise EvalsuiteError(f"could not fetch {repo_id} from the Hugging Face Hub ({reason}); retry, or pass a "
                                 f"local folder") from None
        raise EvalsuiteError(offline_message(repo_id)) from None
    return Path(folder).name, Path(folder)


def offline_message(repo_id: str) -> str:
    return (f"the Hugging Face Hub is not reachable and {repo_id} is not in the local Hub cache; on a machine "
            f"with access run `hf download {repo_id} --local-dir DIR`, copy DIR here and pass it "
            f"as the model (or fill the Hub cache and set HF_HUB_OFFLINE=1)")
