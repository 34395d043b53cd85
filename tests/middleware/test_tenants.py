"""Who names the tenant: the authenticated user outranks any header; a header counts only when trusted.

A tenant that is ambiguous or malformed (two headers, invalid UTF-8, too long,
control characters) is a 400 problem, never the shared default tenant; and a
spoofed header never reaches another tenant's cached answers (ASGI and WSGI).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from flask import Flask
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

import llmbudget
from llmbudget.config import ConfigError
from llmbudget.middleware import LLMBudgetMiddleware, LLMBudgetWSGIMiddleware, Policy

HI = [{"role": "user", "content": "What is our refund policy?"}]
CYRILLIC_ACME = "\u0430cme"  # "аcme": a Cyrillic a, then "cme"


def tenant_now() -> str | None:
    current = llmbudget.current_scope()
    return current.tenant if current else None


class Upstream(httpx2.BaseTransport):
    """A fake provider: every call it receives gets a new answer, so a cached answer is recognisable."""

    def __init__(self) -> None:
        self.calls = 0

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        self.calls += 1
        return httpx2.Response(200, json={
            "id": f"chatcmpl-{self.calls}", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"answer #{self.calls}"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        })

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url="https://api.openai.com/v1", api_key="sk-test", max_retries=0,
                             http_client=llmbudget.http_client(transport=self))


@pytest.fixture
def cached_engine(engine: llmbudget.Engine) -> llmbudget.Engine:
    """The test's engine, with an in-memory exact cache partitioned by tenant."""
    fresh = llmbudget.Engine(cache=llmbudget.Cache(semantic=False))
    llmbudget.set_engine(fresh)
    return fresh


# -- ASGI: Starlette with AuthenticationMiddleware ---------------------------------------------------


