"""Routing, caps and prompt cache keys in the pipeline, with the real SDK and the real local server."""

from __future__ import annotations

import json
from decimal import Decimal

import openai
import pytest
from servers import base_url, echo_server, proxy

import llmbudget
from llmbudget.caps import apply_cap, cap_field
from llmbudget.routing.tiers import Routing

HI = [{"role": "user", "content": "Say hi"}]


def client_for(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="sk-test", http_client=llmbudget.http_client(), max_retries=0)


@pytest.fixture
def route(engine):
    def configure(**routing):
        engine.routing = Routing(**routing)
        return engine
    return configure


def test_a_simple_request_goes_to_the_small_tier_and_is_priced_there(llm_server, route, records):
    route(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=1.0)
    answer = client_for(llm_server).chat.completions.create(model="gpt-4o", messages=HI, max_tokens=4)
    (record,) = records
    assert answer.model == "gpt-4.1-nano"  # the server answers as the model it was sent
    assert (record.model_requested, record.model_sent, record.routed) == ("gpt-4o", "gpt-4.1-nano", True)
    assert record.routing["tier"] == "small" and record.routing["reason"] == "router"
    assert 0 <= record.routing["score"] <= 1 and record.routing["threshold"] == 1.0 and record.routing["features"]
    nano = (Decimal("0.1") * answer.usage.prompt_tokens + Decimal("0.4") * answer.usage.completion_tokens) / 10**6
    assert record.cost_usd == nano
    gpt4o = (Decimal("2.5") * answer.usage.prompt_tokens + Decimal("10") * answer.usage.completion_tokens) / 10**6
    assert record.routing_saved_usd == gpt4o - nano > 0  # the same usage at the model asked for, minus what it cost
    assert record.saved_by == {"cache": Decimal(0), "routing": gpt4o - nano, "prompt_cache": Decimal(0),
                               "deferral": Decimal(0)}


def test_strong_tier_keeps_the_requested_model(llm_server, route, records):
    route(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=0.0)
    client_for(llm_server).chat.completions.create(model="gpt-4o", messages=HI, max_tokens=3)
    assert records[0].model_sent == "gpt-4o" and not records[0].routed and records[0].routing["tier"] == "large"
    assert records[0].routing_saved_usd == 0


def test_tools_scope_and_paths_are_not_routed(llm_server, route, records):
    route(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=1.0)
    client = client_for(llm_server)
    with llmbudget.scope(routing=False):
        client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=3)
    with llmbudget.scope(routing="large"):
        client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=3)
    assert [r.model_sent for r in records] == ["gpt-4o", "gpt-4o"]
    assert records[0].routing is None and records[1].routing["reason"] == "forced"


def test_a_tier_on_another_base_url_is_sent_there(llm_server, route, records):
    with proxy(llm_server) as self_hosted:
        route(tiers={"small": {"model": "gemma-3-270m", "base_url": base_url(self_hosted)}, "large": None},
              threshold=1.0)
        llmbudget.get_engine().pricing = llmbudget.Pricing({"gemma-*": {"input": 0, "output": 0}})
        client_for(llm_server).chat.completions.create(model="gpt-4o", messages=HI, max_tokens=3)
        assert len(self_hosted.received) == 1
        assert json.loads(self_hosted.received[0][2])["model"] == "gemma-3-270m"
    assert records[0].base_url == base_url(self_hosted) and records[0].cost_usd == 0


def test_tier_cap_lowers_but_never_raises_the_apps_limit(llm_server, route, records):
    route(tiers={"small": {"model": "gpt-4.1-nano", "max_output_tokens": 3}, "large": None}, threshold=1.0)
    client = client_for(llm_server)
    capped = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Count from 1 to 30."}], max_tokens=40)
    assert capped.usage.completion_tokens <= 3
    assert records[0].capped and records[0].truncated_by_cap
    client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=2)
    assert not records[1].capped and records[1].usage.output_tokens <= 2


def test_cap_fields_follow_the_api_and_the_model():
    assert cap_field("chat.completions", {}, "gpt-4o") == "max_tokens"
    assert cap_field("chat.completions", {}, "o3-mini") == "max_completion_tokens"
    assert cap_field("chat.completions", {"max_completion_tokens": 9}, "gpt-4o") == "max_completion_tokens"
    assert cap_field("responses", {}, "gpt-4o") == "max_output_tokens"
    assert apply_cap("chat.completions", {"max_tokens": 10}, "gpt-4o", 50) == ({"max_tokens": 10}, False)
    assert apply_cap("chat.completions", {"max_tokens": 100}, "gpt-4o", 50) == ({"max_tokens": 50}, True)
    assert apply_cap("responses", {}, "gpt-4o", 7) == ({"max_output_tokens": 7}, True)
    assert apply_cap("chat.completions", {"max_tokens": None}, "gpt-4o", 50) == ({"max_tokens": 50}, True)
    # a limit the app got wrong goes out as it wrote it, for the API to refuse as it would without llmbudget (a
    # directive's cap made each of these a valid request, and one cache key)
    for wrong in (0, -5, "20", 20.5, True):
        assert apply_cap("chat.completions", {"max_tokens": wrong}, "gpt-4o", 150) == ({"max_tokens": wrong}, False)


