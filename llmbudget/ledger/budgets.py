"""Budgets as reservations: reserve the worst case, settle the truth, release on error.

A :class:`Budget` says how much may be spent per request (scope), per tenant or
globally, optionally per calendar period (UTC). Each budget resolves, for one
call, to a :class:`Bucket` (a counter key, its limit and when it resets). A
:class:`BudgetStore` reserves an amount against several buckets atomically.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar
from urllib.parse import parse_qsl

from ..money import exact_usd
from ..money import usd as to_usd
from . import spool

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
    "SQLITE_TIMEOUT_S",
    "WouldWait",
    "no_wait",
]

log = logging.getLogger("llmbudget.ledger.budgets")
_sleep = time.sleep  # bound at import: tests stand a fake clock in for ``time``
_WRITER_IDLE_S = 30.0  # a writer thread with nothing to write for this long ends
_T = TypeVar("_T")

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
    #: When the budget store (SQLite, Redis) is unavailable: "closed" refuses (503), "open"
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
        return Bucket(key=key, limit=self.usd, budget=self, resets_at=resets, made_at=now)


def _period_bounds(period: str | None, now: float) -> tuple[str, float | None]:
    if period is None:
        return "-", None
    t = datetime.fromtimestamp(now, tz=UTC)
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


def period_over(key: str, now: float, grace: float = 0.0) -> bool:
    """Whether the counter ``key`` (a :meth:`Budget.bucket` key) belongs to a period that ended ``grace`` seconds
    or more before ``now``: a counter no call charges any more. Counters without a period never end."""
    parts = key.split(":", 2)  # per, period, then the start ("%Y-%m-%dT%H:%M", which holds a colon) and owner
    if len(parts) < 3 or parts[1] not in ("minute", "hour", "day", "month"):
        return False
    try:
        start = datetime.strptime(parts[2][:16], "%Y-%m-%dT%H:%M").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return False
    end = _period_bounds(parts[1], start)[1]
    return end is not None and end + grace <= now


#: How often a store drops the counters of periods that are over (seconds).
PRUNE_EVERY = 60.0


def _latest(buckets: Sequence[Bucket], seen: float) -> float:
    """The latest time buckets were made for: ``seen`` or any of ``buckets``' (whose ``made_at`` is set)."""
    for bucket in buckets:
        if bucket.made_at is not None and bucket.made_at > seen:
            seen = bucket.made_at
    return seen