class _Auth(AuthenticationBackend):
    """Authenticates ``x-user: name`` (a stand-in for a session cookie or a bearer token)."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        user = conn.headers.get("x-user")
        return (AuthCredentials(["authenticated"]), SimpleUser(user)) if user else None


def starlette_app(policy: Policy, *, upstream: Upstream | None = None, client: tuple[str, int] | None = None
                  ) -> TestClient:
    llm = upstream.client() if upstream is not None else None

    async def info(request: Request) -> JSONResponse:
        return JSONResponse({"tenant": tenant_now()})

    def chat(request: Request) -> JSONResponse:
        assert llm is not None
        answer = llm.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=8)
        return JSONResponse({"tenant": tenant_now(), "answer": answer.choices[0].message.content})

    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"tenant": tenant_now()})
        await websocket.close()

    app = Starlette(
        routes=[Route("/info", info), Route("/chat", chat), WebSocketRoute("/ws", socket)],
        middleware=[Middleware(AuthenticationMiddleware, backend=_Auth()),
                    Middleware(LLMBudgetMiddleware, policy=policy)],
    )
    return TestClient(app, client=client or ("testclient", 50000))


def test_an_authentication_middleware_inside_this_one_is_warned_about_once(
        engine: llmbudget.Engine, caplog: pytest.LogCaptureFixture) -> None:
    """Added in the wrong order, its users were never read: all of them shared the default tenant's cache and
    budgets, and nothing said so."""
    async def info(request: Request) -> JSONResponse:
        return JSONResponse({"tenant": tenant_now()})

    inside = Starlette(routes=[Route("/info", info)], middleware=[
        Middleware(LLMBudgetMiddleware, policy=Policy()), Middleware(AuthenticationMiddleware, backend=_Auth())])
    client = TestClient(inside)
    with caplog.at_level(logging.WARNING, logger="llmbudget.middleware"):
        assert client.get("/info").json()["tenant"] is None  # no one authenticated: nothing to say
        assert not caplog.records
        for user in ("alice", "bob"):
            assert client.get("/info", headers={"x-user": user}).json()["tenant"] is None
        right = starlette_app(Policy())  # the order README gives: the user names the tenant, no warning
        assert right.get("/info", headers={"x-user": "alice"}).json()["tenant"] == "alice"
    assert [r.getMessage().count("runs inside it") for r in caplog.records] == [1]


@pytest.mark.parametrize("trust", [False, True])
def test_asgi_an_authenticated_user_outranks_any_tenant_header(engine: llmbudget.Engine, trust: bool) -> None:
    client = starlette_app(Policy(trust_tenant_header=trust))
    assert client.get("/info", headers={"x-user": "globex", "x-tenant-id": "acme"}).json()["tenant"] == "globex"
    assert client.get("/info", headers={"x-user": "globex"}).json()["tenant"] == "globex"
    assert client.get("/info", headers={"x-tenant-id": "acme"}).json()["tenant"] == ("acme" if trust else None)


def test_asgi_the_tenant_header_is_ignored_unless_trusted(engine: llmbudget.Engine, caplog) -> None:
    untrusted = starlette_app(Policy())
    with caplog.at_level(logging.DEBUG, logger="llmbudget.middleware"):
        for _ in range(3):
            assert untrusted.get("/info", headers={"x-tenant-id": "acme"}).json()["tenant"] is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "trust_tenant_header" in warnings[0].getMessage()  # said once, not per request
    # Untrusted, the header is not even looked at: two of them are not refused.
    assert untrusted.get("/info", headers=[("x-tenant-id", "a"), ("x-tenant-id", "b")]).status_code == 200

    proxies = Policy(trust_tenant_header=["10.0.0.0/8", "2001:db8::1"])
    assert proxies.trust_tenant_header == ("10.0.0.0/8", "2001:db8::1/128")
    for peer, expected in [("10.1.2.3", "acme"), ("::ffff:10.1.2.3", "acme"), ("2001:db8::1", "acme"),
                           ("192.168.0.9", None), ("testclient", None)]:
        seen = starlette_app(proxies, client=(peer, 4000)).get("/info", headers={"x-tenant-id": "acme"})
        assert seen.json()["tenant"] == expected, peer


def test_asgi_the_cache_never_leaks_across_tenants_through_a_spoofed_header(cached_engine: llmbudget.Engine) -> None:
    upstream = Upstream()
    # The worst case: the header is trusted (a gateway sets it) and globex, logged in, sends acme's anyway.
    client = starlette_app(Policy(trust_tenant_header=True), upstream=upstream)
    first = client.get("/chat", headers={"x-tenant-id": "acme"}).json()
    assert first == {"tenant": "acme", "answer": "answer #1"}
    assert client.get("/chat", headers={"x-tenant-id": "acme"}).json()["answer"] == "answer #1"  # acme's hit
    assert upstream.calls == 1
    spoofed = client.get("/chat", headers={"x-user": "globex", "x-tenant-id": "acme"}).json()
    assert spoofed == {"tenant": "globex", "answer": "answer #2"}
    # With the default policy the header is ignored: an anonymous request is the default tenant, not acme.
    anonymous = starlette_app(Policy(), upstream=upstream).get("/chat", headers={"x-tenant-id": "acme"}).json()
    assert anonymous == {"tenant": None, "answer": "answer #3"}
    assert upstream.calls == 3


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_disabled_routes_calls_never_share_one_cache_partition(cached_engine: llmbudget.Engine, kind: str) -> None:
    """A disabled route names no tenant: its calls, outside any scope, read and wrote the default tenant's cache,
    so user bob was served user alice's answer there. They now pass the cache (and the router) by."""
    upstream = Upstream()
    policy = Policy(routes=[llmbudget.config.Route("/chat", enabled=False)])
    if kind == "asgi":
        client = starlette_app(policy, upstream=upstream)
        answers = [client.get("/chat", headers={"x-user": user}).json() for user in ("alice", "bob")]
    else:
        flask = flask_client(policy, upstream)
        answers = [flask.get("/chat", environ_overrides={"REMOTE_USER": user}).json for user in ("alice", "bob")]
    assert answers == [{"tenant": None, "answer": "answer #1"}, {"tenant": None, "answer": "answer #2"}]
    assert upstream.calls == 2


