"""Prometheus metrics from spend records: counters, bounded labels, refusals."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import llmbudget
from llmbudget.metrics import OTHER, Metrics


def record(tenant: str | None, model: str = "gpt-4o-mini", **changes: object) -> llmbudget.SpendRecord:
    values: dict[str, object] = {
        "time": time.time(), "endpoint": "chat.completions", "base_url": "http://x/v1", "model_requested": model,
        "model_sent": model, "model_answered": model,
        "usage": llmbudget.Usage(input_tokens=10, cached_input_tokens=4, output_tokens=5, reasoning_tokens=2),
        "cost_usd": Decimal("0.000003"), "latency_s": 0.1, "tenant": tenant,
    }
    values.update(changes)
    return llmbudget.SpendRecord(**values)  # type: ignore[arg-type]


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(f"llmbudget_{name}", labels)


def test_counts_calls_tokens_spend_and_flags() -> None:
    metrics = Metrics()
    metrics.observe(record("acme"))
    metrics.observe(record("acme", error="HTTP 500", cost_usd=Decimal(0)))
    metrics.observe(record("acme", from_cache=True, saved_usd=Decimal("0.00001"), cost_usd=Decimal(0)))
    metrics.observe(record("acme", routed=True, capped=True, prompt_cache_saved_usd=Decimal("0.000002")))
    labels = {"tenant": "acme", "model": "gpt-4o-mini"}
    assert value(metrics, "prompt_cache_saved_usd_total", **labels) == 0.000002
    assert value(metrics, "calls_total", **labels, outcome="ok") == 3
    assert value(metrics, "calls_total", **labels, outcome="error") == 1
    assert value(metrics, "tokens_total", **labels, kind="input") == 40
    assert value(metrics, "tokens_total", **labels, kind="cached_input") == 16
    assert value(metrics, "tokens_total", **labels, kind="output") == 20
    assert value(metrics, "tokens_total", **labels, kind="reasoning") == 8
    assert abs(value(metrics, "spent_usd_total", **labels) - 0.000006) < 1e-12  # type: ignore[operator]
    assert value(metrics, "saved_usd_total", **labels) == 0.00001
    for name in ("cache_hits_total", "routed_total", "capped_total"):
        assert value(metrics, name, **labels) == 1


def test_routing_savings_and_what_escalations_gave_back() -> None:
    metrics = Metrics()
    metrics.observe(record("acme", routed=True, routing_saved_usd=Decimal("0.00004")))
    metrics.observe(record("acme", routed=True, routing_saved_usd=Decimal("0.00003")))  # its answer escalated:
    metrics.observe(record("acme", model="gpt-4o", routing_saved_usd=Decimal("-0.000033")))  # the retry takes it back
    assert value(metrics, "routing_saved_usd_total", tenant="acme", model="gpt-4o-mini") == pytest.approx(0.00007)
    assert value(metrics, "routing_escalation_usd_total", tenant="acme", model="gpt-4o") == 0.000033
    assert value(metrics, "saved_usd_total", tenant="acme", model="gpt-4o-mini") is None  # the cache saved nothing


def test_anthropic_cache_writes_and_deferral_are_counted() -> None:
    """A call that only wrote Anthropic's prompt cache saved a negative amount: a counter only goes up, so the
    premium has its own; what deferral saved has one too."""
    metrics = Metrics()
    writes = llmbudget.Usage(input_tokens=3000, cache_write_tokens=2900, output_tokens=5)
    metrics.observe(record("acme", model="claude-haiku-4-5", usage=writes, prompt_cache_saved_usd=Decimal("-0.000725")))
    metrics.observe(record("acme", model="claude-haiku-4-5", prompt_cache_saved_usd=Decimal("0.0026")))
    metrics.observe(record("acme", deferred="batch", deferred_saved_usd=Decimal("0.000002")))
    claude = {"tenant": "acme", "model": "claude-haiku-4-5"}
    assert value(metrics, "prompt_cache_write_premium_usd_total", **claude) == 0.000725
    assert value(metrics, "prompt_cache_saved_usd_total", **claude) == 0.0026
    assert value(metrics, "tokens_total", **claude, kind="cache_write") == 2900
    assert value(metrics, "deferred_saved_usd_total", tenant="acme", model="gpt-4o-mini") == 0.000002


def test_labels_are_bounded() -> None:
    metrics = Metrics(max_tenants=2, tenants=["vip"], max_models=1)
    for tenant in ("a", "b", "c", "d", "vip", None):
        metrics.observe(record(tenant))
    metrics.observe(record("a", model="gpt-4o"))
    tenants = {s.labels["tenant"] for m in metrics.registry.collect() for s in m.samples if "tenant" in s.labels}
    assert tenants == {"a", "b", OTHER, "vip"}
    assert value(metrics, "calls_total", tenant=OTHER, model="gpt-4o-mini", outcome="ok") == 3  # c, d, default
    assert value(metrics, "calls_total", tenant="a", model=OTHER, outcome="ok") == 1


def test_workers_sharing_a_multiprocess_folder_share_the_label_bounds(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Under gunicorn each worker has its own Metrics: the first tenants seen by any worker keep a label in
    all of them, so the bound holds for the whole deployment and no tenant is split between its label and other."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    first, second = Metrics(max_tenants=2), Metrics(max_tenants=2)
    for tenant in ("a", "b", "c"):
        first.observe(record(tenant))
    for tenant in ("c", "d", "b"):
        second.observe(record(tenant))
    tenants = {s.labels["tenant"] for m in (first, second) for f in m.registry.collect() for s in f.samples}
    assert tenants == {"a", "b", OTHER}
    assert value(second, "calls_total", tenant="b", model="gpt-4o-mini", outcome="ok") == 1
    assert Metrics(max_tenants=2)._tenant("a", "default") == "a"  # a later worker (a restart) reads the file


def test_a_tenant_named_like_the_overflow_label_never_takes_a_label_of_its_own() -> None:
    metrics = Metrics(max_tenants=1)
    metrics.observe(record(OTHER))
    metrics.observe(record("acme"))
    assert value(metrics, "calls_total", tenant="acme", model="gpt-4o-mini", outcome="ok") == 1


def test_refusals_and_engine_observers() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry=registry, namespace="app")
    refusal = llmbudget.Refusal("tenant/day", "tenant", "day", Decimal(1), Decimal(1), Decimal(0), Decimal("0.1"),
                                None, "acme")
    metrics.refusal(refusal)
    assert registry.get_sample_value("app_refusals_total", {"tenant": "acme", "budget": "tenant/day"}) == 1
    engine = llmbudget.Engine()
    metrics.attach(engine)
    metrics.attach(engine)  # once per engine
    engine.record(record("acme"), None)
    assert registry.get_sample_value("app_calls_total", {"tenant": "acme", "model": "gpt-4o-mini",
                                                         "outcome": "ok"}) == 1
    metrics.detach()
    engine.record(record("acme"), None)
    assert registry.get_sample_value("app_calls_total", {"tenant": "acme", "model": "gpt-4o-mini",
                                                         "outcome": "ok"}) == 1
    body, content_type = metrics.render()
    assert b"app_refusals_total" in body and content_type.startswith("text/plain")
