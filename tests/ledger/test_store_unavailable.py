"""A budget store that cannot be reached: fail-closed refuses with a clear 503, fail-open serves."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import flask
import openai
import pytest
from llama_server import free_port
from servers import base_url, proxy
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import llmbudget
from llmbudget.ledger import RedisBudgetStore
from llmbudget.ledger.budgets import Refusal
from llmbudget.middleware import (
    LLMBudgetMiddleware,
    LLMBudgetWSGIMiddleware,
    MetricsPolicy,
    Policy,
    _find_refusal,
    _StoreOutage,
)

HI = [{"role": "user", "content": "Say hi"}]


def engine_with(store: RedisBudgetStore) -> llmbudget.Engine:
    return llmbudget.Engine(budgets=[llmbudget.Budget("1", per="tenant", period="day")], budget_store=store)


@pytest.fixture
def dead_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/15"  # nothing listens there


def test_fail_closed_refuses_with_a_503_the_sdk_does_not_retry(llm_server, dead_redis, engine):
    llmbudget.set_engine(engine_with(RedisBudgetStore(dead_redis, on_unavailable="closed", timeout=0.2)))
    with proxy(llm_server) as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client(),
                               max_retries=3)
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=3)
        assert server.received == []
    error = caught.value
    assert error.status_code == 503 and error.response.headers["x-llmbudget-refused"] == "budget-store-unavailable"
    assert error.response.json()["error"]["type"] == "budget_store_unavailable"
    assert llmbudget.budget_refusal(error) is None  # not a budget refusal: the store is down


def test_fail_open_serves(llm_server, dead_redis, engine):
    llmbudget.set_engine(engine_with(RedisBudgetStore(dead_redis, on_unavailable="open", timeout=0.2)))
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", http_client=llmbudget.http_client())
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=3)
    assert answer.usage.completion_tokens >= 1


@pytest.mark.parametrize("store_mode, budget_mode, served", [
    ("closed", "open", True),    # this budget may be served while the store is down
    ("open", "closed", False),   # this one must not, whatever the store's default
    ("closed", None, False),
    ("open", None, True),
])
def test_fail_open_or_closed_per_budget(llm_server, dead_redis, engine, store_mode, budget_mode, served):
    store = RedisBudgetStore(dead_redis, on_unavailable=store_mode, timeout=0.2)
    budget = llmbudget.Budget("1", per="tenant", period="day", on_unavailable=budget_mode)
    llmbudget.set_engine(llmbudget.Engine(budgets=[budget], budget_store=store))
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", http_client=llmbudget.http_client(),
                           max_retries=0)
    if served:
        assert client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=2).choices
    else:
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=2)


def test_on_unavailable_is_validated_and_read_from_toml():
    with pytest.raises(ValueError, match="on_unavailable"):
        llmbudget.Budget("1", per="tenant", on_unavailable="maybe")
    policy = Policy.from_config({"budgets": [{"usd": "1", "per": "tenant", "period": "day",
                                              "on_unavailable": "open"}]})
    assert policy.budgets[0].on_unavailable == "open"


def _down_store_app(dead_redis: str) -> tuple[Policy, Callable[[], None], Any]:
    """A fail-closed budget on a Redis that is not there: the policy, a call that raises its 503 in the SDK, and a
    Starlette endpoint making it uncaught."""
    llmbudget.set_engine(llmbudget.Engine(budget_store=RedisBudgetStore(dead_redis, on_unavailable="closed",
                                                                        timeout=0.2)))
    policy = Policy(budgets=[llmbudget.Budget("1", per="tenant", period="day")])
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", max_retries=0)

    def ask() -> None:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=3)

    async def route(request: Request) -> JSONResponse:
        ask()
        return JSONResponse({})

    return policy, ask, route


def test_an_uncaught_store_outage_is_a_503_with_retry_after_not_the_apps_500(dead_redis, engine):
    """A fail-closed budget's 503 the app did not catch became its own 500 (and uvicorn dropped the connection):
    the middleware answers it as it answers an uncaught refusal, with a problem document and retry-after."""
    policy, ask, route = _down_store_app(dead_redis)
    inside = Starlette(routes=[Route("/ask", route)], middleware=[Middleware(LLMBudgetMiddleware, policy=policy)])
    outside = LLMBudgetMiddleware(Starlette(routes=[Route("/ask", route)]), policy=policy)
    flask_app = flask.Flask(__name__)
    flask_app.add_url_rule("/ask", "ask", lambda: ask() or {})
    flask_app.wsgi_app = LLMBudgetWSGIMiddleware(flask_app.wsgi_app, policy=policy)  # type: ignore[method-assign]
    answers = [TestClient(inside, raise_server_exceptions=False).get("/ask"),
               TestClient(outside, raise_server_exceptions=False).get("/ask"),
               flask_app.test_client().get("/ask")]
    for response in answers:
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["x-llmbudget-refused"] == "budget-store-unavailable"
        assert int(response.headers["retry-after"]) >= 1
        problem = response.json if isinstance(response.json, dict) else response.json()
        assert problem["type"] == "urn:llmbudget:budget-store-unavailable" and problem["status"] == 503
        assert "LLM budgets" in problem["detail"] and "127.0.0.1" not in response.text  # no host for end users


def test_an_uncaught_store_outage_is_counted_in_the_metrics(dead_redis, engine):
    """Uncaught refusals had a counter and outages none: a dashboard showed no sign of the 503s."""
    policy, ask, route = _down_store_app(dead_redis)
    policy = dataclasses.replace(policy, trust_tenant_header=True, metrics=MetricsPolicy(path="/metrics"))
    asgi = TestClient(LLMBudgetMiddleware(Starlette(routes=[Route("/ask", route)]), policy=policy),
                      raise_server_exceptions=False)
    flask_app = flask.Flask("outage_metrics")
    flask_app.add_url_rule("/ask", "ask", lambda: ask() or {})
    flask_app.wsgi_app = LLMBudgetWSGIMiddleware(flask_app.wsgi_app, policy=policy)  # type: ignore[method-assign]
    wsgi = flask_app.test_client()
    for _ in range(2):
        assert asgi.get("/ask", headers={"x-tenant-id": "acme"}).status_code == 503
    assert wsgi.get("/ask", headers={"x-tenant-id": "blue"}).status_code == 503
    assert 'llmbudget_budget_store_unavailable_total{tenant="acme"} 2.0' in asgi.get("/metrics").text
    assert 'llmbudget_budget_store_unavailable_total{tenant="blue"} 1.0' in wsgi.get("/metrics").get_data(as_text=True)


def test_an_apps_own_handling_of_the_outage_is_the_apps_answer_and_log(dead_redis, engine, caplog):
    """An app's exception handler for InternalServerError sent its own 500 from inside an ``except`` block: it was
    replaced by llmbudget's 503. And once an uncaught one was answered, Flask's logger dropped every later record
    carrying such an error, the app's own ``logger.exception`` in a route that caught it too."""
    policy, ask, route = _down_store_app(dead_redis)

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"fallback": "our own"}, status_code=500)

    for app in (Starlette(routes=[Route("/ask", route)], exception_handlers={openai.InternalServerError: handler},
                          middleware=[Middleware(LLMBudgetMiddleware, policy=policy)]),
                LLMBudgetMiddleware(Starlette(routes=[Route("/ask", route)],
                                              exception_handlers={openai.InternalServerError: handler}),
                                    policy=policy)):
        response = TestClient(app, raise_server_exceptions=False).get("/ask")
        assert (response.status_code, response.json()) == (500, {"fallback": "our own"})

    flask_app = flask.Flask("outage_logs")

    @flask_app.get("/uncaught")
    def uncaught() -> dict:
        ask()
        return {}

    @flask_app.get("/caught")
    def caught() -> dict:
        try:
            ask()
        except openai.InternalServerError:
            flask_app.logger.exception("LLM call failed; serving the fallback")
        return {"fallback": True}

    flask_app.wsgi_app = LLMBudgetWSGIMiddleware(flask_app.wsgi_app, policy=policy)  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="outage_logs"):
        assert flask_app.test_client().get("/uncaught").status_code == 503
        assert flask_app.test_client().get("/caught").status_code == 200
    assert "LLM call failed; serving the fallback" in caplog.text  # the app's own log line stays
    assert "Exception on /uncaught" not in caplog.text  # Flask's traceback for the one answered with the 503


def test_a_group_of_a_refusal_and_an_outage_is_answered_the_same_whatever_their_order() -> None:
    class Response:
        def __init__(self, kind: str) -> None:
            self.headers = {"x-llmbudget-refused": kind, "retry-after": "2"}

        def json(self) -> dict:
            return {"error": {"message": "down", "llmbudget": {
                "budget": "b", "per": "request", "period": None, "limit_usd": 0.0, "spent_usd": 0.0,
                "reserved_usd": 0.0, "estimated_cost_usd": 0.001, "resets_at": None}}}

    class Raised(Exception):
        def __init__(self, kind: str) -> None:
            self.response = Response(kind)

    refusal, outage = Raised("budget"), Raised("budget-store-unavailable")
    assert isinstance(_find_refusal(outage), _StoreOutage)
    for group in (ExceptionGroup("g", [refusal, outage]), ExceptionGroup("g", [outage, refusal])):
        assert isinstance(_find_refusal(group), Refusal)
