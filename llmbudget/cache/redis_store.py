"""The cache's storage on Redis, shared by every worker and every replica.

Entries live in Redis hashes (``{prefix}e:{id}``: partition, exact key, tenant,
model, text, response, the vector as float16 bytes, the scorer's data for the
text (the verifier's token ids and words, absent from entries stored by older
versions: those, and data of another format or tokenizer, are prepared from
their text), created, expires, hits) with a Redis TTL; ``{prefix}x:{partition hash}`` maps exact keys to entry ids and
``{prefix}p:{partition hash}`` lists a partition's entries with a vector. Every
insert and deletion (replacement, eviction, expiry purge, invalidation) is
appended to the stream ``{prefix}log`` by the same Lua script that makes it, so
the stream and the entries never disagree.

Each process keeps its own vector index per partition it has searched that has
entries (a partition found empty is only remembered as such, in a bounded list,
until the stream adds to it): exact search up to ``exact_search_max`` vectors
(2,048), a usearch HNSW index above, as the SQLite store does. A partition that outgrows exact search (or a big one
loaded from Redis) gets its HNSW index built in a background thread; exact search
serves meanwhile and the changes made during the build are replayed onto the new
index before it takes over, so no lookup waits for a build.

A lookup is one round trip (a script): it reads the stream entries after the
last one this process applied, checks the store's id and the stream's trim
count, and fetches the fields of the candidates the local index found before
those entries were applied. If the entries touched the partition, the local
index is searched again and the new candidates fetched. A hit reads its answer
in a second round trip. A partition this process has not searched yet is
bootstrapped from ``{prefix}p:...``. A trimmed stream (the process fell too far
behind) or a Redis that lost its data (restart without persistence, ``FLUSHDB``)
is detected and the local indexes are dropped and rebuilt lazily. A process that
holds no partition (a worker just forked from a master that never searched) moves
straight to the stream's head instead of reading what it has nothing to apply to.
A stream entry this process cannot use (a vector of another size) is skipped. After
``fork()`` the child gets new locks, so a thread of the parent that held one cannot
hang it.

Partition isolation is the SQLite store's: every entry read is checked against
the partition name it was stored under. When Redis cannot be reached, lookups
are misses and stores are skipped (logged once until Redis answers again); the
request never fails because of the cache.

Scripts build key names from the prefix, so this needs a standalone Redis (or
Sentinel), not Redis Cluster. ``redis`` (redis-py) is imported on first use.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .embedders import Embedder, tokenizable
from .index import EXACT_MAX, IndexDType, _Exact, _Hnsw
from .store import (
    _PURGE_INTERVAL,
    _UNSET,
    DEFAULT_MIN_COSINE,
    Answer,
    CacheStore,
    Entry,
    Hit,
    Scorer,
    check_store_options,
    near_ids,
    row_fields,
)
from .templates import DEFAULT_MAX_SEMANTIC_CHARS, TemplateGuard

__all__ = ["RedisCacheStore"]

log = logging.getLogger("llmbudget.cache")

#: Stream entries kept (approximately); a process further behind rebuilds its indexes.
STREAM_MAXLEN = 100_000
_READ_BATCH = 1000
_PUT_BATCH = 500  # answers embedded together and sent in one round trip
_LOAD_BATCH = 500  # entries one script scans when a partition loads (a few ms of Redis time each)
_EMPTY_KEEP = 4096  # partitions remembered as holding no entry (so their lookups skip the load)
_BUILD_RETRY_S = 60.0  # after a build thread could not start, seconds before the next try
#: Seconds after Redis was found down during which lookups miss and stores are skipped without trying it.
RETRY_S = 1.0

_DELETE = """
local function delete_entry(P, id)
    local w = redis.call('HGET', P .. 'w', id)
    redis.call('DEL', P .. 'e:' .. id)
    redis.call('ZREM', P .. 'used', id)
    redis.call('ZREM', P .. 'exp', id)
    if not w then return 0 end
    redis.call('HDEL', P .. 'w', id)
    local a = string.find(w, '\\n', 1, true)
    local b = string.find(w, '\\n', a + 1, true)
    local pid = string.sub(w, 1, a - 1)
    local size = tonumber(string.sub(w, a + 1, b - 1))
    local key = string.sub(w, b + 1)
    redis.call('SREM', P .. 'p:' .. pid, id)
    if redis.call('HGET', P .. 'x:' .. pid, key) == id then
        redis.call('HDEL', P .. 'x:' .. pid, key)
    end
    redis.call('DECRBY', P .. 'bytes', size)
    redis.call('XADD', P .. 'log', 'MAXLEN', '~', ARGV[2], '*', 'o', 'd', 'i', id, 'p', pid)
    return 1
end
"""

# ARGV: prefix, maxlen, pid, partition, exact_key, tenant, model, text, response, vector, now, ttl_ms, size, cap,
# scorer data ('' for none)
_PUT = _DELETE + """
local P = ARGV[1]
local pid, key, vector, now, ttl, size, cap = ARGV[3], ARGV[5], ARGV[10], ARGV[11], tonumber(ARGV[12]), ARGV[13], tonumber(ARGV[14])
local old = redis.call('HGET', P .. 'x:' .. pid, key)
if old then delete_entry(P, old) end
local id = tostring(redis.call('INCR', P .. 'seq'))
local expires = ''
if ttl > 0 then expires = tostring(tonumber(now) + ttl / 1000) end
redis.call('HSET', P .. 'e:' .. id, 'p', ARGV[4], 'k', key, 't', ARGV[6], 'm', ARGV[7], 'x', ARGV[8], 'r', ARGV[9],
    'v', vector, 'c', now, 'e', expires, 'h', 0, 'l', '', 's', size)
