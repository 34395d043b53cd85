"""Answers that break after their status line: the record says what the app got (issue 12, item 7)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from servers import _serve, base_url, proxy

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
    # a whole answer is generated (and billed) before its first byte is sent: charged its worst case, not the
    # input alone
    assert record.usage.output_tokens == 8


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


@pytest.mark.parametrize("broken", [{"garble": True}, {"rewrite": lambda content: b""}])  # cut, or empty
def test_a_body_that_is_not_json_is_recorded_as_an_error(llm_server, engine, records, broken):
    # an empty 200 JSON body was recorded with no error, although the app's SDK failed on it
    with proxy(llm_server, **broken) as upstream:
        client = openai.OpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        with pytest.raises((json.JSONDecodeError, openai.APIResponseValidationError)):
            client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8)
    (record,) = records
    assert record.status == 200 and record.error is not None and "not valid JSON" in record.error
    # cut in half (no usage left to read), the whole answer was generated and billed: its worst case; empty, its
    # input alone (it was charged the input alone when cut too)
    assert record.estimated and record.usage.input_tokens > 0
    assert record.usage.output_tokens == (8 if broken.get("garble") else 0)


@pytest.mark.parametrize("body", [b"upstream request timeout", b"<html><body>502 Bad Gateway</body></html>",
                                  b'{"message": "quota exceeded", "code": 429'])
def test_a_200_that_is_no_answer_is_charged_its_input_alone(llm_server, engine, records, body):
    """A gateway's own error or page, labelled JSON with a 200: no answer was generated, so none is charged (its
    worst case was once unreadable answers were charged theirs: 4,000 output tokens for a 4,000-token limit)."""
    with proxy(llm_server, rewrite=lambda content: body) as upstream:
        client = openai.OpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        with pytest.raises(json.JSONDecodeError):
            client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8)
    (record,) = records  # (its worst case would be 8 output tokens)
    assert record.error is not None and record.usage.input_tokens > 0 and record.usage.output_tokens == 0


def test_a_whole_answer_that_is_not_json_is_charged_the_usage_it_names(llm_server, engine, records):
    """A proxy's stray comma: the app's SDK cannot read the answer, but the server generated and billed it, and
    its usage is there to read. It was charged its input alone."""
    with proxy(llm_server, rewrite=lambda content: content.replace(b"{", b"{,", 1)) as upstream:
        client = openai.OpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        with pytest.raises(json.JSONDecodeError):
            client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8)
        (sent,) = upstream.sent
    usage = json.loads(sent.replace(b"{,", b"{", 1))["usage"]
    (record,) = records
    assert record.error is not None and "not valid JSON" in record.error and record.estimated
    assert (record.usage.input_tokens, record.usage.output_tokens) == (usage["prompt_tokens"],
                                                                       usage["completion_tokens"])
    assert record.usage.output_tokens > 0


@pytest.mark.parametrize("status", [201, 202, 204])
def test_an_empty_answer_with_another_success_status_is_recorded_as_an_error(llm_server, engine, records, status):
    # only an empty 200 was: the app's SDK fails on any empty JSON body, and gets "" for one of another type
    with proxy(llm_server, rewrite=lambda content: b"", status=status) as upstream:
        client = openai.OpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        with pytest.raises(json.JSONDecodeError):
            client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8)
    with proxy(llm_server, rewrite=lambda content: b"", status=status, content_type="text/plain") as upstream:
        client = openai.OpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        assert client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8) == ""
    as_json, as_text = records
    assert (as_json.status, as_text.status) == (status, status)
    assert as_json.error is not None and "not valid JSON" in as_json.error
    assert as_text.error is not None and "empty body" in as_text.error
    assert all(r.estimated and r.usage.input_tokens > 0 and r.usage.output_tokens == 0 for r in records)


def test_an_answer_too_large_to_keep_is_priced_from_the_usage_at_its_end(llm_server, engine, records, monkeypatch):
    from llmbudget import pipeline

    monkeypatch.setattr(pipeline, "MAX_BODY_BYTES", 64)  # every answer is "too large" now
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", max_retries=0, http_client=llmbudget.http_client())
    usage = client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8).usage
    (record,) = records
    assert record.error is None and not record.estimated
    assert (record.usage.input_tokens, record.usage.output_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert record.usage.output_tokens > 0


def test_a_long_prompt_whose_answer_breaks_is_finished_off_the_event_loop(llm_server, engine, records, monkeypatch):
    """Counting a long prompt's tokens for the record of a failed call takes long: it must not stall the loop."""
    import asyncio
    import threading

    finished: list[int] = []
    real = Attempt.finish

    def watched(self, **kwargs):
        if self.engine is engine:  # not an earlier test's call, settled when the collector drops it
            finished.append(threading.get_ident())
        return real(self, **kwargs)

    monkeypatch.setattr(Attempt, "finish", watched)
    long_question = [{"role": "user", "content": "Say yes. " + "Now. " * 3000}]  # over 8 KiB

    async def main() -> int:
        with proxy(llm_server, cut=True) as upstream:
            async with openai.AsyncOpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                                          http_client=llmbudget.async_http_client()) as client:
                with pytest.raises(openai.APIConnectionError):
                    await client.chat.completions.create(model="gpt-4o-mini", messages=long_question, max_tokens=8)
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    (record,) = records
    assert record.error and "RemoteProtocolError" in record.error and record.usage.input_tokens > 3000
    assert finished and finished[0] != loop_thread  # the finish that records the call (a later one is a no-op)


