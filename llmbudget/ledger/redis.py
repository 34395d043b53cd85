"""Budgets and spend records on Redis, shared by every worker and every replica.

Counters are integers in pico-dollars (USD * 10**12, exact for every listed
price) in one hash per bucket (``s`` spent, ``r`` reserved). ``reserve`` and
``settle`` are single Lua scripts, so a reservation over several buckets is
atomic and a retried settle never double-counts. Plain Redis 7, no modules.
Scripts touch keys they find in the reservation table, so the store needs a
standalone Redis (or Sentinel), not Redis Cluster.

When Redis cannot be reached, ``on_unavailable`` decides: ``"closed"`` raises
:class:`BudgetStoreUnavailable` (a 503-style error), ``"open"`` serves and
counts in this process, then replays its settles into Redis once it answers
again. Settles are never dropped in either mode: they wait in memory and are
replayed (settle is idempotent). A Redis that restarts without persistence
starts every counter from zero.

``redis`` (redis-py) is imported on first use, not with this module.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import json
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..calls import SpendRecord
from . import spool
from .budgets import (
    Bucket,
    BudgetStoreUnavailable,
    Refusal,
    Reservation,
    _check,
    _open_share,
    _reservation_ttl,
    unkept,
)

__all__ = ["BudgetStoreUnavailable", "RedisBudgetStore", "RedisLedger"]

log = logging.getLogger("llmbudget.ledger.redis")

OnUnavailable = Literal["open", "closed"]
_PICO = 10**12
_MAX_PICO = 2**63 - 1
_ZERO = Decimal(0)
#: Bucket keys of a day or a month live this long after their period ends (late settles still find them);
#: those of a minute or an hour, see :func:`_bucket_margin`.
_BUCKET_MARGIN_S = 2 * 86400
_PERIOD_S = {"minute": 60, "hour": 3600}
#: Per-request buckets expire this long after their last use (tenant/global ones without a period never do).
_UNPERIODED_TTL_S = 86400
#: Settled reservation ids are remembered at least this long after their settle (a settle retried later would
#: double-count), in small hashes: one per hour in which reservations were made and per first two hex digits of
#: the id's random part (``settled:<hour>:<xx>``: about 100 bytes an id, not a key of ~190 each; a hash of a whole
#: hour's ids stalled Redis for half a second when it expired, freed at once).
_SETTLED_TTL_S = 86400
#: Stale reservations one script call expires at most (the rest go on the next call).
_EXPIRE_BATCH = 256
_LOCAL_PREFIX = "local-"
#: Settles that waited for Redis, replayed in one round trip (a pipeline) when it answers again.
_REPLAY_BATCH = 256


def to_pico(usd: Decimal, *, rounding: str = ROUND_CEILING) -> int:
    """USD as integer pico-dollars (rounded up unless told; amounts never under-count)."""
    pico = int((Decimal(usd) * _PICO).to_integral_value(rounding=rounding))
    if pico < 0:
        raise ValueError(f"a budget amount must not be negative, got {usd}")
    if pico > _MAX_PICO:
        raise ValueError(f"{usd} USD is more than a Redis counter holds (about 9.2 million USD)")
    return pico


def limit_pico(limit: Decimal) -> int:
    """A budget's limit as pico-dollars (rounded down), at most what a counter holds: a budget over about
    9.2 million USD counts up to there, where before every reservation raised and its calls went unbudgeted
    (with every other budget checked in the same call)."""
    return min(int((Decimal(limit) * _PICO).to_integral_value(rounding=ROUND_FLOOR)), _MAX_PICO)


def from_pico(pico: int | str | bytes | None) -> Decimal:
    """Integer pico-dollars as USD, without trailing zeros or an exponent for whole numbers."""
    if pico is None:
        return _ZERO
    value = Decimal(int(pico)).scaleb(-12)
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value.normalize()


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """The URL without llmbudget's own query options (``prefix``, ``on_unavailable``), and those options."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"expected a redis:// or rediss:// URL, got {url!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in ("prefix", "on_unavailable", "open_share", "reservation_ttl")}
    rest = [(k, v) for k, v in query if k not in ours]
    return urlunsplit(parts._replace(query=urlencode(rest))), ours


def _client(url: str, timeout: float, *, again_after_timeout: bool = True) -> Any:
    """A redis-py client for ``url``. A command whose connection broke (one the pool kept across a Redis restart or
    a failover) is sent once more on a new one, and so is one that timed out when ``again_after_timeout`` (a
    budget reserve held up by a pause a little longer than ``timeout`` then goes through: it waits up to twice
    ``timeout``); the cache's commands are not (a miss costs nothing, and a paused Redis made each wait twice)."""
    try:
        import redis
    except ImportError:
        raise ImportError(f"{_redacted(url)} needs redis-py: pip install 'llmbudget[redis]'") from None
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    errors: tuple[type[Exception], ...] = (redis.exceptions.ConnectionError,)
    if again_after_timeout:
        errors += (redis.exceptions.TimeoutError, socket.timeout)
    client = redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 1, supported_errors=errors),
        health_check_interval=30, decode_responses=False,
    )
    pool = client.connection_pool
    try:  # a connection made (not opened) now: an option redis-py does not take fails here, not in every call
        pool.connection_class(**pool.connection_kwargs)
    except (TypeError, ValueError) as exc:
        option = str(exc).rpartition("argument ")[2].strip("'") if isinstance(exc, TypeError) else str(exc)
        raise ValueError(f"{_redacted(url)}: the URL option {option!r} is neither llmbudget's (prefix, on_unavailable, "
                         "open_share, reservation_ttl) nor redis-py's (socket_timeout, db, client_name, ssl_cert_reqs, ...)") from None
    return client


