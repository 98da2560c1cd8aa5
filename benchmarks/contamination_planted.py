"""Planted contamination: does ``evalsuite contamination`` find test questions a model trained on?

SmolLM2-135M (the reference) is copied and trained further on CPU for 300 steps on a mix of
50 ARC-Challenge *test* documents (the planted group) and 50 ARC *train* documents (so the
copy also learns the benchmark's style, and unseen test questions move too: the detector must
tell the exact documents from the distribution). 50 other test documents are never trained on
(the unseen group). Both groups are scored at several points of training with the same code
``evalsuite contamination`` runs (token log-probabilities through the engine, one forward per
document), and the script reports per score the AUC of planted against unseen and the flagged
rate of each group at the default rules, with bootstrap 95% intervals.

Controls: step 0 (the copy is the reference itself) must show no separation, and the
reference's own Min-K% must not separate the groups (they are a random split).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/contamination_planted.py --data-dir ../shared/data \
        --out benchmarks/results/contamination-planted.json     # the committed run: 25 min here

Writes only under --work-dir (default: a fresh folder under /tmp) and --out.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evalsuite.run import contamination as cm  # noqa: E402


def auc(positive: list[float], negative: list[float]) -> float:
    """P(score of a planted document > score of an unseen one), ties counted half."""
    pos, neg = np.asarray(positive, float), np.asarray(negative, float)
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def train(model, tokenizer, texts: list[str], steps: int, lr: float, batch: int, seed: int,
          checkpoints: set[int], on_checkpoint) -> list[float]:
    """Next-token loss on whole documents (EOS in front, as they are scored), AdamW, CPU."""
    import torch

    rng = random.Random(seed)
    eos = tokenizer.eos_token_id
    encoded = [[eos, *ids] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for step in range(1, steps + 1):
        model.train()
        rows = [encoded[rng.randrange(len(encoded))] for _ in range(batch)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), eos)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            labels[i, 1:len(row)] = torch.tensor(row[1:])
            mask[i, :len(row)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        if step % 25 == 0:
            print(f"step {step}/{steps}: loss {np.mean(losses[-25:]):.3f}", flush=True)
        if step in checkpoints:
            model.eval()
            on_checkpoint(step)
    model.eval()
    return losses


def group_stats(scores: list[cm.DocumentScore], planted: set[int], score: str, higher_flags: bool) -> dict:
    pos = [s.value(score) for s in scores if s.document.doc_index in planted]
    neg = [s.value(score) for s in scores if s.document.doc_index not in planted]
    a = auc(pos, neg)
    return {"auc": round(a if higher_flags else 1 - a, 4),
            "planted_mean": round(float(np.mean(pos)), 4), "unseen_mean": round(float(np.mean(neg)), 4)}


def flag_rates(scores: list[cm.DocumentScore], planted: set[int], rule: cm.Rule) -> dict:
    out = {}
    for name, group in (("planted", [s for s in scores if s.document.doc_index in planted]),
                        ("unseen", [s for s in scores if s.document.doc_index not in planted])):
        flags = [rule.flags(s.value(rule.score)) for s in group]
        low, high = cm.bootstrap_interval(flags)
        out[name] = {"flagged": int(sum(flags)), "n": len(flags), "rate": round(float(np.mean(flags)), 4),
                     "ci95": [round(low, 4), round(high, 4)]}
    return {"rule": rule.text, **out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "contamination-planted.json")
    parser.add_argument("--work-dir", type=Path, help="scratch folder (default: a new one under /tmp)")
    parser.add_argument("--planted", type=int, default=50)
    parser.add_argument("--unseen", type=int, default=50)
    parser.add_argument("--train-docs", type=int, default=50, help="ARC train documents mixed into training")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--checkpoints", default="100,200", help="steps (besides 0 and the last) to score at")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--neighbours", type=int, default=10,
                        help=f"per document (default 10 to fit a shared CPU; the method uses {cm.DEFAULT_NEIGHBOURS})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared, busy CPU more threads spin and run slower)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)

    from evalsuite.backends import BackendOptions
    from evalsuite.backends.engine import wrap_model
    from evalsuite.models.loading import load_transformers
    from evalsuite.models.source import resolve_and_materialize

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="contamination-planted-"))
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    clock = time.perf_counter()

    test_docs = cm.load_documents("arc", args.data_dir)
    rng = random.Random(args.seed)
    chosen = rng.sample(test_docs, args.planted + args.unseen)
    planted_docs, unseen_docs = chosen[:args.planted], chosen[args.planted:]
    planted = {d.doc_index for d in planted_docs}
    docs = planted_docs + unseen_docs
    train_texts = _train_texts(args.data_dir, args.train_docs, rng)
    training = [d.text for d in planted_docs] + train_texts
    print(f"{len(planted_docs)} planted + {len(train_texts)} train-split documents in training; "
          f"{len(unseen_docs)} unseen test documents", flush=True)

    source = resolve_and_materialize("smollm2")
    options = BackendOptions(device="cpu", dtype="float32")
    ref_model, tokenizer = load_transformers(source, "float32", "cpu")
    reference = wrap_model(ref_model, tokenizer, options)
    ref_scores = cm.score_documents(reference, docs)
    target_model, _ = load_transformers(source, "float32", "cpu")
    target = wrap_model(target_model, tokenizer, options)
    results: dict = {"checkpoints": {}}
    last = args.steps
    kept: dict[int, list[cm.DocumentScore]] = {}

    def evaluate(step: int, lm=target) -> None:
        """Min-K% family at a checkpoint (cheap); neighbour ranks come after training."""
        t0 = time.perf_counter()
        if hasattr(lm, "forget"):  # the engine's kept trunks predate the weight update
            lm.forget()
        scores = kept[step] = cm.score_documents(lm, docs)
        cm.add_reference(scores, ref_scores)
        entry: dict = {"step": step, "exposures_per_planted_doc": round(step * args.batch / len(training), 2),
                       "scores": {
                           "min_k": group_stats(scores, planted, "min_k", True),
                           "min_k_delta": group_stats(scores, planted, "min_k_delta", True),
                           "mean_logprob": group_stats(scores, planted, "mean_logprob", True),
                       },
                       "flag_rates": {
                           "min_k_delta": flag_rates(scores, planted, cm.default_rule(True, 0)),
                           "min_k": flag_rates(scores, planted, cm.default_rule(False, 0)),
                       },
                       "seconds": round(time.perf_counter() - t0, 1)}
        results["checkpoints"][str(step)] = entry
        print(json.dumps(entry), flush=True)
        _write(args, results, planted_docs, unseen_docs, ref_scores, planted, clock, work)

    def neighbour_pass(step: int, lm, neighbours: list[list[str]]) -> None:
        """The card's score at a checkpoint from the reference's neighbours."""
        t0 = time.perf_counter()
        scores = kept[step]
        cm.add_neighbour_ranks(lm, scores, neighbours)
        entry = results["checkpoints"][str(step)]
        entry["scores"]["neighbour_rank"] = group_stats(scores, planted, "neighbour_rank", False)
        entry["flag_rates"]["neighbour_rank"] = flag_rates(scores, planted, cm.default_rule(True, args.neighbours))
        entry["neighbour_seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({"step": step, "neighbour_rank": entry["flag_rates"]["neighbour_rank"]}), flush=True)
        _write(args, results, planted_docs, unseen_docs, ref_scores, planted, clock, work)

    # the Min-K% family through training (cheap), then the card's neighbour test at the end
    steps = {int(x) for x in args.checkpoints.split(",") if x} | {last}
    results["train_losses"] = train(target_model, tokenizer, training, args.steps, args.lr, args.batch, args.seed,
                                    steps, evaluate)
    evaluate(0, reference)  # the control: the untrained copy is the reference itself
    results["checkpoints"] = dict(sorted(results["checkpoints"].items(), key=lambda kv: int(kv[0])))
    t = time.perf_counter()
    neighbours = _neighbours(reference, docs, args.neighbours, work)
    results["neighbour_sampling_seconds"] = round(time.perf_counter() - t, 1)
    neighbour_pass(last, target, neighbours)
    neighbour_pass(0, reference, neighbours)
    print(f"written {args.out}", flush=True)
    return 0


def _neighbours(reference, docs, count: int, work: Path) -> list[list[str]]:
    """The reference's neighbours of every document, kept in the work folder for reruns."""
    path = work / f"neighbours-{count}-{cm.SEED}.json"
    keys = [d.text_hash for d in docs]
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved["keys"] == keys:
            return saved["neighbours"]
    neighbours = cm.neighbours_for(reference, docs, count, progress=True)
    path.write_text(json.dumps({"keys": keys, "neighbours": neighbours}), encoding="utf-8")
    return neighbours