def test_a_stream_too_large_to_keep_is_priced_from_the_usage_at_its_end(llm_server, engine, records, monkeypatch):
    # the sync SDK closes the stream once it read [DONE], before its last bytes: the usage at its end was dropped
    from llmbudget import pipeline

    def with_usage_chunk(stream: bytes) -> bytes:  # the server's real stream, with OpenAI's include_usage chunk
        events = stream.split(b"\n\n")
        last = json.loads(events[-3][len(b"data: "):])
        chunk = {**last, "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": len(events) - 3,
                                                  "total_tokens": 11 + len(events) - 3}}
        return b"\n\n".join([*events[:-2], b"data: " + json.dumps(chunk).encode(), *events[-2:]])

    monkeypatch.setattr(pipeline, "MAX_BODY_BYTES", 64)
    with proxy(llm_server, rewrite=with_usage_chunk) as upstream:
        client = openai.OpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=12,
                                                     stream=True, stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert usage is not None
    (record,) = records
    assert record.error is None and not record.estimated
    assert (record.usage.input_tokens, record.usage.output_tokens) == (usage.prompt_tokens, usage.completion_tokens)


def test_a_stream_with_a_broken_event_is_never_cached(llm_server, engine, records, tmp_path):
    from llmbudget.cache import Cache

    engine.cache = Cache(tmp_path / "cache")
    ask = dict(model="gpt-4o-mini", messages=QUESTION, max_tokens=24, temperature=0, stop=["\n"])
    with proxy(llm_server, rewrite=_a_broken_event_after_the_first_chunk) as upstream:
        client = openai.OpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        with pytest.raises(json.JSONDecodeError):
            list(client.chat.completions.create(stream=True, **ask))
    plain = openai.OpenAI(base_url=llm_server, api_key="sk-test", max_retries=0, http_client=llmbudget.http_client())
    plain.chat.completions.create(**ask)
    assert [r.from_cache for r in records] == [False, False]  # the app never got the first answer whole


def test_a_stream_too_large_to_keep_without_usage_estimates_its_output(llm_server, engine, records, monkeypatch):
    from llmbudget import pipeline

    monkeypatch.setattr(pipeline, "MAX_BODY_BYTES", 64)
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", max_retries=0, http_client=llmbudget.http_client())
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=12, stream=True))
    (record,) = records
    assert record.error is None and record.estimated and record.usage.input_tokens > 0
    assert 0 < record.usage.output_tokens <= len(chunks)  # about a token per chunk, not 0


def test_anthropic_streams_too_large_or_cut_keep_the_input_count_the_server_reported(messages_server, engine, records,
                                                                                      monkeypatch):
    import anthropic

    from llmbudget import pipeline

    def ask(base_url: str) -> int:
        client = anthropic.Anthropic(base_url=base_url, api_key="sk-test", max_retries=0,
                                     http_client=llmbudget.http_client(sdk="anthropic"))
        with client.messages.stream(model="claude-haiku-4-5", max_tokens=24, messages=QUESTION) as stream:
            told = stream.get_final_message().usage  # its input_tokens leaves out the cache's reads and writes
            return told.input_tokens + (told.cache_read_input_tokens or 0) + (told.cache_creation_input_tokens or 0)

    monkeypatch.setattr(pipeline, "MAX_BODY_BYTES", 64)
    monkeypatch.setattr(pipeline, "_TAIL_BYTES", 500)  # the start keeps message_start, the end message_delta
    reported = ask(messages_server)  # the server's count (its own prompt cache moves the uncached part per call)
    (record,) = records
    assert record.usage.input_tokens == reported > 0 and record.usage.output_tokens > 0 and not record.estimated
    monkeypatch.undo()
    records.clear()
    with proxy(messages_server.rstrip("/") + "/v1", cut=True) as upstream:
        with pytest.raises(Exception):  # noqa: B017 - the SDK's error for a cut stream
            ask(base_url(upstream).removesuffix("/v1"))
        (sent,) = upstream.sent
    start = next(json.loads(line[5:]) for line in sent.decode().splitlines()
                 if line.startswith("data:") and '"message_start"' in line)
    (record,) = records
    assert record.error and record.estimated
    told = start["message"]["usage"]  # Anthropic's input_tokens leaves out the cache's reads and writes
    assert record.usage.input_tokens == (told["input_tokens"] + told.get("cache_read_input_tokens", 0)
                                         + told.get("cache_creation_input_tokens", 0))  # not a tiktoken estimate


def test_a_stream_never_read_nor_closed_settles_when_dropped(llm_server, engine, records):
    import gc

    store = llmbudget.MemoryBudgetStore()
    engine.budget_store = store
    engine.budgets = [llmbudget.Budget("1", per="tenant", period="day")]
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", max_retries=0, http_client=llmbudget.http_client())
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8, stream=True)
    assert records == [] and len(store._open) == 1  # reserved, not settled: nobody read it
    del stream
    gc.collect()  # (a collection hands the settle to llmbudget's settling thread: at once, not after the TTL)
    _wait_for(lambda: records and store._open == {})
    (record,) = records
    assert record.estimated and record.status == 200
    (counter,) = store._counters.values()
    assert counter == (record.cost_usd, 0)


