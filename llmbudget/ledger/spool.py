"""Settles a budget store could not write before its process ended, kept in files for the next process.

A fail-open store counts the calls it serves while its SQLite file or Redis is down and writes their settles
once the store answers again. A process that ended first (a worker recycled, a deploy) lost them: the spend was
never charged, and the process after it started from the last spend it read, so each restart got another
``open_share`` of the limit. At exit such settles go to a file beside the store: ``<db>.pending-<pid>-<random>.jsonl``
for SQLite, ``redis-<digest of the server and prefix>.pending-...`` in the state folder for Redis (see
:func:`state_dir`).

While the store is down, a process counts the settles in those files (:func:`peek`) as spent beyond the last
spend it read, so a worker restarted during the outage spends what the ones before left of the share, not a
share of its own. Once the store answers, the first process to use it takes the files (:func:`claim`) and
writes their settles. A settle is idempotent (a reservation id is charged once), so nothing is charged twice
whoever writes it, and a file two processes both wrote (a child forked with settles waiting) counts once.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger("llmbudget.ledger")


def state_dir() -> Path:
    """Where Redis stores spool: ``LLMBUDGET_STATE_DIR``, else ``$XDG_STATE_HOME/llmbudget``, else
    ``~/.local/state/llmbudget``."""
    own = os.environ.get("LLMBUDGET_STATE_DIR")
    if own:
        return Path(own)
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "llmbudget"


def write(base: Path, rows: list[dict[str, Any]]) -> Path | None:
    """Write ``rows`` to a new spool file of ``base``; its path, or None where it could not be written."""
    if not rows:
        return None
    path = base.with_name(f"{base.name}.pending-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl")
    partial = path.with_suffix(".tmp")  # renamed once whole: a reader never takes half a file
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "w", encoding="utf-8") as out:
            out.writelines(json.dumps(row) + "\n" for row in rows)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        log.warning("llmbudget: %d budget settle(s) could not be kept in %s (%s); they are lost", len(rows), path, exc)
        return None
    return path


def _files(base: Path) -> list[Path]:
    try:
        return sorted(base.parent.glob(f"{glob.escape(base.name)}.pending-*.jsonl"))
    except OSError:
        return []


def _rows(path: Path, lines: list[str]) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            log.warning("llmbudget: %s line %d is not a budget settle; skipped", path, number)
    return rows


def peek(base: Path) -> list[dict[str, Any]]:
    """The rows of every spool file of ``base``, left in place."""
    rows: list[dict[str, Any]] = []
    for path in _files(base):
        try:
            rows += _rows(path, path.read_text(encoding="utf-8").splitlines())
        except (OSError, UnicodeDecodeError):
            continue  # taken meanwhile, or not ours to read
    return rows


def claim(base: Path) -> list[dict[str, Any]]:
    """Take every spool file of ``base`` (each renamed first, so no two processes take one) and return its rows."""
    rows: list[dict[str, Any]] = []
    for path in _files(base):
        taken = path.with_name(f"{path.name}.taken-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(path, taken)
        except OSError:
            continue  # another process took it
        try:
            lines = taken.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("llmbudget: could not read the budget settles kept in %s (%s)", taken, exc)
            continue
        rows += _rows(taken, lines)
        with contextlib.suppress(OSError):
            taken.unlink()
    if rows:
        log.info("llmbudget: %d budget settle(s) an earlier process could not write are taken from %s",
                 len(rows), base.parent)
    return rows
