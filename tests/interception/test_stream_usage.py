"""Streams of reasoning models: their hidden reasoning is billed as output but never streamed, so llmbudget asks the
server for the stream's usage (``stream_options.include_usage``) and takes that event out again before the app
sees it. Against llama.cpp's own server (real, Gemma 3 270M), which reports a stream's usage as OpenAI does:
in a last chunk with no choices, only when asked."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

import openai
import pytest
from servers import base_url, proxy

import llmbudget

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _reported(answers: list[bytes]):  # type: ignore[no-untyped-def]
    """A proxy rewrite that keeps the usage each answer reported (the server's own count)."""

    def keep(content: bytes) -> bytes:
        answers.append(content)
        return content

    return keep


def _usage_in(content: bytes) -> dict[str, Any] | None:
    for line in content.splitlines():
        if line.startswith(b"data: {"):
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                return chunk["usage"]
    return None


def _sent(upstream: Any) -> list[dict[str, Any]]:
    return [json.loads(body) for method, _, body, _ in upstream.received if method == "POST"]


@pytest.mark.parametrize("client_kind", ["sync", "async"])
def test_a_reasoning_models_stream_is_priced_from_the_usage_it_was_asked_for(messages_server, engine, records,
                                                                             client_kind):
    """A streamed o4-mini call without include_usage (the SDK's default) was priced from its visible text: the
    reasoning billed beside it never counted, and a $0.05 budget let $0.70 through."""
    answers: list[bytes] = []
    with proxy(f"{messages_server}/v1", rewrite=_reported(answers)) as upstream:
        url = base_url(upstream)
        ask = dict(model="o4-mini", messages=QUESTION, max_completion_tokens=6, stream=True)
        if client_kind == "sync":
            client = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0, http_client=llmbudget.http_client())
            chunks = list(client.chat.completions.create(**ask))
        else:
            async def run() -> list[Any]:
                client = openai.AsyncOpenAI(base_url=url, api_key="sk-test", max_retries=0,
                                            http_client=llmbudget.async_http_client())
                return [chunk async for chunk in await client.chat.completions.create(**ask)]

            chunks = asyncio.run(run())
        (sent,) = _sent(upstream)
        (headers,) = [{k.lower(): v for k, v in h.items()} for _, _, _, h in upstream.received]
    assert sent["stream_options"] == {"include_usage": True}
    assert headers["accept-encoding"] == "identity"  # events it may take out must come as they are, not gzipped
    # the app sees the stream it asked for: every chunk has its choice, none the usage event it did not ask for
    assert chunks and all(chunk.choices and chunk.usage is None for chunk in chunks)
    (record,) = records
    reported = _usage_in(answers[0])
    assert reported is not None and not record.estimated and record.error is None
    assert (record.usage.input_tokens, record.usage.output_tokens) == (reported["prompt_tokens"],
                                                                       reported["completion_tokens"])


@pytest.mark.parametrize("client_kind", ["sync", "async"])
@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_a_stream_closed_once_its_answer_ended_is_priced_from_the_usage_that_follows(messages_server, engine,
                                                                                   records, client_kind, endpoint):
    """An app that stops reading at the chunk with the finish_reason (or at Responses' output_text.done) and
    closes the stream: the answer was generated, its reasoning billed, in full, but the usage comes after. Settled
    from the text seen, an o4-mini call was charged 1/1,400 of its bill."""
    answers: list[bytes] = []

    def ended(event: Any) -> bool:
        if endpoint == "chat":
            return any(choice.finish_reason for choice in event.choices)
        return event.type == "response.output_text.done"

    def usage_later(content: bytes) -> int | None:  # the events after the answer's end come 0.3 s after it
        marker = b'"finish_reason":"' if endpoint == "chat" else b'"response.output_text.done"'
        at = content.find(marker)
        return None if at < 0 else content.index(b"\n\n", at) + 2

    with proxy(f"{messages_server}/v1", rewrite=_reported(answers), hold=usage_later) as upstream:
        url = base_url(upstream)
        if endpoint == "chat":
            ask: dict[str, Any] = dict(model="o4-mini", messages=QUESTION, max_completion_tokens=6, stream=True)
        else:
            ask = dict(model="o4-mini", input="What is the capital of France?", max_output_tokens=16, stream=True,
                       store=False)
        if client_kind == "sync":
            client = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0, http_client=llmbudget.http_client())
            create = client.chat.completions.create if endpoint == "chat" else client.responses.create
            with create(**ask) as stream:
                seen = 0
                for event in stream:
                    seen += 1
                    if ended(event):
                        break
        else:
            async def run() -> int:
                client = openai.AsyncOpenAI(base_url=url, api_key="sk-test", max_retries=0,
                                            http_client=llmbudget.async_http_client())
                create = client.chat.completions.create if endpoint == "chat" else client.responses.create
                count = 0
                async with await create(**ask) as stream:
                    async for event in stream:
                        count += 1
                        if ended(event):
                            break
                return count

            seen = asyncio.run(run())
    assert seen > 0 and upstream.held  # (the answer's end came apart from the usage)
    (record,) = records
    reported = answers[0]
    if endpoint == "chat":
        usage = _usage_in(reported)
        assert usage is not None
        expected = (usage["prompt_tokens"], usage["completion_tokens"])
    else:
        (usage,) = [json.loads(line[6:])["response"]["usage"] for line in reported.splitlines()
                    if line.startswith(b"data: {") and b'"response.completed"' in line]
        expected = (usage["input_tokens"], usage["output_tokens"])
    assert (record.usage.input_tokens, record.usage.output_tokens) == expected
    assert not record.estimated and record.error is None


