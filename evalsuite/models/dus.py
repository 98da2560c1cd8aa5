"""Depth up-scaling (DUS), the SOLAR recipe (leaderboard-v1.md §7), for any Llama-style base.

Take an n-layer decoder, copy it, drop the LAST m layers of copy A and the FIRST m layers
of copy B, and stack ``A[0:n-m] ++ B[m:n]``: 2(n - m) layers. Embeddings, final norm and
output layer come once from the base. No training happens here: the up-scaled model starts
below its base and SOLAR recovers it with continued pretraining (recipe unconfirmed).

Layers are deep copies, so the two halves can be trained apart later; each copy gets its new
index written into ``layer_idx`` (the key/value cache is addressed by it, so a stale index
makes two layers overwrite each other's cache) and ``config.layer_types`` follows the map.

The base comes in resolved (a :class:`ModelSource`, or a config for the dry run): turning a name
into a source is :mod:`evalsuite.models.source`'s job, which builds ``dus:BASE:M`` models through
:func:`build_cached`, so this module never imports it back.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evalsuite.errors import EvalsuiteError
from evalsuite.fsutil import cache_dir, check_output, file_sha256, note_output, replace_dir
from evalsuite.models.identity import ModelSource
from evalsuite.models.loading import load_transformers
from evalsuite.models.memory import check_fits
from evalsuite.models.registry import DUS_SPEC

#: Decoder families whose blocks live in ``model.model.layers``, each block self-contained
#: (attention + MLP + norms) and addressed by ``layer_idx``; per-layer config is only
#: ``layer_types``. Other families (Gemma's scaled embeddings, Phi's fused projections, MoE
#: routers with per-layer settings, encoders) are refused rather than silently mis-built.
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})

CONFIGS_DIR = Path(__file__).parent.parent / "configs"
#: Configs shipped with evalsuite, so a dry run of the paper's base works offline.
SHIPPED_CONFIGS = {
    "mistral": CONFIGS_DIR / "mistral-7b-v0.1.json",
    "mistralai/Mistral-7B-v0.1": CONFIGS_DIR / "mistral-7b-v0.1.json",
}


class DusError(EvalsuiteError):
    """A depth up-scaling request that cannot be built as asked."""


@dataclass
class DusReport:
    """What a build did: enough to print, and saved as ``dus.json`` beside the weights."""

    base: str
    model_type: str
    overlap: int
    layers_before: int
    layers_after: int
    params_before: int
    params_after: int
    layer_map: list[int]
    dry_run: bool
    out_dir: str | None = None
    dtype: str | None = None
    base_identity: str | None = None
    base_files_hash: str | None = None
    notes: list[str] = field(default_factory=list)
    recovery: dict[str, Any] | None = None

    @property
    def layer_map_text(self) -> str:
        return describe_map(self.layers_before, self.overlap)

    def lines(self) -> list[str]:
        """The human summary the CLI prints."""
        where = "dry run, nothing written" if self.dry_run else f"wrote {self.out_dir}"
        return [
            f"base        {self.base} ({self.model_type}), overlap m = {self.overlap}",
            f"layer map   {self.layer_map_text}",
            f"layers      {self.layers_before} -> {self.layers_after}",
            f"parameters  {self.params_before:,} -> {self.params_after:,}",
            f"output      {where}",
        ] + [f"recovery    {note}" for note in self.notes]


def layer_map(n: int, overlap: int) -> list[int]:
    """Base layer index for each new layer i: ``A[0:n-m] ++ B[m:n]``."""
    check_overlap(n, overlap)
    return list(range(0, n - overlap)) + list(range(overlap, n))


def check_overlap(n: int, overlap: int) -> None:
    """DUS needs 0 <= m < n: m = n would leave no layers at all."""
    if n < 1:
        raise DusError(f"the base has {n} layers; depth up-scaling needs a decoder with at least one layer")
    if not 0 <= overlap < n:
        raise DusError(f"overlap {overlap} is out of range for a {n}-layer base; give an --overlap from 0 to {n - 1}")


def describe_map(n: int, overlap: int) -> str:
    """The map in one line, e.g. ``new 0-21 <- A 0-21; new 22-43 <- B 8-29``."""
    check_overlap(n, overlap)
    half = n - overlap
    return f"new {_span(0, half)} <- A {_span(0, half)}; new {_span(half, 2 * half)} <- B {_span(overlap, n)}"


def _span(start: int, stop: int) -> str:
    return str(start) if stop - start == 1 else f"{start}-{stop - 1}"


def check_config(config: Any) -> None:
    """Refuse, from the config alone, models whose layers DUS cannot stack safely."""
    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False) or model_type not in SUPPORTED_MODEL_TYPES:
        raise DusError(
            f"depth up-scaling supports decoder-only {', '.join(sorted(SUPPORTED_MODEL_TYPES))} models, "
            f"not model_type '{model_type}'; pick a Llama/Mistral-family base"
        )


def decoder_layers(model: Any) -> Any:
    """``model.model.layers``, where every supported family keeps its decoder blocks."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not hasattr(layers, "__len__"):
        raise DusError(
            f"{type(model).__name__} has no model.model.layers; give a causal LM (e.g. LlamaForCausalLM), not a bare or encoder model"
        )
    return layers


