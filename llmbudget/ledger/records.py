"""Where spend records go: in memory or a SQLite file (one row per attempt)."""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, TypeVar

from ..calls import SpendRecord
from ..money import plain_decimal
from . import spool
from .budgets import (
    _FORK_GUARDED,
    _SQLITE_ERRORS,
    SQLITE_TIMEOUT_S,
    _rollback,
    _sleep,
    _wait_for_work,
    connect,
    is_outage,
)

log = logging.getLogger("llmbudget.ledger")
_T = TypeVar("_T")

__all__ = ["Ledger", "MemoryLedger", "SQLiteLedger"]


class Ledger(Protocol):
    """Keeps every attempt's :class:`SpendRecord`."""

    def add(self, record: SpendRecord) -> None: ...

    def records(self) -> Iterator[SpendRecord]: ...


@dataclass
class MemoryLedger:
    """Records in a list (the default; nothing is written to disk)."""

    blocking: ClassVar[bool] = False  # never waits: the async transport calls it on the event loop

    max_records: int = 100_000
    _records: list[SpendRecord] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: SpendRecord) -> None:
        with self._lock:
            self._records.append(record)
            if len(self._records) > self.max_records:
                del self._records[: len(self._records) - self.max_records]

    def records(self) -> Iterator[SpendRecord]:
        with self._lock:
            return iter(list(self._records))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL, tenant TEXT, request_id TEXT, test_id TEXT,
    endpoint TEXT NOT NULL, model TEXT NOT NULL, cost_usd TEXT NOT NULL,
    record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS spend_time ON spend (time);
