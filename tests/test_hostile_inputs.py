"""Issue 18, items 3, 4, 7 and the smaller cases: hostile input meets the real command line.

Every case runs the real CLI on real files and checks the exit status, that the error is one
line naming the fix, and what the results store (and the caches) held before and after:
refused input writes nothing, a model's own Python code never runs without consent, a DUS
build never outlives a change of its base, and every check happens before any evaluation.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evalsuite.cli import main
from evalsuite.tasks.fewshot import v1_schedule

ARC = Path("allenai__ai2_arc") / "ARC-Challenge"
WINOGRANDE = Path("winogrande")


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real command in a fresh process, standard input closed (no prompt can be answered)."""
    return subprocess.run([sys.executable, "-m", "evalsuite.cli", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          timeout=timeout)


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its content (empty when ``root`` does not exist)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def winogrande_only(tmp_path: Path, data_dir: Path) -> Path:
    """A data folder with Winogrande only (ARC and the others have no data there)."""
    root = tmp_path / "data"
    shutil.copytree(data_dir / WINOGRANDE, root / WINOGRANDE)
    return root


# -- remote code only with consent ---------------------------------------------------------------
def remote_code_model(folder: Path, marker: Path, *, in_tokenizer: bool = False) -> Path:
    """A model folder whose config names its own Python code (``auto_map``); importing that code
    writes ``marker``, so a test sees whether it ran. The rest is a real tiny Llama checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(folder)
    code = (f"from pathlib import Path\nPath({str(marker)!r}).write_text('the custom code ran')\n"
            "from transformers import LlamaConfig, LlamaForCausalLM\n"
            "class MarkerConfig(LlamaConfig):\n    model_type = 'marker_llama'\n"
            "class MarkerForCausalLM(LlamaForCausalLM):\n    config_class = MarkerConfig\n")
    (folder / "modeling_marker.py").write_text(code)
    auto_map = {"AutoConfig": "modeling_marker.MarkerConfig", "AutoModelForCausalLM": "modeling_marker.MarkerForCausalLM"}
    config = json.loads((folder / "config.json").read_text())
    if in_tokenizer:
        (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": [
            "modeling_marker.MarkerTokenizer", None]}}))
    else:
        config.update(model_type="marker_llama", auto_map=auto_map)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


REMOTE_CODE_COMMANDS = {
    "run": ["run", "--models", "{model}", "--tasks", "winogrande", "--limit", "2"],
    "run --dry-run": ["run", "--dry-run", "--models", "{model}", "--tasks", "winogrande", "--limit", "2"],
    "run dus:": ["run", "--models", "dus:{model}:1", "--tasks", "winogrande", "--limit", "2"],
    "contamination": ["contamination", "--models", "{model}", "--tasks", "winogrande", "--limit", "2"],
    "contamination --reference": ["contamination", "--models", "smollm2", "--reference", "{model}",
                                  "--tasks", "winogrande", "--limit", "2"],
    "dus": ["dus", "{model}", "--overlap", "1", "--out", "{tmp}/built"],
    "dus --dry-run": ["dus", "{model}", "--overlap", "1", "--dry-run"],
    "dus config.json": ["dus", "{model}/config.json", "--overlap", "1", "--dry-run"],
}


@pytest.mark.slow  # a CLI run end to end: the full suite, not the fast lane
@pytest.mark.parametrize("in_tokenizer", [False, True], ids=["config", "tokenizer_config"])
@pytest.mark.parametrize("command", list(REMOTE_CODE_COMMANDS))
def test_remote_code_never_runs_without_the_flag(command, in_tokenizer, tmp_path, data_dir):
    if in_tokenizer and command == "dus config.json":
        pytest.skip("a config.json file alone has no tokenizer config")
    marker = tmp_path / "marker"
    model = remote_code_model(tmp_path / "custom", marker, in_tokenizer=in_tokenizer)
    results = tmp_path / "results"
    args = [a.format(model=model, tmp=tmp_path) for a in REMOTE_CODE_COMMANDS[command]]
    if args[0] in ("run", "contamination"):
        args += ["--data-dir", str(data_dir), "--results-dir", str(results)]
    before = files(tmp_path)
    proc = cli(*args, env={"EVALSUITE_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "--trust-remote-code" in one_line(proc) and "modeling_marker" in one_line(proc)
    assert "[y/N]" not in proc.stdout + proc.stderr
    assert not marker.exists()
    assert files(tmp_path) == before  # nothing written: no results, no build, no cache entries


@pytest.mark.slow  # a CLI run end to end: the full suite, not the fast lane
def test_the_flag_is_what_lets_the_code_run(tmp_path):
    """The control: with --trust-remote-code the same folder's code does run (so the marker test
    above can fail), and DUS then refuses the unknown model type in one line."""
    marker = tmp_path / "marker"
    model = remote_code_model(tmp_path / "custom", marker)
    proc = cli("dus", str(model), "--overlap", "1", "--dry-run", "--trust-remote-code",
               env={"EVALSUITE_CACHE": str(tmp_path / "cache")})
    assert marker.exists()
    assert proc.returncode == 2 and "marker_llama" in one_line(proc)


# -- content-keyed DUS builds ----------------------------------------------------------------------
def dus_builds(cache: Path) -> list[str]:
    root = cache / "dus"
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


@pytest.mark.slow  # a CLI run end to end: the full suite, not the fast lane
def test_dus_build_follows_the_base_content(tmp_path, data_dir, tiny_llama_dir):
    """dus:BASE:M rebuilds when the base's config or weights change; the same base reuses its build;
    weights rewritten with the same size and mtime need --verify-weights (the documented rule)."""
    import torch
    from safetensors.torch import load_file, save_file

    base = tmp_path / "base"
    shutil.copytree(tiny_llama_dir, base)
    cache = tmp_path / "cache"
    data = winogrande_only(tmp_path, data_dir)
    env = {"EVALSUITE_CACHE": str(cache)}

    def dry_run(*extra: str) -> list[str]:
        proc = cli("run", "--dry-run", "--no-measure", "--models", f"dus:{base}:1", "--tasks", "winogrande",
                   "--limit", "2", "--data-dir", str(data), *extra, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return dus_builds(cache)

    first = dry_run()
    assert len(first) == 1
    assert dry_run() == first  # same base: the build is reused
    config = json.loads((base / "config.json").read_text())
    config["rms_norm_eps"] = 1e-3
    (base / "config.json").write_text(json.dumps(config))
    second = dry_run()
    assert len(second) == 2  # the changed config gets its own build, the old one is not served
    new = (set(second) - set(first)).pop()
    assert json.loads((cache / "dus" / new / "config.json").read_text())["rms_norm_eps"] == 1e-3

    weights = base / "model.safetensors"
    stat = weights.stat()
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0  # same shapes and dtypes: the same size on disk
    save_file(tensors, weights, metadata={"format": "pt"})
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size
    assert dry_run() == second  # size + mtime unchanged: the cached hash stands (documented)
    third = dry_run("--verify-weights")
    assert len(third) == 3  # hashed in full: new weights, new build
    rebuilt = (set(third) - set(second)).pop()
    built = load_file(cache / "dus" / rebuilt / "model.safetensors")
    torch.testing.assert_close(built[name], tensors[name])


# -- validate everything first -------------------------------------------------------------------
@pytest.mark.slow  # a CLI run end to end: the full suite, not the fast lane
def test_corrupt_request_cache_fix_works(tmp_path, data_dir, tiny_llama_dir):
    """A corrupt cache: one line naming `evalsuite cache clear`, no run row; the fix works; the run works."""
    data = winogrande_only(tmp_path, data_dir)
    results = tmp_path / "results"
    sqlite = tmp_path / "request-cache" / "requests.sqlite"
    sqlite.parent.mkdir()
    sqlite.write_bytes(b"this is not a database" * 100)
    env = {"EVALSUITE_REQUEST_CACHE": str(sqlite)}
    run = ["run", "--models", str(tiny_llama_dir), "--tasks", "winogrande", "--limit", "2", "--data-dir", str(data),
           "--results-dir", str(results), "--no-progress"]
    proc = cli(*run, env=env)
    assert proc.returncode == 2
    assert "`evalsuite cache clear`" in one_line(proc) and str(sqlite) in one_line(proc)
    assert files(results) == {}  # no `failed` run row for a run that never started
    info = cli("cache", "info", env=env)
    assert info.returncode == 2 and "`evalsuite cache clear`" in one_line(info)
    assert cli("cache", "clear", "--model", "x", env=env).returncode == 2  # entries cannot be picked out
    cleared = cli("cache", "clear", env=env)
    assert cleared.returncode == 0, cleared.stderr
    assert not sqlite.exists()
    proc = cli(*run, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "%|" not in proc.stderr  # --no-progress: no bar at all, weight loading included
    assert any(name.startswith("runs") for name in files(results))
    assert cli("cache", "info", env=env).returncode == 0


def test_nightly_refuses_a_missing_baseline_before_evaluating(tmp_path, data_dir, tiny_llama_dir):
    results = tmp_path / "results"
    shutil.copytree(data_dir / WINOGRANDE, tmp_path / "data" / WINOGRANDE)
    args = ["nightly", "--model", str(tiny_llama_dir), "--tasks", "winogrande", "--limit", "2", "--data-dir",
            str(tmp_path / "data"), "--results-dir", str(results)]
    proc = cli(*args, "--baseline", "nosuchrun")
    assert proc.returncode == 2 and "run `evalsuite run` first" in one_line(proc)
    assert files(results) == {}
    results.mkdir()
    (results / "baseline.json").write_text(json.dumps({"run_id": "gone", "model": "x"}))
    before = files(results)
    proc = cli(*args)
    assert proc.returncode == 2
    assert files(results) == before


@pytest.mark.parametrize("args,expected", [
    (["compare", "a", "b", "--max-drop", "nan"], "--max-drop"),
    (["compare", "a", "b", "--max-drop", "inf"], "--max-drop"),
    (["compare", "a", "b", "--alpha", "1.5"], "--alpha"),
    (["nightly", "--model", "smollm2", "--max-drop", "nan"], "--max-drop"),
    (["nightly", "--model", "smollm2", "--alpha", "0"], "--alpha"),
    (["nightly", "--model", "smollm2", "--limit", "0"], "--limit"),
    (["contamination", "--models", "smollm2", "--threshold", "nan"], "--threshold"),
    (["contamination", "--models", "smollm2", "--threshold", "inf"], "--threshold"),
    (["contamination", "--models", "smollm2", "--reference", "smollm2", "--threshold", "5"], "--threshold"),
    (["contamination", "--models", "smollm2", "--neighbours", "-1"], "--neighbours"),
    (["contamination", "--models", "smollm2", "--k", "nan"], "k must be"),
    (["dus", "smollm2", "--overlap", "-1"], "--overlap"),
    (["dus", "smollm2", "--overlap", "1", "--recover-steps", "-3"], "--recover-steps"),
    (["run", "--limit", "-5"], "--limit"),
    (["run", "--batch-size", "0"], "--batch-size"),
    (["run", "--shard", "3/2", "--run-id", "x"], "--shard"),
    (["run", "--tensor-parallel", "0"], "--tensor-parallel"),
])
def test_numeric_options_are_checked_before_anything_runs(args, expected, tmp_path, capsys):
    results = tmp_path / "results"
    assert main([*args, "--results-dir", str(results)] if args[0] != "dus" else args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert files(results) == {}


# -- the smaller cases ---------------------------------------------------------------------------
def break_arc_fewshot(root: Path, data_dir: Path) -> tuple[Path, int]:
    """ARC under ``root`` whose few-shot row of the first evaluated document lacks its answer key;
    the training file and the broken row's index."""
    folder = root / ARC
    folder.mkdir(parents=True)
    shutil.copy(data_dir / ARC / "test.jsonl", folder / "test.jsonl")
    test_rows = (data_dir / ARC / "test.jsonl").read_text(encoding="utf-8").splitlines()
    train = (data_dir / ARC / "train.jsonl").read_text(encoding="utf-8").splitlines()
    schedule = v1_schedule(len(test_rows), len(train), 25)
    shot = schedule.shots[schedule.order[0]][3]  # a shot of the first evaluated document
    row = json.loads(train[shot])
    row.pop("answerKey")
    train[shot] = json.dumps(row)
    (folder / "train.jsonl").write_text("\n".join(train) + "\n", encoding="utf-8")
    return folder / "train.jsonl", shot


