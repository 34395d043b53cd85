"""RedisCacheStore against the real Redis: lookups, isolation, TTL, eviction, other processes, Redis down.

Database 15 of the Redis on 127.0.0.1:6379, one key prefix per test, deleted after it.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_keys import URL, drop

from llmbudget.cache import redis_store
from llmbudget.cache.cache import Cache
from llmbudget.cache.redis_store import RedisCacheStore
from llmbudget.config import engine_from_config

ROOT = Path(__file__).resolve().parents[2]
#: The most a stored entry may take to become a hit in another process (measured: a few milliseconds).
CROSS_PROCESS_DELAY_S = 1.0


class HashEmbedder:
    """Deterministic bag-of-words vectors (fast, the same in every process)."""

    dim = 32
    name = "test-hash-32"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[row] += np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


class OtherEmbedder(HashEmbedder):
    name = "test-other-32"


class CosineStandIn:
    """A stand-in for the verifier: cosine similarity."""

    threshold = 0.995

    def score(self, query_text: str, query_vec: np.ndarray, cand_text: str, cand_vec: np.ndarray) -> float:
        return float(np.dot(query_vec, cand_vec))


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    """A key prefix of this test's own; its keys are deleted after it."""
    return redis_prefix


def make(prefix: str, url: str = URL, **options: object) -> RedisCacheStore:
    options.setdefault("embedder", HashEmbedder())
    options.setdefault("scorer", CosineStandIn())
    return RedisCacheStore(url, prefix=prefix, **options)  # type: ignore[arg-type]


def put(store: RedisCacheStore, partition: str, key: str, text: str, **extra: object) -> int:
    fields: dict[str, object] = {"tenant": "acme", "model": "gpt-x", "response": json.dumps({"answer": text})}
    fields.update(extra)
    return store.put(partition=partition, exact_key=key, text=text, **fields)  # type: ignore[arg-type]


@pytest.fixture
def store(prefix: str) -> Iterator[RedisCacheStore]:
    with make(prefix) as opened:
        yield opened


def test_exact_and_semantic_lookups(store: RedisCacheStore) -> None:
    entry_id = put(store, "p1", "k1", "what is the capital of france")
    assert entry_id > 0
    exact = store.get_exact("p1", "k1")
    assert exact is not None and exact.id == entry_id and json.loads(exact.response) == {"answer": exact.text}
    assert store.get_exact("p1", "k2") is None
    assert store.get_exact("p2", "k1") is None
    hit = store.search("p1", "What is the capital of France")
    assert hit is not None and hit.entry.id == entry_id and hit.cosine > 0.99
    assert store.search("p1", "how tall is mount everest") is None
    assert store.search("p2", "what is the capital of france") is None
    store.record_hit(entry_id)
    store.record_hit(entry_id)
    again = store.get_exact("p1", "k1")
    assert again is not None and again.hits == 2 and again.last_hit is not None
    # Replacing under the same exact key: one entry, the new answer, the old vector gone.
    new_id = put(store, "p1", "k1", "how tall is mount everest")
    assert new_id != entry_id and store.stats()["entries"] == 1
    assert store.search("p1", "what is the capital of france") is None
    found = store.search("p1", "how tall is mount everest")
    assert found is not None and found.entry.id == new_id
    # Exact-only entries and given vectors.
    put(store, "p1", "k3", "exact only please", semantic=False)
    assert store.get_exact("p1", "k3") is not None and store.search("p1", "exact only please") is None
    vec = np.zeros(32, dtype=np.float32)
    vec[3] = 2.0
    given_id = put(store, "p3", "k4", "anything", vector=vec)
    hit = store.search("p3", "ignored", vector=vec)
    assert hit is not None and hit.entry.id == given_id
    assert store.stats() == {"entries": 3, "bytes": store.stats()["bytes"], "partitions": 2}


QUESTIONS = [
    "What is the capital of France?", "How do I learn Python quickly?", "What is 2+2?",
    "Why is the sky blue?", "How can I lose weight fast?", "What is the best way to learn guitar?",
    "Who wrote Hamlet?", "How do I reset my password?", "What causes earthquakes?", "Is coffee bad for you?",
]
PARAPHRASES = [
    "what's the capital of france", "How can I learn Python fast?", "What is 2+3?", "Why is the sky blue",
    "How do I lose weight quickly?", "What is the best way to learn the guitar?", "Who is the author of Hamlet?",
    "How can I reset my password?", "What causes an earthquake?", "Is coffee bad for your health?",
]


@pytest.fixture(scope="module")
def verifier_store_options() -> dict[str, object]:
    """The bundled embedder and verifier, loaded once for the module."""
    from llmbudget.cache.embedders import WordLlamaEmbedder
    from llmbudget.cache.verifier import default_verifier

    return {"embedder": WordLlamaEmbedder(), "scorer": default_verifier()}


def lookups(store: RedisCacheStore, texts: Sequence[str]) -> list[tuple[int, float, float] | None]:
    found = [store.search("p", text) for text in texts]
    return [None if hit is None else (hit.entry.id, hit.score, hit.cosine) for hit in found]


