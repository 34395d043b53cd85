"""Over a budget, a scope may cap the output to what is left or downgrade the model instead of refusing."""

from __future__ import annotations

import contextlib

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


@pytest.mark.parametrize("where", ["scope", "engine"])
@pytest.mark.parametrize("nested", ["none", "scope", "defer"])
def test_a_per_request_budget_counts_calls_made_in_nested_scopes(client, engine, where, nested):
    # Each nested scope had its own request id and counter: a per-request budget set on the request's scope (or
    # the engine's, bound to the innermost scope) started over in every llmbudget.scope(cache=False) or
    # defer("flex") block inside it, so a budget that fits one call let every call through.
    ask = dict(model="gpt-4o-mini", messages=ASK, max_tokens=8)

    def inner():
        return {"none": contextlib.nullcontext(), "scope": llmbudget.scope(cache=False),
                "defer": llmbudget.defer("flex")}[nested]

    seen = []
    engine.add_refusal_observer(lambda refusal, scope: seen.append(refusal))
    with llmbudget.scope(budgets=[llmbudget.Budget("0")]), inner():  # one such call's worst case
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(**ask)
    worst = seen[0].estimated_cost_usd  # flex calls are priced at half
    budget = llmbudget.Budget(worst)  # per request: room for one call's worst case, not two
    outcomes = []
    if where == "engine":
        engine.budgets = (budget,)
    with llmbudget.scope(tenant="acme", budgets=[budget] if where == "scope" else []):
        for _ in range(3):
            with inner():
                try:
                    client.chat.completions.create(**ask)
                    outcomes.append("sent")
                except openai.APIStatusError as exc:
                    outcomes.append(exc.status_code)
    assert outcomes == ["sent", 402, 402]


def test_cap_with_several_answers_caps_each_to_its_share(engine):
    """The tokens the budget could pay for were written as the limit of each answer: with n=4 the capped
    call's worst case was still four times over, and it was refused."""
    import json

    body = {"model": "gpt-4o-mini", "messages": ASK, "max_tokens": 500, "n": 4}
    with llmbudget.scope(budgets=[llmbudget.Budget("0.0001")], on_budget="cap"):
        attempt = engine.begin(url="https://api.openai.com/v1/chat/completions", path="/v1/chat/completions",
                               headers={}, body=json.dumps(body).encode())
        assert attempt.reserve() is None
    assert attempt.capped and attempt.worst_case_usd() <= llmbudget.Budget("0.0001").usd
    assert 16 <= attempt.call.body["max_tokens"] < 500
    attempt.release()


def test_cap_counts_what_an_advisor_reads_of_the_output(engine):
    """From a review: the cap priced the output at the executor's rate alone, while each advisor consultation also
    reads it (and bills its own fixed part): a call the cap could fit was refused, and one was rewritten and flagged
    capped but refused all the same."""
    import json

    body = {"model": "claude-sonnet-4-6", "max_tokens": 8000, "messages": ASK,
            "tools": [{"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-6", "max_uses": 3}]}
    for usd in ("0.30", "0.20"):
        with llmbudget.scope(budgets=[llmbudget.Budget(usd)], on_budget="cap"):
            attempt = engine.begin(url="https://api.anthropic.com/v1/messages", path="/v1/messages", headers={},
                                   body=json.dumps(body).encode())
            assert attempt.reserve() is None, usd
        assert attempt.capped and attempt.worst_case_usd() <= llmbudget.Budget(usd).usd
        assert 16 <= attempt.call.body["max_tokens"] < 8000
        attempt.release()
    with llmbudget.scope(budgets=[llmbudget.Budget("0.12")], on_budget="cap"):  # the advisors alone cost more
        attempt = engine.begin(url="https://api.anthropic.com/v1/messages", path="/v1/messages", headers={},
                               body=json.dumps(body).encode())
        assert attempt.reserve() is not None and not attempt.capped and attempt.call.body["max_tokens"] == 8000
