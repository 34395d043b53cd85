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
