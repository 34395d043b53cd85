"""Interception never breaks a request: any body reaches the server and comes back byte for byte."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import base_url, echo_server

import llmbudget

pytestmark = pytest.mark.filterwarnings("ignore::llmbudget.UnpricedModelWarning")

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SDK_HEADERS = {
    "User-Agent": "OpenAI/Python 3.0",
    "x-stainless-lang": "python",
    "content-type": "application/json",
}
LIBRARIES = {"httpx2": httpx2, "httpx": httpx}


class Harness:
    def __init__(self, server: Any, engine: llmbudget.Engine) -> None:
        self.server = server
        self.url = base_url(server)
        self.engine = engine
        self.records: list[llmbudget.SpendRecord] = []
        engine.add_observer(self.records.append)
        self.clients = {name: module.Client(timeout=30) for name, module in LIBRARIES.items()}

    def reset(self) -> None:
        self.server.received.clear()
        self.records.clear()

    def send(self, library: str, method: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
        self.reset()
        response = self.clients[library].request(method, self.url + path, content=body,
                                                 headers=SDK_HEADERS if headers is None else headers)
        assert response.status_code == 200
        return response

    def received(self) -> tuple[str, str, bytes, dict[str, str]]:
        assert len(self.server.received) == 1
        return self.server.received[0]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    """An echo server, a fresh engine, and llmbudget installed globally for this module."""
    was_installed = llmbudget.installed()
    engine = llmbudget.Engine()
    previous = llmbudget.set_engine(engine)
    llmbudget.install()
    try:
        with echo_server() as server:
            # The echo handler writes its headers and body separately; with Nagle's algorithm on,
            # every answer waits ~40 ms for a delayed ACK. TCP_NODELAY for this server only.
            server.RequestHandlerClass = type(
                "NoDelayEcho", (server.RequestHandlerClass,), {"disable_nagle_algorithm": True}
            )
            h = Harness(server, engine)
            try:
                yield h
            finally:
                for client in h.clients.values():
                    client.close()
    finally:
        if not was_installed:
            llmbudget.uninstall()
        llmbudget.set_engine(previous)


def _header(headers: dict[str, str], name: str) -> str | None:
    return next((value for key, value in headers.items() if key.lower() == name), None)


def _is_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False


def _sent_as(body: bytes, path: str = "/chat/completions") -> Any:
    """What the server gets for ``body``: the bytes themselves, or (a chat stream of a reasoning model, which
    llmbudget asks for its usage: its hidden reasoning is billed, never streamed) that JSON with the option."""
    from llmbudget.caps import reasoning_model

    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not (path == "/chat/completions" and isinstance(data, dict) and isinstance(data.get("model"), str)
            and reasoning_model(data["model"]) and (data.get("stream") is True or type(data.get("stream")) is int
                                                    and data.get("stream") == 1)):
        return body
    options = data.get("stream_options")
    if options is None or (isinstance(options, dict) and options.get("include_usage") in (None, False)):
        return {**data, "stream_options": {**(options or {}), "include_usage": True}}
    return body


def _same_body(received: bytes, expected: Any) -> bool:
    return received == expected if isinstance(expected, bytes) else json.loads(received) == expected


def _check_round_trip(harness: Harness, library: str, body: bytes, path: str = "/chat/completions") -> None:
    response = harness.send(library, "POST", path, body)
    method, server_path, received, headers = harness.received()
    assert (method, server_path) == ("POST", "/v1" + path)
    assert _same_body(received, _sent_as(body, path))
    assert response.content == received
    assert _header(headers, "content-type") == "application/json"
    # The request went through llmbudget: a JSON object is an LLM call (one record), anything else is not.
    expected = 1 if _is_object(body) else 0
    assert len(harness.records) == expected, harness.records


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
MESSAGES = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=40)}),
    max_size=4,
)
CHAT_REQUESTS = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-4o-mini", "gpt-4o", "o3", "my-local-model"]), "messages": MESSAGES},
    optional={"stream": st.booleans(), "max_tokens": st.integers(-5, 10_000), "n": JSON, "tools": JSON,
              "usage": JSON, "choices": JSON},
)


def _encoded(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode()


@pytest.mark.parametrize("library", LIBRARIES)
@SETTINGS
@given(value=JSON, ascii_only=st.booleans())
def test_any_json_value_passes_through(harness: Harness, library: str, value: Any, ascii_only: bool) -> None:
    _check_round_trip(harness, library, _encoded(value, ascii_only))


@pytest.mark.parametrize("library", LIBRARIES)
@SETTINGS
@given(request=CHAT_REQUESTS, ascii_only=st.booleans())
def test_chat_shaped_requests_pass_through(harness: Harness, library: str, request: dict[str, Any],
                                           ascii_only: bool) -> None:
    _check_round_trip(harness, library, _encoded(request, ascii_only))


@pytest.mark.parametrize("library", LIBRARIES)
@SETTINGS
@given(body=st.binary(max_size=4096))
def test_random_bytes_pass_through(harness: Harness, library: str, body: bytes) -> None:
    _check_round_trip(harness, library, body)


@pytest.mark.parametrize("library", LIBRARIES)
@SETTINGS
@given(request=CHAT_REQUESTS, junk=st.binary(min_size=1, max_size=8).filter(lambda b: not _utf8(b)),
       data=st.data())
def test_non_utf8_bodies_pass_through(harness: Harness, library: str, request: dict[str, Any], junk: bytes,
                                      data: st.DataObject) -> None:
    text = _encoded(request, False)
    at = data.draw(st.integers(0, len(text)), label="at")
    _check_round_trip(harness, library, text[:at] + junk + text[at:])


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("library", LIBRARIES)
@SETTINGS
@given(request=CHAT_REQUESTS, data=st.data())
def test_truncated_json_passes_through(harness: Harness, library: str, request: dict[str, Any],
                                       data: st.DataObject) -> None:
    text = _encoded(request, False)
    cut = data.draw(st.integers(0, len(text) - 1), label="cut")
    _check_round_trip(harness, library, text[:cut])


@pytest.mark.parametrize("library", LIBRARIES)
def test_huge_bodies_pass_through(harness: Harness, library: str) -> None:
    rng = random.Random(7)
    words = ["budget", "token", "cache", "route", "price", "stream", "model", "naïve", "日本語", "🎉"]
    content = " ".join(rng.choice(words) for _ in range(800_000))  # ~5 MB of text
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}],
               "usage": {"prompt_tokens": 1_000_000, "completion_tokens": 1}}
    body = _encoded(request, False)
    assert len(body) > 5_000_000
    _check_round_trip(harness, library, body)
    assert harness.records[0].usage.input_tokens == 1_000_000
    noise = rng.randbytes(5 * 1024 * 1024)
    _check_round_trip(harness, library, noise)


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/models"), ("GET", "/chat/completions"), ("PUT", "/chat/completions"), ("POST", "/files"),
     ("POST", "/responses/resp_123/cancel"), ("POST", "/chat/completions/chatcmpl-1"), ("POST", "/moderations")],
)
def test_other_methods_and_paths_pass_through_untouched(harness: Harness, library: str, method: str,
                                                        path: str) -> None:
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
    response = harness.send(library, method, path, body)
    assert harness.received()[:3] == (method, "/v1" + path, body)
    assert response.content == body
    assert harness.records == []


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", "multipart/form-data; boundary=x"])
def test_a_json_call_labelled_otherwise_goes_as_it_is_and_is_counted(harness: Harness, library: str,
                                                                      content_type: str) -> None:
    # lax servers (llama.cpp's, vLLM) read and bill such a body: passed through uncounted, it skipped every budget
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
    headers = {**SDK_HEADERS, "content-type": content_type}
    response = harness.send(library, "POST", "/chat/completions", body, headers=headers)
    method, path, received, server_headers = harness.received()
    assert (method, path, received) == ("POST", "/v1/chat/completions", body)
    assert _header(server_headers, "content-type") == content_type
    assert response.content == body
    assert len(harness.records) == 1
    with llmbudget.scope(budgets=[llmbudget.Budget("0.0000001")]):
        refused = harness.clients[library].post(harness.url + "/chat/completions", content=body, headers=headers)
    assert refused.status_code == 402
    form = b"--x\r\ncontent-disposition: form-data; name=file\r\n\r\n\xff\r\n--x--\r\n"  # not JSON: untouched
    with llmbudget.scope(budgets=[llmbudget.Budget("1")]):
        harness.send(library, "POST", "/chat/completions", form, headers=headers)
    assert harness.received()[2] == form and harness.records == []


def test_billed_endpoints_without_an_adapter_pass_through_and_are_said_once(harness: Harness) -> None:
    """Images, speech and an app's own Batch API jobs cost money llmbudget does not price: 10 image calls under
    a $0.05 budget all went out, recorded nowhere and silently. They still pass through untouched (never
    refused), and each endpoint is said once, as an UnpricedModelWarning; llmbudget's own batch requests are not."""
    from llmbudget.pipeline import internal_requests

    body = b'{"model": "gpt-image-1", "prompt": "a lighthouse"}'
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with internal_requests():
            harness.send("httpx2", "POST", "/batches", body)
        assert not seen
        for path in ("/images/generations", "/images/generations", "/audio/speech", "/batches"):
            response = harness.send("httpx2", "POST", path, body)
            assert harness.received()[:3] == ("POST", "/v1" + path, body) and response.content == body
            assert harness.records == []
    said = [str(w.message) for w in seen if issubclass(w.category, llmbudget.UnpricedModelWarning)]
    assert len(said) == 3
    assert all(f"does not price {path} calls" in text for path, text in
               zip(("/images/generations", "/audio/speech", "/batches"), said, strict=True))


