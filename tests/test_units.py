"""Unit tests for pieces that only whole CLI runs exercised before: the H6 table, GSM8K's answer
extraction, MMLU's macro mean and its standard error, the engine's tree (slot) attention, Hub
resolution offline, and a task's ``process_docs``.

Each runs in well under a second on real objects (real parquet files, a real Hub cache layout,
real lm-eval preprocessing on real rows), so they belong to the fast lane.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from evalsuite import tasks
from evalsuite.analysis import leaderboard
from evalsuite.errors import EvalsuiteError
from evalsuite.store.records import ScoreRecord
from evalsuite.store.parquet_store import ResultsStore

SIX = ("arc", "hellaswag", "mmlu", "truthfulqa", "winogrande", "gsm8k")


# ---------------------------------------------------------------------------- H6 / leaderboard table
def _scores(tmp_path, rows: list[ScoreRecord]):
    """The rows written to and read back from a real results store, as every reader sees them."""
    store = ResultsStore(tmp_path / "results")
    files: dict[tuple[str, str, str], list[ScoreRecord]] = {}
    for row in rows:  # one file per (run, model, task), subject rows with their task's row
        files.setdefault((row.run_id, row.model, row.task), []).append(row)
    for (run_id, model, task), group in files.items():
        store.write_scores(run_id, model, task, group)
    return store.read("scores")


def _task(model: str, task: str, value: float | None, *, status: str = "ok", n: int = 10, n_total: int = 10,
          run_id: str = "r1") -> ScoreRecord:
    return ScoreRecord(run_id=run_id, model=model, task=task, metric="acc", value=value, stderr=0.01, n=n,
                       n_total=n_total, status=status)


def test_h6_is_the_mean_of_six_task_scores_x100(tmp_path):
    values = dict(zip(SIX, (0.50, 0.25, 0.30, 0.45, 0.60, 0.10)))
    frame = _scores(tmp_path, [_task("m", t, v) for t, v in values.items()]
                    + [ScoreRecord(run_id="r1", model="m", task="mmlu", subtask="anatomy", value=0.9, n=5,
                                   n_total=5, status="ok")])  # subject rows never enter H6
    (row,) = leaderboard.rows_from_scores(frame)
    assert row.scores == pytest.approx({t: 100 * v for t, v in values.items()})
    assert row.h6 == pytest.approx((50 + 25 + 30 + 45 + 60 + 10) / 6)  # 36.666...
    assert row.complete and not row.limited and row.missing == []
    table = leaderboard.format_table([row])
    assert table.splitlines()[2].split() == ["m", "50.00", "25.00", "30.00", "45.00", "60.00", "10.00", "36.67"]
    assert "*" not in table


def test_missing_tasks_are_named_never_counted_as_zero(tmp_path):
    frame = _scores(tmp_path, [_task("m", "arc", 0.40), _task("m", "hellaswag", 0.60),
                               _task("m", "mmlu", None, status="missing"),
                               _task("m", "gsm8k", float("nan"), status="failed")])
    (row,) = leaderboard.rows_from_scores(frame)
    assert row.h6 == pytest.approx(50.0)  # mean of the two present, not (40 + 60 + 0 + ...) / 6
    assert not row.complete and sorted(row.missing) == ["gsm8k", "mmlu"]
    lines = leaderboard.format_table([row]).splitlines()
    assert lines[2].split() == ["m", "40.00", "60.00", "—", "—", "—", "—", "50.00*"]
    assert lines[-1] == "* m: H6 incomplete, mean of 2 of 6 tasks (MMLU, TruthfulQA, Winogrande, GSM8K missing)"


def test_limited_runs_say_how_many_documents_and_rows_are_per_run_and_model(tmp_path):
    frame = _scores(tmp_path, [_task("a", "arc", 0.5, n=3, n_total=1172), _task("b", "arc", 0.7, run_id="r2"),
                               _task("a", "arc", 0.2, run_id="r0")])
    rows = {(r.run_id, r.model): r for r in leaderboard.rows_from_scores(frame)}
    assert set(rows) == {("r1", "a"), ("r2", "b"), ("r0", "a")}
    assert rows[("r1", "a")].limited and not rows[("r2", "b")].limited
    assert "a: limited run, documents evaluated: ARC 3/1172" in leaderboard.format_table([rows[("r1", "a")]])
    # run_ids picks one run per model
    picked = leaderboard.rows_from_scores(frame, run_ids={"a": "r0", "b": "r2"})
    assert sorted((r.model, r.scores["arc"]) for r in picked) == [("a", pytest.approx(20.0)), ("b", pytest.approx(70.0))]


def test_a_model_with_no_score_has_no_h6(tmp_path):
    (row,) = leaderboard.rows_from_scores(_scores(tmp_path, [_task("m", "arc", None, status="missing")]))
    assert math.isnan(row.h6)
    assert leaderboard.format_table([row]).splitlines()[2].split()[-1] == "—"


# ---------------------------------------------------------------------------- GSM8K strict match
@pytest.mark.parametrize("text,expected", [
    ("Natalia sold 48 clips in April.\n#### 72", "72"),
    ("So the total is 1,234 dollars.\n#### 1,234\n\nQuestion: next", "1234"),  # commas removed
    ("#### -5", "-5"),  # negatives kept
    ("#### 0.50", "0.50"),  # decimals kept as written, no normalization
    ("#### 7.", "7."),  # v1's pattern takes a trailing period too; the gold "7" then does not match
    ("first #### 3 then #### 4", "3"),  # the first match wins
    ("The answer is 72.", "[invalid]"),  # no "#### N": invalid, never a guessed number
    ("####72", "[invalid]"),  # the space after #### is part of the strict pattern
    ("#### seventy-two", "[invalid]"),
    ("", "[invalid]"),
])
def test_gsm8k_strict_extraction(text, expected):
    assert tasks.gsm8k_extract(text) == expected
    assert tasks.GSM8K_INVALID == "[invalid]"


# ---------------------------------------------------------------------------- aggregation and stderr
def test_plain_mean_and_sample_stderr_by_hand():
    # values 1, 0, 1, 1: mean 0.75; sample sd = sqrt(((.25^2)*3 + .75^2) / 3) = sqrt(0.25) = 0.5; se = 0.5 / 2
    assert tasks.mean_stderr([1, 0, 1, 1]) == pytest.approx((0.75, 0.25))
    mean, se = tasks.mean_stderr([1.0])
    assert mean == 1.0 and math.isnan(se)  # one value has no sample standard error
    assert all(math.isnan(x) for x in tasks.mean_stderr([]))
    assert tasks.aggregate(tasks.load_spec("arc"), [1, 0, 1, 1], [None] * 4) == pytest.approx((0.75, 0.25))


def test_mmlu_is_the_mean_of_subject_means_with_the_stderr_of_that_mean():
    spec = tasks.load_spec("mmlu")
    assert spec.aggregate == "mean_of_groups"
    # subject A: 1, 1, 1, 0 (mean .75, se .25); subject B: 0, 1 (mean .5, se .5); subject C: 0 (mean 0, no se)
    values = [1, 1, 1, 0, 0, 1, 0]
    groups = ["a", "a", "a", "a", "b", "b", "c"]
    mean, se = tasks.aggregate(spec, values, groups)
    assert mean == pytest.approx((0.75 + 0.5 + 0.0) / 3)  # 0.41667, not the pooled 4/7 = 0.5714
    assert mean != pytest.approx(sum(values) / len(values))
    # var(mean of 3 independent subject means) = (se_a^2 + se_b^2) / 3^2; C contributes no error term
    assert se == pytest.approx(math.sqrt(0.25 ** 2 + 0.5 ** 2) / 3)  # 0.18634
    assert se == pytest.approx(0.186339, abs=1e-6)
    # the order of the documents does not matter, only their subjects
    order = [6, 0, 4, 1, 5, 2, 3]
    assert tasks.aggregate(spec, [values[i] for i in order], [groups[i] for i in order]) == pytest.approx((mean, se))
    assert all(math.isnan(x) for x in tasks.aggregate(spec, [], []))


# ---------------------------------------------------------------------------- tree (slot) attention
def _plain_causal(q, k, v):
    """Reference: softmax(q k^T / sqrt(d)) v over the whole sequence, causal, GQA heads repeated."""
    import torch

    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    n, m = q.shape[2], k.shape[2]  # queries are the last n of m positions
    allowed = torch.ones(n, m, dtype=torch.bool).tril(diagonal=m - n)
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


@pytest.fixture(scope="module")
def attention_layer():
    """A real Llama attention layer: the tree attention only reads its ``layer_idx``."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention

    from evalsuite import compat

    if compat.cpu_flash_attention() is None:
        pytest.skip("this torch has no CPU flash attention: the engine uses plain attention")
    config = LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1)
    return LlamaAttention(config, layer_idx=0)