def test_a_close_settles_at_once_while_another_thread_collects(llm_server, engine, records, monkeypatch):
    """A collection in another thread (its finalizers may let the GIL go) deferred this thread's close() to the
    settling thread: right after the ``with`` block the call was neither recorded nor its hold released."""
    from llmbudget.interception import _transport

    store = llmbudget.MemoryBudgetStore()
    engine.budget_store = store
    engine.budgets = [llmbudget.Budget("1", per="tenant", period="day")]
    monkeypatch.setattr(_transport, "_collector", threading.get_ident() + 1)  # some other thread's collection
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", max_retries=0, http_client=llmbudget.http_client())
    with client.chat.completions.with_streaming_response.create(model="gpt-4o-mini", messages=QUESTION,
                                                                max_tokens=8, stream=True):
        pass
    assert len(records) == 1 and store._open == {}


def test_a_dropped_stream_settles_inline_where_no_thread_can_start(llm_server, engine, records, monkeypatch):
    """Python 3.12 refuses new threads at interpreter shutdown: starting the settling thread for a response made
    in an atexit hook raised RuntimeError into the app's call."""
    import gc

    from llmbudget.interception import _transport

    def refused(self: Any) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(_transport, "_settler", None)
    monkeypatch.setattr(threading.Thread, "start", refused)
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", max_retries=0, http_client=llmbudget.http_client())
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8, stream=True)
    assert _transport._settler is None
    del stream
    gc.collect()  # no thread to hand it to: settled in the collection, as before there was one
    assert len(records) == 1 and records[0].estimated


def test_streams_dropped_just_before_exit_are_all_recorded(tmp_path):
    """The settling thread's call in hand at exit was recorded after the ledger wrote what it held: 199 of 200."""
    script = tmp_path / "drop.py"
    script.write_text(textwrap.dedent("""
        import gc, importlib, json, sys
        import openai, llmbudget, llmbudget.ledger
        httpx2 = importlib.import_module(sys.argv[3])  # the SDK's own library (see _sdk_library)
        event = 'data: ' + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1,
                                       "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "hi"},
                                       "finish_reason": None}]}) + '\\n\\n'
        body = (event * 3 + 'data: [DONE]\\n\\n').encode()
        transport = httpx2.MockTransport(lambda request: httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=body))
        llmbudget.configure(ledger=llmbudget.ledger.SQLiteLedger(sys.argv[1]),
                            budget_store=llmbudget.ledger.SQLiteBudgetStore(sys.argv[2]),
                            budgets=[llmbudget.Budget("10", per="global")])
        client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="x", max_retries=0,
                               http_client=llmbudget.http_client(transport=transport))
        gc.disable()  # every stream left for one collection, just before exit
        for _ in range(200):
            for _ in client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=10, stream=True):
                break
        gc.enable()
        gc.collect()
        sys.exit(0)
    """))
    ledger, store = tmp_path / "ledger.db", tmp_path / "budgets.db"
    for _ in range(3):
        ledger.unlink(missing_ok=True)
        done = subprocess.run([sys.executable, str(script), str(ledger), str(store), _sdk_library().__name__],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(Path(llmbudget.__file__).parents[1])})
        assert done.returncode == 0, done.stderr[-2000:]
        assert len(list(llmbudget.ledger.SQLiteLedger(ledger).records())) == 200


@pytest.mark.parametrize("finalizer_first", [False, True])
def test_responses_still_unread_at_exit_are_recorded(tmp_path, finalizer_first):
    """Responses alive and unread at exit were settled by weakref's own exit hook, which ran after the ledgers'
    when anything had made a weakref.finalize before llmbudget was imported (a TemporaryDirectory): 0 of 3 kept."""
    script = tmp_path / "unread.py"
    script.write_text(textwrap.dedent("""
        import importlib, sys, weakref
        class Kept: pass
        kept = Kept()
        if sys.argv[3] == "1":
            weakref.finalize(kept, print)  # made before llmbudget is imported: weakref's exit hook runs last
        import llmbudget, llmbudget.ledger
        library = importlib.import_module(sys.argv[2])
        answer = (b'{"id": "c", "object": "chat.completion", "model": "gpt-4o-mini", "choices": [{"index": 0, '
                  b'"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}], '
                  b'"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}')
        llmbudget.configure(ledger=llmbudget.ledger.SQLiteLedger(sys.argv[1]))
        client = llmbudget.http_client(transport=library.MockTransport(lambda request: library.Response(
            200, headers={"content-type": "application/json"}, stream=library.ByteStream(answer))))
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        KEPT = [client.send(client.build_request("POST", "https://api.openai.com/v1/chat/completions", json=body),
                            stream=True) for _ in range(3)]
    """))
    ledger = tmp_path / "ledger.db"
    done = subprocess.run([sys.executable, str(script), str(ledger), _sdk_library().__name__, str(int(finalizer_first))],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(llmbudget.__file__).parents[1])})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "settling a call failed" not in done.stderr  # (tiktoken, imported in a settle at exit, raised)
    assert len(list(llmbudget.ledger.SQLiteLedger(ledger).records())) == 3