def test_broken_training_row_is_located_in_the_training_file(data_dir, tmp_path, capsys):
    train_file, shot = break_arc_fewshot(tmp_path, data_dir)
    assert main(["prompts", "--task", "arc", "--limit", "1", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{train_file} line {shot + 1} (a few-shot row): field 'answerKey' is missing" \
        in err[0], err
    assert "test.jsonl" not in err[0]


@pytest.mark.parametrize("where", ["under a file", "a folder", "missing folder"])
def test_prompts_out_into_a_bad_path_is_one_line(where, data_dir, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("keep me")
    out = {"under a file": tmp_path / "file.txt" / "prompts.jsonl", "a folder": tmp_path,
           "missing folder": tmp_path / "nope" / "prompts.jsonl"}[where]
    assert main(["prompts", "--task", "winogrande", "--limit", "1", "--data-dir", str(data_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write --out") and str(out) in err[0], err
    assert (tmp_path / "file.txt").read_text() == "keep me"


def test_run_help_states_the_real_sigterm_status(capsys):
    from evalsuite.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "143 by SIGTERM" in text and "130 interrupted by Ctrl-C (SIGINT)" in text


@pytest.mark.slow  # a CLI run end to end: the full suite, not the fast lane
def test_dry_run_exits_as_the_run_would(tmp_path, data_dir, tiny_llama_dir):
    """ARC has no data in this folder: the run exits 1 (Winogrande scored, ARC missing), and so does
    its dry run; with data for every task both exit 0."""
    data = winogrande_only(tmp_path, data_dir)
    common = ["--models", str(tiny_llama_dir), "--limit", "2", "--data-dir", str(data), "--no-progress"]
    dry = cli("run", "--dry-run", "--no-measure", "--tasks", "winogrande,arc", *common)
    real = cli("run", "--tasks", "winogrande,arc", "--results-dir", str(tmp_path / "r"), *common)
    assert (dry.returncode, real.returncode) == (1, 1), (dry.stderr[-2000:], real.stderr[-2000:])
    assert cli("run", "--dry-run", "--no-measure", "--tasks", "winogrande", *common).returncode == 0


# == issue 24: broken model folders, model lists, the dry run as the run ===========================
from conftest import cli as in_process  # noqa: E402 - the CLI in this process (fast)
from conftest import one_line_error as only_error_line  # noqa: E402


def _truncate_weights(folder: Path) -> str:
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "model.safetensors"


def _drop_tokenizer(folder: Path) -> str:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
        (folder / name).unlink(missing_ok=True)
    return "tokenizer"


def _bad_config(folder: Path) -> str:
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": 64,')  # cut short
    return "config.json"


def _config_not_object(folder: Path) -> str:
    (folder / "config.json").write_text("[1, 2, 3]")
    return "config.json"


def _empty_weights(folder: Path) -> str:
    (folder / "model.safetensors").write_bytes(b"")
    return "model.safetensors"


def _garbage_weights(folder: Path) -> str:
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    return "model.safetensors"


def _index_names_missing_shard(folder: Path) -> str:
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}))
    return "model-00002-of-00002.safetensors"


def _truncated_bin(folder: Path) -> str:
    import torch
    from safetensors.torch import load_file

    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) - 200])
    return "pytorch_model.bin"