def _train_texts(data_dir: str, count: int, rng: random.Random) -> list[str]:
    """ARC train-split documents in the same text form (question + gold answer)."""
    path = Path(data_dir) / "allenai__ai2_arc" / "ARC-Challenge" / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [cm.document_text("arc", row) for row in rng.sample(rows, min(count, len(rows)))]


def _write(args, results, planted_docs, unseen_docs, ref_scores, planted, clock, work) -> None:
    control = {"reference_min_k": group_stats(ref_scores, planted, "min_k", True)}
    payload = {
        "what": "SmolLM2-135M-Instruct (reference) vs a copy trained further on 50 ARC-Challenge test documents "
                "mixed with ARC train documents; AUC planted vs unseen, flag rates per group",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} CPU, {platform.python_version()}",
        "settings": {"threads": args.threads, "planted": len(planted_docs), "unseen": len(unseen_docs), "train_docs": args.train_docs,
                     "steps": args.steps, "batch": args.batch, "lr": args.lr, "neighbours": args.neighbours,
                     "k": cm.DEFAULT_K, "prefix_ratio": cm.PREFIX_RATIO, "seed": args.seed,
                     "document_text": "question + ' ' + gold answer text"},
        "control": control,
        **results,
        "planted_doc_indices": sorted(planted),
        "unseen_doc_indices": sorted(d.doc_index for d in unseen_docs),
        "wall_time_s": round(time.perf_counter() - clock, 1),
        "work_dir": str(work),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