def budget_list(value: Any, what: str) -> tuple[Budget, ...]:
    """``value`` as a tuple of :class:`Budget`, or a ``TypeError`` naming ``what``: a single Budget, a string or an
    item that is not a Budget is refused (one that was not failed at the first reservation, unbudgeted)."""
    if isinstance(value, (Budget, str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{what} must be a list of llmbudget.Budget, got {value!r}: expected a list of Budget, "
                        "e.g. [Budget('0.05')]")
    result = tuple(value)
    for i, budget in enumerate(result):
        if not isinstance(budget, Budget):
            raise TypeError(f"{what} must be a list of llmbudget.Budget: item {i} is {budget!r}, not a Budget")
    return result


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    limit: Decimal
    budget: Budget
    resets_at: float | None
    #: The time (epoch seconds, the engine's clock) the bucket was made for: stores drop the counters of periods
    #: over by that clock, not the wall's (a replay freezes its clock at its start).
    made_at: float | None = None


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
            f"llmbudget refused this call: budget {self.budget!r} has {exact_usd(self.remaining_usd)} left of "
            f"{exact_usd(self.limit_usd)} and the call could cost up to {exact_usd(self.estimated_cost_usd)}."
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (amounts as floats, times as ISO 8601 UTC)."""
        resets = (
            datetime.fromtimestamp(self.resets_at, tz=UTC).isoformat() if self.resets_at is not None else None
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


def unkept(journal: spool.Journal, where: str, store: str, retry_after: float) -> BudgetStoreUnavailable:
    """A fail-open store's refusal while what it would serve cannot be kept on disk (see ``Journal.keeps``)."""
    return BudgetStoreUnavailable(
        f"llmbudget could not use its budget store ({where}), and what it would serve meanwhile cannot be kept on "
        f"disk either ({journal.path}: {journal.error}): budgeted calls are refused until one of them can, as "
        f"on_unavailable='closed' refuses them (served, they would be lost at exit, and each process after this "
        f"one would serve another share of the limit)", store=store, retry_after=retry_after)


class BudgetStoreUnavailable(RuntimeError):
    """The budget store could not be reached or written and its policy is fail-closed.

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


class WouldWait(Exception):
    """Raised by a store's ``reserve`` inside :func:`no_wait` instead of waiting (for a lock held by
    another connection); nothing was reserved. The caller tries again where it may wait."""


_NO_WAIT: contextvars.ContextVar[bool] = contextvars.ContextVar("llmbudget_no_wait", default=False)


@contextmanager
def no_wait() -> Iterator[None]:
    """Store calls made inside never wait: the async transport runs them on the event loop this way.

    A :class:`SQLiteBudgetStore` then raises :class:`WouldWait` from ``reserve`` when another
    connection holds the file's write lock, and hands a settle it cannot write at once to its
    writer thread. Stores that may wait otherwise (Redis: the network) say ``blocking = True`` and
    are never called inside. A local cache store (:class:`~llmbudget.cache.store.CacheStore`)
    raises :class:`WouldWait` from its lookups and stores instead of waiting for its database or
    its index, or doing more than a quick search's work there.
    """
    token = _NO_WAIT.set(True)
    try:
        yield
    finally:
        _NO_WAIT.reset(token)


class BudgetStore(Protocol):
    """Where budget counters live. ``reserve`` is atomic across all the buckets it is given; its hold lapses
    after ``ttl`` seconds (default: the store's ``reservation_ttl``) unless settled first."""

    def reserve(self, buckets: Sequence[Bucket], amount: Decimal, *, tenant: str | None = None,
                ttl: float | None = None) -> Reservation | Refusal:
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

    blocking: ClassVar[bool] = False  # never waits: the async transport calls it on the event loop

    reservation_ttl: float = 600.0
    _counters: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    _open: dict[str, tuple[Reservation, float]] = field(default_factory=dict)
    _settled: dict[str, None] = field(default_factory=dict)
    #: Holds that expired unsettled, charged their amount (see :meth:`_expire`): a late settle replaces it.
    _expired: dict[str, Decimal] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pruned_at: float = field(default_factory=time.monotonic)
    _clock_seen: float = 0.0  # the latest time buckets were made for (the engine's clock)

    def reserve(self, buckets: Sequence[Bucket], amount: Decimal, *, tenant: str | None = None,
                ttl: float | None = None) -> Reservation | Refusal:
        with self._lock:
            self._expire(time.monotonic())
            self._clock_seen = _latest(buckets, self._clock_seen)
            if time.monotonic() - self._pruned_at >= PRUNE_EVERY:
                self._prune()
            refusal = _check(self._counters, buckets, amount, tenant)
            if refusal is not None:
                return refusal
            reservation = Reservation(uuid.uuid4().hex, tuple(b.key for b in buckets), amount)
            for key in reservation.keys:
                spent, reserved = self._counters.get(key, (_ZERO, _ZERO))
                self._counters[key] = (spent, reserved + amount)
            self._open[reservation.id] = (reservation, time.monotonic() + (self.reservation_ttl if ttl is None else ttl))
            return reservation

    def settle(self, reservation: Reservation, actual: Decimal) -> None:
        """Charge ``actual`` and drop the hold; a second settle of one reservation changes nothing."""
        with self._lock:
            if reservation.id in self._settled:
                return
            held = self._open.pop(reservation.id, None) is not None
            charged = self._expired.pop(reservation.id, _ZERO)  # its worst case, charged when its hold expired
            self._settled[reservation.id] = None
            if len(self._settled) > 100_000:
                del self._settled[next(iter(self._settled))]
            for key in reservation.keys:
                if key not in self._counters:  # a period over, whose counter was dropped: nothing counts it now
                    continue
                spent, reserved = self._counters[key]
                if held:
                    reserved = max(reserved - reservation.amount, _ZERO)
                self._counters[key] = (spent + actual - charged, reserved)

    def spent(self, key: str) -> tuple[Decimal, Decimal]:
        with self._lock:
            return self._counters.get(key, (_ZERO, _ZERO))

    def _expire(self, now: float) -> None:
        """Holds past their time, never settled, are charged what they held: the call may have been served (a
        process ended mid-call: the provider bills the answers it was generating, and a released hold let
        calls past the limit). A settle that comes after all replaces the charge with the cost."""
        for rid, (reservation, deadline) in list(self._open.items()):
            if deadline < now:
                del self._open[rid]
                self._expired[rid] = reservation.amount
                if len(self._expired) > 100_000:  # the oldest forgotten: its late settle changes nothing (the
                    oldest = next(iter(self._expired))  # charge stands), never charged on top of it
                    del self._expired[oldest]
                    self._settled[oldest] = None
                for key in reservation.keys:
                    if key in self._counters:
                        spent, reserved = self._counters[key]
                        self._counters[key] = (spent + reservation.amount, max(reserved - reservation.amount, _ZERO))

    def _prune(self) -> None:
        """Drop the counters of periods that are over and hold nothing (a process with minute budgets for
        2,000 tenants kept 360,000 counters after three hours)."""
        self._pruned_at = time.monotonic()
        now = self._clock_seen  # the clock the keys were made by
        for key in [k for k, (_, reserved) in self._counters.items() if not reserved and period_over(k, now)]:
            del self._counters[key]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_counters (key TEXT PRIMARY KEY, spent TEXT NOT NULL, reserved TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS budget_reservations (
    id TEXT PRIMARY KEY, keys TEXT NOT NULL, amount TEXT NOT NULL, expires REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'open');
CREATE INDEX IF NOT EXISTS budget_reservations_expires ON budget_reservations (state, expires);
"""

#: How long a SQLite budget store waits for another connection's write lock before it counts as unavailable.
SQLITE_TIMEOUT_S = 5.0
#: Errors that make a SQLite budget store unavailable: locked past the wait, disk full, I/O errors, a bad file.
_SQLITE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.DatabaseError, OSError)
_SQLITE_OPTIONS = ("on_unavailable", "timeout", "settle_delay", "open_share", "reservation_ttl")
#: While a SQLite store is down (fail-open), seconds between two reads of the other processes' waiting settles.
_PEEK_S = 1.0

#: While a budget store is down (fail-open), the share of a budget's limit one process may spend beyond the last
#: spend it read.
DEFAULT_OPEN_SHARE = 0.25
DEFAULT_RESERVATION_TTL_S = 600.0


def _open_share(given: float | None, options: Mapping[str, str], store: str) -> float:
    """``open_share`` from the keyword (first) or the URL's options, checked: a share in (0, 1]."""
    raw: Any = given if given is not None else options.get("open_share", DEFAULT_OPEN_SHARE)
    try:
        share = float(raw)
    except (TypeError, ValueError):
        share = -1.0
    if not 0.0 < share <= 1.0:
        raise ValueError(f"open_share={raw!r}: expected the share of a budget one process may spend while {store} is "
                         "down, in (0, 1]")
    return share

def _reservation_ttl(given: float | None, options: Mapping[str, str]) -> float:
    """``reservation_ttl`` from the keyword (first) or the path's / URL's options (600 s by default), checked: how
    long a hold nobody settles (its process killed) keeps a budget's room."""
    raw: Any = given if given is not None else options.get("reservation_ttl", DEFAULT_RESERVATION_TTL_S)
    try:
        ttl = float(raw)
    except (TypeError, ValueError):
        ttl = -1.0
    if not 0.0 < ttl < float("inf"):
        raise ValueError(f"reservation_ttl={raw!r}: expected a positive number of seconds after which a hold nobody "
                         "settled (its process killed) is released; longer than the longest call")
    return ttl


_LOCAL_PREFIX = "local-"
#: Settles that waited for the file, written in one transaction once it answers.
_REPLAY_BATCH = 256


def connect(path: str | os.PathLike[str], *, timeout: float = 30.0) -> sqlite3.Connection:
    """A connection in WAL mode, autocommit (transactions are explicit), waiting ``timeout`` s for locks."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(os.fspath(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def thread_connection(local: threading.local, path: str | os.PathLike[str], *, quick: bool,
                      timeout: float) -> tuple[sqlite3.Connection, bool]:
    """This thread's connection to ``path`` kept in ``local`` (made again in a forked child); ``quick``: its
    other one, which never waits for a lock (for the event loop, inside :func:`no_wait`). True when new."""
    name = "quick" if quick else "conn"
    conn: sqlite3.Connection | None = getattr(local, name, None)
    if conn is not None and getattr(local, name + "_pid", None) == os.getpid():
        return conn, False
    conn = connect(path, timeout=0.0 if quick else timeout)
    setattr(local, name, conn)
    setattr(local, name + "_pid", os.getpid())
    return conn, True


def is_busy(exc: BaseException) -> bool:
    """Whether a SQLite error says another connection holds the lock (SQLITE_BUSY, SQLITE_LOCKED)."""
    return "locked" in str(exc) or "busy" in str(exc)


def is_outage(exc: BaseException, path: Any) -> bool:
    """Whether opening an existing SQLite file at ``path`` failed for a while, not for good: its lock held, the disk
    full, an I/O error (SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR, SQLITE_FULL). A store made then starts as one
    that became unavailable (a worker restarted during the outage must come up); a file that is not SQLite's, or
    a folder it cannot create a file in, is a mistake to report at start-up."""
    code = getattr(exc, "sqlite_errorcode", None)
    transient = ((code & 0xFF) in (5, 6, 10, 13)) if isinstance(code, int) else (
        is_busy(exc) or "disk I/O error" in str(exc) or "disk is full" in str(exc))
    try:
        return transient and os.path.isfile(os.fspath(path))
    except (TypeError, ValueError):
        return False


def _rollback(conn: sqlite3.Connection) -> bool:
    """Roll back the open transaction, if any; never raises (the error being handled is the one to report).

    False when the connection is left inside a transaction and must not be used again.
    """
    if not conn.in_transaction:  # SQLite may already have rolled back (SQLITE_FULL, SQLITE_IOERR)
        return True
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        log.debug("llmbudget: ROLLBACK failed as well (%s)", exc)
    return not conn.in_transaction


def _split_options(path: str | os.PathLike[str]) -> tuple[Path, dict[str, str]]:
    """The file path without llmbudget's ``?on_unavailable=...&timeout=...`` suffix, and those options."""
    text = os.fspath(path)
    if "?" not in text:
        return Path(text), {}
    base, _, query = text.partition("?")
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=True))
    except ValueError:
        options = {"": query}
    unknown = sorted(set(options) - set(_SQLITE_OPTIONS))
    if unknown:
        raise ValueError(
            f"SQLite budget store {text!r}: unknown option(s) {', '.join(map(repr, unknown))} after '?'; "
            f"expected on_unavailable=open|closed, timeout=<seconds>, settle_delay=<seconds>, open_share=<0-1> and "
            f"reservation_ttl=<seconds>, "
            f"e.g. 'budgets.db?on_unavailable=open&timeout=2'"
        )
    return Path(base), options