@pytest.mark.parametrize(("path", "said"), [
    ("/threads/thread_1/runs", "/runs"),  # Assistants runs (evals runs end so too); said once per endpoint
    ("/complete", "/v1/complete"),  # Anthropic's legacy text completions
    ("/model/anthropic.claude-sonnet-4-5/invoke", "/invoke"),  # AnthropicBedrock: the model is in the path
    ("/model/anthropic.claude-sonnet-4-5/invoke-with-response-stream", "/invoke-with-response-stream"),
    ("/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5:rawPredict", ":rawPredict"),
    ("/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5:streamRawPredict",
     ":streamRawPredict"),  # AnthropicVertex
])
def test_other_billed_calls_llmbudget_cannot_price_are_said_never_silent(harness: Harness, path: str,
                                                                         said: str) -> None:
    """Claude through AnthropicBedrock or AnthropicVertex, Assistants and evals runs: a $0.01 budget let them
    all through, recorded nowhere and without a word."""
    body = b'{"anthropic_version": "bedrock-2023-05-31", "max_tokens": 3000, "messages": []}'
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        response = harness.send("httpx2", "POST", path, body)
    assert response.content == body and harness.records == []  # passed through untouched
    texts = [str(w.message) for w in seen if issubclass(w.category, llmbudget.UnpricedModelWarning)]
    assert len(texts) == 1 and f"does not price {said} calls" in texts[0]


