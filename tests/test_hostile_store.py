"""The results store under hostile use (issue 18, items 1, 2, 5, 6), from the CLI on real files.

Each case runs ``evalsuite run``/``results``/``table`` with a tiny real model on real data and
checks the exit status, that an error is one line, and the store's files (hashed) before and
after: nothing written outside ``--results-dir``, nothing lost, nothing overwritten.
"""
from __future__ import annotations

import shutil
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import build_tiny_llama, cli, one_line_error, tree
from evalsuite.cli import main
from evalsuite.errors import EvalsuiteError, StoreError
from evalsuite.store.names import file_part
from evalsuite.store.run_views import latest_runs, load_run, run_views
from evalsuite.store.parquet_store import ResultsStore

LIMIT = "3"


@pytest.fixture(scope="module")
def twins(tmp_path_factory, smollm2_tokenizer) -> tuple[Path, Path]:
    """Two different tiny Llamas in folders with the same last name: a/llama and b/llama."""
    root = tmp_path_factory.mktemp("twins")
    return (build_tiny_llama(smollm2_tokenizer, root / "a" / "llama", seed=1),
            build_tiny_llama(smollm2_tokenizer, root / "b" / "llama", seed=2))



def run_args(model, data_dir, results, *extra, tasks="arc", limit=LIMIT) -> list[str]:
    return ["run", "--models", str(model), "--tasks", tasks, "--limit", limit, "--data-dir", str(data_dir),
            "--results-dir", str(results), "--no-progress", *extra]


def added_only(before: dict[str, str], after: dict[str, str]) -> set[str]:
    """Files added between two trees; fails if any earlier file changed or went missing."""
    changed = {k for k in before if after.get(k) != before[k]}
    assert not changed, f"changed or lost: {sorted(changed)}"
    return set(after) - set(before)


# -- 1. names are data, never paths -----------------------------------------------------------
HOSTILE = ["../../escape", "/abs", "a/b", "..", ".", "", "a\x00b", "x" * 65, ".hidden", "-dash", "run\u0430",
           "ru\u200bn", "a__b", "a b", "a\nb", "~home", "C:\\x", "*"]


@pytest.mark.parametrize("option", ["--run-id", "--tag"])
@pytest.mark.parametrize("value", HOSTILE, ids=[ascii(v)[:20] for v in HOSTILE])
def test_hostile_names_are_refused_before_anything_runs(option, value, tiny_llama_dir, data_dir, tmp_path, capsys):
    results = tmp_path / "deep" / "er" / "results"
    before = tree(tmp_path)
    code, out, err = cli(capsys, *run_args(tiny_llama_dir, data_dir, results), f"{option}={value}")
    assert code == 2
    line = one_line_error(err)
    assert option in line and "letters, digits, '.', '_' and '-'" in line
    assert tree(tmp_path) == before and not results.exists()  # nothing written anywhere


@pytest.mark.parametrize("shard", ["../1/2", "0/2/x", "a/b", "0/0", "2/2"])
def test_hostile_shard_names_are_refused(shard, tiny_llama_dir, data_dir, tmp_path, capsys):
    before = tree(tmp_path)
    code, _, err = cli(capsys, *run_args(tiny_llama_dir, data_dir, tmp_path / "results"), "--run-id", "r",
                       "--shard", shard)
    assert code == 2 and "--shard" in one_line_error(err)
    assert tree(tmp_path) == before