def test_openai_requests_get_a_stable_prompt_cache_key_and_others_do_not(engine):
    engine.hosts = frozenset({"127.0.0.1"})
    with echo_server() as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client())
        client.with_options(max_retries=0).chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    assert "prompt_cache_key" not in json.loads(server.received[0][2])

    from llmbudget.pipeline import get_engine

    def key_for(system: str, tenant: str, later: list | None = None) -> str:
        body = json.dumps({"model": "gpt-4o", "messages": [{"role": "system", "content": system}] + HI
                           + (later or [])}).encode()
        with llmbudget.scope(tenant=tenant):
            attempt = get_engine().begin(url="https://api.openai.com/v1/chat/completions",
                                         path="/v1/chat/completions", headers={}, body=body)
            assert attempt.plan("/v1/chat/completions")
        return attempt.call.body["prompt_cache_key"]

    assert key_for("Be brief.", "a") == key_for("Be brief.", "a")
    assert key_for("Be brief.", "a") != key_for("Be brief.", "b") != key_for("Be long.", "b")
    # a system message after the first turn (the time, retrieved context) is not the prefix: the key changed per call
    assert len({key_for("Be brief.", "a", [{"role": "system", "content": f"Current time: 10:00:0{i}"}])
                for i in range(3)}) == 1
    # a host that only holds OpenAI's name is another host: no key (a red-team pass found one added there)
    for url in ("https://api.openai.com.evil.example/v1", "https://proxy.example/api.openai.com/v1"):
        attempt = get_engine().begin(url=f"{url}/chat/completions", path="/v1/chat/completions", headers={},
                                     body=json.dumps({"model": "gpt-4o", "messages": HI}).encode())
        attempt.plan("/v1/chat/completions")
        assert "prompt_cache_key" not in attempt.call.body, url
    regional = get_engine().begin(url="https://eu.api.openai.com/v1/chat/completions", path="/v1/chat/completions",
                                  headers={}, body=json.dumps({"model": "gpt-4o", "messages": HI}).encode())
    regional.plan("/v1/chat/completions")
    assert "prompt_cache_key" in regional.call.body  # OpenAI's regional hosts are OpenAI's


def test_unknown_tiers_are_configuration_errors():
    with pytest.raises(ValueError, match="tier 'small' is not defined"):
        Routing(tiers={"large": None})
    with pytest.raises(ValueError, match="max_output_tokens must be a positive integer"):
        Routing(tiers={"small": {"model": "m", "max_output_tokens": 0}, "large": None})


def test_escalation_retries_a_capped_weak_answer_on_the_strong_tier(llm_server, route, records):
    route(tiers={"small": {"model": "gpt-4.1-nano", "max_output_tokens": 2}, "large": None}, threshold=1.0,
          escalate=True)
    answer = client_for(llm_server).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Count from 1 to 30."}], max_tokens=6)
    weak, strong = records
    assert (weak.model_sent, weak.truncated_by_cap) == ("gpt-4.1-nano", True)
    assert strong.model_sent == "gpt-4o" and strong.routing["reason"].startswith("escalated")
    assert answer.model == "gpt-4o" and answer.usage.completion_tokens == strong.usage.output_tokens
    # Routing paid for the weak answer as well: net, it saved minus the weak attempt's cost.
    assert weak.routing_saved_usd > 0
    assert weak.routing_saved_usd + strong.routing_saved_usd == -weak.cost_usd


def test_no_escalation_when_the_weak_answer_passes_or_when_off(llm_server, route, records):
    route(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=1.0, escalate=True)
    client = client_for(llm_server)
    client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=3)  # cut by the app's own limit
    route(tiers={"small": {"model": "gpt-4.1-nano", "max_output_tokens": 2}, "large": None}, threshold=1.0)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Count to 30."}],
                                   max_tokens=6)
    assert [r.model_sent for r in records] == ["gpt-4.1-nano", "gpt-4.1-nano"]


def test_async_escalation(llm_server, route, records):
    import asyncio

    route(tiers={"small": {"model": "gpt-4.1-nano", "max_output_tokens": 2}, "large": None}, threshold=1.0,
          escalate=True)

    async def main() -> str:
        async with openai.AsyncOpenAI(base_url=llm_server, api_key="sk-test",
                                      http_client=llmbudget.async_http_client(), max_retries=0) as client:
            answer = await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Count from 1 to 30."}], max_tokens=6)
            return answer.model

    assert asyncio.run(main()) == "gpt-4o" and [r.model_sent for r in records] == ["gpt-4.1-nano", "gpt-4o"]


def test_an_answer_nested_too_deep_for_json_is_invalid_json_not_an_error():
    from openai.types.chat import ChatCompletion, ChatCompletionMessage
    from openai.types.chat.chat_completion import Choice

    engine = llmbudget.Engine()
    body = {"model": "gpt-4.1-nano", "messages": HI, "response_format": {"type": "json_object"}}
    attempt = engine.begin(url="http://127.0.0.1:9/v1/chat/completions", path="/v1/chat/completions", headers={},
                           body=json.dumps(body).encode())
    answer = ChatCompletion(
        id="chatcmpl-1", created=1, model="gpt-4.1-nano", object="chat.completion",
        choices=[Choice(index=0, finish_reason="stop",
                        message=ChatCompletionMessage(role="assistant", content="[" * 100_000))])
    attempt.start_response(200, {"content-type": "application/json"})
    attempt.feed(answer.model_dump_json(exclude_unset=True).encode())
    assert attempt.finish(complete=True) is not None
    assert attempt.escalation_reason() == "invalid JSON"


COUNT = [{"role": "user", "content": "Count from 1 to 30."}]
# The local model stops at the first newline when told to: a complete answer ("stop") that may be cached.
WHOLE = dict(messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=24, temperature=0,
             stop=["\n"])