def test_a_json_chat_request_is_intercepted(harness: Harness) -> None:
    """The control for the tests above: the same request with a JSON content type is an LLM call."""
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], ' \
           b'"usage": {"prompt_tokens": 9, "completion_tokens": 2}}'
    harness.send("httpx2", "POST", "/chat/completions", body)
    assert len(harness.records) == 1
    assert harness.records[0].usage.input_tokens == 9
    assert harness.records[0].cost_usd > 0


async def _send_async(module: Any, url: str, body: bytes) -> bytes:
    async with module.AsyncClient(timeout=30) as client:
        response = await client.post(url, content=body, headers=SDK_HEADERS)
        assert response.status_code == 200
        return response.content  # type: ignore[no-any-return]


@pytest.mark.parametrize("library", LIBRARIES)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(JSON.map(lambda v: _encoded(v, False)), CHAT_REQUESTS.map(lambda v: _encoded(v, True)),
                      st.binary(max_size=512)))
def test_async_clients_pass_through(harness: Harness, library: str, body: bytes) -> None:
    harness.reset()
    content = asyncio.run(_send_async(LIBRARIES[library], harness.url + "/chat/completions", body))
    assert _same_body(harness.received()[2], _sent_as(body))
    assert content == harness.received()[2]
    assert len(harness.records) == (1 if _is_object(body) else 0)


