"""A budget store that cannot be reached: fail-closed refuses with a clear 503, fail-open serves."""

from __future__ import annotations

import openai
import pytest
from llama_server import free_port
from servers import base_url, proxy

import llmbudget
from llmbudget.ledger import RedisBudgetStore

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
    from llmbudget.config import Policy

    with pytest.raises(ValueError, match="on_unavailable"):
        llmbudget.Budget("1", per="tenant", on_unavailable="maybe")
    policy = Policy.from_config({"budgets": [{"usd": "1", "per": "tenant", "period": "day",
                                              "on_unavailable": "open"}]})
    assert policy.budgets[0].on_unavailable == "open"


def test_an_uncaught_store_outage_is_a_503_with_retry_after_not_the_apps_500(dead_redis, engine):
    """A fail-closed budget's 503 the app did not catch became its own 500 (and uvicorn dropped the connection):
    the middleware answers it as it answers an uncaught refusal, with a problem document and retry-after."""
    import flask
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from llmbudget.middleware import LLMBudgetMiddleware, LLMBudgetWSGIMiddleware, Policy

    llmbudget.set_engine(llmbudget.Engine(budget_store=RedisBudgetStore(dead_redis, on_unavailable="closed",
                                                                        timeout=0.2)))
    policy = Policy(budgets=[llmbudget.Budget("1", per="tenant", period="day")])
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", max_retries=0)

    def ask() -> None:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=3)

    async def route(request: Request) -> JSONResponse:
        ask()
        return JSONResponse({})

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
        assert "budget store" in problem["detail"]
