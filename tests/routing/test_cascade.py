"""The cascade (``Routing(min_confidence=...)``): the weak tier's own token log-probabilities decide whether
its answer stands, with the real SDK against the real local server (which returns real log-probabilities)."""

from __future__ import annotations

import json
import math
from decimal import Decimal

import openai
import pytest
from servers import base_url, proxy

import llmbudget
from llmbudget.config import ConfigError, engine_from_config
from llmbudget.routing.confidence import answer_confidence, probe, without_logprobs
from llmbudget.routing.tiers import Routing

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WHOLE = dict(messages=QUESTION, max_tokens=24, temperature=0, stop=["\n"])  # an answer that stops on its own


def client_for(url: str, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="sk-test", http_client=llmbudget.http_client(), max_retries=0,
                         **options)


def test_confidence_from_the_servers_real_logprobs(llm_server):
    plain = openai.OpenAI(base_url=llm_server, api_key="sk-test", max_retries=0)
    chat = plain.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=6, logprobs=True,
                                         top_logprobs=1).model_dump()
    values = [t["logprob"] for t in chat["choices"][0]["logprobs"]["content"]]
    assert values and answer_confidence(chat) == pytest.approx(math.exp(sum(values) / len(values)))
    assert 0.0 < answer_confidence(chat) <= 1.0
    legacy = plain.completions.create(model="gpt-4o-mini", prompt="The capital of France is", max_tokens=4,
                                      logprobs=1).model_dump()
    assert 0.0 < answer_confidence(legacy) <= 1.0
    bare = plain.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=4).model_dump()
    assert answer_confidence(bare) is None
    assert without_logprobs(chat)["choices"][0]["logprobs"] is None
    for nothing in (None, {}, {"choices": []}, {"choices": ["x"]}, "text"):
        assert answer_confidence(nothing) is None


def test_every_choice_is_judged_and_a_token_without_a_logprob_counts_as_unlikely():
    def choice(*values: object) -> dict:
        return {"logprobs": {"content": [{"token": "x", "logprob": v} for v in values]}}

    sure = answer_confidence({"choices": [choice(-0.01)]})
    assert sure == pytest.approx(math.exp(-0.01))
    assert answer_confidence({"choices": [choice(-0.01), choice(-4.5)]}) == pytest.approx(math.exp(-4.5))  # n = 2
    for missing in (None, float("-inf"), float("nan")):  # left out, they made the answer look sure (0.99)
        assert answer_confidence({"choices": [choice(-0.01, missing)]}) < 1e-100
    assert answer_confidence({"choices": [choice(-0.01), {"logprobs": None}]}) is None  # one choice not judged


def test_probe_asks_only_where_it_may():
    assert probe({"messages": QUESTION}) == {"messages": QUESTION, "logprobs": True, "top_logprobs": 1}
    for body in ({"messages": QUESTION, "stream": True}, {"messages": QUESTION, "logprobs": True},
                 {"messages": QUESTION, "tools": [{"type": "function"}]}, {"messages": QUESTION, "n": 2}):
        assert probe(body) is None


@pytest.fixture
def cascade(engine):
    def configure(min_confidence: float) -> llmbudget.Engine:
        engine.routing = Routing(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=1.0,
                                 min_confidence=min_confidence)
        return engine
    return configure


def test_an_unsure_weak_answer_is_retried_on_the_strong_tier(llm_server, cascade, records):
    cascade(0.999)  # a 270M model is never that sure
    with proxy(llm_server) as upstream:
        answer = client_for(base_url(upstream)).chat.completions.create(
            model="gpt-4o", messages=QUESTION, max_tokens=6)
        sent = [json.loads(entry[2]) for entry in upstream.received]
    weak, strong = records
    assert answer.model == "gpt-4o" and answer.choices[0].logprobs is None
    assert sent[0]["model"] == "gpt-4.1-nano" and sent[0]["logprobs"] is True and sent[0]["top_logprobs"] == 1
    assert sent[1]["model"] == "gpt-4o" and "logprobs" not in sent[1]  # the strong tier is asked as the app asked
    assert 0.0 < weak.routing["confidence"] < 0.999 and weak.cost_usd > 0
    assert strong.routing["reason"].startswith("escalated: the weak tier's answer was unsure (confidence")
    assert strong.model_sent == "gpt-4o" and strong.cost_usd > weak.cost_usd
    assert strong.sequence == weak.sequence  # one call: it began when the weak attempt did


