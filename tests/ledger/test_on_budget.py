"""Over a budget, a scope may cap the output to what is left or downgrade the model instead of refusing."""

from __future__ import annotations

import openai
import pytest

import llmbudget

ASK = [{"role": "user", "content": "Count from 1 to 20."}]


@pytest.fixture
def client(llm_server, engine):
    return openai.OpenAI(base_url=llm_server, api_key="sk-test", http_client=llmbudget.http_client(), max_retries=0)


def test_cap_lowers_the_output_limit_to_what_is_left(client, records):
    # gpt-4o-mini output: $0.60 / 1M tokens. $0.00003 leaves room for ~40 output tokens, not 500.
    with llmbudget.scope(budgets=[llmbudget.Budget("0.00003")], on_budget="cap") as scope:
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=ASK, max_tokens=500)
    (record,) = records
    assert record.capped and answer.usage.completion_tokens < 50
    assert scope.totals.cost_usd <= llmbudget.Budget("0.00003").usd and scope.refusals == []


def test_cap_refuses_below_the_minimum(client, records):
    with llmbudget.scope(budgets=[llmbudget.Budget("0.000004")], on_budget="cap", cap_min_output_tokens=50) as scope:
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="gpt-4o-mini", messages=ASK, max_tokens=500)
    assert caught.value.status_code == 402 and records == [] and len(scope.refusals) == 1


def test_downgrade_sends_the_call_to_a_cheaper_model(client, records):
    # gpt-4o ($10 / 1M output) cannot fit 100 output tokens in $0.0001; gpt-4o-mini ($0.60) can.
    with llmbudget.scope(budgets=[llmbudget.Budget("0.0001")], on_budget="downgrade", downgrade_to="gpt-4o-mini"):
        answer = client.chat.completions.create(model="gpt-4o", messages=ASK, max_tokens=100)
    (record,) = records
    assert answer.model == "gpt-4o-mini" and record.model_requested == "gpt-4o" and record.routed
    assert record.routing["reason"] == "over budget: downgraded"


def test_refusals_reach_observers_and_the_scope_even_when_caught(client, engine):
    seen = []
    engine.add_refusal_observer(lambda refusal, scope: seen.append((refusal.budget, scope.tenant)))
    with llmbudget.scope(tenant="acme", budgets=[llmbudget.Budget("0")]) as scope:
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="gpt-4o-mini", messages=ASK, max_tokens=5)
    assert seen == [("request", "acme")] and scope.refusals[0].tenant == "acme"


def test_two_budgets_of_one_kind_share_one_counter_under_the_lower_limit(client, engine, records):
    engine.budgets = (llmbudget.Budget("1", per="tenant", period="day"),)
    with llmbudget.scope(tenant="dup", budgets=[llmbudget.Budget("0.5", per="tenant", period="day")]):
        client.chat.completions.create(model="gpt-4o-mini", messages=ASK, max_tokens=3)
    (record,) = records
    bucket = llmbudget.Budget("1", per="tenant", period="day").bucket(tenant="dup", request_id="", now=record.time)
    spent, reserved = engine.budget_store.spent(bucket.key)
    assert spent == record.cost_usd and reserved == 0  # charged once, not twice