def _wait_for(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within 10 s"
        time.sleep(0.01)


class _CollectingLock:
    """A lock that runs a garbage collection once taken, as an allocation inside a locked section may."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> _CollectingLock:
        self._lock.acquire()
        import gc

        gc.collect()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


@pytest.mark.parametrize("half_read", [False, True])
def test_a_dropped_stream_collected_inside_a_budget_stores_lock_settles_without_deadlock(
        llm_server, engine, records, half_read):
    """The SDK's Stream is a reference cycle, so the collector finalizes a dropped one (and, half read, its
    generator closes the response) wherever it runs: inside the store's lock, in the next call's reserve, the
    settle waited for that very lock forever. The collector now only hands the settle to a thread."""
    store = llmbudget.MemoryBudgetStore()
    engine.budget_store = store
    engine.budgets = [llmbudget.Budget("1", per="tenant", period="day")]
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", max_retries=0, http_client=llmbudget.http_client())
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8, stream=True)
    if half_read:
        for _ in stream:
            break
    del stream
    store._lock = _CollectingLock()  # type: ignore[assignment]
    done: list[Any] = []
    call = threading.Thread(target=lambda: done.append(client.chat.completions.create(
        model="gpt-4o-mini", messages=QUESTION, max_tokens=8)), daemon=True)
    call.start()
    call.join(30)
    assert not call.is_alive() and done, "the call deadlocked in its reserve"
    _wait_for(lambda: len(records) == 2 and store._open == {})
    (counter,) = store._counters.values()
    assert counter == (sum(r.cost_usd for r in records), 0)


def _watch_cache_threads(monkeypatch) -> dict[str, list[int]]:
    """The threads that run each cache lookup, cache store and call plan, in order; and every answer of the
    base model (which ends at the cap, and cut answers are never stored) counted whole."""
    import threading

    from llmbudget.cache import Cache, answers, cache

    threads: dict[str, list[int]] = {"lookup": [], "save": [], "plan": []}

    def watching(name: str, real):
        def watched(self, *args, **kwargs):
            threads[name].append(threading.get_ident())
            return real(self, *args, **kwargs)

        return watched

    for name, owner in (("lookup", Cache), ("save", Cache), ("plan", Attempt)):
        monkeypatch.setattr(owner, name, watching(name, getattr(owner, name)))
    whole = answers.storable

    def storable(call, *, body=None, events=None):
        if isinstance(body, dict) and body.get("choices"):
            body = {**body, "choices": [{**body["choices"][0], "finish_reason": "stop"}]}
        return whole(call, body=body, events=events)

    monkeypatch.setattr(answers, "storable", storable)
    monkeypatch.setattr(cache, "storable", storable)
    return threads


def _ask_twice(llm_server: str, messages: list[dict[str, str]]) -> int:
    """The same question twice from an async client; returns the event loop's thread."""
    import asyncio
    import threading

    async def main() -> int:
        async with openai.AsyncOpenAI(base_url=llm_server, api_key="sk-test", max_retries=0,
                                      http_client=llmbudget.async_http_client()) as client:
            for _ in range(2):
                await client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=6,
                                                     temperature=0)
            return threading.get_ident()

    return asyncio.run(main())


def test_a_short_prompt_is_looked_up_and_stored_on_the_event_loop(llm_server, engine, records, tmp_path, monkeypatch):
    """With the bundled embedder and verifier, a short prompt's cache work costs less than a thread hop: it runs
    on the loop (but for the first lookup, which loads the partition's index in a worker thread)."""
    from llmbudget.cache import Cache

    engine.cache = Cache(tmp_path / "cache")
    assert engine.cache.quick
    engine.cache.store.threshold  # noqa: B018 - the models load now (never on the loop: a fresh process's first
    threads = _watch_cache_threads(monkeypatch)  # lookup and store would load them in a worker thread)
    loop_thread = _ask_twice(llm_server, QUESTION)
    assert len(records) == 2 and records[1].from_cache  # the first answer was stored, the second served from it
    # the first lookup: no index loaded yet (in a thread, after a try on the loop); the second: on the loop
    assert threads["lookup"][0] == loop_thread and threads["lookup"][1] != loop_thread
    assert threads["lookup"][2:] == [loop_thread]
    assert threads["save"] == [loop_thread] and set(threads["plan"]) == {loop_thread}


def test_long_prompts_and_slow_caches_do_their_cache_work_off_the_event_loop(llm_server, engine, records, tmp_path,
                                                                            monkeypatch):
    """A long prompt's hashing, embedding and SQLite work, or a cache whose embedder may be slow, must not stall
    every other request of an async server."""
    from llmbudget.cache import Cache
    from llmbudget.cache.embedders import WordLlamaEmbedder

    threads = _watch_cache_threads(monkeypatch)
    engine.cache = Cache(tmp_path / "long")
    long_question = [{"role": "user", "content": "Say yes." + " " * 9000 + "Now."}]  # over 8 KiB, few tokens
    loop_thread = _ask_twice(llm_server, long_question)
    assert len(records) == 2 and records[1].from_cache
    assert threads["lookup"] and loop_thread not in threads["lookup"] + threads["save"] + threads["plan"]

    class OtherEmbedder(WordLlamaEmbedder):  # an embedder of the app's own: it may call a service
        name = "other-embedder"

    for values in threads.values():
        values.clear()
    records.clear()
    engine.cache = Cache(tmp_path / "other", embedder=OtherEmbedder())
    assert not engine.cache.quick
    loop_thread = _ask_twice(llm_server, QUESTION)
    assert len(records) == 2 and records[1].from_cache
    assert loop_thread not in threads["lookup"] + threads["save"] and set(threads["plan"]) == {loop_thread}


