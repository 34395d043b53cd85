"""llmbudget.ledger.redis against a real Redis: the SQLite store's semantics, processes, faults, the stream ledger.

Database 15 of the Redis on 127.0.0.1:6379, one key prefix per test, deleted after it.
The fault tests run their own ``redis-server`` on a free port.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from fail_open import assert_a_killed_hold_is_counted_and_charged
from redis_keys import URL, drop

from llmbudget.calls import SpendRecord, Usage
from llmbudget.config import ConfigError, engine_from_config
from llmbudget.ledger import (
    Bucket,
    Budget,
    BudgetStore,
    BudgetStoreUnavailable,
    RedisBudgetStore,
    RedisLedger,
    Refusal,
    Reservation,
    SQLiteBudgetStore,
)
from llmbudget.ledger.redis import from_pico, to_pico

LIMIT = Decimal(25)
PER_WORKER = 300


def _now_bucket(usd: str = "1.00", *, name: str = "", per: str = "global", period: str | None = None,
                tenant: str = "acme") -> Bucket:
    budget = Budget(Decimal(usd), per=per, period=period, name=name)  # type: ignore[arg-type]
    return budget.bucket(tenant=tenant, request_id="req-1", now=time.time())


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    """A key prefix of this test's own; its keys are deleted after it."""
    return redis_prefix


StoreFactory = Callable[..., BudgetStore]


