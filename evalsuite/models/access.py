"""Can this machine get the model? Checked for every Hub model before the first evaluation.

A run of several large models used to find out that the third one is gated after the first two
had run for hours. :func:`check_access` asks the Hub (``model_info``, then ``auth_check`` for a
gated model: the metadata of a gated model is public, its files are not) and turns each way of
failing into one line that names the fix (``hf auth login`` or ``HF_TOKEN``) and the model's
page. The gated flag comes from the Hub's own metadata where the Hub is reachable; offline,
from the registry (:attr:`ModelSpec.gated`), and a model already in the local Hub cache passes.

The Hub client is a parameter (``api``: anything with ``model_info`` and ``auth_check``), so the
decisions are tested without the Hub.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from evalsuite.errors import EvalsuiteError
from evalsuite.models.registry import ModelSpec

LOGIN = "log in with `hf auth login` (or set HF_TOKEN)"


def gated_message(spec: ModelSpec) -> str:
    return (f"{spec.alias}: {spec.source} is gated on the Hugging Face Hub and this machine has no access: "
            f"accept its licence at {spec.page}, then {LOGIN}")


def check_access(spec: ModelSpec, *, api: Any = None, online: bool | None = None) -> str | None:
    """Raise a one-line :class:`EvalsuiteError` when ``spec`` (a Hub model) cannot be fetched;
    otherwise return how it was found (``None`` for models that are not on the Hub).

    A ``dus:BASE:M`` model is built from its base on first use: its base is checked (resolved
    as the build resolves it), and a failure names both, so a gated base stops the run before
    the first evaluation rather than at its download."""
    if spec.kind == "dus":
        return _check_dus_base(spec, api, online)
    if spec.kind != "hub":
        return None
    from evalsuite.models.hub import hub_reachable, offline_message

    if online is None:
        online = hub_reachable()
    if not online:
        if _cached(spec):
            return "in the local Hub cache (the Hub is not reachable)"
        if spec.gated:  # the registry's flag: the Hub cannot be asked
            raise EvalsuiteError(f"{gated_message(spec)}, on a machine that reaches the Hub; "
                                 f"{offline_message(spec.source)}")
        raise EvalsuiteError(f"{spec.alias}: {offline_message(spec.source)}")
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        info = api.model_info(spec.source, revision=spec.revision)
        gated = getattr(info, "gated", False)
        if gated:
            api.auth_check(spec.source)  # raises GatedRepoError without access
    except GatedRepoError:
        raise EvalsuiteError(gated_message(spec)) from None
    except RevisionNotFoundError:
        raise EvalsuiteError(f"{spec.alias}: {spec.source} has no revision '{spec.revision}' on the Hugging Face "
                             f"Hub; see the model's history at {spec.page}") from None
    except RepositoryNotFoundError:
        raise EvalsuiteError(f"{spec.alias}: no model {spec.source} on the Hugging Face Hub, or it is private: "
                             f"check the id at {spec.page}, or {LOGIN} with an account that can see it") from None
    except Exception as exc:  # HTTP errors, timeouts: the Hub answered badly
        reason = (f"{type(exc).__name__}: {exc}".splitlines() or ["error"])[0][:160]
        raise EvalsuiteError(f"{spec.alias}: could not ask the Hugging Face Hub about {spec.source} ({reason}); "
                             f"retry, or pass a local folder") from None
    return f"gated ({gated}), access granted" if gated else "public"


def dus_base(spec: ModelSpec) -> ModelSpec:
    """The base a ``dus:BASE:M`` model is built from, resolved as :func:`evalsuite.models.source.materialize` does."""
    from evalsuite.models.dus import parse_spec
    from evalsuite.models.registry import resolve_model

    return resolve_model(parse_spec(spec.source)[0], trust_remote_code=spec.trust_remote_code)


def _check_dus_base(spec: ModelSpec, api: Any, online: bool | None) -> str | None:
    base = dus_base(spec)
    try:
        note = check_access(base, api=api, online=online)
    except EvalsuiteError as exc:
        raise EvalsuiteError(f"{spec.alias}: its base {exc}") from None
    return None if note is None else f"base {base.alias}: {note}"


def hub_params(spec: ModelSpec, *, api: Any = None, online: bool | None = None) -> int | None:
    """The parameter count the Hub's metadata reports for a Hub model (its safetensors index),
    so a model outside the registry can be sized before a byte of it is downloaded; None when
    unknown, offline, or not a Hub model."""
    if spec.kind != "hub":
        return None
    from evalsuite.models.hub import hub_reachable

    if not (hub_reachable() if online is None else online):
        return None
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        total = getattr(getattr(api.model_info(spec.source, revision=spec.revision), "safetensors", None), "total", None)
    except Exception:  # the access check already said what is wrong with the model
        return None
    return int(total) if isinstance(total, int) and total > 0 else None


def check_access_all(specs: Iterable[ModelSpec], *, api: Any = None, online: bool | None = None) -> dict[str, str]:
    """:func:`check_access` for every model; one error naming every model that cannot be fetched
    (one line each), so a user fixes all of them at once. Returns alias -> how each was found."""
    found: dict[str, str] = {}
    problems: list[str] = []
    for spec in specs:
        try:
            note = check_access(spec, api=api, online=online)
        except EvalsuiteError as exc:
            problems.append(str(exc))
            continue
        if note:
            found[spec.alias] = note
    if problems:
        raise EvalsuiteError("\n".join(problems))
    return found


def _cached(spec: ModelSpec) -> bool:
    """The model's config is in the local Hub cache (at its revision, else any)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(spec.source, "config.json", revision=spec.revision)
    return isinstance(found, str)
