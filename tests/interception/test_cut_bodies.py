"""Answers that break after their status line: the record says what the app got (issue 12, item 7)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from servers import base_url, proxy

import llmbudget
from llmbudget.pipeline import Attempt

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_a_body_cut_mid_way_is_recorded_as_the_error_the_app_got(llm_server, engine, records):
    with proxy(llm_server, cut=True) as upstream:
        client = openai.OpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8)
    (record,) = records
    assert record.status == 200 and record.error and "RemoteProtocolError" in record.error
    assert record.estimated and record.usage.input_tokens > 0 and record.cost_usd > 0


def test_a_cut_stream_is_recorded_with_its_error_and_the_text_seen(llm_server, engine, records):
    with proxy(llm_server, cut=True) as upstream:
        client = openai.OpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        with pytest.raises((openai.APIConnectionError, httpx.RemoteProtocolError)):
            for _ in client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=24,
                                                    stream=True):
                pass
    (record,) = records
    assert record.status == 200 and record.error is not None and record.estimated


def test_a_body_that_is_not_json_is_recorded_as_an_error(llm_server, engine, records):
    with proxy(llm_server, garble=True) as upstream:
        client = openai.OpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        with pytest.raises((json.JSONDecodeError, openai.APIResponseValidationError)):
            client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8)
    (record,) = records
    assert record.status == 200 and record.error is not None and "not valid JSON" in record.error
    assert record.estimated and record.usage.input_tokens > 0 and record.usage.output_tokens == 0


def test_an_answer_too_large_to_keep_is_priced_from_the_usage_at_its_end(llm_server, engine, records, monkeypatch):
    from llmbudget import pipeline

    monkeypatch.setattr(pipeline, "MAX_BODY_BYTES", 64)  # every answer is "too large" now
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", max_retries=0, http_client=llmbudget.http_client())
    usage = client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8).usage
    (record,) = records
    assert record.error is None and not record.estimated
    assert (record.usage.input_tokens, record.usage.output_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert record.usage.output_tokens > 0


def test_a_stream_never_read_nor_closed_settles_when_dropped(llm_server, engine, records):
    import gc

    store = llmbudget.MemoryBudgetStore()
    engine.budget_store = store
    engine.budgets = [llmbudget.Budget("1", per="tenant", period="day")]
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", max_retries=0, http_client=llmbudget.http_client())
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8, stream=True)
    assert records == [] and len(store._open) == 1  # reserved, not settled: nobody read it
    del stream
    gc.collect()
    (record,) = records
    assert record.estimated and record.status == 200
    assert store._open == {}  # the hold is released at once, not after the reservation's TTL
    (counter,) = store._counters.values()
    assert counter == (record.cost_usd, 0)


def test_async_cache_work_runs_off_the_event_loop(llm_server, engine, records, tmp_path, monkeypatch):
    """A long prompt's hashing, embedding and SQLite work must not stall every other request of an async server."""
    import asyncio
    import threading

    from llmbudget.cache import Cache

    engine.cache = Cache(tmp_path / "cache")
    threads: dict[str, set[int]] = {"lookup": set(), "save": set(), "plan": set()}
    lookup, save, plan = Cache.lookup, Cache.save, Attempt.plan

    def watched_lookup(self, *args, **kwargs):
        threads["lookup"].add(threading.get_ident())
        return lookup(self, *args, **kwargs)

    def watched_save(self, *args, **kwargs):
        threads["save"].add(threading.get_ident())
        return save(self, *args, **kwargs)

    def watched_plan(self, *args, **kwargs):
        threads["plan"].add(threading.get_ident())
        return plan(self, *args, **kwargs)

    monkeypatch.setattr(Cache, "lookup", watched_lookup)
    monkeypatch.setattr(Cache, "save", watched_save)
    monkeypatch.setattr(Attempt, "plan", watched_plan)
    # The base model's answers end at the cap, and cut answers are never stored: count this one whole.
    from llmbudget.cache import answers, cache

    whole = answers.storable

    def storable(call, *, body=None, events=None):
        if isinstance(body, dict) and body.get("choices"):
            body = {**body, "choices": [{**body["choices"][0], "finish_reason": "stop"}]}
        return whole(call, body=body, events=events)

    monkeypatch.setattr(answers, "storable", storable)
    monkeypatch.setattr(cache, "storable", storable)

    async def main() -> tuple[int, str, str]:
        async with openai.AsyncOpenAI(base_url=llm_server, api_key="sk-test", max_retries=0,
                                      http_client=llmbudget.async_http_client()) as client:
            for _ in range(2):
                await client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=6,
                                                     temperature=0)
            return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert len(records) == 2 and records[1].from_cache  # the first answer was stored, the second served from it
    assert len(threads["lookup"]) >= 1 and loop_thread not in threads["lookup"]
    assert len(threads["save"]) == 1 and loop_thread not in threads["save"]
    assert threads["plan"] == {loop_thread}  # the rest of the call's work stays on the loop: no second hop
