"""The cache's storage: entries in SQLite, their vectors in per-partition indexes.

One directory holds ``cache.sqlite3`` (WAL; every write is one ``BEGIN IMMEDIATE``
transaction) and ``index/`` (usearch files, a rebuildable copy of the vectors, see
:mod:`llmbudget.cache.index`). Several threads and several processes may share a
directory: SQLite serializes the writers, and each process's indexes catch up
with the store before every search. Triggers keep the entry count, the byte total
and the deletion log in the same transaction as the rows they describe, so a
writer killed at any point leaves a consistent store.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np

from ..ledger.budgets import _NO_WAIT, SQLITE_TIMEOUT_S, WouldWait, is_busy, thread_connection
from . import embedders
from .embedders import Embedder, tokenizable
from .index import EXACT_MAX, Head, IndexDType, VectorIndex
from .templates import DEFAULT_MAX_SEMANTIC_CHARS, SEMANTIC_CHARS_CEILING, TemplateGuard

__all__ = ["CacheStore", "CosineScorer", "Entry", "Hit", "Scorer"]

logger = logging.getLogger("llmbudget.cache")

Eviction = Literal["lru", "lfu"]

_SCHEMA_VERSION = "1"
_PURGE_INTERVAL = 60.0  # seconds between automatic purges of expired entries
_DELETION_LOG_KEEP = 100_000  # deletions kept for processes catching up
_CHUNK = 500  # ids per IN (...) query; rows per put_many transaction is 4 chunks

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cache_entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    partition TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    exact_key TEXT NOT NULL,
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    vector BLOB,
    scorer_data BLOB,
    response TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    last_hit REAL,
    used REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS cache_entries_key ON cache_entries (partition_id, exact_key);
CREATE INDEX IF NOT EXISTS cache_entries_vectors ON cache_entries (partition_id, id) WHERE vector IS NOT NULL;
CREATE INDEX IF NOT EXISTS cache_entries_lru ON cache_entries (used, id);
CREATE INDEX IF NOT EXISTS cache_entries_lfu ON cache_entries (hits, used, id);
CREATE INDEX IF NOT EXISTS cache_entries_expires ON cache_entries (expires) WHERE expires IS NOT NULL;
CREATE INDEX IF NOT EXISTS cache_entries_tenant ON cache_entries (tenant, model);
CREATE TABLE IF NOT EXISTS cache_deletions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id INTEGER NOT NULL,
    partition_id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_deletions_partition ON cache_deletions (partition_id, seq);
CREATE TABLE IF NOT EXISTS cache_totals (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    entries INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO cache_totals (id, entries, bytes) VALUES (0, 0, 0);
CREATE TRIGGER IF NOT EXISTS cache_entries_added AFTER INSERT ON cache_entries BEGIN
    UPDATE cache_totals SET entries = entries + 1, bytes = bytes + NEW.size WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS cache_entries_deleted AFTER DELETE ON cache_entries BEGIN
    UPDATE cache_totals SET entries = entries - 1, bytes = bytes - OLD.size WHERE id = 0;
    INSERT INTO cache_deletions (entry_id, partition_id) VALUES (OLD.id, OLD.partition_id);
END;
"""