def upscale(model: Any, overlap: int) -> Any:
    """A new model of 2(n - m) deep-copied layers; ``model`` itself is left untouched.

    Works on the meta device too (no weights), which is how ``--dry-run`` counts parameters.
    """
    import torch.nn as nn

    check_config(model.config)
    layers = decoder_layers(model)
    n = len(layers)
    mapping = layer_map(n, overlap)
    new_config = copy.deepcopy(model.config)
    new_config.num_hidden_layers = len(mapping)
    if getattr(new_config, "layer_types", None) is not None:
        new_config.layer_types = [model.config.layer_types[j] for j in mapping]

    # Copy the shell (embeddings, norm, head, rotary) without the layers, then the layers one
    # by one, each pointing at the new config rather than at a private copy of the old one.
    model.model.layers = nn.ModuleList()
    try:
        new = copy.deepcopy(model, memo={id(model.config): new_config})
    finally:
        model.model.layers = layers
    new.config = new_config
    new.model.layers = nn.ModuleList(
        copy.deepcopy(layers[j], memo={id(model.config): new_config}) for j in mapping
    )
    for i, layer in enumerate(new.model.layers):
        _renumber(layer, i)
    return new


def _renumber(layer: Any, index: int) -> None:
    """Set ``layer_idx`` on the block and every submodule that has one (attention, cache users)."""
    for module in layer.modules():
        if isinstance(getattr(module, "layer_idx", None), int):
            module.layer_idx = index


def count_params(model: Any) -> int:
    """Distinct parameters (a tied output layer counts once), as the paper's 10.7B does."""
    return sum(p.numel() for p in model.parameters())


# --- from a config or a resolved base -------------------------------------------------------


def dry_run_report(config: Any, name: str, overlap: int, trust_remote_code: bool = False) -> DusReport:
    """Build on the meta device from the base's config alone: layer and parameter counts, no weights."""
    import torch
    from transformers import AutoModelForCausalLM

    check_config(config)
    check_overlap(config.num_hidden_layers, overlap)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    new = upscale(model, overlap)
    return _report(name, model, new, overlap, dry_run=True)


def _report(base: str, model: Any, new: Any, overlap: int, **extra: Any) -> DusReport:
    n = model.config.num_hidden_layers
    return DusReport(
        base=base,
        model_type=model.config.model_type,
        overlap=overlap,
        layers_before=n,
        layers_after=new.config.num_hidden_layers,
        params_before=count_params(model),
        params_after=count_params(new),
        layer_map=layer_map(n, overlap),
        **extra,
    )


def check_request(out_dir: str | Path | None, recover_text: str | Path | None, recover_steps: int) -> None:
    """Refuse a build without an output folder, or recovery without its text, before any weight loads."""
    if out_dir is None:
        raise DusError("no output folder; pass --out DIR (or use --dry-run)")
    check_output(out_dir, "--out", folder=True)  # never replaces a folder evalsuite did not write
    if recover_steps and (recover_text is None or not Path(recover_text).is_file()):
        raise DusError(f"recovery needs text: pass --recover-text FILE, an existing plain-text file that is not benchmark data (got {recover_text})")


