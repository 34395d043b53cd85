"""Prometheus metrics of LLM spend, fed by an :class:`~llmbudget.Engine` observer.

Needs ``prometheus-client`` (``pip install 'llmbudget[prometheus]'``); nothing in
the core imports this module. Labels are bounded: the first ``max_tenants``
tenants seen (plus those listed in ``tenants``) get their own label, later ones
are counted as ``"other"`` (as is a tenant named ``other``); models likewise with ``max_models``.

With ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn with several workers),
:meth:`Metrics.render` aggregates every worker's values, and the workers share
which values got a label (a file in that folder), so the bounds hold for all of
them together and each tenant is counted under one label.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "llmbudget's metrics need prometheus-client: pip install 'llmbudget[prometheus]' (or prometheus-client)"
    ) from exc

if TYPE_CHECKING:
    from .calls import SpendRecord
    from .ledger.budgets import Refusal
    from .pipeline import Engine

__all__ = ["OTHER", "Metrics"]

#: The label value of tenants and models beyond the cardinality bounds.
OTHER = "other"


class _Bounded:
    """Maps values to labels: the first ``limit`` distinct values (and ``always``) keep theirs.

    ``shared``: a file that every process of a multiprocess deployment reads and appends to (one JSON
    string a line, under an exclusive ``flock``), so that the first ``limit`` values seen by any of
    them keep their label in all of them."""

    def __init__(self, limit: int, always: Iterable[str] = (), shared: Path | None = None) -> None:
        self.limit = limit
        self.always = frozenset(always)
        self._seen: set[str] = set()
        self._full = False  # every label is taken: nothing new gets one (the file only grows)
        self._lock = threading.Lock()
        self._shared = shared

    def __call__(self, value: str | None, default: str) -> str:
        value = value or default
        if value in self.always or value in self._seen:
            return value
        if value == OTHER or self._full:
            return OTHER
        with self._lock:
            if self._shared is not None:
                return self._claim_shared(value)
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
            self._full = True
        return OTHER

    def _claim_shared(self, value: str) -> str:
        """Under the file's lock: the values labelled so far, and ``value`` added when there is room."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no multiprocess metrics in prometheus-client either
            fcntl = None  # type: ignore[assignment]
        with open(self._shared, "a+", encoding="utf-8") as file:  # type: ignore[arg-type]
            if fcntl is not None:
                fcntl.flock(file, fcntl.LOCK_EX)
            file.seek(0)
            taken = [json.loads(line) for line in file.read().splitlines() if line.strip()]
            self._seen.update(taken[: self.limit])
            if value not in self._seen and len(taken) < self.limit:
                file.write(json.dumps(value) + "\n")
                file.flush()
                self._seen.add(value)
            if len(self._seen) >= self.limit:
                self._full = True
        return value if value in self._seen else OTHER


