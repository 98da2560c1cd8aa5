"""Names are data, never paths: the one character set for run ids, tags and store file names.

A run id, a tag or a shard name ends up in a file name of the results store
(``<run>__<model>__<task>[__shardIofN].parquet``), in a claim file and in messages. So each is
checked here, before anything runs, against one documented set (docs/store.md, "Run ids and
names"): 1 to 64 ASCII letters, digits, ``.``, ``_`` and ``-``, starting with a letter or a
digit, without ``__`` (the store's field separator: ``a`` and ``a__b`` would otherwise share
files). That rules out ``..``, ``/``, absolute paths, hidden (dot) names, option-like (dash)
names, control characters and Unicode look-alikes at once.

Model keys are not restricted (a Hub id has a ``/``, a DUS spec ``:``): the store derives a
model's file-name part with :func:`file_part`, which is the key itself when it fits the set and
otherwise a readable slug plus a hash of the key, so two keys never share a file.
"""
from __future__ import annotations

import hashlib
import re

from evalsuite.errors import EvalsuiteError

#: The allowed names, as users read it in errors and docs.
CHARSET = "1-64 ASCII letters, digits, '.', '_' and '-', starting with a letter or digit, no '__'"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHARD_PART = re.compile(r"shard(\d{1,6})of(\d{1,6})")


def is_name(text: object) -> bool:
    """Whether ``text`` is in the character set (see the module docstring)."""
    return isinstance(text, str) and _NAME.fullmatch(text) is not None and "__" not in text


def check_name(text: object, what: str) -> str:
    """``text`` when it is a valid name, else a one-line error naming ``what`` and the set."""
    if not is_name(text):
        shown = ascii(text)[:60] if isinstance(text, str) else type(text).__name__
        raise EvalsuiteError(f"{what} {shown} is not allowed: use {CHARSET}")
    return text  # type: ignore[return-value]


def check_part(part: str) -> str:
    """A shard part as the store names it (``shardIofN``), or empty for an unsharded run."""
    if part and not _SHARD_PART.fullmatch(part):
        raise EvalsuiteError(f"shard part {ascii(part)[:40]} is not allowed: write it as shardIofN")
    return part


def file_part(key: str) -> str:
    """The file-name part of a model key: the key when it is a valid name, else slug + hash.

    A key outside the set always carries 8 hex digits of its own hash, so two such keys share a
    file only if their slugs match and 32 bits of their hashes collide.
    """
    if is_name(key):
        return key
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", key).strip("-.")
    slug = re.sub(r"-{2,}", "-", slug)[:48] or "model"
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{slug}-{digest}"


def short_hash(text: str, length: int = 6) -> str:
    """A short stable hash (e.g. of a resolved folder path, for a model key)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]