# what an entry keeps when it is stored again with its vector (size last: it grows by the vector's)
_MOVED = "partition, partition_id, exact_key, tenant, model, text, response, created, expires, last_hit, used, hits, size"
_COLUMNS = "id, exact_key, tenant, model, text, response, created, expires, last_hit, hits, size"
_INSERT = ("INSERT INTO cache_entries (partition, partition_id, exact_key, tenant, model, text, vector, scorer_data,"
           " response, created, expires, used, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored answer; ``response`` is the caller's JSON text, stored as given."""

    id: int
    partition: str
    exact_key: str
    tenant: str
    model: str
    text: str
    response: str
    created: float
    expires: float | None
    last_hit: float | None
    hits: int
    size: int


@dataclass(frozen=True, slots=True)
class Hit:
    """A semantic match: the entry, the scorer's score and the exact cosine similarity."""

    entry: Entry
    score: float
    cosine: float


class Scorer(Protocol):
    """Decides how well a stored question answers a new one (higher is better).

    Optional: ``threshold`` (the default hit threshold), ``score_many(query_text,
    query_vec, cand_texts, cand_vecs)`` (one call for all candidates) and
    ``embedder_name``: a scorer that names the embedder its features expect gets
    ``None`` for vectors made by another embedder, and must embed the texts itself.
    The bundled verifier also has two internal hooks the SQLite store uses:
    ``_pack_texts(texts)`` (bytes kept beside each entry when it is stored) and
    ``_score_packed(...)`` (``score_many`` from those bytes, without re-tokenising).
    """

    def score(self, query_text: str, query_vec: np.ndarray, cand_text: str, cand_vec: np.ndarray) -> float: ...


class CosineScorer:
    """Raw cosine similarity: a baseline only (it confuses "2+2" with "2+3"); the verifier is the default."""

    threshold: float = 0.95

    def score(self, query_text: str, query_vec: np.ndarray, cand_text: str, cand_vec: np.ndarray) -> float:
        return float(np.dot(query_vec, cand_vec))


class _Unset:
    pass


_UNSET: Any = _Unset()


def _default_scorer() -> tuple[Scorer, float]:
    from .verifier import DEFAULT_THRESHOLD, default_verifier

    return default_verifier(), float(DEFAULT_THRESHOLD)


#: How far below ``min_cosine`` a candidate's index cosine may be and still be fetched and checked exactly.
INDEX_COSINE_MARGIN = 0.05


_F = TypeVar("_F", bound=Callable[..., Any])


def _waitless(method: _F) -> _F:
    """Inside :func:`~llmbudget.ledger.budgets.no_wait`, a busy database raises :class:`WouldWait`
    instead of an error: the caller does the work again where it may wait (the async transport runs
    small lookups and stores on the event loop this way)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            if _NO_WAIT.get() and is_busy(exc):
                raise WouldWait(f"cache database busy: {exc}") from exc
            raise

    return wrapper  # type: ignore[return-value]


#: The bundled verifier's candidates are those at least this similar (WordLlama cosine): below it, none is scored.
DEFAULT_MIN_COSINE = 0.6


def near_ids(found: Sequence[tuple[int, float]], min_cosine: float) -> list[int]:
    """The ids of the index's nearest entries worth fetching: those not clearly below ``min_cosine``.

    Most misses end here, before any entry is read. The index's cosines are approximate (usearch keeps
    big partitions in i8 or f16); the margin holds their error (at most 0.013 measured on 100,000 Quora
    questions in i8), and the candidates fetched are checked against ``min_cosine`` on their stored vectors.
    """
    floor = min_cosine - INDEX_COSINE_MARGIN
    return [key for key, cosine in found if cosine >= floor]


def database_path(path: str | os.PathLike[str]) -> Path:
    """The SQLite file of a cache at ``path``: ``path`` itself when it is a ``.sqlite3``/``.sqlite``/``.db`` file (or
    any file), else ``cache.sqlite3`` in that directory."""
    where = Path(path)
    return where if where.suffix in (".sqlite3", ".sqlite", ".db") or where.is_file() else where / "cache.sqlite3"


class CacheStore:
    """Cached answers of one directory: exact lookups, semantic search inside a partition, TTL and a size cap.

    - ``path``: the cache directory (``cache.sqlite3`` and ``index/`` inside), or a
      ``.sqlite3``/``.sqlite``/``.db`` file (its indexes go to ``<file>.index/``);
      ``None``: a temporary directory, removed by :meth:`close`.
    - ``embedder``: turns texts into vectors (default: the bundled WordLlama, 256-d).
      A store remembers its embedder: opening it with another raises, unless it holds no vectors.
    - ``scorer``/``threshold``: a candidate is a hit when ``scorer.score(...) >= threshold``
      (default: the trained verifier and its threshold; a scorer without a
      ``threshold`` attribute needs ``threshold``).
    - ``max_entries``: beyond it the least recently used (``eviction="lru"``) or least
      often hit (``"lfu"``) entries go; ``ttl``: seconds an entry lives (``None``: forever).
    - ``candidates``: nearest neighbours the scorer examines per search (default 1: on every validation
      replay a second one, scored too, added more wrong hits than right ones).
    - ``max_semantic_chars``: texts longer than this are matched by the exact tier only:
      a longer query is not embedded nor searched, a longer stored text gets no vector
      (default :data:`~llmbudget.cache.templates.DEFAULT_MAX_SEMANTIC_CHARS`; ``None``: no limit but the
      ceiling, :data:`~llmbudget.cache.templates.SEMANTIC_CHARS_CEILING`, 100,000 characters).
    - ``template_guard``: refuses hits between texts that share a template but differ in its
      data (default: :class:`~llmbudget.cache.templates.TemplateGuard` ``()``; ``None``: off).
    - ``index_dtype``: usearch's storage of vectors in big partitions (``"f16"`` or ``"i8"``);
      ``exact_search_max``: partitions up to this size are searched by exact brute force.
    - ``clock``: the time source, epoch seconds (tests).
    - ``timeout``: seconds a write waits for SQLite's lock, held by another process (default 5), before it
      fails with ``sqlite3.OperationalError`` (:class:`~llmbudget.cache.Cache` then goes on without the
      cache for a while); reads never wait for it (WAL).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        embedder: Embedder | None = None,
        scorer: Scorer | None = None,
        threshold: float | None = None,
        max_entries: int | None = 100_000,
        eviction: Eviction = "lru",
        ttl: float | None = None,
        candidates: int = 1,
        min_cosine: float | None = None,
        max_semantic_chars: int | None = DEFAULT_MAX_SEMANTIC_CHARS,
        template_guard: TemplateGuard | None = _UNSET,
        index_dtype: IndexDType = "i8",
        exact_search_max: int = EXACT_MAX,
        clock: Callable[[], float] = time.time,
        timeout: float = SQLITE_TIMEOUT_S,
    ) -> None:
        check_store_options(max_semantic_chars=max_semantic_chars, max_entries=max_entries, ttl=ttl,
                            candidates=candidates, min_cosine=min_cosine, threshold=threshold)
        if eviction not in ("lru", "lfu"):
            raise ValueError(f"eviction={eviction!r}: expected 'lru' or 'lfu'")
        if scorer is not None and threshold is None and getattr(scorer, "threshold", None) is None:
            raise ValueError("a custom scorer needs a threshold: pass threshold=... or give the scorer a .threshold")
        if not (isinstance(timeout, int | float) and not isinstance(timeout, bool) and 0 <= timeout < 1e6):
            raise ValueError(f"timeout={timeout!r}: expected seconds, a number from 0")
        self.timeout = float(timeout)
        self._temp: str | None = None
        if path is None:
            self._temp = tempfile.mkdtemp(prefix="llmbudget-cache-")
            path = self._temp
        #: The directory or file the store was opened on (a temporary directory for ``path=None``).
        self.location = os.path.abspath(path)
        self.db_path = database_path(path)
        self.index_dir = self.db_path.with_name(self.db_path.name + ".index") if self.db_path == Path(path) \
            else Path(path) / "index"
        if embedder is None:
            from .embedders import WordLlamaEmbedder

            embedder = WordLlamaEmbedder()
        self.embedder: Embedder = embedder
        self.dim = int(embedder.dim)
        self.max_entries = max_entries
        self.eviction: Eviction = eviction
        self.ttl = ttl
        self.candidates = candidates
        #: Candidates less similar than this are not scored. Default: 0.6 with the bundled verifier
        #: (on Quora pairs its hits all sit above WordLlama cosine 0.57, so the floor costs no hits and
        #: saves scoring time); no floor with a scorer of your own.
        self.min_cosine = min_cosine if min_cosine is not None else (-1.0 if scorer is not None else DEFAULT_MIN_COSINE)
        self.max_semantic_chars = max_semantic_chars
        self.template_guard: TemplateGuard | None = TemplateGuard() if template_guard is _UNSET else template_guard
        self._scorer = scorer
        self._default_scoring = scorer is None  # the bundled verifier, loaded on first use
        self._threshold = threshold if threshold is not None else getattr(scorer, "threshold", None)
        self._scoring_lock = threading.Lock()
        self._pack_failed = False
        self._unpack_failed = False
        self._clock = clock
        self._local = threading.local()
        # every thread's connections, for close(); a thread's leave with it (see _conn)
        self._conns: dict[int, sqlite3.Connection] = {}
        self._closed = False
        self._finalizer = weakref.finalize(self, _cleanup, self._conns, self._temp)
        _STORES.add(self)  # its locks are new in a forked child

        conn = self._conn()
        conn.executescript(_SCHEMA)
        self.store_id = self._check_meta()
        self._add_columns()
        self._last_purge = float("-inf")
        self.purge()
        self._index = VectorIndex(
            self, dim=self.dim, directory=self.index_dir, dtype=index_dtype, exact_max=exact_search_max
        )

    @property
    def quick(self) -> bool:
        """True with the bundled embedder and verifier: a lookup or a store of a short text then costs well
        under a millisecond of CPU, so the async transport runs it on the event loop (inside ``no_wait()``,
        where nothing here waits: see :func:`_waitless` and :meth:`VectorIndex.search`)."""
        from .embedders import WordLlamaEmbedder

        return self._default_scoring and type(self.embedder) is WordLlamaEmbedder  # not an app's own subclass

    # ------------------------------------------------------------------ plumbing

    def _forked(self) -> None:
        """In a child just forked: new locks (a thread of the parent may have held them, and it is not here)."""
        self._scoring_lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection; inside :func:`~llmbudget.ledger.budgets.no_wait`, its other one, which
        never waits for a lock (see :func:`_waitless`)."""
        if self._closed:
            raise RuntimeError(f"this CacheStore ({self.db_path}) is closed")
        quick = _NO_WAIT.get()
        conn, new = thread_connection(self._local, self.db_path, quick=quick, timeout=self.timeout)
        if new:
            # Kept for close(), and dropped (closed) when the thread ends, as its thread-local goes with it: a
            # server that starts a thread per request (flask run, Django's runserver) leaked two files a request.
            token = _Token()
            setattr(self._local, "quick_token" if quick else "token", token)
            self._conns[id(token)] = conn
            weakref.finalize(token, _forget, self._conns, id(token), os.getpid())
        return conn

    @_waitless
    def probe_write(self) -> None:
        """Take the write lock and let it go, writing nothing: raises as a store would when the file cannot be
        written now (:class:`~llmbudget.cache.Cache` tries it before a call may use a cache it left out)."""
        with self._write():
            pass

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a failed COMMIT too: the connection is not left inside the transaction
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def _check_meta(self) -> str:
        name = str(self.embedder.name)
        with self._write() as conn:
            meta = dict(conn.execute("SELECT key, value FROM cache_meta").fetchall())
            if not meta:
                meta = {"schema": _SCHEMA_VERSION, "store_id": uuid.uuid4().hex, "embedder": name, "dim": str(self.dim)}
                conn.executemany("INSERT INTO cache_meta (key, value) VALUES (?, ?)", list(meta.items()))
            if meta.get("schema") != _SCHEMA_VERSION:
                raise RuntimeError(
                    f"the cache at {self.db_path} has schema {meta.get('schema')!r}, this llmbudget reads "
                    f"{_SCHEMA_VERSION!r}: delete the cache directory (it is only a cache) or use another path"
                )
            if (meta["embedder"], meta["dim"]) != (name, str(self.dim)):
                has_vectors = conn.execute("SELECT 1 FROM cache_entries WHERE vector IS NOT NULL LIMIT 1").fetchone()
                if has_vectors:
                    raise ValueError(
                        f"the cache at {self.db_path} holds vectors from embedder {meta['embedder']!r} "
                        f"({meta['dim']}-d), not {name!r} ({self.dim}-d): open it with that embedder, "
                        "use another path, or delete the directory"
                    )
                conn.executemany("UPDATE cache_meta SET value = ? WHERE key = ?", [(name, "embedder"), (str(self.dim), "dim")])
            return meta["store_id"]

    def _add_columns(self) -> None:
        """Add the columns later versions introduced to a store an earlier one made (old rows keep NULL)."""
        conn = self._conn()
        if "scorer_data" not in {row[1] for row in conn.execute("PRAGMA table_info(cache_entries)")}:
            with self._write() as conn, contextlib.suppress(sqlite3.OperationalError):  # another process added it
                conn.execute("ALTER TABLE cache_entries ADD COLUMN scorer_data BLOB")

    @staticmethod
    def _partition_id(partition: str) -> int:
        """The partition's 63-bit hash: index key and file name (rows also keep the name, checked on every read)."""
        digest = hashlib.blake2b(partition.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 1

    def _vectors(self, texts: Sequence[str], vectors: Sequence[Any | None]) -> list[bytes | None]:
        """Stored form (float16, unit norm) of each vector, embedding the texts that have none."""
        need = [i for i, v in enumerate(vectors) if v is None]
        out: list[Any] = list(vectors)
        if need:
            embedded = self.embedder.embed([texts[i] for i in need])
            for row, i in enumerate(need):
                out[i] = embedded[row]
        stored: list[bytes | None] = []
        for vector in out:
            unit = self._unit(vector)
            stored.append(None if unit is None else unit.astype("<f2").tobytes())
        return stored

    def _unit(self, vector: Any) -> np.ndarray | None:
        vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vec.shape[0] != self.dim:
            raise ValueError(f"a vector of {vec.shape[0]} dimensions was given, this cache uses {self.dim}")
        norm = float(np.sqrt(vec.dot(vec)))  # np.linalg.norm(vec), less its Python layer
        if not math.isfinite(norm) or norm < 1e-6:
            return None  # an empty text: exact tier only
        return vec / norm

    def _decode(self, blobs: Sequence[bytes]) -> np.ndarray:
        if not blobs:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.frombuffer(b"".join(blobs), dtype="<f2").reshape(-1, self.dim).astype(np.float32)

    def _scoring(self) -> tuple[Scorer, float]:
        if self._scorer is None or self._threshold is None:
            with self._scoring_lock:
                if self._scorer is None:
                    scorer, default = _default_scorer()
                    self._scorer = scorer
                    if self._threshold is None:
                        self._threshold = default
        assert self._scorer is not None and self._threshold is not None
        return self._scorer, self._threshold

    def _score(self, scorer: Scorer, text: str, query: np.ndarray, texts: list[str], cands: np.ndarray,
               data: Sequence[bytes | None] | None = None) -> np.ndarray:
        """One score per candidate; vectors from another embedder than the scorer's are not passed to it.

        ``data``: per candidate, what the scorer's ``_pack_texts`` made of its text when it was stored.
        """
        own = getattr(scorer, "embedder_name", None)
        share = own is None or own == self.embedder.name
        packed = getattr(scorer, "_score_packed", None)
        if packed is not None and data is not None:
            try:
                return np.asarray(packed(text, query if share else None, texts, cands if share else None, data),
                                  dtype=np.float64)
            except Exception as exc:  # noqa: BLE001 - the data is an optimisation: score from the texts
                if not self._unpack_failed:
                    self._unpack_failed = True
                    logger.warning("cache: the scorer could not use the data stored with the candidates (%s); "
                                   "they are scored from their texts", exc)
        many = getattr(scorer, "score_many", None)
        if many is not None:
            return np.asarray(many(text, query if share else None, texts, cands if share else None), dtype=np.float64)
        if share:
            return np.array([scorer.score(text, query, t, c) for t, c in zip(texts, cands)], dtype=np.float64)
        loose: Any = scorer  # it declared another embedder: it takes None vectors
        return np.array([loose.score(text, None, t, None) for t in texts], dtype=np.float64)

    @property
    def threshold(self) -> float:
        """The score a candidate needs to be a hit."""
        return self._scoring()[1]

    # ------------------------------------------------------------------ VectorSource (for the index)

    def head(self) -> Head:
        rows = self._conn().execute("SELECT name, seq FROM sqlite_sequence").fetchall()
        seqs = dict(rows)
        return int(seqs.get("cache_entries", 0)), int(seqs.get("cache_deletions", 0))

    @contextlib.contextmanager
    def view(self) -> Iterator[_View]:
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield _View(self, conn)
        finally:
            conn.execute("COMMIT")

    # ------------------------------------------------------------------ public API

    @_waitless
    def get_exact(self, partition: str, exact_key: str) -> Entry | None:
        """The live entry stored under ``exact_key`` in ``partition``, or None."""
        row = self._conn().execute(
            f"SELECT {_COLUMNS} FROM cache_entries WHERE partition_id = ? AND exact_key = ? AND partition = ?",
            (self._partition_id(partition), exact_key, partition),
        ).fetchone()
        if row is None or (row[7] is not None and row[7] <= self._clock()):
            return None
        return _entry(partition, row)

    def _models_ready(self) -> None:
        """Inside ``no_wait()``: :class:`WouldWait` while the bundled embedder or verifier is not loaded yet
        (each takes about 0.15 s to load, under a lock a worker thread may hold)."""
        if not _NO_WAIT.get():
            return
        if isinstance(self.embedder, embedders.WordLlamaEmbedder) and embedders._WORDLLAMA_MODEL is None:
            raise WouldWait("the cache's embedder is not loaded yet")
        if self._scorer is None:
            from . import verifier

            if verifier._DEFAULT is None:
                raise WouldWait("the cache's verifier is not loaded yet")
            self._scoring()  # the process's verifier, built already: this store takes it at once

    def query_vector(self, text: str) -> np.ndarray | None:
        """The unit vector :meth:`search` and :meth:`put` make of ``text``: given to both, the text is embedded
        once. None for a text the semantic tier does not match (longer than ``max_semantic_chars``, or empty)."""
        if not self._within_length(text):
            return None
        self._models_ready()
        return self._unit(self.embedder.embed([text])[0])

    @_waitless
    def search(self, partition: str, text: str, vector: Any | None = None) -> Hit | None:
        """The best live entry of ``partition`` whose score reaches the threshold, or None.

        ``text`` is embedded unless ``vector`` is given; only the ``candidates``
        nearest entries of that partition are scored. A ``text`` longer than
        ``max_semantic_chars`` is not searched; a candidate the template guard
        refuses is not a hit.
        """
        if not self._within_length(text):
            return None
        self._models_ready()
        text = tokenizable(text)  # as stored: SQLite takes no lone surrogate
        pid = self._partition_id(partition)
        query = self._unit(self.embedder.embed([text])[0] if vector is None else vector)
        if query is None:
            return None
        ids = near_ids(self._index.search(pid, query, self.candidates), self.min_cosine)
        if not ids:
            return None
        conn = self._conn()
        rows = conn.execute(  # the candidates without their (possibly long) responses
            f"SELECT id, partition, expires, text, vector, scorer_data FROM cache_entries WHERE id IN ({','.join('?' * len(ids))})",
            ids,
        ).fetchall()
        now = self._clock()
        live = []
        expired = False
        for row in rows:
            if row[1] != partition:  # a 63-bit hash collision; never served across partitions
                logger.warning("cache: entry %d of another partition shares this partition's hash; ignored", row[0])
            elif row[2] is not None and row[2] <= now:
                expired = True
            elif row[4] is not None:
                live.append(row)
        if expired and not _NO_WAIT.get():  # on the event loop, the next store in a worker thread purges
            self._maybe_purge(now)
        if not live:
            return None
        chosen = self._best(text, query, [row[3] for row in live], [row[4] for row in live], [row[5] for row in live])
        if chosen is None:
            return None
        best, score, cosine = chosen
        full = conn.execute(f"SELECT {_COLUMNS} FROM cache_entries WHERE id = ?", (live[best][0],)).fetchone()
        if full is None:  # deleted meanwhile
            return None
        return Hit(_entry(partition, full), score, cosine)

    def _best(self, text: str, query: np.ndarray, texts: Sequence[str], blobs: Sequence[bytes],
              data: Sequence[bytes | None] | None = None) -> tuple[int, float, float] | None:
        """The candidate the scorer likes best, if it reaches the threshold: (index, score, cosine).

        Candidates below ``min_cosine``, or that the template guard refuses, are not scored at all
        (the guard is cheaper than the verifier on long texts); ``data``: the candidates' scorer data.
        """
        cands = self._decode(list(blobs))
        cands /= np.maximum(np.sqrt(np.add.reduce(cands * cands, axis=1, keepdims=True)), 1e-12)  # unit rows
        cosines = np.minimum(np.maximum(cands @ query, -1.0), 1.0).tolist()
        floor = float(np.float32(self.min_cosine))  # the float32 comparison, made on the exact values
        keep = [i for i, cosine in enumerate(cosines) if cosine >= floor and not self._template_conflict(text, texts[i])]
        if not keep:
            return None
        scorer, threshold = self._scoring()
        picked = cands if len(keep) == len(cosines) else cands[keep]
        kept = None if data is None else [data[i] for i in keep]
        scores = self._score(scorer, text, query, [texts[i] for i in keep], picked, kept).tolist()
        guard = self.template_guard
        if guard is not None:  # the same words but for courtesy: a hit at any threshold ("Please summarise ...")
            scores = [1.0 if score < 1.0 and guard.same_question(text, texts[keep[i]]) else score
                      for i, score in enumerate(scores)]
        best = max(range(len(keep)), key=lambda i: (scores[i], cosines[keep[i]]))
        if not scores[best] >= threshold:
            return None
        return keep[best], float(scores[best]), cosines[keep[best]]

    def _template_conflict(self, text: str, candidate: str) -> bool:
        """True when the template guard refuses ``candidate`` as an answer to ``text``."""
        guard = self.template_guard
        if guard is None or not guard.conflict(text, candidate):
            return False
        logger.debug("cache: a candidate shares a template with the query but not its data; not a hit")
        return True

    def _within_length(self, text: str) -> bool:
        """True when ``text`` is short enough for the semantic tier (``max_semantic_chars``, and never longer
        than :data:`~llmbudget.cache.templates.SEMANTIC_CHARS_CEILING`)."""
        limit = self.max_semantic_chars
        return len(text) <= (SEMANTIC_CHARS_CEILING if limit is None else min(limit, SEMANTIC_CHARS_CEILING))

    def put(
        self,
        *,
        partition: str,
        exact_key: str,
        text: str,
        response: str,
        tenant: str,
        model: str,
        vector: Any | None = None,
        semantic: bool = True,
        ttl: float | None = _UNSET,
    ) -> int:
        """Store an answer (replacing the one under the same ``exact_key``); returns the entry id.

        ``semantic=False`` stores it for exact lookups only (no vector), as is a
        ``text`` longer than ``max_semantic_chars``; ``ttl`` overrides the store's for this entry.
        """
        return self.put_many(
            [{"partition": partition, "exact_key": exact_key, "text": text, "response": response, "tenant": tenant,
              "model": model, "vector": vector, "semantic": semantic, "ttl": ttl}]
        )[0]

    @_waitless
    def put_many(self, items: Iterable[Mapping[str, Any]]) -> list[int]:
        """Store many answers (each a mapping of :meth:`put`'s arguments), embedding in batches; returns their ids."""
        rows = list(items)
        checked = [row_fields(row, self.ttl) for row in rows]  # every answer checked before any is stored
        if _NO_WAIT.get() and (len(rows) > 1 or self._clock() - self._last_purge >= _PURGE_INTERVAL):
            raise WouldWait("a purge of expired entries is due, or many answers to store")
        ids: list[int] = []
        step = 4 * _CHUNK
        for start in range(0, len(rows), step):
            chunk, fields = rows[start : start + step], checked[start : start + step]
            semantic = [i for i, r in enumerate(chunk) if r.get("semantic", True) and self._within_length(fields[i][2])]
            if semantic:  # an answer stored for exact lookups only needs neither model
                self._models_ready()
            blobs: list[bytes | None] = [None] * len(chunk)
            texts = [fields[i][2] for i in semantic]
            stored = self._vectors(texts, [chunk[i].get("vector") for i in semantic])
            for i, blob in zip(semantic, stored):
                blobs[i] = blob
            extra: list[bytes | None] = [None] * len(chunk)
            for i, packed in zip(semantic, self._scorer_data(texts)):
                extra[i] = packed
            pids = [self._partition_id(answer[0]) for answer in fields]
            now = self._clock()
            with self._write() as conn:
                added = [self._insert(conn, answer, pid, blob, now, packed)
                         for answer, pid, blob, packed in zip(fields, pids, blobs, extra)]
                self._enforce_cap(conn, now, added[0] if added else None)
            ids += added
            if added and _NO_WAIT.get():  # the index takes those with a vector as it would read them back
                self._index.added_here(added[0], added[-1], [
                    (entry_id, pid, np.frombuffer(blob, dtype="<f2").astype(np.float32))  # as _decode reads it
                    for entry_id, pid, blob in zip(added, pids, blobs, strict=True) if blob is not None])
        if rows and not _NO_WAIT.get():  # on the event loop the check above found none due; nothing after
            self._maybe_purge(self._clock())  # the commit may hand the store on to be done again
        return ids

    def add_vectors(self, ids: Sequence[int], known: Mapping[str, Any] | None = None) -> int:
        """Make entries stored for exact lookups only (``semantic=False``) semantic: each gets its vector and
        scorer data (``known``: vectors already made, by text). An entry gone or replaced meanwhile, already
        with a vector, or longer than ``max_semantic_chars`` is left as it is. The entry is stored again, under
        a new id, so that every process's index learns of it as of any new entry. Returns how many changed.

        The cache's worker process does this for the answers the app stored (:class:`~llmbudget.cache.Cache`
        ``worker=True``): an answer is an exact hit at once, and a semantic one once its vector is in."""
        if not ids:
            return 0
        conn = self._conn()
        rows = conn.execute(
            f"SELECT id, text FROM cache_entries WHERE vector IS NULL AND id IN ({','.join('?' * len(ids))})",
            list(ids)).fetchall()
        rows = [(entry_id, text) for entry_id, text in rows if self._within_length(text)]
        if not rows:
            return 0
        self._models_ready()
        texts = [text for _, text in rows]
        known = known or {}
        blobs = self._vectors(texts, [known.get(text) for text in texts])
        extra = self._scorer_data(texts)
        changed = 0
        with self._write() as conn:
            for (entry_id, text), blob, packed in zip(rows, blobs, extra, strict=True):
                row = conn.execute(f"SELECT {_MOVED} FROM cache_entries WHERE id = ? AND vector IS NULL AND text = ?",
                                   (entry_id, text)).fetchone()
                if row is None or blob is None:
                    continue
                conn.execute("DELETE FROM cache_entries WHERE id = ?", (entry_id,))
                size = row[-1] + len(blob) + (len(packed) if packed is not None else 0)
                conn.execute(f"INSERT INTO cache_entries ({_MOVED}, vector, scorer_data) "
                             f"VALUES ({', '.join('?' * (len(row) + 2))})", (*row[:-1], size, blob, packed))
                changed += 1
        return changed

    def _scorer_data(self, texts: list[str]) -> list[bytes | None]:
        """What the scorer precomputes per stored text (the verifier: token ids and words), if it does."""
        if not texts:
            return []
        try:
            pack = getattr(self._scoring()[0], "_pack_texts", None)
            if pack is not None:
                return list(pack(texts))
        except Exception as exc:  # noqa: BLE001 - an optimisation only: the texts are prepared when scored
            if not self._pack_failed:
                logger.warning("cache: the scorer could not precompute its data for stored texts (%s)", exc)
                self._pack_failed = True
        return [None] * len(texts)

    def _insert(self, conn: sqlite3.Connection, answer: Answer, pid: int, blob: bytes | None, now: float,
                scorer_data: bytes | None = None) -> int:
        """Insert one answer (as :func:`row_fields` checked it); returns its id."""
        partition, exact_key, text, response, tenant, model, ttl = answer
        # SQLite takes no lone surrogate: a tenant or model keeps U+FFFD for it, as invalidate() reads one
        tenant, model = tokenizable(tenant), tokenizable(model)
        size = sum(len(s.encode("utf-8", "surrogatepass")) for s in (exact_key, text, response, tenant, model))
        size += (len(blob) if blob is not None else 0) + (len(scorer_data) if scorer_data is not None else 0)
        values = (partition, pid, exact_key, tenant, model, text, blob, scorer_data, response, now,
                  None if ttl is None else now + ttl, now, size)
        try:  # a new key, nearly always: one statement
            cursor = conn.execute(_INSERT, values)
        except sqlite3.IntegrityError:  # the key holds an answer: deleted (and logged) first, as a replacement
            conn.execute("DELETE FROM cache_entries WHERE partition_id = ? AND exact_key = ?", (pid, exact_key))
            cursor = conn.execute(_INSERT, values)  # any other error raises again: the transaction rolls back
        return int(cursor.lastrowid or 0)

    def _enforce_cap(self, conn: sqlite3.Connection, now: float, newest: int | None) -> None:
        if self.max_entries is None:
            return
        count = conn.execute("SELECT entries FROM cache_totals WHERE id = 0").fetchone()[0]
        if count <= self.max_entries:
            return
        conn.execute("DELETE FROM cache_entries WHERE expires IS NOT NULL AND expires <= ?", (now,))
        count = conn.execute("SELECT entries FROM cache_totals WHERE id = 0").fetchone()[0]
        order = "used, id" if self.eviction == "lru" else "hits, used, id"
        # Spare the entries just stored when possible: under LFU they have no hits yet.
        for spare in (newest, None):
            excess = count - self.max_entries
            if excess <= 0:
                break
            where = "" if spare is None else f"WHERE id < {int(spare)}"
            evicted = conn.execute(
                f"DELETE FROM cache_entries WHERE id IN (SELECT id FROM cache_entries {where} ORDER BY {order} LIMIT ?)",
                (excess,),
            ).rowcount
            count -= evicted
            logger.debug("cache: evicted %d entries (%s, cap %d)", evicted, self.eviction, self.max_entries)

    @_waitless
    def record_hit(self, entry_id: int) -> None:
        """Count a hit on ``entry_id`` (LRU and LFU order by it)."""
        now = self._clock()
        self._conn().execute(
            "UPDATE cache_entries SET hits = hits + 1, last_hit = ?, used = ? WHERE id = ?", (now, now, entry_id)
        )

    def invalidate(self, *, tenant: str | None = None, model: str | None = None) -> int:
        """Delete the entries of ``tenant``, of ``model``, of both, or (no argument) all; returns how many."""
        clauses, params = [], []
        if tenant is not None:
            clauses.append("tenant = ?")
            params.append(tokenizable(tenant))  # as stored
        if model is not None:
            clauses.append("model = ?")
            params.append(tokenizable(model))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._write() as conn:
            deleted = int(conn.execute(f"DELETE FROM cache_entries{where}", params).rowcount)
        logger.info("cache: invalidated %d entries (tenant=%r, model=%r)", deleted, tenant, model)
        self._trim_log()
        return deleted

    def purge(self) -> int:
        """Delete expired entries now (also done automatically); returns how many."""
        now = self._clock()
        self._last_purge = now
        with self._write() as conn:
            deleted = int(
                conn.execute("DELETE FROM cache_entries WHERE expires IS NOT NULL AND expires <= ?", (now,)).rowcount
            )
        self._trim_log()
        if deleted:
            logger.debug("cache: purged %d expired entries", deleted)
        return deleted

    def _maybe_purge(self, now: float) -> None:
        if now - self._last_purge >= _PURGE_INTERVAL:
            self.purge()

    def _trim_log(self) -> None:
        with self._write() as conn:
            conn.execute(
                "DELETE FROM cache_deletions WHERE seq <= (SELECT max(seq) FROM cache_deletions) - ?",
                (_DELETION_LOG_KEEP,),
            )

    def stats(self) -> dict[str, int]:
        """``{"entries", "bytes", "partitions"}`` of the live store (expired entries purged first)."""
        self.purge()
        conn = self._conn()
        entries, size = conn.execute("SELECT entries, bytes FROM cache_totals WHERE id = 0").fetchone()
        partitions = conn.execute("SELECT count(DISTINCT partition_id) FROM cache_entries").fetchone()[0]
        return {"entries": int(entries), "bytes": int(size), "partitions": int(partitions)}

    def save_index(self) -> int:
        """Write changed partition indexes to ``index/`` now; returns how many files were written."""
        return self._index.save()

    def close(self) -> None:
        """Save changed indexes, close every connection and remove a temporary directory."""
        if self._closed:
            return
        try:
            if self._temp is None:
                self._index.save()
        finally:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> CacheStore:  # noqa: PYI034 - typing.Self needs 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CacheStore({os.fspath(self.db_path.parent if self.db_path.name == 'cache.sqlite3' else self.db_path)!r})"


_STORES: weakref.WeakSet[CacheStore] = weakref.WeakSet()


#: The most candidates a store scores per lookup (each one is read and verified).
MAX_CANDIDATES = 64
#: The longest ``ttl`` in seconds (about 31 years); None: entries never expire.
MAX_TTL = 1e9


def check_store_options(*, max_semantic_chars: Any, max_entries: Any, ttl: Any, candidates: Any, min_cosine: Any,
                        threshold: Any) -> None:
    """Refuse, as ``ValueError`` naming it, an option both cache stores would misread later: ``candidates=2.5``
    failed every search, ``max_entries=1.5`` every store that evicted, a NaN ``min_cosine`` or ``threshold``
    turned the semantic tier off without a word, ``ttl=inf`` failed every Redis store."""
    _check_semantic_chars(max_semantic_chars)
    if max_entries is not None and (isinstance(max_entries, bool) or not isinstance(max_entries, int)
                                    or max_entries < 1):
        raise ValueError(f"max_entries={max_entries!r}: expected a whole number >= 1 or None (no cap)")
    check_ttl(ttl)
    if isinstance(candidates, bool) or not isinstance(candidates, int) or not 1 <= candidates <= MAX_CANDIDATES:
        raise ValueError(f"candidates={candidates!r}: expected a whole number from 1 to {MAX_CANDIDATES}")
    if min_cosine is not None and not (_real(min_cosine) and -1 <= min_cosine <= 1):
        raise ValueError(f"min_cosine={min_cosine!r}: expected a cosine from -1 to 1, or None")
    if threshold is not None and not (_real(threshold) and math.isfinite(threshold)):
        raise ValueError(f"threshold={threshold!r}: expected a finite number (the scorer's hit threshold), or None")


def _real(value: Any) -> bool:
    """A real number (not a bool, not NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def check_ttl(ttl: Any) -> None:
    """A ttl in seconds: more than 0, at most :data:`MAX_TTL`, or None (never expire)."""
    if ttl is not None and not (_real(ttl) and 0 < ttl <= MAX_TTL):
        raise ValueError(f"ttl={ttl!r}: expected seconds > 0 (at most {MAX_TTL:.0e}), or None (entries never expire)")


#: An answer to store, checked: partition, exact key, text, response, tenant, model, ttl.
Answer = tuple[str, str, str, str, str, str, "float | None"]


def row_fields(row: Mapping[str, Any], default_ttl: float | None) -> Answer:
    """An answer to store, checked: ``(partition, exact_key, text, response, tenant, model, ttl)``. A field
    that is not a string is a ``TypeError`` (``text=None`` was stored, and matched, as the question "None");
    a lone surrogate in the text becomes U+FFFD, as the tokenizers and a search read it."""
    values = []
    for name in ("partition", "exact_key", "text", "response", "tenant", "model"):
        value = row[name]
        if not isinstance(value, str):
            raise TypeError(f"put({name}={value!r}): expected a string")
        values.append(value)
    partition, exact_key, text, response, tenant, model = values
    ttl = row.get("ttl", _UNSET)
    ttl = default_ttl if ttl is _UNSET else ttl
    check_ttl(ttl)
    return partition, exact_key, tokenizable(text), response, tenant, model, ttl


def _check_semantic_chars(value: int | None) -> None:
    """Refuse a ``max_semantic_chars`` that is not a positive whole number or None."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"max_semantic_chars={value!r}: expected a positive number of characters, "
                         f"or None for no limit below the ceiling ({SEMANTIC_CHARS_CEILING:,} characters)")


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._forked()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _entry(partition: str, row: Sequence[Any]) -> Entry:
    return Entry(
        id=int(row[0]), partition=partition, exact_key=row[1], tenant=row[2], model=row[3], text=row[4],
        response=row[5], created=float(row[6]), expires=row[7], last_hit=row[8], hits=int(row[9]), size=int(row[10]),
    )