def test_rows_below_a_shared_past_equal_plain_causal_attention(attention_layer):
    """Two rows share one 5-token past (attended in one kernel call, merged by log-sum-exp); each
    row's 3 own tokens must get exactly the causal attention over past + own tokens."""
    import torch

    from evalsuite.backends.engine.tree_attention import TreeContext, tree_attention

    gen = torch.Generator().manual_seed(0)
    heads, kv_heads, dim, past_len, width = 4, 2, 8, 5, 3
    past_k, past_v = (torch.randn(1, kv_heads, past_len, dim, generator=gen) for _ in range(2))
    q = torch.randn(2, heads, width, dim, generator=gen)
    k, v = (torch.randn(2, kv_heads, width, dim, generator=gen) for _ in range(2))
    ctx = TreeContext(groups=[(torch.tensor([0, 1]), [(past_k, past_v)])], local_mask=None)
    out, _ = tree_attention(attention_layer, q, k, v, None, scaling=dim ** -0.5, evalsuite_tree=ctx)
    assert out.shape == (2, width, heads, dim)  # [batch, width, heads, dim], as transformers expects
    for row in range(2):
        full_k = torch.cat([past_k[0], k[row]], dim=1)[None]
        full_v = torch.cat([past_v[0], v[row]], dim=1)[None]
        expected = _plain_causal(q[row:row + 1], full_k, full_v)[0].transpose(0, 1)
        torch.testing.assert_close(out[row], expected, atol=1e-5, rtol=1e-5)
    # with keep, the layer's past extended by the row's own keys is what a later call attends to
    keep = TreeContext(groups=[(torch.tensor([0]), [(past_k, past_v)])], local_mask=None, keep=True)
    tree_attention(attention_layer, q[:1], k[:1], v[:1], None, scaling=dim ** -0.5, evalsuite_tree=keep)
    (kept_k, kept_v), = keep.kept_past()
    torch.testing.assert_close(kept_k, torch.cat([past_k, k[:1]], dim=2))
    torch.testing.assert_close(kept_v, torch.cat([past_v, v[:1]], dim=2))


