"""Budgets as reservations: reserve the worst case, settle the truth, release on error.

A :class:`Budget` says how much may be spent per request (scope), per tenant or
globally, optionally per calendar period (UTC). Each budget resolves, for one
call, to a :class:`Bucket` (a counter key, its limit and when it resets). A
:class:`BudgetStore` reserves an amount against several buckets atomically.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Protocol

from ..money import usd as to_usd

__all__ = [
    "Budget",
    "Bucket",
    "BudgetStore",
    "BudgetStoreUnavailable",
    "MemoryBudgetStore",
    "SQLiteBudgetStore",
    "Refusal",
    "Reservation",
    "PERIODS",
]

Per = Literal["request", "tenant", "global"]
Period = Literal["minute", "hour", "day", "month"]
PERIODS: tuple[str, ...] = ("minute", "hour", "day", "month")
_PERS: tuple[str, ...] = ("request", "tenant", "global")


@dataclass(frozen=True, slots=True)
class Budget:
    """At most ``usd`` per request, per tenant or globally; per calendar ``period`` (UTC) if set."""

    usd: Decimal
    per: Per = "request"
    period: Period | None = None
    name: str = ""
    #: When a shared budget store (Redis) cannot be reached: "closed" refuses (503), "open"
    #: serves and counts locally; None: the store's own setting.
    on_unavailable: Literal["open", "closed"] | None = None

    def __init__(
        self,
        usd: Decimal | float | int | str,
        *,
        per: Per = "request",
        period: Period | None = None,
        name: str = "",
        on_unavailable: Literal["open", "closed"] | None = None,
    ) -> None:
        if per not in _PERS:
            raise ValueError(f"Budget per={per!r}: expected one of {', '.join(_PERS)}")
        if period is not None and period not in PERIODS:
            raise ValueError(f"Budget period={period!r}: expected one of {', '.join(PERIODS)} or None")
        if per == "request" and period is not None:
            raise ValueError("a per-request budget has no period; use per='tenant' or per='global'")
        object.__setattr__(self, "usd", to_usd(usd, "Budget usd"))
        object.__setattr__(self, "per", per)
        object.__setattr__(self, "period", period)
        object.__setattr__(self, "name", name or (f"{per}/{period}" if period else per))
        if on_unavailable not in (None, "open", "closed"):
            raise ValueError(f"Budget on_unavailable={on_unavailable!r}: expected 'open', 'closed' or None")
        object.__setattr__(self, "on_unavailable", on_unavailable)

    def bucket(self, *, tenant: str, request_id: str, now: float) -> Bucket:
        """The counter this budget charges for a call made at ``now`` (epoch seconds)."""
        start, resets = _period_bounds(self.period, now)
        owner = {"request": request_id, "tenant": tenant, "global": ""}[self.per]
        key = f"{self.per}:{self.period or 'all'}:{start}:{owner}"
        return Bucket(key=key, limit=self.usd, budget=self, resets_at=resets)


def _period_bounds(period: str | None, now: float) -> tuple[str, float | None]:
    if period is None:
        return "-", None
    t = datetime.fromtimestamp(now, tz=timezone.utc)
    if period == "minute":
        start = t.replace(second=0, microsecond=0)
        end = start + timedelta(minutes=1)
    elif period == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif period == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    else:
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start.strftime("%Y-%m-%dT%H:%M"), end.timestamp()


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    limit: Decimal
    budget: Budget
    resets_at: float | None


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    keys: tuple[str, ...]
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call was refused: the budget, what was left and what the call would cost."""

    budget: str
    per: str
    period: str | None
    limit_usd: Decimal
    spent_usd: Decimal
    reserved_usd: Decimal
    estimated_cost_usd: Decimal
    resets_at: float | None
    tenant: str | None = None

    @property
    def remaining_usd(self) -> Decimal:
        return max(self.limit_usd - self.spent_usd - self.reserved_usd, Decimal(0))

    def message(self) -> str:
        return (
            f"llmbudget refused this call: budget {self.budget!r} has ${self.remaining_usd} left of "
            f"${self.limit_usd} and the call could cost up to ${self.estimated_cost_usd}."
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (amounts as floats, times as ISO 8601 UTC)."""
        resets = (
            datetime.fromtimestamp(self.resets_at, tz=timezone.utc).isoformat() if self.resets_at is not None else None
        )
        return {
            "budget": self.budget,
            "per": self.per,
            "period": self.period,
            "tenant": self.tenant,
            "limit_usd": float(self.limit_usd),
            "spent_usd": float(self.spent_usd),
            "reserved_usd": float(self.reserved_usd),
            "remaining_usd": float(self.remaining_usd),
            "estimated_cost_usd": float(self.estimated_cost_usd),
            "resets_at": resets,
        }

    def to_json(self) -> bytes:
        return json.dumps(
            {"error": {"message": self.message(), "type": "budget_exceeded", "code": "llmbudget_budget_exceeded",
                       "param": None, "llmbudget": self.to_dict()}}
        ).encode()


class BudgetStoreUnavailable(RuntimeError):
    """The budget store could not be reached and its policy is fail-closed.

    Answer the call with :attr:`status_code` (503) and :meth:`to_json`; do not send it.
    """

    status_code = 503

    def __init__(self, message: str, *, store: str = "redis", retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.store = store
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "retry_after_s": self.retry_after}

    def to_json(self) -> bytes:
        return json.dumps(
            {"error": {"message": str(self), "type": "budget_store_unavailable",
                       "code": "llmbudget_budget_store_unavailable", "param": None, "llmbudget": self.to_dict()}}
        ).encode()


class BudgetStore(Protocol):
    """Where budget counters live. ``reserve`` is atomic across all the buckets it is given."""

    def reserve(self, buckets: Sequence[Bucket], amount: Decimal, *, tenant: str | None = None) -> Reservation | Refusal:
        ...

    def settle(self, reservation: Reservation, actual: Decimal) -> None:
        ...

    def spent(self, key: str) -> tuple[Decimal, Decimal]:
        ...


_ZERO = Decimal(0)


def _check(
    counters: dict[str, tuple[Decimal, Decimal]], buckets: Sequence[Bucket], amount: Decimal, tenant: str | None
) -> Refusal | None:
    """The first bucket that ``amount`` would overflow, as a Refusal (pure; shared by every store)."""
    for bucket in buckets:
        spent, reserved = counters.get(bucket.key, (_ZERO, _ZERO))
        if spent + reserved + amount > bucket.limit:
            b = bucket.budget
            return Refusal(b.name, b.per, b.period, bucket.limit, spent, reserved, amount, bucket.resets_at, tenant)
    return None


@dataclass
class MemoryBudgetStore:
    """Counters in this process (threads share them)."""

    reservation_ttl: float = 600.0
    _counters: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    _open: dict[str, tuple[Reservation, float]] = field(default_factory=dict)
    _settled: dict[str, None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reserve(self, buckets: Sequence[Bucket], amount: Decimal, *, tenant: str | None = None) -> Reservation | Refusal:
        with self._lock:
            self._expire(time.monotonic())
            refusal = _check(self._counters, buckets, amount, tenant)
            if refusal is not None:
                return refusal
            reservation = Reservation(uuid.uuid4().hex, tuple(b.key for b in buckets), amount)
            for key in reservation.keys:
                spent, reserved = self._counters.get(key, (_ZERO, _ZERO))
                self._counters[key] = (spent, reserved + amount)
            self._open[reservation.id] = (reservation, time.monotonic() + self.reservation_ttl)
            return reservation

    def settle(self, reservation: Reservation, actual: Decimal) -> None:
        """Charge ``actual`` and drop the hold; a second settle of one reservation changes nothing."""
        with self._lock:
            if reservation.id in self._settled:
                return
            held = self._open.pop(reservation.id, None) is not None
            self._settled[reservation.id] = None
            if len(self._settled) > 100_000:
                del self._settled[next(iter(self._settled))]
            for key in reservation.keys:
                spent, reserved = self._counters.get(key, (_ZERO, _ZERO))
                if held:
                    reserved = max(reserved - reservation.amount, _ZERO)
                self._counters[key] = (spent + actual, reserved)

    def spent(self, key: str) -> tuple[Decimal, Decimal]:
        with self._lock:
            return self._counters.get(key, (_ZERO, _ZERO))

    def _expire(self, now: float) -> None:
        for rid, (reservation, deadline) in list(self._open.items()):
            if deadline < now:
                del self._open[rid]
                for key in reservation.keys:
                    spent, reserved = self._counters.get(key, (_ZERO, _ZERO))
                    self._counters[key] = (spent, max(reserved - reservation.amount, _ZERO))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_counters (key TEXT PRIMARY KEY, spent TEXT NOT NULL, reserved TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS budget_reservations (
    id TEXT PRIMARY KEY, keys TEXT NOT NULL, amount TEXT NOT NULL, expires REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'open');
CREATE INDEX IF NOT EXISTS budget_reservations_expires ON budget_reservations (state, expires);
"""


def connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A connection in WAL mode, autocommit (transactions are explicit), with a busy timeout."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(os.fspath(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class SQLiteBudgetStore:
    """Counters in a SQLite file shared by every process on the host (WAL, ``BEGIN IMMEDIATE``)."""

    def __init__(self, path: str | os.PathLike[str], *, reservation_ttl: float = 600.0) -> None:
        self.path = Path(path)
        self.reservation_ttl = reservation_ttl
        self._local = threading.local()
        conn = self._conn()
        conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = connect(self.path)
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def _load(self, conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, tuple[Decimal, Decimal]]:
        marks = ",".join("?" * len(keys))
        rows = conn.execute(f"SELECT key, spent, reserved FROM budget_counters WHERE key IN ({marks})", tuple(keys))
        return {key: (Decimal(spent), Decimal(reserved)) for key, spent, reserved in rows}

    def _add(self, conn: sqlite3.Connection, key: str, spent: Decimal, reserved: Decimal) -> None:
        row = conn.execute("SELECT spent, reserved FROM budget_counters WHERE key = ?", (key,)).fetchone()
        old_spent, old_reserved = (Decimal(row[0]), Decimal(row[1])) if row else (_ZERO, _ZERO)
        conn.execute(
            "INSERT OR REPLACE INTO budget_counters (key, spent, reserved) VALUES (?, ?, ?)",
            (key, str(old_spent + spent), str(max(old_reserved + reserved, _ZERO))),
        )

    def _expire(self, conn: sqlite3.Connection, now: float) -> None:
        for rid, keys, amount in conn.execute(
            "SELECT id, keys, amount FROM budget_reservations WHERE state = 'open' AND expires < ?", (now,)
        ).fetchall():
            conn.execute("UPDATE budget_reservations SET state = 'expired' WHERE id = ?", (rid,))
            for key in json.loads(keys):
                self._add(conn, key, _ZERO, -Decimal(amount))
        # Keep settled and expired ids a day, so late or repeated settles stay idempotent.
        conn.execute("DELETE FROM budget_reservations WHERE state != 'open' AND expires < ?", (now - 86400,))

    def reserve(self, buckets: Sequence[Bucket], amount: Decimal, *, tenant: str | None = None) -> Reservation | Refusal:
        conn = self._conn()
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._expire(conn, now)
            refusal = _check(self._load(conn, [b.key for b in buckets]), buckets, amount, tenant)
            if refusal is not None:
                conn.execute("COMMIT")
                return refusal
            reservation = Reservation(uuid.uuid4().hex, tuple(b.key for b in buckets), amount)
            for key in reservation.keys:
                self._add(conn, key, _ZERO, amount)
            conn.execute(
                "INSERT INTO budget_reservations (id, keys, amount, expires) VALUES (?, ?, ?, ?)",
                (reservation.id, json.dumps(reservation.keys), str(amount), now + self.reservation_ttl),
            )
            conn.execute("COMMIT")
            return reservation
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def settle(self, reservation: Reservation, actual: Decimal) -> None:
        """Charge ``actual`` and drop the hold; a second settle of one reservation changes nothing."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT state FROM budget_reservations WHERE id = ?", (reservation.id,)).fetchone()
            if row is not None and row[0] != "settled":
                held = reservation.amount if row[0] == "open" else _ZERO
                conn.execute("UPDATE budget_reservations SET state = 'settled' WHERE id = ?", (reservation.id,))
                for key in reservation.keys:
                    self._add(conn, key, actual, -held)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def spent(self, key: str) -> tuple[Decimal, Decimal]:
        return self._load(self._conn(), [key]).get(key, (_ZERO, _ZERO))
