"""The ``evalsuite`` backend: lm-eval's ``LM`` interface scored over a prefix tree.

Files, one job each:

* :mod:`.prefix_tree`: the trie of the requests' token ids, scored positions on its nodes;
* :mod:`.planner`: pure Python, the tree and budgets -> forward passes (no torch, no model);
* :mod:`.executors`: how a planned forward runs (CPU tree attention, or the model's own
  attention over a cache), chosen once per engine; :mod:`.tree_attention` is the CPU kernel;
* :mod:`.capabilities`: which fast paths are exact for the loaded model (inspection + probe);
* :mod:`.decisions`: that decision remembered per model content and engine code;
* :mod:`.memory`: the token budget from free memory, out-of-memory recognised and named;
* :mod:`.plain`: the always-exact floor, the model's own full forward per distinct input;
* :mod:`.scoring`: log-probabilities at the scored positions only;
* :mod:`.generation`: greedy generation, batched or exactly one prompt at a time;
* :mod:`.lm`: ``EngineLM``, lm-eval's ``TemplateLM`` tying them together;
* :mod:`.tokenize`: the same pair split in one batched call, for counting plans fast.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from evalsuite.backends.engine.planner import DEFAULT_TOKEN_BUDGET, FOLD_TRUNK, FORWARD_COST, SMALL_ROW, TRUNK_MEMORY, Budgets, PlanSummary
from evalsuite.backends.engine.tokenize import plan_requests

if TYPE_CHECKING:
    from evalsuite.models.identity import ModelSource
    from evalsuite.backends import BackendOptions
    from evalsuite.backends.engine.lm import EngineLM, EngineStats, TokenLogprobs

_LAZY = {"EngineLM", "EngineStats", "TokenLogprobs"}


def __getattr__(name: str) -> Any:
    """The model-side classes import torch; the planner and ``plan_requests`` do not."""
    if name in _LAZY:
        from evalsuite.backends.engine import lm

        return getattr(lm, name)
    raise AttributeError(name)

__all__ = ["EngineLM", "EngineStats", "TokenLogprobs", "PlanSummary", "Budgets", "DEFAULT_TOKEN_BUDGET", "FOLD_TRUNK",
           "FORWARD_COST", "SMALL_ROW", "TRUNK_MEMORY", "build", "wrap_model", "plan_requests"]


def build(source: ModelSource, options: BackendOptions) -> EngineLM:
    """The engine for a model source, loaded with the options' dtype on the options' device."""
    from evalsuite.models.loading import load_transformers

    model, tokenizer = load_transformers(source, options.dtype, options.device)
    # the capability decision is remembered per model content (:mod:`.decisions`)
    return wrap_model(model, tokenizer, options, decision_key=f"{source.identity}|{source.files_hash or ''}")


def wrap_model(model: Any, tokenizer: Any, options: BackendOptions, **kwargs: Any) -> EngineLM:
    """The engine around an already-loaded transformers causal LM (tests build tiny ones)."""
    from evalsuite.backends.engine.lm import EngineLM

    return EngineLM(model, tokenizer, options, **kwargs)