def test_a_tier_on_another_host_never_gets_the_apps_credentials(llm_server, route, records, monkeypatch):
    client = openai.OpenAI(base_url=llm_server, api_key="sk-app-secret", organization="org-app", project="proj-app",
                           http_client=llmbudget.http_client(), max_retries=0,
                           default_headers={"helicone-auth": "Bearer hel-secret", "x-portkey-api-key": "pk-secret"},
                           default_query={"subscription-key": "apim-secret"})  # Azure API Management's key
    with proxy(llm_server) as elsewhere:
        route(tiers={"small": {"model": "gemma-3-270m", "base_url": base_url(elsewhere)}, "large": None},
              threshold=1.0)
        client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=3)
        monkeypatch.setenv("GPU_BOX_KEY", "sk-tier-key")
        route(tiers={"small": {"model": "gemma-3-270m", "base_url": base_url(elsewhere), "api_key_env": "GPU_BOX_KEY"},
                     "large": None}, threshold=1.0)
        client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=3)
    (_, bare_path, _, bare), (_, keyed_path, _, keyed) = elsewhere.received
    assert "apim-secret" not in bare_path + keyed_path  # nor a key in the query string
    lowered = [{k.lower(): v for k, v in headers.items()} for headers in (bare, keyed)]
    for headers in lowered:
        assert not {"openai-organization", "openai-project"} & set(headers)
        assert "sk-app-secret" not in json.dumps(headers)
        assert not {"helicone-auth", "x-portkey-api-key"} & set(headers)  # a gateway's keys, whatever their name
        assert headers["content-type"] == "application/json" and "x-stainless-lang" in headers
    assert "authorization" not in lowered[0] and lowered[1]["authorization"] == "Bearer sk-tier-key"
    assert [r.status for r in records] == [200, 200]
    monkeypatch.delenv("GPU_BOX_KEY")
    with pytest.raises(ValueError, match="GPU_BOX_KEY.*not set"):
        Routing(tiers={"small": {"model": "m", "base_url": "http://x/v1", "api_key_env": "GPU_BOX_KEY"}, "large": None})


@pytest.mark.parametrize("status", [400, 404])
def test_a_tier_that_refuses_the_routed_request_sends_it_to_the_strong_tier(llm_server, route, records, status):
    # The small tier does not serve that model, or refuses a parameter: routing must not be why the call fails,
    # escalation or not.
    with proxy(llm_server, fail_first=1, fail_status=status) as small:
        route(tiers={"small": {"model": "gemma-3-270m", "base_url": base_url(small)}, "large": None}, threshold=1.0)
        answer = client_for(llm_server).chat.completions.create(model="gpt-4o", messages=HI, max_tokens=3)
    weak, strong = records
    assert (weak.status, weak.model_sent, weak.cost_usd) == (status, "gemma-3-270m", 0)
    assert answer.model == "gpt-4o" and strong.status == 200 and strong.base_url == llm_server
    assert strong.routing["reason"] == f"escalated: the weak tier's answer was HTTP {status} from the tier"


def test_a_model_the_project_has_no_access_to_on_the_same_host_sends_the_call_to_the_strong_tier(llm_server, route,
                                                                                                  records):
    # OpenAI answers 403 model_not_found for a model the project cannot use: the app's call failed with it
    with proxy(llm_server, fail_first=1, fail_status=403) as host:
        route(tiers={"small": "gemma-3-270m", "large": None}, threshold=1.0)
        answer = client_for(base_url(host)).chat.completions.create(model="gpt-4o", messages=HI, max_tokens=3)
    assert answer.model == "gpt-4o" and [(r.status, r.model_sent) for r in records] == [
        (403, "gemma-3-270m"), (200, "gpt-4o")]


def test_async_a_tier_that_refuses_the_routed_request_sends_it_to_the_strong_tier(llm_server, route, records):
    import asyncio

    async def main(url: str) -> str:
        async with openai.AsyncOpenAI(base_url=url, api_key="sk-test", http_client=llmbudget.async_http_client(),
                                      max_retries=0) as client:
            return (await client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=3)).model

    with proxy(llm_server, fail_first=1, fail_status=400) as small:
        route(tiers={"small": {"model": "gemma-3-270m", "base_url": base_url(small)}, "large": None}, threshold=1.0)
        assert asyncio.run(main(llm_server)) == "gpt-4o"
    assert [r.status for r in records] == [400, 200]


def test_a_weak_answer_that_escalation_rejects_is_never_cached(llm_server, route, records, tmp_path):
    from llmbudget.cache import Cache

    # the cascade finds every weak answer unsure: a whole answer ("stop") that the cache would otherwise keep
    engine = route(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=1.0, min_confidence=0.99999)
    engine.cache = Cache(tmp_path / "cache")
    client = client_for(llm_server)
    first = client.chat.completions.create(model="gpt-4o", **WHOLE)
    again = client.chat.completions.create(model="gpt-4o", **WHOLE)
    # the strong tier's answer, both times: the weak one, rejected, never reached the cache
    assert first.choices[0].finish_reason == "stop" and first.model == again.model == "gpt-4o"
    assert first.choices[0].message.content == again.choices[0].message.content
    weak, strong, hit = records
    assert (weak.model_sent, strong.model_sent, hit.from_cache, hit.model_answered) == \
        ("gpt-4.1-nano", "gpt-4o", True, "gpt-4o")


@pytest.mark.parametrize("async_", [False, True])
def test_a_weak_answer_that_passes_escalations_checks_is_cached(llm_server, route, records, tmp_path, async_):
    import asyncio

    from llmbudget.cache import Cache

    engine = route(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=1.0, escalate=True)
    engine.cache = Cache(tmp_path / "cache")

    async def twice() -> list[str]:
        async with openai.AsyncOpenAI(base_url=llm_server, api_key="sk-test", max_retries=0,
                                      http_client=llmbudget.async_http_client()) as client:
            return [(await client.chat.completions.create(model="gpt-4o", **WHOLE)).model
                    for _ in range(2)]

    if async_:
        models = asyncio.run(twice())
    else:
        client = client_for(llm_server)
        models = [client.chat.completions.create(model="gpt-4o", **WHOLE).model for _ in range(2)]
    assert models == ["gpt-4.1-nano", "gpt-4.1-nano"]
    assert [r.from_cache for r in records] == [False, True]