def test_the_store_proves_every_path_is_inside_it(tmp_path):
    """A bug elsewhere cannot make the store write outside its folder."""
    store = ResultsStore(tmp_path / "results")
    for bad in ["../x", "/abs", "a/b", "..", "a__b", ""]:
        with pytest.raises(EvalsuiteError, match="run id"):
            store.write_run({"run_id": bad, "model": "m", "status": "ok"})
    with pytest.raises(EvalsuiteError, match="task name"):
        store.write_scores("r", "m", "../arc", [])
    with pytest.raises(EvalsuiteError, match="shardIofN"):
        store.write_samples("r", "m", "arc", [], part="../x")
    for name in ["../../x", "/tmp/x", ".hidden", "a/b"]:
        with pytest.raises(StoreError, match="refusing to write"):
            store.write_records("runs", name, [])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "scores").symlink_to(outside)  # a table folder that leads out
    with pytest.raises(StoreError, match="outside the results folder"):
        store.write_scores("r", "m", "arc", [])
    assert not any(outside.iterdir())
    # model keys are data: a key that is not a name still gets a file inside the store
    path = store.write_run({"run_id": "r", "model": "../../evil/model", "status": "ok"})
    assert path.parent == (tmp_path / "results" / "runs").resolve() and ".." not in path.name
    assert list(store.runs()["model"]) == ["../../evil/model"]


def test_a_model_folder_with_a_hostile_name_is_stored_as_data(tiny_llama_dir, data_dir, tmp_path, capsys):
    """A folder name that is not a valid name (``__``, spaces, a leading dash) is the model key as
    data; its files get a derived name inside the store."""
    folder = tmp_path / "models" / "-we__ird name"
    shutil.copytree(tiny_llama_dir, folder)  # a copy: a link would be keyed by the folder it resolves to
    results = tmp_path / "results"
    code, out, err = cli(capsys, *run_args(folder, data_dir, results, "--run-id", "odd"))
    assert code == 0, err
    assert list(ResultsStore(results).runs(run_id="odd")["model"]) == ["-we__ird name"]
    written = [p for p in results.rglob("*.parquet")]
    assert written and all(p.resolve().is_relative_to(results.resolve()) for p in written)
    assert {p.stem.split("__")[1] for p in written} == {f"we-ird-name-{file_part('-we__ird name')[-8:]}"}


# -- 2. never overwrite a finished result -----------------------------------------------------
def test_two_folders_with_one_name_get_distinct_stable_keys(twins, data_dir, tmp_path, capsys):
    a, b = twins
    results = tmp_path / "results"
    code, out, err = cli(capsys, *run_args(f"{a},{b}", data_dir, results, "--run-id", "both"))
    assert code == 0, err
    runs = ResultsStore(results).runs(run_id="both")
    by_path = dict(zip(runs["model_id"], runs["model"]))
    keys = [by_path[str(a.resolve())], by_path[str(b.resolve())]]
    assert keys[0] == "llama" and keys[1].startswith("llama-") and len(runs) == 2  # the first keeps its name
    assert len(ResultsStore(results).files("scores", "both")) == 2  # one file per model, none overwritten
    assert all(k in out for k in keys)
    # the same folder keeps its key in later runs, alone or together, in either order
    before = tree(results)
    assert cli(capsys, *run_args(b, data_dir, results, "--run-id", "b-alone"))[0] == 0
    assert cli(capsys, *run_args(f"{b},{a}", data_dir, results, "--run-id", "swapped"))[0] == 0
    added_only(before, tree(results))
    store = ResultsStore(results)
    assert list(store.runs(run_id="b-alone")["model"]) == [keys[1]]
    assert dict(zip(store.runs(run_id="swapped")["model"], store.runs(run_id="swapped")["model_id"])) == \
        {keys[0]: str(a.resolve()), keys[1]: str(b.resolve())}
    code, out, _ = cli(capsys, "results", "--results-dir", results)
    assert code == 0 and all(k in out for k in keys)
    code, out, _ = cli(capsys, "table", "--results-dir", results, "--models", f"{a},{b}")
    assert code == 0 and all(k in out for k in keys)
    code, _, err = cli(capsys, *run_args(f"{a},{a}", data_dir, results, "--run-id", "twice"))
    assert code == 2 and "named twice" in one_line_error(err)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_llama_dir, data_dir) -> Path:
    """A store with run R: arc and winogrande, limit 3, ok."""
    results = tmp_path_factory.mktemp("finished") / "results"
    assert main(run_args(tiny_llama_dir, data_dir, results, "--run-id", "R", tasks="arc,winogrande")) == 0
    return results


