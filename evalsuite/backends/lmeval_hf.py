"""lm-eval's own ``hf`` model with the leaderboard v1 settings: the reference backend.

v1 never prepended a BOS token (lm-eval 0.4.13 does by default), so ``add_bos_token=False``;
an empty context was ``[eos_token_id]`` (0.4.13 uses BOS), so ``prefix_token_id`` is the EOS id;
v1 took the log-softmax in float32 for models whose class upcast their logits then
(:func:`evalsuite.compat.v1_logits_dtype`), so ``softmax_dtype`` follows it. Everything else (tokenization of the context/continuation split, batching, stop handling)
is lm-eval's, which is the point: other backends are checked against this one.
"""
from __future__ import annotations

from typing import Any

from evalsuite.models.identity import ModelSource
from evalsuite.models.loading import load_transformers
from evalsuite.backends import BackendOptions


def build(source: ModelSource, options: BackendOptions) -> Any:

    model, tokenizer = load_transformers(source, options.dtype, options.device)
    return wrap_hf_model(model, tokenizer, options)


def wrap_hf_model(model: Any, tokenizer: Any, options: BackendOptions) -> Any:
    """An ``HFLM`` around an already-loaded transformers model (tests build tiny ones)."""
    from lm_eval.models.huggingface import HFLM

    from evalsuite.compat import v1_logits_dtype

    batch_size = options.batch_size if options.batch_size != "auto" else 1
    logits_dtype = v1_logits_dtype(model)
    return HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        max_gen_toks=options.max_gen_toks,
        add_bos_token=False,
        prefix_token_id=tokenizer.eos_token_id,
        softmax_dtype=logits_dtype if logits_dtype != next(model.parameters()).dtype else None,
        device=options.device,
        dtype=options.dtype,
    )