CREATE INDEX IF NOT EXISTS spend_tenant ON spend (tenant, time);
CREATE TABLE IF NOT EXISTS spend_kept (name TEXT PRIMARY KEY);
"""
#: How often, at most, a ledger that writes looks for the records that ended processes could not write (see
#: :meth:`SQLiteLedger.flush`).
_KEPT_EVERY_S = 5.0


_INSERT = ("INSERT INTO spend (time, tenant, request_id, test_id, endpoint, model, cost_usd, record)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


def _insert_once(conn: sqlite3.Connection, *, name: str, rows: list[tuple[object, ...]]) -> bool:
    """Insert the rows of the kept file ``name`` unless its name is recorded already (two processes may find the
    file: the one that records its name writes it); whether it did."""
    if conn.execute("SELECT 1 FROM spend_kept WHERE name = ?", (name,)).fetchone() is not None:
        return False
    conn.executemany(_INSERT, rows)
    conn.execute("INSERT INTO spend_kept (name) VALUES (?)", (name,))
    return True


def _row(r: SpendRecord) -> tuple[object, ...]:
    return (r.time, r.tenant, r.request_id, r.test_id, r.endpoint, r.model, plain_decimal(r.cost_usd),
            json.dumps(r.to_dict()))
_LIVE: weakref.WeakSet[SQLiteLedger] = weakref.WeakSet()


class SQLiteLedger:
    """Records in a SQLite file (WAL), safe for several processes on one host.

    :meth:`add` never waits for the file: records queue in memory and a writer thread writes
    whatever has queued in one transaction, so a busy server pays one commit per batch instead of
    one per call, and a request never waits on the disk or another process's lock. A record
    reaches the file within milliseconds; :meth:`records` and :meth:`flush` write the queue first,
    and it is written when the interpreter exits. A process killed outright (SIGKILL) loses what
    had not been written yet (the records of its last few milliseconds).

    When the file cannot be written (its lock held past ``timeout`` seconds, the disk full), the
    records wait in memory (the newest ``buffer``) and are written, once each, when it can; the
    cause is logged once per outage, with SQLite's own error. A process that ends while they
    still wait keeps them in a file beside the ledger (``<ledger>.records-<pid>-<random>.jsonl``),
    which the next process to write the ledger writes into it, once (the file's name is recorded
    in the same transaction), and removes.
    """

    blocking: ClassVar[bool] = False  # add() only queues

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = SQLITE_TIMEOUT_S, buffer: int = 100_000,
                 retry_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.buffer = buffer
        self.retry_interval = retry_interval
        self._local = threading.local()
        self._schema_ready = False
        self._down = False
        self._kept_at = 0.0  # when the files of ended processes' records were last looked for
        try:
            self._ready()
        except _SQLITE_ERRORS as exc:  # an existing file, its disk full or its lock held: records wait in memory
            if not is_outage(exc, self.path):
                raise
            self._down = True
            log.warning("llmbudget: the ledger %s cannot be written (%s: %s); records wait in memory and are written "
                        "when it can", self.path, type(exc).__name__, exc)
        self._fork_guard = threading.Lock()  # held while the writer is inside SQLite (see budgets._FORK_GUARDED)
        self._fork_guards = (self._fork_guard,)
        self._start()
        _LIVE.add(self)
        _FORK_GUARDED.add(self)
        if not self._down:
            self._write_kept(force=True)

    def _start(self) -> None:
        self._pid = os.getpid()
        self._queue: deque[tuple[int, SpendRecord]] = deque()
        self._seq = 0  # number of the last record queued
        self._lock = threading.Lock()  # guards the queue
        self._write_lock = threading.Lock()  # one writer at a time
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._dropped = 0

    def _ready(self):  # type: ignore[no-untyped-def]
        """This thread's connection, the file's tables made first if they are not yet."""
        conn = self._conn()
        if not self._schema_ready:
            conn.executescript(_SCHEMA)
            self._schema_ready = True
        return conn

    def _conn(self):  # type: ignore[no-untyped-def]
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = connect(self.path, timeout=self.timeout)
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def add(self, record: SpendRecord) -> None:
        """Queue ``record``; the writer thread writes it within milliseconds."""
        if self._pid != os.getpid():  # a forked child (where no fork hook ran): the parent writes what it had queued
            with _RESTART_LOCK:  # once, though the child's first records come from several threads
                if self._pid != os.getpid():
                    self._start()
        with self._lock:
            if len(self._queue) >= self.buffer:
                self._queue.popleft()
                self._dropped += 1
                if self._dropped % 10_000 == 1:
                    log.warning("llmbudget: the ledger %s could not be written for a while; %d oldest record(s) "
                                "dropped (buffer=%d)", self.path, self._dropped, self.buffer)
            self._seq += 1
            self._queue.append((self._seq, record))
            if self._writer is None:
                self._writer = threading.Thread(target=self._run, name="llmbudget-ledger", daemon=True)
                self._writer.start()
        if not self._wake.is_set():  # (setting it again takes a lock and wakes no one)
            self._wake.set()

    def _run(self) -> None:
        while _wait_for_work(self, self._queue):
            _sleep(_GATHER_S)  # the records of calls ending meanwhile go in the same transaction
            self._wake.clear()
            if not self.flush():
                _sleep(self.retry_interval)
                self._wake.set()

    def flush(self) -> bool:
        """Write every queued record now; False when the file could not be written (they stay queued)."""
        with self._write_lock, self._fork_guard:
            with self._lock:
                batch = list(self._queue)
            if not batch:
                return True
            rows = [_row(r) for _, r in batch]
            try:
                self._transaction(lambda conn: conn.executemany(_INSERT, rows))
            except _SQLITE_ERRORS as exc:
                if not self._down:
                    self._down = True
                    log.warning("llmbudget: the ledger %s cannot be written (%s: %s); %d record(s) wait in memory "
                                "and are written when it can", self.path, type(exc).__name__, exc, len(batch))
                return False
            last = batch[-1][0]
            with self._lock:
                while self._queue and self._queue[0][0] <= last:
                    self._queue.popleft()
            if self._down:
                self._down = False
                log.warning("llmbudget: the ledger %s is written again", self.path)
            self._write_kept()
            return True

    def _transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """``work(conn)`` in one write transaction of this thread's connection; a connection left inside the
        transaction (its rollback failed) is closed, not used again."""
        conn = self._ready()
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            if not _rollback(conn):
                self._local.conn = None
                conn.close()
            raise
        return done

    def _write_kept(self, *, force: bool = False) -> None:
        """Write the records that processes which ended during an outage kept in files (at most every
        ``_KEPT_EVERY_S``): each file once, its name recorded in the same transaction, then removed. Never raises."""
        now = time.monotonic()
        if not force and now < self._kept_at + _KEPT_EVERY_S:
            return
        self._kept_at = now

        def write(path: Path, rows: list[tuple[str | None, SpendRecord]]) -> bool:
            return self._transaction(functools.partial(_insert_once, name=path.name,
                                                       rows=[_row(record) for _, record in rows]))

        spool.write_kept(spool.kept_record_files(self.path), write, f"the ledger {self.path}", _SQLITE_ERRORS)

    def _keep_at_exit(self) -> None:
        """The process ends with records the file would not take: keep them in a file beside it, for the next
        process that writes it (see :meth:`_write_kept`), and say so."""
        with self._write_lock, self._lock:  # taken off the queue: the writer thread, still running while other
            # exit hooks run, must not write them too once the file answers (they were written twice)
            batch = [record for _, record in self._queue]
            self._queue.clear()
        if batch:
            spool.keep_records(self.path, [json.dumps(record.to_dict()) for record in batch], f"the ledger {self.path}")

    @property
    def pending(self) -> int:
        """Records queued and not written yet."""
        return len(self._queue)

    def withdraw(self) -> int:
        """Drop every record queued and not written yet (they will not be written); how many there were. A write
        in progress (the writer thread's) ends first: what it wrote is not counted."""
        with self._write_lock, self._lock:
            count = len(self._queue)
            self._queue.clear()
        return count

    def records(self) -> Iterator[SpendRecord]:
        """Every record in the file, oldest first (this process's queue is written first)."""
        if self._pid == os.getpid():
            self.flush()
        rows = self._conn().execute("SELECT id, record FROM spend ORDER BY id").fetchall()
        return (self._read(row_id, text) for row_id, text in rows)

    def _read(self, row_id: int, text: str | bytes) -> SpendRecord:
        """One row's record; ValueError naming the file and the row when it cannot be read."""
        try:
            return SpendRecord.from_dict(json.loads(text))
        except (ValueError, TypeError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError too
            raise ValueError(f"{self.path}: spend row {row_id} is not a readable record ({exc})") from None


_RESTART_LOCK = threading.Lock()
#: How long the writer thread, once woken, waits for more records before it writes: one transaction for the calls
#: ending meanwhile, not one each (under load, each wake cost the serving threads a GIL hand-off too).
_GATHER_S = 0.005


def _restart_in_child() -> None:
    """In a child just forked (one thread, before any other starts): each ledger gets a queue and locks of its own,
    and leaves what the parent had queued to the parent."""
    global _RESTART_LOCK
    _RESTART_LOCK = threading.Lock()
    for ledger in list(_LIVE):
        ledger._start()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_in_child)


@atexit.register
def _flush_at_exit() -> None:
    for ledger in list(_LIVE):
        if ledger._pid == os.getpid():
            try:
                if not ledger.flush():
                    ledger._keep_at_exit()
            except Exception as exc:  # noqa: BLE001 - at exit: say what is lost, never raise
                log.warning("llmbudget: writing the ledger %s at exit failed (%s: %s)", ledger.path,
                            type(exc).__name__, exc)
