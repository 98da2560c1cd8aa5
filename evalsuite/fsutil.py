"""Files on disk: the cache root, atomic writes, a file's sha256.

Why atomic: evalsuite's files are read by later runs (a results table, the baseline, a converted
model, a DUS build, the speed profile, the hash index). A process killed halfway through a
plain write leaves a half-written file that the next run would take for a finished one. Every
write here goes to a hidden sibling (``.``-name, which pyarrow, pandas and the readers skip)
and is moved onto the target with ``os.replace``, which is atomic on one file system: a reader
sees the old content or the new, never a mix, and a failed write leaves the old one intact.

Standard library only: the read side imports this on machines without torch.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """evalsuite's cache root: ``$EVALSUITE_CACHE``, else ``~/.cache/evalsuite``."""
    root = Path(os.environ.get("EVALSUITE_CACHE") or Path.home() / ".cache" / "evalsuite")
    root.mkdir(parents=True, exist_ok=True)
    return root


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file's bytes, read in chunks (model weights do not fit twice)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """A temporary path beside ``target`` to write to; on leaving the block it replaces ``target``.

    If the block raises, the temporary file is removed and ``target`` is untouched. The
    temporary name is ``.tmp-<random><target's suffix>``: hidden from readers, of the same file
    type for writers that look at it (pyarrow). ``fsync`` flushes the bytes to the disk before
    the rename, for files that must survive a power cut (results). The folder must exist.
    """
    target = Path(target)
    # A fresh name, not mkstemp: mkstemp creates the file mode 0600, and the result would keep it.
    tmp = target.parent / f".tmp-{uuid.uuid4().hex}{target.suffix}"
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):  # the folder itself may be what is broken
            tmp.unlink(missing_ok=True)


def write_bytes(target: str | os.PathLike, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``target`` atomically (see the module docstring)."""
    with atomic_path(target, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str, *, fsync: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    write_bytes(target, text.encode("utf-8"), fsync=fsync)


def write_json(target: str | os.PathLike, value: Any, *, indent: int | None = None, fsync: bool = False) -> None:
    """Write ``value`` as JSON (``json.dumps`` with ``indent``) to ``target`` atomically."""
    write_text(target, json.dumps(value, indent=indent), fsync=fsync)


def replace_dir(target: str | os.PathLike, fill: Callable[[Path], None]) -> None:
    """Build a folder with ``fill(tmp)`` in a hidden sibling, then move it onto ``target``.

    An existing ``target`` is removed just before the move, so a crash while ``fill`` runs (a
    model's save takes seconds to minutes) leaves the old folder or nothing, never a half-written
    one that a later run would load. The temporary folder is removed if anything fails.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        fill(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
