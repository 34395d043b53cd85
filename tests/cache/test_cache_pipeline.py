"""The cache in the pipeline: the real SDK, the real local server behind a counting proxy."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from servers import base_url, proxy

import llmbudget
from llmbudget.cache import Cache
from llmbudget.cache import cache as cache_module
from llmbudget.cache.store import CacheStore
from llmbudget.config import ConfigError, Policy, _started
from llmbudget.ledger.budgets import WouldWait, no_wait
from llmbudget.providers import adapter_for_endpoint

# The local model stops at the first newline when told to: a complete answer ("stop") that may be cached.
ASK = dict(model="gpt-4o-mini", max_tokens=24, temperature=0, stop=["\n"])
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def cached(engine, tmp_path, llm_server):
    engine.cache = Cache(tmp_path / "cache")
    with proxy(llm_server) as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client(),
                               max_retries=0)
        yield client, server


def test_a_repeat_is_answered_from_the_cache_without_reaching_the_server(cached, records):
    client, server = cached
    first = client.chat.completions.create(messages=QUESTION, **ASK)
    assert first.choices[0].finish_reason == "stop"
    again = client.chat.completions.create(messages=QUESTION, **ASK)
    assert len(server.received) == 1
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.usage == first.usage and again.model == first.model and again.id != first.id
    # a request id of its own, as every answer has (the SDK's _request_id, in logs and support tickets)
    assert again._request_id is not None and again._request_id.startswith("llmbudget-cache-")
    miss, hit = records
    assert not miss.from_cache and miss.cost_usd > 0
    assert hit.from_cache and hit.cache_tier == "exact" and hit.cost_usd == 0 and hit.saved_usd == miss.cost_usd


def test_a_streamed_request_gets_a_streamed_hit_the_sdk_helpers_accept(cached, records):
    client, server = cached
    first = client.chat.completions.create(messages=QUESTION, **ASK)
    chunks = list(client.chat.completions.create(messages=QUESTION, stream=True, **ASK))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == first.choices[0].message.content
    with client.chat.completions.stream(messages=QUESTION, **ASK) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == first.choices[0].message.content
    assert len(server.received) == 1 and [r.from_cache for r in records] == [False, True, True]


def test_a_streamed_answer_is_cached_once_seen_whole(cached, records):
    client, server = cached
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(messages=QUESTION, stream=True, **ASK) if c.choices)
    again = client.chat.completions.create(messages=QUESTION, **ASK)
    assert again.choices[0].message.content == streamed and len(server.received) == 1


def test_a_streamed_answer_without_usage_is_replayed_as_json_with_its_usage(cached, records):
    # a stream without include_usage reports none: a JSON hit replayed it as usage: null, and app code reading
    # usage.total_tokens (as every chat completion lets it) crashed on the hit
    client, server = cached
    chunks = list(client.chat.completions.create(messages=QUESTION, stream=True, **ASK))
    assert all(c.usage is None for c in chunks)
    again = client.chat.completions.create(messages=QUESTION, **ASK)
    assert records[-1].from_cache and len(server.received) == 1
    assert again.usage is not None and again.usage.prompt_tokens > 0 and again.usage.completion_tokens > 0


def test_a_hit_whose_stored_model_is_not_a_name_is_still_served(engine, records, tmp_path):
    # a server that answered "model": 123 made every repeat of that request fail on the hit's pricing
    import httpx2

    engine.cache = Cache(tmp_path / "cache")

    def answer(request):
        return httpx2.Response(200, json={
            "id": "c", "object": "chat.completion", "created": 1, "model": 123,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}})

    client = openai.OpenAI(base_url="https://api.openai.com/v1", api_key="sk-test", max_retries=0,
                           http_client=llmbudget.http_client(transport=httpx2.MockTransport(answer)))
    for _ in range(2):
        assert client.chat.completions.create(messages=QUESTION, **ASK).choices[0].message.content == "4"
    assert [r.from_cache for r in records] == [False, True] and records[1].saved_usd > 0


def test_a_paraphrase_is_a_semantic_hit_and_a_near_miss_is_not(cached, records):
    client, server = cached
    ask = lambda text: client.chat.completions.create(messages=[{"role": "user", "content": text}], **ASK)  # noqa: E731
    ask("How do I learn Python quickly?")
    ask("How can I learn Python fast?")
    ask("How do I learn Java quickly?")
    assert len(server.received) == 2
    assert records[1].cache_tier == "semantic" and records[1].cache_score >= 0.85
    assert not records[2].from_cache


def test_a_different_question_is_not_answered_from_the_cache(cached, records):
    client, server = cached
    client.chat.completions.create(messages=[{"role": "user", "content": "What is 2+2?"}], **ASK)
    client.chat.completions.create(messages=[{"role": "user", "content": "What is 2+3?"}], **ASK)
    assert len(server.received) == 2 and not records[1].from_cache


def test_tenants_system_prompts_and_scopes_keep_their_own_answers(cached, records):
    client, server = cached
    with llmbudget.scope(tenant="a"):
        client.chat.completions.create(messages=QUESTION, **ASK)
    with llmbudget.scope(tenant="b"):
        client.chat.completions.create(messages=QUESTION, **ASK)
    with llmbudget.scope(tenant="a"):
        client.chat.completions.create(messages=[{"role": "system", "content": "Answer in French."}, *QUESTION],
                                       **ASK)
        with llmbudget.scope(cache=False):
            client.chat.completions.create(messages=QUESTION, **ASK)
        client.chat.completions.create(messages=QUESTION, **ASK)
    assert len(server.received) == 4
    assert [r.from_cache for r in records] == [False, False, False, False, True]


def test_truncated_answers_and_sampled_requests_are_not_cached(cached, records):
    client, server = cached
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=2)  # finish: length
    for _ in range(2):
        client.chat.completions.create(messages=QUESTION, **{**ASK, "temperature": 0.8})
    assert len(server.received) == 4 and not any(r.from_cache for r in records)


def test_async_clients_hit_too(cached, records, llm_server):
    client, server = cached
    client.chat.completions.create(messages=QUESTION, **ASK)

    async def main() -> str:
        async with openai.AsyncOpenAI(base_url=base_url(server), api_key="sk-test",
                                      http_client=llmbudget.async_http_client()) as aclient:
            answer = await aclient.chat.completions.create(messages=QUESTION, **ASK)
            return answer.choices[0].message.content

    assert asyncio.run(main()) and len(server.received) == 1 and records[-1].from_cache


def test_invalidation(cached, records):
    client, server = cached
    client.chat.completions.create(messages=QUESTION, **ASK)
    assert llmbudget.get_engine().cache.invalidate(tenant="default") == 1
    client.chat.completions.create(messages=QUESTION, **ASK)
    assert len(server.received) == 2


def test_a_question_with_a_nul_is_looked_up_without_an_error(cached, records, caplog):
    # A NUL is the template guard's own marker: the lookup raised IndexError before (logged as "cache lookup
    # failed", the call sent on), and the answer was never a candidate. Now it is a symbol like any other.
    client, server = cached
    client.chat.completions.create(messages=QUESTION, **ASK)
    with caplog.at_level("WARNING", logger="llmbudget"):
        for _ in range(2):
            client.chat.completions.create(messages=[{"role": "user", "content": "What is the capital of France?\x00"}],
                                           **ASK)
    assert not [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(server.received) == 2 and [r.cache_tier for r in records] == [None, None, "exact"]


def test_a_call_that_keeps_its_model_never_gets_another_tiers_answer(cached, engine, records):
    from llmbudget.routing.tiers import Routing

    client, server = cached
    engine.routing = Routing(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=1.0)  # all small
    ask = {**ASK, "model": "gpt-4o"}
    routed = client.chat.completions.create(messages=QUESTION, **ask)
    with llmbudget.scope(routing=False):
        kept = client.chat.completions.create(messages=QUESTION, **ask)
    with llmbudget.scope(routing="large"):
        forced = client.chat.completions.create(messages=QUESTION, **ask)
    again = client.chat.completions.create(messages=QUESTION, **ask)  # routed: any tier's answer will do
    assert (routed.model, kept.model) == ("gpt-4.1-nano", "gpt-4o")
    assert [r.from_cache for r in records] == [False, False, True, True] and len(server.received) == 2
    # each model's answer kept beside the other's: the first (routed) one still answers routed calls
    assert forced.model == "gpt-4o" and again.model == "gpt-4.1-nano"


def test_calls_kept_to_different_models_keep_both_answers(cached, engine, records):
    """A call kept to its model and one forced to the small tier, asked in turn: each replaced the other's answer,
    so every one of them missed and the cache held one answer."""
    from llmbudget.routing.tiers import Routing

    client, server = cached
    engine.routing = Routing(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=1.0)
    ask = {**ASK, "model": "gpt-4o"}
    models = []
    for _ in range(3):
        for setting in (False, "small"):
            with llmbudget.scope(routing=setting):
                models.append(client.chat.completions.create(messages=QUESTION, **ask).model)
    assert models == ["gpt-4o", "gpt-4.1-nano"] * 3
    assert len(server.received) == 2 and [r.from_cache for r in records] == [False, False] + [True] * 4


def test_an_answer_a_budget_downgraded_is_not_kept_for_calls_without_that_pressure(cached, records):
    client, server = cached
    ask = {**ASK, "model": "gpt-4o"}
    with llmbudget.scope(budgets=[llmbudget.Budget("0.0005")], on_budget="downgrade", downgrade_to="gpt-4o-mini"):
        cheap = client.chat.completions.create(messages=QUESTION, **{**ask, "max_tokens": 200})
    full = client.chat.completions.create(messages=QUESTION, **{**ask, "max_tokens": 200})
    assert (cheap.model, full.model) == ("gpt-4o-mini", "gpt-4o") and not records[1].from_cache


# -- the cache's SQLite file locked or full (a second process holds the lock) -------------------------------------

_HOLD = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); {} c.execute('BEGIN {}');"
         " print('locked', flush=True); sys.stdin.readline()")


@contextmanager
def _locked(database: Path, *, exclusive: bool = False) -> Iterator[None]:
    """Another process holds ``database``'s write lock (``exclusive``: reads too) until the block ends."""
    code = _HOLD.format("c.execute('PRAGMA locking_mode=EXCLUSIVE');" if exclusive else "",
                        "EXCLUSIVE" if exclusive else "IMMEDIATE")
    holder = subprocess.Popen([sys.executable, "-c", code, str(database)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        holder.wait(timeout=10)


def _recorded() -> dict[str, Any]:
    """An answer recorded from the real server (the throughput bench's)."""
    cassette = Path(__file__).resolve().parents[2] / "fixtures" / "cassettes" / "chat_instruct.yaml"
    return json.loads(yaml.safe_load(cassette.read_text())["interactions"][0]["response"]["body"]["string"])


def _chat(text: str) -> Any:
    return adapter_for_endpoint("chat.completions").parse(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}, "http://127.0.0.1/v1")


def _left_out_for(monkeypatch: pytest.MonkeyPatch, seconds: float, folder: Path, timeout: float) -> Cache:
    """An exact cache in ``folder`` whose store waits ``timeout`` for the lock, left out ``seconds`` after it fails."""
    monkeypatch.setattr(cache_module, "RETRY_S", seconds)
    return Cache(store=CacheStore(folder, timeout=timeout), semantic=False)


def _save(cache: Cache, call: Any, answer: dict[str, Any]) -> bool:
    return cache.save(cache.lookup(call, tenant="t"), call, tenant="t", model="gpt-4o-mini", body=answer)


def test_a_cache_file_another_process_holds_locked_costs_one_bounded_wait_not_one_per_call(
        engine, tmp_path, llm_server, records, monkeypatch, caplog):
    # the store's lock was waited for 30 s by every call (hits too), with no way to change it
    monkeypatch.setattr(cache_module, "RETRY_S", 1.0)
    engine.cache = Cache(store=CacheStore(tmp_path / "cache", timeout=0.3))
    with proxy(llm_server) as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client(),
                               max_retries=0)

        def ask(question: str) -> tuple[str, float]:
            began = time.monotonic()
            answer = client.chat.completions.create(messages=[{"role": "user", "content": question}], **ASK)
            return answer.choices[0].message.content or "", time.monotonic() - began

        first, _ = ask(QUESTION[0]["content"])
        with _locked(tmp_path / "cache" / "cache.sqlite3"):
            _, waited = ask("What is the capital of Spain?")  # its store waits the store's timeout, then fails
            assert waited >= 0.3
            ask(QUESTION[0]["content"])  # the cache left out: a miss (reads still work: they prove nothing)
            assert records[2].cache_tier is None and len(server.received) == 3
            time.sleep(1.05)  # RETRY_S later one call tries again: the lock is still held
            ask("What is the capital of Peru?")
            assert len(server.received) == 4 and "answers again" not in caplog.text
        time.sleep(1.05)
        ask("What is the capital of Chile?")  # it takes the lock: the cache is back
        again, _ = ask(QUESTION[0]["content"])
    assert again == first and records[-1].cache_tier == "exact" and "answers again" in caplog.text
    assert sum(1 for r in caplog.records if "cannot be used" in r.getMessage()) == 1  # once per outage
    assert "database is locked" in caplog.text


