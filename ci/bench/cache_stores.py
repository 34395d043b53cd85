"""Cache lookup latency on the three stores: SQLite, Redis and in memory.

Fills one partition with 10,000 questions from ``../shared/data/cache/qqp_dev.jsonl``
(the same questions in every store), then times, per store:

- exact hits: ``get_exact`` of stored keys (no embedding, as the exact tier);
- semantic lookups: ``search`` of the second questions of sampled pairs (their
  first questions are stored), embedding and the verifier included, as the
  semantic tier does them (a minority are hits: the "hits" column), and the
  tracked objects they leave behind (``gc.get_objects()`` growth over the timed
  lookups, after a collection).

Prints p50 / p99 in milliseconds. Redis keys go to ``--redis`` (database 15 by
default) under a unique prefix, deleted afterwards.

    python ci/bench/cache_stores.py [--entries 10000] [--queries 1000] [--redis redis://127.0.0.1:6379/15]
                                    [--stores sqlite,redis,memory]

Partitions above 2,048 entries are searched by a usearch HNSW index in every
store (the Redis store builds it in the background; the fill column includes
waiting for it).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from llmbudget.cache.bench import _texts, default_pairs_path
from llmbudget.cache.embedders import WordLlamaEmbedder
from llmbudget.cache.evaluate import read_pair_rows
from llmbudget.cache.redis_store import RedisCacheStore
from llmbudget.cache.store import CacheStore

PARTITION = "bench"
WARMUP = 20


def _ms(samples: list[float]) -> tuple[float, float]:
    values = np.asarray(samples) * 1000.0
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def _measure(store: Any, texts: list[str], queries: list[str], exact: list[int]) -> dict[str, Any]:
    started = time.perf_counter()
    batch = 1000
    for start in range(0, len(texts), batch):
        store.put_many(
            {"partition": PARTITION, "exact_key": f"e{start + i}", "text": text,
             "response": json.dumps({"n": start + i}), "tenant": "bench", "model": "bench"}
            for i, text in enumerate(texts[start : start + batch])
        )
    store.search(PARTITION, texts[0])  # loads (builds) the partition's index
    wait = getattr(store, "_wait_for_builds", None)
    if wait is not None:  # Redis: the HNSW index is built in the background (exact search serves meanwhile)
        wait()
    build_s = time.perf_counter() - started

    exact_times = []
    for number, i in enumerate(exact):
        t0 = time.perf_counter()
        entry = store.get_exact(PARTITION, f"e{i}")
        if number >= WARMUP:
            exact_times.append(time.perf_counter() - t0)
        assert entry is not None and json.loads(entry.response) == {"n": i}, f"exact key e{i} missed"
    semantic_times, hits, tracked = [], 0, 0
    for number, text in enumerate(queries):
        if number == WARMUP:
            gc.collect()
            tracked = len(gc.get_objects())
        t0 = time.perf_counter()
        hit = store.search(PARTITION, text)
        if number >= WARMUP:
            semantic_times.append(time.perf_counter() - t0)
            hits += hit is not None
    gc.collect()
    left = len(gc.get_objects()) - tracked
    return {"build_s": build_s, "exact": _ms(exact_times), "semantic": _ms(semantic_times),
            "hit_rate": hits / len(semantic_times), "left": left}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--stores", default="sqlite,redis,memory", help="which to measure, comma-separated")
    args = parser.parse_args()
    stores = set(args.stores.split(","))
    if not stores or stores - {"sqlite", "redis", "memory"}:
        sys.exit(f"--stores {args.stores!r}: expected a comma-separated subset of sqlite,redis,memory")

    source = default_pairs_path()
    if source is None:
        sys.exit("no ../shared/data/cache/qqp_dev.jsonl (set LLMBUDGET_CACHE_BENCH_DATA)")
    pairs = read_pair_rows(source)
    rng = random.Random(1)
    asked = [rng.choice(pairs) for _ in range(args.queries + WARMUP)]
    originals = list(dict.fromkeys(p["a"] for p in asked))
    held_out = {p["b"] for p in asked} - set(originals)
    texts = list(_texts(pairs, args.entries, first=originals, exclude=held_out))
    queries = [p["b"] for p in asked]
    exact = [rng.randrange(len(texts)) for _ in range(args.queries + WARMUP)]
    embedder = WordLlamaEmbedder()  # one embedder for all: the same vectors, loaded once

    rows = []
    if "sqlite" in stores:
        with tempfile.TemporaryDirectory(prefix="llmbudget-bench-") as folder:
            sqlite = CacheStore(folder, embedder=embedder, max_entries=None)
            try:
                rows.append(("SQLite (WAL)", _measure(sqlite, texts, queries, exact)))
            finally:
                sqlite.close()
    if "redis" in stores:
        prefix = f"llmbudget-bench-{uuid.uuid4().hex[:8]}:"
        redis_store = RedisCacheStore(args.redis, prefix=prefix, embedder=embedder, max_entries=None)
        try:
            rows.append(("Redis", _measure(redis_store, texts, queries, exact)))
        finally:
            redis_store.clear()
            redis_store.close()
    if "memory" in stores:
        memory = CacheStore(None, embedder=embedder, max_entries=None)
        try:
            rows.append(("memory (CacheStore(None))", _measure(memory, texts, queries, exact)))
        finally:
            memory.close()

    print(f"{len(texts):,} entries in one partition; {args.queries} lookups of each kind")
    print("| store | fill | exact hit p50 | exact hit p99 | semantic p50 | semantic p99 | semantic hits "
          "| objects left |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in rows:
        (e50, e99), (s50, s99) = row["exact"], row["semantic"]
        print(f"| {name} | {row['build_s']:.1f} s | {e50:.3f} ms | {e99:.3f} ms | {s50:.2f} ms | {s99:.2f} ms "
              f"| {row['hit_rate']:.0%} | {row['left']} |")


if __name__ == "__main__":
    main()