class _Token:
    """Lives in a thread's local storage beside its connection: its finalizer closes the connection when the
    thread ends (a sqlite3 connection takes no weak reference)."""

    __slots__ = ("__weakref__",)


#: Connections a forked child inherited from its parent's threads: never closed (nor freed, which closes) in the
#: child, where another thread of the parent may have held their mutex at the fork: closing one would wait for
#: it for ever (SQLite: a connection must not be used across a fork).
_INHERITED: list[sqlite3.Connection] = []


def _forget(conns: dict[int, sqlite3.Connection], key: int, pid: int) -> None:
    conn = conns.pop(key, None)  # (a finalizer: no lock, which the thread it interrupts may hold)
    if conn is None:
        return
    if os.getpid() != pid:  # a child just forked clears the parent's other threads, and with them their tokens
        _INHERITED.append(conn)
        return
    with contextlib.suppress(Exception):  # another thread's, or in use: garbage collection closes it
        conn.close()


def _cleanup(conns: dict[int, sqlite3.Connection], temp: str | None) -> None:
    while conns:
        try:
            _, conn = conns.popitem()
        except KeyError:  # a thread's finalizer took the last one
            break
        with contextlib.suppress(Exception):
            conn.close()
    if temp is not None:
        shutil.rmtree(temp, ignore_errors=True)