def test_an_app_whose_cache_file_cannot_be_opened_now_starts_without_its_cache(tmp_path, caplog):
    # its disk full or an exclusive lock held at start-up: the policy failed, so the app did not start at all
    folder = tmp_path / "cache"
    subprocess.run([sys.executable, "-c", "import sys, llmbudget; llmbudget.Cache(sys.argv[1]).close()", str(folder)],
                   check=True, timeout=120)
    with _locked(folder / "cache.sqlite3", exclusive=True):
        assert _started(folder, "llmbudget.toml", lambda: Cache(store=CacheStore(folder, timeout=0.2))) is None
    assert "llmbudget.toml: the cache at" in caplog.text and "runs without it until it restarts" in caplog.text
    # a path that is wrong for good still fails at start-up, naming the key
    (tmp_path / "notes").write_text("not a database" * 100)
    policy = tmp_path / "llmbudget.toml"
    policy.write_text('[cache]\npath = "notes"\n')
    with pytest.raises(ConfigError, match="cache.path"):
        Policy.from_file(policy)


def test_after_the_cache_failed_one_store_at_a_time_tries_the_locked_file_again(tmp_path, monkeypatch):
    # every call arriving once RETRY_S had passed tried the file and waited its timeout, on every thread
    cache = _left_out_for(monkeypatch, 0.5, tmp_path / "cache", timeout=0.5)
    answer = _recorded()

    def save(text: str) -> float:
        began = time.monotonic()
        _save(cache, _chat(text), answer)
        return time.monotonic() - began

    save("warm up")
    try:
        with _locked(tmp_path / "cache" / "cache.sqlite3"):
            assert save("the first") >= 0.5  # fails after the store's timeout: the cache is left out
            time.sleep(0.55)
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                waited = sorted(pool.map(save, [f"question {i}" for i in range(8)]))
    finally:
        cache.close()
    assert waited[-1] >= 0.5 and waited[-2] < 0.25  # one tried the file (and waited); seven went on at once


