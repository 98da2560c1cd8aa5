"""lm-eval's own ``hf`` model with the leaderboard v1 settings: the reference backend.

v1 never prepended a BOS token (lm-eval 0.4.13 does by default), so ``add_bos_token=False``.
Everything else (tokenization of the context/continuation split, batching, stop handling)
is lm-eval's, which is the point: other backends are checked against this one.
"""
from __future__ import annotations

from typing import Any

from ..loading import ModelSource, load_transformers
from . import BackendOptions


def build(source: ModelSource, options: BackendOptions) -> Any:
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = load_transformers(source, options.dtype, options.device)
    return wrap_hf_model(model, tokenizer, options)


def wrap_hf_model(model: Any, tokenizer: Any, options: BackendOptions) -> Any:
    """An ``HFLM`` around an already-loaded transformers model (tests build tiny ones)."""
    from lm_eval.models.huggingface import HFLM

    batch_size = options.batch_size if options.batch_size != "auto" else 1
    return HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        max_gen_toks=options.max_gen_toks,
        add_bos_token=False,
        device=options.device,
        dtype=options.dtype,
    )
