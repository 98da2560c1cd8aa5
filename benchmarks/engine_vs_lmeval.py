"""Benchmark: the evalsuite prefix-tree engine against lm-eval's ``hf`` model on the same requests.

Both backends answer the same lm-eval ``Instance``s in one process, so tokens, time and answers
are compared like for like. Per task the JSON reports requests, tokens each backend ran through
the model (counted at the decoder's ``forward``: HFLM's full padded sequences, the engine's
packed rows), unique tokens (the prefix tree's size), wall times, speed-up, prediction
agreement and the largest log-likelihood difference. HFLM runs at each of ``--hf-batch-sizes``
and its fastest counts (stated per task). The machine is shared, so each log-likelihood task
runs ``--rounds`` times alternating between the backends and the best time of each counts (the
engine starts cold every time). GSM8K compares the generated texts with HFLM at batch size 1
(v1's ``model.generate`` per prompt) and lists every document whose text differs.

The whole suite is reported two ways: time-weighted over the sampled documents (sum of HFLM
seconds over sum of engine seconds), and projected to the full splits (each task's seconds
per document times its full document count, summed per backend).

The self-audit (:mod:`evalsuite.run.audit`) runs after each task exactly as ``evalsuite run`` runs
it (a seeded sample within ``--audit-share`` of the task's engine tokens, a plain token priced
at ``PLAIN_TOKEN_COST`` engine tokens, at least one request,
re-scored by the plain executor; GSM8K: one forward over prompt + generated tokens per sampled
prompt) and its time is reported as a share of the engine's time on the task: measured at the
sampled size (where the one-request floor can dominate) and projected to the full split (the
budget's tokens times the plain executor's seconds per token over the engine's seconds per
engine token: on a full split the sample fills its budget). ``--no-audit-in-time`` is not needed: the engine's
seconds never include the audit, and ``engine_seconds_with_audit`` adds it, so both speed-ups
are reported.

A roofline measures the model's peak forward throughput on this machine (best of a few batch
shapes, before and after the tasks); engine efficiency is the time a perfect engine would need
for the unique tokens at that peak over the engine's wall time.

    python benchmarks/engine_vs_lmeval.py --model smollm2 --task-limits arc=6,gsm8k=64 \\
        --limit 10 --dtype float32 --out engine_vs_lmeval.json [--scaling]
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evalsuite.backends import BackendOptions  # noqa: E402
from evalsuite.backends.engine import EngineLM, wrap_model  # noqa: E402
from evalsuite.backends.lmeval_hf import wrap_hf_model  # noqa: E402
from evalsuite.tasks import DocPrompt, LoadedTask, load_spec  # noqa: E402

#: Bytes HFLM's float32 logits and log-probs of one batch may take on this shared machine.
HF_LOGITS_MEMORY = 6 * 2**30
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # the checkout's sibling, as in the Makefile


@contextmanager
def count_tokens(base: Any) -> Iterator[dict[str, int]]:
    """Count the tokens every call of the decoder's ``forward`` receives (padding included)."""
    counter = {"tokens": 0, "calls": 0}
    real = base.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            counter["tokens"] += int(ids.numel())
            counter["calls"] += 1
        return real(*args, **kwargs)

    base.forward = counting
    try:
        yield counter
    finally:
        del base.forward  # back to the class method


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def select_prompts(task: str, limit: int, data_dir: Path, mmlu_subjects: int) -> tuple[LoadedTask, list[DocPrompt]]:
    """``limit`` documents per task (per subject for MMLU, on its first ``mmlu_subjects`` subjects)."""
    loaded = LoadedTask(load_spec(task), data_dir)
    prompts = loaded.prompts(limit)
    if task == "mmlu":
        subjects = list(dict.fromkeys(p.subtask for p in prompts))[:mmlu_subjects]
        prompts = [p for p in prompts if p.subtask in subjects]
    return loaded, prompts


def roofline(model: Any, shapes: list[tuple[int, int]], repeats: int = 3) -> dict[str, Any]:
    """Peak decoder throughput (tokens/s) over a few (batch, length) shapes: plain causal
    forwards without the output layer, the work a perfect engine does per unique token."""
    base = model.get_decoder()
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    results = {}
    with torch.inference_mode():
        for batch, length in shapes:
            ids = torch.randint(0, vocab, (batch, length), device=device)
            base(input_ids=ids[:, :16])  # warm-up
            best = float("inf")
            for _ in range(repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                base(input_ids=ids)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - start)
            results[f"{batch}x{length}"] = batch * length / best
    peak_shape = max(results, key=results.__getitem__)
    return {"tokens_per_s": results, "peak_tokens_per_s": results[peak_shape], "peak_shape": peak_shape}


