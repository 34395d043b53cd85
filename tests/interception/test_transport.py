"""The wrapping transport reads every answer, whether the inner transport streams it or has read it already."""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import httpx2
import openai
import pytest

import llmbudget
from llmbudget.calls import Usage
from llmbudget.interception.install import _transports

LIBRARIES = {"httpx2": httpx2, "httpx": httpx}
URL = "http://127.0.0.1:9/v1/chat/completions"
REQUEST = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 5}
ANSWER = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}).encode()
STREAM = b"".join(
    b"data: " + json.dumps(chunk).encode() + b"\n\n"
    for chunk in [
        {"model": "gpt-4o-mini-2024-07-18", "choices": [{"index": 0, "delta": {"content": "Hi"}}]},
        {"model": "gpt-4o-mini-2024-07-18", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"model": "gpt-4o-mini-2024-07-18", "choices": [],
         "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}},
    ]
) + b"data: [DONE]\n\n"


def _inner(library: Any, *, read: bool) -> tuple[Any, Any]:
    """A sync and an async transport answering like a server: streamed in pieces, or already read."""

    def answer(request: Any) -> tuple[bytes, str]:
        stream = json.loads(request.content).get("stream") is True
        return (STREAM, "text/event-stream") if stream else (ANSWER, "application/json")

    class Pieces(library.SyncByteStream, library.AsyncByteStream):  # type: ignore[misc]
        def __init__(self, body: bytes) -> None:
            self.body = body

        def __iter__(self) -> Iterator[bytes]:
            for i in range(0, len(self.body), 50):
                yield self.body[i:i + 50]

        async def __aiter__(self) -> AsyncIterator[bytes]:
            for piece in self:
                yield piece

    def respond(request: Any) -> Any:
        body, content_type = answer(request)
        if read:
            return library.Response(200, headers={"content-type": content_type}, content=body)
        return library.Response(200, headers={"content-type": content_type}, stream=Pieces(body))

    class Sync(library.BaseTransport):  # type: ignore[misc]
        def handle_request(self, request: Any) -> Any:
            request.read()
            return respond(request)

    class Async(library.AsyncBaseTransport):  # type: ignore[misc]
        async def handle_async_request(self, request: Any) -> Any:
            await request.aread()
            return respond(request)

    return Sync(), Async()


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("read", [False, True], ids=["streamed", "already-read"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_every_answer_is_read_and_passed_on_unchanged(engine: llmbudget.Engine, records: list[llmbudget.SpendRecord],
                                                      library: str, read: bool, stream: bool) -> None:
    module = LIBRARIES[library]
    transports = _transports(library)
    assert transports is not None
    sync_inner, async_inner = _inner(module, read=read)
    body = {**REQUEST, "stream": True} if stream else REQUEST
    expected = STREAM if stream else ANSWER

    with module.Client(transport=transports.wrap(sync_inner, explicit=True)) as client:
        assert client.post(URL, json=body).content == expected
        with client.stream("POST", URL, json=body) as response:
            assert b"".join(response.iter_raw()) == expected

    async def run() -> None:
        async with module.AsyncClient(transport=transports.wrap(async_inner, explicit=True)) as client:
            assert (await client.post(URL, json=body)).content == expected
            async with client.stream("POST", URL, json=body) as response:
                assert b"".join([piece async for piece in response.aiter_raw()]) == expected

    asyncio.run(run())
    usage = Usage(input_tokens=9, output_tokens=1 if stream else 2)
    assert [record.usage for record in records] == [usage] * 4
    assert all(record.model_answered == "gpt-4o-mini-2024-07-18" and record.cost_usd > 0 for record in records)


def test_a_call_whose_record_cannot_be_built_is_charged_its_worst_case_never_zero(
        engine: llmbudget.Engine, records: list[llmbudget.SpendRecord], monkeypatch: pytest.MonkeyPatch) -> None:
    """When building a call's record fails (a bug, or a warning a filter made an error), the call was recorded
    at $0: a budget then never saw that spend."""
    from llmbudget.pipeline import Attempt

    def broken(self: Attempt, **kwargs: Any) -> Any:
        raise RuntimeError("a bug while pricing")

    monkeypatch.setattr(Attempt, "_build_record", broken)
    transports = _transports("httpx")
    assert transports is not None
    sync_inner, _ = _inner(httpx, read=True)
    with httpx.Client(transport=transports.wrap(sync_inner, explicit=True)) as client:
        assert client.post(URL, json=REQUEST).content == ANSWER  # the app still gets its answer
    [record] = records
    assert record.usage.estimated and record.cost_usd > 0
    worst = engine.pricing.cost(Usage(input_tokens=1, output_tokens=REQUEST["max_tokens"]), model="gpt-4o-mini").usd
    assert record.cost_usd >= worst


def _chat_handler(sent: list[Any], library: Any = httpx2) -> Callable[[Any], Any]:
    def handle(request: Any) -> Any:
        sent.append((str(request.url), dict(request.headers), request.read()))
        return library.Response(200, content=ANSWER, headers={"content-type": "application/json"})

    return handle


def test_a_followed_redirect_is_one_call_not_two(engine: llmbudget.Engine, records: list[llmbudget.SpendRecord]) -> None:
    """Each hop of a redirect the client follows was its own attempt: the 307 was recorded and charged too."""
    sent: list[Any] = []
    chat = _chat_handler(sent)

    def handle(request: Any) -> Any:
        if request.url.host == "old.example":
            sent.append((str(request.url), {}, request.read()))
            return httpx2.Response(307, headers={"location": "https://new.example/v1/chat/completions"})
        return chat(request)

    with llmbudget.http_client(transport=httpx2.MockTransport(handle), follow_redirects=True) as client:
        assert client.post("https://old.example/v1/chat/completions", json=REQUEST).content == ANSWER
    assert [url for url, _, _ in sent] == ["https://old.example/v1/chat/completions",
                                           "https://new.example/v1/chat/completions"]
    [record] = records
    assert record.status == 200 and not record.estimated


def _sdk_library() -> Any:
    """httpx2 with openai >= 3, httpx with openai 2.x: the library of ``llmbudget.http_client()``'s clients."""
    return importlib.import_module(next(c.__module__ for c in openai.DefaultHttpxClient.__mro__
                                        if c.__module__.startswith("httpx")).split(".")[0])


@pytest.mark.parametrize("routed", [False, True])
@pytest.mark.parametrize("status", [307, 308])
def test_a_redirect_to_a_path_that_names_no_endpoint_is_still_the_call(
        engine: llmbudget.Engine, records: list[llmbudget.SpendRecord], status: int, routed: bool) -> None:
    """A gateway answering a chat call with a 307 to its own route (``/gw/route-42``): the hop there passed
    through unread, so no hop recorded the call and no budget held it (5 calls against a budget that fits 1).
    Also when llmbudget rewrote the call (routed to a tier): httpx builds the hop from the app's request."""
    if routed:
        engine.routing = llmbudget.Routing(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=1.0)
    sent: list[Any] = []
    library = _sdk_library()  # (a request passed through untouched is answered in the client's own library)
    chat = _chat_handler(sent, library)

    def handle(request: Any) -> Any:
        if request.url.path == "/v1/chat/completions":
            return library.Response(status, headers={"location": "/gw/route-42"})
        return chat(request)

    with llmbudget.http_client(transport=library.MockTransport(handle), follow_redirects=True) as client:
        assert client.post("https://gateway.example/v1/chat/completions", json=REQUEST).content == ANSWER
        [record] = records
        assert record.status == 200 and record.usage.total_tokens > 0 and record.cost_usd > 0
        assert record.routed is routed and json.loads(sent[0][2])["model"] == ("gpt-4.1-nano" if routed
                                                                               else "gpt-4o-mini")
        # once: a later call straight to that route is no LLM call llmbudget knows of
        assert client.post("https://gateway.example/gw/route-42", json=REQUEST).content == ANSWER
    assert len(records) == 1 and [url for url, _, _ in sent] == ["https://gateway.example/gw/route-42"] * 2


def test_a_redirect_not_followed_leaves_later_requests_to_its_target_alone(
        engine: llmbudget.Engine, records: list[llmbudget.SpendRecord]) -> None:
    """Only the hop the client builds from the redirected call is that call: a 307 the client did not follow made
    the app's own POST to the same path (a webhook) an LLM call, refused with a 402 by the budget."""
    engine.budgets = [llmbudget.Budget("0.01", per="global")]
    hooks: list[bytes] = []
    library = _sdk_library()

    def handle(request: Any) -> Any:
        if request.url.path == "/v1/chat/completions":
            return library.Response(307, headers={"location": "/hooks/deploy"})
        hooks.append(request.read())
        return library.Response(204)

    with llmbudget.http_client(transport=library.MockTransport(handle), follow_redirects=False) as client:
        assert client.post("https://gateway.example/v1/chat/completions", json=REQUEST).status_code == 307
        response = client.post("https://gateway.example/hooks/deploy", json={"event": "deployed"})
    assert response.status_code == 204 and hooks == [b'{"event":"deployed"}']
    assert records == [] and engine.budget_store.spent("global:all:-:") == (0, 0)  # (a 307 is no call: no record)


def test_the_mounts_of_a_client_given_its_transport_are_intercepted_too(
        engine: llmbudget.Engine, records: list[llmbudget.SpendRecord]) -> None:
    sent: list[Any] = []
    mounted = httpx2.MockTransport(_chat_handler(sent))
    with llmbudget.http_client(transport=httpx2.MockTransport(lambda r: httpx2.Response(404)),
                               mounts={"https://gateway.example": mounted}) as client:
        assert client.post("https://gateway.example/v1/chat/completions", json=REQUEST).content == ANSWER
    assert len(sent) == 1 and len(records) == 1  # through the mount, and recorded


def test_a_rewritten_request_keeps_the_apps_host_header_and_an_escaped_lone_surrogate(
        engine: llmbudget.Engine, records: list[llmbudget.SpendRecord]) -> None:
    """A rewritten body with an escaped lone surrogate (valid JSON) raised UnicodeEncodeError in the app, and a
    rewritten request lost the app's own Host header (a gateway reached by address)."""
    sent: list[Any] = []
    body = json.dumps({**REQUEST, "messages": [{"role": "user", "content": "cut emoji \ud83d"}]}).encode()
    with llmbudget.http_client(transport=httpx2.MockTransport(_chat_handler(sent))) as client:
        # api.openai.com: llmbudget adds a prompt_cache_key, so the request is rewritten
        response = client.post("https://api.openai.com/v1/chat/completions", content=body,
                               headers={"content-type": "application/json", "host": "gateway.corp"})
    assert response.content == ANSWER
    [(_, headers, sent_body)] = sent
    assert headers["host"] == "gateway.corp"
    sent_json = json.loads(sent_body)
    assert sent_json["messages"][0]["content"] == "cut emoji \ud83d" and "prompt_cache_key" in sent_json


def _call_in_a_forked_child(queue: Any) -> None:
    big = {**REQUEST, "messages": [{"role": "user", "content": "x " * 6000}]}  # over 8 KB: a worker thread

    async def run() -> bytes:
        async with llmbudget.async_http_client(transport=httpx2.MockTransport(_chat_handler([]))) as client:
            return (await client.post(URL, json=big)).content

    queue.put(asyncio.run(asyncio.wait_for(run(), timeout=20)))


def test_an_async_call_in_a_forked_child_is_answered(engine: llmbudget.Engine) -> None:
    """The child inherited the parent's thread pool without its threads: a call sent to it waited forever."""
    import multiprocessing

    _call_in_a_forked_child(queue := multiprocessing.get_context("fork").Queue())  # the parent uses the pool first
    assert queue.get(timeout=5) == ANSWER
    child = multiprocessing.get_context("fork").Process(target=_call_in_a_forked_child, args=(queue,))
    child.start()
    try:
        assert queue.get(timeout=30) == ANSWER
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