_LIVE_STORES: weakref.WeakSet[SQLiteBudgetStore] = weakref.WeakSet()
# Objects whose threads use SQLite under the locks in their ``_fork_guards`` (taken in that order). A
# fork while a thread is inside SQLite would leave SQLite's own mutexes held in the child (which then
# hangs): forks wait for the write in progress.
_FORK_GUARDED: weakref.WeakSet[Any] = weakref.WeakSet()
_fork_held: list[threading.Lock] = []


def _before_fork() -> None:
    for obj in list(_FORK_GUARDED):
        for guard in obj._fork_guards:
            guard.acquire()
            _fork_held.append(guard)


def _after_fork() -> None:
    while _fork_held:
        _fork_held.pop().release()


def _after_fork_in_child() -> None:
    _after_fork()
    for obj in list(_FORK_GUARDED):  # another thread of the parent may have held it (deferring a settle)
        if isinstance(obj, SQLiteBudgetStore):
            obj._lock = threading.Lock()
            obj._replaying = 0
            obj._unwritten = {}  # (the parent's settles in flight: the parent writes them, and their rows)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork_in_child)


def _wait_for_work(owner: Any, queued: Sized) -> bool:
    """In a writer thread: wait for ``owner._wake``. False when the thread should end instead: nothing
    woke it for ``_WRITER_IDLE_S`` and nothing is ``queued`` (``owner._writer`` is then cleared, under
    ``owner._lock``, so the next write starts a new thread)."""
    while not owner._wake.wait(_WRITER_IDLE_S):
        with owner._lock:
            if not queued and not owner._wake.is_set():
                owner._writer = None
                return False
    return True


@atexit.register
def _flush_at_exit() -> None:
    for store in list(_LIVE_STORES):
        try:
            store.flush()
            store._usable()  # writes what waits, where the file answers again
            if store._pending:
                store._journal.warn_at_exit(len(store._pending), f"to SQLite at {store.path}")
        except Exception as exc:  # noqa: BLE001 - at exit: say what is lost, never raise
            log.warning("llmbudget: writing what waited for SQLite at %s at exit failed (%s: %s)", store.path,
                        type(exc).__name__, exc)


