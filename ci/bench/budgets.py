"""Budget reservations per second: reserve + settle pairs on memory, SQLite and Redis stores.

Each pair reserves against two buckets (tenant per day, global per month), as a
request with a tenant and a global budget does, then settles a smaller actual.
Prints, per store and thread count, pairs per second and the p50 / p99 latency
of one pair. The budget is large enough that nothing is refused.

Then, on SQLite, the async transport's case: ``--tasks`` tasks on one event loop, each reserving and settling
inside ``no_wait()`` with a few turns of the loop between (as a call's request and response), the store's
settles written at the end of each turn of the loop (``per turn``, what the store does) against each settle
written at once (``at once``, a ``flush()`` after it, as before); the two alternate over ``--rounds`` rounds.
Prints the process CPU per pair (median and each round).

    python ci/bench/budgets.py [--pairs 4000] [--threads 1 4] [--redis redis://127.0.0.1:6379/15] [--tasks 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from llmbudget.ledger import (
    Budget,
    BudgetStore,
    MemoryBudgetStore,
    RedisBudgetStore,
    Reservation,
    SQLiteBudgetStore,
)
from llmbudget.ledger.budgets import no_wait  # noqa: E402


def _run(store: BudgetStore, pairs: int, threads: int) -> tuple[float, list[float]]:
    now = time.time()
    buckets = [
        Budget(1_000_000, per="tenant", period="day").bucket(tenant="bench", request_id="-", now=now),
        Budget(1_000_000, per="global", period="month").bucket(tenant="bench", request_id="-", now=now),
    ]
    amount, actual = Decimal("0.0123"), Decimal("0.004567")
    per_thread = pairs // threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)
    before, _ = store.spent(buckets[0].key)

    def work(i: int) -> None:
        out = latencies[i]
        start.wait()
        for _ in range(per_thread):
            t0 = time.perf_counter()
            held = store.reserve(buckets, amount, tenant="bench")
            assert isinstance(held, Reservation), held
            store.settle(held, actual)
            out.append(time.perf_counter() - t0)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    t0 = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - t0
    spent, reserved = store.spent(buckets[0].key)
    assert reserved == 0 and spent - before == actual * per_thread * threads, (spent, before, reserved)
    return elapsed, sorted(x for lat in latencies for x in lat)


def _on_loop(store: SQLiteBudgetStore, tasks: int, pairs: int, at_once: bool) -> float:
    """CPU seconds per reserve + settle pair, ``tasks`` tasks on one event loop (see the module)."""
    now = time.time()
    amount, actual = Decimal("0.0123"), Decimal("0.004567")

    async def task(k: int) -> None:
        for i in range(pairs // tasks):
            buckets = [Budget(1_000_000, per="tenant", period="day").bucket(tenant=f"t{k % 8}", request_id="-",
                                                                             now=now),
                       Budget(1, per="request").bucket(tenant=f"t{k % 8}", request_id=f"{k}-{i}", now=now)]
            with no_wait():
                held = store.reserve(buckets, amount)
            assert isinstance(held, Reservation), held
            for _ in range(3):  # the request goes out, the response comes back
                await asyncio.sleep(0)
            with no_wait():
                store.settle(held, actual)
                if at_once:
                    store.flush()
            await asyncio.sleep(0)

    async def run() -> None:
        await asyncio.gather(*(task(k) for k in range(tasks)))

    t0 = time.process_time()
    asyncio.run(run())
    cpu = time.process_time() - t0
    assert store.pending_settles == 0
    return cpu / (pairs // tasks * tasks)


def _pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=4000, help="reserve+settle pairs per run")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15", help="a Redis URL ('' to skip Redis)")
    parser.add_argument("--tasks", type=int, default=32, help="tasks on one event loop (SQLite; 0 to skip)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of the event-loop comparison")
    args = parser.parse_args()

    prefix = f"llmbudget-bench:{uuid.uuid4().hex[:8]}:"
    with tempfile.TemporaryDirectory() as tmp:
        stores: dict[str, Callable[[], BudgetStore]] = {
            "memory": MemoryBudgetStore,
            "sqlite": lambda: SQLiteBudgetStore(Path(tmp) / f"{uuid.uuid4().hex}.sqlite3"),
        }
        if args.redis:
            stores["redis"] = lambda: RedisBudgetStore(args.redis, prefix=f"{prefix}{uuid.uuid4().hex[:8]}:",
                                                       timeout=5.0)
        print(f"{'store':<8} {'threads':>7} {'pairs/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
        try:
            for name, make in stores.items():
                for threads in args.threads:
                    store = make()
                    _run(store, min(200, args.pairs), threads)  # warm up (scripts loaded, pages cached)
                    elapsed, lat = _run(store, args.pairs, threads)
                    rate = len(lat) / elapsed
                    print(f"{name:<8} {threads:>7} {rate:>10,.0f} {_pct(lat, 0.5) * 1e3:>8.3f} "
                          f"{_pct(lat, 0.99) * 1e3:>8.3f}", flush=True)
            if args.tasks:
                store = SQLiteBudgetStore(Path(tmp) / "loop.sqlite3")
                _on_loop(store, args.tasks, min(640, args.pairs), False)  # warm up
                cpu: dict[str, list[float]] = {"per turn": [], "at once": []}
                for i in range(args.rounds):
                    for name in (["at once", "per turn"] if i % 2 == 0 else ["per turn", "at once"]):
                        cpu[name].append(_on_loop(store, args.tasks, args.pairs, name == "at once") * 1e6)
                print(f"\nSQLite on one event loop, {args.tasks} tasks: CPU per reserve + settle pair")
                for name, values in cpu.items():
                    print(f"  settles written {name:<8} median {statistics.median(values):6.0f} us   "
                          f"rounds {' '.join(f'{v:.0f}' for v in values)}")
        finally:
            if args.redis:
                import redis

                client = redis.Redis.from_url(args.redis)
                keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
                if keys:
                    client.delete(*keys)


if __name__ == "__main__":
    main()
