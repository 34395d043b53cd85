"""Settles a budget store could not write, kept in files until they are written.

A fail-open store counts the calls it serves while its SQLite file or Redis is down and writes their settles
once the store answers again. A process that ended first (a worker recycled, a deploy, a pool worker ended by
``os._exit``, a SIGKILL) lost them: the spend was never charged, and the process after it started from the last
spend it read, so each restart got another ``open_share`` of the limit.

So each settle a store keeps waiting is also appended to a file of its process's own (:class:`Journal`), beside
the store: ``<db>.pending-<pid>-<random>.jsonl`` for SQLite, ``redis-<digest of the server and prefix>.pending-...``
in the state folder for Redis (see :func:`state_dir`); the file goes once all of them are written. While the store
is down, every process on the host counts the settles in the other processes' files as spent (:class:`Peeker`), so a
worker restarted during the outage spends what the ones before left of the share, not a share of its own. Once
the store answers, a process writes the files of processes that are gone (:func:`orphans`) and then removes
them: a file leaves the disk only once what it holds is written. A settle is idempotent (a reservation id is
charged once), so nothing is charged twice whoever writes it, and a settle two files hold (a child forked with
settles waiting keeps its parent's) counts once.

Spend records a ledger could not write before its process ended are kept the same way, in one file written as the
process exits (:func:`keep_records`: ``<ledger>.records-<pid>-<random>.jsonl`` beside a SQLite ledger,
``redis-ledger-<digest>.records-...`` in the state folder for a Redis one), which the next ledger to write there
writes and removes (:func:`write_kept`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import tempfile
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from ..calls import SpendRecord

_T = TypeVar("_T")
_R = TypeVar("_R", bound=tuple[Any, ...])

log = logging.getLogger("llmbudget.ledger")

#: How often a store looks for the files of processes that have ended, at most (it is asked on every call).
EVERY_S = 5.0
#: A kept settle of this many dollars or more is damaged, not spend.
MAX_USD = 10**9


class Waiting(Generic[_T]):
    """The settles a store keeps waiting, in order, as ``(reservation, actual)``, with their reservation ids: a
    settle already waiting is not added again, and that check is a set's, not a scan of the queue (a long outage
    keeps hundreds of thousands waiting, and every call's settle asked)."""

    __slots__ = ("_ids", "_items")

    def __init__(self) -> None:
        self._items: deque[tuple[Any, _T]] = deque()
        self._ids: set[str] = set()

    def add(self, reservation: Any, actual: _T) -> bool:
        """Queue a settle; False (nothing queued) when one of the same reservation waits already."""
        if reservation.id in self._ids:
            return False
        self._ids.add(reservation.id)
        self._items.append((reservation, actual))
        return True

    def popleft(self) -> tuple[Any, _T]:
        item = self._items.popleft()
        self._ids.discard(item[0].id)
        return item

    def appendleft(self, item: tuple[Any, _T]) -> None:
        """Put back a settle taken off the front (its write failed)."""
        self._ids.add(item[0].id)
        self._items.appendleft(item)

    def __getitem__(self, index: int) -> tuple[Any, _T]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[tuple[Any, _T]]:
        return iter(self._items)


def latest(rows: Iterable[_R]) -> list[_R]:
    """``rows`` (tuples that start with a reservation) with the last of each reservation id alone: a hold kept
    on disk is superseded by its settle or release."""
    last: dict[str, _R] = {}
    for row in rows:
        last.pop(row[0].id, None)  # (in the order of their last rows)
        last[row[0].id] = row
    return list(last.values())


def spent_by_key(settles: Iterable[tuple[Any, Any]], own: set[str]) -> dict[str, Any]:
    """Per bucket key, what ``settles`` (reservation, amount; None for a release) charge, each id once, as its
    last row says (:func:`latest`), and none of ``own`` (the store's own waiting ones, which it counts already)."""
    out: dict[str, Any] = {}
    for reservation, amount in latest(settles):
        if amount is None or reservation.id in own:
            continue
        for key in reservation.keys:
            out[key] = out.get(key, 0) + amount
    return out


def state_dir() -> Path:
    """Where Redis stores keep their files: ``LLMBUDGET_STATE_DIR``, else ``$XDG_STATE_HOME/llmbudget``, else
    ``~/.local/state/llmbudget`` (without a home folder, ``llmbudget-<uid>`` in the temporary folder)."""
    own = os.environ.get("LLMBUDGET_STATE_DIR")
    if own:
        return Path(own)
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg:
        return Path(xdg) / "llmbudget"
    try:
        return Path.home() / ".local" / "state" / "llmbudget"
    except (RuntimeError, KeyError):  # no HOME, and a uid without a passwd entry (a container's)
        return Path(tempfile.gettempdir()) / f"llmbudget-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def _files(base: Path) -> list[Path]:
    try:
        return sorted(base.parent.glob(f"{glob.escape(base.name)}.pending-*.jsonl"))
    except OSError:
        return []


