"""Backends: objects implementing lm-eval's ``LM`` interface, chosen by name.

Every backend answers the same lm-eval ``Instance`` requests (``loglikelihood`` and
``generate_until``), so the runner, the request cache and the parity tests treat them alike.
Which backends exist, what each can do and which options it owns is
:mod:`evalsuite.backends.registry`; the typed interface is its :class:`Backend` protocol.
Modules are imported only when their backend is chosen: vLLM and Ray stay optional.
"""
from __future__ import annotations

from evalsuite.backends.registry import DEFAULT_BACKEND, GENERATION_MODES, REGISTRY, Backend, BackendOptions, get_backend
from evalsuite.models.identity import ModelSource

#: The registered backends' names (``--backend`` choices), in registration order.
BACKENDS: tuple[str, ...] = tuple(REGISTRY)


def build_backend(name: str, source: ModelSource, options: BackendOptions) -> Backend:
    """The backend ``name`` for ``source``: an lm-eval ``LM`` that satisfies :class:`Backend`."""
    info = get_backend(name)
    from evalsuite.compat import check_versions

    check_versions()  # a model is about to be evaluated through transformers' and lm-eval's internals
    lm = info.build(source, options)
    if not hasattr(lm, "engine_note"):  # lm-eval's own models have no note of their own to add
        lm.engine_note = None  # type: ignore[misc]
    return lm


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "GENERATION_MODES", "Backend", "BackendOptions", "build_backend", "get_backend"]