@pytest.fixture(params=["sqlite", "redis"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path, prefix: str) -> StoreFactory:
    def make(ttl: float = 600.0) -> BudgetStore:
        if request.param == "sqlite":
            return SQLiteBudgetStore(tmp_path / "budgets.sqlite3", reservation_ttl=ttl)
        return RedisBudgetStore(URL, prefix=prefix, reservation_ttl=ttl)

    return make


@pytest.fixture
def store(store_factory: StoreFactory) -> BudgetStore:
    return store_factory()


# -- the same semantics as the SQLite store ------------------------------------------------------------


def test_pico_dollars_are_exact() -> None:
    for usd in ["0", "0.000000000001", "0.15", "1", "2.5e-7", "1234.567890123456", "9000000"]:
        assert from_pico(to_pico(Decimal(usd))) == Decimal(usd)
    assert str(from_pico(to_pico(Decimal(100)))) == "100"
    assert to_pico(Decimal("1e-13")) == 1  # rounded up, never under-counted
    with pytest.raises(ValueError, match="negative"):
        to_pico(Decimal(-1))
    with pytest.raises(ValueError, match="million"):
        to_pico(Decimal(10000000))


def test_reserve_settle_release(store: BudgetStore) -> None:
    bucket = _now_bucket("1.00")
    first = store.reserve([bucket], Decimal("0.40"))
    assert isinstance(first, Reservation)
    assert store.spent(bucket.key) == (Decimal(0), Decimal("0.40"))
    second = store.reserve([bucket], Decimal("0.60"))  # exactly up to the limit is allowed
    assert isinstance(second, Reservation)
    assert store.spent(bucket.key) == (Decimal(0), Decimal("1.00"))
    assert isinstance(store.reserve([bucket], Decimal("0.000000000001")), Refusal)
    store.settle(first, Decimal("0.25"))
    assert store.spent(bucket.key) == (Decimal("0.25"), Decimal("0.60"))
    store.settle(second, Decimal(0))  # release: nothing charged
    assert store.spent(bucket.key) == (Decimal("0.25"), Decimal(0))
    assert store.spent("never-used") == (Decimal(0), Decimal(0))


def test_reservation_is_atomic_across_buckets(store: BudgetStore) -> None:
    small = _now_bucket("0.50", per="tenant", name="small")
    large = _now_bucket("5", per="global", name="large")
    refused = store.reserve([large, small], Decimal("0.75"))
    assert isinstance(refused, Refusal)
    assert refused.budget == "small"
    assert store.spent(large.key) == (0, 0)  # nothing held on the bucket that had room
    granted = store.reserve([large, small], Decimal("0.5"))
    assert isinstance(granted, Reservation)
    store.settle(granted, Decimal("0.125"))
    assert store.spent(large.key) == store.spent(small.key) == (Decimal("0.125"), 0)


def test_refusal_fields(store: BudgetStore) -> None:
    bucket = _now_bucket("1.00", per="tenant", period="day", name="daily-tenant")
    held = store.reserve([bucket], Decimal("0.40"), tenant="acme")
    assert isinstance(held, Reservation)
    store.settle(held, Decimal("0.15"))
    assert isinstance(store.reserve([bucket], Decimal("0.25"), tenant="acme"), Reservation)
    refusal = store.reserve([bucket], Decimal("0.70"), tenant="acme")
    assert isinstance(refusal, Refusal)
    assert (refusal.budget, refusal.per, refusal.period, refusal.tenant) == ("daily-tenant", "tenant", "day", "acme")
    assert (refusal.limit_usd, refusal.spent_usd, refusal.reserved_usd) == (Decimal(1), Decimal("0.15"), Decimal("0.25"))
    assert (refusal.estimated_cost_usd, refusal.remaining_usd) == (Decimal("0.70"), Decimal("0.60"))
    assert refusal.resets_at == bucket.resets_at
    assert "$0.6 left" in refusal.message().replace("$0.60", "$0.6")


def test_settling_twice_counts_once(store: BudgetStore) -> None:
    bucket = _now_bucket("1.00")
    held = store.reserve([bucket], Decimal("0.5"))
    assert isinstance(held, Reservation)
    store.settle(held, Decimal("0.3"))
    store.settle(held, Decimal("0.3"))
    store.settle(held, Decimal("0.9"))
    assert store.spent(bucket.key) == (Decimal("0.3"), Decimal(0))


def test_expired_reservations_are_charged_what_they_held_and_a_late_settle_charges_once(
        store_factory: StoreFactory) -> None:
    # released instead, the hold of a process killed mid-call let calls past the limit, though the provider billed
    # the answer it was generating
    store = store_factory(ttl=0.3)
    bucket = _now_bucket("1.00")
    late = store.reserve([bucket], Decimal("0.6"))
    assert isinstance(late, Reservation)
    assert isinstance(store.reserve([bucket], Decimal("0.5")), Refusal)
    time.sleep(0.4)
    assert isinstance(store.reserve([bucket], Decimal("0.5")), Refusal)  # expires the first hold: charged
    other = store.reserve([bucket], Decimal("0.3"))
    assert isinstance(other, Reservation)
    assert store.spent(bucket.key) == (Decimal("0.6"), Decimal("0.3"))
    store.settle(late, Decimal("0.45"))  # served after all: its cost replaces the charge
    assert store.spent(bucket.key) == (Decimal("0.45"), Decimal("0.3"))
    store.settle(late, Decimal("0.45"))
    assert store.spent(bucket.key) == (Decimal("0.45"), Decimal("0.3"))


def test_a_hold_may_last_longer_than_the_stores_ttl(store_factory: StoreFactory) -> None:
    store = store_factory(ttl=0.3)
    bucket = _now_bucket("1.00")
    assert isinstance(store.reserve([bucket], Decimal("0.6"), ttl=30), Reservation)
    time.sleep(0.4)
    assert isinstance(store.reserve([bucket], Decimal("0.5")), Refusal)  # the first hold still counts

# -- Redis specifics -------------------------------------------------------------------------------------


def test_keys_expire_after_their_period_and_settled_ids_are_kept_a_while(prefix: str) -> None:
    store = RedisBudgetStore(URL, prefix=prefix)
    daily = _now_bucket("1", per="tenant", period="day")
    forever = _now_bucket("1", per="tenant")
    request = _now_bucket("1", per="request")
    held = store.reserve([daily, forever, request], Decimal("0.1"))
    assert isinstance(held, Reservation)
    store.settle(held, Decimal("0.05"))
    client = redis.Redis.from_url(URL)
    assert daily.resets_at is not None
    expected = (daily.resets_at + 2 * 86400 - time.time()) * 1000
    assert abs(client.pttl(f"{prefix}b:{daily.key}") - expected) < 5000
    assert client.pttl(f"{prefix}b:{forever.key}") == -1  # a budget without a period counts forever
    assert 0 < client.pttl(f"{prefix}b:{request.key}") <= 86400 * 1000
    # settled ids: in small hashes (per hour of reservations and first two hex digits), not a key per call (8,000
    # calls made 8,000 keys of ~190 bytes, kept a day), nor one hash per hour (freed at once when it expired, it
    # stalled Redis past the client's timeout); each id kept at least a day after its own settle
    hour = f"{int(time.time()) // 3600:x}"
    assert held.id.startswith(hour + ".")

    def bucket(rid: str) -> str:
        return f"{prefix}settled:{hour}:{rid.split('.', 1)[1][:2]}"

    assert client.hexists(bucket(held.id), held.id)
    assert 86400 < client.ttl(bucket(held.id)) <= 86400 + 3600
    more = [store.reserve([daily], Decimal("0.01")) for _ in range(40)]
    for reservation in more:
        assert isinstance(reservation, Reservation)
        store.settle(reservation, Decimal("0.01"))
    buckets = {k.decode() for k in client.scan_iter(f"{prefix}settled:*")}
    assert buckets == {bucket(r.id) for r in [held, *more]}  # type: ignore[union-attr]
    assert sum(client.hlen(b) for b in buckets) == 41
    client.expire(bucket(held.id), 10)
    late = Reservation(held.id[:-8] + "0badcafe", (daily.key,), Decimal(0))  # settled later, into the same hash
    store._run_settle(late, 0)
    assert bucket(late.id) == bucket(held.id) and client.ttl(bucket(late.id)) > 86400  # kept a day past it
    before = client.hget(f"{prefix}b:{daily.key}", "s")
    store._run_settle(more[0], to_pico(Decimal("0.01")))  # a settle Redis applied, sent again after a timeout
    assert client.hget(f"{prefix}b:{daily.key}", "s") == before
    assert client.zcard(f"{prefix}reservations") == 0 and client.hlen(f"{prefix}reservation-data") == 0


def test_minute_and_hour_keys_are_kept_two_periods_and_an_hour_past_the_longest_hold(prefix: str) -> None:
    """Kept two days after their period like a day's, a per-minute budget's keys numbered 2,880 per tenant."""
    client = redis.Redis.from_url(URL)
    short = RedisBudgetStore(URL, prefix=prefix, reservation_ttl=60)
    minute = _now_bucket("1", per="tenant", period="minute", name="m")
    hour = _now_bucket("1", per="tenant", period="hour", name="h")
    brief = short.reserve([minute, hour], Decimal("0.1"))
    assert isinstance(brief, Reservation)
    short.settle(brief, Decimal("0.1"))
    for kept, period in ((60 + 3600, minute), (2 * 3600, hour)):
        assert period.resets_at is not None
        assert abs(client.pttl(f"{prefix}b:{period.key}") - (period.resets_at + kept - time.time()) * 1000) < 5000
    # a Batch API call holds for its job (a day): its key outlives the hold, and a later call never shortens it
    day = 86400
    batch = short.reserve([minute], Decimal("0.1"), ttl=day)
    assert isinstance(batch, Reservation)
    assert isinstance(short.reserve([minute], Decimal("0.1")), Reservation)
    assert client.pttl(f"{prefix}b:{minute.key}") > (day + 3600 - 5) * 1000
    # a stale hold whose key has expired meanwhile does not bring the key back without a TTL
    client.delete(f"{prefix}b:{minute.key}")
    client.zadd(f"{prefix}reservations", {batch.id: 0})  # its hold lapses now
    assert isinstance(short.reserve([hour], Decimal("0.1")), Reservation)  # (a reserve sweeps stale holds)
    assert client.exists(f"{prefix}b:{minute.key}") == 0


def test_large_budgets_compare_exactly(prefix: str) -> None:
    """Above 2**53 pico-dollars (~$9007) Lua's doubles are not exact; the script compares exactly."""
    store = RedisBudgetStore(URL, prefix=prefix)
    bucket = _now_bucket("1000000.000000000001")
    assert isinstance(store.reserve([bucket], Decimal(1000000)), Reservation)
    assert isinstance(store.reserve([bucket], Decimal("0.000000000001")), Reservation)
    assert isinstance(store.reserve([bucket], Decimal("0.000000000001")), Refusal)
    assert store.spent(bucket.key) == (0, Decimal("1000000.000000000001"))


def test_a_budget_over_what_a_counter_holds_counts_up_to_there(prefix: str) -> None:
    """A budget over ~9.2 million USD made every reservation raise, so its calls went unbudgeted, and with them
    every budget reserved in the same call: here a $5 global budget beside a $10 million tenant budget."""
    store = RedisBudgetStore(URL, prefix=prefix)
    big, small = _now_bucket("1e7", per="tenant", name="big"), _now_bucket("5", name="small")
    first = store.reserve([big, small], Decimal(4))
    assert isinstance(first, Reservation)
    store.settle(first, Decimal(4))
    refused = store.reserve([big, small], Decimal(2))
    assert isinstance(refused, Refusal) and refused.budget == "small"
    assert isinstance(store.reserve([big], Decimal(2)), Reservation)


def test_url_options_and_config(prefix: str) -> None:
    store = RedisBudgetStore(f"{URL}?prefix={prefix}&on_unavailable=open")
    assert (store.prefix, store.on_unavailable, store.url) == (prefix, "open", URL)
    with pytest.raises(ValueError, match="on_unavailable"):
        RedisBudgetStore(URL, on_unavailable="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="redis://"):
        RedisBudgetStore("http://localhost:6379")
    engine = engine_from_config({"budget_store": f"{URL}?prefix={prefix}", "ledger": f"rediss://127.0.0.1:1/0?prefix={prefix}"})
    assert isinstance(engine.budget_store, RedisBudgetStore) and engine.budget_store.prefix == prefix
    assert isinstance(engine.ledger, RedisLedger) and engine.ledger.stream == f"{prefix}spend"
    # An option neither llmbudget nor redis-py takes made every command raise TypeError: budgets went unchecked
    # and ledger records stayed in memory. It is refused up front, with the option named.
    for bad in ("timeout=2", "on_unavailble=open"):
        with pytest.raises(ValueError, match=f"the URL option '{bad.split('=')[0]}'"):
            RedisBudgetStore(f"{URL}?prefix={prefix}&{bad}")
        with pytest.raises(ValueError, match=f"the URL option '{bad.split('=')[0]}'"):
            RedisLedger(f"redis://user:secret@127.0.0.1:1/0?prefix={prefix}&{bad}")
        with pytest.raises(ConfigError, match="URL option"):
            engine_from_config({"budget_store": f"{URL}?prefix={prefix}&{bad}"})
    with pytest.raises(ValueError) as refused:
        RedisLedger("redis://user:secret@127.0.0.1:1/0?timeout=2")
    assert "secret" not in str(refused.value)
    assert RedisBudgetStore(f"{URL}?prefix={prefix}&socket_timeout=2&client_name=llmbudget").prefix == prefix
    # reservation_ttl from the URL (a policy file could not set it: a killed worker's holds stayed 600 s)
    assert RedisBudgetStore(f"{URL}?prefix={prefix}&reservation_ttl=30").reservation_ttl == 30.0
    assert RedisBudgetStore(f"{URL}?prefix={prefix}").reservation_ttl == 600.0
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ValueError, match="reservation_ttl"):
            RedisBudgetStore(f"{URL}?prefix={prefix}&reservation_ttl={bad}")


def _record(i: int) -> SpendRecord:
    return SpendRecord(
        time=1_750_000_000.5 + i, endpoint="chat.completions", base_url="https://api.openai.com/v1",
        model_requested="gpt-4o-mini", model_sent="gpt-4o-mini", model_answered="gpt-4o-mini-2024-07-18",
        usage=Usage(input_tokens=100 + i, cached_input_tokens=20, output_tokens=7), cost_usd=Decimal("0.000123") * i,
        latency_s=0.25, tenant="acme", request_id=f"req-{i}", status=200, routing={"tier": "strong"},
    )


def test_ledger_stream_round_trips_and_trims(prefix: str) -> None:
    ledger = RedisLedger(URL, prefix=prefix)
    records = [_record(i) for i in range(2100)]
    for record in records:
        ledger.add(record)
    assert list(ledger.records()) == records  # read back in pages of 1000
    small = RedisLedger(URL, prefix=prefix + "small:", stream_maxlen=100)
    for record in records[:1000]:
        small.add(record)
    kept = list(small.records())
    assert 100 <= len(kept) < 1000 and kept[-1] == records[999]  # approximate trimming keeps the newest
    drop(prefix + "small:")


def test_report_reads_a_redis_ledger_by_its_url(prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    """README lets ``ledger`` be a redis:// URL; ``llmbudget report`` said "no such ledger file" for it."""
    from llmbudget.cli import main

    ledger = RedisLedger(URL, prefix=prefix)
    for i in (1, 2):
        ledger.add(_record(i))
    ledger.close()
    assert main(["report", f"{URL}?prefix={prefix}", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["total"]["calls"] == 2 and doc["total"]["cost_usd_exact"] == "0.000369"
    assert main(["report", "redis://user:secret@127.0.0.1:1/0"]) == 2  # nothing listens there
    err = capsys.readouterr().err
    assert "redis at 127.0.0.1:1: the ledger could not be read" in err and "secret" not in err
    assert main(["report", f"{URL}?prefix={prefix}typo:"]) == 2  # a mistyped prefix reported 0 calls
    assert f"no ledger stream '{prefix}typo:spend'" in capsys.readouterr().err
    # a damaged entry is named by its id, as a SQLite ledger's row is by its number
    damaged = _record(3).to_dict()
    damaged["usage"]["output_tokens"] = 1e30
    client = redis.Redis.from_url(URL)
    entry = client.xadd(f"{prefix}spend", {"r": json.dumps(damaged)}).decode()
    client.close()
    assert main(["report", f"{URL}?prefix={prefix}"]) == 2
    err = capsys.readouterr().err
    assert f"stream entry {entry} is not a readable record" in err and "output_tokens" in err


# -- many processes against one budget ---------------------------------------------------------------------


def _reserve_many(store: BudgetStore, bucket: Bucket, seed: int, threads: int = 4) -> tuple[list[str], int, list[str]]:
    actuals: list[str] = []
    refusals = [0]
    violations: list[str] = []
    lock = threading.Lock()

    def run(k: int) -> None:
        rng = random.Random(seed * 100 + k)
        for _ in range(PER_WORKER // threads):
            amount = Decimal(rng.randint(1, 200)) / 100
            held = store.reserve([bucket], amount)
            spent, reserved = store.spent(bucket.key)
            if spent + reserved > bucket.limit:
                violations.append(f"spent {spent} + reserved {reserved} > {bucket.limit}")
            if isinstance(held, Refusal):
                with lock:
                    refusals[0] += 1
                continue
            actual = (amount * Decimal(rng.randint(0, 100)) / 100).quantize(Decimal("0.0001"))
            store.settle(held, actual)
            if rng.random() < 0.2:
                store.settle(held, actual)  # a retried settle
            with lock:
                actuals.append(str(actual))

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return actuals, refusals[0], violations


def _process_worker(prefix: str, seed: int, key_time: float) -> tuple[list[str], int, list[str]]:
    store = RedisBudgetStore(URL, prefix=prefix, timeout=2.0)
    bucket = Budget(LIMIT, per="tenant", period="month").bucket(tenant="t", request_id="r", now=key_time)
    return _reserve_many(store, bucket, seed)


def test_processes_never_overspend_and_refuse_nothing_once_settled(prefix: str) -> None:
    key_time = time.time()
    bucket = Budget(LIMIT, per="tenant", period="month").bucket(tenant="t", request_id="r", now=key_time)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(_process_worker, [(prefix, seed, key_time) for seed in range(4)])
    assert sum(len(r[0]) + r[1] for r in results) == 4 * PER_WORKER
    actuals = [Decimal(a) for result in results for a in result[0]]
    assert [v for result in results for v in result[2]] == []
    assert actuals and sum(r[1] for r in results), "the run should both grant and refuse reservations"
    store = RedisBudgetStore(URL, prefix=prefix)
    spent, reserved = store.spent(bucket.key)
    assert reserved == 0
    assert spent == sum(actuals) <= LIMIT
    # No phantom refusals: what is left can be reserved, to the last pico-dollar, and no more.
    left = LIMIT - spent
    if left:
        assert isinstance(store.reserve([bucket], left), Reservation)
    assert isinstance(store.reserve([bucket], Decimal("0.000000000001")), Refusal)


# -- faults: a Redis of our own, stopped and started mid-run -------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Server:
    """A redis-server this test owns (optionally with an fsync-always append-only file)."""

    def __init__(self, tmp: Path, *, persist: bool) -> None:
        self.port = _free_port()
        self.tmp = tmp
        self.persist = persist
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--dir", str(self.tmp), "--daemonize", "no"]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_timeout=0.2).ping():
                    return
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
            self.proc = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    own = _Server(tmp_path, persist=False)
    own.start()
    yield own
    own.kill()


def test_fail_closed_refuses_cleanly_and_keeps_its_settles(server: _Server, caplog: pytest.LogCaptureFixture) -> None:
    store = RedisBudgetStore(server.url, timeout=0.2, retry_interval=0.2, on_unavailable="closed")
    bucket = _now_bucket("1.00")
    before = store.reserve([bucket], Decimal("0.5"))
    assert isinstance(before, Reservation)
    server.kill()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="llmbudget"), pytest.raises(BudgetStoreUnavailable) as raised:
        store.reserve([bucket], Decimal("0.1"))
    assert time.monotonic() - started < 1.0
    error = json.loads(raised.value.to_json())["error"]
    assert raised.value.status_code == 503 and error["type"] == "budget_store_unavailable"
    assert "on_unavailable='closed'" in str(raised.value)
    with pytest.raises(BudgetStoreUnavailable):  # inside the retry interval: no network wait at all
        store.reserve([bucket], Decimal("0.1"))
    with pytest.raises(BudgetStoreUnavailable):
        store.spent(bucket.key)
    store.settle(before, Decimal("0.3"))  # never raises: it waits for Redis
    assert store.pending_settles == 1
    assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1  # warned once
    server.start()  # a fresh Redis without persistence: every counter starts from zero
    time.sleep(0.25)
    assert isinstance(store.reserve([bucket], Decimal("0.1")), Reservation)
    assert store.pending_settles == 0
    assert store.spent(bucket.key) == (Decimal("0.3"), Decimal("0.1"))  # the settle was replayed


@pytest.mark.parametrize("dropped", [False, True], ids=["kept", "dropped"])
def test_what_waits_for_redis_is_written_once_it_is_back_without_another_call(
    server: _Server, caplog: pytest.LogCaptureFixture, dropped: bool
) -> None:
    """Settles and spend records kept while Redis was down were written only with the process's next call: a
    worker that got none kept them (the other workers read a lower spend: a tenant went past its budget; spend
    reports missed the records). A background thread writes them within a second or two of Redis answering.
    ``dropped``: it knew stores and ledgers by weak reference only, so an app that let go of them while Redis was
    down (an engine configured again, a worker's objects replaced) lost what waited."""
    import gc

    store = RedisBudgetStore(server.url, timeout=0.2, retry_interval=0.2, on_unavailable="open")
    ledger = RedisLedger(server.url, timeout=0.2, retry_interval=0.2)
    bucket = _now_bucket("1.00")
    held = store.reserve([bucket], Decimal("0.5"))
    assert isinstance(held, Reservation)
    server.kill()
    # Not logged here: a captured warning keeps its error's traceback, whose frames keep the store and ledger.
    with caplog.at_level(logging.ERROR, logger="llmbudget"):
        store.settle(held, Decimal("0.3"))
        ledger.add(_record(1))
    assert store.pending_settles == 1 and len(ledger._waiting) == 1
    ref = weakref.ref(ledger)
    if dropped:
        del store, ledger, held
        gc.collect()
        assert ref() is not None  # kept while its record waits
    server.start()
    reader = RedisBudgetStore(server.url)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (reader.spent(bucket.key)[0] and list(RedisLedger(server.url).records())):
        time.sleep(0.1)  # no call is made meanwhile
    assert reader.spent(bucket.key)[0] == Decimal("0.3")
    assert len(list(RedisLedger(server.url).records())) == 1
    if not dropped:
        while time.monotonic() < deadline and (store.pending_settles or ledger._waiting):
            time.sleep(0.05)  # (written, and taken off just after)
        assert store.pending_settles == 0 and not ledger._waiting
    else:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and ref() is not None:  # and let go of once written
            time.sleep(0.1)
            gc.collect()
        assert ref() is None


_SPEND_WHILE_DOWN = """
import sys, time
from decimal import Decimal
from llmbudget.ledger import RedisBudgetStore
from llmbudget.ledger.budgets import Budget, Reservation
store = RedisBudgetStore(sys.argv[1], timeout=0.2, on_unavailable="open")
bucket = Budget("1.00", per="global").bucket(tenant="acme", request_id="req-1", now=time.time())
held = store.reserve([bucket], Decimal("0.2"))
assert isinstance(held, Reservation), held
store.settle(held, Decimal("0.2"))
assert store.pending_settles == 1
"""


@pytest.mark.parametrize("ending", ["exit", "os._exit"])
def test_settles_a_process_could_not_write_to_redis_by_its_exit_are_written_by_the_next(
    server: _Server, ending: str
) -> None:
    """A fail-open process that ended while Redis was down lost the settles it had not written: the spend was
    never charged, and the process after it (a recycled worker) got a fresh open_share of the limit. A pool
    worker ends by ``os._exit``, without exit hooks: each settle is kept on disk as it starts to wait."""
    # made before the other process ends, as a worker forked from a preloaded app has its store
    store = RedisBudgetStore(server.url, timeout=0.2, retry_interval=0.2, on_unavailable="open")
    server.kill()
    script = _SPEND_WHILE_DOWN + ("import os; os._exit(0)\n" if ending == "os._exit" else "")
    child = subprocess.run([sys.executable, "-c", script, server.url], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert ("kept in" in child.stderr) is (ending == "exit")  # (no exit hook runs on os._exit)
    bucket = _now_bucket("1.00")
    # still down: 0.75 (the floor of a process that may spend open_share, 0.25) + 0.2 spent before + 0.1 > 1
    assert isinstance(store.reserve([bucket], Decimal("0.1")), Refusal)
    assert isinstance(store.reserve([bucket], Decimal("0.05")), Reservation)
    assert store.pending_settles == 0  # left in the file while Redis is down: no process holds them alone
    server.start()
    time.sleep(0.3)  # past the retry interval
    assert isinstance(store.reserve([bucket], Decimal("0.01")), Reservation)  # Redis answers: taken, written
    assert store.pending_settles == 0
    assert RedisBudgetStore(server.url).spent(bucket.key)[0] == Decimal("0.2")  # the earlier process's call, charged


def test_the_state_folder_without_a_home_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without HOME and with a uid that has no passwd entry (a container's), ``Path.home()`` raises: every
    reservation on a Redis store failed with RuntimeError."""
    import tempfile

    from llmbudget.ledger import spool

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("LLMBUDGET_STATE_DIR")
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert spool.state_dir().parent == Path(tempfile.gettempdir())
    assert RedisBudgetStore("redis://127.0.0.1:1/0")._spool_base is not None


def test_other_processes_files_are_read_as_they_grow(tmp_path: Path) -> None:
    """While the store was down every process read every other process's file whole, once per retry: eight
    workers with 50,000 waiting settles each took 3.7 s a look. A forked child took its parent's file for its
    own and left it out."""
    from llmbudget.ledger import spool

    base = tmp_path / "budgets.db"
    other = tmp_path / "budgets.db.pending-1-abcd.jsonl"
    other.write_bytes(b'{"id": "a"}\n{"id": "b"')  # the second line still being written
    peeker = spool.Peeker()
    assert [r["id"] for r in peeker.rows(base)] == ["a"]
    with open(other, "ab") as out:
        out.write(b'}\n{"id": "c"}\n')
    assert [r["id"] for r in peeker.rows(base)] == ["a", "b", "c"]
    assert peeker._seen[other][1] == other.stat().st_size  # read from there next time
    journal = spool.Journal(base)
    journal.add({"id": "mine"})
    assert journal.own_path is not None and journal.own_path.exists()
    assert [r["id"] for r in spool.Peeker().rows(base, skip=journal.own_path)] == ["a", "b", "c"]
    journal._pid = -1  # as in a child forked after the parent wrote it
    assert journal.own_path is None
    journal.clear()  # not the child's to remove
    assert len(list(tmp_path.glob("budgets.db.pending-*"))) == 2


def test_stores_given_clients_of_other_servers_keep_their_settles_apart() -> None:
    """The spool was named after the URL, the default one for a store given its own client: settles kept for
    one server would have been written to another."""
    from redis.sentinel import Sentinel

    one = RedisBudgetStore(client=redis.Redis(host="10.0.0.5"))
    other = RedisBudgetStore(client=redis.Redis(host="10.0.0.6", port=6380))
    assert one._spool_base != other._spool_base
    assert one._spool_base == RedisBudgetStore(client=redis.Redis(host="10.0.0.5"))._spool_base
    named = {RedisBudgetStore(url)._spool_base for url in (  # one server, however its URL is written
        "redis://127.0.0.1:6379/0", "redis://localhost:6379/0", "redis://:old@127.0.0.1:6379/0",
        "redis://:rotated@localhost:6379/0")}
    assert len(named) == 1
    sentinel = Sentinel([("10.0.0.7", 26379)])  # (nothing connects before a command)
    eu, us = (RedisBudgetStore(client=sentinel.master_for(name)) for name in ("eu", "us"))
    assert len({one._spool_base, eu._spool_base, us._spool_base}) == 3


def test_a_settle_queued_while_the_store_backs_off_is_written_without_another_call(server: _Server) -> None:
    """A settle queued inside the store's back-off (after a failed read, with nothing waiting yet) was left out
    of the retry thread's round: it waited for the worker's next call."""
    store = RedisBudgetStore(server.url, timeout=0.2, retry_interval=0.5, on_unavailable="open")
    bucket = _now_bucket("1.00")
    held = store.reserve([bucket], Decimal("0.5"))
    assert isinstance(held, Reservation)
    server.kill()
    store.spent(bucket.key)  # fails: Redis marked down, nothing waits yet
    time.sleep(1.2)  # the retry thread looks, finds nothing, and leaves
    store._down_until = time.monotonic() + 30  # still backing off when the settle comes
    store.settle(held, Decimal("0.3"))
    assert store.pending_settles == 1
    server.start()
    store._down_until = 0.0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and store.pending_settles:
        time.sleep(0.1)
    assert store.pending_settles == 0
    assert RedisBudgetStore(server.url).spent(bucket.key)[0] == Decimal("0.3")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks")
def test_a_child_forked_while_a_ledger_writes_gets_its_own_lock(server: _Server) -> None:
    """A fork while the retry thread held a ledger's lock (writing to a Redis that hung) left the child's ledger
    locked for good: its records never written, and its exit hung flushing them."""
    ledger = RedisLedger(server.url, timeout=0.2)
    ledger._lock.acquire()  # as the parent's retry thread holds it mid-write
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            free = ledger._lock.acquire(timeout=1)
            ledger._lock.release() if free else None
            os._exit(0 if free else 1)
    finally:
        ledger._lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("fault", ["oom", "readonly", "noreplicas"])
def test_a_redis_that_refuses_writes_counts_as_unavailable(server: _Server, fault: str) -> None:
    """Reachable but refusing writes (OOM under noeviction, READONLY after a failover, NOREPLICAS): fail-closed
    refuses, and a settle waits in memory instead of raising or being dropped."""
    store = RedisBudgetStore(server.url, timeout=0.2, retry_interval=0.2)  # on_unavailable="closed" by default
    bucket = _now_bucket("1.00")
    held = store.reserve([bucket], Decimal("0.4"))
    assert isinstance(held, Reservation)
    admin = redis.Redis(port=server.port)
    if fault == "oom":
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
    elif fault == "readonly":
        admin.replicaof("127.0.0.1", _free_port())  # a master that is not there: writes answer READONLY
    else:
        admin.config_set("min-replicas-to-write", "1")
    store.settle(held, Decimal("0.3"))  # never raises
    assert store.pending_settles == 1
    time.sleep(0.25)
    with pytest.raises(BudgetStoreUnavailable):
        store.reserve([bucket], Decimal("0.1"))
    admin.config_set("maxmemory", "0")
    admin.config_set("min-replicas-to-write", "0")
    admin.replicaof("NO", "ONE")
    time.sleep(0.25)
    assert isinstance(store.reserve([bucket], Decimal("0.1")), Reservation)
    assert store.pending_settles == 0
    assert store.spent(bucket.key) == (Decimal("0.3"), Decimal("0.1"))  # the settle charged once, late


def test_fail_open_serves_counts_locally_and_reconciles(server: _Server) -> None:
    store = RedisBudgetStore(server.url, timeout=0.2, retry_interval=0.2, on_unavailable="open", open_share=1.0)
    bucket = _now_bucket("1.00")
    first = store.reserve([bucket], Decimal("0.2"))
    assert isinstance(first, Reservation)
    store.settle(first, Decimal("0.2"))  # lost with the Redis that restarts without persistence
    server.kill()
    held = store.reserve([bucket], Decimal("0.5"))
    assert isinstance(held, Reservation) and held.id.startswith("local-")
    # Locally, the last spend Redis reported plus this process's holds still bound the budget.
    assert isinstance(store.reserve([bucket], Decimal("0.4")), Refusal)
    store.settle(held, Decimal("0.25"))
    store.settle(held, Decimal("0.25"))
    assert store.pending_settles == 1
    assert store.spent(bucket.key) == (Decimal("0.45"), 0)
    server.start()
    time.sleep(0.25)
    again = store.reserve([bucket], Decimal("0.1"))
    assert isinstance(again, Reservation) and not again.id.startswith("local-")
    assert store.pending_settles == 0
    assert store.spent(bucket.key) == (Decimal("0.25"), Decimal("0.1"))


def test_kill_and_restart_mid_run_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Threads keep reserving while Redis (append-only, fsync always) is killed and restarted."""
    own = _Server(tmp_path, persist=True)
    own.start()
    try:
        stores = {mode: RedisBudgetStore(own.url, timeout=0.2, retry_interval=0.1, reservation_ttl=3,
                                         on_unavailable=mode) for mode in ("open", "closed")}  # type: ignore[misc]
        bucket = _now_bucket("1000")
        actuals: dict[str, list[Decimal]] = {"open": [], "closed": []}
        errors: list[BaseException] = []
        unavailable = {"open": 0, "closed": 0}
        stop = threading.Event()

        def run(mode: str, seed: int) -> None:
            rng = random.Random(seed)
            store = stores[mode]
            while not stop.is_set():
                try:
                    held = store.reserve([bucket], Decimal("0.01"))
                except BudgetStoreUnavailable:
                    unavailable[mode] += 1
                    time.sleep(0.01)
                    continue
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)
                    return
                assert isinstance(held, Reservation)
                actual = Decimal(rng.randint(0, 100)) / 10000
                store.settle(held, actual)
                actuals[mode].append(actual)

        threads = [threading.Thread(target=run, args=(mode, i)) for i, mode in enumerate(["open", "closed"] * 2)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        own.kill()
        time.sleep(0.6)
        own.start()
        time.sleep(0.6)
        stop.set()
        for thread in threads:
            thread.join(10)
        assert errors == []
        assert unavailable["closed"] > 0 and len(actuals["open"]) > 0
        for store in stores.values():
            store.reserve([bucket], Decimal(0))  # replays whatever still waits
            assert store.pending_settles == 0
        # Both stores share the bucket: every settled actual is in Redis exactly once.
        spent, _ = stores["closed"].spent(bucket.key)
        assert spent == sum(actuals["open"]) + sum(actuals["closed"])
    finally:
        own.kill()


def test_ledger_writes_are_idempotent_across_a_client_timeout(server: _Server) -> None:
    """Redis paused past the client's timeout applies the batch later; the resend must not duplicate it."""
    ledger = RedisLedger(server.url, prefix="idem:", timeout=0.2, retry_interval=0.1)
    admin = redis.Redis(port=server.port)
    ledger.add(_record(1))
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)  # paused: the write reaches its socket, Redis reads it on waking
    try:
        started = time.monotonic()
        ledger.add(_record(2))  # times out: kept in memory, although Redis runs it when it wakes
        assert time.monotonic() - started < 0.6
        time.sleep(0.4)
    finally:
        server.proc.send_signal(signal.SIGCONT)
    time.sleep(0.2)
    assert admin.xlen("idem:spend") == 2  # the timed-out write was applied after all
    ledger.add(_record(3))  # re-sends record 2 with record 3
    assert admin.xlen("idem:spend") == 3
    assert [r.request_id for r in ledger.records()] == ["req-1", "req-2", "req-3"]
    admin.close()


def test_a_reserve_redis_py_sends_again_after_a_timeout_holds_once(server: _Server) -> None:
    """redis-py sends a command once more on a new connection after a timeout; with Redis paused a little past
    the client's timeout, both copies ran: the amount was held twice, the settle freed it once, and the rest
    stayed held by no reservation until the bucket's key expired (days), shrinking the tenant's budget."""
    store = RedisBudgetStore(server.url, prefix="twice:", timeout=0.25, on_unavailable="closed")
    admin = redis.Redis(port=server.port)
    bucket = _now_bucket("1.00")
    first = store.reserve([bucket], Decimal("0.01"))  # connected, and the script loaded, before the pause
    assert isinstance(first, Reservation)
    store.settle(first, Decimal(0))
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    waker = threading.Timer(0.4, server.proc.send_signal, (signal.SIGCONT,))  # past the timeout, before the retry's
    waker.start()
    try:
        held = store.reserve([bucket], Decimal("0.01"))
    finally:
        waker.join()
        server.proc.send_signal(signal.SIGCONT)
    assert isinstance(held, Reservation)
    time.sleep(0.2)  # both copies have run
    assert store.spent(bucket.key) == (Decimal(0), Decimal("0.01"))  # held once
    store.settle(held, Decimal("0.004"))
    assert store.spent(bucket.key) == (Decimal("0.004"), Decimal(0))  # nothing left held
    assert admin.zcard("twice:reservations") == 0
    admin.close()


def test_a_paused_redis_does_not_stall_the_calls_that_record_spend(server: _Server) -> None:
    """Each record re-sent the backlog on the caller's thread, under one lock: with Redis paused every call
    waited for the timeout (0.5 s each), and concurrent calls queued behind one another."""
    ledger = RedisLedger(server.url, prefix="stall:", timeout=0.2, retry_interval=5.0)
    admin = redis.Redis(port=server.port)
    ledger.add(_record(0))
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: ledger.add(_record(i)), range(1, 41)))
        assert time.monotonic() - started < 1.0  # one write waited for the timeout, the others none
    finally:
        server.proc.send_signal(signal.SIGCONT)
    ledger.flush()  # Redis answers again: everything waiting is written, once
    assert sorted(r.request_id for r in ledger.records()) == sorted(f"req-{i}" for i in range(41))
    assert admin.xlen("stall:spend") == 41
    admin.close()


def test_fail_open_is_bounded_by_a_share_per_process(server: _Server, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes that never read the budget's spend: each serves at most open_share of it while Redis is down
    (on two hosts; on one host each counts what the other holds and spends, and they share one share)."""
    url = f"{server.url}?on_unavailable=open&open_share=0.25"
    bucket = _now_bucket("1.00")
    spent_before = RedisBudgetStore(url, timeout=0.2)
    held = spent_before.reserve([bucket], Decimal("0.5"))
    assert isinstance(held, Reservation)
    spent_before.settle(held, Decimal("0.5"))  # half the budget spent before the outage
    server.kill()

    def serve(host: str) -> int:
        monkeypatch.setenv("LLMBUDGET_STATE_DIR", str(tmp_path / host))
        store = RedisBudgetStore(url, timeout=0.2, retry_interval=60)
        assert store.open_share == 0.25
        served = 0
        while isinstance(store.reserve([bucket], Decimal("0.1")), Reservation):  # holds in flight, unsettled
            served += 1
            assert served < 20
        return served

    # 2 calls of $0.10 each fit in 25% of $1.00: 4 calls on two hosts, $0.40 in all, against the $0.50 left
    assert serve("host-a") + serve("host-b") == 4
    assert serve("host-a") == 0  # another process on host a: the first one's holds count there
    with pytest.raises(ValueError, match="open_share"):
        RedisBudgetStore(f"{server.url}?open_share=2")


def test_a_reserve_that_timed_out_is_released_by_its_id(server: _Server) -> None:
    """Redis paused past the client timeout runs the reserve script later; its hold must not stay orphaned."""
    # (retry_interval 1 s: the background retry thread replays the release no sooner, so the check below sees
    # it waiting; at 0.3 s a slow machine let the thread replay it first)
    store = RedisBudgetStore(server.url, timeout=0.2, retry_interval=1.0, on_unavailable="closed")
    bucket = _now_bucket("1.00")
    assert isinstance(store.reserve([bucket], Decimal("0.1")), Reservation)  # the script is loaded
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(BudgetStoreUnavailable):
            store.reserve([bucket], Decimal("0.4"))  # times out; Redis runs it on waking
    finally:
        server.proc.send_signal(signal.SIGCONT)
    failed = time.monotonic()
    time.sleep(0.3)
    admin = redis.Redis(port=server.port)
    assert int(admin.hget(f"{store.prefix}b:{bucket.key}", "r")) > 0  # the orphan hold, and the first one
    assert len(store._releases) == 1  # its release waits for Redis
    time.sleep(max(0.0, failed + 1.2 - time.monotonic()))  # past the retry interval
    held = store.reserve([bucket], Decimal("0.1"))  # Redis answers again: the release is replayed first
    assert isinstance(held, Reservation) and not store._releases
    assert store.spent(bucket.key) == (Decimal(0), Decimal("0.2"))  # 0.1 + 0.1 held; the timed-out 0.4 released
    admin.close()


def test_what_waited_for_redis_is_written_as_the_process_exits(server: _Server) -> None:
    """A worker that settled and recorded a call while Redis was down, and ended (recycled after the outage,
    inside its retry interval) before writing them, lost both: the record, and the charge (its hold stayed until
    its TTL). The exit hook writes them once more."""
    import llmbudget.ledger.redis as redis_ledger

    ledger = RedisLedger(server.url + "?prefix=exit:", retry_interval=60)
    store = RedisBudgetStore(server.url + "?prefix=exit:", retry_interval=60, timeout=0.2)
    bucket = _now_bucket("1.00")
    held = store.reserve([bucket], Decimal("0.25"))
    assert isinstance(held, Reservation)
    server.kill()
    store.settle(held, Decimal("0.25"))
    ledger.add(SpendRecord(time=time.time(), endpoint="chat.completions", base_url="http://x/v1",
                           model_requested="m", model_sent="m", model_answered="m", usage=Usage(input_tokens=1),
                           cost_usd=Decimal("0.25"), latency_s=0.0, tenant="acme", request_id="late"))
    assert store.pending_settles == 1 and ledger._waiting
    server.start()  # back, but both wait out their retry interval: only the exit writes them
    redis_ledger._write_what_waits_at_exit()
    assert [r.request_id for r in ledger.records()] == ["late"]
    assert store.pending_settles == 0
    assert RedisBudgetStore(server.url + "?prefix=exit:").spent(bucket.key) == (Decimal("0.25"), 0)


def test_records_redis_still_cannot_take_at_exit_are_kept_and_written_by_the_next_process(
        server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A process that ended while Redis was down lost its waiting records (30 made, 2 in the stream), where the
    SQLite ledger keeps them in a file for the next process."""
    import llmbudget.ledger.redis as redis_ledger

    monkeypatch.setenv("LLMBUDGET_STATE_DIR", str(tmp_path / "state"))

    def record(name: str) -> SpendRecord:
        return SpendRecord(time=time.time(), endpoint="chat.completions", base_url="http://x/v1", model_requested="m",
                           model_sent="m", model_answered="m", usage=Usage(input_tokens=1), cost_usd=Decimal("0.25"),
                           latency_s=0.0, tenant="acme", request_id=name)

    ledger = RedisLedger(server.url + "?prefix=kept:", retry_interval=60, timeout=0.2)
    server.kill()
    for name in ("a", "b", "c"):
        ledger.add(record(name))
    assert ledger.pending == 3
    redis_ledger._write_what_waits_at_exit()  # Redis still down: kept in a file
    kept = list((tmp_path / "state").glob("redis-ledger-*.records-*.jsonl"))
    assert len(kept) == 1 and ledger.pending == 0 and "kept in" in caplog.text
    elsewhere = RedisLedger(server.url + "?prefix=other:", retry_interval=60)
    server.start()
    elsewhere.add(record("other stream"))  # another prefix: another stream's files
    assert kept[0].exists()
    following = RedisLedger(server.url.replace("127.0.0.1", "localhost") + "?prefix=kept:")  # the same server
    following.add(record("after"))
    assert sorted(r.request_id for r in following.records()) == ["a", "after", "b", "c"]
    assert not kept[0].exists()
    kept[0].write_text("".join(json.dumps(row) + "\n" for row in (  # a file written twice: its ids, appended once
        {"id": "x1", "r": record("a").to_dict()}, "not a row", {"id": 5, "r": {}})), encoding="utf-8")
    following._kept_at = None
    following.flush()
    following._kept_at = None
    kept[0].write_text(json.dumps({"id": "x1", "r": record("a").to_dict()}) + "\n", encoding="utf-8")
    following.flush()
    assert sorted(r.request_id for r in following.records()) == ["a", "a", "after", "b", "c"]
    assert not kept[0].exists() and "is not a readable spend record" in caplog.text


def test_a_redis_cache_that_refuses_writes_still_answers_its_lookups(server: _Server) -> None:
    """Full under noeviction, Redis refuses a store (OOM) at once and still answers reads: the refused store made
    every lookup miss for a second without asking Redis (0 of 50 hits; the wait-out is for a Redis that stalls)."""
    from llmbudget.cache.redis_store import RedisCacheStore

    store = RedisCacheStore(server.url, prefix="oom:", max_semantic_chars=1)  # exact entries: no embedding
    store.put(partition="p", exact_key="k1", text="what is the capital of france", response="{}", tenant="t",
              model="m")
    admin = redis.Redis(port=server.port)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) - 1024)
    try:
        assert store.put(partition="p", exact_key="k2", text="another question", response="{}", tenant="t",
                         model="m") == 0  # refused
        assert all(store.get_exact("p", "k1") is not None for _ in range(20))
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()
        store.close()


def test_fail_open_refuses_what_it_cannot_keep_in_its_state_folder(server: _Server, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Served while Redis was down and nothing could be kept on disk, the spend was lost at exit, and each
    process after it served another share of the limit."""
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("LLMBUDGET_STATE_DIR", str(tmp_path / "a-file" / "state"))  # never writable
    store = RedisBudgetStore(server.url, timeout=0.2, retry_interval=60, on_unavailable="open")
    bucket = _now_bucket("1.00")
    assert isinstance(store.reserve([bucket], Decimal("0.1")), Reservation)  # Redis answers: nothing to keep
    server.kill()
    try:
        with pytest.raises(BudgetStoreUnavailable, match="cannot be kept on disk"):
            store.reserve([bucket], Decimal("0.1"))
        monkeypatch.setenv("LLMBUDGET_STATE_DIR", str(tmp_path / "state"))
        other = RedisBudgetStore(server.url, timeout=0.2, retry_interval=60, on_unavailable="open")
        assert isinstance(other.reserve([bucket], Decimal("0.1")), Reservation)  # where it can be kept: served
    finally:
        server.start()


def test_a_charged_expiry_is_remembered_where_settles_are_and_taken_back_once(server: _Server) -> None:
    """The marks of expired holds stayed in the reservations' hash for good; a copy of the reserve coming after the
    sweep held the id again and its settle never took the charge back (spent 0.55 for a 0.25 call); a release of a
    hold whose key had gone made the key again, with no TTL."""
    import redis as redis_module

    store = RedisBudgetStore(server.url, prefix="charged:", reservation_ttl=0.2)
    bucket = _now_bucket("1.00")
    held = [store.reserve([bucket], Decimal("0.1")) for _ in range(3)]
    assert all(isinstance(h, Reservation) for h in held)
    time.sleep(0.3)
    assert isinstance(store.reserve([bucket], Decimal("0.01")), Reservation)  # sweeps the three: charged
    assert store.spent(bucket.key) == (Decimal("0.3"), Decimal("0.01"))
    client = redis_module.Redis.from_url(server.url)
    assert client.hlen("charged:reservation-data") <= 1  # only the open hold's entry is left
    store.settle(held[0], Decimal("0.05"))  # served after all
    store.settle(held[0], Decimal("0.05"))
    store.settle(held[1], Decimal(0))  # never sent
    assert store.spent(bucket.key) == (Decimal("0.15"), Decimal("0.01"))


@pytest.mark.parametrize(("period", "settled_last"), [("minute", False), ("day", False), ("day", True),
                                                      ("day", "after its hold expired")])
def test_a_key_first_charged_while_redis_was_down_expires_as_the_others(server: _Server, period: str,
                                                                        settled_last: bool | str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail-open: a settle kept while Redis was down made its key when written, without the expiry a reserve
    sets: every tenant and period an outage touched stayed in Redis for good. So did the keys a store no longer
    remembers (it remembers 10,000; a long outage under per-request budgets makes a key a call), pushed out
    after the settle or, ``settled_last``, while the call ran."""
    from llmbudget.ledger import redis as redis_store

    monkeypatch.setattr(redis_store, "_REMEMBERED", 3)
    store = RedisBudgetStore(server.url, timeout=0.2, retry_interval=0.2, on_unavailable="open")
    bucket = _now_bucket("1.00", per="tenant", period=period, tenant="never-seen-before")
    server.kill()
    first = store.reserve([_now_bucket("1.00", per="tenant", period=period, tenant="seen")], Decimal("0.2"))
    assert isinstance(first, Reservation) and first.id.startswith("local-")  # Redis is known to be down now
    held = store.reserve([bucket], Decimal("0.2"), ttl=0.05 if settled_last == "after its hold expired" else None)
    assert isinstance(held, Reservation) and held.id.startswith("local-")
    time.sleep(0.1)  # (a long stream: the next reserve sweeps its local hold out)
    if not settled_last:
        store.settle(held, Decimal("0.1"))
    store.settle(first, Decimal(0))
    for i in range(5):  # more keys than the store remembers, after this one's
        other = store.reserve([_now_bucket("1.00", per="tenant", period=period, tenant=f"t{i}")], Decimal("0.1"))
        assert isinstance(other, Reservation)
        store.settle(other, Decimal("0.01"))
    assert bucket.key not in store._expiry
    if settled_last:
        store.settle(held, Decimal("0.1"))
    server.start()
    client = redis.Redis(port=server.port)
    key = store._key(bucket.key)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not client.exists(key):
        time.sleep(0.05)  # written by the store's own thread once Redis answers
    assert store.spent(bucket.key)[0] == Decimal("0.1")
    expires_in = client.pttl(key) / 1000
    assert bucket.resets_at is not None and 0 < expires_in
    assert expires_in <= bucket.resets_at - time.time() + 3 * 86_400  # as its reserves would have set it


def test_a_ledger_write_never_takes_on_what_other_threads_add_while_it_writes(server: _Server) -> None:
    """The thread that wrote the ledger wrote on until nothing waited, other requests' records included: under
    32 threads one call's ``add`` ran 7 s on a healthy Redis. It writes what waited when it began; what comes
    meanwhile is written by the next call, or within a second by the retry thread."""
    ledger = RedisLedger(server.url, prefix="bounded:", timeout=0.5)
    sending, release = threading.Event(), threading.Event()
    sends: list[tuple[str, int]] = []
    real_send = ledger._send

    def slow_send(batch: list[tuple[str, str]]) -> None:
        sends.append((threading.current_thread().name, len(batch)))
        if threading.current_thread().name == "first":
            sending.set()
            release.wait(5)
        real_send(batch)

    ledger._send = slow_send  # type: ignore[method-assign]
    first = threading.Thread(target=ledger.add, args=(_record(0),), name="first")
    first.start()
    assert sending.wait(5)
    for i in range(1, 51):  # added while the first thread writes: they return at once
        ledger.add(_record(i))
    release.set()
    first.join(5)
    assert [size for name, size in sends if name == "first"] == [1]  # its own record, not the 50 after it
    deadline = time.monotonic() + 5
    while ledger.pending and time.monotonic() < deadline:  # written by the retry thread, unasked
        time.sleep(0.05)
    assert ledger.pending == 0
    assert sorted(r.request_id for r in ledger.records()) == sorted(f"req-{i}" for i in range(51))


def test_settles_that_waited_are_replayed_once_in_batches_by_one_thread(server: _Server) -> None:
    """After a pause every request thread replayed the whole backlog itself, one round trip per settle: 8,611
    waiting settles took 29,452 scripts and held calls 3.4 s on a healthy Redis."""
    store = RedisBudgetStore(server.url, timeout=0.2, retry_interval=0.2, on_unavailable="open", open_share=1.0)
    bucket = _now_bucket("1000")
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        for _ in range(1500):
            held = store.reserve([bucket], Decimal("0.01"))
            assert isinstance(held, Reservation)
            store.settle(held, Decimal("0.01"))
    finally:
        server.proc.send_signal(signal.SIGCONT)
    assert store.pending_settles == 1500
    admin = redis.Redis(port=server.port)
    admin.config_resetstat()
    time.sleep(0.25)  # past the retry interval
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        held_now = list(pool.map(lambda _: store.reserve([bucket], Decimal("0.01")), range(8)))
    assert all(isinstance(h, Reservation) and not h.id.startswith("local-") for h in held_now)
    assert store.pending_settles == 0
    scripts = admin.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    assert scripts <= 1500 + 8 + 16  # each settle sent once (and the 8 reserves), not once per thread
    assert store.spent(bucket.key) == (Decimal("15.00"), Decimal("0.08"))
    admin.close()


def test_a_hold_a_process_killed_while_redis_was_down_is_counted_and_charged_what_it_held(server: _Server) -> None:
    """Fail-open holds lived in memory only: a worker SIGKILLed with calls in flight left no trace of them, the
    next worker got a fresh share, and the calls the provider billed were never charged."""
    store = RedisBudgetStore(server.url, timeout=0.2, retry_interval=0.2, on_unavailable="open")
    server.kill()

    def come_back() -> None:
        server.start()
        time.sleep(0.3)  # past the retry interval

    assert_a_killed_hold_is_counted_and_charged(
        store, 'RedisBudgetStore(sys.argv[1], timeout=0.2, on_unavailable="open")', server.url, come_back,
        lambda key: RedisBudgetStore(server.url).spent(key)[0])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX's")
def test_a_child_forked_while_a_settle_is_in_flight_leaves_it_to_the_parent(store: BudgetStore) -> None:
    """A child forked while a thread of its parent wrote a fail-open hold's settle kept that hold as its own,
    never written there: its journal lived as long as it did, and charged the hold again after it ended."""
    store._unwritten["local-x"] = object()  # type: ignore[attr-defined]  # the parent's, in flight
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0 if store._unwritten == {} else 1)  # type: ignore[attr-defined]
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0 and "local-x" in store._unwritten  # type: ignore[attr-defined]