def test_a_sure_enough_answer_stands_without_the_logprobs_the_app_did_not_ask_for(llm_server, cascade, records):
    cascade(0.001)
    answer = client_for(llm_server).chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=6)
    (record,) = records
    assert answer.model == "gpt-4.1-nano" and answer.choices[0].logprobs is None
    assert answer.choices[0].message.content and answer.usage.completion_tokens == record.usage.output_tokens
    assert record.routing["confidence"] >= 0.001 and record.cost_usd > Decimal(0)
    # an app that asks for log-probabilities gets them, and the cascade reads the same ones
    asked = client_for(llm_server).chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=6,
                                                           logprobs=True, top_logprobs=1)
    assert asked.choices[0].logprobs is not None and asked.choices[0].logprobs.content
    assert records[1].routing["confidence"] == pytest.approx(answer_confidence(asked.model_dump()), abs=1e-4)


def test_async_cascade(llm_server, cascade, records):
    import asyncio

    cascade(0.999)

    async def main() -> tuple[str, object]:
        async with openai.AsyncOpenAI(base_url=llm_server, api_key="sk-test", max_retries=0,
                                      http_client=llmbudget.async_http_client()) as client:
            answer = await client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=6)
            return answer.model, answer.choices[0].logprobs

    assert asyncio.run(main()) == ("gpt-4o", None)
    assert [r.model_sent for r in records] == ["gpt-4.1-nano", "gpt-4o"]


def test_streams_are_not_probed(llm_server, cascade, records):
    cascade(0.999)
    stream = client_for(llm_server).chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=4,
                                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) is not None
    (record,) = records
    assert record.model_sent == "gpt-4.1-nano" and "confidence" not in record.routing


def test_min_confidence_in_the_policy(tmp_path):
    engine = engine_from_config({"routing": {"tiers": {"small": "gpt-4.1-nano", "large": ""},
                                             "min_confidence": 0.6}}, source="t")
    assert engine.routing is not None and engine.routing.min_confidence == 0.6
    for bad in (0, 1, 1.5, True, "high"):
        with pytest.raises(ConfigError, match="min_confidence"):
            engine_from_config({"routing": {"tiers": {"small": "m", "large": ""}, "min_confidence": bad}},
                               source="t")


@pytest.mark.parametrize("bad", ["high", True, -0.1, 1.5, [0.3]])
def test_a_bad_threshold_names_its_key(bad):
    with pytest.raises(ConfigError, match=r"threshold must be a number within \[0, 1\]"):
        engine_from_config({"routing": {"tiers": {"small": "m", "large": ""}, "threshold": bad}}, source="t")


def _asks_for(model: str, body: bytes) -> bool:
    return json.loads(body or b"{}").get("model") == model


def test_a_tier_that_refuses_logprobs_is_asked_again_without_them_and_then_never(llm_server, cascade, records,
                                                                                    caplog):
    cascade(0.999)  # every probed answer would escalate: none is probed
    refusal = (400, "logprobs is not supported with this model")  # as Groq words it
    with proxy(llm_server, refuse=lambda body: refusal if b'"logprobs"' in body else None) as tier:
        client = client_for(base_url(tier))
        first = client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=6)
        second = client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=6)
        sent = [json.loads(entry[2]) for entry in tier.received]
    assert first.model == second.model == "gpt-4.1-nano"  # routing still saves: the answers stand
    assert [(body["model"], "logprobs" in body) for body in sent] == [
        ("gpt-4.1-nano", True), ("gpt-4.1-nano", False), ("gpt-4.1-nano", False)]
    assert [(r.model_sent, r.status) for r in records] == [("gpt-4.1-nano", 400), ("gpt-4.1-nano", 200),
                                                           ("gpt-4.1-nano", 200)]
    assert sum("refuses log-probabilities" in m for m in caplog.messages) == 1


@pytest.mark.parametrize("failure", [503, 429, "dropped"])
@pytest.mark.parametrize("async_", [False, True])
def test_the_weak_answer_is_kept_when_the_strong_retry_fails(llm_server, cascade, records, failure, async_):
    import asyncio

    cascade(0.999)
    status = failure if isinstance(failure, int) else None  # "dropped": the connection closes, no answer
    with proxy(llm_server, refuse=lambda body: (status or 0) if _asks_for("gpt-4o", body) else None) as upstream:

        async def ask_async() -> object:
            async with openai.AsyncOpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                                          http_client=llmbudget.async_http_client()) as client:
                return await client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=6)

        answer = asyncio.run(ask_async()) if async_ else client_for(base_url(upstream)).chat.completions.create(
            model="gpt-4o", messages=QUESTION, max_tokens=6)
        sent = [json.loads(entry[2])["model"] for entry in upstream.received]
    assert sent == ["gpt-4.1-nano", "gpt-4o"]
    assert answer.model == "gpt-4.1-nano" and answer.choices[0].logprobs is None  # paid for, and as asked
    assert answer.choices[0].message.content
    weak, strong = records
    assert weak.status == 200 and weak.cost_usd > 0 and strong.model_sent == "gpt-4o"
    assert strong.status == status and strong.error
    # the app was served the weak answer: routing saved what its record says, the failed retry takes none back
    assert weak.routing_saved_usd > 0 and strong.routing_saved_usd == 0