def hf_models(model: Any, tokenizer: Any, options: BackendOptions, batch_sizes: list[int]) -> dict[int, Any]:
    return {bs: wrap_hf_model(model, tokenizer, replace(options, batch_size=bs)) for bs in batch_sizes}


def compare_loglikelihood(
    engine: EngineLM, hfs: dict[int, Any], loaded: LoadedTask, prompts: list[DocPrompt], rounds: int = 1
) -> dict[str, Any]:
    """Run both backends on a log-likelihood task (``rounds`` times, alternating; HFLM at each
    batch size) and compare answers and cost; HFLM's fastest batch size counts."""
    instances = [inst for p in prompts for inst in p.instances]
    pairs = [tuple(inst.args) for inst in instances]
    unique = engine.build_tree(pairs).n_tokens
    # HFLM materializes log-softmax over the vocabulary at every position of a batch (twice,
    # logits and log-probs, in float32): a batch size whose tensors would not fit is not run
    longest = max(sum(map(len, engine.encode_pair(*pair))) for pair in pairs)
    vocab = engine.model.get_output_embeddings().weight.shape[0]
    skipped = {bs: round(min(bs, len(pairs)) * longest * vocab * 8 / 2**30, 1) for bs in hfs
               if min(bs, len(pairs)) * longest * vocab * 8 > HF_LOGITS_MEMORY}
    hfs = {bs: hf for bs, hf in hfs.items() if bs not in skipped}
    hf_times = {bs: float("inf") for bs in hfs}
    hf_tokens: dict[int, int] = {}
    eng_time = float("inf")
    base = engine.executor.base
    ref = None
    for _ in range(rounds):  # alternating; the best round of each (the machine is shared)
        for bs, hf in hfs.items():
            with count_tokens(base) as hf_count:
                out, seconds = timed(lambda: hf.loglikelihood(instances, disable_tqdm=True))  # noqa: B023 - timed() calls it at once
            ref = out if bs == min(hfs) else ref
            hf_times[bs] = min(hf_times[bs], seconds)
            hf_tokens[bs] = hf_count["tokens"]
        engine.forget()  # from cold: no preamble kept from an earlier call
        with count_tokens(base) as eng_count:
            ours, seconds = timed(lambda: engine.loglikelihood(instances))
        eng_time = min(eng_time, seconds)
    audit = measure_audit(engine, loaded, prompts, ours)
    best_bs = min(hf_times, key=hf_times.__getitem__)
    # what one plain causal forward achieves at this task's document length (no prefix sharing,
    # no output layer): attention over long few-shot contexts costs throughput no engine recovers
    length = sorted(max(sum(map(len, engine.encode_pair(*inst.args))) - 1 for inst in p.instances) for p in prompts)
    context_rate = roofline(engine.model, [(1, length[len(length) // 2])], repeats=2)["peak_tokens_per_s"]
    deltas = [abs(a[0] - b[0]) for a, b in zip(ours, ref, strict=True)]
    disagreements, at = [], 0
    for prompt in prompts:
        n = len(prompt.instances)
        mine, theirs = loaded.score(prompt, ours[at:at + n]), loaded.score(prompt, ref[at:at + n])
        if mine.prediction != theirs.prediction:
            disagreements.append({"doc_index": prompt.doc_index, "subtask": prompt.subtask,
                                  "engine": mine.prediction, "hf": theirs.prediction})
        at += n
    return {
        "docs": len(prompts),
        "requests": len(instances),
        "hf_batch_size": best_bs,
        "hf_seconds_by_batch_size": hf_times,
        "hf_batch_sizes_not_run_gib": skipped,
        "hf_tokens": hf_tokens[best_bs],
        "engine_tokens": eng_count["tokens"],
        "unique_tokens": unique,
        "hf_seconds": hf_times[best_bs],
        "engine_seconds": eng_time,
        "speedup": hf_times[best_bs] / eng_time,
        "agreement": 1.0 - len(disagreements) / len(prompts),
        "max_abs_delta_loglikelihood": max(deltas),
        "greedy_flag_mismatches": sum(a[1] != b[1] for a, b in zip(ours, ref)),
        "median_doc_tokens": length[len(length) // 2],
        "plain_forward_tokens_per_s_at_doc_length": context_rate,
        "disagreements": disagreements,
        **audit_share(audit, eng_time, len(prompts), len(instances), loaded.spec.name),
    }


def measure_audit(engine: EngineLM, loaded: LoadedTask, prompts: list[DocPrompt], answers: list[Any]) -> dict[str, Any]:
    """The runner's self-audit of the task on the engine's answers, timed, with its sample's
    size in the dry run's counting (plain tokens audited, the task's engine tokens)."""
    from evalsuite.run.audit import Auditor

    grouped, at = [], 0
    for prompt in prompts:
        grouped.append(list(answers[at:at + len(prompt.instances)]))
        at += len(prompt.instances)
    auditor = Auditor(engine)
    result, seconds = timed(lambda: auditor.check(loaded, prompts, grouped, "benchmark"))
    sample = auditor.sample(loaded, prompts, "benchmark")
    return {"audit_seconds": seconds, "audit_n": result.n, "audit_agree": result.agree, "audit_status": result.status,
            "audit_max_abs_diff": result.max_abs_diff, "audit_note": result.note, "audit_tokens": sample.tokens,
            "audit_engine_tokens": sample.engine_tokens}


def audit_share(audit: dict[str, Any], engine_seconds: float, docs: int, requests: int, task: str) -> dict[str, Any]:
    """The audit's time over the task's engine time, measured and projected to the full split.

    On a full split the floor (one request) is negligible and the sample fills its budget
    (share x engine tokens / PLAIN_TOKEN_COST plain tokens), so the audit's share of the time is
    that times the plain executor's seconds per token over the engine's seconds per engine token
    (both measured here, tokens counted as the dry run counts them). At these sizes the plain
    rate is the floor's one long input's; ``benchmarks/audit_share.py`` measures it on whole
    documents and plans the full split's own sample."""
    from evalsuite.run.audit import SHARE
    from evalsuite.run.audit_sample import PLAIN_TOKEN_COST

    plain_per_token = audit["audit_seconds"] / max(1, audit["audit_tokens"])
    engine_per_token = engine_seconds / max(1, audit["audit_engine_tokens"])
    projected_engine = engine_seconds / docs * FULL_DOCS[task]
    share = SHARE / PLAIN_TOKEN_COST * plain_per_token / engine_per_token
    return {**audit, "audit_share": audit["audit_seconds"] / engine_seconds,
            "engine_seconds_with_audit": engine_seconds + audit["audit_seconds"],
            "audit_seconds_projected_full": share * projected_engine, "engine_seconds_projected_full": projected_engine,
            "audit_share_projected_full": share}


def compare_generation(engine: EngineLM, hfs: dict[int, Any], loaded: LoadedTask, prompts: list[DocPrompt],
                       exact: bool = False) -> dict[str, Any]:
    """Run both backends on a generation task. The engine's texts are compared with HFLM at
    batch size 1 (v1's per-prompt ``generate``); every differing document is listed."""
    instances = [inst for p in prompts for inst in p.instances]
    base = engine.executor.base
    texts: dict[int, list[str]] = {}
    hf_times: dict[int, float] = {}
    hf_tokens: dict[int, int] = {}
    for bs, hf in hfs.items():
        with count_tokens(base) as hf_count:
            texts[bs], hf_times[bs] = timed(lambda: hf.generate_until(instances, disable_tqdm=True))  # noqa: B023 - timed() calls it at once
        hf_tokens[bs] = hf_count["tokens"]
        print(f"    hf batch {bs}: {hf_times[bs]:.1f}s", flush=True)
    with count_tokens(base) as eng_count:
        ours, eng_time = timed(lambda: engine.generate_until(instances))
    ref_bs = 1 if 1 in texts else min(texts)
    ref = texts[ref_bs]
    best_bs = min(hf_times, key=hf_times.__getitem__)

    def accuracy(outs: list[str]) -> float:
        return sum(loaded.score(p, [o]).value for p, o in zip(prompts, outs)) / len(prompts)

    differ = [{"doc_index": p.doc_index, "engine": a, "hf": b} for p, a, b in zip(prompts, ours, ref) if a != b]
    row = {
        "docs": len(prompts),
        "requests": len(instances),
        "hf_batch_size": best_bs,
        "hf_seconds_by_batch_size": hf_times,
        "hf_tokens": hf_tokens[best_bs],
        "engine_tokens": eng_count["tokens"],
        "hf_seconds": hf_times[best_bs],
        "engine_seconds": eng_time,
        "speedup": hf_times[best_bs] / eng_time,
        "reference_batch_size": ref_bs,
        "agreement": 1.0 - len(differ) / len(prompts),
        "strict_match_engine": accuracy(ours),
        "strict_match_hf": accuracy(ref),
        "strict_match_hf_by_batch_size": {bs: accuracy(t) for bs, t in texts.items()},
        "hf_self_agreement_by_batch_size": {bs: sum(a == b for a, b in zip(t, ref)) / len(ref) for bs, t in texts.items()},
        "generated_tokens_engine": sum(len(engine.tokenizer.encode(t, add_special_tokens=False)) for t in ours),
        "disagreements": differ,
        **audit_share(measure_audit(engine, loaded, prompts, ours), eng_time, len(prompts), len(instances),
                      loaded.spec.name),
    }
    if exact:
        exact_engine = wrap_model(engine.model, engine.tokenizer, replace(engine.options, generation="exact"))
        exact_out, row["engine_exact_seconds"] = timed(lambda: exact_engine.generate_until(instances))
        row["engine_exact_agreement"] = sum(a == b for a, b in zip(exact_out, ref)) / len(ref)
    return row


FULL_DOCS = {"arc": 1172, "hellaswag": 10042, "mmlu": 14042, "truthfulqa": 817, "winogrande": 1267, "gsm8k": 1319}


def with_audit(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its speed-up counting the audit's time (the engine's own is ``speedup``)."""
    if "engine_seconds_with_audit" in row:
        row["speedup_with_audit"] = row["hf_seconds"] / row["engine_seconds_with_audit"]
    return row


def whole_suite(tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The suite's speed-up, time-weighted over the sampled documents and projected to the full
    splits (seconds per document x full document count, per task and backend)."""
    hf_s = sum(v["hf_seconds"] for v in tasks.values())
    eng_s = sum(v["engine_seconds"] for v in tasks.values())
    hf_full = sum(v["hf_seconds"] / v["docs"] * FULL_DOCS[k] for k, v in tasks.items())
    eng_full = sum(v["engine_seconds"] / v["docs"] * FULL_DOCS[k] for k, v in tasks.items())
    audited = [v for v in tasks.values() if "audit_seconds" in v]
    audit_s = sum(v["audit_seconds"] for v in audited)
    audit_full = sum(v["audit_seconds_projected_full"] for v in audited)
    audit = {} if not audited else {"audit": {
        "share_sampled": audit_s / sum(v["engine_seconds"] for v in audited),
        "share_projected_full": audit_full / sum(v["engine_seconds_projected_full"] for v in audited),
        "speedup_sampled_with_audit": hf_s / (eng_s + audit_s),
        "speedup_projected_full_with_audit": hf_full / (eng_full + audit_full)}}
    return {**audit,
        "tasks": list(tasks),
        "sampled": {"docs": sum(v["docs"] for v in tasks.values()), "hf_seconds": hf_s, "engine_seconds": eng_s,
                    "speedup": hf_s / eng_s},
        "projected_full": {"docs": {k: FULL_DOCS[k] for k in tasks}, "hf_hours": hf_full / 3600,
                           "engine_hours": eng_full / 3600, "speedup": hf_full / eng_full},
    }


def scaling(engine: EngineLM, data_dir: Path, sizes: list[int], linear_task: str = "truthfulqa") -> dict[str, Any]:
    """Engine time as the question count doubles (``linear_task``: time doubles) and MMLU time per
    question as one subject gets more questions (falls: the preamble is computed once per subject)."""
    out: dict[str, Any] = {linear_task: [], "mmlu_one_subject": []}
    for task, key in ((linear_task, linear_task), ("mmlu", "mmlu_one_subject")):
        for n in sizes:
            _, prompts = select_prompts(task, n, data_dir, 1)
            instances = [inst for p in prompts for inst in p.instances]
            engine.forget()
            _, seconds = timed(lambda: engine.loglikelihood(instances))  # noqa: B023 - timed() calls it at once
            out[key].append({"questions": len(prompts), "seconds": seconds, "seconds_per_question": seconds / len(prompts)})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tasks", default="arc,hellaswag,mmlu,truthfulqa,winogrande,gsm8k")
    parser.add_argument("--limit", type=int, default=8, help="documents per task (per subject for MMLU)")
    parser.add_argument("--task-limits", default="", help="per-task overrides, e.g. arc=4,gsm8k=64")
    parser.add_argument("--mmlu-subjects", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--token-budget", type=int, default=None)
    parser.add_argument("--hf-batch-sizes", default="1,8,32", help="HFLM batch sizes to measure; the fastest counts")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per log-likelihood task; the best of each counts")
    parser.add_argument("--exact-generation", action="store_true", help="also time the engine's --generation exact")
    parser.add_argument("--scaling", action="store_true")
    parser.add_argument("--scaling-sizes", default="2,4,8")
    parser.add_argument("--scaling-task", default="truthfulqa", help="task whose engine time should double with the questions")
    parser.add_argument("--out", type=Path, default=Path("engine_vs_lmeval.json"))
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="combine the task results of earlier runs (same model and machine) into --out and report")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)

    from evalsuite.models.loading import load_transformers
    from evalsuite.models.source import resolve_and_materialize

    model, tokenizer = load_transformers(resolve_and_materialize(args.model), args.dtype, args.device)
    return run(model, tokenizer, args)


def run(model: Any, tokenizer: Any, args: argparse.Namespace) -> int:
    """The comparison on an already-loaded model."""
    options = BackendOptions(device=args.device, dtype=args.dtype)
    engine = wrap_model(model, tokenizer, options, token_budget=args.token_budget)
    batch_sizes = [int(x) for x in str(getattr(args, "hf_batch_sizes", "1")).split(",") if x]
    hfs = hf_models(model, tokenizer, options, batch_sizes)
    limits = {k: int(v) for k, v in (kv.split("=") for kv in args.task_limits.split(",") if kv)}
    shapes = [(1, 512), (4, 256), (8, 128), (16, 64), (2, 1024)] if args.device == "cpu" else [(8, 1024), (16, 1024), (32, 512), (4, 4096)]
    roof = roofline(model, shapes)
    report: dict[str, Any] = {
        "model": args.model, "dtype": args.dtype, "device": args.device,
        "machine": (torch.cuda.get_device_name() if args.device == "cuda"
                    else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"),
        "torch_threads": torch.get_num_threads(), "hf_batch_sizes": batch_sizes, "roofline": roof,
        "engine_executor": engine.executor.name, "tasks": {},
    }
    for task in [t for t in args.tasks.split(",") if t]:
        loaded, prompts = select_prompts(task, limits.get(task, args.limit), args.data_dir, args.mmlu_subjects)
        print(f"  {task}: {len(prompts)} documents", flush=True)
        if loaded.spec.is_generation:
            report["tasks"][task] = with_audit(compare_generation(engine, hfs, loaded, prompts,
                                                                  getattr(args, "exact_generation", False)))
        else:
            report["tasks"][task] = with_audit(compare_loglikelihood(engine, hfs, loaded, prompts, getattr(args, "rounds", 1)))
        row = report["tasks"][task]
        print(f"  {task}: hf (batch {row['hf_batch_size']}) {row['hf_seconds']:.1f}s engine {row['engine_seconds']:.1f}s "
              f"-> {row['speedup']:.2f}x, agreement {row['agreement']:.3f}", flush=True)
        args.out.write_text(json.dumps(report, indent=2))  # partial results survive an interruption
    # the peak again after the tasks, best of both per shape: a fair ceiling on a shared machine;
    # the efficiencies are computed against it
    again = roofline(model, shapes)["tokens_per_s"]
    roof["tokens_per_s"] = {k: max(v, again[k]) for k, v in roof["tokens_per_s"].items()}
    roof["peak_shape"] = max(roof["tokens_per_s"], key=roof["tokens_per_s"].__getitem__)
    roof["peak_tokens_per_s"] = peak = roof["tokens_per_s"][roof["peak_shape"]]
    ll = {k: v for k, v in report["tasks"].items() if "unique_tokens" in v}
    for row in ll.values():
        row["engine_efficiency"] = (row["unique_tokens"] / peak) / row["engine_seconds"]
        # what one plain forward of a median document reaches, as a share of the same peak
        row["plain_forward_efficiency_at_doc_length"] = row["plain_forward_tokens_per_s_at_doc_length"] / peak
    if ll:
        hf_s = sum(v["hf_seconds"] for v in ll.values())
        eng_s = sum(v["engine_seconds"] for v in ll.values())
        unique = sum(v["unique_tokens"] for v in ll.values())
        docs = sum(v["docs"] for v in ll.values())
        report["overall_loglikelihood"] = {
            "docs": docs,
            "requests": sum(v["requests"] for v in ll.values()),
            "hf_tokens": sum(v["hf_tokens"] for v in ll.values()),
            "engine_tokens": sum(v["engine_tokens"] for v in ll.values()),
            "unique_tokens": unique, "hf_seconds": hf_s, "engine_seconds": eng_s, "speedup": hf_s / eng_s,
            "agreement": sum(v["agreement"] * v["docs"] for v in ll.values()) / docs,
            "max_abs_delta_loglikelihood": max(v["max_abs_delta_loglikelihood"] for v in ll.values()),
            "engine_efficiency": (unique / peak) / eng_s,
        }
    if report["tasks"]:
        report["whole_suite"] = whole_suite(report["tasks"])
    if args.scaling:
        report["scaling"] = scaling(
            engine, args.data_dir, [int(x) for x in args.scaling_sizes.split(",")], getattr(args, "scaling_task", "truthfulqa")
        )
    args.out.write_text(json.dumps(report, indent=2))
    print_table(report)
    return 0


def merge(paths: list[Path], out: Path) -> int:
    """One report from runs of different tasks (e.g. generation and log-likelihood tasks run
    separately on a busy machine): tasks combined, overall figures recomputed."""
    reports = [json.loads(p.read_text()) for p in paths]
    merged = {k: v for k, v in reports[0].items() if k not in ("tasks", "overall_loglikelihood", "whole_suite")}
    merged["merged_from"] = [str(p) for p in paths]
    merged["tasks"] = {}
    for r in reports:
        merged["tasks"].update(r["tasks"])
        if "overall_loglikelihood" in r:
            merged["overall_loglikelihood"] = r["overall_loglikelihood"]
    merged["rooflines"] = [r["roofline"] for r in reports if "roofline" in r]
    merged["whole_suite"] = whole_suite(merged["tasks"])
    out.write_text(json.dumps(merged, indent=2))
    print_table(merged)
    print(markdown(merged))
    return 0


TITLES = {"arc": "ARC (25-shot)", "hellaswag": "HellaSwag (10-shot)", "mmlu": "MMLU (5-shot)",
          "truthfulqa": "TruthfulQA (mc2)", "winogrande": "Winogrande (5-shot)", "gsm8k": "GSM8K (5-shot, generation)"}


def markdown(report: dict[str, Any]) -> str:
    """The table of docs/speed.md for a report: speed-ups with the audit's time included (what a
    run's wall clock sees) and, second, of the engine alone."""
    lines = ["| task | docs | lm-eval hf batch | lm-eval hf tokens | engine tokens | unique tokens | lm-eval hf s | "
             "engine s | audit s | speed-up, audit included | speed-up, engine alone | same answers | max \\|Δ ll\\| |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for task, r in report["tasks"].items():
        same = "not compared" if r["agreement"] is None else (
            f"{r['agreement']:.0%}" + (" identical text" if "strict_match_engine" in r else ""))
        delta = f"{r['max_abs_delta_loglikelihood']:.1e}" if "max_abs_delta_loglikelihood" in r else "–"
        audit_s = f"{r['audit_seconds']:.1f}" if "audit_seconds" in r else "–"
        with_audit_x = f"**{r['speedup_with_audit']:.2f}x**" if "speedup_with_audit" in r else "–"
        lines.append(f"| {TITLES.get(task, task)} | {r['docs']} | {r['hf_batch_size']} | {r['hf_tokens'] or '–'} | "
                     f"{r['engine_tokens']} | {r.get('unique_tokens', '–')} | {r['hf_seconds']:.1f} | "
                     f"{r['engine_seconds']:.1f} | {audit_s} | {with_audit_x} | {r['speedup']:.2f}x | {same} | {delta} |")
    if "whole_suite" in report:
        w = report["whole_suite"]
        a = w.get("audit", {})
        lines.append(f"| whole suite, time-weighted over the sampled docs | {w['sampled']['docs']} | | | | | "
                     f"{w['sampled']['hf_seconds']:.1f} | {w['sampled']['engine_seconds']:.1f} | | "
                     f"**{a.get('speedup_sampled_with_audit', float('nan')):.2f}x** | {w['sampled']['speedup']:.2f}x | | |")
        lines.append(f"| whole suite, projected to the full splits | {sum(w['projected_full']['docs'].values())} | | | | | "
                     f"{w['projected_full']['hf_hours']:.1f} h | {w['projected_full']['engine_hours']:.1f} h | | "
                     f"**{a.get('speedup_projected_full_with_audit', float('nan')):.2f}x** | "
                     f"{w['projected_full']['speedup']:.2f}x | | |")
    return "\n".join(lines)


def print_table(report: dict[str, Any]) -> None:
    rows = dict(report["tasks"])
    if "overall_loglikelihood" in report:
        rows["overall (loglik.)"] = report["overall_loglikelihood"]
    print(f"roofline: {report['roofline']['peak_tokens_per_s']:.0f} tokens/s at {report['roofline']['peak_shape']}"
          "  (eff: engine efficiency; ceil: a plain forward of one median document's share of the peak)")
    header = (f"{'task':<18}{'docs':>5}{'hf bs':>6}{'hf tok':>9}{'eng tok':>9}{'unique':>9}{'hf s':>8}{'eng s':>8}"
              f"{'x':>7}{'agree':>7}{'max|d|':>10}{'eff':>6}{'ceil':>6}")
    print(header)
    for name, r in rows.items():
        print(
            f"{name:<18}{r['docs']:>5}{r.get('hf_batch_size', ''):>6}{r['hf_tokens'] or 0:>9}{r['engine_tokens']:>9}"
            f"{r.get('unique_tokens', 0):>9}{r['hf_seconds']:>8.1f}{r['engine_seconds']:>8.1f}{r['speedup']:>7.2f}"
            f"{float('nan') if r['agreement'] is None else r['agreement']:>7.3f}{r.get('max_abs_delta_loglikelihood', 0.0):>10.2e}"
            f"{r.get('engine_efficiency', float('nan')):>6.2f}{r.get('plain_forward_efficiency_at_doc_length', float('nan')):>6.2f}"
        )
    if "whole_suite" in report:
        w = report["whole_suite"]
        print(f"whole suite ({', '.join(w['tasks'])}): {w['sampled']['speedup']:.2f}x time-weighted over "
              f"{w['sampled']['docs']} sampled documents; {w['projected_full']['speedup']:.2f}x projected to the full "
              f"splits (hf {w['projected_full']['hf_hours']:.1f} h, engine {w['projected_full']['engine_hours']:.1f} h)")
    for task, r in report["tasks"].items():
        if "audit_seconds" in r:
            delta = "" if r["audit_max_abs_diff"] is None else f", max |d| {r['audit_max_abs_diff']:.1e}"
            print(f"{task}: audit {r['audit_agree']}/{r['audit_n']} {r['audit_status']}{delta}, {r['audit_seconds']:.2f}s "
                  f"({r['audit_tokens']} plain tokens) = {r['audit_share']:.1%} of the engine's time here "
                  f"(speed-up {r['speedup_with_audit']:.2f}x with it, {r['speedup']:.2f}x without), "
                  f"{r['audit_share_projected_full']:.2%} "
                  f"projected to the full split")
    if "audit" in report.get("whole_suite", {}):
        a = report["whole_suite"]["audit"]
        print(f"audit: {a['share_sampled']:.1%} of the engine's time over the sampled documents, "
              f"{a['share_projected_full']:.2%} projected to the full splits")
    for task, r in report["tasks"].items():
        if "strict_match_engine" in r and r["agreement"] is not None:
            print(f"{task}: strict match engine {r['strict_match_engine']:.3f}, hf {r['strict_match_hf']:.3f}; "
                  f"identical texts {r['agreement']:.3f} (vs hf batch {r['reference_batch_size']})")
        for d in r["disagreements"]:
            print(f"  disagreement {task}: {d}")
    if "scaling" in report:
        for key, points in report["scaling"].items():
            print(f"scaling {key}: " + ", ".join(f"{p['questions']}q {p['seconds']:.1f}s ({p['seconds_per_question']:.2f}s/q)" for p in points))


if __name__ == "__main__":
    raise SystemExit(main())
