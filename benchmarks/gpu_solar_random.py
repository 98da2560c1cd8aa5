"""GPU benchmark: the engine against lm-eval's ``hf`` model on a SOLAR-sized model with random weights.

SOLAR-10.7B is a 48-layer Llama (hidden 4096, MLP 14336, 32 heads, 8 KV heads, vocab 32000);
random bf16 weights cost nothing to download and have the same speed. Without SOLAR's own
tokenizer the SmolLM2 one is used with token ids clamped into the 32000-token vocabulary (both
backends see the same ids, so the comparison holds; the answers mean nothing).

    python benchmarks/gpu_solar_random.py --tasks arc,mmlu --limit 8 --out solar_random.json

``--layers/--hidden/...`` shrink the model, e.g. to smoke-test the script on a CPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import engine_vs_lmeval as bench  # noqa: E402

SOLAR = {"layers": 48, "hidden": 4096, "intermediate": 14336, "heads": 32, "kv_heads": 8, "vocab": 32000}


def clamp_tokenizer(tokenizer: Any, vocab: int) -> Any:
    """The same tokenizer object, with every id it produces clamped to ``vocab - 1``.

    The class is swapped for a subclass (rather than wrapped) so that lm-eval's type checks and
    every attribute keep working.
    """
    base_cls = tokenizer.__class__

    def _clamp(ids: Any) -> Any:
        if isinstance(ids, torch.Tensor):
            return ids.clamp(max=vocab - 1)
        if isinstance(ids, list):
            return [_clamp(x) for x in ids]
        return min(int(ids), vocab - 1)

    class Clamped(base_cls):  # type: ignore[misc, valid-type]
        def encode(self, *args: Any, **kwargs: Any) -> Any:
            return _clamp(super().encode(*args, **kwargs))

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            out = super().__call__(*args, **kwargs)
            if "input_ids" in out:
                out["input_ids"] = _clamp(out["input_ids"])
            return out

    tokenizer.__class__ = Clamped
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if (getattr(tokenizer, name, None) or 0) >= vocab:
            raise SystemExit(f"tokenizer {name} is outside the {vocab}-token vocabulary")
    return tokenizer


def build_model(sizes: dict[str, int], dtype: torch.dtype, device: str) -> Any:
    """A randomly initialized Llama of the given sizes, built directly on ``device`` in ``dtype``."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=sizes["vocab"], hidden_size=sizes["hidden"], intermediate_size=sizes["intermediate"],
        num_hidden_layers=sizes["layers"], num_attention_heads=sizes["heads"], num_key_value_heads=sizes["kv_heads"],
        max_position_embeddings=4096, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = transformers.LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="arc,mmlu")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--task-limits", default="")
    parser.add_argument("--mmlu-subjects", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--hf-batch-size", default="auto", help="lm-eval hf batch size ('auto' is 1, as in v1 runs)")
    parser.add_argument("--token-budget", type=int, default=None)
    parser.add_argument("--data-dir", type=Path, default=bench.DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("solar_random.json"))
    for key, value in SOLAR.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=value)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; pass --device cpu with small --layers/--hidden to smoke-test")
    from evalsuite.loading import load_transformers, resolve_and_materialize, torch_dtype

    _, tokenizer = load_transformers(resolve_and_materialize("smollm2"), "float32", "cpu")
    sizes = {key: getattr(args, key) for key in SOLAR}
    start = time.perf_counter()
    model = build_model(sizes, torch_dtype(args.dtype), args.device)
    params = sum(p.numel() for p in model.parameters())
    print(f"built {params / 1e9:.2f}B-parameter random model in {time.perf_counter() - start:.0f}s", flush=True)
    tokenizer = clamp_tokenizer(tokenizer, sizes["vocab"])
    args.model = f"solar-architecture-random-{sizes['layers']}L"
    args.scaling = False
    if args.hf_batch_size != "auto":
        args.hf_batch_size = int(args.hf_batch_size)
    return bench.run(model, tokenizer, args)


if __name__ == "__main__":
    raise SystemExit(main())