def _after(marker: bytes):  # type: ignore[no-untyped-def]
    """A proxy ``hold``: the answer's bytes up to the end of the event holding ``marker``."""

    def split(content: bytes) -> int | None:
        at = content.find(marker)
        return None if at < 0 else content.index(b"\n\n", at) + 2

    return split


@pytest.mark.parametrize("client_kind", ["sync", "async"])
def test_closing_a_stream_whose_server_sends_nothing_after_the_answer_waits_two_seconds_at_most(
        messages_server, engine, records, client_kind):
    """The server sends the finish_reason chunk, then nothing for 20 s: the sync close() read on for the usage
    until the client's read timeout (600 s with the SDK's default)."""
    with proxy(f"{messages_server}/v1", hold=_after(b'"finish_reason":"'), hold_s=20) as upstream:
        ask = dict(model="o4-mini", messages=QUESTION, max_completion_tokens=6, stream=True)
        if client_kind == "sync":
            client = openai.OpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0, timeout=60,
                                   http_client=llmbudget.http_client())
            stream = client.chat.completions.create(**ask)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].finish_reason:
                    break
            began = time.monotonic()
            stream.close()
            took = time.monotonic() - began
            # the thread that read on ends too (a read blocked on a closed socket waited out the read timeout)
            for _ in range(40):
                if not any(t.name == "llmbudget-drain" for t in threading.enumerate()):
                    break
                time.sleep(0.05)
            assert not any(t.name == "llmbudget-drain" for t in threading.enumerate())
        else:
            async def run() -> float:
                client = openai.AsyncOpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0, timeout=60,
                                            http_client=llmbudget.async_http_client())
                stream = await client.chat.completions.create(**ask)
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].finish_reason:
                        break
                start = time.monotonic()
                await stream.close()
                return time.monotonic() - start

            took = asyncio.run(run())
    assert took < 10  # DRAIN_S (2 s), not the hold
    (record,) = records
    assert record.estimated and record.usage.output_tokens > 0  # (o4-mini: its worst case, nothing came after)


def test_a_stream_read_to_its_done_is_not_read_on_for_usage_that_cannot_come(messages_server, engine, records):
    """A server that ignores include_usage ends its events with [DONE] and its body later (a comment after a
    pause): the SDK closes the stream at [DONE], and that close read on for the usage until the body's end."""

    def no_usage(content: bytes) -> bytes:  # as a server that ignores stream_options sends it, and then a comment
        kept = [event for event in content.split(b"\n\n") if b'"usage":{' not in event.replace(b" ", b"")]
        return b"\n\n".join(kept) + b": bye\n\n"

    with proxy(f"{messages_server}/v1", rewrite=no_usage, hold=_after(b"data: [DONE]"), hold_s=8) as upstream:
        client = openai.OpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        began = time.monotonic()
        chunks = list(client.chat.completions.create(model="o4-mini", messages=QUESTION, max_completion_tokens=6,
                                                     stream=True))
        took = time.monotonic() - began
    assert chunks and took < 6 and upstream.held == 1
    (record,) = records
    assert record.estimated  # no usage came: from the text it streamed


