"""Text in and out: reading the text files the CLI takes (traffic, labels, pairs, samples) line by line, naming the
line that fails; and showing names that come from outside (a model, a path, a tenant) in logs and reports."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["csv_rows", "shown", "utf8_lines"]


def shown(text: str) -> str:
    """``text`` with its control and other non-printable characters written as escapes (``\\n``, ``\\x1b``): a
    name that came from a request, an answer or a file cannot forge a line of a log or report, nor drive the
    terminal that shows it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def utf8_lines(path: str | os.PathLike[str], *,
               fail: Callable[[int, str], Exception] | None = None) -> Iterator[str]:
    """The lines of ``path`` (line endings kept, a UTF-8 byte-order mark dropped), for ``csv`` readers and JSONL
    loops alike. A line that is not UTF-8 raises ``fail(line number, why)``, by default a ``ValueError`` naming
    the file and the line."""
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                why = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
                raise (fail(number, why) if fail is not None
                       else ValueError(f"{path}:{number}: {why}; expected UTF-8")) from None


def csv_rows(path: str | os.PathLike[str]) -> csv.DictReader[str]:
    """A ``csv.DictReader`` over :func:`utf8_lines` of ``path``; a ``ValueError`` naming the file when its header
    names a column twice (the last one silently won: a label file with two ``weak`` columns was read wrong)."""
    reader = csv.DictReader(utf8_lines(path))
    columns = reader.fieldnames or []
    twice = sorted({c for c in columns if c and columns.count(c) > 1})  # (a spreadsheet's trailing commas: no name)
    if twice:
        raise ValueError(f"{path}: the header names column(s) {[shown(c) for c in twice]} more than once; each "
                         "column needs a name of its own")
    return reader