def test_a_busy_cache_database_sends_the_store_to_a_worker_thread(llm_server, engine, records, tmp_path, monkeypatch):
    """Another process holds the cache's write lock: the store on the loop does not wait for it, it is done in a
    worker thread, which waits; the loop serves meanwhile."""
    import sqlite3
    import threading
    import time

    from llmbudget.cache import Cache

    engine.cache = Cache(tmp_path / "cache")
    threads = _watch_cache_threads(monkeypatch)
    blocker = sqlite3.connect(tmp_path / "cache" / "cache.sqlite3", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # the write lock, as another process writing would hold it
    release = threading.Timer(1.0, blocker.execute, ("COMMIT",))
    started = time.monotonic()  # (before the timer starts: the lock is held for a second from here at least)
    release.start()
    try:
        loop_thread = _ask_twice(llm_server, QUESTION)
    finally:
        release.join()
        blocker.close()
    assert time.monotonic() - started >= 1.0
    assert len(records) == 2 and records[1].from_cache  # stored once the lock was free
    assert threads["save"][0] == loop_thread and threads["save"][1] != loop_thread  # tried on the loop, then


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": "10"},  # a string (the SDK shows the app 10)
    {"completion_tokens": 10.7},
    {"completion_tokens": -5},
    {"prompt_tokens": 10**30},  # absurd: once charged as reported, and the tenant's budget was gone for good
    {"completion_tokens": 1e308},
    {"prompt_tokens_details": {"cached_tokens": True}},
])
def test_a_malformed_usage_is_estimated_and_flagged_never_charged_as_reported(llm_server, engine, records, usage,
                                                                               caplog):
    def with_usage(answer: bytes) -> bytes:  # the server's real answer, its usage's counts replaced
        data = json.loads(answer)
        return json.dumps({**data, "usage": {**data["usage"], **usage}}).encode()

    with proxy(llm_server, rewrite=with_usage) as upstream:
        client = openai.OpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8)
    (record,) = records
    assert record.estimated and record.error is None and record.status == 200
    assert 0 < record.usage.input_tokens < 1000 and 0 < record.usage.output_tokens <= 16  # before: $0, or $6e301
    assert 0 < record.cost_usd < 1
    assert "reports a malformed usage" in caplog.text


def _error_event_after_the_first_chunk(stream: bytes) -> bytes:
    first, _, rest = stream.partition(b"\n\n")
    return first + b'\n\ndata: {"error": {"message": "overloaded", "type": "server_error"}}\n\n' + rest


def _a_broken_event_after_the_first_chunk(stream: bytes) -> bytes:
    first, _, rest = stream.partition(b"\n\n")
    return first + b"\n\ndata: {broken\n\n" + rest


def _an_error_object(answer: bytes) -> bytes:
    return json.dumps({"error": {"message": "overloaded", "type": "server_error"}}).encode()


@pytest.mark.parametrize(("options", "stream", "raised", "says"), [
    ({"encoding": "gzip"}, False, openai.APIConnectionError, "not valid gzip"),  # the app's SDK cannot decode it
    ({"rewrite": _error_event_after_the_first_chunk}, True, openai.APIError, "an error event in the stream: overloaded"),
    ({"rewrite": _an_error_object}, False, None, "an error object instead of an answer: overloaded"),
    ({"rewrite": _a_broken_event_after_the_first_chunk}, True, json.JSONDecodeError, "not valid JSON"),
])
def test_a_2xx_answer_that_fails_is_recorded_with_the_error(llm_server, engine, records, options, stream, raised,
                                                            says):
    """These were recorded as status 200 with no error, while the app got an exception (or an error object)."""
    with proxy(llm_server, **options) as upstream:
        client = openai.OpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())

        def ask() -> None:
            answer = client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8,
                                                    stream=stream)
            if stream:
                for _ in answer:
                    pass

        if raised is None:
            ask()
        else:
            with pytest.raises(raised):
                ask()
    (record,) = records
    assert record.status == 200 and record.error is not None and says in record.error
    assert record.estimated and record.usage.input_tokens > 0 and record.cost_usd > 0


def test_a_stream_the_app_stops_reading_is_not_recorded_as_broken(engine):
    # its unfinished last event failed to parse, and the call was recorded with a "not valid JSON" error
    body = {"model": "gpt-4o-mini", "messages": QUESTION, "max_tokens": 24, "stream": True}
    attempt = engine.begin(url="https://api.openai.com/v1/chat/completions", path="/v1/chat/completions",
                           headers={}, body=json.dumps(body).encode())
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
             "choices": [{"index": 0, "delta": {"content": "Paris"}, "finish_reason": None}]}
    attempt.start_response(200, {"content-type": "text/event-stream"})
    attempt.feed(f"data: {json.dumps(chunk)}\n\n".encode() + f"data: {json.dumps(chunk)}"[:40].encode())
    record = attempt.finish(complete=False)  # the app closed it there
    assert record.error is None and record.estimated and record.usage.output_tokens > 0


