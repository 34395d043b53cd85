"""The real openai SDK against a real local LLM server, through llmbudget: sync, async, streamed."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from decimal import Decimal

import openai
import pytest
from servers import base_url, proxy

import llmbudget
from llmbudget.pricing import Pricing

HI = [{"role": "user", "content": "Say hi"}]
# gpt-4o-mini list prices (USD per 1M tokens), as genai-prices has them.
INPUT, OUTPUT = Decimal("0.15"), Decimal("0.6")


def expected_cost(prompt_tokens: int, completion_tokens: int) -> Decimal:
    return (prompt_tokens * INPUT + completion_tokens * OUTPUT) / 1_000_000


def test_explicit_client_records_the_servers_usage_exactly(llm_server, records):
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", http_client=llmbudget.http_client())
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=6, temperature=0)
    assert len(records) == 1
    record = records[0]
    assert record.usage.input_tokens == answer.usage.prompt_tokens
    assert record.usage.output_tokens == answer.usage.completion_tokens
    assert record.cost_usd == expected_cost(answer.usage.prompt_tokens, answer.usage.completion_tokens)
    assert (record.endpoint, record.model_answered, record.status) == ("chat.completions", "gpt-4o-mini", 200)
    assert record.base_url == llm_server and not record.estimated and record.error is None


def test_async_client(llm_server, records):
    async def main() -> openai.types.chat.ChatCompletion:
        async with openai.AsyncOpenAI(
            base_url=llm_server, api_key="sk-test", http_client=llmbudget.async_http_client()
        ) as client:
            return await client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=5)

    answer = asyncio.run(main())
    assert [r.usage.output_tokens for r in records] == [answer.usage.completion_tokens]
    assert records[0].cost_usd == expected_cost(answer.usage.prompt_tokens, answer.usage.completion_tokens)


def test_install_covers_clients_created_before_it(llm_server, records):
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test")  # built before install()
    client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=3)
    assert records == []
    llmbudget.install()
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=3)
    assert [r.usage.input_tokens for r in records] == [answer.usage.prompt_tokens]
    llmbudget.uninstall()
    client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=3)
    assert len(records) == 1


def test_install_is_idempotent_and_uninstall_restores_exactly(engine):
    import httpx2

    originals = (httpx2.Client._transport_for_url, httpx2.AsyncClient._transport_for_url)
    llmbudget.install()
    llmbudget.install()
    assert httpx2.Client._transport_for_url is not originals[0]
    assert httpx2.Client._transport_for_url.__wrapped__ is originals[0]
    llmbudget.uninstall()
    llmbudget.uninstall()
    assert (httpx2.Client._transport_for_url, httpx2.AsyncClient._transport_for_url) == originals
    assert not llmbudget.installed()


def test_install_from_many_threads_patches_once(engine):
    import httpx2

    original = httpx2.Client._transport_for_url
    threads = [threading.Thread(target=llmbudget.install) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert httpx2.Client._transport_for_url.__wrapped__ is original
    llmbudget.uninstall()
    assert httpx2.Client._transport_for_url is original


def test_stream_passes_through_and_is_settled_with_an_estimate_when_usage_is_absent(llm_server, records):
    """llama-cpp-python's server sends no usage in streams: the record is a flagged estimate."""
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", http_client=llmbudget.http_client())
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=6, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 2 and text
    (record,) = records
    assert record.estimated and record.usage.estimated
    assert 1 <= record.usage.output_tokens <= 12
    assert record.usage.input_tokens > 0 and record.cost_usd > 0


def test_abandoned_stream_is_settled_as_an_estimate(llm_server, records):
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", http_client=llmbudget.http_client())
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Count from 1 to 50."}], max_tokens=60, stream=True
    )
    for i, _ in enumerate(stream):
        if i == 2:
            break
    assert records == []  # still open: nothing settled yet
    stream.close()
    (record,) = records
    assert record.estimated and record.usage.output_tokens >= 1
    assert record.usage.output_tokens < 60


