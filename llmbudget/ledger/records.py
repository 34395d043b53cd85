"""Where spend records go: in memory or a SQLite file (one row per attempt)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..calls import SpendRecord
from .budgets import connect

__all__ = ["Ledger", "MemoryLedger", "SQLiteLedger"]


class Ledger(Protocol):
    """Keeps every attempt's :class:`SpendRecord`."""

    def add(self, record: SpendRecord) -> None: ...

    def records(self) -> Iterator[SpendRecord]: ...


@dataclass
class MemoryLedger:
    """Records in a list (the default; nothing is written to disk)."""

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
"""


class SQLiteLedger:
    """Records in a SQLite file (WAL), safe for several processes on one host."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._conn().executescript(_SCHEMA)

    def _conn(self):  # type: ignore[no-untyped-def]
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = connect(self.path)
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def add(self, record: SpendRecord) -> None:
        self._conn().execute(
            "INSERT INTO spend (time, tenant, request_id, test_id, endpoint, model, cost_usd, record)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (record.time, record.tenant, record.request_id, record.test_id, record.endpoint, record.model,
             str(record.cost_usd), json.dumps(record.to_dict())),
        )

    def records(self) -> Iterator[SpendRecord]:
        rows = self._conn().execute("SELECT record FROM spend ORDER BY id").fetchall()
        return (SpendRecord.from_dict(json.loads(row[0])) for row in rows)