def test_an_anthropic_stream_that_ends_in_an_error_is_charged_for_what_it_streamed(engine):
    # message_start reports 1 output token: the output streamed before the error was never charged
    body = {"model": "claude-haiku-4-5", "max_tokens": 4000, "messages": QUESTION, "stream": True}
    attempt = engine.begin(url="https://api.anthropic.com/v1/messages", path="/v1/messages", headers={},
                           body=json.dumps(body).encode())
    events = [{"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant",
                                                     "model": "claude-haiku-4-5", "content": [], "stop_reason": None,
                                                     "usage": {"input_tokens": 12, "output_tokens": 1}}},
              {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
              *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "word " * 50}}
                for _ in range(20)),
              {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}]
    attempt.start_response(200, {"content-type": "text/event-stream"})
    for event in events:
        attempt.feed(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
    record = attempt.finish(complete=True)
    assert record.error and "Overloaded" in record.error
    assert record.usage.input_tokens == 12 and record.usage.output_tokens > 500 and record.estimated


_BLOCKS = {  # a content block and one of its deltas, as Anthropic streams them
    "text": ({"type": "text", "text": ""}, {"type": "text_delta", "text": "word " * 50}),
    "thinking": ({"type": "thinking", "thinking": ""}, {"type": "thinking_delta", "thinking": "step " * 50}),
    "tool_use": ({"type": "tool_use", "id": "t", "name": "save", "input": {}},
                 {"type": "input_json_delta", "partial_json": '"item", ' * 25}),
}


@pytest.mark.parametrize("block", sorted(_BLOCKS))
@pytest.mark.parametrize("ending", ["body ends", "app stops reading", "connection reset", "stop without its count"])
def test_an_anthropic_stream_cut_short_is_charged_for_the_thinking_and_tool_input_it_streamed(engine, block, ending):
    # thinking and tool input are billed output: only text deltas were counted (1 output token recorded), and a
    # stream that ended without message_delta / message_stop was priced at message_start's placeholder as exact
    body = {"model": "claude-haiku-4-5", "max_tokens": 8000, "messages": QUESTION, "stream": True}
    attempt = engine.begin(url="https://api.anthropic.com/v1/messages", path="/v1/messages", headers={},
                           body=json.dumps(body).encode())
    start, delta = _BLOCKS[block]
    events = [{"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant",
                                                     "model": "claude-haiku-4-5", "content": [], "stop_reason": None,
                                                     "usage": {"input_tokens": 12, "output_tokens": 1}}},
              {"type": "content_block_start", "index": 0, "content_block": start},
              *({"type": "content_block_delta", "index": 0, "delta": delta} for _ in range(20))]
    attempt.start_response(200, {"content-type": "text/event-stream"})
    for event in events:
        attempt.feed(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
    if ending == "stop without its count":  # a gateway that strips message_delta's usage
        for event in ({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {}},
                      {"type": "message_stop"}):
            attempt.feed(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
        record = attempt.finish(complete=True)
    elif ending == "connection reset":
        record = attempt.finish(complete=False, error=httpx.ReadError("connection reset"))
    else:
        record = attempt.finish(complete=ending == "body ends")
    assert record.usage.input_tokens == 12 and record.usage.output_tokens > 500 and record.estimated


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_cut_openai_stream_is_charged_for_the_tool_arguments_it_streamed(engine, api):
    path = "/v1/chat/completions" if api == "chat" else "/v1/responses"
    body = {"model": "gpt-4o-mini", "stream": True, "tools": [{"type": "function", "function": {"name": "save"}}],
            **({"messages": QUESTION} if api == "chat" else {"input": "What is the capital of France?"})}
    attempt = engine.begin(url=f"https://api.openai.com{path}", path=path, headers={}, body=json.dumps(body).encode())
    if api == "chat":
        event = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                 "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {
                     "arguments": '"item", ' * 25}}]}, "finish_reason": None}]}
    else:
        event = {"type": "response.function_call_arguments.delta", "item_id": "fc", "output_index": 0,
                 "delta": '"item", ' * 25}
    attempt.start_response(200, {"content-type": "text/event-stream"})
    for _ in range(20):
        attempt.feed(f"data: {json.dumps(event)}\n\n".encode())
    record = attempt.finish(complete=False)  # the app stopped reading
    assert record.estimated and record.usage.output_tokens > 500


def test_a_responses_stream_that_failed_is_recorded_with_its_error_at_the_usage_it_reported(engine):
    # response.failed carries the final usage and the error: the call was recorded as a success
    body = {"model": "gpt-4.1-mini", "input": "x", "stream": True}
    attempt = engine.begin(url="https://api.openai.com/v1/responses", path="/v1/responses", headers={},
                           body=json.dumps(body).encode())
    failed = {"type": "response.failed", "sequence_number": 3, "response": {
        "id": "r", "object": "response", "model": "gpt-4.1-mini", "status": "failed", "output": [],
        "error": {"code": "server_error", "message": "boom"},
        "usage": {"input_tokens": 20, "output_tokens": 5, "total_tokens": 25}}}
    attempt.start_response(200, {"content-type": "text/event-stream"})
    attempt.feed(f"event: response.failed\ndata: {json.dumps(failed)}\n\n".encode())
    record = attempt.finish(complete=True)
    assert record.error is not None and "boom" in record.error
    assert (record.usage.input_tokens, record.usage.output_tokens, record.estimated) == (20, 5, False)