def test_async_stream(llm_server, records):
    async def main() -> str:
        client = openai.AsyncOpenAI(base_url=llm_server, api_key="sk-test", http_client=llmbudget.async_http_client())
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=5, stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await client.close()
        return "".join(parts)

    assert asyncio.run(main())
    assert len(records) == 1 and records[0].estimated


# httpx asks for br, zstd when it reads them; a list is applied in turn and undone last first (one was estimated: the
# usage of a body sent "identity, gzip" or "gzip, br" went unread, recorded 375 times too cheap)
@pytest.mark.parametrize("compress", ["gzip", "br", "zstd", "deflate", "identity, gzip", "gzip, br", "gzip, gzip"])
def test_compressed_answers_are_read(llm_server, records, compress):
    with proxy(llm_server, compress=compress) as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client())
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=4)
        assert compress.split(", ")[-1] in server.received[0][3].get("Accept-Encoding", "")
        assert server.sent[0][:1] != b"{"  # compressed on the wire
    (record,) = records
    assert not record.estimated
    assert record.usage.input_tokens == answer.usage.prompt_tokens
    assert record.usage.output_tokens == answer.usage.completion_tokens


# a coding httpx does not know is passed over, by httpx and by the pipeline: such an answer was recorded with no
# output and no error, 1,500 times too cheap
@pytest.mark.parametrize("encoding", ["gzip, x-custom", "x-custom, gzip", "x-custom"])
def test_a_coding_the_client_does_not_know_is_passed_over_as_httpx_does(llm_server, records, encoding):
    compress = gzip.compress if "gzip" in encoding else (lambda content: content)
    with proxy(llm_server, rewrite=compress, encoding=encoding) as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client())
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=4)
        assert server.sent[0][:1] == (b"\x1f" if "gzip" in encoding else b"{")
    (record,) = records
    assert not record.estimated and record.error is None
    assert record.usage.output_tokens == answer.usage.completion_tokens > 0


# the SDK reads a JSON body as json.loads reads bytes (a BOM, UTF-16): recorded as not JSON, its output unpriced
@pytest.mark.parametrize("codec", ["utf-8-sig", "utf-16", "utf-16-le"])
def test_a_json_body_in_another_unicode_form_is_read_as_the_sdk_reads_it(llm_server, records, codec):
    with proxy(llm_server, rewrite=lambda content: content.decode().encode(codec)) as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client())
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=4)
        assert not server.sent[0].startswith(b'{"')
    (record,) = records
    assert not record.estimated and record.error is None
    assert record.usage.output_tokens == answer.usage.completion_tokens > 0


def test_every_sdk_retry_is_recorded_as_an_attempt(llm_server, records):
    with proxy(llm_server, fail_first=2, fail_status=503) as server:
        client = openai.OpenAI(
            base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client(), max_retries=3
        )
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=3)
        assert len(server.received) == 3
    assert [(r.attempt, r.status) for r in records] == [(0, 503), (1, 503), (2, 200)]
    assert [r.cost_usd for r in records[:2]] == [0, 0] and records[0].error == "HTTP 503"
    assert records[2].usage.output_tokens == answer.usage.completion_tokens


def test_budget_refusal_is_a_catchable_api_error_that_is_not_retried(llm_server, records):
    with proxy(llm_server) as server:
        client = openai.OpenAI(
            base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client(), max_retries=3
        )
        with llmbudget.scope(tenant="acme", budgets=[llmbudget.Budget("0.0000001")]):
            with pytest.raises(openai.APIStatusError) as caught:
                client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=50)
        assert server.received == []  # never sent, never retried
    error = caught.value
    assert error.status_code == 402
    assert error.response.headers["x-should-retry"] == "false"
    refusal = llmbudget.budget_refusal(error)
    assert refusal is not None and refusal.budget == "request" and refusal.tenant == "acme"
    assert refusal.limit_usd == Decimal("0.0000001") and refusal.estimated_cost_usd > refusal.limit_usd
    body = error.response.json()["error"]["llmbudget"]
    assert body["remaining_usd"] == pytest.approx(0.0000001) and body["estimated_cost_usd"] > 0
    assert records == []


