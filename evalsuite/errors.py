"""One exception type for every failure a user can fix.

The CLI prints ``error: <message>`` on one line and exits with status 2 for these;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class EvalsuiteError(Exception):
    """A problem with the user's input or environment, stated in one line with the fix."""


class UnknownModelError(EvalsuiteError):
    pass


class UnknownTaskError(EvalsuiteError):
    pass


class MissingDataError(EvalsuiteError):
    pass


class DataFormatError(EvalsuiteError):
    pass


class ModelTooLargeError(EvalsuiteError):
    pass


class StoreError(EvalsuiteError):
    pass