def test_scorer_data_is_stored_and_old_entries_without_it_score_the_same(
    prefix: str, verifier_store_options: dict[str, object]
) -> None:
    with RedisCacheStore(URL, prefix=prefix, **verifier_store_options) as store:  # type: ignore[arg-type]
        ids = store.put_many({"partition": "p", "exact_key": f"k{i}", "text": text, "response": "{}",
                              "tenant": "acme", "model": "m"} for i, text in enumerate(QUESTIONS))
        raw = store._redis
        assert all(raw.hget(f"{prefix}e:{entry_id}", "d") for entry_id in ids)  # the verifier's packed text
        scorer: Any = verifier_store_options["scorer"]
        scorer.clear_cache()
        with_data = lookups(store, PARAPHRASES + QUESTIONS)
        assert sum(found is not None for found in with_data) >= len(QUESTIONS)  # every question finds itself
        assert with_data[2] is None or with_data[2][0] != ids[2]  # "2+3" never answered by "2+2"
        for entry_id in ids:  # as entries stored by an older version: no scorer data
            raw.hdel(f"{prefix}e:{entry_id}", "d")
        scorer.clear_cache()
        assert lookups(store, PARAPHRASES + QUESTIONS) == with_data
        exact_only = store.put(partition="p", exact_key="x", text="an exact-only answer", response="{}",
                               tenant="acme", model="m", semantic=False)
        assert raw.hget(f"{prefix}e:{exact_only}", "d") is None


def test_lookups_leave_no_tracked_objects_behind(prefix: str, verifier_store_options: dict[str, object]) -> None:
    scorer: Any = verifier_store_options["scorer"]
    with RedisCacheStore(URL, prefix=prefix, **verifier_store_options) as store:  # type: ignore[arg-type]
        store.put_many({"partition": "p", "exact_key": f"k{i}", "text": f"{text} ({i})", "response": "{}",
                        "tenant": "acme", "model": "m"} for i, text in enumerate(QUESTIONS * 20))
        queries = [f"{text} [{i}]" for i, text in enumerate(PARAPHRASES * 30)]  # each query text is new
        lookups(store, queries[:50])  # warm: the partition is loaded, the scorer's tables built
        scorer.clear_cache()
        gc.collect()
        before = len(gc.get_objects())
        found = lookups(store, queries[50:])
        gc.collect()
        left = len(gc.get_objects()) - before
        assert any(found) and left < 100, f"{len(queries) - 50} lookups left {left} tracked objects"


words = st.sampled_from(["red", "green", "blue", "cat", "dog", "sun", "moon", "sea"])
texts = st.lists(words, min_size=1, max_size=4).map(" ".join)
partitions = st.sampled_from(["a", "b", "c"])


