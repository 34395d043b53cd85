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
