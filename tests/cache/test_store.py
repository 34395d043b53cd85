"""CacheStore: exact and semantic lookups, isolation, TTL, eviction, invalidation, threads, processes, crashes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmbudget.cache.index import VectorIndex
from llmbudget.cache.store import CacheStore

ROOT = Path(__file__).resolve().parents[2]


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


class CosineStandIn:
    """A stand-in for the verifier: cosine similarity."""

    threshold = 0.995

    def score(self, query_text: str, query_vec: np.ndarray, cand_text: str, cand_vec: np.ndarray) -> float:
        return float(np.dot(query_vec, cand_vec))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make(path: str | os.PathLike[str] | None, **options: object) -> CacheStore:
    options.setdefault("embedder", HashEmbedder())
    options.setdefault("scorer", CosineStandIn())
    return CacheStore(path, **options)  # type: ignore[arg-type]


def put(store: CacheStore, partition: str, key: str, text: str, **extra: object) -> int:
    fields: dict[str, object] = {"tenant": "t1", "model": "m1", "response": json.dumps({"key": key})}
    fields.update(extra)
    return store.put(partition=partition, exact_key=key, text=text, **fields)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CacheStore]:
    with make(tmp_path / "cache") as opened:
        yield opened


# --------------------------------------------------------------------------- basics


def test_exact_and_semantic_lookups(store: CacheStore) -> None:
    first = put(store, "p", "k1", "how tall is the eiffel tower")
    put(store, "p", "k2", "best pizza in naples")
    entry = store.get_exact("p", "k1")
    assert entry is not None and entry.id == first and json.loads(entry.response) == {"key": "k1"}
    assert store.get_exact("p", "nope") is None and store.get_exact("other", "k1") is None

    hit = store.search("p", "how tall is the eiffel tower")
    assert hit is not None and hit.entry.id == first and hit.cosine == pytest.approx(1.0, abs=1e-3)
    assert hit.score >= store.threshold
    assert store.search("p", "something else entirely") is None
    assert store.search("unknown partition", "how tall is the eiffel tower") is None

    replaced = put(store, "p", "k1", "how tall is the eiffel tower", response='{"v": 2}')
    assert replaced != first and store.get_exact("p", "k1").response == '{"v": 2}'  # type: ignore[union-attr]
    assert store.search("p", "how tall is the eiffel tower").entry.id == replaced  # type: ignore[union-attr]
    assert store.stats() == {"entries": 2, "bytes": store.stats()["bytes"], "partitions": 1}


def test_exact_only_entries_and_given_vectors(store: CacheStore) -> None:
    put(store, "p", "media", "describe this picture", semantic=False)
    assert store.get_exact("p", "media") is not None
    assert store.search("p", "describe this picture") is None
    vec = np.zeros(32, dtype=np.float32)
    vec[3] = 2.0
    own = put(store, "p", "v", "unrelated words", vector=vec)
    hit = store.search("p", "whatever", vector=vec)
    assert hit is not None and hit.entry.id == own
    with pytest.raises(ValueError, match="32"):
        store.search("p", "x", vector=np.ones(5))


def test_another_embedder_is_refused(tmp_path: Path) -> None:
    with make(tmp_path / "c") as store:
        put(store, "p", "k", "hello world")
    with pytest.raises(ValueError, match="test-hash-32"):
        CacheStore(tmp_path / "c", embedder=type("E", (HashEmbedder,), {"name": "other"})(), scorer=CosineStandIn())


def test_memory_store_removes_its_directory() -> None:
    store = make(None)
    put(store, "p", "k", "hello")
    folder = store.db_path.parent
    assert folder.is_dir()
    store.close()
    assert not folder.exists()


# --------------------------------------------------------------------------- isolation

_WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    puts=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "tenant-b|sys"]), st.lists(st.sampled_from(_WORDS), min_size=1, max_size=3)),
        min_size=1,
        max_size=40,
    ),
    queries=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "tenant-b|sys", "d"]), st.lists(st.sampled_from(_WORDS), min_size=1, max_size=3)),
        min_size=1,
        max_size=15,
    ),
)
def test_search_never_crosses_partitions(puts: list[tuple[str, list[str]]], queries: list[tuple[str, list[str]]]) -> None:
    scorer = CosineStandIn()
    owner: dict[int, str] = {}
    # threshold -1 and no template guard (which refuses "alpha beta beta" for "beta beta alpha"): every candidate hits
    with make(None, scorer=scorer, threshold=-1.0, exact_search_max=3, template_guard=None) as store:
        for n, (partition, words) in enumerate(puts):
            owner[put(store, partition, f"k{n}", " ".join(words))] = partition
        for partition, words in queries:
            hit = store.search(partition, " ".join(words))
            if hit is not None:
                assert hit.entry.partition == partition and owner[hit.entry.id] == partition
            else:
                assert partition not in set(owner.values())


# --------------------------------------------------------------------------- TTL, eviction, invalidation


def test_ttl_expires_and_purges(tmp_path: Path) -> None:
    clock = Clock()
    with make(tmp_path / "c", ttl=10.0, clock=clock) as store:
        put(store, "p", "short", "red apple")
        put(store, "p", "forever", "green pear", ttl=None)
        clock.now += 5
        assert store.get_exact("p", "short") is not None and store.search("p", "red apple") is not None
        clock.now += 6
        assert store.get_exact("p", "short") is None and store.search("p", "red apple") is None
        assert store.get_exact("p", "forever") is not None
        assert store.stats()["entries"] == 1  # purged
    with pytest.raises(ValueError, match="ttl"):
        make(None, ttl=0)


def test_lru_eviction_at_the_cap(tmp_path: Path) -> None:
    clock = Clock()
    with make(tmp_path / "c", max_entries=3, clock=clock) as store:
        ids = {}
        for key in "abc":
            clock.now += 1
            ids[key] = put(store, "p", key, f"word {key}")
        clock.now += 1
        store.record_hit(ids["a"])
        clock.now += 1
        put(store, "p", "d", "word d")
        assert [k for k in "abcd" if store.get_exact("p", k)] == ["a", "c", "d"]
        assert store.search("p", "word b") is None and store.stats()["entries"] == 3


def test_lfu_eviction_at_the_cap(tmp_path: Path) -> None:
    clock = Clock()
    with make(tmp_path / "c", max_entries=3, eviction="lfu", clock=clock) as store:
        ids = {}
        for key, hits in (("a", 3), ("b", 1), ("c", 2)):
            clock.now += 1
            ids[key] = put(store, "p", key, f"word {key}")
            for _ in range(hits):
                store.record_hit(ids[key])
        clock.now += 1
        put(store, "p", "d", "word d")  # b (1 hit) goes; the new entry is spared
        assert [k for k in "abcd" if store.get_exact("p", k)] == ["a", "c", "d"]
        clock.now += 1
        put(store, "p", "e", "word e")  # d (0 hits) goes
        assert [k for k in "abcde" if store.get_exact("p", k)] == ["a", "c", "e"]
        assert store.get_exact("p", "a").hits == 3  # type: ignore[union-attr]


def test_invalidate_by_tenant_model_and_all(store: CacheStore) -> None:
    for n, (tenant, model) in enumerate([("t1", "m1"), ("t1", "m2"), ("t2", "m1"), ("t2", "m2")]):
        put(store, f"p{tenant}", f"k{n}", f"question {n}", tenant=tenant, model=model)
    assert store.search("pt1", "question 0") is not None
    assert store.invalidate(tenant="t1", model="m1") == 1
    assert store.search("pt1", "question 0") is None and store.search("pt1", "question 1") is not None
    assert store.invalidate(model="m2") == 2
    assert store.stats()["entries"] == 1
    assert store.invalidate(tenant="t2") == 1
    put(store, "pt3", "k9", "question 9", tenant="t3")
    assert store.invalidate() == 1 and store.stats() == {"entries": 0, "bytes": 0, "partitions": 0}


# --------------------------------------------------------------------------- threads and processes


def test_threads_put_and_search_concurrently(tmp_path: Path) -> None:
    store = make(tmp_path / "c", exact_search_max=50)  # grows from exact search to HNSW meanwhile
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for n in range(40):
                text = f"worker{worker} item{n} shared"
                entry_id = put(store, "shared", f"{worker}-{n}", text)
                hit = store.search("shared", text)
                assert hit is not None and hit.entry.id == entry_id
                assert store.search(f"own{worker}", text) is None
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert store.stats()["entries"] == 160
    assert store._index.loaded()[store._partition_id("shared")] == ("hnsw", 160)  # type: ignore[index]
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks")
def test_a_fork_while_another_thread_is_inside_sqlite_leaves_the_child_running(tmp_path: Path) -> None:
    # the child freed the other threads' tokens and closed their connections, waiting for ever on the mutex of
    # one another thread of the parent was using at the fork (a gunicorn gthread worker forking mid-lookup)
    store = make(tmp_path / "c")
    put(store, "p", "k", "a question")
    started = threading.Event()

    def busy() -> None:
        conn = store._conn()  # this thread's own connection, as a lookup in a worker thread has it
        started.set()
        conn.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 30000000) "
                     "SELECT count(*) FROM c").fetchone()

    worker = threading.Thread(target=busy, daemon=True)
    worker.start()
    started.wait()
    time.sleep(0.2)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0)
    deadline = time.monotonic() + 10
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0, "the child hung"
    worker.join()
    store.close()


def test_partitions_held_are_bounded_and_a_let_go_one_loads_again(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # every partition ever searched stayed in memory (~25 KB each, for good): a multi-tenant app grew without end
    import llmbudget.cache.index as index_module

    monkeypatch.setattr(index_module, "_PARTS_KEEP", 3)
    store = make(tmp_path / "c", exact_search_max=4)  # some partitions HNSW (saved before they go), some exact
    for p in range(8):
        for n in range(2 + p):
            put(store, f"p{p}", f"{p}-{n}", f"question {n} of partition {p}", tenant=f"t{p}")
    for p in range(8):
        assert store.search(f"p{p}", f"question 1 of partition {p}") is not None
        assert len(store._index.loaded()) <= 3
    for p in range(8):  # the ones let go load again, with every entry
        hit = store.search(f"p{p}", f"question {p + 1} of partition {p}")
        assert hit is not None and hit.entry.exact_key == f"{p}-{p + 1}"
    assert len(store._index.loaded()) == 3
    store.close()


def test_a_partition_evicted_empty_leaves_no_index_file_behind(tmp_path: Path) -> None:
    # max_entries evicted whole partitions; their saved HNSW files stayed on disk for good
    store = make(tmp_path / "c", max_entries=60, exact_search_max=8)
    for p in range(6):
        for n in range(20):
            put(store, f"p{p}", f"{p}-{n}", f"question {n} about topic {p}", tenant=f"t{p}")
        assert store.search(f"p{p}", f"question 1 about topic {p}") is not None
        store.save_index()
    assert store.search("p5", "question 2 about topic 5") is not None  # catches up: earlier partitions emptied
    live = {row[0] for row in store._conn().execute("SELECT DISTINCT partition_id FROM cache_entries")}
    files = {int(f.name[1:].split("-")[0]) for f in (tmp_path / "c" / "index").glob("p*-*.usearch")}
    manifests = {int(f.stem[1:]) for f in (tmp_path / "c" / "index").glob("p*.json")}
    assert files <= live and manifests <= live and live
    store.close()


def test_a_partition_emptied_while_let_go_leaves_no_index_file_behind(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # a partition invalidated while not held (let go beyond the bound) kept its saved index for good
    import llmbudget.cache.index as index_module

    monkeypatch.setattr(index_module, "_PARTS_KEEP", 2)
    store = make(tmp_path / "c", exact_search_max=4)
    for p in range(4):
        for n in range(10):  # HNSW, saved
            put(store, f"p{p}", f"{p}-{n}", f"question {n} of partition {p}", tenant=f"t{p}")
    for p in range(4):
        assert store.search(f"p{p}", f"question 1 of partition {p}") is not None
    store.save_index()
    store.invalidate(tenant="t0")  # p0 is not held: p2 and p3 are
    assert store.search("p0", "question 1 of partition 0") is None
    store.search("p3", "question 1 of partition 3")
    pid = store._partition_id("p0")
    index = tmp_path / "c" / "index"
    assert not list(index.glob(f"p{pid}-*.usearch")) and not (index / f"p{pid}.json").exists()
    assert len(list(index.glob("p*.json"))) == 3
    store.close()


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_a_threads_connection_goes_with_the_thread(tmp_path: Path) -> None:
    # a server that starts a thread per request (flask run, Django's runserver) kept two open files per request
    # for good: 500 requests, then "Too many open files"
    store = make(tmp_path / "c")
    put(store, "p", "k", "a question")

    def lookup() -> None:
        assert store.search("p", "a question") is not None

    for _ in range(5):  # warm: every lazily opened file is open
        worker = threading.Thread(target=lookup)
        worker.start()
        worker.join()
    before = _open_files()
    for _ in range(200):
        worker = threading.Thread(target=lookup)
        worker.start()
        worker.join()
    assert _open_files() <= before + 2
    assert len(store._conns) <= 2  # this thread's (and one more at most, a finalizer not yet run)
    store.close()
    assert not store._conns


_CHILD = """
import importlib.util, json, os, sys, time
spec = importlib.util.spec_from_file_location("helpers", {helpers!r})
helpers = importlib.util.module_from_spec(spec); spec.loader.exec_module(helpers)
store = helpers.make(sys.argv[1], exact_search_max=int(sys.argv[2]))
"""


def run_child(folder: Path, body: str, *args: str, exact_max: int = 20) -> subprocess.Popen[str]:
    code = _CHILD.format(helpers=__file__) + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code, str(folder), str(exact_max), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(child: subprocess.Popen[str]) -> str:
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    return out


def test_two_processes_share_a_directory(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    with make(folder, exact_search_max=20) as mine:
        for n in range(30):
            put(mine, "p", f"mine{n}", f"parent entry number{n}")
        assert mine.search("p", "parent entry number3") is not None  # loads the (HNSW) partition here
        child = run_child(folder, """
            found = store.search("p", "parent entry number7")
            assert found is not None and found.entry.exact_key == "mine7", found
            for n in range(25):
                store.put(partition="p", exact_key=f"child{n}", text=f"child entry number{n}", response="{}",
                          tenant="t1", model="m1")
            assert store.invalidate(model="m1") == 55  # everything, the parent's entries included
            store.put(partition="p", exact_key="late", text="late child entry", response="{}", tenant="t2", model="m2")
            store.close()
        """)
        finish(child)
        assert mine.search("p", "parent entry number3") is None  # deleted by the other process
        hit = mine.search("p", "late child entry")
        assert hit is not None and hit.entry.exact_key == "late"
        assert mine.stats()["entries"] == 1


def test_writer_killed_mid_write_leaves_a_consistent_cache(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    child = run_child(folder, """
        n = 0
        while True:
            store.put(partition="p%d" % (n % 3), exact_key="k%d" % n, text="entry %d token%d" % (n, n),
                      response="{}", tenant="t", model="m")
            if n % 7 == 0:
                store.search("p%d" % (n % 3), "entry %d token%d" % (n, n))
            if n % 40 == 0:
                store.save_index()
            n += 1
    """)
    db = folder / "cache.sqlite3"
    deadline = time.monotonic() + 30
    count = 0
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if db.exists():
            probe = sqlite3.connect(db, timeout=30)
            try:
                count = probe.execute("SELECT count(*) FROM cache_entries").fetchone()[0]
            except sqlite3.OperationalError:  # the schema is not there yet
                count = 0
            finally:
                probe.close()
            if count >= 400:
                break
    os.kill(child.pid, signal.SIGKILL)
    child.communicate(timeout=30)
    assert count >= 400, child.stderr

    with make(folder, exact_search_max=20) as store:
        conn = store._conn()
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute(
            "SELECT id, partition, text FROM cache_entries"
        ).fetchall()
        assert store.stats()["entries"] == len(rows) >= 400
        for entry_id, partition, text in rows:
            hit = store.search(partition, text)
            assert hit is not None and hit.entry.id == entry_id, (entry_id, text)
        assert {kind for kind, _ in store._index.loaded().values()} == {"hnsw"}


# --------------------------------------------------------------------------- index files


PID = CacheStore._partition_id("p")


def _fill(folder: Path, count: int, partition: str = "p") -> list[int]:
    with make(folder, exact_search_max=20) as store:
        ids = [put(store, partition, f"k{n}", f"stored text{n} marker{n}") for n in range(count)]
        assert store.search(partition, "stored text0 marker0") is not None
    return ids


def _all_found(store: CacheStore, partition: str, count: int, missing: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    for n in range(count):
        hit = store.search(partition, f"stored text{n} marker{n}")
        assert (hit is None) == (n in missing), n


def test_index_files_are_saved_and_reused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "c"
    _fill(folder, 60)
    files = sorted(p.name for p in (folder / "index").iterdir())
    assert f"p{PID}.json" in files and sum(f.endswith(".usearch") for f in files) == 1
    caplog.set_level("INFO", logger="llmbudget.cache")
    with make(folder, exact_search_max=20) as store:
        _all_found(store, "p", 60)
    assert "building" not in caplog.text and "out of step" not in caplog.text


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing", "manifest"])
def test_damaged_index_is_rebuilt(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "c"
    _fill(folder, 60)
    index_file = next((folder / "index").glob(f"p{PID}-*.usearch"))
    if damage == "truncate":
        index_file.write_bytes(index_file.read_bytes()[: index_file.stat().st_size // 2])
    elif damage == "garbage":
        index_file.write_bytes(b"\0garbage" * 100)
    elif damage == "missing":
        index_file.unlink()
    else:
        (folder / "index" / f"p{PID}.json").write_text("{not json", "utf-8")
    caplog.set_level("INFO", logger="llmbudget.cache")
    with make(folder, exact_search_max=20) as store:
        _all_found(store, "p", 60)
    assert f"building the HNSW index of partition {PID}" in caplog.text
    with make(folder, exact_search_max=20) as store:  # rewritten: usable again
        caplog.clear()
        _all_found(store, "p", 60)
    assert "building" not in caplog.text


def test_stale_index_catches_up_and_reconciles(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "c"
    ids = _fill(folder, 60)
    # Another process changes the store without ever loading (or saving) the index.
    with sqlite3.connect(folder / "cache.sqlite3") as conn:
        conn.execute("DELETE FROM cache_entries WHERE id IN (?, ?, ?)", (ids[1], ids[2], ids[3]))
    with make(folder, exact_search_max=20) as other:
        for n in range(60, 70):
            put(other, "p", f"k{n}", f"stored text{n} marker{n}")
    caplog.set_level("INFO", logger="llmbudget.cache")
    with make(folder, exact_search_max=20) as store:
        _all_found(store, "p", 70, missing={1, 2, 3})
    assert "building" not in caplog.text and "out of step" not in caplog.text  # caught up from the log

    with sqlite3.connect(folder / "cache.sqlite3") as conn:
        conn.execute("DELETE FROM cache_entries WHERE id = ?", (ids[4],))
        conn.execute("DELETE FROM cache_deletions")  # as if the log had been trimmed
    with make(folder, exact_search_max=20) as store:
        _all_found(store, "p", 70, missing={1, 2, 3, 4})
    assert "out of step" in caplog.text


def _unit(*weights: float) -> np.ndarray:
    vec = np.zeros(32, dtype=np.float32)
    vec[: len(weights)] = weights
    return vec / np.linalg.norm(vec)


def test_a_clear_miss_reads_no_entry(tmp_path: Path) -> None:
    """Candidates the index puts clearly below ``min_cosine`` are not read; those within the index's margin are
    read and checked on their stored vectors; those above it are hits."""
    with make(tmp_path / "c", scorer=CosineStandIn(), threshold=-1.0, min_cosine=0.6) as store:
        stored = put(store, "p", "k", "stored", vector=_unit(1.0))
        assert store.search("p", "stored", vector=_unit(1.0)) is not None  # the partition's index is loaded
        statements: list[str] = []
        store._conn().set_trace_callback(statements.append)

        def search(cosine: float) -> Any:
            statements.clear()
            hit = store.search("p", "query", vector=_unit(cosine, float(np.sqrt(1 - cosine * cosine))))
            return hit, sum("FROM cache_entries WHERE id IN" in sql for sql in statements)

        assert search(0.5) == (None, 0)  # clearly below the floor: nothing read
        assert search(0.58) == (None, 1)  # within the margin: read, checked exactly, not a hit
        hit, reads = search(0.7)
        assert hit is not None and hit.entry.id == stored and hit.cosine == pytest.approx(0.7, abs=1e-5)
        assert reads == 1


def test_the_hnsw_index_cosines_stay_within_the_fetch_margin() -> None:
    """The i8 HNSW index's cosines (what decides which candidates are read) against the exact cosines of the
    stored vectors, on WordLlama's real vectors: the error stays well inside ``INDEX_COSINE_MARGIN``."""
    from llmbudget.cache.store import INDEX_COSINE_MARGIN

    words = ["invoice", "refund", "shipping", "warranty", "password", "router", "printer", "kernel", "garden",
             "recipe", "bicycle", "lease", "mortgage", "vaccine", "sonnet", "glacier", "volcano", "tariff", "pension",
             "violin", "enzyme", "satellite", "harbor", "thermostat", "ledger", "budget", "compiler", "database",
             "ticket", "schedule", "airline", "hotel", "museum", "chemistry", "poetry", "battery", "orbit", "protein"]
    rng = np.random.default_rng(7)
    texts = [f"How do I {rng.choice(['fix', 'choose', 'explain', 'compare'])} the {' and the '.join(rng.choice(words, 3))}?"
             for _ in range(600)]
    with CacheStore(None, exact_search_max=64, max_entries=None) as store:  # the default embedder, index in i8
        for n, text in enumerate(texts):
            put(store, "p", f"k{n}", text)
        pid = store._partition_id("p")
        errors = []
        for text in texts[:150]:
            query = store._unit(store.embedder.embed([text + " today"])[0])
            found = store._index.search(pid, query, 4)
            blobs = dict(store._conn().execute(
                f"SELECT id, vector FROM cache_entries WHERE id IN ({','.join('?' * len(found))})",
                [key for key, _ in found]).fetchall())
            for key, cosine in found:
                exact = store._decode([blobs[key]])[0]
                errors.append(abs(float(exact @ query / np.linalg.norm(exact)) - cosine))
        assert store._index.loaded()[pid] == ("hnsw", 600)
    assert max(errors) < INDEX_COSINE_MARGIN / 2, max(errors)