def test_a_scope_the_app_opens_on_a_disabled_route_with_its_own_tenant_keeps_the_cache(
        cached_engine: llmbudget.Engine) -> None:
    """A route disabled so that the app names the tenant itself: its own scope(tenant=...) inherits none of the
    pass-by settings, so its calls are cached (in its tenant's partition) as anywhere else."""
    upstream = Upstream()
    llm = upstream.client()

    async def own(request: Request) -> JSONResponse:
        with llmbudget.scope(budgets=[llmbudget.Budget("5")]), \
                llmbudget.scope(tenant=request.query_params["org"]) as inner:  # named under a scope naming none
            answer = llm.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=8)
            return JSONResponse({"cache": inner.cache, "answer": answer.choices[0].message.content})

    app = Starlette(routes=[Route("/own", own)], middleware=[Middleware(
        LLMBudgetMiddleware, policy=Policy(routes=[llmbudget.config.Route("/own", enabled=False)]))])
    client = TestClient(app)
    first, again = (client.get("/own?org=acme").json() for _ in range(2))
    assert first == again == {"cache": None, "answer": "answer #1"}  # the second, acme's hit
    assert client.get("/own?org=globex").json()["answer"] == "answer #2"


@dataclass
class RawResponse:
    status_code: int
    headers: dict[str, str]
    content: bytes