def _redacted(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return urlunsplit(parts)


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    """What makes Redis unavailable to a store: unreachable, timed out, or reachable but refusing the command
    (``ResponseError``: READONLY after a failover, OOM under ``maxmemory`` with ``noeviction``, MISCONF when it
    cannot persist, NOREPLICAS), which counts as down too: the write did not happen; or answering what is not
    Redis's protocol (``InvalidResponse``: the URL names another service, or a proxy garbles the replies)."""
    import redis
    from redis.exceptions import InvalidResponse

    return (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, InvalidResponse, OSError)


# KEYS: reservations zset, reservation data hash, the settled ids' hash of the reservation's hour, bucket hashes...
# ARGV: now is taken from the server; id, amount, ttl_ms, expire batch, settled ttl (s), then per bucket: limit,
# expire_at_ms
# A reservation id held or settled already is not held again: redis-py sends a command once more on a new
# connection after a timeout, and the first copy, left on the old one, still runs once Redis answers (a pause
# just past the client's timeout held the amount twice, and the settle freed it once: an orphaned hold).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local zset, data = KEYS[1], KEYS[2]
if redis.call('ZSCORE', zset, ARGV[1]) or redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return {2, 0} end
local stale = redis.call('ZRANGEBYSCORE', zset, '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local base = string.match(KEYS[3], '^(.*settled:)')
for _, rid in ipairs(stale) do
  local held = redis.call('HGET', data, rid)
  if held then
    -- charged what it held (the call may have been served: a process ended mid-call); remembered as 'x' .. amount
    -- where its settle is remembered (the hash of its id's hour, which expires), for a settle that comes after
    -- all, which replaces the charge with the cost (and for a copy of its reserve, which finds it there)
    local parts = cjson.decode(held)
    for i = 2, #parts do  -- (a key that expired meanwhile is not made again, without a TTL)
      if parts[1] ~= '0' and redis.call('EXISTS', parts[i]) == 1 then
        if redis.call('HINCRBY', parts[i], 'r', '-' .. parts[1]) < 0 then redis.call('HSET', parts[i], 'r', 0) end
        redis.call('HINCRBY', parts[i], 's', parts[1])
      end
    end
    redis.call('HDEL', data, rid)
    if base then  -- (the bucket as _settled_bucket names it)
      local hour, rest = string.match(rid, '^([^%.]+)%.(.*)$')
      local settled = base .. (hour and (hour .. ':' .. string.sub(rest, 1, 2)) or ('0:' .. string.sub(rid, -2)))
      redis.call('HSETNX', settled, rid, 'x' .. parts[1])
      if redis.call('TTL', settled) < tonumber(ARGV[5]) then redis.call('EXPIRE', settled, tonumber(ARGV[5])) end
    end
  end
  redis.call('ZREM', zset, rid)
end
local function split(s)
  s = s or '0'
  local n = #s
  if n <= 9 then return 0, tonumber(s) end
  return tonumber(string.sub(s, 1, n - 9)), tonumber(string.sub(s, n - 8))
end
local amount = ARGV[2]
local ahi, alo = split(amount)
local counters = {}
for i = 4, #KEYS do
  local c = redis.call('HMGET', KEYS[i], 's', 'r')
  local s, r = c[1] or '0', c[2] or '0'
  counters[#counters + 1] = s
  counters[#counters + 1] = r
  local shi, slo = split(s)
  local rhi, rlo = split(r)
  local lhi, llo = split(ARGV[4 + 2 * (i - 3)])
  local lo = slo + rlo + alo
  local hi = shi + rhi + ahi + math.floor(lo / 1000000000)
  lo = lo % 1000000000
  if hi > lhi or (hi == lhi and lo > llo) then
    return {0, i - 4, s, r}
  end
end
local keys = {amount}
for i = 4, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'r', amount)
  local exp = math.max(tonumber(ARGV[5 + 2 * (i - 3)]), now + 60000)
  local left = redis.call('PTTL', KEYS[i])  -- only ever later: a batch call's long hold keeps its key
  if tonumber(ARGV[5 + 2 * (i - 3)]) > 0 and (left < 0 or now + left < exp) then
    redis.call('PEXPIREAT', KEYS[i], exp)
  end
  keys[#keys + 1] = KEYS[i]
end
redis.call('ZADD', zset, now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', data, ARGV[1], cjson.encode(keys))
return {1, 0, unpack(counters)}
"""

# KEYS: reservations zset, reservation data hash, the settled ids' hash of the reservation's hour, bucket hashes...
# ARGV: id, actual, amount, settled ttl (s), then per bucket: expire_at_ms (0: leave)
_SETTLE = """
local prior = redis.call('HGET', KEYS[3], ARGV[1])
if prior and string.sub(prior, 1, 1) ~= 'x' then return 0 end  -- settled already
local charged = nil  -- what its hold was charged when it expired (see _RESERVE): replaced by the cost
if prior and prior ~= 'x0' then charged = string.sub(prior, 2) end
redis.call('HSET', KEYS[3], ARGV[1], 1)
if redis.call('TTL', KEYS[3]) < tonumber(ARGV[4]) then redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4])) end
local held = redis.call('ZREM', KEYS[1], ARGV[1]) == 1
redis.call('HDEL', KEYS[2], ARGV[1])
for i = 4, #KEYS do
  -- (a key gone meanwhile, its period over, is not made again by taking the charge back)
  if charged and redis.call('EXISTS', KEYS[i]) == 1
      and redis.call('HINCRBY', KEYS[i], 's', '-' .. charged) < 0 then
    redis.call('HSET', KEYS[i], 's', 0)
  end
  if ARGV[2] ~= '0' then redis.call('HINCRBY', KEYS[i], 's', ARGV[2]) end
  if held and ARGV[3] ~= '0' then
    if redis.call('HINCRBY', KEYS[i], 'r', '-' .. ARGV[3]) < 0 then redis.call('HSET', KEYS[i], 'r', 0) end
  end
  local exp = tonumber(ARGV[5 + i - 4])
  if exp > 0 and redis.call('PTTL', KEYS[i]) == -1 then redis.call('PEXPIREAT', KEYS[i], exp) end
end
if held then return 1 end
return 2
"""


def _new_id() -> str:
    """A reservation id that says the hour it was made in (hex hours since the epoch, then a random part)."""
    return f"{int(time.time()) // 3600:x}.{uuid.uuid4().hex}"


def _bucket_margin(period: str | None, reservation_ttl: float) -> float:
    """How long a bucket's key outlives its period. Two days kept a per-minute budget's 2,880 keys per tenant
    (an hour's 48): a minute's or an hour's key is kept two periods, and at least an hour past the hold of the
    call that reserves (``reservation_ttl``, a Batch API call's hold for its job), so that a settle that comes
    late still finds it; no call charges it after that."""
    length = _PERIOD_S.get(period or "")
    if length is None:
        return _BUCKET_MARGIN_S
    return min(_BUCKET_MARGIN_S, max(2 * length, reservation_ttl + 3600))


def _settled_bucket(rid: str) -> str:
    """Which hash remembers that reservation ``rid`` was settled: its hour (:func:`_new_id`) and the first two
    hex digits of its random part (ids of an older release have no hour: "0")."""
    hour, dot, rest = rid.removeprefix(_LOCAL_PREFIX).partition(".")
    return f"{hour}:{rest[:2]}" if dot and hour else f"0:{rid[-2:]}"


def location(url: str) -> str:
    """``host:port`` of a Redis URL, for messages (never its password)."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


class RedisBudgetStore:
    """Budget counters in Redis: atomic reservations across processes and hosts.

    ``url`` may carry ``?prefix=myapp:``, ``?on_unavailable=open`` and ``?open_share=0.25``;
    the keyword arguments win over the URL. ``client`` (a ``redis.Redis``) replaces the URL.

    ``open_share`` bounds fail-open: while Redis is unreachable, one process may spend at
    most this share of each budget's limit beyond the last spend it read from Redis (and
    never past the limit). With N processes the worst overspend of one outage is therefore
    ``N * open_share * limit``, whether or not a process had ever seen the budget's spend. Settles that wait
    are kept on disk in the state folder meanwhile, for the host's other processes to count, and to write if
    this one ends first (:mod:`llmbudget.ledger.spool`).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str | None = None,
        reservation_ttl: float | None = None,
        timeout: float = 0.25,
        on_unavailable: OnUnavailable | None = None,
        retry_interval: float = 1.0,
        open_share: float | None = None,
        client: Any = None,
    ) -> None:
        url, options = _split_url(url)
        self.open_share = _open_share(open_share, options, "Redis")
        reservation_ttl = _reservation_ttl(reservation_ttl, options)
        mode = on_unavailable or options.get("on_unavailable", "closed")
        if mode not in ("open", "closed"):
            raise ValueError(f"on_unavailable={mode!r}: expected 'open' (serve and count locally) or 'closed' (refuse)")
        if not 0 < timeout < float("inf"):
            raise ValueError(f"timeout={timeout!r}: expected a positive number of seconds")
        self.url = url
        self.prefix = prefix if prefix is not None else options.get("prefix", "llmbudget:")
        self.reservation_ttl = float(reservation_ttl)
        self.timeout = float(timeout)
        self.on_unavailable: OnUnavailable = mode  # type: ignore[assignment]
        if not retry_interval > 0:
            raise ValueError(f"retry_interval must be a number of seconds above 0, got {retry_interval!r}")
        self.retry_interval = float(retry_interval)
        self._redis = client if client is not None else _client(url, self.timeout)
        self._reserve_script = self._redis.register_script(_RESERVE)
        self._settle_script = self._redis.register_script(_SETTLE)
        self._errors = _unavailable_errors()
        self._lock = threading.Lock()
        self._down_until = 0.0  # monotonic; while in the future, Redis is not tried
        self._warned = False
        # settles waiting for Redis: (pico, their keys' expiries in ms; _expiry forgets the oldest of its 10,000
        # keys, and a long outage under per-request budgets, a key each, keeps more waiting, which must expire too)
        self._pending: spool.Waiting[tuple[int, tuple[int, ...]]] = spool.Waiting()
        # the same, of reservations held locally, from their reserve until their settle, however late (the most
        # recent 100,000: a reservation never settled is forgotten in time)
        self._local_expiry: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._releases: deque[Reservation] = deque(maxlen=100_000)  # reserves whose reply never came
        self._local: dict[str, tuple[int, int]] = {}  # fail-open counters: (spent, reserved) pico
        self._local_open: dict[str, tuple[Reservation, float]] = {}
        self._known: OrderedDict[str, int] = OrderedDict()  # last spent seen in Redis, per bucket key
        self._expiry: OrderedDict[str, int] = OrderedDict()  # bucket key -> expire-at ms
        self._spool_due = 0.0  # monotonic: when to look for settles processes that ended kept (see .spool)
        self._inherited: dict[str, int] = {}  # other processes' waiting spend per key (pico), while Redis is down
        self._spool_base = _state_base(self._redis, self.prefix, "redis")
        if self._spool_base is None:
            log.warning("llmbudget: Redis budget store: the client given names no server; settles that wait when "
                        "its process ends are not kept for the host's other processes")
        self._journal = spool.Journal(self._spool_base)  # this process's waiting settles and releases, on disk
        self._replaying = threading.Lock()  # held by the one thread replaying what waited (see _usable)
        #: Fail-open holds whose settle is being written (with their keys' expiries): their rows on disk stay until
        #: it is.
        self._unwritten: dict[str, tuple[Reservation, Sequence[int]]] = {}
        self._peeker = spool.Peeker()  # the other processes' files, read as they grow
        _LIVE.add(self)

    # -- settles kept across a restart (see .spool) -----------------------------------------------

    def _spooled(self, rows: list[dict[str, Any]]) -> list[tuple[Reservation, int | None, dict[str, int]]]:
        """Spool ``rows`` that read: (reservation, actual in pico or None for a release, key expiries)."""
        out = []
        for row in rows:
            try:
                reservation = Reservation(str(row["id"]), tuple(map(str, row["keys"])), Decimal(row["amount"]))
                pico = None if row.get("release") else int(row["actual"])
                expiry = {str(k): int(v) for k, v in dict(row.get("expiry") or {}).items()}
                to_pico(reservation.amount)  # (raises for a negative or non-finite amount)
                if (pico is not None and not 0 <= pico <= _MAX_PICO) or reservation.amount > spool.MAX_USD \
                        or not all(0 <= v < 2**53 for v in expiry.values()):
                    raise ValueError(f"amounts {row['amount']!r}, {row.get('actual')!r}, expiry {expiry!r}")
            except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
                log.warning("llmbudget: a kept budget settle for Redis at %s does not read (%s); skipped",
                            self._where(), exc)
                continue
            out.append((reservation, pico, expiry))
        return out

    def _take_spool(self) -> None:
        """Redis answers: write what processes that have ended kept (see :mod:`.spool`), then drop their files."""
        now = time.monotonic()
        if now < self._spool_due or self._spool_base is None:
            return
        self._spool_due = now + spool.EVERY_S
        found = spool.orphans(self._spool_base)
        if not found:
            return
        rows = spool.latest(self._spooled([row for _, rows in found for row in rows]))
        for reservation, pico, expiry in rows:  # raises: the files stay (each settle is charged once)
            for key, expires in expiry.items():
                self._remember(self._expiry, key, expires)
            self._run_settle(reservation, 0 if pico is None else pico)
        spool.remove([path for path, _ in found])
        if rows:
            log.warning("llmbudget: Redis budget store %s: wrote %d settle(s) that processes which have ended "
                        "could not", self._where(), len(rows))

    def _journal_row(self, reservation: Reservation, pico: int | None,
                     expiry: Sequence[int] = (), *, hold: bool = False) -> dict[str, Any]:
        """A settle (``pico``; None: a release) as kept on disk, with its keys' expiries (ms; 0: none known).
        ``hold``: a fail-open hold in flight, a settle at what it holds until a later row of its id says otherwise
        (the process killed first, the provider billed the call: other processes count it, and one charges it)."""
        row: dict[str, Any] = {"id": reservation.id, "keys": list(reservation.keys), "amount": str(reservation.amount)}
        if pico is None:
            row["release"] = True
        else:
            row["actual"] = pico
            row["expiry"] = {k: e for k, e in zip(reservation.keys, expiry, strict=True) if e} if expiry else {}
        if hold:
            row["hold"] = True
        return row

    def _clear_journal(self) -> None:
        """(Under the lock.) Nothing waits: the file goes, but for the holds still in flight, and those whose
        settle another thread has yet to write (killed first, each is charged what it held)."""
        self._journal.clear()
        holds = [(held, self._local_expiry.get(held.id) or ()) for held, _ in self._local_open.values()]
        for held, expiry in [*holds, *self._unwritten.values()]:
            self._journal.add(self._journal_row(held, to_pico(held.amount), expiry, hold=True))

    def _peek_spool(self) -> None:
        """Redis is down: what other processes keep waiting counts as spent here too."""
        if self._spool_base is None:
            return
        with self._lock:
            own = {r.id for r, _ in self._pending}
        rows = self._spooled(self._peeker.rows(self._spool_base, skip=self._journal.own_path))
        self._inherited = spool.spent_by_key(((reservation, pico) for reservation, pico, _ in rows), own)
        if self._inherited:
            self._spool_due = 0.0  # tried again after the outage, the store writes those it may at once

    # -- keys -------------------------------------------------------------------------------------

    def _key(self, bucket_key: str) -> str:
        return f"{self.prefix}b:{bucket_key}"

    @property
    def _zset(self) -> str:
        return f"{self.prefix}reservations"

    @property
    def _data(self) -> str:
        return f"{self.prefix}reservation-data"

    # -- availability ---------------------------------------------------------------------------

    def _usable(self) -> bool:
        """Whether to try Redis now; replays waiting settles first when it is back."""
        if time.monotonic() < self._down_until:
            return False
        try:
            self._take_spool()
            if self._pending or self._releases:
                # one thread replays, in pipelined batches; the others wait for it (their reserves then find every
                # settle in Redis): each replaying the whole backlog, a pause's 8,611 settles took 29,452 scripts
                with self._replaying:
                    if time.monotonic() < self._down_until:
                        return False  # (it failed while this thread waited)
                    self._reconcile()
        except self._errors as exc:
            self._mark_down(exc)
            return False
        return True

    def _mark_down(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.retry_interval
        self._peek_spool()
        _keep_trying(self)
        if not self._warned:
            self._warned = True
            action = ("serving and counting in this process until it is back" if self.on_unavailable == "open"
                      else "refusing budgeted calls (fail-closed) until it is back")
            log.warning("llmbudget: Redis budget store %s is unavailable (%s); %s", self._where(), exc, action)

    def _waits(self) -> bool:
        return bool(self._pending or self._releases)

    def _try_again(self) -> None:
        """What :func:`_keep_trying` runs: the waiting settles and releases, once Redis may be tried."""
        if time.monotonic() >= self._down_until:
            self._usable()

    def _where(self) -> str:
        return location(self.url)

    def _unavailable(self, exc: BaseException | None) -> BudgetStoreUnavailable:
        return BudgetStoreUnavailable(
            f"llmbudget could not reach its budget store (Redis at {self._where()}: {exc or 'recently unreachable'}); "
            f"budgeted calls are refused until it answers (on_unavailable='closed'). "
            f"Check Redis, or set on_unavailable='open' to serve and count locally meanwhile.",
            retry_after=self.retry_interval,
        )

    def _reconcile(self) -> None:
        """Replay settles made while Redis was unreachable (idempotent: each id is charged once), then release the
        holds of reserves whose reply never came (a no-op for one Redis never ran); :data:`_REPLAY_BATCH` at a
        time, in one round trip. Called under ``_replaying``: one thread at a time."""
        while True:
            with self._lock:
                releases = list(itertools.islice(self._releases, _REPLAY_BATCH))
            if not releases:
                break
            self._replay([(release, 0, None) for release in releases])
            with self._lock:
                for release in releases:
                    if self._releases and self._releases[0] is release:
                        self._releases.popleft()
        replayed = 0
        while True:
            with self._lock:
                batch = list(itertools.islice(self._pending, _REPLAY_BATCH))
            if not batch:
                break
            self._replay([(reservation, actual, expiry) for reservation, (actual, expiry) in batch])
            with self._lock:
                for reservation, (actual, _) in batch:
                    if not (self._pending and self._pending[0][0] is reservation):
                        continue  # (written, and taken off, by a settle of its own meanwhile)
                    self._pending.popleft()
                    for key in reservation.keys:
                        spent, reserved = self._local.get(key, (0, 0))
                        self._local[key] = (max(spent - actual, 0), reserved)
            replayed += len(batch)
        with self._lock:
            if not self._local_open:
                self._local = {k: v for k, v in self._local.items() if v != (0, 0)}
            if not self._pending and not self._releases:  # (taken off only once written): its file goes
                self._clear_journal()
        if replayed:
            log.warning("llmbudget: Redis budget store %s is back; replayed %d settle(s)", self._where(), replayed)
        self._warned = False

    # -- the protocol --------------------------------------------------------------------------

    def reserve(self, buckets: Sequence[Bucket], amount: Decimal, *, tenant: str | None = None,
                ttl: float | None = None) -> Reservation | Refusal:
        if not buckets:
            return Reservation(_new_id(), (), amount)
        pico = to_pico(amount)
        # Fail-closed if any budget says so (or leaves it to a fail-closed store).
        closed = any((b.budget.on_unavailable or self.on_unavailable) == "closed" for b in buckets)
        ttl = self.reservation_ttl if ttl is None else ttl
        if self._usable():
            try:
                return self._reserve_redis(buckets, amount, pico, tenant, ttl)
            except self._errors as exc:
                self._mark_down(exc)
                if closed:
                    raise self._unavailable(exc) from exc
        elif closed:
            raise self._unavailable(None)
        return self._reserve_local(buckets, amount, pico, tenant, ttl)

    def _reserve_redis(self, buckets: Sequence[Bucket], amount: Decimal, pico: int, tenant: str | None, ttl: float
                       ) -> Reservation | Refusal:
        rid = _new_id()
        now = time.time()
        args: list[Any] = [rid, pico, int(ttl * 1000), _EXPIRE_BATCH, _SETTLED_TTL_S + 3600]
        expiry = [self._expiry_of(bucket, now, ttl) for bucket in buckets]
        with self._lock:
            for bucket, exp in zip(buckets, expiry, strict=True):
                self._remember(self._expiry, bucket.key, exp)
        for bucket, exp in zip(buckets, expiry, strict=True):
            args += [limit_pico(bucket.limit), exp]
        keys = [self._zset, self._data, f"{self.prefix}settled:{_settled_bucket(rid)}",
                *(self._key(b.key) for b in buckets)]
        try:
            result = self._reserve_script(keys=keys, args=args)
        except self._errors:
            # Redis may run the script after the client gave up (paused, slow): release that hold, by its id,
            # once Redis answers again, instead of leaving it orphaned until the reservation's TTL
            with self._lock:
                released = Reservation(rid, tuple(b.key for b in buckets), amount)
                self._releases.append(released)
                self._journal.add(self._journal_row(released, None))
            raise
        if int(result[0]) in (1, 2):  # (2: this id was held by a copy of this command that ran first)
            for bucket, spent in zip(buckets, result[2::2]):
                self._remember(self._known, bucket.key, int(spent))
            return Reservation(rid, tuple(b.key for b in buckets), amount)
        index, spent, reserved = int(result[1]), int(result[2]), int(result[3])
        self._remember(self._known, buckets[index].key, spent)
        b = buckets[index].budget
        return Refusal(b.name, b.per, b.period, buckets[index].limit, from_pico(spent), from_pico(reserved), amount,
                       buckets[index].resets_at, tenant)

    def _expiry_of(self, bucket: Bucket, now: float, ttl: float) -> int:
        """When ``bucket``'s key is to expire in Redis (ms since the epoch; 0: never). Its settles send it too: a
        settle replayed after an outage makes the key where no reserve did, and it must expire as well."""
        resets = bucket.resets_at
        if resets is not None:
            return int((resets + _bucket_margin(bucket.budget.period, max(ttl, self.reservation_ttl))) * 1000)
        if bucket.budget.per == "request":
            return int((now + _UNPERIODED_TTL_S) * 1000)
        return 0  # a budget without a period counts forever

    def _reserve_local(self, buckets: Sequence[Bucket], amount: Decimal, pico: int, tenant: str | None, ttl: float
                       ) -> Reservation | Refusal:
        """Fail-open: check against the last spend seen in Redis plus what this process did since."""
        if not self._journal.keeps():
            raise unkept(self._journal, f"Redis at {self._where()}: unreachable", "redis", self.retry_interval)
        wall = time.time()
        expiry = tuple(self._expiry_of(bucket, wall, ttl) for bucket in buckets)
        with self._lock:
            now = time.monotonic()
            for rid, (res, deadline) in list(self._local_open.items()):
                if deadline < now:  # (its settle may come yet: its expiries stay in _local_expiry)
                    del self._local_open[rid]
                    for key in res.keys:
                        spent, reserved = self._local.get(key, (0, 0))
                        self._local[key] = (spent, max(reserved - to_pico(res.amount), 0))
            counters = {}
            for bucket in buckets:
                spent, reserved = self._local.get(bucket.key, (0, 0))
                # at most open_share of the limit beyond the last spend read: a process that never read this
                # bucket's spend (0) cannot spend the whole budget again while Redis is down
                limit = limit_pico(bucket.limit)
                floor = limit - int(limit * self.open_share)
                spent += self._inherited.get(bucket.key, 0)  # what processes before kept, unwritten
                counters[bucket.key] = (from_pico(max(self._known.get(bucket.key, 0), floor) + spent),
                                        from_pico(reserved))
            refusal = _check(counters, buckets, amount, tenant)
            if refusal is not None:
                return refusal
            reservation = Reservation(_LOCAL_PREFIX + _new_id(), tuple(b.key for b in buckets), amount)
            for key in reservation.keys:
                spent, reserved = self._local.get(key, (0, 0))
                self._local[key] = (spent, reserved + pico)
            self._local_open[reservation.id] = (reservation, now + ttl)
            # its settle, replayed when Redis answers, makes keys that must expire: their expiries as of now (the
            # store remembers 10,000 keys', which other calls may push out while this one runs)
            self._remember(self._local_expiry, reservation.id, expiry, 10 * _REMEMBERED)
            for bucket, exp in zip(buckets, expiry, strict=True):
                self._remember(self._expiry, bucket.key, exp)
        self._journal.add(self._journal_row(reservation, pico, expiry, hold=True))  # on disk, outside the lock
        return reservation

    def settle(self, reservation: Reservation, actual: Decimal) -> None:
        """Charge ``actual`` and drop the hold; a second settle of one reservation changes nothing.

        Never raises because Redis is unreachable: the settle waits in memory and is replayed.
        """
        if not reservation.keys:
            return
        pico = to_pico(actual)
        local = reservation.id.startswith(_LOCAL_PREFIX)
        with self._lock:
            # its keys' expiries: as its reserve found them (held locally), else as remembered
            expiry = self._local_expiry.pop(reservation.id, None) if local else None
            if expiry is None:
                expiry = tuple(self._expiry.get(k, 0) for k in reservation.keys)
            if local and self._local_open.pop(reservation.id, None) is not None:
                for key in reservation.keys:
                    spent, reserved = self._local.get(key, (0, 0))
                    self._local[key] = (spent, max(reserved - to_pico(reservation.amount), 0))
            if local:
                self._unwritten[reservation.id] = (reservation, expiry)  # its hold's row stays until it is written
        if self._usable():
            try:
                self._run_settle(reservation, pico, expiry)
                with self._lock:
                    for key in reservation.keys:
                        if key in self._known:
                            self._known[key] += pico
                if local:  # its hold's row is done with: written
                    with self._lock:  # (decided and done under the lock: a settle that starts to wait meanwhile
                        # keeps its row)
                        self._unwritten.pop(reservation.id, None)
                        if self._journal.own_path is not None:
                            if not (self._local_open or self._pending or self._releases or self._unwritten):
                                self._journal.clear()  # nothing else to keep: the file goes
                            else:
                                self._journal.add(self._journal_row(reservation, None))  # (replayed: a no-op)
                return
            except self._errors as exc:
                self._mark_down(exc)
        with self._lock:
            self._unwritten.pop(reservation.id, None)  # (its row on disk is now its settle's)
            if not self._pending.add(reservation, (pico, expiry)):
                return
            for key in reservation.keys:
                spent, reserved = self._local.get(key, (0, 0))
                self._local[key] = (spent + pico, reserved)
        self._journal.add(self._journal_row(reservation, pico, expiry))  # on disk, outside the lock (file I/O)
        _keep_trying(self)  # (after it waits: the retry thread may have looked and left just before)
        if len(self._pending) % 10_000 == 0:
            log.warning("llmbudget: %d budget settles are waiting for Redis at %s", len(self._pending), self._where())

    def _run_settle(self, reservation: Reservation, pico: int, expiry: Sequence[int] | None = None,
                    client: Any = None) -> None:
        """Write a settle; ``expiry``: its keys' expiries (ms; else as :attr:`_expiry` remembers them); ``client``:
        a pipeline to queue it on (else sent now)."""
        keys = [self._zset, self._data, f"{self.prefix}settled:{_settled_bucket(reservation.id)}",
                *(self._key(k) for k in reservation.keys)]
        if expiry is None:
            expiry = [self._expiry.get(k, 0) for k in reservation.keys]
        args = [reservation.id, pico, to_pico(reservation.amount), _SETTLED_TTL_S + 3600, *expiry]
        self._settle_script(keys=keys, args=args, client=client)

    def _replay(self, settles: Sequence[tuple[Reservation, int, Sequence[int] | None]]) -> None:
        """Write ``settles`` (reservation, actual in pico, expiries) in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for reservation, pico, expiry in settles:
            self._run_settle(reservation, pico, expiry, client=pipe)
        pipe.execute()

    def spent(self, key: str) -> tuple[Decimal, Decimal]:
        """(spent, reserved) in USD for one bucket key, as Redis has it (plus local counts when open)."""
        if self._usable():
            try:
                spent, reserved = self._redis.hmget(self._key(key), "s", "r")
                return from_pico(spent), from_pico(reserved)
            except self._errors as exc:
                self._mark_down(exc)
                if self.on_unavailable == "closed":
                    raise self._unavailable(exc) from exc
        elif self.on_unavailable == "closed":
            raise self._unavailable(None)
        with self._lock:
            spent_p, reserved_p = self._local.get(key, (0, 0))
            return from_pico(self._known.get(key, 0) + spent_p), from_pico(reserved_p)

    @property
    def pending_settles(self) -> int:
        """Settles made while Redis was unreachable, not yet replayed."""
        return len(self._pending)

    def close(self) -> None:
        self._redis.close()

    @staticmethod
    def _remember(table: OrderedDict[str, Any], key: str, value: Any, most: int | None = None) -> None:
        table[key] = value
        table.move_to_end(key)
        if len(table) > (_REMEMBERED if most is None else most):
            table.popitem(last=False)


#: Bucket keys whose last spend and expiry a store remembers (the oldest are forgotten).
_REMEMBERED = 10_000

#: Appends each record whose id was not written before (ids kept ``ARGV[2]`` seconds): a batch re-sent after a
#: client timeout, when Redis had applied it already, adds nothing twice.
_XADD_ONCE = """
local added = 0
for i = 3, #ARGV, 2 do
  if redis.call('SET', KEYS[2] .. ARGV[i], '1', 'NX', 'EX', tonumber(ARGV[2])) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'r', ARGV[i + 1])
    added = added + 1
  end
end
return added
"""
#: How long a written record's id is remembered (about 90 bytes of Redis memory per record meanwhile): a batch is
#: re-sent with the next record after a timeout, so an outage longer than this could still duplicate one batch.
_ID_TTL_S = 3_600
_BATCH = 500  # records per script call


def _server(client: Any) -> str | None:
    """The server ``client`` talks to, as a name for files kept for it (None: it does not say)."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    if getattr(pool, "service_name", None):  # Sentinel: the service, whichever node is its master
        return f"sentinel:{pool.service_name}/{kwargs.get('db', 0)}"  # type: ignore[union-attr]
    if kwargs.get("host") or kwargs.get("path"):
        host = str(kwargs.get("host"))
        host = {"localhost": "127.0.0.1", "::1": "127.0.0.1"}.get(host, host)
        return f"{host}:{kwargs.get('port')}/{kwargs.get('db')}{kwargs.get('path') or ''}"
    nodes = getattr(getattr(client, "nodes_manager", None), "startup_nodes", None)
    if nodes:  # a Redis Cluster client
        return "cluster:" + ",".join(sorted(map(str, nodes)))
    return None


def _state_base(client: Any, prefix: str, kind: str) -> Path | None:
    """Where the files kept for ``client``'s server and ``prefix`` start, in the state folder (``kind``: whose),
    named after the server, not the URL as written (localhost, a rotated password); None when the client does not
    name one."""
    server = _server(client)
    if server is None:
        return None
    digest = hashlib.sha256(f"{server}\0{prefix}".encode()).hexdigest()[:16]
    return spool.state_dir() / f"{kind}-{digest}"


#: How often a ledger looks for the records processes that ended kept in files, at most.
_KEPT_EVERY_S = 5.0


class RedisLedger:
    """Spend records appended to a Redis stream (``XADD`` with approximate ``MAXLEN`` trimming).

    A record that cannot be written waits in memory (up to ``buffer`` records) and is
    written with a later record once Redis answers; for ``retry_interval`` seconds after a
    failure no write is tried, so calls made while Redis is down do not each wait for its
    timeout. One thread writes at a time, and the others never wait for it: their records join
    what it writes. Writes are idempotent: each record carries an id that a script checks before
    appending, so a batch re-sent after a client timeout (Redis paused, a slow network) that
    Redis had applied already is not appended twice. A process that ends while records still
    wait keeps them in a file of the state folder (``redis-ledger-<digest of the server and
    prefix>.records-<pid>-<random>.jsonl``, see :func:`~llmbudget.ledger.spool.state_dir`), which
    the next ledger on the host to write that stream writes into it and removes.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str | None = None,
        stream_maxlen: int = 1_000_000,
        timeout: float = 0.25,
        buffer: int = 100_000,
        retry_interval: float = 1.0,
        client: Any = None,
    ) -> None:
        url, options = _split_url(url)
        self.url = url
        if not retry_interval > 0:
            raise ValueError(f"retry_interval must be a number of seconds above 0, got {retry_interval!r}")
        self.retry_interval = retry_interval
        self._retry_at = 0.0
        self.prefix = prefix if prefix is not None else options.get("prefix", "llmbudget:")
        self.stream = f"{self.prefix}spend"
        self._ids = f"{self.prefix}spend-id:"
        self.stream_maxlen = stream_maxlen
        self._redis = client if client is not None else _client(url, timeout)
        self._sha: str | None = None
        self._errors = _unavailable_errors()
        import redis

        self._no_script = redis.exceptions.NoScriptError
        self._waiting: deque[tuple[str, str]] = deque(maxlen=buffer)  # (record id, record JSON)
        self._lock = threading.Lock()
        self._warned = False
        self._kept_base = _state_base(self._redis, self.prefix, "redis-ledger")
        self._kept_at: float | None = None  # when the files of ended processes' records were last looked for
        _LIVE.add(self)

    def add(self, record: SpendRecord) -> None:
        self._waiting.append((uuid.uuid4().hex, json.dumps(record.to_dict())))  # (a deque: thread-safe)
        if time.monotonic() < self._retry_at or not self._lock.acquire(blocking=False):
            return  # backing off, or another thread is writing: the retry thread writes what it leaves
        try:
            self._drain(once=True)
        finally:
            self._lock.release()
        if self._waiting:  # added while it wrote, by threads that went on: the next call writes them, or the
            _keep_trying(self)  # retry thread within a second (a caller that wrote on until nothing waited
            # ran 7 s under 32 threads, every other request's records in its own call)

    def _waits(self) -> bool:
        return bool(self._waiting)

    def _try_again(self) -> None:
        """What :func:`_keep_trying` runs: the waiting records, once the back-off is over."""
        if time.monotonic() >= self._retry_at and self._lock.acquire(blocking=False):
            try:
                self._drain()
            finally:
                self._lock.release()

    @property
    def pending(self) -> int:
        """Records waiting to be written."""
        return len(self._waiting)

    def withdraw(self) -> int:
        """Drop every record waiting to be written (they will not be written); how many there were."""
        with self._lock:
            count = len(self._waiting)
            self._waiting.clear()
        return count

    def flush(self) -> None:
        """Write every waiting record now (waiting for a write in progress, and whatever the back-off)."""
        with self._lock:
            self._retry_at = 0.0
            self._drain()

    def _drain(self, *, once: bool = False) -> None:
        """Write what waits, until nothing does or Redis fails (then back off for ``retry_interval``); ``once``:
        what waits now, in one write."""
        while self._waiting:
            batch = list(self._waiting)
            try:
                try:
                    self._send(batch)
                except self._no_script:  # Redis restarted and forgot the script: load it again, once
                    self._sha = None
                    self._send(batch)
            except self._errors as exc:
                self._retry_at = time.monotonic() + self.retry_interval
                _keep_trying(self)
                if not self._warned:
                    self._warned = True
                    log.warning("llmbudget: Redis ledger unavailable (%s); keeping up to %d records in memory",
                                exc, self._waiting.maxlen)
                return
            written = {record_id for record_id, _ in batch}
            while self._waiting and self._waiting[0][0] in written:  # records added meanwhile stay
                self._waiting.popleft()
            self._warned = False
            if once:
                break
        self._write_kept()

    def _write_kept(self) -> None:
        """Write the records that processes which ended while Redis was down kept in files (Redis answers: at
        most every ``_KEPT_EVERY_S``), then remove each file. Ids make it idempotent: a file two processes
        write, or one written again after its removal failed, is appended once (within the ids' hour)."""
        now = time.monotonic()
        if self._kept_base is None or (self._kept_at is not None and now < self._kept_at + _KEPT_EVERY_S):
            return
        self._kept_at = now

        def write(path: Path, rows: list[tuple[str | None, SpendRecord]]) -> bool:
            if rows:
                self._send([(ident or uuid.uuid4().hex, json.dumps(record.to_dict())) for ident, record in rows])
            return True

        spool.write_kept(spool.kept_record_files(self._kept_base), write, f"the Redis stream {self.stream}",
                         self._errors + (self._no_script, OSError))

    def _keep_at_exit(self) -> None:
        """The process ends with records Redis would not take: keep them in a file of the state folder, for the
        next ledger on the host that writes this stream (see :meth:`_write_kept`), and say so."""
        with self._lock:  # taken off the queue: the retry thread, still running while other exit hooks run, must
            # not write them too
            batch = list(self._waiting)
            self._waiting.clear()
        if batch:
            spool.keep_records(self._kept_base, [f'{{"id": {json.dumps(ident)}, "r": {payload}}}' for ident, payload
                                                 in batch], f"the Redis stream {self.stream} at {self.url}")

    def _send(self, waiting: list[tuple[str, str]]) -> None:
        """``waiting``, in one pipeline of script calls (one round trip once the script is loaded)."""
        if self._sha is None:
            self._sha = self._redis.script_load(_XADD_ONCE)
        pipe = self._redis.pipeline(transaction=False)
        for start in range(0, len(waiting), _BATCH):
            args: list[Any] = [self.stream_maxlen, _ID_TTL_S]
            for record_id, payload in waiting[start:start + _BATCH]:
                args += [record_id, payload]
            pipe.evalsha(self._sha, 2, self.stream, self._ids, *args)
        pipe.execute()

    def exists(self) -> bool:
        """Whether the ledger's stream exists in Redis (a mistyped ``prefix=`` names one that does not)."""
        return bool(self._redis.exists(self.stream))

    def records(self) -> Iterator[SpendRecord]:
        """Every record in the stream, oldest first (read in pages); ValueError naming the stream entry of one
        that does not read."""
        start = "-"
        while True:
            page = self._redis.xrange(self.stream, min=start, max="+", count=1000)
            for entry_id, fields in page:
                try:
                    record = SpendRecord.from_dict(json.loads(fields[b"r"]))
                except (KeyError, ValueError, TypeError, RecursionError) as exc:  # UnicodeDecodeError too
                    name = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    raise ValueError(f"stream entry {name} is not a readable record ({exc})") from None
                yield record
            if len(page) < 1000:
                return
            start = "(" + page[-1][0].decode()

    def close(self) -> None:
        self._redis.close()


_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()  # Redis stores and ledgers, written once more at exit

# One thread per process retries what Redis stores and ledgers keep waiting while Redis is down (settles,
# releases, spend records), every second, until nothing waits: a process that gets no call after the outage
# wrote them only with its next call (other processes read a lower spend meanwhile; reports missed records).
# The owners the thread looks after, by id(), held strongly until nothing of theirs waits: an app that drops
# its store or ledger while Redis is down (an engine configured again, a test's fixture gone) lost what waited.
_RETRYING: dict[int, Any] = {}
_RETRY_LOCK = threading.RLock()  # (re-entered by a finalizer that settles a dropped response, run by a garbage
# collection while this thread holds it)
_retrier: threading.Thread | None = None


def _after_fork_in_child() -> None:
    """In a child just forked: new locks for the retry thread's set and every store and ledger (the parent's retry
    thread, not here, may have held them, writing to Redis), and no retry thread until one is needed."""
    global _RETRY_LOCK, _retrier
    _RETRY_LOCK = threading.RLock()
    _RETRYING.clear()
    _retrier = None
    for owner in list(_LIVE):
        owner._lock = threading.Lock()
        if isinstance(owner, RedisBudgetStore):
            owner._replaying = threading.Lock()
            owner._unwritten = {}  # (the parent's settles in flight: the parent writes them, and their rows)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _keep_trying(owner: Any) -> None:
    global _retrier
    with _RETRY_LOCK:
        _RETRYING[id(owner)] = owner
        if _retrier is None or not _retrier.is_alive():  # (none in a child just forked: started again there)
            _retrier = threading.Thread(target=_retry_waiting, name="llmbudget-redis-retry", daemon=True)
            _retrier.start()


def _retry_waiting() -> None:
    global _retrier
    while True:
        time.sleep(1.0)
        with _RETRY_LOCK:
            owners = list(_RETRYING.values())
        for owner in owners:
            try:
                owner._try_again()
            except Exception as exc:  # noqa: BLE001 - still down: the next second tries again
                log.debug("llmbudget: Redis retry failed (%s)", exc)
        with _RETRY_LOCK:
            for owner in owners:
                if not owner._waits():
                    _RETRYING.pop(id(owner), None)
            if not _RETRYING:
                _retrier = None
                return


@atexit.register
def _write_what_waits_at_exit() -> None:
    """Records and settles kept in memory while Redis was down, written once more as the process ends (a worker
    recycled after the outage, inside its retry interval, lost both: the call unrecorded and never charged, its
    hold left until its TTL). Redis still down: settles stay in their store's file, records are kept in one."""
    for owner in list(_LIVE):
        try:
            if isinstance(owner, RedisLedger):
                if owner._waiting:
                    owner.flush()
                    owner._keep_at_exit()  # (still down: kept in a file for the host's next process)
            elif owner._pending or owner._releases:
                try:
                    # (after the retry thread's replay, if it is writing: one thread replays at a time)
                    replaying = owner._replaying.acquire(timeout=2 * owner.timeout + 1)
                    try:
                        owner._reconcile()
                    finally:
                        if replaying:
                            owner._replaying.release()
                except owner._errors:  # still down: its file keeps what waits, for the host's other processes
                    # (a release: of a hold a reserve that timed out may have made, or a refused call's)
                    owner._journal.warn_at_exit(len(owner._pending) + len(owner._releases),
                                                f"to Redis at {owner._where()}",
                                                "budget settle(s) and release(s)" if owner._releases else
                                                "budget settle(s)")
        except Exception as exc:  # noqa: BLE001 - at exit: say what is lost, never raise
            log.warning("llmbudget: writing what waited for Redis at exit failed (%s: %s)", type(exc).__name__, exc)