def _parse(path: Path, lines: list[bytes]) -> list[dict[str, Any]]:
    """The rows of ``lines`` (a line that is not a JSON object, or not UTF-8, is skipped and said so)."""
    rows = []
    for raw in lines:
        try:
            row = json.loads(raw.decode("utf-8"))
        except ValueError:  # (UnicodeDecodeError is one)
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif raw.strip():
            log.warning("llmbudget: %s holds a line that is not a budget settle; skipped", path)
    return rows


def _rows(path: Path) -> list[dict[str, Any]]:
    with open(path, "rb") as lines:
        return _parse(path, list(lines))


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended and not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, another user's
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): as kill said


#: The files this process's journals keep (emptied in a child just forked: its parent's are not its own).
_MINE: set[Path] = set()


def _gone(path: Path) -> bool:
    """Whether the process that wrote ``path`` (its pid is in the name) has ended. A file with this process's pid
    that none of its journals keeps is an ended process's: one restarted with the same pid (a container's
    process 1 after each restart) left it, and its settles were never written."""
    pid = path.name.rsplit(".pending-", 1)[-1].split("-", 1)[0]
    if not pid.isdigit():
        return True
    if int(pid) == os.getpid():
        return path not in _MINE
    return not alive(int(pid))


#: Every journal, for a child just forked: its locks are new (another thread of the parent may have held one).
_JOURNALS: weakref.WeakSet[Journal] = weakref.WeakSet()