def raw_get(client: TestClient, headers: list[tuple[bytes, bytes]]) -> RawResponse:
    """GET /info with these exact header bytes (TestClient re-encodes header values as UTF-8)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/info", "raw_path": b"/info", "root_path": "", "query_string": b"", "headers": headers,
             "client": ("203.0.113.7", 5000), "server": ("testserver", 80)}
    asyncio.run(client.app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return RawResponse(start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body)


def problem_of(response: Any) -> dict[str, Any]:
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-llmbudget-refused"] == "tenant"
    assert response.headers["cache-control"] == "no-store"
    body = json.loads(response.get_data() if hasattr(response, "get_data") else response.content)
    assert body["type"] == "urn:llmbudget:invalid-tenant" and body["title"] == "Invalid tenant"
    assert body["status"] == 400 and body["detail"]
    return body


@pytest.mark.parametrize(("headers", "reason"), [
    ([(b"x-tenant-id", b"acme"), (b"x-tenant-id", b"globex")], "duplicate"),  # a gateway appended its own
    ([(b"x-tenant-id", b"acme"), (b"X-Tenant-ID", b"acme")], "duplicate"),
    ([(b"x-tenant-id", b"globex, acme")], "duplicate"),
    ([(b"x-tenant-id", b"\xff\xfeacme")], "invalid_utf8"),
    ([(b"x-tenant-id", "caf\u00e9".encode("latin-1"))], "invalid_utf8"),  # latin-1, not UTF-8
    ([(b"x-tenant-id", b"x" * 129)], "too_long"),
    ([(b"x-tenant-id", "\u00e9" * 129)], "too_long"),  # characters, not bytes: 128 of these fit
    ([(b"x-tenant-id", b"ac\x7fme")], "not_printable"),
    ([(b"x-tenant-id", b"ac\x00me")], "not_printable"),
    ([(b"x-tenant-id", "ac\u200bme".encode())], "not_printable"),  # a zero-width space
    ([(b"x-tenant-id", b"acme\x1f")], "not_printable"),  # at either end too: str.strip() took these as spaces
    ([(b"x-tenant-id", b"\x1cacme")], "not_printable"),
    ([(b"x-tenant-id", "acme\u2028".encode())], "not_printable"),
])
def test_asgi_ambiguous_or_malformed_tenant_headers_are_refused(
    engine: llmbudget.Engine, headers: list[Any], reason: str, caplog
) -> None:
    headers = [(k, v.encode() if isinstance(v, str) else v) for k, v in headers]
    client = starlette_app(Policy(trust_tenant_header=True))
    with caplog.at_level(logging.WARNING, logger="llmbudget.middleware"):
        response = raw_get(client, [*headers, (b"x-request-id", b"bad-1")])
    problem = problem_of(response)
    assert response.headers["content-length"] == str(len(response.content))
    assert (problem["reason"], problem["source"], problem["header"], problem["request_id"]) == (
        reason, "header", "x-tenant-id", "bad-1")
    assert any("refused with 400" in r.getMessage() for r in caplog.records)
    # Refused even when a logged-in user outranks the header: two values mean something got past the proxy.
    assert raw_get(client, [*headers, (b"x-user", b"globex")]).status_code == 400
    # Untrusted, the header is never read: the same request is served, for the default tenant.
    assert raw_get(starlette_app(Policy()), headers).status_code == 200


def test_asgi_tenant_values_are_utf8_and_up_to_128_characters(engine: llmbudget.Engine) -> None:
    client = starlette_app(Policy(trust_tenant_header=True))
    spoof = json.loads(raw_get(client, [(b"x-tenant-id", CYRILLIC_ACME.encode())]).content)["tenant"]
    assert spoof == CYRILLIC_ACME and spoof != "acme"  # its own tenant, not mojibake ("Ð°cme")
    accented = json.loads(raw_get(client, [(b"x-tenant-id", ("\u00e9" * 128).encode())]).content)["tenant"]
    assert accented == "\u00e9" * 128
    assert client.get("/info", headers={"x-tenant-id": "t" * 128}).json()["tenant"] == "t" * 128
    assert client.get("/info", headers={"x-tenant-id": "  acme "}).json()["tenant"] == "acme"
    assert client.get("/info", headers={"x-tenant-id": ""}).json()["tenant"] is None  # empty: not named


def test_asgi_malformed_users_and_callable_tenants_are_refused_too(engine: llmbudget.Engine) -> None:
    problem = problem_of(starlette_app(Policy()).get("/info", headers={"x-user": "u" * 200}))
    assert (problem["reason"], problem["source"]) == ("too_long", "user") and "header" not in problem

    def from_query(scope: Any) -> str:
        return scope["query_string"].decode().partition("org=")[2]

    by_callable = starlette_app(Policy(tenant=from_query))
    assert by_callable.get("/info?org=blue", headers={"x-user": "globex"}).json()["tenant"] == "blue"
    assert problem_of(by_callable.get("/info?org=" + "o" * 129))["source"] == "callable"


class _Unwritable(str):
    def __str__(self) -> str:
        raise RuntimeError("the app's own name class cannot write itself")


class _UnwritableInt(int):
    def __str__(self) -> str:
        raise RuntimeError("the app's own id class cannot write itself")


def test_a_tenant_callables_int_too_long_to_write_is_refused_and_an_unwritable_name_is_the_default(
        engine: llmbudget.Engine) -> None:
    """str() refuses an int of over 4,300 digits, and a str subclass may raise: both failed the request (500)."""
    for make in (starlette_app, flask_client):
        problem = problem_of(make(Policy(tenant=lambda request: 10**5000)).get("/info"))
        assert (problem["reason"], problem["source"]) == ("too_long", "callable")
        for unwritable, tenant in ((_Unwritable("acme"), None), (_UnwritableInt(42), "42")):
            response = make(Policy(tenant=lambda request, name=unwritable: name)).get("/info")  # type: ignore[misc]
            assert response.status_code == 200
            body = response.get_data() if hasattr(response, "get_data") else response.content
            assert json.loads(body)["tenant"] == tenant


class _NamedBy:
    """An authenticated user of the app's own class: some have no ``identity``, or one that raises."""

    is_authenticated = True

    def __init__(self, display_name: str, identity: str | None = None, *, broken: bool = False) -> None:
        self.display_name, self._identity, self._broken = display_name, identity, broken

    def __getattr__(self, name: str) -> str:
        if name != "identity" or (self._identity is None and not self._broken):
            raise AttributeError(name)
        if self._broken:
            raise RuntimeError("the session store is down")
        return self._identity