def test_a_budget_that_cannot_pay_for_the_escalation_leaves_the_weak_answer(llm_server, route, records):
    # The weak answer was paid for; a 402 instead of it would make routing the reason the request failed.
    route(tiers={"small": {"model": "gpt-4.1-nano", "max_output_tokens": 2}, "large": None}, threshold=1.0,
          escalate=True)
    with llmbudget.scope(budgets=[llmbudget.Budget("0.00003")]):
        answer = client_for(llm_server).chat.completions.create(model="gpt-4o", messages=COUNT, max_tokens=6)
    assert answer.model == "gpt-4.1-nano" and answer.choices[0].finish_reason == "length"
    assert [r.model_sent for r in records] == ["gpt-4.1-nano"]


def test_a_reasoning_tier_is_sent_what_it_takes(llm_server, route, records):
    # o-series and gpt-5 models refuse max_tokens, temperature and logprobs with HTTP 400; gpt-4o refuses
    # reasoning_effort. The cascade does not probe a reasoning tier for log-probabilities.
    def as_the_local_server_reads_it(body: bytes) -> bytes:  # it knows max_tokens, not max_completion_tokens:
        sent = json.loads(body)  # without it, it wrote until its context was full (minutes on a busy machine)
        sent["max_tokens"] = min(40, sent.pop("max_completion_tokens", None) or 40)  # a small model: 40 do
        return json.dumps(sent).encode()

    with proxy(llm_server, forward=as_the_local_server_reads_it) as small:
        route(tiers={"small": {"model": "o4-mini", "base_url": base_url(small)}, "large": None}, threshold=1.0,
              min_confidence=0.5)
        client_for(llm_server).chat.completions.create(model="gpt-4o", messages=HI, max_tokens=2000,
                                                       temperature=0.2, top_p=0.9)
    sent = json.loads(small.received[0][2])
    assert sent["model"] == "o4-mini" and sent["max_completion_tokens"] == 2000
    assert not {"max_tokens", "temperature", "top_p", "logprobs", "top_logprobs"} & set(sent)


def test_routing_saved_is_priced_where_the_app_sent_the_call_and_may_be_negative(llm_server, route, records):
    with proxy(llm_server) as gpu_box:
        route(tiers={"small": {"model": "gpt-4.1-nano", "base_url": base_url(gpu_box)}, "large": None},
              threshold=1.0)
        engine = llmbudget.get_engine()
        engine.pricing = llmbudget.Pricing({base_url(gpu_box): {"input": 0, "output": 0}})  # free where it runs
        answer = client_for(llm_server).chat.completions.create(model="gpt-4o", messages=HI, max_tokens=3)
    gpt4o = (Decimal("2.5") * answer.usage.prompt_tokens + Decimal("10") * answer.usage.completion_tokens) / 10**6
    assert records[0].cost_usd == 0 and records[0].routing_saved_usd == gpt4o
    engine.pricing = llmbudget.Pricing()
    route(tiers={"small": "gpt-4o", "large": None}, threshold=1.0)  # a "small" tier dearer than the model asked for
    answer = client_for(llm_server).chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=3)
    assert records[1].routing_saved_usd < 0


def test_a_tier_without_a_model_for_the_api_leaves_the_call_alone(engine):
    # An OpenAI-only small tier and a Messages call: the call keeps its model, so it is not the small tier's,
    # gets none of its cap and is never judged (and resent to the same model) as a weak answer.
    engine.routing = Routing(tiers={"small": {"model": "gpt-4.1-nano", "max_output_tokens": 20}, "large": None},
                             threshold=1.0, escalate=True)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 500, "messages": HI}
    attempt = engine.begin(url="https://api.anthropic.com/v1/messages", path="/v1/messages", headers={},
                           body=json.dumps(body).encode())
    attempt.plan("/")
    assert attempt.call.body["max_tokens"] == 500 and not attempt.capped and not attempt.routed
    assert attempt.routing["tier"] == "large" and "no model for messages" in attempt.routing["reason"]
    assert not attempt.may_escalate()


def test_a_claude_tier_leaves_openai_calls_alone_unless_it_lives_behind_a_gateway(engine):
    # the tier's Claude model was sent to api.openai.com: a 404 and a retry on every call routed there
    from llmbudget.routing.tiers import Tier

    assert Tier.of("small", "claude-haiku-4-5").model_for("chat.completions") is None
    assert Tier.of("small", "claude-haiku-4-5").model_for("messages") == "claude-haiku-4-5"
    gateway = Tier.of("small", {"model": "claude-haiku-4-5", "base_url": "http://litellm:4000/v1"})
    assert gateway.model_for("chat.completions") == "claude-haiku-4-5"
    engine.routing = Routing(tiers={"small": "claude-haiku-4-5", "large": None}, threshold=1.0)
    body = {"model": "gpt-4o", "messages": HI, "max_tokens": 50}
    attempt = engine.begin(url="https://api.openai.com/v1/chat/completions", path="/v1/chat/completions",
                           headers={}, body=json.dumps(body).encode())
    attempt.plan("/")
    assert attempt.call.model == "gpt-4o" and not attempt.routed


def test_a_downgrade_sends_a_reasoning_model_what_it_takes(engine):
    body = {"model": "gpt-4o", "messages": HI, "max_tokens": 200, "temperature": 0.3}
    with llmbudget.scope(budgets=[llmbudget.Budget("0.001")], on_budget="downgrade", downgrade_to="gpt-5-nano"):
        attempt = engine.begin(url="https://api.openai.com/v1/chat/completions", path="/v1/chat/completions",
                               headers={}, body=json.dumps(body).encode())
        attempt.plan("/")
        assert attempt.reserve() is None
    sent = attempt.call.body
    assert sent["model"] == "gpt-5-nano" and sent["max_completion_tokens"] == 200
    assert "max_tokens" not in sent and "temperature" not in sent
    attempt.release()