def build(
    base: ModelSource,
    overlap: int,
    out_dir: str | Path | None,
    *,
    name: str | None = None,
    dtype: str | None = None,
    recover_text: str | Path | None = None,
    recover_steps: int = 0,
) -> DusReport:
    """Up-scale a resolved base and save it as an HF checkpoint; ``name`` is how the user named
    the base (default: its alias), recorded in the report.

    ``dtype`` defaults to the registry's dtype for the base (what the leaderboard ran). The
    checkpoint is written to a temporary folder and moved into place, so a crash never leaves
    a half-written model that a later run would take for a finished one. ``recover_steps`` > 0
    runs a few continued-pretraining steps on ``recover_text`` (see :func:`recover`) first.
    The base's remote code and weights identity were settled when it was materialized
    (``--trust-remote-code``, ``--verify-weights``: :func:`evalsuite.models.source.materialize`).
    """
    check_request(out_dir, recover_text, recover_steps)
    assert out_dir is not None
    dtype = dtype or base.spec.dtype
    config = load_config_from_source(base)
    check_config(config)
    check_overlap(config.num_hidden_layers, overlap)
    if base.spec.params:  # base and up-scaled copy are both in memory while building
        grown = base.spec.params * (2 * (config.num_hidden_layers - overlap)) // config.num_hidden_layers
        check_fits(base.spec, dtype, "cpu", params=base.spec.params + grown)
    model, tokenizer = load_transformers(base, dtype, "cpu")
    new = upscale(model, overlap)
    report = _report(
        name or base.spec.alias, model, new, overlap, dry_run=False, out_dir=str(Path(out_dir).absolute()),
        dtype=dtype, base_identity=base.identity, base_files_hash=base.files_hash,
    )
    del model
    if recover_steps:
        assert recover_text is not None
        result = recover(new, tokenizer, Path(recover_text).read_text(), steps=recover_steps)
        report.recovery = {"text": str(Path(recover_text).absolute()), "text_sha256": file_sha256(Path(recover_text)),
                           **asdict(result)}
        report.notes.append(result.summary())
    save_atomically(new, tokenizer, Path(out_dir), report)
    return report


def load_config_from_source(source: ModelSource) -> Any:
    from transformers import AutoConfig

    from evalsuite.models.registry import check_remote_code

    if Path(source.path).is_dir():
        check_remote_code(source.path, source.spec.trust_remote_code, source.spec.source)
    try:
        return AutoConfig.from_pretrained(source.path, revision=source.revision,
                                          trust_remote_code=bool(source.spec.trust_remote_code))
    except OSError:
        raise DusError(f"cannot read the config of {source.path}; give a local model folder or a config.json path") from None


def save_atomically(model: Any, tokenizer: Any, target: Path, report: DusReport) -> None:
    """Save into a sibling temp folder, then move it onto ``target`` (:func:`fsutil.replace_dir`)."""
    target = target.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise DusError(f"{target} exists and is not a folder; pass another --out")
    replacing = check_output(target, "--out", folder=True)  # again, just before: nothing foreign is removed

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        (folder / "dus.json").write_text(json.dumps(asdict(report), indent=1) + "\n")
        note_output(folder, folder=True)  # last: the record of what evalsuite wrote there

    if replacing:
        print(f"evalsuite: {replacing}", file=sys.stderr, flush=True)
    replace_dir(target, save)


# --- optional recovery -------------------------------------------------------------------------


@dataclass
class RecoveryResult:
    """Held-out loss before and after: the honest measure of whether the steps helped."""

    steps: int
    lr: float
    seq_len: int
    batch_size: int
    train_blocks: int
    heldout_blocks: int
    heldout_loss_before: float
    heldout_loss_after: float
    train_losses: list[float]

    def summary(self) -> str:
        return (f"{self.steps} steps on {self.train_blocks} blocks of {self.seq_len} tokens: held-out loss "
                f"{self.heldout_loss_before:.3f} -> {self.heldout_loss_after:.3f}")


