"""Hub resolution offline, on a real Hub cache layout: a cached snapshot resolves to its commit, a
model missing from the cache is one line."""
from __future__ import annotations

from pathlib import Path

import pytest

from evalsuite.errors import EvalsuiteError


# ---------------------------------------------------------------------------- Hub resolution offline
def _cached_snapshot(repo_id: str, commit: str):
    """Lay out ``repo_id`` in the session's Hub cache exactly as huggingface_hub writes it."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "llama"}')
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_a_cached_snapshot_resolves_offline_to_its_commit():
    from evalsuite.models import hub

    assert hub.offline_mode()  # conftest: HF_HUB_OFFLINE=1 and a session Hub cache
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = _cached_snapshot("evalsuite-tests/cached-model", commit)
    assert hub.resolve_snapshot("evalsuite-tests/cached-model", None) == (commit, snapshot)
    assert hub.resolve_snapshot("evalsuite-tests/cached-model", commit) == (commit, snapshot)  # pinned


def test_a_model_missing_from_the_cache_is_one_line_offline():
    from evalsuite.models import hub

    with pytest.raises(EvalsuiteError) as info:
        hub.resolve_snapshot("evalsuite-tests/not-cached", None)
    message = str(info.value)
    assert message == hub.offline_message("evalsuite-tests/not-cached")
    assert "\n" not in message and "hf download evalsuite-tests/not-cached" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback


