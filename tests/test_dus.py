"""Depth up-scaling: tiny real Llama/Mistral/Qwen2 models on CPU, the shipped Mistral config, SmolLM2."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import tiny_config, tiny_model, word_tokenizer

from evalsuite.cli.dus import build
from evalsuite.models import dus
from evalsuite.errors import EvalsuiteError

N = 6


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP's spinning
    threads make a 10 ms step take seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private evalsuite cache; the converted SmolLM2 folder is shared in to skip its 20 s conversion."""
    real = Path(os.environ.get("EVALSUITE_CACHE") or Path.home() / ".cache" / "evalsuite")
    root = tmp_path / "cache"
    root.mkdir()
    if (real / "models").is_dir():
        (root / "models").symlink_to(real / "models", target_is_directory=True)
    monkeypatch.setenv("EVALSUITE_CACHE", str(root))
    return root


IDS = torch.tensor([[5, 17, 300, 42, 999, 7, 123, 8]])


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


# --- the map ------------------------------------------------------------------------------


def test_layer_map_follows_the_paper():
    assert dus.layer_map(6, 2) == [0, 1, 2, 3, 2, 3, 4, 5]
    solar = dus.layer_map(32, 8)
    assert len(solar) == 48 and solar[:24] == list(range(24)) and solar[24:] == list(range(8, 32))
    assert dus.describe_map(30, 8) == "new 0-21 <- A 0-21; new 22-43 <- B 8-29"
    assert dus.layer_map(4, 0) == [0, 1, 2, 3, 0, 1, 2, 3]
    assert dus.layer_map(1, 0) == [0, 0]


@pytest.mark.parametrize("overlap", [-1, N, N + 3])
def test_overlap_out_of_range_is_a_clear_error(overlap):
    with pytest.raises(EvalsuiteError, match=r"give an --overlap from 0 to 5") as err:
        dus.upscale(tiny_model("llama"), overlap)
    assert "\n" not in str(err.value)


# --- upscale on tiny real models --------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_every_layer_has_the_weights_its_map_names(family):
    base = tiny_model(family)
    before = logits(base)
    new = dus.upscale(base, 2)
    mapping = dus.layer_map(N, 2)
    assert len(new.model.layers) == new.config.num_hidden_layers == 8
    assert base.config.num_hidden_layers == N and len(base.model.layers) == N  # base untouched
    assert torch.equal(logits(base), before)
    for i, j in enumerate(mapping):
        got, want = new.model.layers[i].state_dict(), base.model.layers[j].state_dict()
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), (i, j, key)
            assert got[key].data_ptr() != want[key].data_ptr()  # deep copies, not shared
        assert new.model.layers[i].self_attn.layer_idx == i
    # The two copies of a duplicated base layer are independent tensors.
    assert new.model.layers[2].mlp.up_proj.weight.data_ptr() != new.model.layers[4].mlp.up_proj.weight.data_ptr()
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(new.state_dict()[name], base.state_dict()[name])
    if getattr(base.config, "layer_types", None) is not None:
        assert new.config.layer_types == [base.config.layer_types[j] for j in mapping]
    # Every layer's config is the new one (48 layers), not a stale copy of the base's.
    assert all(layer.self_attn.config is new.config for layer in new.model.layers)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_generation_with_kv_cache_equals_without(family):
    """A stale layer_idx makes duplicated layers share a cache slot: cached decoding then diverges."""
    new = dus.upscale(tiny_model(family), 2)
    kwargs = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True,
                  pad_token_id=0)
    with torch.no_grad():
        cached = new.generate(IDS, use_cache=True, **kwargs)
        plain = new.generate(IDS, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, plain.sequences)
    for a, b in zip(cached.logits, plain.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # And a full forward pass over the generated text agrees with the last cached step.
    full = logits(new, cached.sequences[:, :-1])[:, -1]
    torch.testing.assert_close(full, cached.logits[-1], atol=1e-4, rtol=1e-4)


def test_overlap_zero_duplicates_every_layer():
    base = tiny_model("llama")
    new = dus.upscale(base, 0)
    assert new.config.num_hidden_layers == 2 * N
    for i in range(2 * N):
        assert torch.equal(new.model.layers[i].self_attn.q_proj.weight, base.model.layers[i % N].self_attn.q_proj.weight)
    assert [layer.self_attn.layer_idx for layer in new.model.layers] == list(range(2 * N))


def test_overlap_half_rebuilds_the_base():
    """m = n/2 keeps A[0:n/2] ++ B[n/2:n]: the base itself, so the logits must not move."""
    base = tiny_model("mistral")
    new = dus.upscale(base, N // 2)
    assert new.config.num_hidden_layers == N
    torch.testing.assert_close(logits(new), logits(base), atol=0, rtol=0)
    # ...while a wrong map (here m = 1) does change them: the comparison can fail.
    assert not torch.allclose(logits(dus.upscale(base, 1)), logits(base))


def test_non_decoder_model_is_refused():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64))
    with pytest.raises(EvalsuiteError, match=r"not model_type 'bert'; pick a Llama/Mistral-family base"):
        dus.upscale(bert, 1)


def test_bad_spec_is_a_clear_error():
    with pytest.raises(EvalsuiteError, match=r"write dus:BASE:M"):
        dus.parse_spec("dus:smollm2")
    assert dus.parse_spec("dus:smollm2:8") == ("smollm2", 8)
    assert dus.parse_spec("dus:org/name:0") == ("org/name", 0)


# --- dry run ------------------------------------------------------------------------------


def test_dry_run_of_shipped_mistral_config_is_solar_sized():
    report = build("mistral", 8, None, dry_run=True)
    assert (report.layers_before, report.layers_after) == (32, 48)
    assert report.params_before == 7_241_732_096  # the registry's Mistral 7B
    assert report.params_after == 10_731_524_096  # SOLAR 10.7B, leaderboard-v1.md §7
    assert report.model_type == "mistral" and report.out_dir is None
    assert report.layer_map_text == "new 0-23 <- A 0-23; new 24-47 <- B 8-31"


def test_shipped_config_is_mistral_7b_v01():
    config = json.loads((dus.CONFIGS_DIR / "mistral-7b-v0.1.json").read_text())
    assert config["architectures"] == ["MistralForCausalLM"] and config["model_type"] == "mistral"
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (32, 4096, 14336)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"]) == (32, 8, 32000)
    assert config["tie_word_embeddings"] is False and config["sliding_window"] == 4096


def test_dry_run_of_a_config_json_and_of_a_non_decoder(tmp_path):
    from transformers import BertConfig

    path = tmp_path / "config.json"
    path.write_text(tiny_config("llama").to_json_string())
    report = build(str(path), 2, None, dry_run=True)
    assert report.layers_after == 8 and report.params_after > report.params_before
    BertConfig(vocab_size=100).to_json_file(path)
    with pytest.raises(EvalsuiteError, match="pick a Llama/Mistral-family base"):
        build(str(path), 2, None, dry_run=True)


# --- build, save, reload ------------------------------------------------------------------------


def test_build_from_local_folder_round_trips(tmp_path, cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny_model("llama")
    base.save_pretrained(tmp_path / "base")
    word_tokenizer().save_pretrained(tmp_path / "base")
    out = tmp_path / "out"
    report = build(str(tmp_path / "base"), 2, out, dtype="float32")
    assert report.layers_after == 8 and report.out_dir == str(out.absolute())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]  # temp folder moved into place
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.num_hidden_layers == 8
    assert [layer.self_attn.layer_idx for layer in reloaded.model.layers] == list(range(8))
    torch.testing.assert_close(logits(reloaded), logits(dus.upscale(base, 2)), atol=0, rtol=0)
    assert AutoTokenizer.from_pretrained(out)("w5 w17")["input_ids"] == [5, 17]
    saved = json.loads((out / "dus.json").read_text())
    assert saved["layer_map"] == dus.layer_map(N, 2) and saved["params_after"] == report.params_after
    assert saved["base_identity"].startswith("sha256:")


def test_build_without_out_dir_is_an_error():
    with pytest.raises(EvalsuiteError, match="pass --out DIR"):
        build("smollm2", 8, None)


# --- the CLI ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from evalsuite.cli import dus as command

    parser = argparse.ArgumentParser(prog="evalsuite")
    command.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_dry_run_prints_map_and_counts(capsys):
    args = _parser().parse_args(["dus", "mistral", "--overlap", "8", "--dry-run"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "new 0-23 <- A 0-23; new 24-47 <- B 8-31" in out
    assert "7,241,732,096 -> 10,731,524,096" in out and "32 -> 48" in out
    assert "dry run" in out


def test_cli_builds_into_the_cache_not_the_current_folder(tmp_path, cache, monkeypatch, capsys):
    """Without --out the build goes where ``dus:BASE:M`` is looked for: the current folder (a
    checkout) stays clean, the hint names dus:BASE:M, and evaluating that name or running the
    command again builds nothing a second time."""
    from evalsuite.models.source import resolve_and_materialize

    base = tmp_path / "tinybase"
    tiny_model("mistral").save_pretrained(base)
    word_tokenizer().save_pretrained(base)
    work = tmp_path / "checkout"
    work.mkdir()
    monkeypatch.chdir(work)
    args = _parser().parse_args(["dus", str(base), "-m", "3"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert list(work.iterdir()) == []
    folder = dus.cached_folder(resolve_and_materialize(str(base)), 3, str(base))
    assert folder.is_relative_to(cache) and (folder / "config.json").is_file()
    assert "new 0-2 <- A 0-2; new 3-5 <- B 3-5" in out and f"wrote {folder}" in out
    assert f"evalsuite run --models dus:{base}:3" in out
    built = (folder / "model.safetensors").stat().st_mtime_ns
    assert dus.build_cached(resolve_and_materialize(str(base)), 3, str(base)) == folder  # what dus:BASE:M loads
    assert args.func(args) == 0 and "already built" in capsys.readouterr().out
    assert (folder / "model.safetensors").stat().st_mtime_ns == built  # not rebuilt
    with pytest.raises(EvalsuiteError, match="give it its own folder with --out"):
        build(str(base), 3, None, dtype="float16", into_cache=True)


def test_main_cli_reports_errors_in_one_line(capsys):
    cli = pytest.importorskip("evalsuite.cli")
    assert cli.main(["dus", "mistral", "--overlap", "32", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: overlap 32 is out of range for a 32-layer base; give an --overlap from 0 to 31"


# --- the registry's smollm2-dus ----------------------------------------------------------------


@pytest.mark.slow
def test_build_cached_smollm2_gives_a_loadable_44_layer_checkpoint(cache):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from evalsuite.models.source import resolve_and_materialize

    folder = dus.build_cached(resolve_and_materialize("smollm2"), 8, "smollm2")
    assert folder.parent == cache / "dus" and folder.name.startswith("smollm2-m8-")
    assert {"config.json", "model.safetensors", "tokenizer.json", "dus.json"} <= {p.name for p in folder.iterdir()}
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert dus.build_cached(resolve_and_materialize("smollm2"), 8, "smollm2") == folder  # cached: not rebuilt
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    source = resolve_and_materialize("smollm2-dus")
    assert Path(source.path) == folder and source.weights_hash.startswith("sha256:")

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.config.num_hidden_layers == len(model.model.layers) == 44
    base_dir = Path(resolve_and_materialize("smollm2").path)
    key = "model.layers.{}.self_attn.k_proj.weight"
    with safe_open(base_dir / "model.safetensors", "pt") as f:
        for new_i, base_i in ((0, 0), (21, 21), (22, 8), (43, 29)):
            assert torch.equal(model.model.layers[new_i].self_attn.k_proj.weight, f.get_tensor(key.format(base_i)))
    with torch.no_grad():
        out = model.generate(IDS, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, IDS.shape[1] + 3)


# --- optional recovery ------------------------------------------------------------------------


def _pattern_text(words: int = 4000) -> str:
    return " ".join(f"w{3 + (i * 7) % 50}" for i in range(words))


def test_recovery_lowers_heldout_loss():
    model = dus.upscale(tiny_model("llama"), 2)
    result = dus.recover(model, word_tokenizer(), _pattern_text(1200), steps=10, lr=3e-3, seq_len=32, batch_size=2)
    assert (result.train_blocks, result.heldout_blocks) == (34, 3)
    assert result.heldout_loss_after < result.heldout_loss_before - 0.5
    assert not model.training


def test_cli_recovery_is_recorded(tmp_path, cache, capsys):
    base = tmp_path / "base"
    tiny_model("llama").save_pretrained(base)
    word_tokenizer().save_pretrained(base)
    text = tmp_path / "text.txt"
    text.write_text(_pattern_text(1000))
    args = _parser().parse_args(["dus", str(base), "-m", "2", "--out", str(tmp_path / "out"),
                                 "--recover-steps", "2", "--recover-text", str(text)])
    assert args.func(args) == 0
    assert "2 steps on 6 blocks of 128 tokens: held-out loss" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "dus.json").read_text())["recovery"]
    assert saved["steps"] == 2 and len(saved["train_losses"]) == 2 and saved["heldout_blocks"] == 1
    assert len(saved["text_sha256"]) == 64


def test_recovery_refuses_too_little_text_and_dry_run():
    with pytest.raises(EvalsuiteError, match="give a longer --recover-text file"):
        dus.recover(tiny_model("llama"), word_tokenizer(), "w5 w6 w7", steps=2)
    args = _parser().parse_args(["dus", "mistral", "-m", "8", "--dry-run", "--recover-steps", "3"])
    with pytest.raises(EvalsuiteError, match="drop --dry-run"):
        args.func(args)


def test_recovery_without_text_fails_before_loading_weights(tmp_path):
    with pytest.raises(EvalsuiteError, match="pass --recover-text FILE"):
        build("no/such-model", 2, tmp_path / "out", recover_steps=3)