@pytest.mark.parametrize(("user", "tenant"), [
    (_NamedBy("globex"), "globex"),  # no identity: its display name
    (_NamedBy("globex", broken=True), "globex"),  # reading identity raises: its display name
    (_NamedBy("globex", "org-7"), "org-7"),
    (_NamedBy(""), None),  # authenticated, nameless: refused
    (_NamedBy("", broken=True), None),
    (_NamedBy("   "), None),  # a blank name names no one: refused (the header named it, or the default tenant)
    (_NamedBy("bob", "   "), "bob"),  # a blank identity: its display name
    (_NamedBy(" acme"), " acme"),  # kept as it is: trimmed, it was user "acme"'s tenant (its cache, its budgets)
    (_NamedBy("x", "acme "), "acme "),
    (_NamedBy("x", b"glob\xc3\xa9x"), "globéx"),  # bytes, read as UTF-8 (it was the tenant "b'glob...'")
    (_NamedBy(b"\xff\xfe"), None),  # bytes that are not UTF-8 name no one
    (_NamedBy("globex", 10**5000), "globex"),  # an int str() refuses (over 4,300 digits): its display name (a 500)
])
def test_asgi_a_user_without_an_identity_is_named_by_its_display_name_or_refused(
        engine: llmbudget.Engine, user: Any, tenant: str | None) -> None:
    async def info(request: Request) -> JSONResponse:
        return JSONResponse({"tenant": tenant_now()})

    def with_user(app: Any) -> Any:
        async def wrapped(scope: Any, receive: Any, send: Any) -> None:
            await app({**scope, "user": user} if scope["type"] == "http" else scope, receive, send)
        return wrapped

    app = Starlette(routes=[Route("/info", info)],
                    middleware=[Middleware(with_user), Middleware(LLMBudgetMiddleware,  # type: ignore[arg-type]
                                                                  policy=Policy(trust_tenant_header=True))])
    for headers in ({}, {"x-tenant-id": "acme"}):  # before, the header named a user it could not read
        response = TestClient(app).get("/info", headers=headers)
        if tenant is None:
            assert (problem_of(response)["reason"], problem_of(response)["source"]) == ("unnamed_user", "user")
        else:
            assert response.json()["tenant"] == tenant
    by_callable = Starlette(routes=[Route("/info", info)], middleware=[
        Middleware(with_user), Middleware(LLMBudgetMiddleware, policy=Policy(tenant=lambda scope: "blue"))])  # type: ignore[arg-type]
    assert TestClient(by_callable).get("/info").json()["tenant"] == "blue"  # the callable names it: no refusal


def test_asgi_websockets_with_a_malformed_tenant_are_refused(engine: llmbudget.Engine) -> None:
    client = starlette_app(Policy(trust_tenant_header=True))
    with client.websocket_connect("/ws", headers={"x-tenant-id": "acme"}) as socket:
        assert socket.receive_json() == {"tenant": "acme"}
    with pytest.raises(WebSocketDisconnect) as refused:
        with client.websocket_connect("/ws", headers={"x-tenant-id": "a, b"}):
            pass
    assert refused.value.code == 1008


# -- WSGI: Flask ----------------------------------------------------------------------------------


def flask_client(policy: Policy, upstream: Upstream | None = None) -> Any:
    app = Flask(__name__)
    llm = upstream.client() if upstream is not None else None

    @app.get("/info")
    def info() -> dict[str, Any]:
        return {"tenant": tenant_now()}

    @app.get("/chat")
    def chat() -> dict[str, Any]:
        assert llm is not None
        answer = llm.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=8)
        return {"tenant": tenant_now(), "answer": answer.choices[0].message.content}

    app.wsgi_app = LLMBudgetWSGIMiddleware(app.wsgi_app, policy=policy)  # type: ignore[method-assign]
    return app.test_client()


def as_server_sends(text: str | bytes) -> str:
    """A header value as a WSGI server puts it in the environ: the raw bytes, decoded as latin-1 (PEP 3333)."""
    raw = text.encode() if isinstance(text, str) else text
    return raw.decode("latin-1")


@pytest.mark.parametrize("trust", [False, True])
def test_wsgi_remote_user_outranks_any_tenant_header(engine: llmbudget.Engine, trust: bool) -> None:
    client = flask_client(Policy(trust_tenant_header=trust))
    user = {"REMOTE_USER": "globex"}
    assert client.get("/info", headers={"x-tenant-id": "acme"}, environ_overrides=user).json["tenant"] == "globex"
    assert client.get("/info", headers={"x-tenant-id": "acme"}).json["tenant"] == ("acme" if trust else None)
    # a user's name is kept as it is ("acme " is another account than "acme"); a header's spaces are not its value
    assert client.get("/info", environ_overrides={"REMOTE_USER": "acme "}).json["tenant"] == "acme "
    assert client.get("/info", headers={"x-tenant-id": " acme "}).json["tenant"] == ("acme" if trust else None)
    # a REMOTE_USER of spaces names no one, as a blank ASGI identity: refused (the header named the tenant)
    blank = client.get("/info", headers={"x-tenant-id": "acme"}, environ_overrides={"REMOTE_USER": "   "})
    assert problem_of(blank)["reason"] == "unnamed_user"
    # (an empty one, as IIS and CGI gateways send it, is no one logged in)
    assert client.get("/info", environ_overrides={"REMOTE_USER": ""}).json["tenant"] is None