BREAKAGES = {"no tokenizer": _drop_tokenizer, "truncated weights": _truncate_weights, "malformed config": _bad_config,
             "config not an object": _config_not_object, "empty weights file": _empty_weights,
             "garbage weights": _garbage_weights, "index names a missing shard": _index_names_missing_shard,
             "truncated .bin": _truncated_bin}


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry run"])
@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_model_folder_is_one_line_exit_2_and_no_run_row(breakage, dry, tiny_llama_dir, data_dir, tmp_path,
                                                                  capsys):
    """Issue 24.2: every model is opened before any evaluation; the dry run refuses it alike."""
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    named = BREAKAGES[breakage](model)
    results = tmp_path / "results"
    before = files(tmp_path)
    code, out, err = in_process(capsys, "run", *(["--dry-run", "--no-measure"] if dry else []), "--models", model,
                                "--tasks", "winogrande", "--limit", "2", "--data-dir", data_dir, "--results-dir",
                                results, "--no-progress")
    assert code == 2, err[-3000:]
    line = only_error_line(err)
    assert named in line and (str(model) in line or breakage == "index names a missing shard"), line
    assert files(tmp_path) == before and not results.exists()  # no run row, no folder, nothing at all


def test_a_model_folder_that_is_fine_but_holds_a_broken_extra_file_still_runs(tiny_llama_dir, data_dir, tmp_path,
                                                                             capsys):
    """Hostile, next: a stray training-args.bin (not a checkpoint) is not mistaken for a weights file."""
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    (model / "training_args.bin").write_bytes(b"not a zip")
    code, _, err = in_process(capsys, "run", "--dry-run", "--no-measure", "--models", model, "--tasks", "winogrande",
                              "--limit", "2", "--data-dir", data_dir, "--no-progress")
    assert code == 0, err[-2000:]