class SQLiteBudgetStore:
    """Counters in a SQLite file shared by every process on the host (WAL, ``BEGIN IMMEDIATE``).

    ``path`` may end in ``?on_unavailable=open&timeout=2``; the keyword arguments win over it.
    A write waits at most ``timeout`` seconds (default :data:`SQLITE_TIMEOUT_S`) for another
    connection's lock. When the file cannot be written (locked past that wait, disk full, I/O
    error), ``on_unavailable`` decides, as for Redis: ``"closed"`` (default) raises
    :class:`BudgetStoreUnavailable` (a 503-style error), ``"open"`` serves and counts in this
    process against the last spend read from the file (read again where it still reads: a held lock
    or a full disk stop writes, not reads), and never more than ``open_share`` (default 0.25) of a
    limit per process while it is down, so a process that never read a budget cannot spend all of
    it again: the worst overspend of one outage is ``processes x open_share x limit``. Either way
    the cause is logged once per outage, the file is not tried again for ``retry_interval`` seconds, and settles that could not
    be written wait in memory and are written (idempotently) once the file answers again; each is kept on disk
    beside the file meanwhile, for the host's other processes to count, and to write if this one ends first
    (:mod:`llmbudget.ledger.spool`).

    ``settle_delay`` (seconds, default None): with None a settle is written before
    :meth:`settle` returns, so every process sees it at once (inside :func:`no_wait` on an event
    loop, at the end of the loop's turn, with the turn's other settles or in a reservation's
    transaction). With a number, settles queue and
    are written in the same transaction as this process's next reservation, or by a writer thread
    after that delay: one write per call instead of two, at the price of other processes seeing a
    settled call's hold (its worst case, never less than its cost) for up to that long, so they may
    refuse a call early but never overspend.

    Inside :func:`no_wait` (the async transport, on the event loop) it never waits for the lock:
    ``reserve`` raises :class:`WouldWait` when another connection holds it, and a settle it cannot
    write at once goes to its writer thread.
    """

    blocking: ClassVar[bool] = False  # inside no_wait() it never waits (see above)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        reservation_ttl: float | None = None,
        timeout: float | None = None,
        on_unavailable: Literal["open", "closed"] | None = None,
        retry_interval: float = 1.0,
        settle_delay: float | None = None,
        open_share: float | None = None,
    ) -> None:
        path, options = _split_options(path)
        self.open_share = _open_share(open_share, options, "the SQLite file")
        reservation_ttl = _reservation_ttl(reservation_ttl, options)
        mode = on_unavailable or options.get("on_unavailable", "closed")
        if mode not in ("open", "closed"):
            raise ValueError(f"on_unavailable={mode!r}: expected 'open' (serve and count locally) or 'closed' (refuse)")
        wait: Any = timeout if timeout is not None else options.get("timeout", SQLITE_TIMEOUT_S)
        try:
            wait = float(wait)
        except ValueError:
            wait = -1.0
        if not wait > 0 or wait == float("inf"):
            raise ValueError(f"SQLite budget store timeout={timeout if timeout is not None else options['timeout']!r}: "
                             "expected a positive number of seconds to wait for the database lock")
        if not retry_interval >= 0:
            raise ValueError(f"retry_interval={retry_interval!r}: expected seconds >= 0")
        if settle_delay is None and "settle_delay" in options:
            try:
                settle_delay = float(options["settle_delay"])
            except ValueError:
                settle_delay = -1.0
        if settle_delay is not None and not 0 <= settle_delay < float("inf"):
            raise ValueError(f"settle_delay={settle_delay!r}: expected seconds >= 0, or None to write each settle "
                             "before settle() returns")
        self.path = path
        self.reservation_ttl = reservation_ttl
        self.timeout = wait
        self.on_unavailable: Literal["open", "closed"] = mode  # type: ignore[assignment]
        self.retry_interval = float(retry_interval)
        self._threads = threading.local()
        self._lock = threading.Lock()
        self._schema_ready = False
        self._down_until = 0.0  # monotonic; while in the future, the file is not tried
        self._down = False  # an outage is under way (its warning was logged)
        self._last_error: BaseException | None = None
        self._pending: spool.Waiting[Decimal] = spool.Waiting()  # settles waiting for the file
        self._local: dict[str, tuple[Decimal, Decimal]] = {}  # fail-open counters: (spent, reserved)
        self._local_open: dict[str, tuple[Reservation, float]] = {}
        #: Fail-open holds whose settle is queued or being written: their rows on disk stay until it is.
        self._unwritten: dict[str, Reservation] = {}
        self._known: OrderedDict[str, Decimal] = OrderedDict()  # last spent read from the file, per key
        self.settle_delay = settle_delay
        self._settles: deque[tuple[Reservation, Decimal]] = deque()
        # the event loop whose next turn writes the queued settles (see settle); weak: it may close first
        self._flush_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._writing = 0  # settles flush() took and has not written (or deferred) yet
        self._settle_lock = threading.Lock()  # one settle writer at a time
        # One transaction at a time per process: threads wait on this lock, woken at once, instead of
        # polling SQLite's (whose busy handler sleeps and retries, so under load a waiter can starve).
        self._write_lock = threading.Lock()
        self._fork_guards = (self._settle_lock, self._write_lock)  # in flush()'s order
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._writer_pid = os.getpid()
        self._expire_every = min(1.0, reservation_ttl / 10)
        self._expired_at = 0.0  # time.time() of this process's last sweep of expired holds
        self._pruned_at = time.time()  # ... and of counters of periods over
        self._clock_seen = 0.0  # the latest time buckets were made for (the engine's clock)
        self._spool_due = 0.0  # monotonic: when to look for settles processes that ended kept (see .spool)
        self._inherited: dict[str, Decimal] = {}  # other processes' waiting spend per key, while the file is down
        self._peeked_at = 0.0  # monotonic: when _inherited was last read
        name = os.fspath(self.path)  # what .spool names this store's files after (none for an in-memory database)
        self._spool_base = None if name == ":memory:" or name.startswith("file:") else Path(name)
        self._journal = spool.Journal(self._spool_base)  # this process's waiting settles, on disk
        self._peeker = spool.Peeker()  # the other processes' files, read as they grow
        self._replaying = 0  # settles taken off _pending and being written
        try:
            self._conn()
        except _SQLITE_ERRORS as exc:
            if not is_outage(exc, self.path):
                raise
            self._mark_down(exc)  # fail-closed budgets refuse, fail-open ones serve within their share
        _LIVE_STORES.add(self)
        _FORK_GUARDED.add(self)

    # -- settles kept across a restart (see .spool) -----------------------------------------------

    def _spooled(self, rows: list[dict[str, Any]]) -> list[tuple[Reservation, Decimal]]:
        """The settles of spool ``rows`` that read (a damaged row is skipped, and said so)."""
        out = []
        for row in rows:
            try:
                reservation = Reservation(str(row["id"]), tuple(map(str, row["keys"])), Decimal(row["amount"]))
                actual = Decimal(row["actual"])
                if not all(v.is_finite() and 0 <= v < spool.MAX_USD for v in (actual, reservation.amount)):
                    raise ValueError(f"amounts {row['amount']!r}, {row['actual']!r}")
            except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
                log.warning("llmbudget: a kept budget settle of %s does not read (%s); skipped", self.path, exc)
                continue
            out.append((reservation, actual))
        return out

    def _take_spool(self) -> None:
        """The file answers: write what processes that have ended kept (see :mod:`.spool`), then drop their files."""
        now = time.monotonic()
        if now < self._spool_due:
            return
        self._spool_due = now + spool.EVERY_S
        base = self._spool_base
        if base is None:
            return
        found = spool.orphans(base)
        if not found:
            return
        settles = spool.latest(self._spooled([row for _, rows in found for row in rows]))
        self._transaction(lambda conn: self._settle_all_in(conn, settles))  # raises: the files stay
        spool.remove([path for path, _ in found])
        if settles:
            log.warning("llmbudget: SQLite budget store %s: wrote %d settle(s) that processes which have ended "
                        "could not", self.path, len(settles))

    def _peek_spool(self) -> None:
        """The file is down: what other processes keep waiting counts as spent here too."""
        self._peeked_at = time.monotonic()
        base = self._spool_base
        if base is None:
            return
        with self._lock:
            own = {r.id for r, _ in self._pending}
        self._inherited = spool.spent_by_key(self._spooled(self._peeker.rows(base, skip=self._journal.own_path)), own)
        if self._inherited:
            self._spool_due = 0.0  # tried again after the outage, the store writes those it may at once

    def _conn(self, *, quick: bool = False) -> sqlite3.Connection:
        """This thread's connection; ``quick``: its other one, which never waits for a lock."""
        conn, _ = thread_connection(self._threads, self.path, quick=quick, timeout=self.timeout)
        if not self._schema_ready:
            conn.executescript(_SCHEMA)
            self._schema_ready = True
        return conn

    def _transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """``work`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT``; on any error, rolled back and re-raised as it was.

        Inside :func:`no_wait`, :class:`WouldWait` when another connection holds the write lock.
        """
        quick = _NO_WAIT.get()
        started = time.monotonic()
        locked = self._write_lock.acquire(blocking=False) if quick else self._write_lock.acquire(timeout=self.timeout)
        if not locked:
            if quick:
                raise WouldWait(f"SQLite budget store {self.path}: another thread is writing")
            raise sqlite3.OperationalError("database is locked")  # as SQLite says after its own wait
        try:
            conn = self._conn(quick=quick)
            # The wait for this process's lock counts against ``timeout``: with another process holding the
            # file, a thread waited ``timeout`` for the thread before it, then ``timeout`` again in SQLite.
            waited = 0.0 if quick else time.monotonic() - started
            if waited > 0.001:
                if time.monotonic() < self._down_until:  # the thread before found the file unavailable: its cause
                    raise sqlite3.OperationalError(str(self._last_error or "database is locked"))
                conn.execute(f"PRAGMA busy_timeout={max(1, int((self.timeout - waited) * 1000))}")
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if quick and is_busy(exc):  # another process is writing
                    raise WouldWait(f"SQLite budget store {self.path}: another process is writing") from exc
                raise
            finally:
                if waited > 0.001:
                    conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            try:
                result = work(conn)
                conn.execute("COMMIT")
                return result
            except BaseException:
                if not _rollback(conn):
                    setattr(self._threads, "quick" if quick else "conn", None)
                    conn.close()
                raise
        finally:
            self._write_lock.release()

    # -- availability ---------------------------------------------------------------------------

    def _usable(self) -> bool:
        """Whether to try the file now; writes waiting settles first when it was unavailable."""
        if time.monotonic() < self._down_until:
            return False
        try:
            self._take_spool()
            if self._pending:
                self._replay()
        except _SQLITE_ERRORS as exc:
            self._mark_down(exc)
            return False
        return True

    def _mark_down(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.retry_interval
        self._last_error = exc
        self._peek_spool()
        with self._lock:
            first, self._down = not self._down, True
        for reservation, actual in self._take_settles():  # counted in this process until written
            self._defer(reservation, actual)
        if first:
            action = ("serving and counting in this process until it is back" if self.on_unavailable == "open"
                      else "refusing budgeted calls (fail-closed) until it is back")
            log.warning("llmbudget: SQLite budget store %s is unavailable (%s); %s",
                        self.path, self._cause(exc), action)
        else:
            log.debug("llmbudget: SQLite budget store %s is still unavailable (%s)", self.path, self._cause(exc))

    def _mark_up(self) -> None:
        if self._down:
            with self._lock:
                was, self._down = self._down, False
            if was:
                log.warning("llmbudget: SQLite budget store %s is available again", self.path)
                with self._lock:  # a file made to keep what this process serves, that nothing waits in, goes
                    if not self._pending and not self._replaying:
                        self._clear_journal()

    def _cause(self, exc: BaseException | None) -> str:
        late = exc is None
        exc = exc or self._last_error
        if exc is None:
            return "unavailable at its last try"
        text = f"{type(exc).__name__}: {exc}"
        if is_busy(exc):
            text += f" (after waiting {self.timeout:g} s for the lock)"
        return text + (f", at its last try under {self.retry_interval:g} s ago" if late else "")

    def _unavailable(self, exc: BaseException | None) -> BudgetStoreUnavailable:
        return BudgetStoreUnavailable(
            f"llmbudget could not use its budget store (SQLite at {self.path}: {self._cause(exc)}); "
            f"budgeted calls are refused until it can (on_unavailable='closed'). Check the disk and any process "
            f"holding the database lock, or set on_unavailable='open' to serve and count locally meanwhile.",
            store="sqlite", retry_after=self.retry_interval,
        )

    def _replay(self) -> None:
        """Write settles made while the file was unavailable (idempotent: each id is charged once), up to
        :data:`_REPLAY_BATCH` in one transaction (one each, 10,000 settles held the calls that wrote them for
        seconds)."""
        replayed = 0
        while True:
            with self._lock:
                if not self._pending:
                    if not self._replaying:  # none waits, none is being written: its file goes
                        self._clear_journal()
                    break
                batch = [self._pending.popleft() for _ in range(min(len(self._pending), _REPLAY_BATCH))]
                self._replaying += 1
            try:
                self._transaction(lambda conn: self._settle_all_in(conn, batch))
            except BaseException:
                with self._lock:
                    for item in reversed(batch):
                        self._pending.appendleft(item)
                    self._replaying -= 1
                raise
            with self._lock:
                self._replaying -= 1
                for reservation, actual in batch:
                    for key in reservation.keys:
                        spent, reserved = self._local.get(key, (_ZERO, _ZERO))
                        self._local[key] = (max(spent - actual, _ZERO), reserved)
                        if key in self._known:
                            self._known[key] += actual
            replayed += len(batch)
        with self._lock:
            if not self._local_open:
                self._local = {k: v for k, v in self._local.items() if v != (_ZERO, _ZERO)}
        if replayed:
            log.warning("llmbudget: SQLite budget store %s: wrote %d settle(s) that waited in memory",
                        self.path, replayed)

    # -- reading and writing the file -------------------------------------------------------------

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
            for key in json.loads(keys):  # charged what it held (see MemoryBudgetStore._expire); a late settle
                self._add(conn, key, Decimal(amount), -Decimal(amount))  # replaces the charge with the cost
        # Keep settled and expired ids a day, so late or repeated settles stay idempotent.
        conn.execute("DELETE FROM budget_reservations WHERE state != 'open' AND expires < ?", (now - 86400,))
        if now - self._pruned_at >= PRUNE_EVERY and self._clock_seen:
            # counters of periods over for a day by the clock the keys were made by (late settles still find
            # theirs) and holding nothing
            self._pruned_at = now
            cutoff = min(now, self._clock_seen) - 86400
            for per in ("tenant", "global"):
                for period in ("minute", "hour", "day", "month"):
                    prefix = f"{per}:{period}:"  # keys sort by their period's start: one range per kind
                    conn.execute("DELETE FROM budget_counters WHERE key >= ? AND key < ? AND CAST(reserved AS REAL) = 0",
                                 (prefix, prefix + _period_bounds(period, cutoff)[0]))

    def _reserve_in(self, conn: sqlite3.Connection, buckets: Sequence[Bucket], amount: Decimal,
                    tenant: str | None, settles: Sequence[tuple[Reservation, Decimal]], ttl: float
                    ) -> Reservation | Refusal:
        now = time.time()
        self._clock_seen = _latest(buckets, self._clock_seen)
        self._settle_all_in(conn, settles)  # this process's settles first: their holds are freed
        if now - self._expired_at >= self._expire_every:
            self._expire(conn, now)
            self._expired_at = now
        counters = self._load(conn, [b.key for b in buckets])
        with self._lock:
            for bucket in buckets:
                self._remember(bucket.key, counters.get(bucket.key, (_ZERO, _ZERO))[0])
        refusal = _check(counters, buckets, amount, tenant)
        if refusal is not None:
            return refusal
        reservation = Reservation(uuid.uuid4().hex, tuple(b.key for b in buckets), amount)
        for key in reservation.keys:
            self._add(conn, key, _ZERO, amount)
        conn.execute(
            "INSERT INTO budget_reservations (id, keys, amount, expires) VALUES (?, ?, ?, ?)",
            (reservation.id, json.dumps(reservation.keys), str(amount), now + ttl),
        )
        return reservation

    def _settle_in(self, conn: sqlite3.Connection, reservation: Reservation, actual: Decimal) -> None:
        row = conn.execute("SELECT state, amount FROM budget_reservations WHERE id = ?", (reservation.id,)).fetchone()
        if row is None and reservation.id.startswith(_LOCAL_PREFIX):
            # Served while the file was unavailable (fail-open): charge it once, remembered by its id.
            conn.execute(
                "INSERT INTO budget_reservations (id, keys, amount, expires, state) VALUES (?, ?, ?, ?, 'settled')",
                (reservation.id, json.dumps(reservation.keys), str(reservation.amount), time.time()),
            )
            for key in reservation.keys:
                self._add(conn, key, actual, _ZERO)
        elif row is not None and row[0] != "settled":
            held = reservation.amount if row[0] == "open" else _ZERO
            charged = Decimal(row[1]) if row[0] == "expired" else _ZERO  # charged when its hold expired
            conn.execute("UPDATE budget_reservations SET state = 'settled' WHERE id = ?", (reservation.id,))
            for key in reservation.keys:
                self._add(conn, key, actual - charged, -held)

    # -- the protocol --------------------------------------------------------------------------

    def reserve(self, buckets: Sequence[Bucket], amount: Decimal, *, tenant: str | None = None,
                ttl: float | None = None) -> Reservation | Refusal:
        # Fail-closed if any budget says so (or leaves it to a fail-closed store).
        closed = any((b.budget.on_unavailable or self.on_unavailable) == "closed" for b in buckets)
        hold = self.reservation_ttl if ttl is None else ttl
        if self._usable():
            settles = self._take_settles()
            try:
                result = self._transaction(lambda conn: self._reserve_in(conn, buckets, amount, tenant, settles, hold))
            except _SQLITE_ERRORS as exc:
                self._return_settles(settles)
                self._mark_down(exc)
                if closed:
                    raise self._unavailable(exc) from exc
            except BaseException:
                self._return_settles(settles)
                raise
            else:
                self._mark_up()
                self._holds_written(settles)
                return result
        elif closed:
            raise self._unavailable(None)
        return self._reserve_local(buckets, amount, tenant, hold)

    def _reserve_local(self, buckets: Sequence[Bucket], amount: Decimal, tenant: str | None, ttl: float
                       ) -> Reservation | Refusal:
        """Fail-open: check against the last spend read from the file plus what this process did since.

        The buckets' spend is read again now if the file still reads (a held lock or a full disk stops writes,
        not reads: another process's spend written before the outage counts; the last read was stale). Whatever
        was read, this process spends at most ``open_share`` of a limit while the file is down.
        """
        if not self._journal.keeps():
            raise unkept(self._journal, f"SQLite at {self.path}: {self._cause(None)}", "sqlite", self.retry_interval)
        keys = [b.key for b in buckets]
        # What other processes keep waiting, read first (a settle one of them writes meanwhile is counted twice, in
        # the file and as waiting, never not at all), at most every _PEEK_S: read at each retry only, a settle
        # another process wrote since was counted twice until then; read at every call, a long outage's files
        # took a fraction of a second each time.
        if time.monotonic() - self._peeked_at >= _PEEK_S:
            self._peek_spool()
        try:  # never waits (a lock that stops reads too made every call wait `timeout`)
            counters = self._load(self._conn(quick=True), keys)
        except _SQLITE_ERRORS:
            pass
        else:
            with self._lock:
                for key in keys:  # a bucket with no row yet has spent nothing
                    self._remember(key, counters.get(key, (_ZERO, _ZERO))[0])
        share = Decimal(str(self.open_share))
        with self._lock:
            now = time.monotonic()
            for rid, (res, deadline) in list(self._local_open.items()):
                if deadline < now:
                    del self._local_open[rid]
                    self._unhold(res)
            counters = {}
            for bucket in buckets:
                spent, reserved = self._local.get(bucket.key, (_ZERO, _ZERO))
                floor = bucket.limit - bucket.limit * share  # at most open_share of the limit while it is down
                spent += self._inherited.get(bucket.key, _ZERO)  # what processes before kept, unwritten
                counters[bucket.key] = (max(self._known.get(bucket.key, _ZERO), floor) + spent, reserved)
            refusal = _check(counters, buckets, amount, tenant)
            if refusal is not None:
                return refusal
            reservation = Reservation(_LOCAL_PREFIX + uuid.uuid4().hex, tuple(b.key for b in buckets), amount)
            for key in reservation.keys:
                spent, reserved = self._local.get(key, (_ZERO, _ZERO))
                self._local[key] = (spent, reserved + amount)
            self._local_open[reservation.id] = (reservation, now + ttl)
        self._journal.add(self._journal_row(reservation, amount, hold=True))  # on disk, outside the lock
        return reservation

    @staticmethod
    def _journal_row(reservation: Reservation, actual: Decimal, *, hold: bool = False) -> dict[str, Any]:
        """A settle as kept on disk. ``hold``: a fail-open hold in flight, a settle at what it holds until a later
        row of its id says otherwise (its process killed first, the provider billed the call: other processes
        count it, and one charges it)."""
        row = {"id": reservation.id, "keys": list(reservation.keys), "amount": str(reservation.amount),
               "actual": str(actual)}
        return {**row, "hold": True} if hold else row

    def _clear_journal(self) -> None:
        """(Under the lock.) Nothing waits: the file goes, but for the holds still in flight, and those whose
        settle another thread has yet to write (killed first, each is charged what it held)."""
        self._journal.clear()
        for held in [*(held for held, _ in self._local_open.values()), *self._unwritten.values()]:
            self._journal.add(self._journal_row(held, held.amount, hold=True))

    def _unhold(self, reservation: Reservation) -> None:
        for key in reservation.keys:
            spent, reserved = self._local.get(key, (_ZERO, _ZERO))
            self._local[key] = (spent, max(reserved - reservation.amount, _ZERO))

    def settle(self, reservation: Reservation, actual: Decimal) -> None:
        """Charge ``actual`` and drop the hold; a second settle of one reservation changes nothing.

        Written before returning (on an event loop inside :func:`no_wait`, by the end of the loop's turn), or
        with ``settle_delay`` set, queued (see the class); :meth:`flush`
        writes queued settles now. Never raises because the
        file is unavailable: the settle then waits in memory and is written once the file answers.
        """
        if not isinstance(actual, (Decimal, int)) or isinstance(actual, bool):  # refused here, not in a batch
            raise TypeError(f"settle(): actual must be a Decimal (USD), not {type(actual).__name__}")
        local = reservation.id.startswith(_LOCAL_PREFIX)
        if local:
            with self._lock:
                if self._local_open.pop(reservation.id, None) is not None:
                    self._unhold(reservation)
                self._unwritten[reservation.id] = reservation  # its hold's row stays until its settle is written
        if self._down:  # counted in this process at once, written when the file answers
            self._defer(reservation, actual)
            return
        with self._lock:
            self._settles.append((reservation, actual))
        if self.settle_delay is None:
            if not _NO_WAIT.get():
                self.flush()
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._flush_quick()
                return
            # On the event loop: written at the end of this turn of the loop, in one transaction with the
            # other settles of the turn (a reservation made meanwhile takes them along in its own).
            with self._lock:
                scheduled = self._flush_loop is not None and self._flush_loop() is loop
                self._flush_loop = weakref.ref(loop)
            if not scheduled:
                loop.call_soon(self._flush_quick)
            return
        self._start_writer()

    def _flush_quick(self) -> None:
        """Write the queued settles now, inside :func:`no_wait`; if the lock is busy, the writer thread does."""
        with self._lock:
            self._flush_loop = None
        if not self._settles:  # a reservation took them along
            return
        if self._settle_lock.acquire(blocking=False):  # else the writer thread is writing: it takes these too
            try:
                self._flush_held()
                return
            except WouldWait:  # another connection holds the lock: the writer thread waits for it
                pass
            finally:
                self._settle_lock.release()
        self._start_writer()

    def _start_writer(self) -> None:
        with self._lock:
            if self._writer is None or self._writer_pid != os.getpid():
                self._writer_pid = os.getpid()
                self._writer = threading.Thread(target=self._run_writer, name="llmbudget-budgets", daemon=True)
                self._writer.start()
        self._wake.set()

    def _take_settles(self) -> list[tuple[Reservation, Decimal]]:
        with self._lock:
            batch = list(self._settles)
            self._settles.clear()
        return batch

    def _return_settles(self, batch: Sequence[tuple[Reservation, Decimal]]) -> None:
        if batch:
            with self._lock:
                self._settles.extendleft(reversed(batch))

    def _run_writer(self) -> None:
        while _wait_for_work(self, self._settles):
            _sleep(self.settle_delay or 0.0)  # a reserve made meanwhile takes the settles along
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write the settles this process queued, in one transaction (or keep them for later, see
        ``on_unavailable``)."""
        with self._settle_lock:
            self._flush_held()

    def _flush_held(self) -> None:
        """:meth:`flush`, holding ``_settle_lock``; inside :func:`no_wait`, the settles stay queued on
        :class:`WouldWait`."""
        with self._lock:
            batch = list(self._settles)
            self._settles.clear()
            self._writing = len(batch)  # still pending (pending_settles) until written or deferred
        try:
            if not batch:
                return
            if self._usable():
                try:
                    self._transaction(lambda conn: self._settle_all_in(conn, batch))
                except _SQLITE_ERRORS as exc:
                    self._mark_down(exc)
                else:
                    self._mark_up()
                    self._holds_written(batch)
                    return
            for reservation, actual in batch:
                self._defer(reservation, actual)
        except WouldWait:
            self._return_settles(batch)
            raise
        finally:
            self._writing = 0

    def _holds_written(self, batch: Sequence[tuple[Reservation, Decimal]]) -> None:
        """``batch``'s settles are in the file: the rows on disk of its fail-open holds are done with (superseded,
        or the file removed when nothing else is kept). Only once written: a process killed before, with the call
        billed, leaves its hold to be charged."""
        local = [reservation for reservation, _ in batch if reservation.id.startswith(_LOCAL_PREFIX)]
        if not local:
            return
        with self._lock:  # (decided and done under the lock: a settle that starts to wait meanwhile keeps its row)
            for reservation in local:
                self._unwritten.pop(reservation.id, None)
            if self._journal.own_path is None:
                return
            if not self._local_open and not self._pending and not self._replaying and not self._unwritten:
                self._journal.clear()
                return
            for reservation in local:
                self._journal.add(self._journal_row(reservation, _ZERO))  # (a replay of it is a no-op)

    def _settle_all_in(self, conn: sqlite3.Connection, batch: Sequence[tuple[Reservation, Decimal]]) -> None:
        for reservation, actual in batch:
            self._settle_in(conn, reservation, actual)

    def _defer(self, reservation: Reservation, actual: Decimal) -> None:
        """Keep a settle the file could not take, counted in this process until it is written."""
        with self._lock:
            self._unwritten.pop(reservation.id, None)  # (its row on disk is now its settle's)
            if not self._pending.add(reservation, actual):
                return
            for key in reservation.keys:
                spent, reserved = self._local.get(key, (_ZERO, _ZERO))
                self._local[key] = (spent + actual, reserved)
        # on disk, outside the lock (file I/O): a fork or another thread never waits on it
        self._journal.add(self._journal_row(reservation, actual))
        if len(self._pending) % 10_000 == 0:
            log.warning("llmbudget: %d budget settles are waiting for SQLite at %s", len(self._pending), self.path)

    def spent(self, key: str) -> tuple[Decimal, Decimal]:
        """(spent, reserved) in USD for one bucket key, as the file has it (this process's counts when open)."""
        self.flush()
        if self._usable():
            try:
                return self._load(self._conn(), [key]).get(key, (_ZERO, _ZERO))
            except _SQLITE_ERRORS as exc:
                self._mark_down(exc)
                if self.on_unavailable == "closed":
                    raise self._unavailable(exc) from exc
        elif self.on_unavailable == "closed":
            raise self._unavailable(None)
        with self._lock:
            spent, reserved = self._local.get(key, (_ZERO, _ZERO))
            return self._known.get(key, _ZERO) + spent, reserved

    @property
    def pending_settles(self) -> int:
        """Settles not written to the file yet: queued for the writer, or waiting for the file to answer."""
        return len(self._settles) + self._writing + len(self._pending)

    def _remember(self, key: str, spent: Decimal) -> None:
        self._known[key] = spent
        self._known.move_to_end(key)
        if len(self._known) > 10_000:
            self._known.popitem(last=False)
