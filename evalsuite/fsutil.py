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


# -- outputs a user names (--out): never lose what evalsuite did not write ----------------------
#: Beside files evalsuite wrote at a user-named path: ``{file name: sha256}`` of what it wrote.
OUTPUTS_RECORD = ".evalsuite-outputs.json"
#: Inside a folder evalsuite wrote whole (``dus --out``): ``{file name: size}`` of what it wrote.
FOLDER_MARKER = ".evalsuite-output.json"
#: A folder holding one of these is a results store (run rows; the run-id claims' lock; model
#: key claims): only the store's own writers write inside it. Not a bare ``runs/`` folder:
#: TensorBoard's default log folder has that name too.
STORE_MARKERS = ("runs/*.parquet", "claims/.lock", "claims/model-keys")


def enclosing_store(path: str | os.PathLike) -> Path | None:
    """The results store ``path`` lies in (resolved, links followed), or None."""
    resolved = Path(os.path.abspath(path))
    with contextlib.suppress(OSError):
        resolved = resolved.resolve()
    for folder in [resolved, *resolved.parents]:
        with contextlib.suppress(OSError):
            if any(next(iter(folder.glob(marker)), None) is not None for marker in STORE_MARKERS):
                return folder
    return None


def check_output(target: str | os.PathLike, flag: str, *, folder: bool = False) -> str | None:
    """May evalsuite write ``target`` (a file, or with ``folder`` a folder it replaces whole)?

    Refused in one line (:class:`~evalsuite.errors.EvalsuiteError`): a path inside a results
    store (only the store's writers write there), a link, and anything that exists and that
    evalsuite did not write, or that changed since it did (a file's content no longer its
    recorded hash; a folder holding files it did not write). Writing beside is always possible:
    the message says so. Returns the line to show when ``target`` is evalsuite's own earlier
    output that will be replaced, else None. Call :func:`note_output` once written.
    """
    from evalsuite.errors import EvalsuiteError

    target = Path(target)
    store = enclosing_store(target)
    if store is not None:
        raise EvalsuiteError(f"{flag} {target} is inside the results store {store}; evalsuite writes there only "
                             f"through the store itself: choose a path outside it")
    if target.is_symlink():
        raise EvalsuiteError(f"{flag} {target} is a link; evalsuite does not write through links or replace them: "
                             f"choose another path")
    if not target.exists():
        return None
    if folder:
        if not target.is_dir():
            raise EvalsuiteError(f"{flag} {target} exists and is not a folder; choose a new folder name")
        present = {p.name for p in target.iterdir()}
        if not present:
            return None
        written = _read_record(target / FOLDER_MARKER)
        foreign = sorted(name for name in present - {FOLDER_MARKER}
                         if name not in written or _size(target / name) != written[name])
        if not written or foreign:
            shown = ", ".join(foreign[:3]) if written else "no record of evalsuite writing it"
            raise EvalsuiteError(f"{flag} {target} is a folder evalsuite did not write ({shown}); nothing was "
                                 f"changed: choose a new folder name, or empty it yourself")
        return f"replacing {target}/, evalsuite's own earlier output"
    if target.is_dir():
        raise EvalsuiteError(f"cannot write {flag} {target} (a folder); give a file path (in an existing folder)")
    recorded = _read_record(target.parent / OUTPUTS_RECORD).get(target.name)
    try:
        ours = recorded is not None and file_sha256(target) == recorded
    except OSError as exc:
        raise EvalsuiteError(f"cannot read {flag} {target} ({exc.strerror or exc}); choose another path") from None
    if not ours:
        raise EvalsuiteError(f"{flag} {target} exists and evalsuite did not write it"
                             + (" (it changed since evalsuite did)" if recorded else "")
                             + "; nothing was changed: choose another path, or move the file away yourself")
    return f"replacing {target}, evalsuite's own earlier output"


def note_output(target: str | os.PathLike, *, folder: bool = False) -> None:
    """Record ``target`` as evalsuite's output (see :func:`check_output`); best effort: a record
    that cannot be written only means the next write there is refused, never lost data."""
    target = Path(target)
    with contextlib.suppress(OSError, ValueError):
        if folder:
            sizes = {p.name: p.stat().st_size for p in target.iterdir() if p.name != FOLDER_MARKER}
            write_json(target / FOLDER_MARKER, sizes, indent=1)
            return
        record_path = target.parent / OUTPUTS_RECORD
        record = _read_record(record_path)
        record[target.name] = file_sha256(target)
        write_json(record_path, record, indent=1)


def write_output(target: str | os.PathLike, text: str, flag: str) -> Path:
    """Write ``text`` to a user-named file: checked (:func:`check_output`), atomically, recorded;
    replacing evalsuite's own earlier output is said in one line on standard error."""
    import sys

    from evalsuite.errors import EvalsuiteError

    target = Path(target)
    replacing = check_output(target, flag)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text(target, text)
    except OSError as exc:
        raise EvalsuiteError(f"cannot write {flag} {target} ({exc.strerror or exc}); choose another path") from None
    note_output(target)
    if replacing:
        print(f"evalsuite: {replacing}", file=sys.stderr, flush=True)
    return target


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() and not path.is_symlink() else None
    except OSError:
        return None


def _read_record(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
