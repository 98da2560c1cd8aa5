"""The private transformers, lm-eval and torch internals evalsuite relies on, in one place.

Why one module: these are not public APIs, so a new release may move or change them. Each
below is reached only through a function here, and the versions this was written and tested against are
checked by :func:`check_versions`, with a one-line error naming the supported range, where they are
about to be used: when a task's prompts are built from lm-eval's configs
(:class:`~evalsuite.tasks.lm_adapter.LoadedTask`), when a backend is built, and in the dry run. Not at
import: reading stored results uses none of them and works whatever version is installed. When a new release
breaks one of them, this file is where to look.

What is reached, and why:

* ``transformers.cache_utils.DynamicLayer.lazy_initialization`` and ``DynamicCache.layers``: a
  cache made from keys and values the engine computed earlier (a shared few-shot trunk);
* ``config._attn_implementation``: routing one forward pass through the engine's own attention
  function (``AttentionInterface`` is public, the switch is not);
* ``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu``: the CPU attention kernel that
  also returns the log-sum-exp, which exact merging of two attentions needs;
* ``GenerationMixin._prepare_generation_config`` / ``_prepare_special_tokens`` /
  ``_get_logits_processor``: the logits processors ``generate(do_sample=False)`` would apply;
* ``lm_eval.tasks._yaml_loader.load_yaml`` and ``lm_eval.utils.apply_template``: lm-eval's
  task YAML loader, and its template renderer (patched, for the duration of prompt building
  only, to reuse compiled templates).

Not routed through here, and covered by the same version check: attention modules'
``layer_idx`` and the extra forward keyword arguments transformers passes on to a registered
attention function (the engine's ``tree_attention.py`` and ``generation.py``);
``TemplateLM._encode_pair``, which ``EngineLM`` inherits, and lm-eval's
``handle_stop_sequences``/``normalize_gen_kwargs`` (``generation.py``).
"""
from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache, lru_cache
from importlib.metadata import version as _installed_version
from typing import Any

from evalsuite.errors import EvalsuiteError

#: (minimum inclusive, maximum exclusive) release of each library this module was written for.
#: transformers 4.56 introduced ``DynamicCache.layers``/``DynamicLayer``; tested on 5.24.
SUPPORTED = {"transformers": ("4.56", "6"), "lm_eval": ("0.4.13", "0.4.14")}


def _version_tuple(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if not piece.isdigit():  # 5.0.0rc1: stop after the number part
            break
    return tuple(parts)


def check_versions(installed: dict[str, str] | None = None) -> None:
    """Raise one line naming the supported range when an installed version is outside it."""
    for package, (low, high) in SUPPORTED.items():
        found = (installed or {}).get(package) or _installed_version(package.replace("_", "-"))
        if not (_version_tuple(low) <= _version_tuple(found) < _version_tuple(high)):
            raise EvalsuiteError(
                f"evalsuite needs {package}>={low},<{high} (it reaches internals that change between releases; "
                f"see evalsuite/compat.py) but {found} is installed: pip install '{package}>={low},<{high}'"
            )



# --------------------------------------------------------------------------- attention
def cpu_flash_attention() -> Any | None:
    """torch's CPU flash-attention op returning ``(out, lse, ...)``, or None where this torch lacks it."""
    import torch

    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def attention_implementation(model: Any) -> str | None:
    return getattr(model.config, "_attn_implementation", None)


def routes_attention_through_registry(model: Any) -> bool:
    """Whether the model's layers look up their attention function in transformers' registry."""
    return bool(getattr(model, "_supports_attention_backend", False))


@cache
def register_attention(name: str, function: Any) -> None:
    """Make ``name`` a transformers attention implementation (once per process and name)."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, function)


@contextmanager
def attention(model: Any, name: str) -> Iterator[None]:
    """Route ``model``'s attention through the registered ``name`` for the duration; the previous
    implementation is always put back (the same model object may serve other backends)."""
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


# --------------------------------------------------------------------------- caches
def new_cache() -> Any:
    from transformers import DynamicCache

    return DynamicCache()


def cache_from_layers(layers: list[tuple[Any, Any]]) -> Any:
    """A ``DynamicCache`` holding the given per-layer ``(keys, values)`` as its past."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    for keys, values in layers:
        layer = DynamicLayer()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        cache.layers.append(layer)
    return cache


def cache_layers(cache: Any) -> list[tuple[Any, Any]]:
    """Per-layer ``(keys, values)`` of a ``DynamicCache``."""
    return [(layer.keys, layer.values) for layer in cache.layers]


@cache
def _cache_keyword(forward: Any) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def cache_keyword(module: Any) -> str:
    """The forward keyword of the cache: transformers 5 renamed ``past_key_values`` to ``cache``."""
    return _cache_keyword(type(module).forward)


# --------------------------------------------------------------------------- generation
def greedy_logits_processors(model: Any, prompt_length: int, max_new_tokens: int, device: Any) -> tuple[Any, list[int]]:
    """What ``model.generate(do_sample=False, max_new_tokens=...)`` would apply to a prompt of
    ``prompt_length`` tokens: its ``LogitsProcessorList`` and the EOS ids that end a sequence.

    Refuses (``EvalsuiteError``) a generation config that makes ``generate`` leave greedy
    decoding (beam search, contrastive search, sampling-only settings aside, which do not apply).
    """
    import copy

    base = getattr(model, "generation_config", None)
    if base is None:
        from transformers import GenerationConfig

        base = GenerationConfig.from_model_config(model.config)
    # HFLM and v1 pass max_length = prompt + new tokens (ForcedEOS and MinLength read it)
    asked = copy.deepcopy(base)
    asked.do_sample, asked.max_length, asked.max_new_tokens = False, prompt_length + max_new_tokens, None
    config, _ = model._prepare_generation_config(asked)
    mode = str(config.get_generation_mode())
    if "greedy" not in mode.lower():
        raise EvalsuiteError(
            f"the model's generation_config makes generate(do_sample=False) use {mode} (num_beams="
            f"{config.num_beams}, penalty_alpha={getattr(config, 'penalty_alpha', None)}); the evalsuite engine "
            f"decodes greedily: use --backend lm-eval-hf"
        )
    model._prepare_special_tokens(config, True, device=device, batch_size=1)
    processors = model._get_logits_processor(
        generation_config=config, input_ids_seq_length=prompt_length, encoder_input_ids=None, device=device,
        model_kwargs={},
    )
    eos = config._eos_token_tensor
    eos_ids = [] if eos is None else [int(x) for x in eos.reshape(-1).tolist()]
    return processors, eos_ids


# --------------------------------------------------------------------------- scoring dtype
#: Model types whose transformers causal-LM class cast its logits to float32 in the transformers
#: the leaderboard ran (4.3x). transformers >= 4.45 returns logits in the weights' dtype from
#: every built-in class, so a probe of today's forward cannot show what those classes did then;
#: remote code (Qwen v1) is the code v1 ran, and its probe is the truth.
V1_UPCASTING_MODEL_TYPES = frozenset({"llama", "mistral", "mixtral"})


def v1_logits_dtype(model: Any) -> Any:
    """The dtype v1 took log-softmax in: the dtype the model's forward returns (probed once on one
    token), float32 for built-in classes that upcast in v1's transformers."""
    import torch

    weights = model.get_output_embeddings().weight.dtype
    if weights == torch.float32:
        return torch.float32
    device = next(model.parameters()).device
    with torch.inference_mode():
        probe = model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False).logits.dtype
    if probe != weights:
        return probe  # the class upcasts itself
    builtin = type(model).__module__.startswith("transformers.")
    if builtin and getattr(model.config, "model_type", None) in V1_UPCASTING_MODEL_TYPES:
        return torch.float32
    return weights