@pytest.mark.parametrize("exact_max", [2048, 0], ids=["exact", "hnsw"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(puts=st.lists(st.tuples(partitions, texts), min_size=1, max_size=8),
       queries=st.lists(st.tuples(partitions, texts), min_size=1, max_size=6))
def test_search_never_crosses_partitions(
    prefix: str, exact_max: int, puts: list[tuple[str, str]], queries: list[tuple[str, str]]
) -> None:
    name = f"{prefix}{uuid.uuid4().hex[:6]}:"
    with make(name, scorer=CosineStandIn(), threshold=-1.0, min_cosine=-1.0, exact_search_max=exact_max,
              template_guard=None) as store:  # the partitions, not the guard (it refuses reordered words)
        try:
            stored: dict[str, set[str]] = {}
            for i, (partition, text) in enumerate(puts):
                put(store, partition, f"k{i}", text)
                stored.setdefault(partition, set()).add(text)
            for partition, _ in queries:  # load the partitions, build their indexes
                store.search(partition, "red")
            store._wait_for_builds()
            assert all(kind == ("hnsw" if exact_max == 0 else "exact") for kind, size in store._loaded().values() if size)
            for partition, text in queries:
                hit = store.search(partition, text)
                if partition not in stored:
                    assert hit is None
                else:
                    assert hit is not None and hit.entry.partition == partition and hit.entry.text in stored[partition]
                for i in range(len(puts)):
                    exact = store.get_exact(partition, f"k{i}")
                    assert exact is None or exact.partition == partition
                    assert (exact is not None) == (puts[i][0] == partition)
        finally:
            store.clear()


def test_hash_collision_is_never_served(store: RedisCacheStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RedisCacheStore, "_partition_id", staticmethod(lambda partition: 7))
    put(store, "tenant-a", "k", "shared question text")
    assert store.search("tenant-b", "shared question text") is None
    assert store.get_exact("tenant-b", "k") is None
    assert store.search("tenant-a", "shared question text") is not None


def test_ttl_expires_entries(prefix: str) -> None:
    with make(prefix, ttl=0.3) as store:
        put(store, "p", "short", "a question that expires soon")
        put(store, "p", "long", "a question that stays around", ttl=60)
        assert store.get_exact("p", "short") is not None
        assert store.search("p", "a question that expires soon") is not None
        expires = store.get_exact("p", "short").expires  # type: ignore[union-attr]
        assert expires is not None and expires - time.time() < 0.31
        time.sleep(0.45)
        assert store.get_exact("p", "short") is None
        assert store.search("p", "a question that expires soon") is None
        assert store.get_exact("p", "long") is not None
        assert store.purge() == 1
        assert store.stats()["entries"] == 1


def test_expired_entries_are_purged_by_later_puts_without_a_cap(prefix: str) -> None:
    # Redis expired the entries' hashes, but without a cap nothing purged their LRU, id and partition sets and
    # byte count: they grew for good, and loading a partition read ever more dead ids
    now = [1000.0]
    with make(prefix, ttl=1, max_entries=None, clock=lambda: now[0]) as store:
        for i in range(3):
            put(store, "p", f"k{i}", f"question number {i}")
        assert store._redis.hlen(store._key("w")) == 3
        now[0] += 120  # expired, and a purge is due
        put(store, "p", "later", "a later question")
        assert store._redis.hlen(store._key("w")) == 1


def test_lru_eviction_at_the_cap(prefix: str) -> None:
    with make(prefix, max_entries=3) as store:
        ids = [put(store, "p", f"k{i}", f"question number {i} {'x ' * i}") for i in range(3)]
        store.record_hit(ids[0])  # k1 is now the least recently used
        put(store, "p", "k3", "one more question")
        assert store.stats()["entries"] == 3
        assert store.get_exact("p", "k1") is None
        assert all(store.get_exact("p", k) is not None for k in ("k0", "k2", "k3"))
        assert store.search("p", "question number 1 x") is None


CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
import numpy as np
import hashlib
from collections.abc import Sequence
from llmbudget.cache.redis_store import RedisCacheStore
{classes}
store = RedisCacheStore({url!r}, prefix=sys.argv[1], embedder=HashEmbedder(), scorer=CosineStandIn(),
                        **json.loads(sys.argv[2]))
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "wait":  # poll as a busy worker would: one lookup after another
        deadline = time.time() + cmd["timeout"]
        found = None
        while time.time() < deadline:
            hit = store.search(cmd["partition"], cmd["text"])
            found = hit.entry.id if hit is not None else None
            if (found is not None) == cmd["present"]:
                break
            time.sleep(0.002)
        print(json.dumps({{"at": time.time(), "id": found}}), flush=True)
    elif cmd["op"] == "put":
        entry_id = store.put(partition=cmd["partition"], exact_key=cmd["key"], text=cmd["text"],
                             response="{{}}", tenant=cmd["tenant"], model="m")
        print(json.dumps({{"id": entry_id}}), flush=True)
    elif cmd["op"] == "indexes":  # once the HNSW builds under way are done
        store._wait_for_builds()
        print(json.dumps({{"kinds": sorted(kind for kind, _ in store._loaded().values())}}), flush=True)
    elif cmd["op"] == "exact":
        entry = store.get_exact(cmd["partition"], cmd["key"])
        print(json.dumps({{"id": None if entry is None else entry.id}}), flush=True)
"""


class Child:
    """Another process with its own RedisCacheStore on the same prefix, driven over stdin."""

    def __init__(self, prefix: str, **options: object) -> None:
        source = CHILD.format(root=str(ROOT), url=URL, classes="\n".join(
            textwrap.dedent(inspect.getsource(cls)) for cls in (HashEmbedder, CosineStandIn)))
        self.proc = subprocess.Popen([sys.executable, "-c", source, prefix, json.dumps(options)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)

    def ask(self, **cmd: object) -> dict[str, object]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the child process died"
        return json.loads(line)  # type: ignore[no-any-return]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def test_an_entry_stored_by_one_process_is_a_hit_in_another(
    store: RedisCacheStore, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    child = Child(prefix)
    try:
        put(store, "p", "warm", "a question to load the partition")
        assert child.ask(op="wait", partition="p", text="a question to load the partition", present=True,
                         timeout=10)["id"] is not None  # the child has bootstrapped the partition
        delays = []
        for round_ in range(5):
            text = f"brand new question number {round_} about {'sea ' * round_}"
            assert child.ask(op="wait", partition="p", text=text, present=False, timeout=1)["id"] is None
            # The child polls while this process stores; it reports when it first sees the entry.
            assert child.proc.stdin is not None
            child.proc.stdin.write(json.dumps({"op": "wait", "partition": "p", "text": text, "present": True,
                                               "timeout": 5}) + "\n")
            child.proc.stdin.flush()
            time.sleep(0.1)  # the child is polling by now
            stored_at = time.time()
            entry_id = put(store, "p", f"k{round_}", text)
            assert child.proc.stdout is not None
            seen = json.loads(child.proc.stdout.readline())
            assert seen["id"] == entry_id
            delays.append(seen["at"] - stored_at)
        with capsys.disabled():
            print(f"\ncross-process delay (store -> hit in another process): max {max(delays) * 1000:.1f} ms, "
                  f"median {sorted(delays)[2] * 1000:.1f} ms")
        assert max(delays) < CROSS_PROCESS_DELAY_S
        # The other way round, and the exact tier.
        child_id = child.ask(op="put", partition="p", key="from-child", text="asked in the child process",
                             tenant="acme")["id"]
        assert store.get_exact("p", "from-child") is not None
        hit = store.search("p", "asked in the child process")
        assert hit is not None and hit.entry.id == child_id
    finally:
        child.close()


def test_invalidation_is_seen_by_another_process(store: RedisCacheStore, prefix: str) -> None:
    child = Child(prefix)
    try:
        put(store, "p", "a1", "tenant a first question", tenant="a")
        put(store, "p", "b1", "tenant b first question", tenant="b")
        put(store, "p", "b2", "tenant b other question", tenant="b", model="other")
        for text in ("tenant a first question", "tenant b first question"):
            assert child.ask(op="wait", partition="p", text=text, present=True, timeout=5)["id"] is not None
        assert store.invalidate(tenant="a") == 1
        assert child.ask(op="wait", partition="p", text="tenant a first question", present=False,
                         timeout=CROSS_PROCESS_DELAY_S)["id"] is None
        assert child.ask(op="exact", partition="p", key="a1")["id"] is None
        assert child.ask(op="exact", partition="p", key="b1")["id"] is not None
        assert store.invalidate(tenant="b", model="other") == 1
        assert child.ask(op="exact", partition="p", key="b2")["id"] is None
        assert store.invalidate() == 1
        assert child.ask(op="wait", partition="p", text="tenant b first question", present=False,
                         timeout=CROSS_PROCESS_DELAY_S)["id"] is None
        assert child.ask(op="exact", partition="p", key="b1")["id"] is None
        assert store.stats()["entries"] == 0
    finally:
        child.close()


def test_an_invalidation_redis_interrupts_counts_what_it_deleted_and_finishes_when_called_again(
        store: RedisCacheStore, caplog: pytest.LogCaptureFixture) -> None:
    import redis

    store.put_many({"partition": "p", "exact_key": f"k{i}", "text": f"question {i}", "response": "{}",
                    "tenant": "a", "model": "m"} for i in range(700))
    real = store._delete_many
    calls = [0]

    def flaky(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == 2:  # the second chunk of 500: Redis stops answering
            raise redis.TimeoutError("Timeout reading from socket")
        return real(*args, **kwargs)

    store._delete_many = flaky  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="llmbudget"):
        assert store.invalidate(tenant="a") == 500  # not 0: the first chunk is gone
    assert any("stopped after 500 entries" in r.getMessage() for r in caplog.records)
    assert store.invalidate(tenant="a") == 200 and store.stats()["entries"] == 0


SUBJECTS = ["cats", "dogs", "rain", "tea", "jazz", "chess", "maps", "bread", "glass", "moss", "kites", "ships",
            "clocks", "bees", "salt", "wool", "ink", "rust", "snow", "figs", "lamps", "ropes", "coins", "shells"]


def question(i: int) -> str:
    return f"tell me about {SUBJECTS[i % len(SUBJECTS)]} and {SUBJECTS[(i * 7 + 3) % len(SUBJECTS)]} number {i}"


@pytest.mark.parametrize("exact_max", [2048, 4], ids=["exact", "hnsw"])
def test_another_stores_put_and_invalidation_show_on_the_very_next_lookup(prefix: str, exact_max: int) -> None:
    with make(prefix, exact_search_max=exact_max) as reader, make(prefix) as writer:
        ids = [put(writer, "p", f"k{i}", question(i), tenant=f"t{i}") for i in range(12)]
        assert reader.search("p", question(0)) is not None
        reader._wait_for_builds()
        assert reader._loaded()[reader._partition_id("p")] == ("exact" if exact_max == 2048 else "hnsw", 12)
        for i in range(12, 20):  # each new entry is the reader's very next lookup, not a later one
            new_id = put(writer, "p", f"k{i}", question(i), tenant=f"t{i}")
            hit = reader.search("p", question(i))
            assert hit is not None and hit.entry.id == new_id
            ids.append(new_id)
        for i in (3, 12, 19):
            assert writer.invalidate(tenant=f"t{i}") == 1
            assert reader.search("p", question(i)) is None
        replaced = put(writer, "p", "k5", "an entirely different question about volcanoes")  # same key: replaced
        assert reader.search("p", question(5)) is None
        hit = reader.search("p", "an entirely different question about volcanoes")
        assert hit is not None and hit.entry.id == replaced
        for i in set(range(20)) - {3, 5, 12, 19}:
            hit = reader.search("p", question(i))
            assert hit is not None and hit.entry.id == ids[i], i
        reader._wait_for_builds()
        assert reader._loaded()[reader._partition_id("p")][1] == 17


def test_changes_during_an_hnsw_build_reach_the_new_index(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    building = threading.Event()
    new_index = RedisCacheStore._new_index

    def slow_build(self: RedisCacheStore, ids: np.ndarray, vectors: np.ndarray) -> object:
        building.set()
        assert release.wait(10)
        return new_index(self, ids, vectors)

    monkeypatch.setattr(RedisCacheStore, "_new_index", slow_build)
    with make(prefix, exact_search_max=8) as reader, make(prefix) as writer:
        ids = [put(writer, "p", f"k{i}", question(i), tenant=f"t{i}") for i in range(12)]
        pid = reader._partition_id("p")
        assert reader.search("p", question(0)) is not None
        assert building.wait(10) and reader._loaded()[pid] == ("exact", 12)  # exact search serves meanwhile
        added = put(writer, "p", "new", "a question stored during the build")
        assert writer.invalidate(tenant="t4") == 1
        hit = reader.search("p", "a question stored during the build")
        assert hit is not None and hit.entry.id == added
        assert reader.search("p", question(4)) is None
        release.set()
        reader._wait_for_builds()
        assert reader._loaded()[pid] == ("hnsw", 12)
        keys = set(reader._parts[pid].hnsw.keys().tolist())  # type: ignore[union-attr]
        assert added in keys and ids[4] not in keys
        hit = reader.search("p", "a question stored during the build")
        assert hit is not None and hit.entry.id == added
        assert reader.search("p", question(4)) is None
        assert all(reader.search("p", question(i)).entry.id == ids[i] for i in range(12) if i != 4)  # type: ignore[union-attr]


def test_hnsw_partitions_in_another_process_follow_puts_and_invalidations(store: RedisCacheStore, prefix: str) -> None:
    child = Child(prefix, exact_search_max=8)
    try:
        ids = [put(store, "p", f"k{i}", question(i), tenant="a" if i % 2 else "b") for i in range(24)]
        assert child.ask(op="wait", partition="p", text=question(0), present=True, timeout=5)["id"] == ids[0]
        assert child.ask(op="indexes")["kinds"] == ["hnsw"]
        new_id = put(store, "p", "new", "a fresh question after the build", tenant="a")
        assert child.ask(op="wait", partition="p", text="a fresh question after the build", present=True,
                         timeout=CROSS_PROCESS_DELAY_S)["id"] == new_id
        assert store.invalidate(tenant="a") == 13
        for i in (1, 3, 23):
            assert child.ask(op="wait", partition="p", text=question(i), present=False,
                             timeout=CROSS_PROCESS_DELAY_S)["id"] is None
        assert child.ask(op="wait", partition="p", text="a fresh question after the build", present=False,
                         timeout=CROSS_PROCESS_DELAY_S)["id"] is None
        for i in (0, 2, 22):
            assert child.ask(op="wait", partition="p", text=question(i), present=True, timeout=1)["id"] == ids[i]
        child_id = child.ask(op="put", partition="p", key="c", text="asked in the child", tenant="b")["id"]
        hit = store.search("p", "asked in the child")
        assert hit is not None and hit.entry.id == child_id
    finally:
        child.close()


def test_a_partition_of_many_entries_loads_whole(prefix: str) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((1200, 32)).astype(np.float32)  # more than one load batch
    with make(prefix) as writer:
        ids = writer.put_many({"partition": "p", "exact_key": f"k{i}", "text": f"entry {i}", "response": "{}",
                               "tenant": "acme", "model": "m", "vector": vectors[i]} for i in range(1200))
        writer.put_many({"partition": "q", "exact_key": f"k{i}", "text": f"other {i}", "response": "{}",
                         "tenant": "acme", "model": "m", "vector": vectors[i]} for i in range(300))
        writer._redis.delete(f"{prefix}e:{ids[10]}")  # as if Redis expired it: still listed in the partition
    with make(prefix, exact_search_max=100_000) as reader:
        assert reader.search("p", "x", vector=vectors[0]) is not None
        assert reader._loaded() == {reader._partition_id("p"): ("exact", 1199)}
        for i in (1, 499, 500, 501, 777, 1199):
            hit = reader.search("p", "x", vector=vectors[i])
            assert hit is not None and hit.entry.id == ids[i]
        assert reader.search("p", "x", vector=vectors[10]) is None  # its hash is gone


def test_threads_put_and_search_concurrently(prefix: str) -> None:
    with make(prefix, exact_search_max=50) as store:  # grows from exact search to HNSW meanwhile
        errors: list[BaseException] = []

        def work(worker: int) -> None:
            try:
                for n in range(40):
                    text = f"worker{worker} item{n} shared"
                    entry_id = put(store, "shared", f"{worker}-{n}", text)
                    hit = store.search("shared", text)
                    assert hit is not None and hit.entry.id == entry_id
                    assert store.search(f"own{worker}", text) is None
                    if n % 10 == 9:
                        assert store.invalidate(tenant=f"gone{worker}") == (n > 10)  # the one stored last time
                        assert store.search("shared", f"worker{worker} doomed{n}") is None
                        put(store, "shared", f"{worker}-doomed{n}", f"worker{worker} doomed{n}", tenant=f"gone{worker}")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        store._wait_for_builds()
        store.sync()
        assert store.stats()["entries"] == 164
        assert store._loaded()[store._partition_id("shared")] == ("hnsw", 164)


def test_a_trimmed_stream_or_a_flushed_store_rebuilds_local_indexes(
    store: RedisCacheStore, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = make(prefix)
    try:
        put(store, "p", "k0", "first question here")
        assert other.search("p", "first question here") is not None
        monkeypatch.setattr(redis_store, "STREAM_MAXLEN", 1)
        for i in range(1, 300):  # the stream keeps ~1 entry: `other` misses the deletions below
            put(store, "p", f"k{i}", f"question {i} " + "word " * (i % 5))
        store.invalidate()
        put(store, "p", "last", "the last question")
        assert other.search("p", "first question here") is None
        assert other.search("p", "the last question") is not None
        # A Redis that lost its data: ids start again at 1.
        drop(prefix)
        put(store, "p", "again", "after the flush")
        hit = other.search("p", "after the flush")
        assert hit is not None and hit.entry.exact_key == "again"
        assert other.search("p", "the last question") is None
    finally:
        other.close()


def test_redis_down_means_misses_and_skipped_stores(caplog: pytest.LogCaptureFixture) -> None:
    with socket_free_port() as port, caplog.at_level(logging.WARNING, logger="llmbudget.cache"):
        url = f"redis://127.0.0.1:{port}/15"
        started = time.monotonic()
        store = make("llmbudget-test:down:", url=url)
        assert store.get_exact("p", "k") is None
        assert store.search("p", "any question") is None
        assert put(store, "p", "k", "any question") == 0
        store.record_hit(1)
        assert store.invalidate(tenant="t") == 0
        assert store.purge() == 0
        assert store.stats() == {"entries": 0, "bytes": 0, "partitions": 0}
        assert time.monotonic() - started < 5
        store.close()
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_a_redis_that_stops_answering_costs_one_timeout_a_second_not_one_per_call() -> None:
    """A paused Redis (SIGSTOP) added 1-3 s to every call: the lookup, the search and the store each waited for
    the timeout (twice: redis-py tried again after a timeout)."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:  # connections taken, never answered
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        started = time.monotonic()
        store = make("llmbudget-test:paused:", url=f"redis://127.0.0.1:{server.getsockname()[1]}/15", timeout=0.2)
        assert 0.15 < time.monotonic() - started < 0.35  # one timeout, not two
        started = time.monotonic()
        for _ in range(5):
            assert store.get_exact("p", "k") is None and store.search("p", "any question") is None
            assert put(store, "p", "k", "any question") == 0
            store.record_hit(1)
        assert time.monotonic() - started < 0.15  # found down: not tried again within the second
        time.sleep(max(0.0, redis_store.RETRY_S - (time.monotonic() - started)) + 0.05)
        started = time.monotonic()
        assert store.get_exact("p", "k") is None and store.search("p", "any question") is None
        assert 0.15 < time.monotonic() - started < 0.35  # tried again once
        store.close()
    finally:
        server.close()
        for conn in held:
            conn.close()


def test_a_url_to_a_service_that_is_not_redis_is_redis_down(caplog: pytest.LogCaptureFixture) -> None:
    # a typo'd port that an HTTP server answers: redis-py's protocol error escaped and stopped the app's start-up
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def answer() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    try:
        with caplog.at_level(logging.WARNING, logger="llmbudget.cache"):
            store = make("llmbudget-test:not-redis:", url=f"redis://127.0.0.1:{server.getsockname()[1]}/15")
            assert store.get_exact("p", "k") is None and put(store, "p", "k", "any question") == 0
            store.close()
        assert any("unreachable" in r.getMessage() for r in caplog.records)
    finally:
        server.close()


class socket_free_port:  # a context manager
    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_cache_and_config_accept_a_redis_url(prefix: str) -> None:
    cache = Cache(f"{URL}?prefix={prefix}", embedder=HashEmbedder(), threshold=0.5)
    try:
        assert isinstance(cache.store, RedisCacheStore) and cache.store.prefix == prefix
    finally:
        cache.store.close()
    put(RedisCacheStore(URL, prefix=prefix, embedder=HashEmbedder(), threshold=0.5), "p", "k", "a stored question")
    with pytest.raises(ValueError, match="holds vectors from embedder 'test-hash-32'"):
        RedisCacheStore(URL, prefix=prefix, embedder=OtherEmbedder(), threshold=0.5)
    engine = engine_from_config({"cache": {"path": f"{URL}?prefix={prefix}other:", "semantic": False}})
    assert isinstance(engine.cache.store, RedisCacheStore)  # type: ignore[union-attr]
    engine.cache.store.close()  # type: ignore[union-attr]


def test_a_repeat_through_the_sdk_is_a_hit_from_redis(engine, records, llm_server, prefix: str) -> None:  # type: ignore[no-untyped-def]
    import openai
    from servers import base_url, proxy

    import llmbudget

    engine.cache = Cache(f"{URL}?prefix={prefix}")
    ask = {"model": "gpt-4o-mini", "max_tokens": 24, "temperature": 0, "stop": ["\n"]}
    question = [{"role": "user", "content": "What is the capital of France?"}]
    try:
        with proxy(llm_server) as server:
            client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client(),
                                   max_retries=0)
            first = client.chat.completions.create(messages=question, **ask)  # type: ignore[call-overload]
            engine.cache.store.close()
            engine.cache = Cache(f"{URL}?prefix={prefix}")  # as another worker would see it
            again = client.chat.completions.create(messages=question, **ask)  # type: ignore[call-overload]
            assert len(server.received) == 1
            assert again.choices[0].message.content == first.choices[0].message.content
        miss, hit = records
        assert not miss.from_cache and hit.from_cache and hit.cache_tier == "exact"
    finally:
        engine.cache.store.close()


class WideEmbedder(HashEmbedder):
    dim = 48
    name = "test-wide-48"


def stream_head(store: RedisCacheStore) -> tuple[bytes, int]:
    info = store._redis.xinfo_stream(store._key("log"))
    return info["last-generated-id"], int(info["entries-added"])


def test_stream_vectors_of_another_size_are_skipped(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    with make(prefix) as old:
        put(old, "p", "k0", "hello there friend")
        assert old.search("p", "hello there friend") is not None  # the partition is held
        assert old.invalidate() == 1  # emptied: a process with another embedder may take the store over
        with make(prefix, embedder=WideEmbedder()) as new, caplog.at_level(logging.WARNING, "llmbudget.cache"):
            assert new._store_id == old._store_id
            wide = [put(new, "p", f"k{i + 1}", "hello there friend") for i in range(3)]
            assert new.search("p", "hello there friend") is not None  # held here, with 48-d vectors
            narrow = put(old, "p", "k9", "hello there friend")  # the old process still stores 32-d ones
            for _ in range(3):  # neither raises nor stays stuck on the other's events
                hit = old.search("p", "hello there friend")
                assert hit is not None and hit.entry.id == narrow
                hit = new.search("p", "hello there friend")
                assert hit is not None and hit.entry.id in wide
            for store in (old, new):
                assert (store._last_id, store._position) == stream_head(store)
            assert old._loaded() == {old._partition_id("p"): ("exact", 1)}
            assert new._loaded() == {new._partition_id("p"): ("exact", 3)}
            assert sum("not 48-d" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_a_build_thread_that_cannot_start_leaves_exact_search_and_is_retried(
    prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    start = threading.Thread.start

    def failing(self: threading.Thread) -> None:
        if self.name.startswith("llmbudget-cache-index"):
            raise RuntimeError("can't start new thread")
        start(self)

    monkeypatch.setattr(threading.Thread, "start", failing)
    monkeypatch.setattr(redis_store, "_BUILD_RETRY_S", 0.0, raising=False)  # retried on the partition's next change or lookup
    with make(prefix, exact_search_max=4) as reader, make(prefix) as writer:
        ids = [put(writer, "p", f"k{i}", question(i)) for i in range(5)]
        pid = reader._partition_id("p")
        with caplog.at_level(logging.WARNING, "llmbudget.cache"):
            for i in range(5, 15):  # no build under way: nothing is journaled
                ids.append(put(writer, "p", f"k{i}", question(i)))
                hit = reader.search("p", question(i))
                assert hit is not None and hit.entry.id == ids[i]
                assert reader._parts[pid].journal is None and reader._loaded()[pid] == ("exact", i + 1)
        assert any("could not start" in r.getMessage() for r in caplog.records)
        reader._wait_for_builds(1)  # no thread that never started is waited for
        monkeypatch.setattr(threading.Thread, "start", start)  # threads start again
        hit = reader.search("p", question(3))
        assert hit is not None and hit.entry.id == ids[3]
        reader._wait_for_builds()
        assert reader._loaded()[pid] == ("hnsw", 15) and reader._parts[pid].journal is None


def test_a_build_whose_replay_fails_leaves_exact_search(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    building = threading.Event()
    new_index = RedisCacheStore._new_index

    class Broken:
        def __init__(self, index: Any) -> None:
            self.index = index

        def __len__(self) -> int:
            return len(self.index)

        def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
            raise MemoryError("no room for the journal")

        remove = add

    def slow_build(self: RedisCacheStore, ids: np.ndarray, vectors: np.ndarray) -> object:
        building.set()
        assert release.wait(10)
        return Broken(new_index(self, ids, vectors))

    unhandled: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: unhandled.append(args.exc_value))
    monkeypatch.setattr(RedisCacheStore, "_new_index", slow_build)
    with make(prefix, exact_search_max=8) as reader, make(prefix) as writer:
        ids = [put(writer, "p", f"k{i}", question(i)) for i in range(12)]
        pid = reader._partition_id("p")
        assert reader.search("p", question(0)) is not None
        assert building.wait(10)
        added = put(writer, "p", "new", "a question stored during the build")
        hit = reader.search("p", "a question stored during the build")
        assert hit is not None and hit.entry.id == added
        release.set()
        reader._wait_for_builds()
        assert not unhandled
        part = reader._parts[pid]
        assert reader._loaded()[pid] == ("exact", 13) and part.journal is None
        put(writer, "p", "later", "one more question after the failed build")
        assert reader.search("p", "one more question after the failed build") is not None
        assert part.journal is None  # not journaled: no build under way
        assert all(reader.search("p", question(i)).entry.id == ids[i] for i in range(12))  # type: ignore[union-attr]


@pytest.mark.parametrize("keep", [4096, 3], ids=["remembered", "forgotten"])
def test_partitions_without_entries_are_not_held(prefix: str, keep: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_store, "_EMPTY_KEEP", keep, raising=False)
    with make(prefix) as store, make(prefix) as other:
        put(store, "seed", "k", "something stored")
        assert store.search("seed", "something stored") is not None
        seed = store._partition_id("seed")
        for round_ in range(2):
            for i in range(50):  # e.g. a partition per conversation: most are never stored into
                assert store.search(f"conversation-{i}", "hi there") is None
            assert list(store._loaded()) == [seed], round_
        assert len(getattr(store, "_empty", ())) <= keep
        # An entry stored later in such a partition, by this process or another, is found.
        mine = put(store, "conversation-3", "k", "hi there")
        theirs = put(other, "conversation-49", "k", "hi there")
        for name, entry_id in (("conversation-3", mine), ("conversation-49", theirs)):
            hit = store.search(name, "hi there")
            assert hit is not None and hit.entry.id == entry_id
        # A partition whose entries all go is let go too.
        assert other.invalidate() == 3
        assert store.search("seed", "something stored") is None
        assert store.search("conversation-3", "hi there") is None
        assert store._loaded() == {}
        again = put(other, "seed", "k2", "something stored")
        hit = store.search("seed", "something stored")
        assert hit is not None and hit.entry.id == again


def count_reads(store: RedisCacheStore) -> list[int]:
    """Count the store's read-script round trips (and the stream entries each brought)."""
    seen: list[int] = []
    read = store._read

    def counting(*args: Any, **kwargs: Any) -> Any:
        reply = read(*args, **kwargs)
        seen.append(len(reply[3]))
        return reply

    store._read = counting  # type: ignore[method-assign]
    return seen


def test_a_process_that_holds_no_partition_skips_the_backlog(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with make(prefix) as master, make(prefix) as writer:  # e.g. a worker forked from a master that never searched
        rng = np.random.default_rng(3)
        vectors = rng.standard_normal((2600, 32)).astype(np.float32)
        writer.put_many({"partition": f"t{i % 5}", "exact_key": f"k{i}", "text": f"q {i}", "response": "{}",
                         "tenant": "a", "model": "m", "vector": vectors[i]} for i in range(2500))
        reads = count_reads(master)
        assert master.search("never-stored", "x", vector=vectors[0]) is None
        assert reads == [0]  # one round trip, no stream entry read
        assert (master._last_id, master._position) == stream_head(master)
        hit = master.search("t3", "x", vector=vectors[8])  # what was skipped is loaded from Redis
        assert hit is not None and hit.entry.exact_key == "k8"
        # Only partitions known to be empty: the stream is followed, but a backlog is not read to its end.
        while master.invalidate(tenant="a"):  # again if a busy Redis timed a chunk out (it says what it deleted)
            pass
        assert master.search("t3", "x", vector=vectors[8]) is None and master._loaded() == {}
        writer.put_many({"partition": "t9", "exact_key": f"n{i}", "text": f"n {i}", "response": "{}",
                         "tenant": "b", "model": "m", "vector": vectors[i]} for i in range(2500, 2600))
        reads.clear()
        assert master.search("never-stored", "x", vector=vectors[0]) is None
        assert reads == [100]
        writer.put_many({"partition": "t4", "exact_key": f"m{i}", "text": f"m {i}", "response": "{}",
                         "tenant": "b", "model": "m", "vector": vectors[i]} for i in range(2500))
        reads.clear()
        hit = master.search("t3", "x", vector=vectors[8])
        assert hit is None and len(reads) == 1
        assert (master._last_id, master._position) == stream_head(master)
        hit = master.search("t4", "x", vector=vectors[9])
        assert hit is not None and hit.entry.exact_key == "m9"
        # The trim check still holds after a skip: entries this process never applied are not missed.
        monkeypatch.setattr(redis_store, "STREAM_MAXLEN", 1)
        for i in range(300):
            put(writer, "t4", f"m{i}", f"replaced {i}", vector=vectors[(i + 1) % 2600])
        hit = master.search("t4", "x", vector=vectors[9])  # m9 now has another vector, m8 this one
        assert hit is not None and hit.entry.text == "replaced 8"


def forked_lookup(lookup: Any, seconds: int = 5) -> int:
    """Run ``lookup()`` in a forked child; its exit status (0: it returned true, 14: it hung)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            signal.alarm(seconds)
            code = 0 if lookup() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if not os.WIFSIGNALED(status) else os.WTERMSIG(status)


def test_a_fork_while_another_thread_holds_the_lock(prefix: str) -> None:
    with make(prefix) as store:
        entry_id = put(store, "p", "k", "hello world")
        read = store._read
        inside = threading.Event()

        def slow(*args: Any, **kwargs: Any) -> Any:
            inside.set()
            time.sleep(0.5)  # a slow round trip, made with the lock held
            return read(*args, **kwargs)

        store._read = slow  # type: ignore[method-assign]
        thread = threading.Thread(target=store.search, args=("p", "hello world"))
        thread.start()
        try:
            assert inside.wait(5)

            def lookup() -> bool:
                store._read = read  # type: ignore[method-assign]
                hit = store.search("p", "hello world")
                return hit is not None and hit.entry.id == entry_id

            assert forked_lookup(lookup) == 0
        finally:
            thread.join()
        store._read = read  # type: ignore[method-assign]
        assert store.search("p", "hello world") is not None


def damaged(data: bytes) -> list[bytes]:
    """Scorer data that does not unpack: truncated, another format's, garbage, another tokenizer's."""
    return [data[:9], b"\x01" + (3).to_bytes(4, "little") + b"\xff\xff\xfe\xff\x00\x01" + b"a\tb\tc\td",
            b"\x02" + bytes(range(40)), data[:1] + bytes(b ^ 0xFF for b in data[1:5]) + data[5:]]


def test_scorer_data_that_does_not_unpack_is_prepared_from_the_text(
    prefix: str, verifier_store_options: dict[str, object]
) -> None:
    with RedisCacheStore(URL, prefix=prefix, **verifier_store_options) as store:  # type: ignore[arg-type]
        ids = store.put_many({"partition": "p", "exact_key": f"k{i}", "text": text, "response": "{}",
                              "tenant": "acme", "model": "m"} for i, text in enumerate(QUESTIONS))
        scorer: Any = verifier_store_options["scorer"]
        scorer.clear_cache()
        expected = lookups(store, PARAPHRASES + QUESTIONS)
        good = {entry_id: store._redis.hget(f"{prefix}e:{entry_id}", "d") for entry_id in ids}
        for variant in range(4):
            for entry_id, data in good.items():
                store._redis.hset(f"{prefix}e:{entry_id}", "d", damaged(data)[variant])
            scorer.clear_cache()
            assert lookups(store, PARAPHRASES + QUESTIONS) == expected, variant


class BrokenPacking:
    """A scorer whose packed-data hook fails: the store scores from the texts instead."""

    threshold = 0.995

    def score_many(self, query_text: str, query_vec: np.ndarray, texts: Sequence[str], vecs: np.ndarray) -> np.ndarray:
        return vecs @ query_vec

    def _pack_texts(self, texts: Sequence[str]) -> list[bytes | None]:
        return [b"packed"] * len(texts)

    def _score_packed(self, *args: object) -> np.ndarray:
        raise RuntimeError("stale data")


def test_a_failing_packed_scorer_falls_back_to_the_texts(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    with make(prefix, scorer=BrokenPacking()) as store, caplog.at_level(logging.WARNING, "llmbudget.cache"):
        entry_id = put(store, "p", "k", "what is the capital of france")
        for _ in range(3):
            hit = store.search("p", "what is the capital of france")
            assert hit is not None and hit.entry.id == entry_id
        assert sum("stale data" in r.getMessage() for r in caplog.records) == 1


def test_a_new_store_is_not_reported_unreachable_and_takes_odd_text(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """A store whose stream does not exist yet is new, not down: no "unreachable" warning at start-up. A lone
    surrogate (a JSON "\\ud800" escape) in a text, tenant or model is stored and looked up; the client refused it
    before (``UnicodeEncodeError``) and the bundled tokenizer too."""
    with caplog.at_level(logging.WARNING, logger="llmbudget"), make(prefix, embedder=None, scorer=None) as store:
        assert not [r for r in caplog.records if "unreachable" in r.getMessage()]
        text = "How do I reset my password \ud800?"
        entry_id = put(store, "p", "k", text, tenant="acme\ud800", model="gpt\udfff")
        put(store, "p", "nul", "a\x00b")
        exact = store.get_exact("p", "k")
        assert exact is not None and exact.id == entry_id and (exact.tenant, exact.model) == ("acme\ud800", "gpt\udfff")
        hit = store.search("p", text)
        assert hit is not None and hit.entry.id == entry_id
        found = store.search("p", "a\x00b")
        assert found is None or found.entry.text == "a\x00b"
        assert store.invalidate(tenant="acme\ud800") == 1


def test_a_purge_of_many_expired_entries_goes_in_batches_and_finishes(prefix: str) -> None:
    # one script deleted every expired entry: a backlog held Redis (which the budgets share) for as long
    now = [1000.0]
    with make(prefix, ttl=1, max_entries=None, clock=lambda: now[0]) as store:
        store.put_many([{"partition": "p", "exact_key": f"k{i}", "text": f"question {i}", "response": "{}",
                         "tenant": "acme", "model": "m", "semantic": False} for i in range(1_200)])
        now[0] += 120
        scripts = []
        real = store._purge
        store._purge = lambda **kw: scripts.append(1) or real(**kw)  # type: ignore[method-assign]
        assert store.purge() == 1_200 and len(scripts) == 3
        assert store._redis.hlen(store._key("w")) == 0
