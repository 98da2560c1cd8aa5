"""The access check before the first evaluation, against a stand-in for the Hub client (the Hub
is not reachable here): gated with and without access, missing or private, a bad revision, the
Hub down, offline with and without the local cache; one line per model naming the fix."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

from evalsuite.errors import EvalsuiteError
from evalsuite.models.access import check_access, check_access_all
from evalsuite.models.registry import REGISTRY, resolve_model

REPO = Path(__file__).resolve().parent.parent


def _response(status: int) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api/models/x"))


@dataclass
class Info:
    gated: bool | str


class StandInHub:
    """What HfApi answers: ``models`` maps a repo id to its gated flag; ``granted`` are the gated
    repos this account may download; anything else is missing (or private)."""

    def __init__(self, models: dict[str, bool | str], granted: set[str] = frozenset(), revisions: set[str] = frozenset(),
                 down: bool = False):
        self.models, self.granted, self.revisions, self.down = models, set(granted), set(revisions), down
        self.calls: list[tuple[str, str]] = []

    def model_info(self, repo_id: str, revision: str | None = None) -> Info:
        self.calls.append(("model_info", repo_id))
        if self.down:
            raise httpx.ConnectTimeout("timed out")
        if repo_id not in self.models:
            raise RepositoryNotFoundError("404 Repository Not Found", response=_response(404))
        if revision is not None and revision not in self.revisions:
            raise RevisionNotFoundError("404 Revision Not Found", response=_response(404))
        return Info(self.models[repo_id])

    def auth_check(self, repo_id: str) -> None:
        self.calls.append(("auth_check", repo_id))
        if repo_id not in self.granted:
            raise GatedRepoError("403 Forbidden: gated", response=_response(403))


HUB = {"mistralai/Mistral-7B-v0.1": "auto", "mistralai/Mixtral-8x7B-v0.1": "auto", "upstage/SOLAR-10.7B-v1.0": False,
       "meta-llama/Llama-2-7b-hf": "manual"}


def test_a_public_model_passes_without_an_auth_check():
    hub = StandInHub(HUB)
    assert check_access(REGISTRY["solar"], api=hub, online=True) == "public"
    assert hub.calls == [("model_info", "upstage/SOLAR-10.7B-v1.0")]


def test_gated_without_access_names_login_token_and_page():
    with pytest.raises(EvalsuiteError) as info:
        check_access(REGISTRY["mixtral"], api=StandInHub(HUB), online=True)
    message = str(info.value)
    assert "\n" not in message
    assert "`hf auth login`" in message and "HF_TOKEN" in message
    assert "https://huggingface.co/mistralai/Mixtral-8x7B-v0.1" in message
    assert "huggingface-cli" not in message


def test_gated_with_access_passes():
    hub = StandInHub(HUB, granted={"mistralai/Mistral-7B-v0.1"})
    assert check_access(REGISTRY["mistral"], api=hub, online=True) == "gated (auto), access granted"


def test_the_hubs_flag_wins_over_the_registrys():
    """SOLAR is not gated in the registry; were it gated on the Hub, the Hub's word counts."""
    with pytest.raises(EvalsuiteError, match="is gated"):
        check_access(REGISTRY["solar"], api=StandInHub({"upstage/SOLAR-10.7B-v1.0": "manual"}), online=True)


def test_missing_private_revision_and_hub_down():
    spec = resolve_model("someone/no-such-model")
    with pytest.raises(EvalsuiteError, match=r"no model someone/no-such-model .*or it is private.*hf auth login"):
        check_access(spec, api=StandInHub(HUB), online=True)
    pinned = resolve_model("upstage/SOLAR-10.7B-v1.0", revision="deadbeef")
    with pytest.raises(EvalsuiteError, match="has no revision 'deadbeef'"):
        check_access(pinned, api=StandInHub(HUB), online=True)
    with pytest.raises(EvalsuiteError, match=r"could not ask the Hugging Face Hub .*ConnectTimeout"):
        check_access(REGISTRY["solar"], api=StandInHub(HUB, down=True), online=True)


def test_offline_uses_the_cache_and_the_registrys_flag():
    """HF_HUB_OFFLINE=1 (tests/conftest.py): nothing cached, so each model says how to get it."""
    with pytest.raises(EvalsuiteError) as gated:
        check_access(REGISTRY["llama2-7b"], online=False)
    assert "is gated" in str(gated.value) and "hf download meta-llama/Llama-2-7b-hf" in str(gated.value)
    with pytest.raises(EvalsuiteError) as public:
        check_access(REGISTRY["solar"], online=False)
    assert "is gated" not in str(public.value) and "hf download upstage/SOLAR-10.7B-v1.0" in str(public.value)


def test_offline_a_cached_model_passes(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: str(tmp_path / "config.json"))
    assert "local Hub cache" in check_access(REGISTRY["mixtral"], online=False)


def test_every_model_is_checked_and_each_problem_is_one_line():
    specs = [REGISTRY["solar"], REGISTRY["mistral"], REGISTRY["mixtral"], resolve_model("someone/gone")]
    with pytest.raises(EvalsuiteError) as info:
        check_access_all(specs, api=StandInHub(HUB, granted={"mistralai/Mistral-7B-v0.1"}), online=True)
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("mixtral: ") and lines[1].startswith("someone/gone: ")
    assert check_access_all([REGISTRY["smollm2"]], online=True) == {}  # not a Hub model: nothing to ask