@pytest.mark.parametrize("change, setting", [
    (["--tasks", "arc"], "tasks"),
    (["--limit", "2"], "limit"),
    (["--dtype", "bfloat16"], "dtype"),
    (["--tag", "other"], "tag"),
    (["--backend", "lm-eval-hf"], "backend"),
    (["--generation", "exact"], "generation"),
    ([], "finished (ok)"),
])
def test_resume_continues_only_the_same_configuration(change, setting, finished, tiny_llama_dir, data_dir, capsys):
    before = tree(finished)
    args = run_args(tiny_llama_dir, data_dir, finished, "--run-id", "R", "--resume", tasks="arc,winogrande")
    for option, value in zip(change[::2], change[1::2]):
        if option in args:
            args[args.index(option) + 1] = value
        else:
            args += [option, value]
    code, _, err = cli(capsys, *args)
    assert code == 2
    assert setting in one_line_error(err)
    assert tree(finished) == before  # R is untouched: ARC keeps its 3 documents
    assert len(ResultsStore(finished).samples(run_id="R", task="arc")) == 3


def test_resume_with_other_models_is_refused(finished, twins, data_dir, capsys):
    before = tree(finished)
    code, _, err = cli(capsys, *run_args(twins[0], data_dir, finished, "--run-id", "R", "--resume",
                                         tasks="arc,winogrande"))
    assert code == 2 and "models" in one_line_error(err)
    assert tree(finished) == before


def test_resume_keeps_finished_models_and_finishes_the_rest(tiny_llama_dir, twins, data_dir, tmp_path, capsys):
    """A run killed before its second model: --resume evaluates only that model."""
    results = tmp_path / "results"
    assert cli(capsys, *run_args(tiny_llama_dir, data_dir, results, "--run-id", "R"))[0] == 0
    before = tree(results)
    code, _, err = cli(capsys, *run_args(f"{tiny_llama_dir},{twins[0]}", data_dir, results, "--run-id", "R",
                                         "--resume"))
    assert code == 0, err
    assert "already ok in run R, kept as stored" in err
    added = added_only(before, tree(results))  # the second model's key claim, run row, scores, samples
    assert len(added) == 4 and sum(p.startswith("claims/model-keys/") for p in added) == 1, added
    assert [v.status for v in run_views(results, "R")] == ["ok", "ok"]


def test_a_run_id_is_claimed_before_evaluating(tiny_llama_dir, data_dir, tmp_path, capsys):
    results = tmp_path / "results"
    store = ResultsStore(results)
    claim = store.claim_run("C")  # this (live) process holds run C
    before = tree(tmp_path)
    code, _, err = cli(capsys, *run_args(tiny_llama_dir, data_dir, results, "--run-id", "C"))
    assert code == 2 and "being written by another process" in one_line_error(err)
    code, _, err = cli(capsys, *run_args(tiny_llama_dir, data_dir, results, "--run-id", "C", "--resume"))
    assert code == 2 and "being written by another process" in one_line_error(err)
    assert tree(tmp_path) == before
    store.release_claim(claim)
    # a claim left by a process that is gone: refused without --resume, taken over with it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claim.write_text(json.dumps({"run_id": "C", "host": socket.gethostname(), "pid": int(dead.stdout),
                                 "pid_started": 0.0}))
    code, _, err = cli(capsys, *run_args(tiny_llama_dir, data_dir, results, "--run-id", "C"))
    assert code == 2 and "gone; pass --resume" in one_line_error(err)
    code, _, err = cli(capsys, *run_args(tiny_llama_dir, data_dir, results, "--run-id", "C", "--resume"))
    assert code == 0, err
    assert not claim.exists()  # released when the run ended
    assert [v.status for v in run_views(results, "C")] == ["ok"]