def test_wsgi_the_tenant_header_is_trusted_from_listed_proxies_only(engine: llmbudget.Engine) -> None:
    client = flask_client(Policy(trust_tenant_header=["10.0.0.5"]))
    for peer, expected in [("10.0.0.5", "acme"), ("10.0.0.6", None), ("127.0.0.1", None)]:
        seen = client.get("/info", headers={"x-tenant-id": "acme"}, environ_overrides={"REMOTE_ADDR": peer})
        assert seen.json["tenant"] == expected, peer


def test_wsgi_the_cache_never_leaks_across_tenants_through_a_spoofed_header(cached_engine: llmbudget.Engine) -> None:
    upstream = Upstream()
    client = flask_client(Policy(trust_tenant_header=True), upstream)
    assert client.get("/chat", headers={"x-tenant-id": "acme"}).json == {"tenant": "acme", "answer": "answer #1"}
    assert client.get("/chat", headers={"x-tenant-id": "acme"}).json["answer"] == "answer #1"
    spoofed = client.get("/chat", headers={"x-tenant-id": "acme"}, environ_overrides={"REMOTE_USER": "globex"})
    assert spoofed.json == {"tenant": "globex", "answer": "answer #2"}
    homoglyph = client.get("/chat", environ_overrides={"HTTP_X_TENANT_ID": as_server_sends(CYRILLIC_ACME)})
    assert homoglyph.json == {"tenant": CYRILLIC_ACME, "answer": "answer #3"}
    anonymous = flask_client(Policy(), upstream).get("/chat", headers={"x-tenant-id": "acme"})
    assert anonymous.json == {"tenant": None, "answer": "answer #4"}


@pytest.mark.parametrize(("value", "reason"), [
    ("acme, globex", "duplicate"),
    (as_server_sends(b"\xffacme"), "invalid_utf8"),
    ("x" * 129, "too_long"),
    ("ac\tme", "not_printable"),
    (as_server_sends("acme\x85".encode()), "not_printable"),
    ("acme\x0b", "not_printable"),
])
def test_wsgi_ambiguous_or_malformed_tenant_headers_are_refused(engine: llmbudget.Engine, value: str,
                                                                 reason: str) -> None:
    client = flask_client(Policy(trust_tenant_header=True))
    response = client.get("/info", environ_overrides={"HTTP_X_TENANT_ID": value}, headers={"x-request-id": "w-9"})
    problem = problem_of(response)
    assert (problem["reason"], problem["source"], problem["request_id"]) == (reason, "header", "w-9")


def test_wsgi_two_tenant_headers_are_refused(engine: llmbudget.Engine) -> None:
    client = flask_client(Policy(trust_tenant_header=True))
    response = client.get("/info", headers=[("x-tenant-id", "acme"), ("x-tenant-id", "globex")])
    assert problem_of(response)["reason"] == "duplicate"
    # Untrusted, the header is ignored whatever it holds.
    assert flask_client(Policy()).get("/info", headers=[("x-tenant-id", "a"), ("x-tenant-id", "b")]).status_code == 200


# -- the policy -----------------------------------------------------------------------------------


def test_trust_tenant_header_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "llmbudget.toml"
    path.write_text('trust_tenant_header = ["10.0.0.5", "10.1.0.0/16"]\n')
    assert Policy.from_file(path).trust_tenant_header == ("10.0.0.5/32", "10.1.0.0/16")
    path.write_text("trust_tenant_header = true\n")
    assert Policy.from_file(path).trust_tenant_header is True
    assert Policy().trust_tenant_header is False and Policy(trust_tenant_header=[]).trust_tenant_header is False