def recover(
    model: Any, tokenizer: Any, text: str, steps: int, lr: float = 1e-4, seq_len: int = 128, batch_size: int = 4,
    seed: int = 0,
) -> RecoveryResult:
    """A few continued-pretraining steps (AdamW, next-token loss) on CPU, in place.

    SOLAR's recipe (data, tokens, schedule) is unconfirmed, so this is no reproduction of it:
    it only smooths the seam between the two copies a little. The text must not be benchmark
    data (that would leak into the scores); every tenth block is held out, and the held-out
    loss before and after is reported so that a run that did not help shows it.
    """
    import torch

    if steps < 1:
        raise DusError(f"recovery steps must be at least 1, got {steps}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    blocks = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
    heldout = blocks[9::10] or blocks[-1:]
    train = [b for i, b in enumerate(blocks) if i % 10 != 9] if len(blocks) >= 10 else blocks[:-1]
    if not train:
        raise DusError(
            f"recovery text has {len(ids)} tokens, too few for two blocks of {seq_len}; give a longer --recover-text file"
        )
    dtype = next(model.parameters()).dtype
    model.float()

    def heldout_loss() -> float:
        model.eval()
        with torch.no_grad():
            losses = [model(torch.tensor([b]), labels=torch.tensor([b]), use_cache=False).loss.item() for b in heldout]
        return sum(losses) / len(losses)

    before = heldout_loss()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    train_losses = []
    for _ in range(steps):
        pick = torch.randint(len(train), (min(batch_size, len(train)),), generator=generator)
        batch = torch.tensor([train[i] for i in pick.tolist()])
        loss = model(batch, labels=batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        train_losses.append(round(loss.item(), 4))
    after = heldout_loss()
    model.to(dtype)
    return RecoveryResult(steps, lr, seq_len, batch_size, len(train), len(heldout), before, after, train_losses)


# --- the loader's entry point ---------------------------------------------------------------


def parse_spec(spec: str) -> tuple[str, int]:
    """``dus:BASE:M`` -> (BASE, M)."""
    match = DUS_SPEC.match(spec.strip())
    if not match:
        raise DusError(f"bad DUS spec '{spec}'; write dus:BASE:M, e.g. dus:smollm2:8")
    return match["base"], int(match["overlap"])


def cached_folder(base: ModelSource, overlap: int, name: str) -> Path:
    """Where :func:`build_cached` keeps the build of base ``name`` (as the user wrote it) with
    ``overlap``: the folder name carries :func:`build_key` of the base."""
    return cache_dir() / "dus" / f"{safe_name(name)}-m{overlap}-{build_key(base)[:16]}"


def build_cached(base: ModelSource, overlap: int, name: str) -> Path:
    """The folder of the up-scaled model of ``base`` (named ``name`` in ``dus:NAME:M``), built
    once per base content.

    The folder name carries a hash of the base's identity as the request cache keys it: the
    weights (hash, or Hub commit) AND the other files (config, tokenizer, generation config,
    code). A base whose weights or config changed gets a new build instead of a stale one under
    the same name; the same base reuses its build. Weight hashes follow the size + mtime rule
    of :func:`evalsuite.models.identity.weights_hash` unless ``--verify-weights``.
    """
    target = cached_folder(base, overlap, name)
    if (target / "config.json").is_file():
        return target
    print(f"evalsuite: building dus:{name}:{overlap} once into {target}", flush=True)
    build(base, overlap, target, name=name, dtype=base.spec.dtype)
    return target


def build_key(source: Any) -> str:
    """sha256 over the base's weights identity and files hash (what a DUS build depends on)."""
    return hashlib.sha256(json.dumps([source.identity, source.files_hash]).encode()).hexdigest()


def safe_name(name: str) -> str:
    """A file-name-safe form of a model name (``org/model`` -> ``org--model``)."""
    path = Path(os.path.expanduser(name))
    if path.suffix == ".gguf" or path.exists():
        name = path.resolve().stem if path.suffix == ".gguf" else path.resolve().name
    name = name.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "base"
