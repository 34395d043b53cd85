"""End to end: the example apps under uvicorn and gunicorn, real HTTP, a real LLM server behind them."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx2
import pytest
from app_servers import Server

import llmbudget

HI = {"prompt": "Say hi", "max_tokens": 4}
# gpt-4o-mini list prices (USD per 1M tokens), as genai-prices has them.
INPUT, OUTPUT = Decimal("0.15"), Decimal("0.6")


@pytest.fixture(params=["fastapi", "flask_sync"])
def server(request: pytest.FixtureRequest) -> Server:
    """An app server whose policy uses real prices."""
    return request.getfixturevalue(f"{request.param}_server")


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def next_utc_midnight() -> str:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today + timedelta(days=1)).isoformat().replace("+00:00", "Z")


def test_a_tenant_day_budget_refuses_with_402_at_the_right_moment(server: Server) -> None:
    who = tenant()
    answers = []
    with httpx2.Client(base_url=server.url, timeout=60) as client:
        for _ in range(12):
            response = client.post("/chat", json=HI, headers={"x-tenant-id": who, "x-request-id": f"req-{_}"})
            if response.status_code != 200:
                break
            answers.append(response.json())
        else:
            pytest.fail("twelve calls never exhausted a $0.00003 budget")
        other = client.post("/chat", json=HI, headers={"x-tenant-id": tenant()})

    assert response.status_code == 402, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    records = server.records(who)
    spent = sum((r.cost_usd for r in records), Decimal(0))
    worst_case = Decimal(repr(problem["estimated_cost_usd"]))
    # Refused exactly when the next call's worst case no longer fits; the call before it did fit.
    assert spent + worst_case > server.limit
    assert spent - records[-1].cost_usd + worst_case <= server.limit
    assert len(answers) >= 3
    assert problem == {
        "type": "urn:llmbudget:budget-exceeded",
        "title": "LLM budget exceeded",
        "status": 402,
        "detail": problem["detail"],
        "budget": "tenant/day",
        "per": "tenant",
        "period": "day",
        "tenant": who,
        "limit_usd": float(server.limit),
        "spent_usd": float(spent),
        "reserved_usd": 0.0,
        "remaining_usd": float(server.limit - spent),
        "estimated_cost_usd": problem["estimated_cost_usd"],
        "resets_at": next_utc_midnight(),
        "request_id": f"req-{len(answers)}",
    }
    assert "tenant/day" in problem["detail"] and who in problem["detail"]
    assert 0 < int(response.headers["retry-after"]) <= 86400
    # The refused call never reached the LLM server; the ledger matches what the server reported.
    assert len(records) == len(answers)
    for answer, record in zip(answers, records):
        usage = answer["usage"]
        assert (record.usage.input_tokens, record.usage.output_tokens) == (
            usage["prompt_tokens"], usage["completion_tokens"])
        assert record.cost_usd == (usage["prompt_tokens"] * INPUT + usage["completion_tokens"] * OUTPUT) / 1_000_000
        assert (record.tenant, record.request_id, record.status, record.estimated) == (
            who, answer["request_id"], 200, False)
    assert other.status_code == 200  # another tenant still has its own budget


def test_a_streamed_answer_passes_through_and_is_recorded(server: Server) -> None:
    who = tenant()
    with httpx2.Client(base_url=server.url, timeout=60) as client, client.stream(
        "POST", "/chat/stream", json={"prompt": "Say hi", "max_tokens": 6}, headers={"x-tenant-id": who}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        chunks = list(response.iter_text())
    assert "".join(chunks).strip()
    [record] = server.records(who)
    # The local server reports no usage in streams: the output is estimated from the text.
    assert record.endpoint == "chat.completions" and record.estimated and record.usage.output_tokens > 0


def test_ordinary_errors_pass_through_untouched(server: Server) -> None:
    response = httpx2.get(server.url + "/boom", timeout=30)
    assert response.status_code == 500
    assert "problem" not in response.headers.get("content-type", "")


def test_fastapi_routes_background_tasks_and_headers(fastapi_server: Server) -> None:
    who = tenant()
    with httpx2.Client(base_url=fastapi_server.url, timeout=60) as client:
        # A route that turns the middleware off: no scope, whatever the headers say.
        assert client.get("/admin/scope", headers={"x-tenant-id": who}).json()["tenant"] is None
        # A route whose per-request budget refuses any call before it is sent.
        limited = client.post("/limited/chat", json=HI, headers={"x-tenant-id": who})
        assert limited.status_code == 402
        assert (limited.json()["per"], limited.json()["period"], limited.json()["resets_at"]) == (
            "request", None, None)
        assert "retry-after" not in limited.headers
        # Spend headers only on the route that turns them on.
        plain = client.post("/chat", json=HI, headers={"x-tenant-id": who})
        assert not any(name.startswith("x-llmbudget") for name in plain.headers)
        shown = client.post("/chat/sync", json=HI, headers={"x-tenant-id": who, "x-request-id": "abc-1"})
        usage = shown.json()["usage"]
        assert shown.headers["x-request-id"] == "abc-1"
        assert shown.headers["x-llmbudget-calls"] == "1"
        assert Decimal(shown.headers["x-llmbudget-cost-usd"]) == (
            usage["prompt_tokens"] * INPUT + usage["completion_tokens"] * OUTPUT) / 1_000_000
        # A background task runs after the response, still in the request's scope.
        queued = client.post("/chat/background", json=HI, headers={"x-tenant-id": who, "x-request-id": "bg-1"})
        assert queued.json() == {"queued": True}
    deadline = time.monotonic() + 30
    while not any(r.request_id == "bg-1" for r in fastapi_server.records(who)):
        assert time.monotonic() < deadline, "the background task's call was never recorded"
        time.sleep(0.1)
    by_request = {r.request_id: r for r in fastapi_server.records(who)}
    assert by_request["bg-1"].tenant == who and by_request["abc-1"].tenant == who


@pytest.mark.parametrize("name", ["fastapi", "flask_gthread"])
def test_the_scope_stays_set_while_a_body_is_streamed(name: str, request: pytest.FixtureRequest) -> None:
    server: Server = request.getfixturevalue(f"{name}_server")
    who = tenant()
    response = httpx2.post(server.url + "/chat/lazy", json=HI, headers={"x-tenant-id": who}, timeout=60)
    assert response.status_code == 200
    assert response.text.splitlines()[0] == f"tenant={who}"
    [record] = server.records(who)
    assert record.tenant == who


@pytest.mark.parametrize(("name", "path"), [("flask_gthread", "/scope"), ("flask_sync", "/scope"),
                                            ("fastapi", "/scope/sync")])
def test_no_scope_leaks_into_the_next_request_on_a_reused_thread(
    name: str, path: str, request: pytest.FixtureRequest
) -> None:
    server: Server = request.getfixturevalue(f"{name}_server")
    served: dict[tuple[int, int], set[str | None]] = {}
    seen_ids: set[str] = set()
    with httpx2.Client(base_url=server.url, timeout=30) as client:
        for i in range(40):
            headers = {"x-tenant-id": f"leak-{i}", "x-request-id": f"leak-{i}"} if i % 2 == 0 else {}
            info = client.get(path, headers=headers).json()
            if i % 2 == 0:
                assert (info["tenant"], info["request_id"]) == (f"leak-{i}", f"leak-{i}")
            else:
                assert info["tenant"] is None, f"request {i} saw a tenant it did not send: {info}"
                assert info["request_id"] not in seen_ids
            seen_ids.add(info["request_id"])
            served.setdefault((info["pid"], info["thread"]), set()).add(info["tenant"])
    # Threads were reused across requests with and without a tenant: the check above means something.
    assert any(None in tenants and len(tenants) > 1 for tenants in served.values())


def test_concurrent_requests_of_one_tenant_never_overspend(flask_gthread_server: Server) -> None:
    server = flask_gthread_server
    who = tenant()

    def ask(_: int) -> int:
        return httpx2.post(server.url + "/chat", json=HI, headers={"x-tenant-id": who}, timeout=120).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = Counter(pool.map(ask, range(16)))
    records = server.records(who)
    total = sum((r.cost_usd for r in records), Decimal(0))
    assert set(statuses) == {200, 402}, statuses
    assert statuses[200] == len(records)
    assert total <= server.limit
    # Input is free in this policy, so each call costs exactly its reserved worst case (4 output tokens):
    # the budget fits eight calls, and atomic reservations across two processes admit exactly eight.
    if all(r.usage.output_tokens == HI["max_tokens"] for r in records):
        assert statuses[200] == 8, statuses
    # The shared counter agrees with the ledger, and no reservation was left behind.
    with sqlite3.connect(server.budgets) as conn:
        [key] = [k for (k,) in conn.execute("SELECT key FROM budget_counters") if k.endswith(":" + who)]
    assert llmbudget.SQLiteBudgetStore(server.budgets).spent(key) == (total, Decimal(0))


def test_metrics_are_counted_across_gunicorn_workers(flask_gthread_server: Server) -> None:
    who = tenant()
    with httpx2.Client(base_url=flask_gthread_server.url, timeout=60) as client:
        assert client.post("/chat", json=HI, headers={"x-tenant-id": who}).status_code == 200
        text = client.get("/metrics").text
    lines = [line for line in text.splitlines() if f'tenant="{who}"' in line]
    assert any(line.startswith("llmbudget_calls_total{") and line.endswith(" 1.0") for line in lines), lines
    assert any(line.startswith('llmbudget_tokens_total{kind="output"') and line.endswith(" 4.0")
               for line in lines), lines