@pytest.mark.parametrize("value", ["", ",", " ", "a,,b", " , ", f"{'x'},"], ids=repr)
@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry run"])
def test_an_empty_name_in_models_is_bad_input(value, dry, data_dir, tmp_path, capsys):
    """Issue 24.3: never the default model."""
    results = tmp_path / "results"
    code, out, err = in_process(capsys, "run", *(["--dry-run", "--no-measure"] if dry else []), "--models", value,
                                "--tasks", "winogrande", "--limit", "1", "--data-dir", data_dir, "--results-dir",
                                results)
    assert code == 2
    line = only_error_line(err)
    assert "--models" in line and "empty" in line and "smollm2" in line  # says the default is what leaving it out gives
    assert not results.exists() and "smollm2" not in out


@pytest.mark.parametrize("value", ["", " ", ","], ids=repr)
def test_nightly_with_an_empty_model_is_bad_input(value, data_dir, tmp_path, capsys):
    results = tmp_path / "results"
    code, _, err = in_process(capsys, "nightly", "--model", value, "--tasks", "winogrande", "--limit", "1",
                              "--data-dir", data_dir, "--results-dir", results)
    assert code == 2 and "--model" in only_error_line(err)
    assert not results.exists()


def test_contamination_with_an_empty_model_name_is_bad_input(data_dir, tmp_path, capsys):
    code, _, err = in_process(capsys, "contamination", "--models", "a,,b", "--tasks", "winogrande", "--limit", "1",
                              "--data-dir", data_dir, "--results-dir", tmp_path / "r")
    assert code == 2 and "--models" in only_error_line(err)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag", ["--tensor-parallel", "--data-parallel", "--limit"])