def test_a_background_response_is_charged_its_worst_case_not_its_empty_queued_answer(engine):
    # create(background=True) answers "queued" with no usage: it was recorded at a 4-token estimate (~$0), its
    # hold released, and ten o3 jobs ran under a $1 budget
    body = {"model": "o3", "input": "Prove it.", "background": True, "max_output_tokens": 50_000}
    attempt = engine.begin(url="https://api.openai.com/v1/responses", path="/v1/responses", headers={},
                           body=json.dumps(body).encode())
    queued = {"id": "resp_1", "object": "response", "model": "o3-2025-04-16", "status": "queued", "output": [],
              "background": True, "usage": None}
    attempt.start_response(200, {"content-type": "application/json"})
    attempt.feed(json.dumps(queued).encode())
    record = attempt.finish(complete=True)
    assert record.estimated and record.usage.output_tokens == 50_000
    assert record.cost_usd == attempt.worst_case_usd() > Decimal("0.1")


def test_a_responses_compaction_is_priced_and_budgeted(engine):
    # POST /responses/compact reports the usage it bills: it passed through unseen, recorded nowhere and unbudgeted
    body = {"model": "gpt-5", "previous_response_id": "resp_1"}
    with llmbudget.scope(budgets=[llmbudget.Budget("0.0001")]):
        refused = engine.begin(url="https://api.openai.com/v1/responses/compact", path="/v1/responses/compact",
                               headers={}, body=json.dumps(body).encode())
        assert refused is not None and refused.call.endpoint == "responses.compact"
        refused.plan("/")
        assert refused.reserve() is not None
    attempt = engine.begin(url="https://api.openai.com/v1/responses/compact", path="/v1/responses/compact",
                           headers={}, body=json.dumps(body).encode())
    attempt.plan("/")
    assert not attempt.routed and not attempt.capped and attempt.lookup_cache() is None
    compacted = {"id": "cmp_1", "created_at": 1, "object": "response.compaction", "output": [],
                 "usage": {"input_tokens": 200_000, "output_tokens": 4_000, "total_tokens": 204_000,
                           "input_tokens_details": {"cached_tokens": 0},
                           "output_tokens_details": {"reasoning_tokens": 3_000}}}
    attempt.start_response(200, {"content-type": "application/json"})
    attempt.feed(json.dumps(compacted).encode())
    record = attempt.finish(complete=True)
    assert record.endpoint == "responses.compact" and not record.estimated
    assert (record.usage.input_tokens, record.usage.output_tokens) == (200_000, 4_000) and record.cost_usd > 0


class _Holding(BaseHTTPRequestHandler):
    """Reads each request whole, then holds its answer until the test lets it go (as a provider still working)."""

    server: Any
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.received.append((self.command, self.path, body, dict(self.headers)))
        self.server.options["release"].wait(10)
        try:
            self.send_response(500)
            self.end_headers()
        except OSError:  # the client is gone
            pass


def _cancelled_call(engine: llmbudget.Engine, wait: float) -> list[Any]:
    """One async chat call against a server that holds its answer, cancelled after ``wait`` seconds."""
    seen: list[Any] = []
    engine.add_observer(seen.append)
    release = threading.Event()
    server_cm = contextlib.contextmanager(_serve)(_Holding, release=release)
    with server_cm as server:
        async def main() -> None:
            client = openai.AsyncOpenAI(base_url=base_url(server), api_key="sk-test", max_retries=0,
                                        http_client=llmbudget.async_http_client())
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.chat.completions.create(
                    model="gpt-4o-mini", messages=QUESTION, max_tokens=500), wait)
            await client.close()

        try:
            asyncio.run(main())
        finally:
            release.set()
    return seen


def test_a_call_cancelled_while_the_provider_works_on_it_is_charged_its_worst_case(engine):
    """Cancelled after the provider had the request whole (asyncio.wait_for, a client gone), the call still runs
    and is billed upstream: charged what its reservation held, as a read timeout is, not its input alone."""
    (record,) = _cancelled_call(engine, 0.5)
    assert record.status is None and "CancelledError" in (record.error or "")
    assert record.estimated and record.usage.output_tokens == 500
    assert record.cost_usd > llmbudget.Pricing().cost(
        llmbudget.Usage(input_tokens=record.usage.input_tokens), model="gpt-4o-mini").usd


def test_a_call_cancelled_before_its_request_was_sent_is_not_charged_an_answer(engine):
    """Cancelled while it waited for a connection (the pool's only one busy), the provider never had it: no
    answer is charged."""
    library = importlib.import_module(next(c.__module__ for c in openai.DefaultAsyncHttpxClient.__mro__
                                           if c.__module__.startswith("httpx")).split(".")[0])
    limits = library.Limits(max_connections=1)  # httpx2's with openai >= 3, httpx's with openai 2.x
    seen: list[Any] = []

    async def main(server: Any) -> None:
        client = openai.AsyncOpenAI(base_url=base_url(server), api_key="sk-test", max_retries=0,
                                    http_client=llmbudget.async_http_client(limits=limits))
        first = asyncio.ensure_future(client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION,
                                                                     max_tokens=500))
        while not server.received:
            await asyncio.sleep(0.01)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.chat.completions.create(
                model="gpt-4o-mini", messages=QUESTION, max_tokens=500), 0.3)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        await client.close()

    engine.add_observer(seen.append)
    release = threading.Event()
    with contextlib.contextmanager(_serve)(_Holding, release=release) as server:
        try:
            asyncio.run(main(server))
        finally:
            release.set()
    assert len(server.received) == 1
    waited = [r for r in seen if r.usage.output_tokens == 0]
    assert len(seen) == 2 and len(waited) == 1  # the first was sent, so charged its worst case
    assert "CancelledError" in (waited[0].error or "")