# --------------------------------------------------------------------------- tokenizers
def tokenizer_sets_cleanup(tokenizer: Any) -> bool:
    """Whether the tokenizer's own config states ``clean_up_tokenization_spaces``."""
    return "clean_up_tokenization_spaces" in (getattr(tokenizer, "init_kwargs", None) or {})


def clean_up_like_period_transformers(tokenizer: Any) -> bool:
    """Decode as transformers 4.3x did when the tokenizer config does not say: with
    ``clean_up_tokenization_spaces=True`` (" ." -> "." and the like), BPE tokenizers included
    (transformers 5 skips it for BPE unless told). Returns whether it changed the tokenizer."""
    if tokenizer_sets_cleanup(tokenizer):
        return False
    tokenizer.clean_up_tokenization_spaces = True
    # transformers 5's switch to apply it to BPE tokenizers as well (older releases always did)
    tokenizer.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = True
    return True


# --------------------------------------------------------------------------- lm-eval
def load_lm_eval_yaml(path: Any) -> dict[str, Any]:
    """lm-eval's own task YAML loader (resolves its ``!function`` tags)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(path)


_TEMPLATE_LOCK = threading.RLock()
_template_depth = 0


_PLAIN_FIELD = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@lru_cache(maxsize=256)
def _plain_field(template: str) -> str | None:
    """``name`` if the template is exactly ``{{name}}`` (HellaSwag's ``{{query}}``): looked up
    directly instead of rendered (a third of building HellaSwag's 10,042 prompts)."""
    match = _PLAIN_FIELD.fullmatch(template)
    return match.group(1) if match else None


@contextmanager
def compiled_templates() -> Iterator[None]:
    """For the duration, lm-eval renders prompts with compiled templates reused.

    ``lm_eval.utils.apply_template`` compiles its template string on every call; a 25-shot ARC
    context compiles ~75 of them, which dominated prompt building. Same templates, same
    environment, same output: only the compile is cached. Re-entrant; the original function is
    put back when the outermost block ends, so nothing else in the process sees the patch.
    """
    global _template_depth
    from lm_eval import utils

    with _TEMPLATE_LOCK:
        if _template_depth == 0:
            original = utils.apply_template
            compile_template = lru_cache(maxsize=1024)(utils.env.from_string)

            def apply_template(template: str, doc: dict) -> str:
                field = _plain_field(template)
                if field is not None and isinstance(doc.get(field), str):
                    return doc[field]  # what Jinja renders for "{{field}}" of a string
                return compile_template(template).render(**doc)

            apply_template.original = original  # type: ignore[attr-defined]
            utils.apply_template = apply_template
        _template_depth += 1
    try:
        yield
    finally:
        with _TEMPLATE_LOCK:
            _template_depth -= 1
            if _template_depth == 0:
                utils.apply_template = utils.apply_template.original