def test_budget_allows_calls_until_spent(llm_server, engine, records):
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", http_client=llmbudget.http_client())
    # Each call may cost at most (input + 5 output tokens) at gpt-4o-mini prices: about $0.000006.
    with llmbudget.scope(budgets=[llmbudget.Budget("0.00002")]) as scope:
        outcomes = []
        for _ in range(6):
            try:
                client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=5)
                outcomes.append("ok")
            except openai.APIStatusError as exc:
                assert llmbudget.budget_refusal(exc) is not None
                outcomes.append("refused")
    assert "ok" in outcomes and outcomes[-1] == "refused"
    assert outcomes == sorted(outcomes)  # all calls before the first refusal went through
    assert scope.totals.cost_usd <= Decimal("0.00002")
    assert scope.totals.calls == outcomes.count("ok") == len(records)


def test_non_llm_requests_pass_through_untouched(llm_server, records):
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", http_client=llmbudget.http_client())
    models = client.models.list()
    assert [m.id for m in models.data] == ["gpt-4o-mini"]
    assert records == []


def test_overrides_price_a_self_hosted_model(llm_server, records):
    llmbudget.set_engine(llmbudget.Engine(pricing=Pricing({llm_server: {"input": 1, "output": 2}})))
    try:
        llmbudget.get_engine().add_observer(records.append)
        client = openai.OpenAI(base_url=llm_server, api_key="sk-test", http_client=llmbudget.http_client())
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=3)
    finally:
        pass
    (record,) = records
    assert record.price_source == "override"
    assert record.cost_usd == (answer.usage.prompt_tokens * 1 + answer.usage.completion_tokens * 2) / Decimal(10**6)


def test_threads_and_tasks_inherit_the_scope(llm_server, records):
    client = openai.OpenAI(base_url=llm_server, api_key="sk-test", http_client=llmbudget.http_client())
    import contextvars

    with llmbudget.scope(tenant="t-threads") as scope:
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run,
            args=(lambda: client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=2),),
        )
        thread.start()
        thread.join()
    assert scope.totals.calls == 1 and records[0].tenant == "t-threads"


# the SDK reads a streamed request's body as events and any other as JSON, whatever its content type says: a body
# mislabelled (by a gateway) went unread, its billed call recorded and settled at its input alone, with no error
@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_with_a_wrong_content_type_is_read_as_the_sdk_reads_it(llm_server, records, stream):
    ask = dict(model="gpt-4o-mini", messages=HI, max_tokens=4, temperature=0, stream=stream)
    if stream:
        ask["stream_options"] = {"include_usage": True}

    def call(client):  # type: ignore[no-untyped-def]
        answer = client.chat.completions.create(**ask)
        return [chunk for chunk in answer] if stream else answer

    with proxy(llm_server) as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client())
        labelled = call(client)
    with proxy(llm_server, content_type="application/json" if stream else "text/event-stream") as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client())
        mislabelled = call(client)
    if stream:
        assert [c.choices[0].delta.content for c in mislabelled if c.choices] == \
            [c.choices[0].delta.content for c in labelled if c.choices]
    else:
        assert mislabelled.usage == labelled.usage
    right, wrong = records
    assert wrong.error is None and wrong.estimated == right.estimated
    assert wrong.usage.output_tokens == right.usage.output_tokens > 0 and wrong.cost_usd == right.cost_usd


def test_a_streamed_request_answered_in_json_is_billed_as_the_answer_and_says_the_app_read_none(llm_server,
                                                                                                 records):
    def unstreamed(body: bytes) -> bytes:  # a server that does not stream
        return json.dumps({**json.loads(body), "stream": False}).encode()

    with proxy(llm_server, forward=unstreamed) as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client())
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=4, stream=True))
        billed = json.loads(server.sent[0])["usage"]
    assert chunks == []  # the SDK read no event
    (record,) = records
    assert record.usage.output_tokens == billed["completion_tokens"] > 0 and not record.estimated
    assert record.error is not None and "a streamed request with no event (in JSON" in record.error