def test_a_refusal_whose_body_cannot_be_read_sends_the_call_to_the_strong_tier(llm_server, engine, records):
    # a tier elsewhere answers the probed call 400 with a body that is not the gzip it says: routing must not be
    # why the call fails
    refusal = (400, "logprobs is not supported")
    with proxy(llm_server, refuse=lambda body: refusal, encoding="gzip") as tier:
        engine.routing = Routing(tiers={"small": {"model": "gpt-4.1-nano", "base_url": base_url(tier)},
                                        "large": None}, threshold=1.0, min_confidence=0.5)
        answer = client_for(llm_server).chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=6)
    assert answer.model == "gpt-4o" and [(r.model_sent, r.status) for r in records] == [("gpt-4.1-nano", 400),
                                                                                       ("gpt-4o", 200)]


def test_a_400_for_another_reason_is_not_asked_again_without_the_probe(llm_server, cascade, records):
    cascade(0.999)
    too_long = (400, "This model's maximum context length is 8192 tokens")
    with proxy(llm_server, refuse=lambda body: too_long if _asks_for("gpt-4.1-nano", body) else None) as upstream:
        answer = client_for(base_url(upstream)).chat.completions.create(model="gpt-4o", messages=QUESTION,
                                                                         max_tokens=6)
        sent = [json.loads(entry[2])["model"] for entry in upstream.received]
    assert sent == ["gpt-4.1-nano", "gpt-4o"] and answer.model == "gpt-4o"  # the tier's refusal: strong, once
    assert [r.status for r in records] == [400, 200]


def test_a_forced_small_tier_is_neither_probed_nor_escalated(llm_server, cascade, records):
    cascade(0.999)
    with proxy(llm_server) as upstream, llmbudget.scope(routing="small"):
        answer = client_for(base_url(upstream)).chat.completions.create(model="gpt-4o", messages=QUESTION,
                                                                         max_tokens=6)
        sent = [json.loads(entry[2]) for entry in upstream.received]
    assert answer.model == "gpt-4.1-nano" and [r.model_sent for r in records] == ["gpt-4.1-nano"]
    assert len(sent) == 1 and "logprobs" not in sent[0]


def test_an_escalation_is_answered_from_the_cache_only_by_a_strong_tier_answer(llm_server, cascade, records,
                                                                                 tmp_path):
    engine = cascade(0.001)  # the small tier's sure answer stands and is stored (whole: it stops on its own)
    engine.cache = llmbudget.Cache(tmp_path / "cache")
    client_for(llm_server).chat.completions.create(model="gpt-4o", **WHOLE)
    url = llm_server + "/chat/completions"
    body = json.dumps({"model": "gpt-4o", **WHOLE}).encode()

    def escalation() -> llmbudget.pipeline.Attempt:
        attempt = engine.begin(url=url, path="/v1/chat/completions", headers={}, body=body)
        attempt.force_tier, attempt.escalated_from = "large", "unsure (confidence 0.1 < 0.999)"
        attempt.routing_offset_usd = records[0].cost_usd
        return attempt

    assert engine.begin(url=url, path="/v1/chat/completions", headers={}, body=body).lookup_cache() is not None
    assert escalation().lookup_cache() is None  # another small-tier answer would be no escalation
    with llmbudget.scope(routing="large"):  # the strong tier's answer is stored too
        client_for(llm_server).chat.completions.create(model="gpt-4o", **WHOLE)
    retry = escalation()
    assert retry.lookup_cache() is not None
    hit = retry.record
    assert hit.from_cache and hit.model_answered == "gpt-4o"
    assert hit.routing["reason"].startswith("escalated: the weak tier's answer was unsure")
    assert hit.routing_saved_usd == -records[0].cost_usd  # the weak call's cost, taken back


def test_a_brotli_encoded_weak_answer_is_judged_and_loses_its_logprobs(llm_server, cascade, records):
    cascade(0.001)
    with proxy(llm_server, compress="br") as upstream:
        answer = client_for(base_url(upstream)).chat.completions.create(model="gpt-4o", messages=QUESTION,
                                                                         max_tokens=6)
        assert upstream.sent[0][:1] != b"{"
    (record,) = records
    assert answer.model == "gpt-4.1-nano" and answer.choices[0].logprobs is None
    assert record.routing["confidence"] >= 0.001 and not record.estimated
    assert record.usage.output_tokens == answer.usage.completion_tokens