def test_a_bad_count_names_its_own_flag(flag, capsys):
    """Issue 24.8: `--tensor-parallel 0` is not told to omit --limit."""
    code, _, err = in_process(capsys, "run", flag, "0")
    assert code == 2
    text = err.strip().splitlines()[-1]
    assert flag in text and "at least 1" in text
    assert ("--limit" in text) == (flag == "--limit"), text


# -- 24.6: the dry run exits as the run would, for every input check of the run ------------------
def _broken_fewshot(tmp_path: Path, data_dir: Path) -> Path:
    """A data folder: ARC with a broken few-shot row, and Winogrande."""
    root = tmp_path / "data"
    break_arc_fewshot(root, data_dir)
    shutil.copytree(data_dir / WINOGRANDE, root / WINOGRANDE)
    return root


@pytest.mark.slow  # three runs and three dry runs, end to end
def test_the_dry_run_exits_as_the_run_would_for_every_first_check(tmp_path, data_dir, tiny_llama_dir, capsys):
    common = ["--models", str(tiny_llama_dir), "--limit", "2", "--no-progress"]

    def both(*args: str, results: Path) -> tuple[int, int]:
        dry = in_process(capsys, "run", "--dry-run", "--no-measure", *common, *args, "--results-dir", results)[0]
        real = in_process(capsys, "run", *common, *args, "--results-dir", results)[0]
        return dry, real

    # a broken few-shot row: the task fails, the others run (1 and 1)
    broken = _broken_fewshot(tmp_path, data_dir)
    assert both("--tasks", "winogrande,arc", "--data-dir", str(broken), results=tmp_path / "r1") == (1, 1)
    # a finished run id: both refuse it (2 and 2), the store untouched by either
    results = tmp_path / "r2"
    assert in_process(capsys, "run", *common, "--tasks", "arc", "--data-dir", data_dir, "--run-id", "done",
                      "--results-dir", results)[0] == 0
    before = files(results)
    assert both("--tasks", "arc", "--data-dir", str(data_dir), "--run-id", "done", "--resume", results=results) == (2, 2)
    assert both("--tasks", "arc", "--data-dir", str(data_dir), "--run-id", "done", results=results) == (2, 2)
    assert files(results) == before
    # a corrupt request cache: both refuse it before any run row
    from evalsuite.run.request_cache import cache_path

    path = Path(cache_path())
    saved = path.read_bytes() if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a database" * 100)
    try:
        assert both("--tasks", "arc", "--data-dir", str(data_dir), results=tmp_path / "r3") == (2, 2)
        assert not (tmp_path / "r3").exists()
    finally:
        if saved is None:
            path.unlink()
        else:
            path.write_bytes(saved)