def _planned_and_downgraded(engine, monkeypatch, tiers: dict, prices: dict, threshold: float):
    """A gpt-4o call planned under ``tiers`` and then reserved over a $0.001 budget that downgrades: (where the
    plan sent it, the attempt after the downgrade)."""
    monkeypatch.setenv("GPU_BOX_KEY", "gpu-secret")
    engine.routing = Routing(tiers=tiers, threshold=threshold)
    engine.pricing = llmbudget.Pricing(prices)
    body = {"model": "gpt-4o", "messages": HI, "max_tokens": 1000}
    with llmbudget.scope(budgets=[llmbudget.Budget("0.001")], on_budget="downgrade"):
        attempt = engine.begin(url="https://api.openai.com/v1/chat/completions", path="/v1/chat/completions",
                               headers={}, body=json.dumps(body).encode())
        attempt.plan("/")
        planned = (attempt.call.model, attempt.call.base_url)
        assert attempt.reserve() is None
    attempt.release()
    return planned, attempt


GPU_BOX = {"base_url": "http://gpu-box:8000/v1", "api_key_env": "GPU_BOX_KEY"}


def test_a_downgrade_to_a_tier_elsewhere_goes_there_with_its_key(engine, monkeypatch):
    # the self-hosted tier's model was sent to the app's host with the app's key (a 404, then a refusal)
    planned, attempt = _planned_and_downgraded(
        engine, monkeypatch, {"small": {"model": "llama-3-8b", **GPU_BOX}, "large": None},
        {"llama-3-8b": {"input": "0.0000001", "output": "0.0000001"}}, threshold=0.0)
    assert planned == ("gpt-4o", "https://api.openai.com/v1")  # the router kept it on the strong tier
    assert (attempt.call.model, attempt.call.base_url) == ("llama-3-8b", "http://gpu-box:8000/v1")
    assert attempt.tier_api_key() == "gpu-secret" and attempt.routing["tier"] == "downgrade"


def test_a_downgrade_after_routing_elsewhere_sends_a_tier_of_the_apps_host_back_there(engine, monkeypatch):
    # routed to a tier on another host, then downgraded to a tier without a base_url: it stayed on the other host,
    # with that host's key
    planned, attempt = _planned_and_downgraded(
        engine, monkeypatch, {"small": {"model": "llama-3-70b", **GPU_BOX}, "nano": "gpt-4.1-nano", "large": None},
        {"llama-3-70b": {"input": "3", "output": "30"}}, threshold=1.0)
    assert planned == ("llama-3-70b", "http://gpu-box:8000/v1")  # routed there first
    assert (attempt.call.model, attempt.call.base_url) == ("gpt-4.1-nano", "https://api.openai.com/v1")
    assert attempt.tier_api_key() is None  # the app's own key, on the app's own host


@pytest.mark.parametrize("on_budget", ["downgrade", "cap"])
def test_a_budget_that_cannot_pay_for_the_escalation_never_downgrades_or_caps_it(llm_server, route, records,
                                                                                  on_budget):
    # A downgrade sent the retry back to the weak model (paid twice, the second answer never checked); a cap cut it.
    route(tiers={"small": {"model": "gpt-4.1-nano", "max_output_tokens": 2}, "large": None}, threshold=1.0,
          escalate=True)
    with llmbudget.scope(budgets=[llmbudget.Budget("0.00003")], on_budget=on_budget) as scope:
        answer = client_for(llm_server).chat.completions.create(model="gpt-4o", messages=COUNT, max_tokens=6)
    assert answer.model == "gpt-4.1-nano" and [r.model_sent for r in records] == ["gpt-4.1-nano"]
    assert scope.refusals == []  # the app got an answer: no refusal to report


@pytest.mark.parametrize("failure", ["unreachable", "dropped", 401, 503])
def test_a_tier_elsewhere_that_is_down_or_refuses_its_key_sends_the_call_to_the_strong_tier(
        llm_server, route, records, failure):
    import socket

    if failure == "unreachable":
        with socket.socket() as probe:  # bound, never listening: connections to it are refused
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            route(tiers={"small": {"model": "gemma-3-270m", "base_url": f"http://127.0.0.1:{port}/v1"},
                         "large": None}, threshold=1.0)
            answer = client_for(llm_server).chat.completions.create(model="gpt-4o", messages=HI, max_tokens=3)
    else:  # "dropped": the connection closes before any answer
        options = {"refuse": lambda body: 0} if failure == "dropped" else {"fail_first": 1, "fail_status": failure}
        with proxy(llm_server, **options) as gpu_box:
            route(tiers={"small": {"model": "gemma-3-270m", "base_url": base_url(gpu_box)}, "large": None},
                  threshold=1.0)
            answer = client_for(llm_server).chat.completions.create(model="gpt-4o", messages=HI, max_tokens=3)
    assert answer.model == "gpt-4o"
    weak, strong = records
    assert weak.model_sent == "gemma-3-270m" and strong.base_url == llm_server and strong.status == 200
    assert strong.routing["reason"].startswith("escalated: the weak tier's answer was ")


def test_when_the_tier_and_then_the_strong_tier_fail_routing_saved_nothing(llm_server, route, records):
    # the tier elsewhere drops the connection, the strong retry answers 500: the app gets the error, and the
    # request's routing saving is minus what the tier's call cost (no weak answer was served)
    with proxy(llm_server, refuse=lambda body: 0) as gpu_box, proxy(llm_server, fail_first=1, fail_status=500) as app:
        route(tiers={"small": {"model": "gemma-3-270m", "base_url": base_url(gpu_box)}, "large": None}, threshold=1.0)
        with pytest.raises(openai.InternalServerError):
            client_for(base_url(app)).chat.completions.create(model="gpt-4o", messages=HI, max_tokens=3)
    weak, strong = records
    assert weak.model_sent == "gemma-3-270m" and strong.status == 500
    assert weak.routing_saved_usd + strong.routing_saved_usd == -weak.cost_usd


