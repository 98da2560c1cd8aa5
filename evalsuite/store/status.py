"""Run and task statuses: the values the store writes and the read side derives, as enums.

Each is a :class:`~enum.StrEnum`, so a member *is* its stored text (``RunStatus.OK == "ok"``,
written to parquet as ``"ok"``): tables written before these enums read back unchanged, and
code compares against a name a type checker knows instead of a bare string.
"""
from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """A run of one model. ``RUNNING`` is written when a run starts; ``OK``, ``PARTIAL``,
    ``FAILED`` or ``INTERRUPTED`` when it ends. Read time only: a ``RUNNING`` row whose process is
    gone reads as ``INTERRUPTED``; a finished sharded run with shards absent as ``INCOMPLETE``."""

    RUNNING = "running"
    OK = "ok"
    PARTIAL = "partial"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    INCOMPLETE = "incomplete"


class TaskStatus(StrEnum):
    """A task's score row. ``SHARD`` marks a shard's partial row (merge metadata, never shown);
    ``INCOMPLETE`` is a sharded task whose shards are not all in the store yet (read time only)."""

    OK = "ok"
    MISSING = "missing"
    FAILED = "failed"
    SHARD = "shard"
    INCOMPLETE = "incomplete"


#: Statuses a run row is written with.
WRITTEN_RUN_STATUSES = (RunStatus.RUNNING, RunStatus.OK, RunStatus.PARTIAL, RunStatus.FAILED, RunStatus.INTERRUPTED)
#: Runs whose scores a reader shows by default ("latest").
FINISHED = (RunStatus.OK, RunStatus.PARTIAL)
#: Runs not over yet, or over without finishing (no "incomplete" verdict while one is).
UNFINISHED = (RunStatus.RUNNING, RunStatus.INTERRUPTED)