@pytest.mark.parametrize("args, words", [
    (["--log-to", "nowhere:x"], "--log-to"),
    (["--log-to", "tensorboard:tb", "--shard", "0/2", "--run-id", "s"], "--log-to"),
    (["--ray", "local"], "--ray and --shards"),
    (["--shard", "0/2", "--ray", "local", "--shards", "2", "--run-id", "s"], "--shard"),
])
def test_command_line_checks_refuse_the_dry_run_as_the_run(args, words, tiny_llama_dir, data_dir, tmp_path, capsys):
    """Hostile, next: flags only the run used to check (--log-to, --ray/--shards) are checked for the dry run too."""
    results = tmp_path / "results"
    base = ["run", "--models", tiny_llama_dir, "--tasks", "winogrande", "--limit", "1", "--data-dir", data_dir,
            "--results-dir", results, "--no-progress", *args]
    for dry in ([], ["--dry-run", "--no-measure"]):
        code, _, err = in_process(capsys, *base, *dry)
        assert code == 2 and words in only_error_line(err), (dry, err)
    assert not results.exists()


def test_the_same_model_twice_leaves_no_trace(tiny_llama_dir, data_dir, tmp_path, capsys):
    """Hostile, next: the same folder twice (once through a trailing slash) is refused before the
    results folder is even created."""
    results = tmp_path / "results"
    code, _, err = in_process(capsys, "run", "--models", f"{tiny_llama_dir},{tiny_llama_dir}/", "--tasks", "arc",
                              "--limit", "1", "--data-dir", data_dir, "--results-dir", results)
    assert code == 2 and "named twice" in only_error_line(err)
    assert not results.exists()