@pytest.mark.parametrize("library", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_a_transport_that_is_both_sync_and_async_serves_each_kind_of_client(harness: Harness, library: Any) -> None:
    # MockTransport subclasses both transport bases: a sync client's got the async wrapper once llmbudget was
    # installed, and every request it made failed (AttributeError: no handle_request), LLM or not.
    def answer(request: Any) -> Any:
        return library.Response(200, json={"path": request.url.path})

    with library.Client(transport=library.MockTransport(answer)) as client:
        assert client.get("http://example.test/ping").json() == {"path": "/ping"}
    with llmbudget.http_client(transport=library.MockTransport(answer)) as client:
        if isinstance(client, library.Client):
            assert client.get("http://example.test/ping").json() == {"path": "/ping"}

    async def async_get() -> Any:
        async with library.AsyncClient(transport=library.MockTransport(answer)) as client:
            return (await client.get("http://example.test/ping")).json()

    assert asyncio.run(async_get()) == {"path": "/ping"}


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())


@pytest.mark.parametrize("library", LIBRARIES)
@SETTINGS
@given(request=CHAT_REQUESTS, model=JSON.filter(lambda value: not isinstance(value, str)))
def test_a_model_that_is_not_a_string_passes_through_with_no_error_logged(harness: Harness, library: str,
                                                                          request: dict[str, Any], model: Any) -> None:
    """``"model": 123`` logged a traceback per call ("routing or capping failed", "adding a length directive
    failed") with output caps, a directive or routing on; it goes to the server as it is, for it to refuse."""
    from llmbudget.config import engine_from_config

    engine = engine_from_config({"output": {"max_words": 50},
                                 "routing": {"tiers": {"small": "gpt-4.1-nano", "large": ""}}})
    engine.add_observer(harness.records.append)
    previous = llmbudget.set_engine(engine)
    errors = _Errors()
    logging.getLogger("llmbudget").addHandler(errors)
    try:
        body = json.dumps({**request, "model": model}).encode()
        response = harness.send(library, "POST", "/chat/completions", body)
        assert harness.received()[2] == body and response.content == body
    finally:
        logging.getLogger("llmbudget").removeHandler(errors)
        llmbudget.set_engine(previous)
    assert errors.seen == []


UNREADABLE = {  # JSON bodies Python's json cannot read, which a server may
    "nested past the recursion limit": b'{"model": "gpt-4o-mini", "messages": [], "tools": ' + b"[" * 5000 +
    b"]" * 5000 + b"}",
    "an integer of 4,301 digits": b'{"model": "gpt-4o-mini", "messages": [], "seed": ' + b"7" * 4301 + b"}",
    "bytes that are not UTF-8": b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "caf\xe9"}]}',
}


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("kind", UNREADABLE)
def test_a_body_llmbudget_cannot_read_is_refused_where_a_budget_applies_else_passed_through(
        harness: Harness, library: str, kind: str) -> None:
    """Sent untouched, such a call skipped every budget and the ledger: a $0 budget refused a plain call and let
    these through."""
    body = UNREADABLE[kind]
    with llmbudget.scope(tenant="acme", budgets=[llmbudget.Budget("0.01")]):
        harness.reset()
        refused = harness.clients[library].post(harness.url + "/chat/completions", content=body, headers=SDK_HEADERS)
    assert refused.status_code == 400 and refused.headers["x-llmbudget-refused"] == "unreadable-request"
    assert refused.json()["error"]["code"] == "llmbudget_unreadable_request"
    assert harness.server.received == [] and harness.records == []  # never sent
    warnings = _Errors()  # no budget: untouched, as before, and said once (it goes out unpriced and unrecorded)
    warnings.setLevel(logging.WARNING)
    harness.engine._unreadable_warned = False  # (the module's engine: said once per engine)
    logging.getLogger("llmbudget").addHandler(warnings)
    try:
        for _ in range(2):
            response = harness.send(library, "POST", "/chat/completions", body)
            assert harness.received()[2] == body and response.content == body
    finally:
        logging.getLogger("llmbudget").removeHandler(warnings)
    assert [m for m in warnings.seen if "unpriced and unrecorded" in m] == warnings.seen and len(warnings.seen) == 1