@pytest.mark.parametrize("async_", [False, True])
def test_a_tier_elsewhere_that_never_answers_is_not_waited_for_twice(llm_server, route, records, async_):
    import asyncio
    import socket
    import time

    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        route(tiers={"small": {"model": "gemma-3-270m", "base_url": f"http://127.0.0.1:{silent.getsockname()[1]}/v1"},
                     "large": None}, threshold=1.0)
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            if async_:
                async def ask() -> None:
                    async with openai.AsyncOpenAI(base_url=llm_server, api_key="sk-test", max_retries=0, timeout=0.5,
                                                  http_client=llmbudget.async_http_client()) as client:
                        await client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=3)
                asyncio.run(ask())
            else:
                with openai.OpenAI(base_url=llm_server, api_key="sk-test", http_client=llmbudget.http_client(),
                                   max_retries=0, timeout=0.5) as client:
                    client.chat.completions.create(model="gpt-4o", messages=HI, max_tokens=3)
        waited = time.monotonic() - started
    assert waited < 1.5  # the app's own timeout, once: no strong call after it
    assert [r.model_sent for r in records] == ["gemma-3-270m"] and "ReadTimeout" in records[0].error


def _settled(engine, url: str, path: str, body: dict, answer: dict):
    attempt = engine.begin(url=url, path=path, headers={}, body=json.dumps(body).encode())
    attempt.plan("/")
    attempt.start_response(200, {"content-type": "application/json"})
    attempt.feed(json.dumps(answer).encode())
    attempt.finish(complete=True)
    return attempt


