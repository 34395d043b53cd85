"""Where a cache lookup and store spend their CPU: one missed call's cache work, stage by stage.

The same work ``Cache.lookup`` and ``Cache.save`` ask of a local ``CacheStore`` on a miss: the exact tier
(a miss), the query's vector (WordLlama), the index search (caught up with the last store first: one
SQLite read, and an HNSW insertion in a big partition), the candidates read from SQLite and checked
(cosine floor, template guard), the verifier on those left, then the answer stored with the query's
vector (the verifier's per-entry data; the rest: the vector's stored form, one SQLite transaction).
Prompts are those of ``throughput.py`` (five templates, so nearly every lookup has candidates to verify).
With ``--quick``, each step runs as the async transport runs a quick cache's work on the event loop: inside
``no_wait()``, and done again outside it when it would wait (the calls handed on are counted).

For each store size (``--entries``; one partition: up to 2,048 entries it is searched exactly, beyond it
by an HNSW graph), ``--lookups`` new prompts are looked up and stored in turn; printed per stage: the
median and p99 of its thread CPU time in microseconds, and its share of the call's cache work.

    python ci/bench/cache_costs.py [--entries 1000,10000] [--lookups 2000] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(ROOT.parent / "shared" / "data" / "tiktoken"))

from throughput import prompts  # noqa: E402

from llmbudget.cache.store import CacheStore  # noqa: E402
from llmbudget.ledger.budgets import WouldWait, no_wait  # noqa: E402

STAGES = ("exact tier", "query vector", "index search", "candidates read and checked", "verifier",
          "store: verifier data", "store: the rest")


class Timer:
    """Thread CPU time spent inside wrapped callables, per stage, for the call being measured."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[stage] = self.spent.get(stage, 0.0) + time.thread_time() - t0
        return timed


def measure(entries: int, lookups: int, quick: bool = False) -> tuple[dict[str, list[float]], int]:
    """Per stage, the thread CPU of each measured call (microseconds); and how many steps were handed on."""
    texts = prompts(entries + lookups + 50, seed=11)
    samples: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "lookup", "store", "total")}
    handed = 0

    def step(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        nonlocal handed
        if not quick:
            return fn(*args, **kwargs)
        try:
            with no_wait():
                return fn(*args, **kwargs)
        except WouldWait:
            handed += 1
            return fn(*args, **kwargs)

    with tempfile.TemporaryDirectory() as folder:
        store = CacheStore(folder, max_entries=None)
        vectors = store.embedder.embed(texts[:entries])
        store.put_many({"partition": "p", "exact_key": f"e{i}", "text": text, "response": '{"answer": "stored"}',
                        "tenant": "t", "model": "m", "vector": vectors[i]} for i, text in enumerate(texts[:entries]))
        timer = Timer()
        store._index.search = timer.wrap("index search", store._index.search)  # type: ignore[method-assign]
        store._score = timer.wrap("verifier", store._score)  # type: ignore[method-assign]
        store._scorer_data = timer.wrap("store: verifier data", store._scorer_data)  # type: ignore[method-assign]
        try:
            for number, text in enumerate(texts[entries:]):
                timer.spent = {}
                t0 = time.thread_time()
                step(store.get_exact, "p", f"q{number}")
                t1 = time.thread_time()
                vector = step(store.query_vector, text)
                t2 = time.thread_time()
                step(store.search, "p", text, vector)
                t3 = time.thread_time()
                step(store.put, partition="p", exact_key=f"q{number}", text=text, response='{"answer": "stored"}',
                     tenant="t", model="m", vector=vector)
                t4 = time.thread_time()
                if number < 50:  # warm-up: the partition's first load, the scorer's tables
                    continue
                spent = timer.spent
                search = t3 - t2
                data = spent.get("store: verifier data", 0.0)
                figures = {
                    "exact tier": t1 - t0, "query vector": t2 - t1, "index search": spent.get("index search", 0.0),
                    "verifier": spent.get("verifier", 0.0),
                    "candidates read and checked": search - spent.get("index search", 0.0) - spent.get("verifier", 0.0),
                    "store: verifier data": data, "store: the rest": (t4 - t3) - data,
                    "lookup": t3 - t0, "store": t4 - t3, "total": t4 - t0,
                }
                for stage, seconds in figures.items():
                    samples[stage].append(seconds * 1e6)
        finally:
            store.close()
    return samples, handed


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", default="1000,10000", help="store sizes (comma-separated)")
    parser.add_argument("--lookups", type=int, default=2000, help="lookups (and stores) per size")
    parser.add_argument("--quick", action="store_true", help="run each step inside no_wait(), as on the event loop")
    args = parser.parse_args()
    for entries in (int(n) for n in args.entries.split(",")):
        samples, handed = measure(entries, args.lookups, args.quick)
        total = statistics.mean(samples["total"])
        print(f"\n{entries:,} entries, {len(samples['total']):,} missed calls: thread CPU per call, microseconds"
              + (f" (inside no_wait(); {handed:,} steps handed on)" if args.quick else ""))
        print(f"{'stage':30} {'p50':>8} {'p99':>8} {'mean share':>11}")
        for stage in (*STAGES, "lookup", "store", "total"):
            values = samples[stage]
            print(f"{stage:30} {statistics.median(values):8.0f} {_p99(values):8.0f} "
                  f"{statistics.mean(values) / total:10.0%}")


if __name__ == "__main__":
    main()