@pytest.mark.parametrize(("options", "message"), [
    ({"trust_tenant_header": "yes"}, "trust_tenant_header must be true, false or a list"),
    ({"trust_tenant_header": ["gateway.internal"]}, "'gateway.internal' is not an IP address"),
    ({"trust_tenant_header": [10]}, "10 is not an IP address"),
    ({"trust_tenant_header": True, "tenant_header": None}, "tenant_header is off"),
])
def test_bad_trust_settings_are_clear_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Policy(**options)


def test_bad_trust_settings_in_toml_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "llmbudget.toml"
    path.write_text('trust_tenant_header = "10.0.0.5"\n')
    with pytest.raises(ConfigError, match=r"llmbudget\.toml.*trust_tenant_header must be"):
        Policy.from_file(path)



def test_a_user_or_header_naming_the_default_tenant_is_refused(cached_engine: llmbudget.Engine) -> None:
    # a user named "default" shared the budgets and the cached answers of every request that names no tenant
    upstream = Upstream()
    client = flask_client(Policy(trust_tenant_header=True), upstream)
    assert client.get("/chat").json == {"tenant": None, "answer": "answer #1"}
    problem = problem_of(client.get("/chat", environ_overrides={"REMOTE_USER": "default"}))
    assert (problem["reason"], problem["source"]) == ("reserved", "user")
    problem = problem_of(client.get("/chat", headers={"x-tenant-id": "default"}))
    assert (problem["reason"], problem["source"], problem["header"]) == ("reserved", "header", "x-tenant-id")
    assert problem_of(starlette_app(Policy()).get("/info", headers={"x-user": "default"}))["reason"] == "reserved"
    # the app's own tenant callable may name it (anonymous traffic, on purpose)
    assert starlette_app(Policy(tenant=lambda scope: "default")).get("/info").json()["tenant"] == "default"


def test_a_request_path_cannot_forge_a_line_of_the_log(engine: llmbudget.Engine, caplog) -> None:
    """uvicorn decodes %0A into scope["path"]: written raw, a path forged a second log line."""
    client = starlette_app(Policy(trust_tenant_header=True))
    forged = "/info%0AINFO llmbudget.middleware request abc POST /admin tenant=globex%1B[2J"
    with caplog.at_level(logging.WARNING, logger="llmbudget.middleware"):
        response = client.get(forged, headers=[("x-tenant-id", "acme"), ("x-tenant-id", "globex")])
    assert response.status_code == 400
    (line,) = [r.getMessage() for r in caplog.records if "refused with 400" in r.getMessage()]
    assert "\n" not in line and "\x1b" not in line and "/info\\nINFO llmbudget" in line


def test_odd_types_where_a_server_or_the_app_names_the_tenant(engine: llmbudget.Engine, caplog) -> None:
    """A raw ASGI server that passes header names or values as str (any header: the middleware raised TypeError
    on a request the app may serve), a WSGI REMOTE_USER as bytes (ignored: a trusted header outranked the user),
    and a tenant callable returning True (the tenant "True")."""
    client = starlette_app(Policy(trust_tenant_header=True))
    response = raw_get(client, [("user-agent", "curl/8"), (b"x-tenant-id", "acme")])  # type: ignore[list-item]
    assert response.status_code == 200 and json.loads(response.content)["tenant"] == "acme"
    flask = flask_client(Policy(trust_tenant_header=True))
    named = flask.get("/info", headers={"x-tenant-id": "acme"}, environ_overrides={"REMOTE_USER": b"glob\xc3\xa9x"})
    assert named.json["tenant"] == "globéx"
    unnamed = flask.get("/info", headers={"x-tenant-id": "acme"}, environ_overrides={"REMOTE_USER": b"\xff"})
    assert problem_of(unnamed)["reason"] == "unnamed_user"
    with caplog.at_level(logging.ERROR, logger="llmbudget.middleware"):
        assert starlette_app(Policy(tenant=lambda scope: True)).get("/info").json()["tenant"] is None
    assert "returned bool" in caplog.text  # logged, counted for the default tenant, as any other odd value