def test_inside_no_wait_a_search_does_only_a_quick_searchs_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the event loop (``no_wait()``) a search raises WouldWait instead of loading a partition, catching up
    with many changes or with many partitions held, or waiting for the index lock; the same search outside
    does that work."""
    import llmbudget.cache.index as index_module
    from llmbudget.ledger.budgets import WouldWait, no_wait

    monkeypatch.setattr(index_module, "_QUICK_PARTS", 3)
    with make(tmp_path / "c") as store:
        for n in range(3):
            put(store, f"p{n}", "k", f"question number {n}")
        with no_wait(), pytest.raises(WouldWait):
            store.search("p0", "question number 0")  # the partition is not loaded yet
        for n in range(3):
            assert store.search(f"p{n}", f"question number {n}") is not None  # loads them
        with no_wait():
            assert store.search("p0", "question number 0") is not None  # nothing to catch up with
            put(store, "p0", "k2", "another question")  # a store on the loop: one insertion to catch up
            assert store.search("p0", "another question") is not None
        put(store, "p3", "k", "question number 3")
        assert store.search("p3", "question number 3") is not None  # four partitions held now
        put(store, "p0", "k3", "a third question")
        with no_wait(), pytest.raises(WouldWait):
            store.search("p0", "a third question")  # catching up would look at more than 3 partitions
        assert store.search("p0", "a third question") is not None
        held = threading.Event()
        done = threading.Event()

        def hold() -> None:
            with store._index._lock:
                held.set()
                done.wait(5)

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait(5)
        try:
            with no_wait(), pytest.raises(WouldWait):
                store.search("p0", "a third question")  # another thread holds the index
        finally:
            done.set()
            holder.join()


def test_a_store_on_the_loop_hands_its_own_entries_to_the_index(tmp_path: Path) -> None:
    """Inside ``no_wait()`` a store gives the index the entries it just committed (the next search reads
    nothing back for them), and the index then holds what a process opening the store afresh loads."""
    from llmbudget.ledger.budgets import no_wait

    with make(tmp_path / "c") as store:
        put(store, "p", "k0", "question number zero")
        assert store.search("p", "question number zero") is not None  # loads the partition
        before = store._index._head
        with no_wait():
            ids = [put(store, "p", f"k{n}", f"question number {n} about topic {n}") for n in range(1, 6)]
            assert store._index._head == (ids[-1], before[1])  # applied at once: no search has run since
            replaced = put(store, "p", "k1", "the first question, asked again")  # the old k1 leaves a deletion
            assert store._index._head == (replaced, before[1])
            for n in range(2, 6):
                assert store.search("p", f"question number {n} about topic {n}") is not None
            assert store.search("p", "the first question, asked again") is not None
        put(store, "q", "k", "a question in a partition never searched")  # not loaded: nothing to apply
        pid = store._partition_id("p")
        held_ids, held_vecs = store._index._parts[pid].items()
        with make(tmp_path / "c") as fresh:
            assert fresh.search("p", "question number zero") is not None
            fresh_ids, fresh_vecs = fresh._index._parts[pid].items()
        order, fresh_order = np.argsort(held_ids), np.argsort(fresh_ids)
        assert held_ids[order].tolist() == fresh_ids[fresh_order].tolist() == sorted([1, *ids[1:], replaced])
        assert np.array_equal(held_vecs[order], fresh_vecs[fresh_order])


def test_index_rejects_a_bad_dtype() -> None:
    with pytest.raises(ValueError, match="dtype"):
        VectorIndex(None, dim=4, directory=None, dtype="f64")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- bench


def test_bench_and_replay_report_their_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmbudget.cache.bench import bench_cache, eval_replay

    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"a": "how do i learn python fast", "b": "how do i learn python fast", "duplicate": True},
        {"a": "best pizza in naples", "b": "best pizza in naples", "duplicate": False},
        {"a": "why is the sky blue", "b": "what colour is grass", "duplicate": True},
        {"a": "capital of france", "b": "capital of peru", "duplicate": False},
        {"a": "how to bake bread", "b": "Capital of  France", "duplicate": False},  # another pair's question
        # the same bag of words, reordered beyond the template guard's swap of two spans: a wrong hit for cosine
        {"a": "dogs chase cats at night", "b": "at night cats chase dogs", "duplicate": False},
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    monkeypatch.setenv("LLMBUDGET_CACHE_BENCH_DATA", str(pairs))
    monkeypatch.setenv("LLMBUDGET_CACHE_BENCH_DIR", str(tmp_path))
    result = bench_cache(30, queries=20, embedder=HashEmbedder(), scorer=CosineStandIn())
    assert list(result) == ["entries", "build_s", "lookup_p50_ms", "lookup_p99_ms", "bytes_per_entry", "miss_path",
                            "candidate_path"]
    assert result["entries"] == 30 and result["bytes_per_entry"] > 0 and result["lookup_p99_ms"] > 0
    assert result["miss_path"]["lookups"] + result["candidate_path"]["lookups"] == 20
    assert result["candidate_path"]["lookups"] > 0  # the stored questions are asked again: the scorer runs

    with make(None) as store:
        replay = eval_replay(pairs, store=store)
    # A hit on the query's very words serves the answer to that question: correct, whatever the pair's label
    # ("best pizza", labeled non-duplicate) and whichever pair stored it ("Capital of France"); the strict
    # precision, own pairs only, is (3 - 2) / 4.
    assert replay == {
        "stored": 6, "queries": 6, "correct_hits": 3, "wrong_hits": 1, "misses": 2, "same_text_hits": 2,
        "hit_precision": 0.75, "hit_recall": 0.5, "lookup_p50_ms": replay["lookup_p50_ms"], "lookup_p99_ms": replay["lookup_p99_ms"],
        "false_hits": 1, "false_hit_rate": 0.25,  # of the 4 non-duplicate lookups, only "cats chase dogs"
    }


@pytest.mark.parametrize("order", ["own pair first", "other pair first"])
def test_replay_counts_a_question_stored_by_two_pairs_by_its_words(tmp_path: Path, order: str) -> None:
    # Two pairs store the same question; a search returns one of the two equal entries, and either answers
    # it: the duplicate pair's lookup is correct whichever comes back, in both storing orders.
    from llmbudget.cache.bench import eval_replay

    own = {"a": "how tall is everest", "b": "everest is how tall", "duplicate": True}
    other = {"a": "How tall is  Everest", "b": "how tall is k2", "duplicate": False}
    rows = [own, other] if order == "own pair first" else [other, own]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    with make(None) as store:
        replay = eval_replay(pairs, store=store)
    assert (replay["correct_hits"], replay["wrong_hits"], replay["same_text_hits"]) == (1, 0, 0)
    assert replay["hit_recall"] == 1.0 and replay["false_hits"] == 0


def test_replay_curve_scores_every_threshold_in_one_pass(tmp_path: Path) -> None:
    from llmbudget.cache.bench import eval_replay

    rows = [
        {"a": "how do i learn python fast", "b": "how do i learn python quickly", "duplicate": True},
        {"a": "why is the sky blue", "b": "Why is the sky blue", "duplicate": True},
        {"a": "capital of france", "b": "capital of peru", "duplicate": False},
        {"a": "dogs chase cats", "b": "bake sourdough bread", "duplicate": False},
    ]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    with make(None) as store:
        plain = eval_replay(pairs, store=store)
    with make(None) as store:
        replay = eval_replay(pairs, store=store, curve=[0.995, 0.3, 0.6])
        assert store.threshold == 0.995  # lowered for the pass, then restored
    curve = replay.pop("curve")
    assert {k: v for k, v in replay.items() if not k.startswith("lookup")} == \
        {k: v for k, v in plain.items() if not k.startswith("lookup")}  # the store's own threshold: unchanged
    assert [point["threshold"] for point in curve] == [0.3, 0.6, 0.995]
    at = {point["threshold"]: point for point in curve}
    assert {k: at[0.995][k] for k in ("correct_hits", "wrong_hits", "hit_precision", "hit_recall", "false_hits")} == \
        {k: plain[k] for k in ("correct_hits", "wrong_hits", "hit_precision", "hit_recall", "false_hits")}
    assert (at[0.995]["correct_hits"], at[0.995]["wrong_hits"], at[0.995]["hit_recall"]) == (1, 0, 0.5)
    # lower thresholds let the rewording in, and then France's entry answers Peru
    assert at[0.3]["hit_recall"] == 1.0 and at[0.3]["wrong_hits"] == at[0.3]["false_hits"] >= 1
    recalls = [point["hit_recall"] for point in curve]
    assert recalls == sorted(recalls, reverse=True)
    with make(None) as store, pytest.raises(ValueError, match="finite"):
        eval_replay(pairs, store=store, curve=[float("nan")])


@pytest.mark.parametrize("keep", [4096, 3], ids=["remembered", "forgotten"])
def test_partitions_without_entries_are_not_held(tmp_path: Path, keep: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmbudget.cache import index

    monkeypatch.setattr(index, "_EMPTY_KEEP", keep, raising=False)
    with make(tmp_path / "c") as store, make(tmp_path / "c") as other:
        put(store, "seed", "k", "something stored")
        assert store.search("seed", "something stored") is not None
        seed = store._partition_id("seed")
        for round_ in range(2):
            for i in range(50):  # e.g. a partition per conversation: most are never stored into
                assert store.search(f"conversation-{i}", "hi there") is None
            assert list(store._index.loaded()) == [seed], round_
        assert len(getattr(store._index, "_empty", ())) <= keep
        # An entry stored later in such a partition, by this store or another, is found.
        mine = put(store, "conversation-3", "k", "hi there")
        theirs = put(other, "conversation-49", "k", "hi there")
        for name, entry_id in (("conversation-3", mine), ("conversation-49", theirs)):
            hit = store.search(name, "hi there")
            assert hit is not None and hit.entry.id == entry_id
        # A partition whose entries all go is let go too.
        assert other.invalidate() == 3
        assert store.search("seed", "something stored") is None
        assert store.search("conversation-3", "hi there") is None
        assert store._index.loaded() == {}
        again = put(other, "seed", "k2", "something stored")
        hit = store.search("seed", "something stored")
        assert hit is not None and hit.entry.id == again


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


def test_a_fork_while_another_thread_holds_the_index_lock(tmp_path: Path) -> None:
    with make(tmp_path / "c") as store:
        entry_id = put(store, "p", "k", "hello world")
        assert store.search("p", "hello world") is not None  # held: the next search reads the head first
        head = store.head
        inside = threading.Event()

        def slow() -> Any:
            inside.set()
            time.sleep(0.5)  # a slow read, made with the index's lock held
            return head()

        store.head = slow  # type: ignore[method-assign]
        thread = threading.Thread(target=store.search, args=("p", "hello world"))
        thread.start()
        try:
            assert inside.wait(5)

            def lookup() -> bool:
                store.head = head  # type: ignore[method-assign]
                hit = store.search("p", "hello world")
                return hit is not None and hit.entry.id == entry_id

            assert forked_lookup(lookup) == 0
        finally:
            thread.join()
        store.head = head  # type: ignore[method-assign]
        assert store.search("p", "hello world") is not None


def test_a_fork_while_another_thread_holds_the_verifiers_lock() -> None:
    from llmbudget.cache.verifier import default_verifier

    verifier = default_verifier()
    verifier.score_pair("warm up", "the tables")
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with verifier._lock:
            held.set()
            done.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(5)
        assert forked_lookup(lambda: 0.0 <= verifier.score_pair("what is 2+2", "what is 2+3") <= 1.0) == 0
    finally:
        done.set()
        thread.join()


def test_a_fork_while_another_thread_loads_wordllama() -> None:
    from llmbudget.cache import embedders

    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with embedders._WORDLLAMA_LOCK:  # as a thread loading the model does
            held.set()
            done.wait(10)

    def load_in_child() -> bool:
        embedders._WORDLLAMA_MODEL = None  # the child loads it itself
        return embedders._load_wordllama().table.shape[1] == 256

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(5)
        assert forked_lookup(load_in_child) == 0
    finally:
        done.set()
        thread.join()


QUESTIONS = ["What is the capital of France?", "How do I learn Python quickly?", "What is 2+2?",
             "Why is the sky blue?", "Who wrote Hamlet?", "How do I reset my password?"]
PARAPHRASES = ["what's the capital of france", "How can I learn Python fast?", "What is 2+3?",
               "Why is the sky blue", "Who is the author of Hamlet?", "How can I reset my password?"]


def test_scorer_data_that_does_not_unpack_is_prepared_from_the_text(tmp_path: Path) -> None:
    from llmbudget.cache.embedders import WordLlamaEmbedder
    from llmbudget.cache.verifier import default_verifier

    verifier = default_verifier()
    with CacheStore(tmp_path / "c", embedder=WordLlamaEmbedder(), scorer=verifier) as store:
        ids = store.put_many({"partition": "p", "exact_key": f"k{i}", "text": text, "response": "{}",
                              "tenant": "t", "model": "m"} for i, text in enumerate(QUESTIONS))

        def lookups() -> list[tuple[int, float, float] | None]:
            verifier.clear_cache()
            found = [store.search("p", text) for text in PARAPHRASES + QUESTIONS]
            return [None if hit is None else (hit.entry.id, hit.score, hit.cosine) for hit in found]

        expected = lookups()
        assert sum(found is not None for found in expected) >= len(QUESTIONS)
        conn = store._conn()
        good = dict(conn.execute("SELECT id, scorer_data FROM cache_entries").fetchall())
        assert sorted(good) == ids and all(good.values())
        for variant in range(4):
            for entry_id, data in good.items():
                bad = [data[:9], b"\x01" + (3).to_bytes(4, "little") + b"\xff\xff\xfe\xff\x00\x01" + b"a\tb\tc\td",
                       b"\x02" + bytes(range(40)), data[:1] + bytes(b ^ 0xFF for b in data[1:5]) + data[5:]]
                conn.execute("UPDATE cache_entries SET scorer_data = ? WHERE id = ?", (bad[variant], entry_id))
            assert lookups() == expected, variant


class BrokenPacking:
    """A scorer whose packed-data hook fails: the store scores from the texts instead."""

    threshold = 0.995

    def score_many(self, query_text: str, query_vec: np.ndarray, texts: Sequence[str], vecs: np.ndarray) -> np.ndarray:
        return vecs @ query_vec

    def _pack_texts(self, texts: Sequence[str]) -> list[bytes | None]:
        return [b"packed"] * len(texts)

    def _score_packed(self, *args: object) -> np.ndarray:
        raise RuntimeError("stale data")


def test_a_failing_packed_scorer_falls_back_to_the_texts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with make(tmp_path / "c", scorer=BrokenPacking()) as store, caplog.at_level(logging.WARNING, "llmbudget.cache"):
        entry_id = put(store, "p", "k", "what is the capital of france")
        for _ in range(3):
            hit = store.search("p", "what is the capital of france")
            assert hit is not None and hit.entry.id == entry_id
        assert sum("stale data" in r.getMessage() for r in caplog.records) == 1


def test_a_store_on_the_event_loop_never_purges_after_its_commit(tmp_path: Path) -> None:
    """The purge interval running out during a store on the loop does not purge there: a busy database at
    that moment would hand the (committed) store on to be done again in a worker thread."""
    from llmbudget.ledger.budgets import no_wait

    now = [1000.0]
    with make(tmp_path / "c", clock=lambda: now[0]) as store:
        put(store, "p", "k0", "warm up")  # purged at 1000
        last = store._last_purge
        real_insert = store._insert

        def insert_late(*args: Any, **kwargs: Any) -> int:
            now[0] += 61.0  # past the purge interval, after put_many found none due
            return real_insert(*args, **kwargs)

        store._insert = insert_late  # type: ignore[method-assign]
        with no_wait():
            entry_id = put(store, "p", "k1", "stored on the loop")
        store._insert = real_insert  # type: ignore[method-assign]
        assert store._last_purge == last  # no purge on the loop
        assert [r[0] for r in store._conn().execute("SELECT id FROM cache_entries WHERE exact_key = 'k1'")] == [entry_id]
        put(store, "p", "k2", "stored in a thread")
        assert store._last_purge == now[0]  # the next store where it may wait purges


def test_a_quick_search_hands_on_when_the_store_moved_after_its_check(tmp_path: Path) -> None:
    """Another writer committing between the quick search's look at the store and its catch-up: the search
    raises WouldWait before changing the index, instead of catching up with everything on the loop."""
    from llmbudget.ledger.budgets import WouldWait, no_wait

    with make(tmp_path / "c") as store:
        for n in range(10):
            put(store, "p", f"k{n}", f"question number {n}")
        assert store.search("p", "question number 0") is not None  # loaded
        put(store, "p", "k10", "question number 10")  # one change to catch up with: quick
        real_head = store.head
        writer = threading.Thread(target=lambda: store.put_many(
            [{"partition": "p", "exact_key": f"bulk{n}", "text": f"bulk question {n}", "response": "{}",
              "tenant": "t1", "model": "m1"} for n in range(100)]))

        def head_then_bulk() -> tuple[int, int]:
            seen = real_head()
            if writer.ident is None:  # once: the first look at the store
                writer.start()
                writer.join()
            return seen

        store.head = head_then_bulk  # type: ignore[method-assign]
        with no_wait(), pytest.raises(WouldWait, match="changed"):
            store.search("p", "question number 10")
        assert store._index.loaded() == {store._partition_id("p"): ("exact", 10)}  # untouched
        store.head = real_head  # type: ignore[method-assign]
        assert store.search("p", "bulk question 7") is not None
        assert store._index.loaded()[store._partition_id("p")] == ("exact", 111)


def test_on_the_event_loop_the_bundled_models_are_never_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading WordLlama or the verifier takes about 0.15 s under a lock: inside no_wait() the store hands the
    work on instead; once they are loaded, a new store takes the process's verifier there at once."""
    from llmbudget.cache import embedders, verifier
    from llmbudget.ledger.budgets import WouldWait, no_wait

    monkeypatch.setattr(embedders, "_WORDLLAMA_MODEL", None)
    monkeypatch.setattr(verifier, "_DEFAULT", None)
    with CacheStore(tmp_path / "c") as store:
        assert store.quick
        for work in (lambda: store.query_vector("a question"), lambda: store.search("p", "a question"),
                     lambda: put(store, "p", "k", "a question")):
            with no_wait(), pytest.raises(WouldWait, match="not loaded"):
                work()
        assert embedders._WORDLLAMA_MODEL is None and verifier._DEFAULT is None
        with no_wait():  # an answer for exact lookups only needs neither model: stored on the loop at once
            exact_only = store.put(partition="p", exact_key="e", text="a question", response="{}", tenant="t",
                                   model="m", semantic=False)
            assert store.get_exact("p", "e") is not None and store.get_exact("p", "e").id == exact_only
        assert embedders._WORDLLAMA_MODEL is None and verifier._DEFAULT is None
        put(store, "p", "k", "a question")  # where it may wait: loads both
        assert store.quick  # still: the scorer it took is the bundled verifier
    with CacheStore(tmp_path / "d") as other, no_wait():
        put(other, "p", "k", "a question")  # on the loop
        assert other._scorer is verifier._DEFAULT