def test_escalation_checks_json_refusals_and_cuts_on_every_api(engine):
    from openai.types.responses import Response

    engine.routing = Routing(tiers={"small": {"model": "gpt-4.1-nano", "max_output_tokens": 5,
                                              "anthropic": "claude-haiku-4-5"}, "large": None},
                             threshold=1.0, escalate=True)
    url, path = "https://api.openai.com/v1/responses", "/v1/responses"

    def response(content: list, **extra) -> dict:
        return Response.model_validate({
            "id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-4.1-nano", "status": "completed",
            "output": [{"type": "message", "id": "m", "role": "assistant", "status": "completed", "content": content}],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], **extra,
        }).model_dump(mode="json")

    text = [{"type": "output_text", "text": "not json", "annotations": []}]
    ask = {"model": "gpt-4o", "input": "Give me JSON", "text": {"format": {"type": "json_object"}}}
    assert _settled(engine, url, path, ask, response(text)).escalation_reason() == "invalid JSON"
    refused = [{"type": "refusal", "refusal": "I can't help with that."}]
    assert _settled(engine, url, path, {"model": "gpt-4o", "input": "x"}, response(refused)).escalation_reason() \
        == "refused"
    cut = response([{"type": "output_text", "text": "The answer is", "annotations": []}], status="incomplete",
                   incomplete_details={"reason": "max_output_tokens"})
    attempt = _settled(engine, url, path, {"model": "gpt-4o", "input": "x"}, cut)
    assert attempt.escalation_reason() == "cut by an output cap" and attempt.record.truncated_by_cap
    from anthropic.types import Message

    message = Message.model_validate({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5", "content": [],
        "stop_reason": "refusal", "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1}},
    ).model_dump(mode="json")
    asked = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": HI}
    assert _settled(engine, "https://api.anthropic.com/v1/messages", "/v1/messages", asked, message) \
        .escalation_reason() == "refused"


@pytest.mark.parametrize(("second", "reason", "verdict"), [('{"a": 2}', None, "valid"),
                                                          ('{"a": ', "invalid JSON", "invalid")])
def test_several_json_answers_are_judged_one_by_one(engine, second, reason, verdict):
    # n=2: both choices' texts were joined ('{"a": 1}{"a": 2}'), never valid: escalated and paid twice
    from openai.types.chat import ChatCompletion

    engine.routing = Routing(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=1.0, escalate=True)
    answer = ChatCompletion.model_validate({
        "id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4.1-nano",
        "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    for i, text in enumerate(['{"a": 1}', second])],
        "usage": {"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17}}).model_dump(mode="json")
    ask = {"model": "gpt-4o", "messages": HI, "n": 2, "response_format": {"type": "json_object"}}
    attempt = _settled(engine, "https://api.openai.com/v1/chat/completions", "/v1/chat/completions", ask, answer)
    assert attempt.escalation_reason() == reason and attempt.record.output["json"] == verdict


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_tool_call_answer_is_not_escalated_as_invalid_json(engine, api):
    # a request with tools and a JSON schema answered by a tool call has no JSON text: it was re-sent to the strong
    # tier, paid twice and the valid tool call thrown away
    engine.routing = Routing(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=1.0, escalate=True,
                             route_tools=True, route_schemas=True)
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    if api == "chat":
        url, path = "https://api.openai.com/v1/chat/completions", "/v1/chat/completions"
        ask = {"model": "gpt-4o", "messages": HI, "tools": [{"type": "function", "function": {"name": "f"}}],
               "response_format": schema}
        answer = {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4.1-nano", "choices": [
            {"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": None,
             "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}}
    else:
        url, path = "https://api.openai.com/v1/responses", "/v1/responses"
        ask = {"model": "gpt-4o", "input": "x", "tools": [{"type": "custom", "name": "f"}], "store": False,
               "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}}}}
        answer = {"id": "r", "object": "response", "model": "gpt-4.1-nano", "status": "completed", "output": [
            {"type": "custom_tool_call", "id": "c", "call_id": "c", "name": "f", "input": "x"}],
            "usage": {"input_tokens": 9, "output_tokens": 5, "total_tokens": 14}}
    assert _settled(engine, url, path, ask, answer).escalation_reason() is None


def test_a_background_response_is_never_escalated(engine):
    # a queued job has no text yet: read as invalid JSON, a second job was started and both were billed
    engine.routing = Routing(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=1.0, escalate=True,
                             route_schemas=True)
    ask = {"model": "gpt-4o", "input": "x", "background": True, "store": True,
           "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}}}}
    queued = {"id": "r", "object": "response", "model": "gpt-4.1-nano", "status": "queued", "output": [],
              "usage": None}
    attempt = _settled(engine, "https://api.openai.com/v1/responses", "/v1/responses", ask, queued)
    assert not attempt.may_escalate()


def test_an_answer_cut_because_a_reasoning_tier_spent_the_apps_limit_is_escalated(engine):
    # max_tokens=50 leaves gpt-4o room to answer; as o4-mini's max_completion_tokens it also bounds the reasoning
    engine.routing = Routing(tiers={"small": "o4-mini", "large": None}, threshold=1.0, escalate=True)
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "o4-mini",
              "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": ""}}],
              "usage": {"prompt_tokens": 9, "completion_tokens": 50, "total_tokens": 59}}
    attempt = _settled(engine, "https://api.openai.com/v1/chat/completions", "/v1/chat/completions",
                       {"model": "gpt-4o", "messages": HI, "max_tokens": 50}, answer)
    assert attempt.call.body["max_completion_tokens"] == 50 and attempt.escalation_reason() == "cut by an output cap"


def test_a_tiers_cap_never_bounds_thinking(engine):
    # max_tokens must stay above thinking.budget_tokens: a tier cap of 2048 under a budget of 8000 made a valid
    # call fail with 400, on both tiers
    engine.routing = Routing(tiers={"small": {"anthropic": "claude-haiku-4-5", "max_output_tokens": 1024},
                                    "large": {"max_output_tokens": 2048}}, threshold=1.0)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 16000, "messages": HI,
            "thinking": {"type": "enabled", "budget_tokens": 8000}}
    attempt = engine.begin(url="https://api.anthropic.com/v1/messages", path="/v1/messages", headers={},
                           body=json.dumps(body).encode())
    attempt.plan("/")
    assert attempt.call.body["model"] == "claude-haiku-4-5" and attempt.call.body["max_tokens"] == 16000


def test_a_directives_cap_is_not_moved_onto_a_reasoning_tier(engine):
    # added before routing (the cache keys on it), the directive's cap became gpt-5-mini's max_completion_tokens,
    # which its reasoning spent: the app got an empty answer
    engine.output = llmbudget.Output(max_words=60)
    engine.routing = Routing(tiers={"small": "gpt-5-mini", "large": None}, threshold=1.0)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Explain photosynthesis."}]}
    attempt = engine.begin(url="https://api.openai.com/v1/chat/completions", path="/v1/chat/completions",
                           headers={}, body=json.dumps(body).encode())
    assert attempt.shape_output() and attempt.call.body["max_tokens"] == 170
    attempt.plan("/")
    sent = attempt.call.body
    assert sent["model"] == "gpt-5-mini" and not {"max_tokens", "max_completion_tokens"} & set(sent)
    assert attempt.output["cap"] is None and not attempt.capped


def test_a_gpt5_chat_tier_is_capped_like_any_model_that_does_not_reason(engine):
    # three predicates disagreed on gpt-5-chat: suited kept max_tokens, thinks() skipped the tier's cap
    engine.routing = Routing(tiers={"small": {"model": "gpt-5-chat-latest", "max_output_tokens": 50}, "large": None},
                             threshold=1.0)
    body = {"model": "gpt-4o", "messages": HI, "max_tokens": 2000, "temperature": 0.2}
    attempt = engine.begin(url="https://api.openai.com/v1/chat/completions", path="/v1/chat/completions",
                           headers={}, body=json.dumps(body).encode())
    attempt.plan("/")
    assert attempt.call.body["max_tokens"] == 50 and attempt.call.body["temperature"] == 0.2


def test_the_directives_cap_is_measured_on_the_apps_own_words(engine):
    # measured after the English directive was added, a short Russian question got the English cap
    engine.output = llmbudget.Output(max_words=100)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Расскажите об истории Византийской империи."}]}
    attempt = engine.begin(url="https://api.openai.com/v1/chat/completions", path="/v1/chat/completions",
                           headers={}, body=json.dumps(body).encode())
    assert attempt.shape_output()
    assert attempt.call.body["max_tokens"] > 250 == llmbudget.Output(max_words=100).cap


def test_the_directives_cap_follows_the_users_language_under_an_english_system_prompt(engine):
    # a red-team pass: a Tamil question alone got 570 tokens, with a long English system prompt 290, and a
    # 120-word Tamil answer (347 tokens) that obeyed the directive was cut
    engine.output = llmbudget.Output(max_words=120)
    system = "You are a helpful assistant for a travel company. Answer politely and accurately. " * 8
    question = "சென்னையில் இருந்து மதுரைக்கு ரயிலில் செல்ல எவ்வளவு நேரம் ஆகும்? சிறந்த ரயில் எது?"
    caps = []
    for messages in ([{"role": "user", "content": question}],
                     [{"role": "system", "content": system}, {"role": "user", "content": question}]):
        attempt = engine.begin(url="https://api.openai.com/v1/chat/completions", path="/v1/chat/completions",
                               headers={}, body=json.dumps({"model": "gpt-4o", "messages": messages}).encode())
        assert attempt.shape_output()
        caps.append(attempt.call.body["max_tokens"])
    assert caps[0] == caps[1] > 400 > llmbudget.Output(max_words=120).cap  # (347 tokens for 120 words)


@pytest.mark.parametrize(("extra", "tier_url", "routed"), [
    ({}, "http://gpu-box:8000/v1", False),  # stored by default: the next turn's previous_response_id is only there
    ({"previous_response_id": "resp_1", "store": False}, "http://gpu-box:8000/v1", False),
    ({"conversation": "conv_1", "store": False}, "http://gpu-box:8000/v1", False),
    ({"store": False}, "http://gpu-box:8000/v1", True),  # nothing kept anywhere: free to move
    ({"previous_response_id": "resp_1"}, None, True),  # a tier on the app's host: the chain is there
])
def test_a_responses_call_whose_state_the_provider_keeps_stays_on_its_host(engine, monkeypatch, extra, tier_url,
                                                                           routed):
    # turn 1 routed to a self-hosted tier got an id only that host knew: turn 2 on the strong tier failed with 404
    monkeypatch.setenv("GPU_BOX_KEY", "gpu-secret")
    small = {"model": "llama-3-8b", **({"base_url": tier_url, "api_key_env": "GPU_BOX_KEY"} if tier_url else {})}
    engine.routing = Routing(tiers={"small": small, "large": None}, threshold=1.0)
    body = {"model": "gpt-4o", "input": "Say hi", **extra}
    attempt = engine.begin(url="https://api.openai.com/v1/responses", path="/v1/responses", headers={},
                           body=json.dumps(body).encode())
    attempt.plan("/")
    assert attempt.routed is routed, attempt.routing
    assert attempt.call.model == ("llama-3-8b" if routed else "gpt-4o")
    with llmbudget.scope(routing="small"):  # a tier forced by a route or a scope too
        forced = engine.begin(url="https://api.openai.com/v1/responses", path="/v1/responses", headers={},
                              body=json.dumps(body).encode())
        forced.plan("/")
    assert forced.routed is routed, forced.routing


@pytest.mark.parametrize(("extra", "tier_url", "routed"), [
    ({"store": True, "metadata": {"feature": "faq"}}, "http://gpu-box:8000/v1", False),  # kept at OpenAI
    ({"store": True}, None, True),  # a tier on the app's host stores it there too
    ({"store": False}, "http://gpu-box:8000/v1", True),
    ({}, "http://gpu-box:8000/v1", True),  # chat completions are not stored by default
])
def test_a_stored_chat_completion_stays_on_its_host(engine, monkeypatch, extra, tier_url, routed):
    """``store: true`` routed to a tier on another host: ``chat.completions.retrieve(id)`` answered 404, and the
    completion was missing from the stored completions the app's evals read."""
    monkeypatch.setenv("GPU_BOX_KEY", "gpu-secret")
    small = {"model": "llama-3-8b", **({"base_url": tier_url, "api_key_env": "GPU_BOX_KEY"} if tier_url else {})}
    engine.routing = Routing(tiers={"small": small, "large": None}, threshold=1.0)
    body = {"model": "gpt-4o", "messages": HI, **extra}
    for forced in (None, "small"):
        with llmbudget.scope(routing=forced):
            attempt = engine.begin(url="https://api.openai.com/v1/chat/completions", path="/v1/chat/completions",
                                   headers={}, body=json.dumps(body).encode())
            attempt.plan("/")
        assert attempt.routed is routed, attempt.routing
        assert attempt.call.model == ("llama-3-8b" if routed else "gpt-4o")


@pytest.mark.parametrize(("path", "body", "why"), [
    ("/v1/responses", {"prompt": {"id": "pmpt_abc123", "variables": {"city": "Paris"}}, "input": "hi"},
     "request uses a stored prompt"),
    ("/v1/chat/completions", {"model": "gpt-4o-search-preview", "messages": HI}, "request searches the web"),
    ("/v1/chat/completions", {"model": "gpt-4o", "messages": HI, "web_search_options": {}},
     "request searches the web"),
])
def test_what_the_router_cannot_judge_or_another_model_cannot_do_stays_as_sent(engine, path, body, why):
    """A Responses stored prompt names its own model, tools and instructions, which the router never sees (a
    tier's model was injected over the prompt's); a search model searches, which the tier's model does not."""
    engine.routing = Routing(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=1.0)
    attempt = engine.begin(url=f"https://api.openai.com{path}", path=path, headers={},
                           body=json.dumps(body).encode())
    attempt.plan("/")
    assert not attempt.routed and attempt.call.model == body.get("model")
    assert attempt.routing is not None and attempt.routing["reason"] == why


def test_a_fine_tuned_model_keeps_its_model(engine):
    """No tier stands in for a fine-tune: it was sent to the small tier's base model, its training gone."""
    engine.routing = Routing(tiers={"small": "gpt-4.1-nano", "large": "gpt-4o"}, threshold=1.0)
    for model in ("ft:gpt-4o-mini-2024-07-18:acme:support:9abcDEF", "ft:gpt-4.1-2025-04-14:acme::B2x"):
        body = {"model": model, "messages": HI, "max_tokens": 50}
        attempt = engine.begin(url="https://api.openai.com/v1/chat/completions", path="/v1/chat/completions",
                               headers={}, body=json.dumps(body).encode())
        attempt.plan("/")
        assert attempt.call.model == model and not attempt.routed


@pytest.mark.parametrize("asked", [{"logprobs": True, "top_logprobs": 5}, {"logit_bias": {"9642": 100}}])
def test_a_request_for_what_a_reasoning_tier_drops_stays_on_the_strong_tier(engine, asked):
    """gpt-5-nano takes no logprobs or logit_bias: routed there, they were dropped and the app's
    ``choices[0].logprobs.content`` raised. A tier that does not reason takes them."""
    body = {"model": "gpt-4o", "messages": HI, "max_tokens": 50, **asked}
    for small, routed in (("gpt-5-nano", False), ("gpt-4.1-nano", True)):
        engine.routing = Routing(tiers={"small": small, "large": None}, threshold=1.0)
        attempt = engine.begin(url="https://api.openai.com/v1/chat/completions", path="/v1/chat/completions",
                               headers={}, body=json.dumps(body).encode())
        attempt.plan("/")
        assert attempt.routed is routed and attempt.call.model == (small if routed else "gpt-4o")
        assert all(attempt.call.body[k] == v for k, v in asked.items())