@pytest.mark.parametrize("label", ["Text/Event-Stream", "text/plain; charset=utf-8"])
def test_a_stream_labelled_otherwise_still_loses_the_usage_event_the_app_did_not_ask_for(messages_server, engine,
                                                                                        records, label):
    """The SDK reads a stream as events whatever its label: left in a stream labelled in capitals or as text,
    the usage chunk llmbudget asked for reached the app (no choices: ``chunk.choices[0]`` raised)."""
    with proxy(f"{messages_server}/v1", content_type=label) as upstream:
        client = openai.OpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        chunks = list(client.chat.completions.create(model="o4-mini", messages=QUESTION, max_completion_tokens=6,
                                                     stream=True))
        (sent,) = _sent(upstream)
    assert sent["stream_options"] == {"include_usage": True}
    assert chunks and all(chunk.choices and chunk.usage is None for chunk in chunks)
    (record,) = records
    assert not record.estimated and record.usage.output_tokens > 0


def test_an_app_that_asks_for_the_usage_gets_it_and_other_models_streams_go_as_written(messages_server, engine,
                                                                                     records):
    with proxy(f"{messages_server}/v1") as upstream:
        client = openai.OpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        asked = list(client.chat.completions.create(model="o4-mini", messages=QUESTION, max_completion_tokens=6,
                                                    stream=True, stream_options={"include_usage": True}))
        plain = list(client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=6, stream=True))
        first, second = _sent(upstream)
    assert asked[-1].choices == [] and asked[-1].usage is not None and asked[-1].usage.completion_tokens > 0
    assert first["stream_options"] == {"include_usage": True}
    assert "stream_options" not in second and all(chunk.choices for chunk in plain)  # its text is all it bills
    assert not records[0].estimated and records[1].estimated


def test_a_server_that_refuses_the_option_is_asked_again_without_it_and_not_asked_again(messages_server, engine,
                                                                                        records, caplog):
    """Servers that do not know stream_options (Azure's older API versions) answer 400: the app's call must not
    fail for what llmbudget added."""

    def refuse(body: bytes) -> tuple[int, str] | None:
        if b"stream_options" in body:
            return 400, "Unrecognized request argument supplied: stream_options"
        return None

    with caplog.at_level(logging.WARNING, logger="llmbudget"), proxy(f"{messages_server}/v1",
                                                                      refuse=refuse) as upstream:
        client = openai.OpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                               http_client=llmbudget.http_client())
        for _ in range(2):
            chunks = list(client.chat.completions.create(model="o4-mini", messages=QUESTION,
                                                         max_completion_tokens=6, stream=True))
            assert chunks and "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        sent = _sent(upstream)
    assert ["stream_options" in body for body in sent] == [True, False, False]
    assert [record.status for record in records] == [400, 200, 200]
    assert sum("refuses stream_options" in message for message in caplog.messages) == 1


def _pieces(whole: bytes) -> Any:
    """Every way to cut ``whole`` in two, then one byte at a time."""
    for cut in range(1, len(whole)):
        yield [whole[:cut], whole[cut:]]
    yield [whole[i:i + 1] for i in range(len(whole))]


