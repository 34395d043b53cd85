"""A FastAPI app on anthropic.AsyncAnthropic gets budgets, spend headers, the cache and routing from the
middleware and a policy file, with no change to its code (fixtures/apps/anthropic_app.py), against the
real local Messages server."""

from __future__ import annotations

import importlib
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import llmbudget
from llmbudget.pricing import Pricing
from llmbudget.providers.messages import messages_usage

APPS = Path(__file__).resolve().parents[2] / "fixtures" / "apps"


@pytest.fixture
def app(tmp_path, monkeypatch, messages_server, engine):
    policy = tmp_path / "llmbudget.toml"
    policy.write_text(textwrap.dedent(f"""\
        headers = true
        trust_tenant_header = true
        [[budgets]]
        usd = "0.0002"
        per = "tenant"
        period = "day"
        [cache]
        path = "{tmp_path / 'cache'}"
        [routing]
        threshold = 0.2
        [routing.tiers]
        small = {{ model = "gpt-4.1-nano", anthropic = "claude-haiku-4-5" }}
        large = ""
        """))
    monkeypatch.setenv("LLMBUDGET_POLICY", str(policy))
    monkeypatch.setenv("ANTHROPIC_BASE_URL", messages_server)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    monkeypatch.syspath_prepend(str(APPS))
    sys.modules.pop("anthropic_app", None)
    module = importlib.import_module("anthropic_app")
    try:
        yield module.app
    finally:
        sys.modules.pop("anthropic_app", None)
        llmbudget.uninstall()


def test_budgets_headers_cache_and_routing_reach_an_unchanged_anthropic_app(app):
    client = TestClient(app)
    first = client.post("/ask", json={"prompt": "Say hi"}, headers={"x-tenant-id": "acme"})
    assert first.status_code == 200, first.text
    body = first.json()
    # routed: a short greeting goes to the small tier's Claude model
    assert body["model"] == "claude-haiku-4-5" and first.headers["x-llmbudget-routed"] == "1"
    cost = Pricing().cost(messages_usage(body["usage"]), model="claude-haiku-4-5").usd
    assert Decimal(first.headers["x-llmbudget-cost-usd"]) == cost > 0
    as_asked = Pricing().cost(messages_usage(body["usage"]), model="claude-sonnet-4-5").usd
    assert Decimal(first.headers["x-llmbudget-routing-saved-usd"]) == as_asked - cost
    # the same question again: the semantic cache answers, JSON and stream, in Anthropic's shape
    again = client.post("/ask", json={"prompt": "Say hi"}, headers={"x-tenant-id": "acme"})
    streamed = client.post("/ask/stream", json={"prompt": "Say hi"}, headers={"x-tenant-id": "acme"})
    assert again.json()["text"] == streamed.json()["text"] == body["text"]
    assert again.headers["x-llmbudget-cache-hits"] == "1" and Decimal(again.headers["x-llmbudget-cost-usd"]) == 0
    # another tenant never sees acme's cached answer
    other = client.post("/ask", json={"prompt": "Say hi"}, headers={"x-tenant-id": "globex"})
    assert other.headers["x-llmbudget-cache-hits"] == "0"
    # the tenant's daily budget ($0.0002) runs out: a 402 problem, before anything is sent
    statuses = [client.post("/ask", json={"prompt": f"Write one line about the number {n}", "max_tokens": 48},
                            headers={"x-tenant-id": "acme"}).status_code for n in range(40)]
    assert 402 in statuses and set(statuses) <= {200, 402}
    refused = client.post("/ask", json={"prompt": "one more", "max_tokens": 48}, headers={"x-tenant-id": "acme"})
    assert refused.status_code == 402 and refused.headers["x-llmbudget-refused"] == "budget"
    assert refused.json()["tenant"] == "acme"