class Metrics:
    """Counters of LLM calls, tokens, USD spent and saved, cache hits, routed and capped calls, refusals.

    Keyword-only options: ``registry`` (default: a registry of its own),
    ``namespace`` (metric name prefix), ``max_tenants``, ``tenants`` (always
    labelled), ``max_models``.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        namespace: str = "llmbudget",
        max_tenants: int = 100,
        tenants: Iterable[str] = (),
        max_models: int = 50,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        shared = Path(folder) if folder else None
        self._tenant = _Bounded(max_tenants, tenants, shared and shared / f"{namespace}_tenant_labels.jsonl")
        self._model = _Bounded(max_models, (), shared and shared / f"{namespace}_model_labels.jsonl")
        self._engines: list[Engine] = []
        # One bound method, so that Engine.remove_observer (which compares by identity) finds it.
        self._observer = self.observe
        labels = ("tenant", "model")

        def counter(name: str, doc: str, names: tuple[str, ...] = labels) -> Counter:
            return Counter(name, doc, names, namespace=namespace, registry=self.registry)

        self.calls = counter("calls", "LLM call attempts, by outcome (ok or error)", (*labels, "outcome"))
        self.tokens = counter("tokens", "Tokens used, by kind (input, cached_input, cache_write, output, reasoning)",
                              (*labels, "kind"))
        self.spent = counter("spent_usd", "USD spent on LLM calls")
        self.saved = counter("saved_usd", "USD saved by the cache (a hit's price had it gone to the provider)")
        self.routing_saved = counter("routing_saved_usd",
                                     "USD saved by routing: calls priced at the model asked for minus what they cost")
        self.escalation_cost = counter("routing_escalation_usd",
                                       "USD routing gave back when a weak answer was retried on the strong tier, "
                                       "or when a tier cost more than the model asked for (net routing saving: "
                                       "routing_saved_usd minus this)")
        self.prompt_cache_saved = counter("prompt_cache_saved_usd",
                                          "USD the provider's prompt cache took off calls (cached input tokens)")
        self.prompt_cache_premium = counter("prompt_cache_write_premium_usd",
                                            "USD calls paid over the input price to write the provider's prompt cache "
                                            "(Anthropic), net of what their own reads saved")
        self.deferred_saved = counter("deferred_saved_usd", "USD deferral (flex, Batch API) took off calls")
        self.cache_hits = counter("cache_hits", "Calls answered from the cache")
        self.routed = counter("routed", "Calls sent to another model than the one asked for")
        self.capped = counter("capped", "Calls whose output was capped")
        self.refusals = counter("refusals", "Calls refused by a budget", ("tenant", "budget"))
        self.store_unavailable = counter("budget_store_unavailable",
                                         "Calls refused because a fail-closed budget store was unavailable (503)",
                                         ("tenant",))

    def observe(self, record: SpendRecord) -> None:
        """Count one settled attempt (an :class:`~llmbudget.Engine` observer)."""
        tenant = self._tenant(record.tenant, "default")
        model = self._model(record.model, "unknown")
        usage = record.usage
        self.calls.labels(tenant, model, "error" if record.error else "ok").inc()
        for kind, count in (("input", usage.input_tokens), ("cached_input", usage.cached_input_tokens),
                            ("cache_write", usage.cache_write_tokens), ("output", usage.output_tokens),
                            ("reasoning", usage.reasoning_tokens)):
            if count:
                self.tokens.labels(tenant, model, kind).inc(count)
        if record.cost_usd:
            self.spent.labels(tenant, model).inc(float(record.cost_usd))
        if record.saved_usd:
            self.saved.labels(tenant, model).inc(float(record.saved_usd))
        if record.routing_saved_usd > 0:
            self.routing_saved.labels(tenant, model).inc(float(record.routing_saved_usd))
        elif record.routing_saved_usd < 0:
            self.escalation_cost.labels(tenant, model).inc(float(-record.routing_saved_usd))
        if record.prompt_cache_saved_usd > 0:
            self.prompt_cache_saved.labels(tenant, model).inc(float(record.prompt_cache_saved_usd))
        elif record.prompt_cache_saved_usd < 0:  # a counter only goes up: the premium has its own
            self.prompt_cache_premium.labels(tenant, model).inc(float(-record.prompt_cache_saved_usd))
        if record.deferred_saved_usd:
            self.deferred_saved.labels(tenant, model).inc(float(record.deferred_saved_usd))
        for flag, counter in ((record.from_cache, self.cache_hits), (record.routed, self.routed),
                              (record.capped, self.capped)):
            if flag:
                counter.labels(tenant, model).inc()

    def refusal(self, refusal: Refusal) -> None:
        """Count one budget refusal."""
        self.refusals.labels(self._tenant(refusal.tenant, "default"), refusal.budget).inc()

    def store_outage(self, tenant: str | None) -> None:
        """Count one call refused while a fail-closed budget store was unavailable."""
        self.store_unavailable.labels(self._tenant(tenant, "default")).inc()

    def attach(self, engine: Engine) -> None:
        """Observe every attempt ``engine`` settles (once per engine)."""
        if any(e is engine for e in self._engines):
            return
        engine.add_observer(self._observer)
        self._engines.append(engine)

    def detach(self) -> None:
        """Stop observing every engine :meth:`attach` was given."""
        while self._engines:
            self._engines.pop().remove_observer(self._observer)

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type."""
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return prometheus_client.generate_latest(registry), prometheus_client.CONTENT_TYPE_LATEST