@pytest.mark.parametrize("end", [b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r\n", b"\r\n\n", b"\r\n\r"])
def test_the_usage_event_is_taken_out_wherever_the_body_breaks(end):
    """The event split over any chunks, in any line endings the SSE format allows (mixed too), is taken out; so
    is the ``"usage": null`` the server adds to the other chunks once asked; nothing else is, nor held back
    past the end of its event."""
    from llmbudget.pipeline import Attempt

    engine = llmbudget.Engine()
    body = {"model": "o4-mini", "messages": QUESTION, "stream": True}

    def event(chunk: dict[str, Any]) -> bytes:
        return b": a comment\r\ndata: " + json.dumps(chunk, separators=(",", ":")).encode() + end

    content = {"choices": [{"index": 0, "delta": {"content": "Paris"}}]}
    stop = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    usage = {"prompt_tokens": 9, "completion_tokens": 70, "total_tokens": 79}
    sent = [event({**content, "usage": None}), event({"usage": None, **stop}),
            event({"choices": [], "usage": usage}), b"data: [DONE]" + end]
    expected = event(content) + event(stop) + b"data: [DONE]" + end
    for pieces in _pieces(b"".join(sent)):
        attempt = engine.begin(url="https://api.openai.com/v1/chat/completions", path="/v1/chat/completions",
                               headers={}, body=json.dumps(body).encode())
        assert isinstance(attempt, Attempt)
        attempt.plan()
        assert attempt.usage_added
        attempt.start_response(200, {"content-type": "text/event-stream"})
        shown, passed = b"", 0
        for piece in pieces:
            attempt.feed(piece)
            shown += attempt.shown(piece)
            passed += len(piece)
            if passed == len(sent[0]):  # an event whole is passed on at once (but for the LF of a CRLF that
                whole = event(content)    # ends it: the CR ends it already, for the app's SDK too)
                assert shown in (whole, whole.removesuffix(b"\n")), (end, pieces)
        shown += attempt.shown_rest()
        assert shown == expected, (end, pieces)
        record = attempt.finish(complete=True)
        assert record is not None and record.usage.output_tokens == 70 and not record.estimated


def test_a_long_event_is_read_once(monkeypatch):
    """Each chunk is read once for the blank line that ends an event: a 16 MiB event in 64 KiB pieces was read
    again from its start with each piece (47 s, against 11 s without llmbudget)."""
    from llmbudget import pipeline

    read: list[int] = []

    class Counted:
        def finditer(self, held: bytearray, at: int) -> Any:
            read.append(len(held) - at)
            return pipeline._LINE_END_PATTERN.finditer(held, at)

    monkeypatch.setattr(pipeline, "_LINE_END_PATTERN", pipeline._LINE_END, raising=False)
    monkeypatch.setattr(pipeline, "_LINE_END", Counted())
    attempt = llmbudget.Engine().begin(url="https://api.openai.com/v1/chat/completions", path="/v1/chat/completions",
                                       headers={}, body=json.dumps({"model": "o4-mini", "messages": QUESTION,
                                                                    "stream": True}).encode())
    assert isinstance(attempt, pipeline.Attempt)
    attempt.plan()
    attempt.start_response(200, {"content-type": "text/event-stream"})
    pieces = [b"data: {" + b"x" * 65536] + [b"y" * 65536] * 255 + [b"}\n\n"]
    shown = b"".join(attempt.shown(piece) for piece in pieces)
    assert shown == b"".join(pieces) and sum(read) <= len(shown)


def test_a_call_sent_on_after_its_tier_failed_is_asked_again_without_the_option(messages_server, records):
    """A weak tier that cannot be reached sends the stream on to the app's own model and host, which refuses
    the option: that retry's 400 went to the app."""
    def refuse(body: bytes) -> tuple[int, str] | None:
        return (400, "Unrecognized request argument supplied: stream_options") if b"stream_options" in body else None

    routed = llmbudget.Engine(routing=llmbudget.Routing(
        tiers={"small": {"model": "o4-mini", "base_url": "http://127.0.0.1:9/v1"}, "large": None}, threshold=1.0))
    routed.add_observer(records.append)
    previous = llmbudget.set_engine(routed)
    try:
        with proxy(f"{messages_server}/v1", refuse=refuse) as upstream:
            client = openai.OpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                                   http_client=llmbudget.http_client())
            chunks = list(client.chat.completions.create(model="o3", messages=QUESTION, max_completion_tokens=6,
                                                         stream=True))
            sent = _sent(upstream)
    finally:
        llmbudget.set_engine(previous)
    assert chunks and all(chunk.choices for chunk in chunks)
    assert [("stream_options" in body, body["model"]) for body in sent] == [(True, "o3"), (False, "o3")]
    assert records[-1].status == 200 and records[-1].model_requested == "o3"


@pytest.mark.parametrize(("url", "asked"), [
    ("https://acme.openai.azure.com/openai/deployments/classifier/chat/completions?api-version=2025-01-01", True),
    ("https://acme.openai.azure.com/openai/v1/chat/completions", True),
    ("https://api.openai.com/v1/chat/completions", False),
])
def test_a_deployments_stream_is_asked_its_usage_whatever_its_name(url, asked):
    """An Azure deployment's name says nothing of the model it runs (an o3-mini deployment named "classifier")."""
    from llmbudget.pipeline import Attempt

    body = {"model": "classifier", "messages": QUESTION, "stream": True}
    attempt = llmbudget.Engine().begin(url=url, path="/chat/completions", headers={}, body=json.dumps(body).encode())
    assert isinstance(attempt, Attempt)
    attempt.plan()
    assert attempt.usage_added is asked
    assert ("stream_options" in json.loads(attempt.request_bytes())) is asked


@pytest.mark.parametrize("read", [True, False], ids=["already-read", "streamed"])
def test_the_app_is_not_told_a_length_its_events_no_longer_have(read):
    """A server (a gateway, a mock) that sends a stream with its Content-Length: the app got fewer bytes than
    the length it was told, once the usage's event was taken out."""
    import httpx2

    usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 70, "total_tokens": 79}}
    body = (b'data: {"choices":[{"index":0,"delta":{"content":"Paris"}}]}\n\n'
            + b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")

    class Once(httpx2.SyncByteStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield body

    def answer(request: Any) -> Any:
        headers = {"content-type": "text/event-stream", "content-length": str(len(body))}
        return httpx2.Response(200, headers=headers, **({"content": body} if read else {"stream": Once()}))

    engine = llmbudget.Engine()
    previous = llmbudget.set_engine(engine)
    try:
        with llmbudget.http_client(transport=httpx2.MockTransport(answer)) as client, client.stream(
                "POST", "https://api.openai.com/v1/chat/completions",
                json={"model": "o4-mini", "messages": QUESTION, "stream": True}) as response:
            got = b"".join(response.iter_raw())
            length = response.headers.get("content-length")
    finally:
        llmbudget.set_engine(previous)
    assert b'"usage"' not in got and got.startswith(b'data: {"choices":[{"index":0,"delta":{"content":"Paris"}}]}')
    assert length is None or int(length) == len(got)


def _events(*payloads: dict[str, Any] | str) -> bytes:
    return b"".join(f"data: {p if isinstance(p, str) else json.dumps(p)}\n\n".encode() for p in payloads)


def _chunk(**choice: Any) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "o4-mini",
            "choices": [{"index": 0, "delta": {}, **choice}]}


@pytest.mark.parametrize(("endpoint", "body", "awaits"), [
    ("chat", _events(_chunk(finish_reason=None), _chunk(finish_reason="stop")), True),
    # a server that writes "finish_reason": "" on every chunk: the answer goes on
    ("chat", _events(_chunk(finish_reason=""), _chunk(finish_reason="")), False),
    # [DONE] (a server that ignores include_usage): nothing can follow
    ("chat", _events(_chunk(finish_reason="stop"), "[DONE]"), False),
    ("chat", _events(_chunk(finish_reason="stop"), {**_chunk(), "choices": [], "usage": {"prompt_tokens": 1}}), False),
    ("responses", _events({"type": "response.output_text.done", "text": "Paris"}), True),
    # another output item begun after the text (a tool call whose arguments are still being generated)
    ("responses", _events({"type": "response.output_text.done", "text": "Paris"},
                          {"type": "response.output_item.added", "item": {"type": "function_call"}}), False),
    ("responses", _events({"type": "response.output_text.done", "text": "Paris"},
                          {"type": "response.completed", "response": {}}), False),
])
def test_a_stream_is_read_on_only_once_its_answer_ended_and_before_its_usage(engine, endpoint, body, awaits):
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/responses"
    request = ({"model": "o4-mini", "messages": QUESTION, "stream": True} if endpoint == "chat"
               else {"model": "o4-mini", "input": "hi", "stream": True})
    attempt = engine.begin(url="http://127.0.0.1:9" + path, path=path, headers={}, body=json.dumps(request).encode())
    assert attempt is not None
    attempt.start_response(200, {"content-type": "text/event-stream"})
    attempt.feed(body)
    assert attempt.awaits_usage() is awaits


def test_a_stream_closed_in_a_cancelled_scope_is_closed_all_the_same(messages_server, engine, records):
    """Starlette cancels a request's scope when its client goes: a close() in it was cancelled while it read on
    for the usage, and the response was never closed (its connection's request left in the pool)."""
    import anyio

    with proxy(f"{messages_server}/v1", hold=_after(b'"finish_reason":"'), hold_s=3) as upstream:
        async def run() -> list[Any]:
            http_client = llmbudget.async_http_client()
            client = openai.AsyncOpenAI(base_url=base_url(upstream), api_key="sk-test", max_retries=0,
                                        http_client=http_client)
            stream = await client.chat.completions.create(model="o4-mini", messages=QUESTION,
                                                          max_completion_tokens=6, stream=True)
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].finish_reason:
                    break
            with anyio.CancelScope() as scope:
                scope.cancel()
                await stream.close()
            pool = http_client._transport.inner._pool  # (httpcore's: what it still holds)
            return list(pool.connections)

        held = asyncio.run(run())
    assert held == []
    (record,) = records
    assert record.estimated