def test_a_partition_known_empty_that_gains_entries_loads_off_the_event_loop(tmp_path: Path) -> None:
    from llmbudget.ledger.budgets import WouldWait, no_wait

    with make(tmp_path / "c", exact_search_max=0) as store:
        put(store, "other", "k", "another partition's question")
        assert store.search("p", "a question") is None  # remembered as empty
        put(store, "p", "k", "a question")
        with no_wait(), pytest.raises(WouldWait, match="partition to load"):
            store.search("p", "a question")  # loading it here would build an HNSW index on the loop
        assert store.search("p", "a question") is not None


def test_texts_with_nul_or_a_lone_surrogate_are_stored_and_looked_up(tmp_path: Path) -> None:
    """A NUL (the template guard's own marker) or a lone surrogate (a JSON ``"\\ud800"`` escape, which the Rust
    tokenizers refuse) in a question is stored and looked up like any text, with the bundled models: before,
    the lookup raised (``IndexError`` in the guard, ``TypeError`` from the tokenizer) and the answer was never
    stored."""
    texts = ["\x00", "a\x00b", "How do I reset my password?\x00", "How do I reset my password \ud800?",
             "\ud800", "Where is my order \udfff number 12?"]
    with CacheStore(tmp_path / "c") as store:
        ids = {text: put(store, "p", f"k{i}", text) for i, text in enumerate(texts)}
        put(store, "p", "plain", "How do I reset my password?")
        for text in texts:
            hit = store.search("p", text)
            assert hit is None or hit.entry.id == ids[text] or hit.entry.text == "How do I reset my password?"
        hit = store.search("p", "How do I reset my password \ud800?")
        assert hit is not None and hit.entry.id == ids["How do I reset my password \ud800?"]
        assert store.search("q", "\x00") is None  # another partition: nothing


