"""Hub datasets load at pinned commits, ``--data-revision`` overrides them, the commit is recorded
with the run, and a load error keeps its reason (``datasets.load_dataset`` stood in: no Hub here)."""
from __future__ import annotations

import json

import pytest

from evalsuite.cli import main
from evalsuite.errors import EvalsuiteError, MissingDataError
from evalsuite.tasks import expand_tasks, load_spec
from evalsuite.tasks import data as data_module
from evalsuite.tasks.data import PINNED_REVISIONS, parse_data_revision, with_revision


def test_every_leaderboard_dataset_is_pinned_to_a_commit():
    for name in expand_tasks("leaderboard"):
        ref = load_spec(name).dataset
        assert len(ref.hub_revision) == 40 and int(ref.hub_revision, 16) >= 0, name


def test_the_override_parses_and_refuses_hostile_values():
    assert parse_data_revision(None) == {}
    assert parse_data_revision("main") == {None: "main"}
    assert parse_data_revision("cais/mmlu=main, openai/gsm8k=abc123") == {"cais/mmlu": "main", "openai/gsm8k": "abc123"}
    for bad in ("../etc", "x=main", "main;rm -rf /", "=main", "a b"):
        with pytest.raises(EvalsuiteError, match="--data-revision"):
            parse_data_revision(bad)
    ref = load_spec("mmlu").dataset
    assert with_revision(ref, {"cais/mmlu": "main"}).hub_revision == "main"
    assert with_revision(ref, {"openai/gsm8k": "main"}).hub_revision == PINNED_REVISIONS["cais/mmlu"]
    assert with_revision(ref, {None: "refs/pr/1"}).hub_revision == "refs/pr/1"


class Rows(list):
    _fingerprint = "f00d"


@pytest.fixture()
def stand_in_hub(monkeypatch, data_dir):
    """``datasets.load_dataset`` answering from the local copies, recording the revisions asked."""
    import datasets

    asked: list[tuple[str, str | None]] = []

    def load_dataset(hub_id, config, split, revision=None):
        asked.append((hub_id, revision))
        ref = next(load_spec(t).dataset for t in expand_tasks("leaderboard") if load_spec(t).dataset.hub_id == hub_id)
        path = next(p for p in data_module.expected_files(ref, split, data_dir) if p.is_file())
        return Rows(data_module._load_local(str(path)).rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return asked


def test_a_run_from_the_hub_records_the_commit(tmp_path, stand_in_hub, tiny_llama_dir):
    from evalsuite.run.evaluation import evaluate
    from evalsuite.store.parquet_store import ResultsStore

    result = evaluate(str(tiny_llama_dir), "arc", limit=1, results_dir=tmp_path, progress=False, audit=False,
                      use_cache=False)
    assert result.exit_code == 0
    assert stand_in_hub and {rev for _, rev in stand_in_hub} == {PINNED_REVISIONS["allenai/ai2_arc"]}
    row = ResultsStore(tmp_path).runs(run_id=result.run_id).iloc[0]
    hashes = row["data_hashes"]
    hashes = json.loads(hashes) if isinstance(hashes, str) else dict(hashes) if isinstance(hashes, dict) else dict(list(hashes))
    assert any(f"allenai/ai2_arc@{PINNED_REVISIONS['allenai/ai2_arc']}/" in source for source in hashes)

    stand_in_hub.clear()
    evaluate(str(tiny_llama_dir), "arc", limit=1, results_dir=tmp_path, progress=False, audit=False, use_cache=False,
             data_revision="allenai/ai2_arc=0123456789abcdef0123456789abcdef01234567")
    assert {rev for _, rev in stand_in_hub} == {"0123456789abcdef0123456789abcdef01234567"}


def test_a_load_error_keeps_its_message(monkeypatch):
    import datasets

    def broken(*args, **kwargs):
        raise ValueError("Revision 'nope' does not exist for dataset cais/mmlu\nmore text")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    ref = with_revision(load_spec("mmlu").dataset, {None: "nope"})
    with pytest.raises(MissingDataError) as info:
        data_module.load_split(ref, "test", None)
    message = str(info.value)
    assert "ValueError: Revision 'nope' does not exist for dataset cais/mmlu" in message
    assert "at revision nope" in message and "--data-revision" in message and "\n" not in message


def test_cli_refuses_a_bad_revision_before_anything(tmp_path, capsys):
    code = main(["run", "--models", "smollm2", "--tasks", "arc", "--data-revision", "x y", "--results-dir", str(tmp_path)])
    assert code == 2
    assert "--data-revision 'x y' is not a revision" in capsys.readouterr().err


def test_the_dry_run_loads_the_same_revision(stand_in_hub):
    from evalsuite.tasks import load_tasks

    loaded, unavailable = load_tasks(["winogrande"], None, parse_data_revision("main"))
    assert not unavailable and {rev for _, rev in stand_in_hub} == {"main"}
    assert any("allenai/winogrande@" in source for source in loaded["winogrande"].data_files)