@pytest.mark.slow  # a CLI run end to end: the full suite, not the fast lane
def test_two_processes_with_one_run_id(tiny_llama_dir, data_dir, tmp_path):
    """Started together: one evaluates and exits 0, the other is refused (one line, exit 2)."""
    results = tmp_path / "results"
    command = [sys.executable, "-m", "evalsuite.cli", *run_args(tiny_llama_dir, data_dir, results, "--run-id", "same",
                                                                tasks="arc,winogrande")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outcomes = [(p.wait(timeout=600), p.communicate()[1]) for p in procs]
    assert sorted(code for code, _ in outcomes) == [0, 2], outcomes
    refused = next(err for code, err in outcomes if code == 2)
    assert "run 'same'" in one_line_error(refused)
    (view,) = run_views(results, "same")
    assert view.status == "ok" and view.record.tasks == ["arc", "winogrande"]
    assert sorted(view.task_scores()) == ["arc", "winogrande"]


# -- 5. shards are a normal state ---------------------------------------------------------------
def test_shards_exit_zero_never_hide_a_finished_run_and_must_match(tiny_llama_dir, data_dir, tmp_path, capsys):
    results = tmp_path / "results"
    assert cli(capsys, *run_args(tiny_llama_dir, data_dir, results, "--run-id", "full"))[0] == 0
    code, out, err = cli(capsys, *run_args(tiny_llama_dir, data_dir, results, "--run-id", "S", "--shard", "0/2"))
    assert code == 0, err  # its own part is done
    assert "shard 0/2 done" in out
    # the incomplete sharded run is named, the earlier finished run is still what readers show
    (view,) = latest_runs(results)
    assert view.run_id == "full" and any("run S incomplete" in n for n in view.notes)
    assert load_run("latest", results).run_id == "full" and load_run(str(tiny_llama_dir), results).run_id == "full"
    code, out, _ = cli(capsys, "results", "--results-dir", results)
    assert code == 0 and "newer run S incomplete" in out
    assert cli(capsys, "table", "--results-dir", results)[0] == 0
    # a shard count that does not match the run, or an unsharded run into it: refused, nothing written
    before = tree(tmp_path)
    for extra in (["--shard", "0/3"], ["--shard", "2/3"], []):
        code, _, err = cli(capsys, *run_args(tiny_llama_dir, data_dir, results, "--run-id", "S", *extra))
        assert code == 2 and "run 'S'" in one_line_error(err)
    code, _, err = cli(capsys, *run_args(tiny_llama_dir, data_dir, results, "--run-id", "S", "--shard", "1/2",
                                         "--limit", "2"))
    assert code == 2 and "limit 3" in one_line_error(err)
    code, _, err = cli(capsys, *run_args(tiny_llama_dir, data_dir, results, "--run-id", "full", "--shard", "0/2"))
    assert code == 2 and "not sharded" in one_line_error(err)
    assert tree(tmp_path) == before
    # the last shard completes the run, which then is the latest
    assert cli(capsys, *run_args(tiny_llama_dir, data_dir, results, "--run-id", "S", "--shard", "1/2"))[0] == 0
    (view,) = latest_runs(results)
    assert view.run_id == "S" and view.status == "ok" and view.complete
    # a finished shard is never rewritten
    before = tree(results)
    code, _, err = cli(capsys, *run_args(tiny_llama_dir, data_dir, results, "--run-id", "S", "--shard", "1/2"))
    assert code == 2 and "already exists" in one_line_error(err)
    code, _, err = cli(capsys, *run_args(tiny_llama_dir, data_dir, results, "--run-id", "S", "--shard", "1/2",
                                         "--resume"))
    assert code == 2 and "finished (ok)" in one_line_error(err)
    assert tree(results) == before


# -- 6. degrade, don't stop -------------------------------------------------------------------------
def test_an_unreadable_old_file_makes_its_run_unreadable_not_the_store(tiny_llama_dir, data_dir, tmp_path, capsys):
    results = tmp_path / "results"
    assert cli(capsys, *run_args(tiny_llama_dir, data_dir, results, "--run-id", "old"))[0] == 0
    assert cli(capsys, *run_args(tiny_llama_dir, data_dir, results, "--run-id", "newer"))[0] == 0
    garbage = results / "runs" / "ancient__m.parquet"
    garbage.write_bytes(b"this is not parquet")
    broken = ResultsStore(results).files("scores", "newer")[0]
    broken.write_bytes(b"neither is this")
    before = tree(results)
    code, out, err = cli(capsys, *run_args(tiny_llama_dir, data_dir, results, "--run-id", "new"))
    assert code == 0, err  # writing a new run is never blocked by an old bad file
    added_only(before, tree(results))
    code, out, err = cli(capsys, "results", "--results-dir", results)
    assert code == 0, err
    assert str(garbage) in out and "move it out" in out  # named in a note, with what to do
    assert cli(capsys, "table", "--results-dir", results)[0] == 0
    # "newer" (its scores file broken) never hides "old": remove "new" and read again
    for path in ResultsStore(results).files("runs", "new"):
        path.unlink()
    (view,) = latest_runs(results)
    assert view.run_id == "old" and any(str(broken) in n and "unreadable" in n for n in view.notes)
    for run_id, named in (("ancient", garbage), ("newer", broken)):
        code, _, err = cli(capsys, "results", "--results-dir", results, "--run", run_id)
        assert code == 2 and str(named) in one_line_error(err)


# == issue 24: the paths users name, the store's edges ===============================================
def _claim_key(root: str, source: str) -> None:
    """In its own process: claim model key 'llama' for ``source``; exit 0 if won, 3 if not."""
    won = ResultsStore(root).claim_model_key("llama", source)
    sys.exit(0 if won else 3)


def test_a_model_key_is_claimed_atomically(tmp_path):
    """Issue 24.4: two processes starting at once with two same-named folders: one gets the key."""
    from conftest import run_concurrently

    root = tmp_path / "results"
    codes = run_concurrently(_claim_key, [(str(root), f"/models/{i}/llama") for i in range(4)])
    assert sorted(codes) == [0, 3, 3, 3], codes
    assert ResultsStore(root).claim_model_key("llama", "/models/0/llama") is (codes[0] == 0)


def test_same_named_folders_get_distinct_keys_even_before_either_wrote_a_row(twins, data_dir, tmp_path, capsys):
    """The key is claimed before the run evaluates, so a second run that starts while the first is
    still evaluating (no run row yet) already sees it taken."""
    results = tmp_path / "results"
    store = ResultsStore(results)
    assert store.claim_model_key("llama", str(twins[0].resolve()))  # the first run's claim, no rows yet
    code, _, err = cli(capsys, *run_args(twins[1], data_dir, results, "--run-id", "second"))
    assert code == 0, err
    (view,) = run_views(results, "second")
    assert view.model.startswith("llama-") and view.model != "llama"


def test_a_folder_reached_through_a_link_is_one_model(tiny_llama_dir, data_dir, tmp_path, capsys, monkeypatch):
    """Issue 24.4: the folder directly, through a link, and as '.' from inside it: one key."""
    link = tmp_path / "latest"
    link.symlink_to(tiny_llama_dir)
    results = tmp_path / "results"
    assert cli(capsys, *run_args(tiny_llama_dir, data_dir, results, "--run-id", "direct"))[0] == 0
    assert cli(capsys, *run_args(link, data_dir, results, "--run-id", "linked"))[0] == 0
    monkeypatch.chdir(tiny_llama_dir)
    assert cli(capsys, *run_args(".", data_dir, results, "--run-id", "dot"))[0] == 0
    keys = {run: [v.model for v in run_views(results, run)] for run in ("direct", "linked", "dot")}
    assert keys["direct"] == keys["linked"] == keys["dot"] == [tiny_llama_dir.name], keys
    code, _, err = cli(capsys, *run_args(f"{tiny_llama_dir},{link}", data_dir, results, "--run-id", "both"))
    assert code == 2 and "named twice" in one_line_error(err)


@pytest.mark.parametrize("folder", ["runs", "scores", "samples", "claims", "nightly", "contamination"])
def test_no_write_through_a_link_inside_the_store(folder, tiny_llama_dir, data_dir, tmp_path, capsys):
    """Issue 24.5: a store folder that is a link is refused before evaluating; nothing is written
    there or anywhere else."""
    results = tmp_path / "results"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    results.mkdir()
    (results / folder).symlink_to(elsewhere, target_is_directory=True)
    before = tree(tmp_path)
    for dry in ([], ["--dry-run", "--no-measure"]):
        code, out, err = cli(capsys, *run_args(tiny_llama_dir, data_dir, results), *dry)
        assert code == 2
        line = one_line_error(err)
        assert str(results / folder) in line and "link" in line
        assert tree(tmp_path) == before


def test_nightly_with_a_linked_nightly_folder_evaluates_nothing(tiny_llama_dir, data_dir, tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (results / "nightly").symlink_to(elsewhere, target_is_directory=True)
    before = tree(tmp_path)
    code, _, err = cli(capsys, "nightly", "--model", tiny_llama_dir, "--tasks", "arc", "--limit", LIMIT, "--data-dir",
                       data_dir, "--results-dir", results)
    assert code == 2 and "nightly" in one_line_error(err)
    assert tree(tmp_path) == before and not (results / "runs").exists()


def test_a_file_where_the_store_keeps_a_table_is_found_before_evaluating(tiny_llama_dir, data_dir, tmp_path, capsys):
    """A `scores` that cannot take files (here a file in its place; a read-only folder for a user
    who is not root) is refused before the task is evaluated, not after."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "scores").write_text("not a folder")
    before = tree(tmp_path)
    code, _, err = cli(capsys, *run_args(tiny_llama_dir, data_dir, results))
    assert code == 2 and str(results / "scores") in one_line_error(err)
    assert tree(tmp_path) == before
    if os.geteuid() != 0:  # root writes into read-only folders: only a non-root user can see this case
        (results / "scores").unlink()
        (results / "scores").mkdir(mode=0o500)
        code, _, err = cli(capsys, *run_args(tiny_llama_dir, data_dir, results))
        assert code == 2 and "not writable" in one_line_error(err)
        assert not (results / "runs").exists()


# -- 24.1: the paths a user names -----------------------------------------------------------------
def test_dus_out_never_deletes_a_folder_evalsuite_did_not_write(tiny_llama_dir, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = tree(tmp_path)
    for out in (mine, tiny_llama_dir):  # a user's folder; the base model's own folder
        base_before = tree(tiny_llama_dir)
        code, _, err = cli(capsys, "dus", tiny_llama_dir, "--overlap", "1", "--out", out)
        assert code == 2 and str(out) in one_line_error(err) and "did not write" in err
        assert tree(tmp_path) == before and tree(tiny_llama_dir) == base_before
    # evalsuite's own build: replaced, and said so; once a user adds a file, refused again
    built = tmp_path / "built"
    assert cli(capsys, "dus", tiny_llama_dir, "--overlap", "1", "--out", built)[0] == 0
    code, _, err = cli(capsys, "dus", tiny_llama_dir, "--overlap", "1", "--out", built)
    assert code == 0 and f"replacing {built}" in err
    (built / "notes.md").write_text("my notes")
    code, _, err = cli(capsys, "dus", tiny_llama_dir, "--overlap", "1", "--out", built)
    assert code == 2 and "notes.md" in one_line_error(err)
    assert (built / "notes.md").read_text() == "my notes"


def test_report_out_never_overwrites_the_store_or_a_foreign_file(finished, tmp_path, capsys):
    run_file = ResultsStore(finished).files("runs", "R")[0]
    (finished / "baseline.json").write_text(json.dumps({"run_id": "R", "model": "x"}))
    foreign = tmp_path / "notes.html"
    foreign.write_text("<p>mine</p>")
    linked = tmp_path / "linked.html"
    linked.symlink_to(foreign)
    store_before, outside_before = tree(finished), tree(tmp_path)
    for out, why in ((run_file, "inside the results store"), (finished / "baseline.json", "inside the results store"),
                     (finished / "new.html", "inside the results store"), (foreign, "did not write"),
                     (linked, "is a link")):
        code, _, err = cli(capsys, "report", "--results-dir", finished, "--out", out)
        assert code == 2 and why in one_line_error(err), err
    assert tree(finished) == store_before and tree(tmp_path) == outside_before
    (finished / "baseline.json").unlink()
    # its own earlier report: replaced, said in one line; edited by hand since: refused
    out = tmp_path / "report.html"
    assert cli(capsys, "report", "--results-dir", finished, "--out", out)[0] == 0
    code, _, err = cli(capsys, "report", "--results-dir", finished, "--out", out)
    assert code == 0 and err.strip() == f"evalsuite: replacing {out}, evalsuite's own earlier output"
    out.write_text(out.read_text() + "<!-- my edit -->")
    code, _, err = cli(capsys, "report", "--results-dir", finished, "--out", out)
    assert code == 2 and "changed since" in one_line_error(err)
    assert out.read_text().endswith("<!-- my edit -->")


def test_export_out_writes_nothing_when_one_file_is_foreign(finished, tmp_path, capsys):
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "scores.csv").write_text("my,own\n")
    before = tree(tmp_path)
    code, _, err = cli(capsys, "export", "R", "--results-dir", finished, "--out", folder, "--allow-limited")
    assert code == 2 and "scores.csv" in one_line_error(err)
    assert tree(tmp_path) == before  # results.json and model-index.yaml were not written either
    store_before = tree(finished)
    code, _, err = cli(capsys, "export", "R", "--results-dir", finished, "--out", finished / "scores",
                       "--allow-limited")
    assert code == 2 and "inside the results store" in one_line_error(err)
    assert tree(finished) == store_before
    fresh = tmp_path / "fresh"
    assert cli(capsys, "export", "R", "--results-dir", finished, "--out", fresh, "--allow-limited")[0] == 0
    code, _, err = cli(capsys, "export", "R", "--results-dir", finished, "--out", fresh, "--allow-limited")
    assert code == 0 and err.count("replacing") == 3


def test_table_out_never_overwrites_the_store_or_a_foreign_file(finished, tmp_path, capsys):
    foreign = tmp_path / "table.csv"
    foreign.write_text("mine")
    before, store_before = tree(tmp_path), tree(finished)
    for out in (foreign, finished / "table.csv", ResultsStore(finished).files("scores")[0]):
        code, _, err = cli(capsys, "table", "--format", "csv", "--results-dir", finished, "--out", out)
        assert code == 2 and str(out) in one_line_error(err)
    assert tree(tmp_path) == before and tree(finished) == store_before
    out = tmp_path / "t.md"
    assert cli(capsys, "table", "--results-dir", finished, "--out", out)[0] == 0
    assert "| Model" in out.read_text() or "Model" in out.read_text()
    code, _, err = cli(capsys, "table", "--results-dir", finished, "--out", out)
    assert code == 0 and "replacing" in err


def test_prompts_out_never_overwrites_its_own_data_or_the_store(data_dir, finished, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(data_dir / "winogrande", data / "winogrande")
    target = next(p for p in sorted((data / "winogrande").rglob("*.jsonl")))
    before = tree(tmp_path)
    store_before = tree(finished)
    for out in (target, finished / "prompts.jsonl"):
        code, _, err = cli(capsys, "prompts", "--task", "winogrande", "--limit", "1", "--data-dir", data, "--out", out)
        assert code == 2 and str(out) in one_line_error(err)
    assert tree(tmp_path) == before and tree(finished) == store_before


def test_compare_and_nightly_outputs_never_overwrite_a_foreign_file(finished, tiny_llama_dir, data_dir, tmp_path,
                                                                    capsys):
    foreign = tmp_path / "summary.md"
    foreign.write_text("# my summary")
    before, store_before = tree(tmp_path), tree(finished)
    code, _, err = cli(capsys, "compare", "R", "R", "--results-dir", finished, "--markdown", foreign)
    assert code == 2 and "--markdown" in one_line_error(err)
    # nightly refuses before it evaluates: no run row
    code, _, err = cli(capsys, "nightly", "--model", tiny_llama_dir, "--tasks", "arc", "--limit", LIMIT, "--data-dir",
                       data_dir, "--results-dir", finished, "--json", finished / "n.json")
    assert code == 2 and "--json" in one_line_error(err)
    assert tree(tmp_path) == before and tree(finished) == store_before


# -- 24.7: CSV cells a spreadsheet would run ---------------------------------------------------------
FORMULAS = ["=HYPERLINK(\"http:x\")", "+1+1", "-2+3", "@SUM(A1)"]


@pytest.mark.parametrize("name", FORMULAS, ids=["eq", "plus", "minus", "at"])
def test_csv_outputs_neutralise_formulas_in_model_names(name, tiny_llama_dir, data_dir, tmp_path, capsys):
    import csv
    import io

    model = tmp_path / name
    shutil.copytree(tiny_llama_dir, model)
    results = tmp_path / "results"
    assert cli(capsys, *run_args(model, data_dir, results, "--run-id", "F"))[0] == 0
    code, out, _ = cli(capsys, "table", "--format", "csv", "--results-dir", results)
    assert code == 0
    cells = [c for row in csv.reader(io.StringIO(out)) for c in row]
    assert "'" + name in cells and name not in cells
    code, out, _ = cli(capsys, "export", "F", "--format", "csv", "--results-dir", results, "--out", tmp_path / "e")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "e" / "scores.csv").read_text())))
    assert {r["model"] for r in rows} == {"'" + name}
    assert all(not c.startswith(("=", "+", "@")) for r in rows for c in r.values() if c)
    assert all(r["score"] == "" or float(r["score"]) >= 0 for r in rows)  # numbers stay numbers


def test_safe_cell_leaves_numbers_alone():
    from evalsuite.outputs.csv_cells import safe_cell

    assert [safe_cell(v) for v in ("-1.5", "+2", "1e-3", "-inf", 3, None)] == ["-1.5", "+2", "1e-3", "-inf", 3, None]
    assert [safe_cell(v) for v in ("-1.5+A1", "=1", "\t=1", "@x")] == ["'-1.5+A1", "'=1", "'\t=1", "'@x"]


# -- 24.8: messages name the thing -------------------------------------------------------------------
def test_the_stores_only_run_unreadable_is_named(tiny_llama_dir, data_dir, tmp_path, capsys):
    results = tmp_path / "results"
    assert cli(capsys, *run_args(tiny_llama_dir, data_dir, results, "--run-id", "only"))[0] == 0
    (row,) = ResultsStore(results).files("runs")
    row.write_bytes(b"not parquet")
    for command in (["results"], ["table"], ["report", "--out", tmp_path / "r.html"], ["export"]):
        code, _, err = cli(capsys, *command, "--results-dir", results)
        assert code == 2
        line = one_line_error(err)
        assert str(row) in line, (command, line)


def test_a_tensorboard_runs_folder_is_not_a_results_store(finished, tmp_path, capsys, monkeypatch):
    """Hostile, next (by accident): a project folder with TensorBoard's `runs/` is not taken for a store."""
    (tmp_path / "runs" / "Dec07_exp1").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "report", "--results-dir", finished, "--out", "report.html")
    assert code == 0, err
    assert (tmp_path / "report.html").is_file()