class _View:
    """The store's reads for the index, inside one read transaction."""

    def __init__(self, store: CacheStore, conn: sqlite3.Connection) -> None:
        self._store = store
        self._conn = conn

    def head(self) -> Head:
        seqs = dict(self._conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
        return int(seqs.get("cache_entries", 0)), int(seqs.get("cache_deletions", 0))

    def oldest_deletion(self) -> int:
        row = self._conn.execute("SELECT min(seq) FROM cache_deletions").fetchone()
        return int(row[0]) if row[0] is not None else self.head()[1] + 1

    def added(self, after_id: int, upto_id: int, partitions: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sql = "SELECT id, partition_id, vector FROM cache_entries WHERE id > ? AND id <= ? AND vector IS NOT NULL"
        params: list[int] = [after_id, upto_id]
        if len(partitions) <= _CHUNK:
            sql += f" AND partition_id IN ({','.join('?' * len(partitions))})"
            params += partitions
        rows = self._conn.execute(sql, params).fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        pids = np.array([r[1] for r in rows], dtype=np.int64)
        return ids, pids, self._store._decode([r[2] for r in rows])

    def deleted(self, after_seq: int, upto_seq: int, partition: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        sql = "SELECT entry_id, partition_id FROM cache_deletions WHERE seq > ? AND seq <= ?"
        params: list[int] = [after_seq, upto_seq]
        if partition is not None:
            sql += " AND partition_id = ?"
            params.append(partition)
        rows = self._conn.execute(sql, params).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.int64)

    def partition_count(self, partition: int, upto_id: int) -> int:
        return int(self._conn.execute(
            "SELECT count(*) FROM cache_entries WHERE partition_id = ? AND id <= ? AND vector IS NOT NULL",
            (partition, upto_id),
        ).fetchone()[0])

    def partition_rows(
        self, partition: int, after_id: int, upto_id: int, limit: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        rows = self._conn.execute(
            "SELECT id, vector FROM cache_entries WHERE partition_id = ? AND id > ? AND id <= ? AND vector IS NOT NULL"
            " ORDER BY id LIMIT ?",
            (partition, after_id, upto_id, -1 if limit is None else limit),
        ).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64), self._store._decode([r[1] for r in rows])

    def partition_ids(self, partition: int, upto_id: int) -> np.ndarray:
        rows = self._conn.execute(
            "SELECT id FROM cache_entries WHERE partition_id = ? AND id <= ? AND vector IS NOT NULL ORDER BY id",
            (partition, upto_id),
        ).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found: list[tuple[int, bytes]] = []
        keys = ids.tolist()
        for start in range(0, len(keys), _CHUNK):
            part = keys[start : start + _CHUNK]
            found += self._conn.execute(
                f"SELECT id, vector FROM cache_entries WHERE id IN ({','.join('?' * len(part))}) AND vector IS NOT NULL",
                part,
            ).fetchall()
        return np.array([r[0] for r in found], dtype=np.int64), self._store._decode([r[1] for r in found])