if ARGV[15] ~= '' then redis.call('HSET', P .. 'e:' .. id, 'd', ARGV[15]) end
if ttl > 0 then
    redis.call('PEXPIRE', P .. 'e:' .. id, ttl)
    redis.call('ZADD', P .. 'exp', expires, id)
end
redis.call('HSET', P .. 'x:' .. pid, key, id)
redis.call('HSET', P .. 'w', id, pid .. '\\n' .. size .. '\\n' .. key)
redis.call('INCRBY', P .. 'bytes', size)
redis.call('ZADD', P .. 'used', now, id)
if vector ~= '' then
    redis.call('SADD', P .. 'p:' .. pid, id)
    redis.call('XADD', P .. 'log', 'MAXLEN', '~', ARGV[2], '*', 'o', 'a', 'i', id, 'p', pid, 'v', vector)
end
local evicted = 0
if cap > 0 then
    local expired = redis.call('ZRANGEBYSCORE', P .. 'exp', '-inf', now)
    for _, gone in ipairs(expired) do evicted = evicted + delete_entry(P, gone) end
    local excess = redis.call('ZCARD', P .. 'used') - cap
    if excess > 0 then
        for _, gone in ipairs(redis.call('ZRANGE', P .. 'used', 0, excess)) do
            if excess > 0 and gone ~= id then
                evicted = evicted + delete_entry(P, gone)
                excess = excess - 1
            end
        end
    end
end
return {id, evicted}
"""

# ARGV: prefix, maxlen, id...
_DELETE_MANY = _DELETE + """
local n = 0
for i = 3, #ARGV do n = n + delete_entry(ARGV[1], ARGV[i]) end
return n
"""

# ARGV: prefix, maxlen, now, most (a batch: one script never holds Redis, which the budgets share, for long)
_PURGE = _DELETE + """
local n = 0
local ids = redis.call('ZRANGEBYSCORE', ARGV[1] .. 'exp', '-inf', ARGV[3], 'LIMIT', 0, ARGV[4])
for _, id in ipairs(ids) do
    n = n + delete_entry(ARGV[1], id)