def _forked() -> None:
    _MINE.clear()
    for journal in list(_JOURNALS):
        journal._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class Peeker:
    """The rows of every file of a store but this process's own, left in place; each file is read from where
    the last look stopped (a store looks once per retry while it is down, and the files grow with every call
    the other processes serve: reading them whole each time took seconds in a long outage)."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[int, int, list[dict[str, Any]]]] = {}  # path -> (inode, offset, rows)

    def rows(self, base: Path, skip: Path | None = None) -> list[dict[str, Any]]:
        seen: dict[Path, tuple[int, int, list[dict[str, Any]]]] = {}
        out: list[dict[str, Any]] = []
        for path in _files(base):
            if path == skip:
                continue
            try:
                with open(path, "rb") as source:
                    inode = os.fstat(source.fileno()).st_ino
                    known, offset, rows = self._seen.get(path, (inode, 0, []))
                    if known != inode:  # another file under that name
                        offset, rows = 0, []
                    source.seek(offset)
                    chunk = source.read()
            except OSError:
                continue  # removed meanwhile, or not ours to read
            whole = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written is read next time
            rows = rows + _parse(path, whole.splitlines())
            seen[path] = (inode, offset + len(whole), rows)
            out += rows
        self._seen = seen  # (files gone are forgotten)
        return out


def orphans(base: Path) -> list[tuple[Path, list[dict[str, Any]]]]:
    """The files of ``base`` whose processes have ended, with their rows: theirs to write, and then :func:`remove`."""
    found = []
    for path in _files(base):
        if _gone(path):
            with contextlib.suppress(OSError):
                found.append((path, _rows(path)))
    return found


def remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


class Journal:
    """This process's file of a store's waiting settles (none for ``base=None``): each one appended as it starts
    to wait, the file removed once none waits."""

    def __init__(self, base: Path | None) -> None:
        self.base = base
        self.path: Path | None = None
        self._pid = 0
        self._warned = False
        #: Rows that could not be written to the file since it was started (a full disk): lost if the process ends
        #: before the store takes them.
        self.lost = 0
        self._kept: Path | None = None  # the file :meth:`keeps` found writable
        self._lock = threading.Lock()  # one file per process: threads starting an outage together made several
        _JOURNALS.add(self)
        #: Why the file could not be written, the last time it could not.
        self.error: OSError | None = None

    def _own(self) -> Path:
        assert self.base is not None
        if self.path is None or self._pid != os.getpid():  # (a child forked: its own file)
            pid = os.getpid()
            self.path = self.base.with_name(f"{self.base.name}.pending-{pid}-{uuid.uuid4().hex[:8]}.jsonl")
            self._pid = pid  # (after the path: a thread that sees this pid sees its own file)
            _MINE.add(self.path)
        return self.path

    def _append(self, text: str) -> bool:
        with self._lock:
            return self._append_locked(text)

    def _append_locked(self, text: str) -> bool:
        path = self._own()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as out:  # opened each time: a file removed is made again
                out.write(text)
        except OSError as exc:
            self.lost += 1
            self.error = exc
            if not self._warned:
                self._warned = True
                log.warning("llmbudget: budget settles that wait cannot be kept in %s (%s); a process that ends "
                            "before the store answers loses them", path, exc)
            return False
        return True

    def add(self, row: dict[str, Any]) -> None:
        if self.base is not None:
            self._append(json.dumps(row) + "\n")

    def keeps(self) -> bool:
        """Whether what a fail-open store serves can be kept on disk: this process's file takes a line (an empty
        one, tried once per file) and none has failed since. A store that could not keep it and served anyway
        lost it at exit, and each process after it (a restart, a crash loop) served a fresh share of the limit."""
        if self.base is None:
            return True
        if self.lost:
            return False
        if self._kept is not None and self._kept == self.path and self._pid == os.getpid():
            return True
        if not self._append("\n"):  # (a blank line: skipped where the rows are read)
            return False
        self._kept = self.path
        return True

    @property
    def own_path(self) -> Path | None:
        """This process's file (None in a child forked before it wrote any: the parent's is not its own)."""
        return self.path if self._pid == os.getpid() else None

    def clear(self) -> None:
        """Nothing waits any more: the file goes."""
        with self._lock:
            if self.path is not None and self._pid == os.getpid():
                with contextlib.suppress(OSError):
                    self.path.unlink()
                _MINE.discard(self.path)
            self.path = self._kept = None
            self.lost = 0

    def warn_at_exit(self, waiting: int, where: str, what: str = "budget settle(s)") -> None:
        """Log, as the process ends, what becomes of the ``waiting`` settles (``what``) that could not be written
        ``where`` ("to SQLite at ..."): kept in this file for the host's other processes, or lost where it could not
        be written."""
        if self.path is None:
            return
        if not self.lost:
            log.warning("llmbudget: %d %s could not be written %s before exit; kept in %s for the host's other "
                        "processes", waiting, what, where, self.path)
        else:  # (the rows that failed may have been written to the store since: "up to")
            log.warning("llmbudget: %d %s could not be written %s before exit; kept in %s for the host's other "
                        "processes, but up to %d of them could not be written to that file either: those are lost",
                        waiting, what, where, self.path, min(self.lost, waiting))


# -- spend records kept at exit -------------------------------------------------------------------------------


def kept_record_files(base: Path) -> list[Path]:
    """The files of spend records kept by processes that ended: ``<base>.records-*.jsonl``, oldest name first."""
    try:
        return sorted(base.parent.glob(f"{glob.escape(base.name)}.records-*.jsonl"))
    except OSError:
        return []


def _kept_rows(path: Path) -> list[tuple[str | None, SpendRecord]]:
    """``(id, record)`` of each line of ``path`` (``{"id", "r"}``, or a record alone: no id); a line that does not
    read is logged and left out. Raises OSError where the file cannot be read."""
    from ..calls import SpendRecord

    rows: list[tuple[str | None, SpendRecord]] = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            data = json.loads(line)
            ident = data.get("id") if isinstance(data, dict) and "r" in data else None
            if ident is not None and not isinstance(ident, str):
                raise TypeError(f"its id is {type(ident).__name__}")
            rows.append((ident, SpendRecord.from_dict(data["r"] if ident is not None else data)))
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            log.warning("llmbudget: %s line %d is not a readable spend record (%s); left out", path, number, exc)
    return rows


def write_kept(paths: list[Path], write: Callable[[Path, list[tuple[str | None, SpendRecord]]], bool], where: str,
               errors: tuple[type[BaseException], ...]) -> None:
    """Write the records kept in ``paths`` with ``write(path, rows)`` (rows: ``(id, record)``; True where it wrote
    them, False where they were written already), then remove each file; ``where`` names the ledger in the log. An
    error of ``errors`` stops, the files left for a later try. Never raises those."""
    for path in paths:
        try:
            rows = _kept_rows(path)
            written = write(path, rows)
        except errors as exc:  # tried again later
            log.warning("llmbudget: the records kept in %s could not be written to %s yet (%s: %s)", path, where,
                        type(exc).__name__, exc)
            return
        with contextlib.suppress(OSError):
            path.unlink()
        if written and rows:
            log.warning("llmbudget: %d spend record(s) kept in %s by a process that ended are written to %s",
                        len(rows), path, where)


def keep_records(base: Path | None, lines: list[str], where: str) -> None:
    """Keep ``lines`` (JSON, one record each) that could not be written ``where`` before exit in a new file of
    ``base`` (None: nowhere to keep them), for the next process that writes there, and say so."""
    if base is None:
        log.warning("llmbudget: %d spend record(s) could not be written to %s before exit, and there is no folder to "
                    "keep them in: they are lost", len(lines), where)
        return
    path = base.with_name(f"{base.name}.records-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl")
    partial = path.with_name(path.name + ".partial")  # (renamed once whole: never read half written)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "w", encoding="utf-8") as out:
            out.writelines(line + "\n" for line in lines)
        os.replace(partial, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        log.warning("llmbudget: %d spend record(s) could not be written to %s before exit, nor kept in %s (%s): they "
                    "are lost", len(lines), where, path, exc)
        return
    log.warning("llmbudget: %d spend record(s) could not be written to %s before exit; kept in %s, which the next "
                "process to write there writes into it", len(lines), where, path)