@pytest.mark.parametrize("option, value, message", [
    ("candidates", 2.5, "candidates=2.5: expected a whole number from 1 to 64"),  # failed every search
    ("candidates", 10**12, "candidates=1000000000000"),  # asked numpy for 7 TiB
    ("candidates", "3", "candidates='3'"),
    ("min_cosine", float("nan"), "min_cosine=nan: expected a cosine from -1 to 1"),  # the semantic tier off
    ("min_cosine", 5.0, "min_cosine=5.0"),
    ("min_cosine", "0.5", "min_cosine='0.5'"),
    ("threshold", float("nan"), "threshold=nan: expected a finite number"),
    ("threshold", "0.9", "threshold='0.9'"),
    ("max_entries", 1.5, "max_entries=1.5: expected a whole number >= 1"),  # failed every evicting store
    ("ttl", float("inf"), "ttl=inf: expected seconds > 0"),  # failed every Redis store
    ("ttl", float("nan"), "ttl=nan"),
])
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_store_options_that_would_be_misread_are_refused(tmp_path: Path, kind: str, option: str, value: object,
                                                         message: str) -> None:
    from llmbudget.cache.redis_store import RedisCacheStore

    with pytest.raises(ValueError) as caught:
        if kind == "sqlite":
            make(tmp_path / "c", **{option: value})
        else:  # refused before it connects
            RedisCacheStore("redis://127.0.0.1:1/0", embedder=HashEmbedder(), scorer=CosineStandIn(),
                            **{option: value})  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_answers_that_would_be_misread_are_refused_and_odd_tenants_are_kept(tmp_path: Path) -> None:
    """``text=None`` was stored, and matched, as the question "None"; a NaN ttl stored an entry that never expired
    (``now + nan`` is NULL); a lone surrogate in a tenant or model failed the store (SQLite takes none)."""
    now = [1000.0]
    with make(tmp_path / "c", ttl=60, clock=lambda: now[0]) as store:
        for field, value, error in (("text", None, TypeError), ("response", b"{}", TypeError),
                                    ("tenant", 7, TypeError), ("ttl", float("nan"), ValueError),
                                    ("ttl", -5, ValueError), ("ttl", "60", ValueError)):
            with pytest.raises(error, match=field):
                put(store, "p", "k", "a question", **{field: value})
        assert store.stats()["entries"] == 0 and store.search("p", "None") is None
        put(store, "p", "k", "a question", tenant="acme\ud800", model="gpt\udfff")
        assert store.get_exact("p", "k") is not None
        assert store.invalidate(tenant="acme\ud800") == 1 and store.stats()["entries"] == 0
