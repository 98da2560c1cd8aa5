"""CSV cells a spreadsheet cannot run: every CSV evalsuite writes goes through :func:`csv_writer`.

A model name, tag or note is user input; written raw to CSV, a cell such as ``=HYPERLINK(...)``
or ``@SUM(...)`` is a formula when the file is opened in a spreadsheet (CSV injection). As
the OWASP guidance asks, a text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return is prefixed with a single quote, which spreadsheets show as text; numbers
(``-1.25``) are left as they are, so columns stay numeric.
"""
from __future__ import annotations

import csv
import re
from typing import IO, Any

#: Characters that make a spreadsheet read a cell as a formula.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.IGNORECASE)


def safe_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


class _SafeWriter:
    """``csv.writer`` whose rows are made safe cell by cell."""

    def __init__(self, handle: IO[str], **kwargs: Any):
        self._writer = csv.writer(handle, **kwargs)

    def writerow(self, row: Any) -> Any:
        return self._writer.writerow([safe_cell(v) for v in row])


class _SafeDictWriter(csv.DictWriter):
    """``csv.DictWriter`` whose values are made safe cell by cell (the header is evalsuite's)."""

    def writerow(self, rowdict: Any) -> Any:
        return super().writerow({k: safe_cell(v) for k, v in rowdict.items()})


def csv_writer(handle: IO[str], **kwargs: Any) -> _SafeWriter:
    return _SafeWriter(handle, **kwargs)


def csv_dict_writer(handle: IO[str], fieldnames: list[str], **kwargs: Any) -> csv.DictWriter:
    return _SafeDictWriter(handle, fieldnames=fieldnames, **kwargs)


__all__ = ["FORMULA_START", "safe_cell", "csv_writer", "csv_dict_writer"]