def _sdk_library() -> Any:
    """httpx2 with openai >= 3, httpx with openai 2.x: the library of the SDK's own clients."""
    return importlib.import_module(next(c.__module__ for c in openai.DefaultHttpxClient.__mro__
                                        if c.__module__.startswith("httpx")).split(".")[0])


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("sent_again", [False, True])
def test_a_caller_stopped_after_sending_is_charged_the_worst_case_unless_a_resend_was_cut(
        engine: llmbudget.Engine, records: list[Any], sent_again: bool, mode: str) -> None:
    """A call whose caller stops waiting once the connection took its request whole (a thread's
    KeyboardInterrupt or a worker's SystemExit; a task cancelled) is billed upstream: its worst case. One whose
    transport began sending it again (a connection lost, a transport's own retry) and was stopped before the end
    is not known to have reached anyone: its input estimate."""
    library = _sdk_library()

    class SendsThenStopped(library.BaseTransport):  # type: ignore[misc,name-defined]
        def handle_request(self, request: Any) -> Any:
            for _ in request.stream:  # written whole, as a connection does
                pass
            if sent_again:
                next(iter(request.stream))  # the first bytes of a second try
            raise KeyboardInterrupt

    class SendsThenCancelled(library.AsyncBaseTransport):  # type: ignore[misc,name-defined]
        async def handle_async_request(self, request: Any) -> Any:
            async for _ in request.stream:
                pass
            if sent_again:
                await request.stream.__aiter__().__anext__()
            raise asyncio.CancelledError

    if mode == "sync":
        client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client(transport=SendsThenStopped()))
        with pytest.raises(KeyboardInterrupt):
            client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=500)
    else:
        async def main() -> None:
            client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", max_retries=0,
                                        http_client=llmbudget.async_http_client(transport=SendsThenCancelled()))
            with pytest.raises(asyncio.CancelledError):
                await client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=500)

        asyncio.run(main())
    (record,) = records
    assert record.estimated and ("KeyboardInterrupt" in (record.error or "") or "Cancelled" in (record.error or ""))
    assert record.usage.output_tokens == (0 if sent_again else 500)


def test_a_stream_cancelled_before_its_first_byte_is_charged_its_input_not_an_answer(
        engine: llmbudget.Engine, records: list[Any]) -> None:
    """A stream stops generating when its reader goes: one cancelled while it waited for its first byte (a user
    pressing stop) is charged its input, as one cut after a few events is, never the 4,000 tokens it may have."""
    library = _sdk_library()

    class SendsThenCancelled(library.AsyncBaseTransport):  # type: ignore[misc,name-defined]
        async def handle_async_request(self, request: Any) -> Any:
            async for _ in request.stream:
                pass
            raise asyncio.CancelledError

    async def main() -> None:
        client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", max_retries=0,
                                    http_client=llmbudget.async_http_client(transport=SendsThenCancelled()))
        with pytest.raises(asyncio.CancelledError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=4000,
                                                 stream=True)

    asyncio.run(main())
    (record,) = records
    assert record.estimated and record.usage.output_tokens == 0 and record.usage.input_tokens > 0


def test_a_long_streamed_answer_is_settled_off_the_event_loop(engine: llmbudget.Engine, records: list[Any],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsing a stream of thousands of events whole took up to a second of the event loop when it ended; an
    answer over 64 KiB is read in a worker thread (a short one still settles on the loop, where a thread hop
    costs more than the work)."""
    from llmbudget.pipeline import Attempt

    library = _sdk_library()
    threads: list[str] = []
    finish = Attempt.finish

    def noted(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.record is None:  # the call that settles (later ones return what it made)
            threads.append(threading.current_thread().name)
        return finish(self, *args, **kwargs)

    monkeypatch.setattr(Attempt, "finish", noted)

    def event(text: str, finish_reason: str | None = None) -> str:
        return "data: " + json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                                      "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": text},
                                                                           "finish_reason": finish_reason}]}) + "\n\n"

    def answer(words: int) -> Any:
        body = "".join(event(" word") for _ in range(words)) + event("", "stop") + "data: [DONE]\n\n"
        return library.MockTransport(lambda request: library.Response(
            200, headers={"content-type": "text/event-stream"}, content=body.encode()))

    async def main(words: int) -> None:
        client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", max_retries=0,
                                    http_client=llmbudget.async_http_client(transport=answer(words)))
        async for _ in await client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, stream=True):
            pass

    main_thread = threading.current_thread().name
    asyncio.run(main(5))
    assert threads and set(threads) == {main_thread}
    threads.clear()
    asyncio.run(main(2000))  # about 300 KB
    assert threads and main_thread not in threads
    assert [r.usage.output_tokens > 1000 for r in records] == [False, True]


def test_a_whole_answer_cut_mid_way_is_charged_its_worst_case_however_labelled(llm_server, engine, records):
    # labelled text/plain, the JSON answer (generated and billed before its first byte) was charged its input
    with proxy(llm_server, cut=True, content_type="text/plain") as upstream:
        client = openai.OpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8)
    (record,) = records
    assert record.estimated and record.usage.output_tokens == 8 and record.error