def test_registry_flags_mistral_and_mixtral_as_gated():
    for alias in ("mistral", "mixtral", "mixtral-instruct", "llama2-7b", "llama2-13b", "llama2-70b", "falcon-180b"):
        assert REGISTRY[alias].gated, alias
    assert not REGISTRY["solar"].gated


def test_no_login_hint_names_the_removed_command():
    """``huggingface-cli`` is gone from huggingface_hub 1.x; every hint names ``hf``."""
    for path in [*REPO.joinpath("evalsuite").rglob("*.py"), *REPO.joinpath("docs").glob("*.md"), REPO / "README.md"]:
        assert "huggingface-cli" not in path.read_text(encoding="utf-8"), path


def test_a_run_stops_before_evaluating_when_a_model_is_gated(tmp_path, capsys, data_dir, monkeypatch):
    """Offline here: the gated Llama 2 fails the check before any task's data is loaded (the RAM
    check, which comes first, is told this machine is large enough)."""
    from evalsuite.cli import main
    from evalsuite.models import memory

    monkeypatch.setattr(memory, "available_memory", lambda device: (2**40, "available RAM"))
    code = main(["run", "--models", "llama2-7b", "--device", "cpu", "--tasks", "arc", "--limit", "1",
                 "--results-dir", str(tmp_path), "--data-dir", str(data_dir)])
    assert code == 2
    err = capsys.readouterr().err
    assert "llama2-7b: meta-llama/Llama-2-7b-hf is gated" in err
    assert not (tmp_path / "runs").exists()


def test_hub_metadata_sizes_a_model_outside_the_registry():
    """The Hub's safetensors total sizes a Hub id before any download (the CPU refusal uses it)."""
    from types import SimpleNamespace

    from evalsuite.models.access import hub_params
    from evalsuite.models.devices import check_cpu_run
    from evalsuite.tasks import expand_tasks

    class Sized(StandInHub):
        def model_info(self, repo_id, revision=None):
            super().model_info(repo_id, revision)
            return SimpleNamespace(gated=False, safetensors=SimpleNamespace(total=70_553_706_496))

    spec = resolve_model("someone/big-70b")
    hub = Sized({"someone/big-70b": False})
    assert hub_params(spec, api=hub, online=True) == 70_553_706_496
    assert hub_params(spec, api=StandInHub({}), online=True) is None  # missing: the access check says so
    assert hub_params(spec, api=hub, online=False) is None
    assert hub_params(REGISTRY["smollm2"], api=hub, online=True) is None
    with pytest.raises(EvalsuiteError, match="someone/big-70b .* days or more"):
        check_cpu_run(spec.alias, hub_params(spec, api=hub, online=True), expand_tasks("leaderboard"), None, cores=16)


# -- a dus:BASE:M model is built from its base: the base is what must be fetchable ---------------
def test_a_dus_models_gated_base_is_checked_in_one_line():
    dus = resolve_model("dus:mistral:8")
    hub = StandInHub(HUB)
    with pytest.raises(EvalsuiteError) as info:
        check_access(dus, api=hub, online=True)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("dus:mistral:8: its base mistral: mistralai/Mistral-7B-v0.1 is gated")
    assert "https://huggingface.co/mistralai/Mistral-7B-v0.1" in message
    assert "`hf auth login`" in message and "HF_TOKEN" in message
    assert hub.calls == [("model_info", "mistralai/Mistral-7B-v0.1"), ("auth_check", "mistralai/Mistral-7B-v0.1")]
    granted = StandInHub(HUB, granted={"mistralai/Mistral-7B-v0.1"})
    assert check_access(dus, api=granted, online=True) == "base mistral: gated (auto), access granted"
    # a Hub id as the base, missing; a base that is not on the Hub asks nothing
    with pytest.raises(EvalsuiteError, match=r"^dus:someone/gone:4: its base someone/gone: no model someone/gone"):
        check_access(resolve_model("dus:someone/gone:4"), api=hub, online=True)
    assert check_access(resolve_model("dus:smollm2:8"), api=StandInHub({}), online=True) is None


def test_every_model_and_each_dus_base_is_checked():
    specs = [REGISTRY["solar"], resolve_model("dus:mixtral:8"), resolve_model("dus:solar:8")]
    with pytest.raises(EvalsuiteError) as info:
        check_access_all(specs, api=StandInHub(HUB), online=True)
    assert str(info.value).splitlines() == [str(info.value)]
    assert str(info.value).startswith("dus:mixtral:8: its base mixtral: mistralai/Mixtral-8x7B-v0.1 is gated")


def test_a_run_stops_before_opening_any_model_when_a_dus_base_is_gated(tmp_path, capsys, data_dir, tiny_llama_dir):
    """Offline here: ``dus:mistral:8`` (Mistral is gated) is refused by the access check, in one
    line naming the DUS model, its base and the base's page, with the first model not yet opened."""
    from evalsuite.cli import main

    code = main(["run", "--models", f"{tiny_llama_dir},dus:mistral:8", "--device", "cpu", "--tasks", "arc",
                 "--limit", "1", "--results-dir", str(tmp_path), "--data-dir", str(data_dir)])
    assert code == 2
    err = capsys.readouterr().err
    assert "dus:mistral:8: its base mistral: mistralai/Mistral-7B-v0.1 is gated" in err
    assert "https://huggingface.co/mistralai/Mistral-7B-v0.1" in err and "hf auth login" in err
    assert not (tmp_path / "runs").exists()