def test_a_trial_store_that_would_wait_on_the_event_loop_is_tried_again_in_a_thread(tmp_path, monkeypatch):
    # inside no_wait() the trial raised WouldWait to be done again in a worker thread, which found the trial
    # taken (by itself) and skipped the cache: an async app's cache came back only by chance
    cache = _left_out_for(monkeypatch, 0.2, tmp_path / "cache", timeout=0.2)
    call, answer = _chat("Hello?"), _recorded()
    try:
        with _locked(tmp_path / "cache" / "cache.sqlite3"):
            assert _save(cache, call, answer) is False  # the cache is left out
            time.sleep(0.25)
            with pytest.raises(WouldWait), no_wait():  # the trial, on the event loop: it would wait for the lock
                _save(cache, call, answer)
        assert _save(cache, call, answer) is True  # done again where it may wait: still the trial; the file answers
        assert cache.lookup(call, tenant="t").tier == "exact"
    finally:
        cache.close()


def test_a_cache_left_out_comes_back_with_traffic_that_stores_nothing(tmp_path, monkeypatch):
    # only a call storing an answer tried the store again: hits turned misses, and answers that are never stored
    # (cut at max_tokens, tool calls, a budget's downgrade), kept the cache out for good
    cache = _left_out_for(monkeypatch, 0.2, tmp_path / "cache", timeout=0.2)
    known, answer = _chat("Hello?"), _recorded()
    try:
        assert _save(cache, known, answer)
        with _locked(tmp_path / "cache" / "cache.sqlite3"):
            assert not _save(cache, _chat("Another question?"), answer)
            assert not cache.lookup(known, tenant="t").hit  # left out
        time.sleep(0.25)
        assert cache.lookup(known, tenant="t").tier == "exact"  # a lookup alone tried the store: back
    finally:
        cache.close()


def test_events_answering_a_call_not_streamed_are_not_kept(engine, tmp_path, llm_server, records):
    """The app got their text (the SDK returns a str): a hit, given as the answer object asked for, would change
    what it sees."""
    def streamed(body: bytes) -> bytes:  # a gateway that always streams
        return json.dumps({**json.loads(body), "stream": True}).encode()

    engine.cache = Cache(tmp_path / "cache")
    with proxy(llm_server, forward=streamed, content_type="text/event-stream") as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client(),
                               max_retries=0)
        for _ in range(2):
            assert isinstance(client.chat.completions.create(messages=QUESTION, **ASK), str)
        assert len(server.received) == 2
    assert [r.from_cache for r in records] == [False, False] and records[0].usage.output_tokens > 0