end
return {n, #ids}
"""
_PURGE_BATCH = 500

# ARGV: prefix, id, now
_HIT = """
local k = ARGV[1] .. 'e:' .. ARGV[2]
if redis.call('EXISTS', k) == 1 then
    redis.call('HINCRBY', k, 'h', 1)
    redis.call('HSET', k, 'l', ARGV[3])
    redis.call('ZADD', ARGV[1] .. 'used', 'XX', ARGV[3], ARGV[2])
end
return 0
"""

# ARGV: prefix, last stream id applied, most entries to read (0: none), candidate ids...
# The store's id, the stream's entries-added and length (the trim check), the entries after the last applied,
# the candidates' fields and the stream's last id: what a lookup needs from Redis, read at one moment.
_READ = """
local P = ARGV[1]
local added, length, last, events = 0, 0, '0-0', {}
if redis.call('EXISTS', P .. 'log') == 1 then
    local info = redis.call('XINFO', 'STREAM', P .. 'log')
    for i = 1, #info, 2 do
        local name = info[i]
        if name == 'entries-added' then added = info[i + 1]
        elseif name == 'length' then length = info[i + 1]
        elseif name == 'last-generated-id' then last = info[i + 1] end
    end
    if ARGV[3] ~= '0' then events = redis.call('XRANGE', P .. 'log', '(' .. ARGV[2], '+', 'COUNT', ARGV[3]) end
end
local rows = {}
for i = 4, #ARGV do rows[#rows + 1] = redis.call('HMGET', P .. 'e:' .. ARGV[i], 'p', 'e', 'x', 'v', 'd') end
return {redis.call('HGET', P .. 'meta', 'id'), added, length, events, rows, last}
"""

# ARGV: prefix, partition id, vector size in bytes, SSCAN cursor, count. The next cursor, the ids
# (space-separated) of the scanned entries that have a vector of that size, and their vectors, concatenated:
# a partition loads in a few replies that are cheap to parse, none of which holds Redis for long.
_VECTORS = """
local scan = redis.call('SSCAN', ARGV[1] .. 'p:' .. ARGV[2], ARGV[4], 'COUNT', ARGV[5])
local found, blobs = {}, {}
for _, id in ipairs(scan[2]) do
    local v = redis.call('HGET', ARGV[1] .. 'e:' .. id, 'v')
    if v and #v == tonumber(ARGV[3]) then
        found[#found + 1] = id
        blobs[#blobs + 1] = v
    end
end
return {scan[1], table.concat(found, ' '), table.concat(blobs)}
"""

# ARGV: prefix, partition id, exact key. The entry's id and fields, or nil.
_EXACT = """
local id = redis.call('HGET', ARGV[1] .. 'x:' .. ARGV[2], ARGV[3])
if not id then return false end
return {id, redis.call('HMGET', ARGV[1] .. 'e:' .. id, 'p', 'k', 't', 'm', 'x', 'r', 'c', 'e', 'l', 'h', 's')}
"""

_FIELDS = (b"p", b"k", b"t", b"m", b"x", b"r", b"c", b"e", b"l", b"h", b"s")


_STORES: weakref.WeakSet[RedisCacheStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._forked()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", "surrogatepass")


def _wire(value: str) -> bytes:
    """``value`` as sent to Redis: UTF-8, a lone surrogate kept (:func:`_text` reads it back)."""
    return value.encode("utf-8", "surrogatepass")


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class _Local:
    """One partition's vectors in this process: searched exactly, or by a usearch HNSW index once it is big.

    The HNSW index is built in a background thread from a copy of the vectors; meanwhile
    the exact search serves, and the changes made during the build (``journal``) are
    replayed onto the new index, in order, before it takes over.
    """

    __slots__ = ("builder", "exact", "failed", "hnsw", "journal", "retry_at")

    def __init__(self, exact: _Exact) -> None:
        self.exact: _Exact | None = exact
        self.hnsw: _Hnsw | None = None
        self.journal: list[tuple[np.ndarray, np.ndarray | None]] | None = None  # None: no build under way
        self.builder = 0  # the process whose thread builds (a forked child starts its own)
        self.failed = False  # the build failed: exact search stays
        self.retry_at = 0.0  # time.monotonic() before which no build starts (a thread could not start)

    @property
    def kind(self) -> str:
        return "exact" if self.hnsw is None else "hnsw"

    def _searcher(self) -> _Exact | _Hnsw:
        found = self.exact if self.hnsw is None else self.hnsw
        assert found is not None
        return found

    def __len__(self) -> int:
        return len(self._searcher())

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._searcher().add(ids, vectors)
        if self.journal is not None:
            self.journal.append((ids, vectors))

    def remove(self, ids: np.ndarray) -> None:
        self._searcher().remove(ids)
        if self.journal is not None:
            self.journal.append((ids, None))

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        return self._searcher().search(vector, k)


class RedisCacheStore:
    """:class:`~llmbudget.cache.store.CacheStore`'s interface with its entries in Redis.

    - ``url``: ``redis://host:port/db`` or ``rediss://...`` (a ``?prefix=`` query option
      overrides ``prefix``); ``prefix``: the key prefix (one per app).
    - ``embedder``, ``scorer``, ``threshold``, ``ttl``, ``candidates``, ``min_cosine``,
      ``max_semantic_chars``, ``template_guard``: as :class:`CacheStore`. ``max_entries``: beyond it the least recently used entries go.
    - ``exact_search_max``: partitions up to this size are searched exactly; a bigger one
      gets a usearch HNSW index (``index_dtype``: ``"f16"`` or ``"i8"``), as in :class:`CacheStore`.
    - ``timeout``: seconds a Redis command may take before the cache counts Redis as down; after one
      that timed out or could not connect, for ``RETRY_S`` (1 s), lookups miss and answers are not stored
      without trying Redis, so calls made during an outage do not each wait for it (a paused Redis cost
      every call 1-3 s). An error Redis answers at once (a write refused under OOM) is not waited out.
    - ``clock``: the time source, epoch seconds (tests).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "llmbudget:cache:",
        embedder: Embedder | None = None,
        scorer: Scorer | None = None,
        threshold: float | None = None,
        ttl: float | None = None,
        max_entries: int | None = 100_000,
        candidates: int = 1,
        min_cosine: float | None = None,
        max_semantic_chars: int | None = DEFAULT_MAX_SEMANTIC_CHARS,
        template_guard: TemplateGuard | None = _UNSET,
        exact_search_max: int = EXACT_MAX,
        index_dtype: IndexDType = "i8",
        timeout: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from ..ledger.redis import _client, _split_url, _unavailable_errors

        check_store_options(max_semantic_chars=max_semantic_chars, max_entries=max_entries, ttl=ttl,
                            candidates=candidates, min_cosine=min_cosine, threshold=threshold)
        if scorer is not None and threshold is None and getattr(scorer, "threshold", None) is None:
            raise ValueError("a custom scorer needs a threshold: pass threshold=... or give the scorer a .threshold")
        if index_dtype not in ("f16", "i8"):
            raise ValueError(f"index_dtype={index_dtype!r}: expected 'f16' or 'i8'")
        if exact_search_max < 0:
            raise ValueError(f"exact_search_max={exact_search_max}: expected 0 or more")
        base, options = _split_url(url)
        self.url = base
        self.prefix = options.get("prefix") or prefix
        self._redis = _client(base, timeout, again_after_timeout=False)
        self._down = _unavailable_errors()
        import redis

        self._no_stream: type[Exception] = redis.ResponseError
        self._stalled: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
        if embedder is None:
            from .embedders import WordLlamaEmbedder

            embedder = WordLlamaEmbedder()
        self.embedder: Embedder = embedder
        self.dim = int(embedder.dim)
        self.max_entries = max_entries
        self.ttl = ttl
        self.candidates = candidates
        self.min_cosine = min_cosine if min_cosine is not None else (
            -1.0 if scorer is not None else DEFAULT_MIN_COSINE)
        self.max_semantic_chars = max_semantic_chars
        self.template_guard: TemplateGuard | None = TemplateGuard() if template_guard is _UNSET else template_guard
        self._scorer = scorer
        self._threshold = threshold if threshold is not None else getattr(scorer, "threshold", None)
        self._scoring_lock = threading.Lock()
        self._pack_failed = False
        self._unpack_failed = False
        self._clock = clock
        self._last_purge = float("-inf")
        self.exact_search_max = exact_search_max
        self.index_dtype: IndexDType = index_dtype
        self._lock = threading.RLock()
        self._parts: dict[int, _Local] = {}
        # Partitions found without entries, as of the stream position (the most recent last): not held, since
        # lookups meet many (earlier turns are part of the partition); the stream's next add to one forgets it.
        self._empty: OrderedDict[int, None] = OrderedDict()
        self._builds: list[threading.Thread] = []
        self._last_id = b"0-0"
        self._position = 0  # stream entries added up to self._last_id
        self._store_id: bytes | None = None
        self._warned = False
        self._retry_at = 0.0  # time.monotonic() before which Redis, found down, is not tried (lookups and stores)
        self._skipped = False  # a stream entry was skipped (logged once)
        self._closed = False
        _STORES.add(self)  # its locks are new in a forked child
        self._put = self._redis.register_script(_PUT)
        self._delete_many = self._redis.register_script(_DELETE_MANY)
        self._purge = self._redis.register_script(_PURGE)
        self._hit = self._redis.register_script(_HIT)
        self._read = self._redis.register_script(_READ)
        self._exact = self._redis.register_script(_EXACT)
        self._load = self._redis.register_script(_VECTORS)
        try:
            self._meta()
        except self._down as exc:
            self._unreachable(exc)

    # ------------------------------------------------------------------ plumbing

    def _key(self, name: str) -> str:
        return self.prefix + name

    def _forked(self) -> None:
        """In a child just forked: new locks (a thread of the parent may have held them, and it is not here)."""
        held = not self._lock.acquire(blocking=False)
        self._lock = threading.RLock()
        self._scoring_lock = threading.Lock()
        self._builds = []  # the parent's threads (a held partition's build starts again here)
        if held:  # perhaps caught mid-change: start afresh (holding nothing, the next lookup goes to the head)
            self._parts.clear()
            self._empty.clear()

    def _unreachable(self, exc: BaseException) -> None:
        if isinstance(exc, self._stalled):  # (an error Redis answered at once, OOM on a write, costs no wait)
            self._retry_at = time.monotonic() + RETRY_S
        if not self._warned:
            self._warned = True
            log.warning("llmbudget: Redis cache at %s is unreachable (%s); lookups miss and answers are not stored "
                        "until it answers again", self.url, exc)

    def _resting(self) -> bool:
        """Whether Redis was found down less than ``RETRY_S`` ago: lookups and stores skip it meanwhile."""
        return time.monotonic() < self._retry_at

    def _reachable(self) -> None:
        if self._warned:
            self._warned = False
            log.warning("llmbudget: Redis cache at %s answers again", self.url)

    def _meta(self) -> bytes:
        """The store's id (created on first use); checks the embedder. Drops local indexes when the id changed."""
        key = self._key("meta")
        pipe = self._redis.pipeline(transaction=True)
        pipe.hsetnx(key, "id", uuid.uuid4().hex)
        pipe.hsetnx(key, "embedder", str(self.embedder.name))
        pipe.hsetnx(key, "dim", str(self.dim))
        pipe.hgetall(key)
        meta = pipe.execute()[-1]
        mine = (str(self.embedder.name), str(self.dim))
        if (_text(meta.get(b"embedder")), _text(meta.get(b"dim"))) != mine and not self._redis.hlen(self._key("w")):
            self._redis.hset(key, mapping={"embedder": mine[0], "dim": mine[1]})  # an empty store takes any embedder
        elif (_text(meta.get(b"embedder")), _text(meta.get(b"dim"))) != mine:
            raise ValueError(
                f"the Redis cache {self.url} (prefix {self.prefix!r}) holds vectors from embedder "
                f"{_text(meta.get(b'embedder'))!r} ({_text(meta.get(b'dim'))}-d), not {self.embedder.name!r} "
                f"({self.dim}-d): use that embedder or another prefix"
            )
        store_id = meta[b"id"]
        if store_id != self._store_id:
            with self._lock:
                self._reset(self._stream_head())
                self._store_id = store_id
        return store_id

    def _stream_head(self) -> tuple[bytes, int]:
        """The stream's last id and how many entries were ever added to it."""
        try:
            info = self._redis.xinfo_stream(self._key("log"))
        except self._no_stream as exc:  # a ResponseError, which counts as down, but for a store with no stream yet
            if "no such key" not in str(exc).lower():
                raise
            return b"0-0", 0
        return _as_bytes(info.get("last-generated-id") or b"0-0"), int(info.get("entries-added") or 0)

    def _reset(self, head: tuple[bytes, int]) -> None:
        if self._parts:
            log.info("llmbudget: Redis cache %s: local vector indexes dropped (behind a trimmed stream or a reset "
                     "store); they reload on use", self.url)
        self._parts.clear()
        self._empty.clear()
        self._last_id, self._position = head

    @staticmethod
    def _partition_id(partition: str) -> int:
        return CacheStore._partition_id(partition)

    # Vector handling and scoring are the SQLite store's.
    _vectors: Any = CacheStore._vectors
    _unit: Any = CacheStore._unit
    _decode: Any = CacheStore._decode
    _scoring: Any = CacheStore._scoring
    _score: Any = CacheStore._score
    _best: Any = CacheStore._best
    _template_conflict: Any = CacheStore._template_conflict
    _within_length: Any = CacheStore._within_length
    query_vector: Any = CacheStore.query_vector
    _models_ready: Any = CacheStore._models_ready
    _scorer_data: Any = CacheStore._scorer_data

    @property
    def threshold(self) -> float:
        """The score a candidate needs to be a hit."""
        return self._scoring()[1]

    def sync(self) -> int:
        """Apply the stream entries written since the last call to the local indexes; returns how many."""
        with self._lock:
            applied = 0
            while True:
                _, _, count, more = self._catch_up([])
                applied += count
                if not more:
                    return applied

    def _catch_up(self, candidates: list[int]) -> tuple[set[int] | None, dict[int, list[bytes | None]], int, bool]:
        """One round trip: apply the stream entries after the last applied, and read the candidates' fields.

        Returns the partitions the entries touched (None: every local index was dropped, and the
        fields were not kept), the fields ``[p, e, x, v, d]`` by candidate id, how many entries
        were applied, and whether more are waiting. Call with ``self._lock`` held.

        A process that holds no partition has nothing to apply: it moves straight to the stream's
        head (a worker forked from a long-running master inherits an old position). One that only
        remembers empty partitions follows the stream, but jumps when a full batch shows it is far behind.
        """
        skip = not self._parts and not self._empty
        store_id, added, length, events, rows, last = self._read(
            args=[self.prefix, self._last_id, 0 if skip else _READ_BATCH, *candidates])
        if store_id is None or store_id != self._store_id:  # a new store (or Redis lost its data)
            self._meta()  # drops the local indexes
            return None, {}, 0, False
        if not skip and int(added) - int(length) > self._position:  # entries never applied were trimmed away
            self._reset(self._stream_head())
            return None, {}, 0, False
        touched: set[int] = set()
        for event_id, flat in events:  # the position moves with each entry, applied or skipped
            pid = self._apply(dict(zip(flat[::2], flat[1::2])))
            if pid is not None:
                touched.add(pid)
            self._last_id = event_id
            self._position += 1
        more = len(events) == _READ_BATCH
        if not self._parts and (skip or more):  # to the head as of this read: nothing held misses what is skipped
            self._empty.clear()
            self._last_id, self._position, more = _as_bytes(last), int(added), False
        return touched, dict(zip(candidates, rows)), len(events), more

    def _apply(self, fields: dict[bytes, bytes]) -> int | None:
        """Apply one stream entry; returns its partition id if this process holds that partition.

        An entry this process cannot use is skipped (logged once): a vector of another size (an emptied
        store taken over by another embedder keeps its id) is not searchable here, as the loader skips it.
        A held partition an entry fails to change is dropped, to reload from Redis on its next search.
        """
        try:
            pid, entry_id, op = int(fields[b"p"]), int(fields[b"i"]), fields[b"o"]
        except (KeyError, ValueError):
            self._skip("an unreadable entry")
            return None
        part = self._parts.get(pid)
        if part is None:
            if op == b"a" and pid in self._empty:
                del self._empty[pid]  # no longer known to be empty: it loads on its next lookup
                return pid
            return None
        ids = np.array([entry_id], dtype=np.int64)
        try:
            if op == b"a":
                blob = fields.get(b"v", b"")
                if len(blob) != 2 * self.dim:
                    self._skip(f"an entry whose vector is not {self.dim}-d (another embedder's)")
                    return None
                unit = self._decode([blob])
                part.add(ids, unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12))
                self._maybe_build(pid, part)
            else:
                self._remove(pid, part, ids)
        except Exception as exc:  # noqa: BLE001 - the partition reloads; the stream goes on
            self._skip(f"an entry the local index of partition {pid} could not take ({exc!r}); it reloads")
            self._parts.pop(pid, None)
        return pid

    def _skip(self, what: str) -> None:
        if not self._skipped:
            self._skipped = True
            log.warning("llmbudget: Redis cache %s: skipped %s in the stream %slog (logged once)", self.url, what,
                        self.prefix)

    def _remove(self, pid: int, part: _Local, ids: np.ndarray) -> None:
        """Remove entries from a held partition; one left without entries is let go (lock held)."""
        part.remove(ids)
        if not len(part) and self._parts.get(pid) is part:
            del self._parts[pid]
            self._note_empty(pid)

    def _note_empty(self, pid: int) -> None:
        self._empty[pid] = None
        self._empty.move_to_end(pid)
        if len(self._empty) > _EMPTY_KEEP:
            self._empty.popitem(last=False)  # forgotten: it loads again on its next lookup

    def _partition(self, pid: int) -> _Local | None:
        """The local index of a partition, loaded from Redis on first use (after a catch-up with the stream).

        None for a partition without entries (not held: remembered as empty until the stream adds to it).
        """
        part = self._parts.get(pid)
        if part is not None:
            return part
        if pid in self._empty:
            self._empty.move_to_end(pid)
            return None
        ids: list[np.ndarray] = []
        blobs: list[bytes] = []
        cursor: bytes | int = 0
        while True:  # SSCAN may return an id twice: the index adds it once
            cursor, found, blob = self._load(args=[self.prefix, pid, 2 * self.dim, cursor, _LOAD_BATCH])
            ids.append(np.array(found.split(), dtype=np.int64))
            blobs.append(blob)
            if int(cursor) == 0:
                break
        vectors = self._decode(blobs)
        if not len(vectors):
            self._note_empty(pid)
            return None
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        part = _Local(_Exact(self.dim, np.concatenate(ids), vectors))
        self._parts[pid] = part
        self._maybe_build(pid, part)
        return part

    # ------------------------------------------------------------------ HNSW builds

    def _maybe_build(self, pid: int, part: _Local) -> None:
        """Start building the partition's HNSW index in a thread if it outgrew exact search (lock held)."""
        if part.hnsw is not None or part.failed or len(part) <= self.exact_search_max:
            return
        if part.journal is not None and part.builder == os.getpid():
            return  # under way
        if part.retry_at > time.monotonic():
            return
        assert part.exact is not None
        ids, vectors = part.exact.items()  # copies: the build reads them without the lock
        thread = threading.Thread(target=self._build, args=(pid, part, ids, vectors), daemon=True,
                                  name=f"llmbudget-cache-index-{pid}")
        try:
            thread.start()
        except Exception as exc:  # noqa: BLE001 - RuntimeError("can't start new thread"): exact search serves
            part.journal, part.retry_at = None, time.monotonic() + _BUILD_RETRY_S
            log.warning("cache: the thread to build the HNSW index of partition %d could not start (%s); exact "
                        "search serves, a build is tried again in %.0f s", pid, exc, _BUILD_RETRY_S)
            return
        # Under the lock the build cannot take over before this: it replays a journal that starts here.
        part.journal, part.builder = [], os.getpid()
        self._builds = [t for t in self._builds if t.is_alive()] + [thread]

    def _build(self, pid: int, part: _Local, ids: np.ndarray, vectors: np.ndarray) -> None:
        started = time.perf_counter()
        try:
            index = self._new_index(ids, vectors)
        except Exception as exc:  # noqa: BLE001 - exact search goes on serving
            log.warning("cache: building the HNSW index of partition %d failed (%s); it stays on exact search",
                        pid, exc)
            with self._lock:
                part.journal, part.failed = None, True
            return
        with self._lock:
            if self._parts.get(pid) is not part or part.journal is None or part.builder != os.getpid():
                return  # the local indexes were dropped meanwhile
            try:
                for changed, added in part.journal:  # what the stream brought during the build, in order
                    if added is None:
                        index.remove(changed)
                    else:
                        index.add(changed, added)
            except Exception as exc:  # noqa: BLE001 - the exact index has every change: it goes on serving
                log.warning("cache: the HNSW index of partition %d could not take the changes made during its "
                            "build (%s); it stays on exact search", pid, exc)
                part.journal, part.failed = None, True
                return
            part.hnsw, part.exact, part.journal = index, None, None
        log.info("cache: partition %d (%d vectors) now searched by its HNSW index (built in %.1f s)",
                 pid, len(index), time.perf_counter() - started)

    def _new_index(self, ids: np.ndarray, vectors: np.ndarray) -> _Hnsw:
        """An HNSW index of the vectors, built on one core (the other cores keep serving)."""
        index = _Hnsw.new(self.dim, self.index_dtype)
        if len(ids):
            index.index.add(ids.astype(np.uint64), np.ascontiguousarray(vectors, dtype=np.float32), threads=1)
        return index

    def _wait_for_builds(self, timeout: float | None = None) -> None:
        """Wait for the HNSW builds under way (tests, benchmarks)."""
        for thread in list(self._builds):
            thread.join(timeout)

    def _loaded(self) -> dict[int, tuple[str, int]]:
        """``{partition id: (kind, size)}`` of the partitions this process holds."""
        with self._lock:
            return {pid: (part.kind, len(part)) for pid, part in self._parts.items()}

    def _entry(self, entry_id: int, values: list[bytes | None]) -> Entry:
        p, k, t, m, x, r, c, e, lh, h, s = values
        return Entry(
            id=entry_id, partition=_text(p), exact_key=_text(k), tenant=_text(t), model=_text(m), text=_text(x),
            response=_text(r), created=float(c or 0), expires=float(e) if e else None,
            last_hit=float(lh) if lh else None, hits=int(h or 0), size=int(s or 0),
        )

    # ------------------------------------------------------------------ public API

    def get_exact(self, partition: str, exact_key: str) -> Entry | None:
        """The live entry stored under ``exact_key`` in ``partition``, or None (also when Redis is down)."""
        if self._resting():
            return None
        try:
            found = self._get_exact(partition, exact_key)
        except self._down as exc:
            self._unreachable(exc)
            return None
        self._reachable()
        return found

    def _get_exact(self, partition: str, exact_key: str) -> Entry | None:
        found = self._exact(args=[self.prefix, self._partition_id(partition), exact_key])  # one round trip
        if found is None:
            return None
        raw, values = found
        if values[0] is None or _text(values[0]) != partition or _text(values[1]) != exact_key:
            return None
        entry = self._entry(int(raw), values)
        if entry.expires is not None and entry.expires <= self._clock():
            return None
        return entry

    def search(self, partition: str, text: str, vector: Any | None = None) -> Hit | None:
        """The best live entry of ``partition`` whose score reaches the threshold, or None (also when Redis is down)."""
        if not self._within_length(text) or self._resting():
            return None
        text = tokenizable(text)  # as stored
        query = self._unit(self.embedder.embed([text])[0] if vector is None else vector)
        if query is None:
            return None
        try:
            found = self._search(partition, text, query)
        except self._down as exc:
            self._unreachable(exc)
            return None
        self._reachable()
        return found

    def _search(self, partition: str, text: str, query: np.ndarray) -> Hit | None:
        pid = self._partition_id(partition)
        with self._lock:
            # The nearest entries as this process knows them, fetched in the round trip that reads
            # the stream: if the stream brought nothing for this partition, they are the nearest.
            part = self._parts.get(pid)
            ids = near_ids(part.search(query, self.candidates), self.min_cosine) if part is not None else []
            touched, rows, _, more = self._catch_up(ids)
            while more:
                _, _, _, more = self._catch_up([])
                touched = None
            if part is None or touched is None or pid in touched:
                part = self._partition(pid)
                ids = near_ids(part.search(query, self.candidates), self.min_cosine) if part is not None else []
                if touched is None:
                    rows = {}
            if part is not None:
                self._maybe_build(pid, part)
        if not ids:
            return None
        missing = [entry_id for entry_id in ids if entry_id not in rows]
        if missing:
            pipe = self._redis.pipeline(transaction=False)
            for entry_id in missing:
                pipe.hmget(self._key(f"e:{entry_id}"), [b"p", b"e", b"x", b"v", b"d"])
            rows.update(zip(missing, pipe.execute()))
        now = self._clock()
        live: list[tuple[int, str, bytes, bytes | None]] = []
        gone: list[int] = []
        for entry_id in ids:
            p, e, x, v, d = rows[entry_id]
            if p is None:
                gone.append(entry_id)  # expired in Redis (its deletion is logged by the next purge)
            elif _text(p) != partition:  # a 63-bit hash collision; never served across partitions
                log.warning("cache: entry %d of another partition shares this partition's hash; ignored", entry_id)
            elif e and float(e) <= now:
                continue
            elif v:
                live.append((entry_id, _text(x), v, d))  # d: the scorer's data, absent from older entries
        if gone:
            with self._lock:
                if part is not None and self._parts.get(pid) is part:
                    self._remove(pid, part, np.array(gone, dtype=np.int64))
        if not live:
            return None
        chosen = self._best(text, query, [row[1] for row in live], [row[2] for row in live], [row[3] for row in live])
        if chosen is None:
            return None
        best, score, cosine = chosen
        values = self._redis.hmget(self._key(f"e:{live[best][0]}"), _FIELDS)
        if values[0] is None or _text(values[0]) != partition:  # deleted meanwhile
            return None
        return Hit(self._entry(live[best][0], values), score, cosine)

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
        """Store an answer (replacing the one under the same ``exact_key``); returns the entry id, 0 when Redis is down."""
        return self.put_many(
            [{"partition": partition, "exact_key": exact_key, "text": text, "response": response, "tenant": tenant,
              "model": model, "vector": vector, "semantic": semantic, "ttl": ttl}]
        )[0]

    def put_many(self, items: Iterable[Mapping[str, Any]]) -> list[int]:
        """Store many answers (each a mapping of :meth:`put`'s arguments), embedding in batches; returns their ids.

        Each answer is one atomic script; a batch goes to Redis in one round trip. Ids are 0 when Redis is down.
        """
        rows = list(items)
        checked = [row_fields(row, self.ttl) for row in rows]  # every answer checked before any is stored
        if self._resting():
            return [0] * len(rows)
        ids: list[int] = []
        for start in range(0, len(rows), _PUT_BATCH):
            chunk, fields = rows[start : start + _PUT_BATCH], checked[start : start + _PUT_BATCH]
            semantic = [i for i, row in enumerate(chunk)
                        if row.get("semantic", True) and self._within_length(fields[i][2])]
            texts = [fields[i][2] for i in semantic]
            blobs: list[bytes | None] = [None] * len(chunk)
            extra: list[bytes | None] = [None] * len(chunk)
            for i, blob, packed in zip(semantic, self._vectors(texts, [chunk[i].get("vector") for i in semantic]),
                                       self._scorer_data(texts)):
                blobs[i] = blob
                extra[i] = packed if blob is not None else None  # no vector: never a semantic candidate
            now = self._clock()
            scripts = [self._put_args(answer, blob, packed, now) for answer, blob, packed in zip(fields, blobs, extra)]
            try:
                if len(scripts) == 1:
                    replies = [self._put(args=scripts[0])]
                else:
                    pipe = self._redis.pipeline(transaction=False)
                    for args in scripts:
                        self._put(args=args, client=pipe)
                    replies = pipe.execute()
            except self._down as exc:
                self._unreachable(exc)
                ids += [0] * len(chunk)
                continue
            self._reachable()
            evicted = sum(int(reply[1]) for reply in replies)
            if evicted:
                log.debug("cache: evicted %d entries (lru, cap %s)", evicted, self.max_entries)
            ids += [int(reply[0]) for reply in replies]
        if rows and self._clock() - self._last_purge >= _PURGE_INTERVAL:
            # Redis expires an entry's hash, not its place in the LRU, id and partition sets or the byte count:
            # without a cap (whose every put purges) they were left for good
            self.purge()
        return ids

    def _put_args(self, answer: Answer, blob: bytes | None, scorer_data: bytes | None, now: float) -> list[Any]:
        # a lone surrogate (a JSON "\ud800" escape) is not text the client sends: the text is stored with U+FFFD
        # as search reads it (row_fields), a tenant or model as its surrogate-escaped bytes (read back as they were)
        partition, exact_key, text, response, tenant, model, ttl = answer
        size = sum(len(s.encode("utf-8", "surrogatepass")) for s in (exact_key, text, response, tenant, model))
        size += (len(blob) if blob is not None else 0) + (len(scorer_data) if scorer_data is not None else 0)
        return [self.prefix, STREAM_MAXLEN, self._partition_id(partition), _wire(partition), exact_key, _wire(tenant),
                _wire(model), text, response, blob or b"", repr(now), 0 if ttl is None else max(1, round(ttl * 1000)), size,
                self.max_entries or 0, scorer_data or b""]

    def record_hit(self, entry_id: int) -> None:
        """Count a hit on ``entry_id`` (LRU orders by it)."""
        if self._resting():
            return
        try:
            self._hit(args=[self.prefix, int(entry_id), repr(self._clock())])
        except self._down as exc:
            self._unreachable(exc)

    def invalidate(self, *, tenant: str | None = None, model: str | None = None) -> int:
        """Delete the entries of ``tenant``, of ``model``, of both, or (no argument) all; returns how many.

        Every process sees the deletions through the stream. When Redis stops answering part way, the
        entries deleted so far are counted, a warning says the rest remain, and calling it again finishes.
        """
        done = [0]
        try:
            self._invalidate(tenant, model, done)
        except self._down as exc:
            self._unreachable(exc)
            log.warning("llmbudget: Redis cache at %s: invalidation (tenant=%r, model=%r) stopped after %d "
                        "entries (%s); the rest remain until it is called again", self.url, tenant, model, done[0], exc)
            return done[0]
        self._reachable()
        log.info("cache: invalidated %d entries (tenant=%r, model=%r)", done[0], tenant, model)
        return done[0]

    def _invalidate(self, tenant: str | None, model: str | None, done: list[int]) -> None:
        """Delete in chunks of 500, counting into ``done[0]`` as each chunk is deleted."""
        ids = [int(m) for m in self._redis.hkeys(self._key("w"))]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            if tenant is not None or model is not None:
                pipe = self._redis.pipeline(transaction=False)
                for entry_id in chunk:
                    pipe.hmget(self._key(f"e:{entry_id}"), [b"t", b"m"])
                chunk = [
                    entry_id for entry_id, (t, m) in zip(chunk, pipe.execute())
                    if t is None or ((tenant is None or _text(t) == tenant) and (model is None or _text(m) == model))
                ]  # entries already expired (t is None) go too
            if chunk:
                done[0] += int(self._delete_many(args=[self.prefix, STREAM_MAXLEN, *chunk]))

    def purge(self) -> int:
        """Delete expired entries now (also done by every put under a cap, and by a put a minute after the
        last purge); returns how many."""
        self._last_purge = now = self._clock()
        purged = 0
        try:
            while True:  # in batches, each its own script
                deleted, seen = self._purge(args=[self.prefix, STREAM_MAXLEN, repr(now), _PURGE_BATCH])
                purged += int(deleted)
                if int(seen) < _PURGE_BATCH:
                    return purged
        except self._down as exc:
            self._unreachable(exc)
            return purged

    def stats(self) -> dict[str, int]:
        """``{"entries", "bytes", "partitions"}`` of the live store (expired entries purged first)."""
        self.purge()
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hlen(self._key("w"))
            pipe.get(self._key("bytes"))
            pipe.hvals(self._key("w"))
            entries, size, where = pipe.execute()
        except self._down as exc:
            self._unreachable(exc)
            return {"entries": 0, "bytes": 0, "partitions": 0}
        partitions = {w.split(b"\n", 1)[0] for w in where}
        return {"entries": int(entries), "bytes": int(size or 0), "partitions": len(partitions)}

    def save_index(self) -> int:
        """Nothing to save: the local indexes are rebuilt from Redis."""
        return 0

    def clear(self) -> None:
        """Delete every key under this store's prefix (tests, tear-down)."""
        keys = list(self._redis.scan_iter(match=f"{self.prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            self._redis.delete(*keys[start : start + 1000])
        with self._lock:
            self._parts.clear()
            self._empty.clear()
            self._last_id, self._position = b"0-0", 0
            self._store_id = None

    def close(self) -> None:
        """Close the connections."""
        if not self._closed:
            self._closed = True
            self._redis.close()

    def __enter__(self) -> RedisCacheStore:  # noqa: PYI034 - typing.Self needs 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisCacheStore({self.url!r}, prefix={self.prefix!r})"