def test_slot_mask_lets_each_branch_see_only_its_trunk(attention_layer):
    """One packed row: a 3-token trunk, then two 2-token branches (continuations of one context).
    With the tree mask each branch equals plain causal attention over trunk + that branch alone;
    a plain causal row would let the second branch see the first."""
    import torch

    from evalsuite.backends.engine.tree_attention import TreeContext, tree_attention

    gen = torch.Generator().manual_seed(1)
    heads, kv_heads, dim = 4, 2, 8
    trunk, first, second = [0, 1, 2], [3, 4], [5, 6]
    width = 7
    q = torch.randn(1, heads, width, dim, generator=gen)
    k, v = (torch.randn(1, kv_heads, width, dim, generator=gen) for _ in range(2))
    allowed = torch.zeros(width, width, dtype=torch.bool)
    for branch in (first, second):
        for i, pos in enumerate(trunk + branch):
            allowed[pos, (trunk + branch)[:i + 1]] = True
    mask = torch.zeros(width, width).masked_fill_(~allowed, float("-inf"))[None, None]
    out, _ = tree_attention(attention_layer, q, k, v, None, scaling=dim ** -0.5,
                            evalsuite_tree=TreeContext(groups=[], local_mask=mask))
    for branch in (first, second):
        idx = torch.tensor(trunk + branch)
        expected = _plain_causal(q[:, :, idx], k[:, :, idx], v[:, :, idx])[0].transpose(0, 1)
        torch.testing.assert_close(out[0, idx], expected, atol=1e-5, rtol=1e-5)
    causal, _ = tree_attention(attention_layer, q, k, v, None, scaling=dim ** -0.5,
                               evalsuite_tree=TreeContext(groups=[], local_mask=None))
    torch.testing.assert_close(causal[0], _plain_causal(q, k, v)[0].transpose(0, 1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(causal[0, second], out[0, second], atol=1e-3)  # the mask did something


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


# ---------------------------------------------------------------------------- process_docs
def _hellaswag_process_docs():
    from evalsuite import compat

    spec = tasks.load_spec("hellaswag")
    config = compat.load_lm_eval_yaml(tasks.lm_eval_tasks_root() / spec.lm_eval_config)
    return spec, config["process_docs"]


def test_hellaswag_process_docs_on_real_rows(data_dir):
    """lm-eval's HellaSwag preprocessing through evalsuite's row-list path, on real validation rows:
    the WikiHow brackets become sentences, and the result equals lm-eval's own datasets path."""
    import datasets

    from evalsuite.tasks.data import load_split, process_rows

    spec, process = _hellaswag_process_docs()
    rows = load_split(spec.dataset, spec.eval_split, data_dir).rows
    picked = [rows[0], rows[3243], rows[1]]
    assert picked[1]["source_id"] == "wikihow~4"  # the data this test was written against
    docs = process_rows(process, picked)
    assert docs[0]["query"] == "Roof shingle removal: A man is sitting on a roof. He"
    assert docs[0]["choices"][3] == "starts pulling up roofing on a roof." and docs[0]["gold"] == 3
    assert docs[1]["query"] == ("Personal Care and Style: How to become a fashion consultant. Obtain your high school "
                                "diploma or ged. This job requires a high school diploma or equivalent, so make sure "
                                "to apply yourself and finish school. If your high school offers these classes, take "
                                "art, design, and sewing to familiarize yourself with foundational concepts in fashion.")
    # "[title]" at the very start has no leading space to turn into ". ": it is dropped, its space stays
    assert docs[1]["choices"][3] == (" Earn a bachelor's degree in a fashion-related field. Degrees for the fashion "
                                     "industry include art, fashion merchandising, and marketing.")
    assert all(set(d) >= {"query", "choices", "gold"} and "ctx_a" in d for d in docs)  # map keeps the raw fields
    through_arrow = process(datasets.Dataset.from_list(picked)).to_list()
    assert [(d["query"], d["choices"], d["gold"]) for d in docs] == [
        (d["query"], d["choices"], d["gold"]) for d in through_arrow]


def test_a_task_without_process_docs_keeps_its_rows(data_dir):
    from evalsuite import compat
    from evalsuite.tasks.data import load_split, process_rows

    spec = tasks.load_spec("arc")
    config = compat.load_lm_eval_yaml(tasks.lm_eval_tasks_root() / spec.lm_eval_config)
    assert config.get("process_docs") is None
    rows = load_split(spec.dataset, spec.eval_split, data_dir).rows[:3]
    assert process_rows(None, rows) == rows and process_rows(_hellaswag_process_docs()[1], []) == []