def _streamed_upstream(body: bytes) -> bytes:  # a gateway that always streams (and asks for the usage)
    return json.dumps({**json.loads(body), "stream": True, "stream_options": {"include_usage": True}}).encode()


@pytest.mark.parametrize("content_type", ["text/event-stream", "application/json"])
def test_events_answering_a_request_not_streamed_are_billed_as_events(llm_server, records, content_type):
    # the SDK returns such a body as text (labelled JSON: it raises); read as JSON, it was recorded at its input
    # alone with a false "not valid JSON"
    with proxy(llm_server, forward=_streamed_upstream, content_type=content_type) as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client())
        if content_type == "application/json":
            with pytest.raises(json.JSONDecodeError):
                client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=4)
        else:
            assert client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=4).startswith("data:")
    (record,) = records
    # (this server reports no usage in a stream: the output is counted from the events' text, as any stream's)
    assert record.usage.output_tokens > 0 and record.usage.input_tokens > 0
    if content_type == "application/json":
        assert record.error is not None and "events labelled as JSON" in record.error
    else:
        assert record.error is None


def test_a_stream_asked_for_with_a_string_is_billed_from_its_events(llm_server, records):
    # "stream": "true" from a client of the app's own (servers that coerce it stream): read as JSON, ~$0
    with proxy(llm_server, forward=_streamed_upstream) as server:
        with llmbudget.http_client() as client:
            answer = client.post(base_url(server) + "/chat/completions", headers={"user-agent": "OpenAI/Python"},
                                 json={"model": "gpt-4o-mini", "messages": HI, "max_tokens": 4, "stream": "true"})
        assert answer.text.startswith("data:")
    (record,) = records
    assert record.usage.output_tokens > 0 and record.error is None


def test_an_empty_stream_is_recorded_as_an_answer_the_app_did_not_get(llm_server, records):
    with proxy(llm_server, rewrite=lambda content: b"", content_type="text/event-stream") as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client())
        assert list(client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=4,
                                                   stream=True)) == []
    (record,) = records
    assert record.error is not None and "empty body" in record.error and record.usage.output_tokens == 0


def test_what_the_app_could_not_read_is_recorded_with_what_was_billed(llm_server, records, monkeypatch):
    # an x-gzip answer (httpx does not decode it: the app fails), a streamed request answered with a page that is
    # neither events nor JSON (the app reads no event), and one answered in JSON too large to keep (read from its
    # end): each was recorded as a clean success, or its error hid the usage
    from llmbudget import pipeline

    with proxy(llm_server, rewrite=gzip.compress, encoding="x-gzip") as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client())
        with pytest.raises(ValueError):  # (the gzip bytes: not UTF-8, not JSON)
            client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=4)
    with proxy(llm_server, rewrite=lambda content: b"<html>busy</html>", content_type="text/html") as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client())
        assert list(client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=4, stream=True)) == []
    monkeypatch.setattr(pipeline, "MAX_BODY_BYTES", 64)
    unstreamed = lambda body: json.dumps({**json.loads(body), "stream": False}).encode()  # noqa: E731
    with proxy(llm_server, forward=unstreamed) as server:
        client = openai.OpenAI(base_url=base_url(server), api_key="sk-test", http_client=llmbudget.http_client())
        assert list(client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=4, stream=True)) == []
        billed = json.loads(server.sent[0])["usage"]["completion_tokens"]
    x_gzip, page, large = records
    assert x_gzip.error is not None and "x-gzip" in x_gzip.error and x_gzip.usage.output_tokens > 0
    assert not x_gzip.estimated and x_gzip.from_cache is False
    assert page.error is not None and "no event" in page.error and page.usage.output_tokens == 0
    assert large.error is not None and "no event" in large.error and large.usage.output_tokens == billed > 0
