"""The request cache: hits skip the model, keys follow the weights (not the path), CLI works."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lm_eval.api.instance import Instance

from conftest import build_tiny_llama, run_concurrently
from evalsuite.backends import BackendOptions, build_backend
from evalsuite.run.request_cache import CachedLM, info, key_prefix, wrap
from evalsuite.cli import main
from evalsuite.models.registry import resolve_model
from evalsuite.models.source import materialize


def requests(texts: list[tuple[str, str]]) -> list[Instance]:
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(texts)]


PAIRS = [("The cat sat on the", " mat"), ("The cat sat on the", " moon"), ("One, two,", " three")]


def engine(folder: Path):
    source = materialize(resolve_model(str(folder)))
    options = BackendOptions(device="cpu", dtype="float32", batch_size="auto")
    return source, options, build_backend("evalsuite", source, options)


def test_hits_skip_the_model_and_give_identical_answers(tiny_llama_dir, tmp_path):
    source, options, lm = engine(tiny_llama_dir)
    cached = wrap(lm, source, options, "evalsuite", tmp_path / "c.sqlite")
    first = cached.loglikelihood(requests(PAIRS[:2]))
    assert (cached.hits, cached.misses) == (0, 2)
    both = cached.loglikelihood(requests(PAIRS))  # two hits, one new request
    assert (cached.hits, cached.misses) == (2, 3)
    assert both[:2] == first and isinstance(both[0], tuple) and isinstance(both[0][1], bool)
    # what the uncached model answers to the same batch (the engine's last float bits depend on the batch)
    assert first == lm.loglikelihood(requests(PAIRS[:2]))
    again = wrap(lm, source, options, "evalsuite", tmp_path / "c.sqlite")  # a new process would see the same
    assert again.loglikelihood(requests(PAIRS)) == both and again.misses == 0
    gen = [Instance("generate_until", {}, ("Q: 1+1?\nA:", {"until": ["\n"], "max_gen_toks": 4}), 0)]
    text = again.generate_until(gen)
    assert again.generate_until(gen) == text and again.misses == 1


def test_a_retrained_checkpoint_at_the_same_path_never_reuses_results(tiny_tokenizer, tmp_path):
    folder = build_tiny_llama(tiny_tokenizer, tmp_path / "ckpt", seed=1)
    source, options, lm = engine(folder)
    old = wrap(lm, source, options, "evalsuite", tmp_path / "c.sqlite")
    old.loglikelihood(requests(PAIRS))
    build_tiny_llama(tiny_tokenizer, folder, seed=2)  # "retrained", same path
    source2, _, lm2 = engine(folder)
    assert source2.identity != source.identity and source2.path == source.path
    new = wrap(lm2, source2, options, "evalsuite", tmp_path / "c.sqlite")
    answers = new.loglikelihood(requests(PAIRS))
    assert new.hits == 0 and new.misses == 3 and answers == lm2.loglikelihood(requests(PAIRS))
    # dtype, device type, backend settings and backend are part of the key as well
    variants = [options, replace(options, dtype="bfloat16"), replace(options, device="cuda"),
                replace(options, batch_size=4), replace(options, max_gen_toks=128)]
    keys = {key_prefix(source, o, "evalsuite") for o in variants} | {key_prefix(source, options, "lm-eval-hf")}
    assert len(keys) == len(variants) + 1
    assert key_prefix(source, replace(options, device="cuda:1"), "evalsuite") == \
        key_prefix(source, replace(options, device="cuda"), "evalsuite")  # the device type, not its index
    assert set(info(tmp_path / "c.sqlite").per_model) == {source.identity, source2.identity}


class Echo:
    """A deterministic stand-in backend for the two-process write test (no model needed)."""

    def loglikelihood(self, reqs, disable_tqdm=False):
        return [(-float(len(r.args[0]) + len(r.args[1])), True) for r in reqs]


def _writer(path: str, offset: int) -> None:
    lm = CachedLM(Echo(), "p", path, model=f"writer-{offset}")
    for i in range(40):
        lm.loglikelihood(requests([(f"ctx {offset}-{i}-{j}", " x") for j in range(5)]))


def test_two_processes_write_the_cache_at_once(tmp_path):
    path = str(tmp_path / "c.sqlite")
    assert run_concurrently(_writer, [(path, k) for k in range(2)]) == [0, 0]
    found = info(path)
    assert found.entries == 400 and found.per_model == {"writer-0": 200, "writer-1": 200}


def test_cli_info_and_clear(tmp_path, monkeypatch, capsys):
    path = tmp_path / "c.sqlite"
    monkeypatch.setenv("EVALSUITE_REQUEST_CACHE", str(path))
    CachedLM(Echo(), "p", path, model="sha256:abc").loglikelihood(requests(PAIRS))
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "3 entries" in out and "sha256:abc" in out
    assert main(["cache", "clear", "--model", "nope"]) == 0 and info(path).entries == 3
    assert main(["cache", "clear"]) == 0 and info(path).entries == 0
    assert "deleted 3" in capsys.readouterr().out


def test_cli_clear_deletes_the_capability_decisions_and_nothing_else(tmp_path, monkeypatch, capsys):
    """``evalsuite cache clear`` recomputes everything: the engine's stored capability decisions
    go too (and ``cache info`` lists them). Nothing else is touched: the rest of evalsuite's cache
    (DUS builds, speed profiles, a stranger's file in the folder), and outside it, the file a
    link in the folder points to."""
    from evalsuite.backends.engine import decisions
    from evalsuite.backends.engine.capabilities import Capabilities

    root = tmp_path / "evalsuite-cache"
    monkeypatch.setenv("EVALSUITE_CACHE", str(root))
    monkeypatch.setenv("EVALSUITE_REQUEST_CACHE", str(root / "requests.sqlite"))
    CachedLM(Echo(), "p", root / "requests.sqlite", model="sha256:abc").loglikelihood(requests(PAIRS))
    for key in ("a" * 64, "b" * 64):
        decisions.store(key, Capabilities("tree", "batched", (None,), ("probed",), "llama"))
    assert decisions.load("a" * 64) is not None
    kept = [root / "dus" / "smollm2-m8-0123" / "config.json", root / "speed" / "profile.json",
            root / "capabilities" / "README.txt"]
    outside = tmp_path / "outside" / "keep.json"
    for path in [*kept, outside]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    (root / "capabilities" / ("c" * 64 + ".json")).symlink_to(outside)

    assert main(["cache", "info"]) == 0
    assert f"capability decisions {root / 'capabilities'}: 2 stored" in capsys.readouterr().out
    assert main(["cache", "clear", "--model", "sha256:abc"]) == 0
    out = capsys.readouterr().out
    assert "deleted 3 cached responses" in out and "deleted 2 capability decisions" in out
    assert decisions.load("a" * 64) is None and decisions.load("b" * 64) is None
    assert sorted(p.name for p in (root / "capabilities").iterdir()) == ["README.txt"]  # the link removed
    assert all(path.read_text() == "{}" for path in [*kept, outside])  # not followed, nothing else touched
    assert main(["cache", "info"]) == 0
    assert ": 0 stored" in capsys.readouterr().out


def test_cli_clear_unlinks_a_linked_decisions_folder_without_following_it(tmp_path, monkeypatch, capsys):
    from evalsuite.backends.engine import decisions

    root, elsewhere = tmp_path / "evalsuite-cache", tmp_path / "shared-folder"
    monkeypatch.setenv("EVALSUITE_CACHE", str(root))
    monkeypatch.setenv("EVALSUITE_REQUEST_CACHE", str(root / "requests.sqlite"))
    elsewhere.mkdir()
    (elsewhere / ("d" * 64 + ".json")).write_text("{}")
    root.mkdir()
    (root / "capabilities").symlink_to(elsewhere, target_is_directory=True)
    assert main(["cache", "clear"]) == 0
    assert "deleted 0 capability decisions" in capsys.readouterr().out
    assert not (root / "capabilities").exists() and (elsewhere / ("d" * 64 + ".json")).read_text() == "{}"
    assert decisions.listing()[1] == 0


def test_same_weights_with_another_config_recompute(tiny_tokenizer, data_dir, tmp_path):
    """The reproduction from the issue: same weights, another rms_norm_eps in config.json. The old
    answers must not be served (they were: TruthfulQA 7.83 from cache where the real value is 0.00)."""
    import json

    from evalsuite.run.evaluation import evaluate

    folder = build_tiny_llama(tiny_tokenizer, tmp_path / "ckpt", seed=3)
    common = dict(models=str(folder), tasks="truthfulqa", limit=4, data_dir=data_dir, progress=False)
    first = evaluate(**common, results_dir=tmp_path / "r1")
    config = json.loads((folder / "config.json").read_text())
    config["rms_norm_eps"] = 10.0  # the weights files are untouched
    (folder / "config.json").write_text(json.dumps(config))
    second = evaluate(**common, results_dir=tmp_path / "r2")
    uncached = evaluate(**common, results_dir=tmp_path / "r3", use_cache=False)
    (a,), (b,), (c,) = first.views(), second.views(), uncached.views()
    assert a.record.weights_hash == b.record.weights_hash and a.record.model_files_hash != b.record.model_files_hash
    assert "0 answered from cache" in b.record.notes  # everything recomputed
    lls = lambda view: [list(x) for x in view.samples()["loglikelihoods"]]  # noqa: E731
    assert lls(b) != lls(a) and lls(b) == lls(c)


def test_code_version_follows_the_scoring_code(tmp_path):
    """An engine fix changes the key by itself: the version is a hash of the source files."""
    import shutil

    from evalsuite.run.request_cache import SCORING_CODE, code_version

    package = Path(__file__).resolve().parent.parent / "evalsuite"
    copy = tmp_path / "evalsuite"
    for entry in SCORING_CODE:
        source = package / entry
        if source.is_dir():
            shutil.copytree(source, copy / entry)
        elif source.is_file():
            (copy / entry).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, copy / entry)
    assert code_version(copy) == code_version()
    target = next((copy / "backends").rglob("*.py"))
    target.write_text(target.read_text() + "\n# a fix\n")
    assert code_version(copy) != code_version()


def test_a_fully_cached_run_loads_no_model(tiny_llama_dir, data_dir, tmp_path, monkeypatch):
    """Every answer and every task's audit kept: the rerun builds no backend (no model load), and
    writes the first run's samples and audits; one answer missing and the model loads again."""
    import sqlite3

    import evalsuite.run.evaluation as evaluation
    from evalsuite.run.evaluation import evaluate
    from evalsuite.store.parquet_store import ResultsStore

    monkeypatch.setenv("EVALSUITE_REQUEST_CACHE", str(tmp_path / "cache.sqlite"))
    builds = []
    real_build = evaluation.build_backend
    monkeypatch.setattr(evaluation, "build_backend", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    common = dict(models=str(tiny_llama_dir), tasks="arc,gsm8k", limit=3, data_dir=data_dir, progress=False)
    first = evaluate(**common, results_dir=tmp_path / "first")
    assert builds == [1]
    second = evaluate(**common, results_dir=tmp_path / "second")
    assert builds == [1]  # no model built, none loaded

    def stored(result):
        store = ResultsStore(result.results_dir)
        samples = store.samples(run_id=result.run_id).drop(columns=["run_id"]).sort_values(["task", "doc_index"])
        scores = store.scores(run_id=result.run_id).set_index(["task", "subtask"])
        return samples.reset_index(drop=True), scores, store.runs(run_id=result.run_id)["notes"].iloc[0]

    samples1, scores1, _ = stored(first)
    samples2, scores2, notes2 = stored(second)
    import pandas as pd

    pd.testing.assert_frame_equal(samples1, samples2)
    assert list(scores2["audit_status"].dropna()) == list(scores1["audit_status"].dropna()) == ["agree", "agree"]
    assert (scores2["audit_agree"].dropna() == scores1["audit_agree"].dropna()).all()
    assert "0 computed" in notes2 and "the model was not loaded" in notes2

    with sqlite3.connect(tmp_path / "cache.sqlite") as conn:  # one answer lost: that one is computed
        conn.execute("DELETE FROM requests WHERE key = (SELECT key FROM requests LIMIT 1)")
    third = evaluate(**common, results_dir=tmp_path / "third")
    assert builds == [1, 1]
    assert "1 computed" in stored(third)[2]

    # the audit's own code changed (another sample rule, other tolerances): its kept verdicts
    # no longer apply, so the model is loaded to audit again, while every answer is still served
    import evalsuite.run.request_cache as request_cache

    real_version = request_cache.code_version

    def audit_changed(root=None, entries=request_cache.SCORING_CODE):
        return real_version(root, entries) + ("-changed" if entries == request_cache.AUDIT_CODE else "")

    monkeypatch.setattr(request_cache, "code_version", audit_changed)
    changed = evaluate(**common, results_dir=tmp_path / "changed-audit")
    assert builds == [1, 1, 1]
    _, scores4, notes4 = stored(changed)
    assert "0 computed" in notes4 and list(scores4["audit_status"].dropna()) == ["agree", "agree"]
    assert not scores4["audit_note"].dropna().str.contains("kept with the cached answers").any()
