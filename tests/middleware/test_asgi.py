"""LLMBudgetMiddleware in process: scopes, 402 problems, pass-through, tenants, headers, metrics."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

import llmbudget
from llmbudget.routing.tiers import Routing
from llmbudget.config import ConfigError
from llmbudget.middleware import (
    LLMBudgetMiddleware,
    MetricsPolicy,
    Policy,
    RequestIdFilter,
    current_route,
)
from llmbudget.middleware import Route as PolicyRoute

HI = [{"role": "user", "content": "Say hi"}]
REFUSE_ALL = [llmbudget.Budget("0")]  # any call's worst case overflows: refused before it is sent
NOWHERE = "http://127.0.0.1:9/v1"  # refused calls never connect


def unreachable_client() -> openai.OpenAI:
    return openai.OpenAI(base_url=NOWHERE, api_key="sk-test", max_retries=0)


def ask(client: openai.OpenAI, max_tokens: int = 4) -> Any:
    return client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=max_tokens)


def scope_info() -> dict[str, Any]:
    current = llmbudget.current_scope()
    route = current_route()
    return {
        "tenant": current.tenant if current else None,
        "request_id": current.request_id if current else None,
        "route": route.route if route else None,
    }


def build(policy: Policy | None = None, *, routes: list[Any] | None = None, install: bool = True,
          middleware: list[Middleware] | None = None) -> Starlette:
    client = unreachable_client()

    async def refused(request: Request) -> JSONResponse:
        ask(client)
        return JSONResponse({})

    def refused_sync(request: Request) -> JSONResponse:
        ask(client)
        return JSONResponse({})

    def caught(request: Request) -> JSONResponse:
        try:
            ask(client)
        except openai.APIStatusError as exc:
            refusal = llmbudget.budget_refusal(exc)
            assert refusal is not None
            return JSONResponse({"fallback": refusal.budget})
        return JSONResponse({})

    async def boom(request: Request) -> None:
        raise RuntimeError("an ordinary bug")

    async def missing(request: Request) -> None:
        raise HTTPException(404, "nothing here")

    async def info(request: Request) -> JSONResponse:
        return JSONResponse(scope_info())

    def info_sync(request: Request) -> JSONResponse:
        return JSONResponse(scope_info())

    async def streamed(request: Request) -> StreamingResponse:
        async def body() -> Any:
            yield str(scope_info()["tenant"]).encode()

        return StreamingResponse(body())

    async def late_refusal(request: Request) -> StreamingResponse:
        def body() -> Iterator[bytes]:
            yield b"started "
            ask(client)

        return StreamingResponse(body())

    async def grouped(request: Request) -> None:
        errors: list[Exception] = []
        for _ in range(2):
            try:
                ask(client)
            except openai.APIStatusError as exc:
                errors.append(exc)
        if request.query_params.get("mixed"):
            errors.append(ValueError("not a budget"))
        raise ExceptionGroup("calls failed", errors)

    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json(scope_info())
        await websocket.close()

    app = Starlette(
        routes=[
            Route("/refused", refused, methods=["POST", "GET"]),
            Route("/refused/sync", refused_sync),
            Route("/caught", caught),
            Route("/boom", boom),
            Route("/missing", missing),
            Route("/info", info),
            Route("/admin/info", info),
            Route("/info/sync", info_sync),
            Route("/streamed", streamed),
            Route("/late", late_refusal),
            Route("/grouped", grouped),
            WebSocketRoute("/ws", socket),
            *(routes or []),
        ],
        middleware=[*(middleware or []), Middleware(LLMBudgetMiddleware, policy=policy, install=install)],
    )
    return app


def test_an_uncaught_refusal_becomes_a_402_problem(engine: llmbudget.Engine) -> None:
    client = TestClient(build(Policy(trust_tenant_header=True, budgets=REFUSE_ALL)))
    for path in ("/refused", "/refused/sync"):
        response = client.get(path, headers={"x-tenant-id": "acme", "x-request-id": "req-1"})
        assert response.status_code == 402
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["x-llmbudget-refused"] == "budget"
        assert response.headers["cache-control"] == "no-store"
        assert "retry-after" not in response.headers  # a per-request budget never resets
        problem = response.json()
        assert {k: problem[k] for k in ("type", "title", "status", "budget", "per", "period", "tenant", "limit_usd",
                                        "spent_usd", "remaining_usd", "resets_at", "request_id")} == {
            "type": "urn:llmbudget:budget-exceeded", "title": "LLM budget exceeded", "status": 402,
            "budget": "request", "per": "request", "period": None, "tenant": "acme", "limit_usd": 0.0,
            "spent_usd": 0.0, "remaining_usd": 0.0, "resets_at": None, "request_id": "req-1",
        }
        assert problem["estimated_cost_usd"] > 0
        assert problem["detail"].startswith("The request budget 'request' ($0) has $0 left")


def test_an_uncaught_refusal_is_a_402_when_the_middleware_wraps_the_app_from_outside(
        engine: llmbudget.Engine) -> None:
    # LLMBudgetMiddleware(app): Starlette's own error middleware answered the refusal with a 500 first, and the
    # 402 could no longer be sent ("refused ... after the response started"); a client saw 500s
    client = unreachable_client()

    async def refused(request: Request) -> JSONResponse:
        ask(client)
        return JSONResponse({})

    async def caught_then_failed(request: Request) -> JSONResponse:
        try:
            ask(client)
        except openai.APIStatusError:
            pass
        raise RuntimeError("an ordinary bug after a refusal the app caught")

    async def caught_then_500(request: Request) -> StreamingResponse:
        try:
            ask(client)
        except openai.APIStatusError:
            pass

        async def report() -> Any:
            yield b"no budget left, "
            yield b"try tomorrow"

        return StreamingResponse(report(), status_code=500)

    inner = Starlette(routes=[Route("/refused", refused), Route("/bug", caught_then_failed),
                              Route("/own500", caught_then_500)])
    outside = TestClient(LLMBudgetMiddleware(inner, policy=Policy(budgets=REFUSE_ALL)), raise_server_exceptions=False)
    response = outside.get("/refused")
    assert response.status_code == 402 and response.json()["budget"] == "request"
    assert response.headers["content-type"] == "application/problem+json"
    bug = outside.get("/bug")  # not the budget's to answer: the app's own 500 goes out as it was
    assert bug.status_code == 500 and bug.text == "Internal Server Error"
    own = outside.get("/own500")  # a 500 the app sends on purpose after catching a refusal: its own
    assert own.status_code == 500 and own.text == "no budget left, try tomorrow"
    raising = TestClient(LLMBudgetMiddleware(inner, policy=Policy(budgets=REFUSE_ALL)))
    assert raising.get("/refused").status_code == 402  # answered: the refusal is not raised to the server


def test_a_refusal_the_app_catches_is_the_apps_business(engine: llmbudget.Engine) -> None:
    response = TestClient(build(Policy(budgets=REFUSE_ALL))).get("/caught")
    assert (response.status_code, response.json()) == (200, {"fallback": "request"})


def test_other_exceptions_pass_through_untouched(engine: llmbudget.Engine) -> None:
    client = TestClient(build(Policy(budgets=REFUSE_ALL)))
    with pytest.raises(RuntimeError, match="an ordinary bug"):
        client.get("/boom")
    assert client.get("/missing").status_code == 404
    quiet = TestClient(build(Policy(budgets=REFUSE_ALL)), raise_server_exceptions=False)
    assert quiet.get("/boom").status_code == 500


def test_refusals_in_an_exception_group(engine: llmbudget.Engine) -> None:
    client = TestClient(build(Policy(budgets=REFUSE_ALL)))
    assert client.get("/grouped").status_code == 402
    with pytest.raises(ExceptionGroup):  # another error in the group: not the budget's to answer
        client.get("/grouped?mixed=1")


def test_a_refusal_after_the_response_started_is_raised_and_logged(engine: llmbudget.Engine, caplog) -> None:
    client = TestClient(build(Policy(budgets=REFUSE_ALL)))
    with caplog.at_level(logging.WARNING, "llmbudget.middleware"), pytest.raises(openai.APIStatusError):
        client.get("/late")
    assert "after the response started" in caplog.text


def test_the_scope_reaches_every_kind_of_endpoint_and_ends_with_the_request(engine: llmbudget.Engine) -> None:
    seen: list[Any] = []

    async def with_task(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok", background=BackgroundTask(lambda: seen.append(scope_info())))

    client = TestClient(build(Policy(trust_tenant_header=True), routes=[Route("/task", with_task)]))
    headers = {"x-tenant-id": "acme", "x-request-id": "r-1"}
    assert client.get("/info", headers=headers).json() == {"tenant": "acme", "request_id": "r-1", "route": None}
    assert client.get("/info/sync", headers=headers).json()["tenant"] == "acme"
    assert client.get("/streamed", headers=headers).text == "acme"
    client.get("/task", headers=headers)
    assert seen == [{"tenant": "acme", "request_id": "r-1", "route": None}]
    with client.websocket_connect("/ws", headers=headers) as socket:
        assert socket.receive_json()["tenant"] == "acme"
    # A request without a tenant sees none; nothing is left set in this thread.
    assert client.get("/info/sync").json()["tenant"] is None
    assert llmbudget.current_scope() is None and current_route() is None


def test_request_ids_are_read_or_generated(engine: llmbudget.Engine) -> None:
    client = TestClient(build(Policy()))
    assert client.get("/info", headers={"x-request-id": "abc.DEF-1:2"}).json()["request_id"] == "abc.DEF-1:2"
    for bad in ("has space", "x" * 200, ""):
        generated = client.get("/info", headers={"x-request-id": bad}).json()["request_id"]
        assert generated != bad and len(generated) == 32
    custom = TestClient(build(Policy(request_id_header="x-trace")))
    assert custom.get("/info", headers={"x-trace": "t-1"}).json()["request_id"] == "t-1"


class _Auth(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        user = conn.headers.get("x-user")
        return (AuthCredentials(["authenticated"]), SimpleUser(user)) if user else None


def test_tenants_from_callable_authenticated_user_or_trusted_header(engine: llmbudget.Engine) -> None:
    # More on who may name the tenant, and on refusals, in test_tenants.py.
    auth = [Middleware(AuthenticationMiddleware, backend=_Auth())]
    client = TestClient(build(Policy(trust_tenant_header=True), middleware=auth))
    assert client.get("/info", headers={"x-tenant-id": " acme "}).json()["tenant"] == "acme"
    assert client.get("/info", headers={"x-user": "alice"}).json()["tenant"] == "alice"
    assert client.get("/info", headers={"x-tenant-id": "acme", "x-user": "alice"}).json()["tenant"] == "alice"
    assert client.get("/info", headers={"x-tenant-id": "x" * 500}).status_code == 400
    untrusted = TestClient(build(Policy(), middleware=auth))
    assert untrusted.get("/info", headers={"x-tenant-id": "acme"}).json()["tenant"] is None
    no_header = TestClient(build(Policy(tenant_header=None), middleware=auth))
    assert no_header.get("/info", headers={"x-tenant-id": "acme"}).json()["tenant"] is None
    other_header = TestClient(build(Policy(tenant_header="X-Org", trust_tenant_header=True)))
    assert other_header.get("/info", headers={"x-org": "org-7"}).json()["tenant"] == "org-7"

    def from_path(scope: Any) -> str | None:
        return scope["query_string"].decode().partition("org=")[2] or None

    by_callable = TestClient(build(Policy(tenant=from_path)))
    assert by_callable.get("/info?org=blue", headers={"x-tenant-id": "acme"}).json()["tenant"] == "blue"

    def broken(scope: Any) -> str:
        raise KeyError("no org")

    assert TestClient(build(Policy(tenant=broken))).get("/info").json()["tenant"] is None


def test_routes_turn_the_middleware_off_or_change_budgets(engine: llmbudget.Engine) -> None:
    policy = Policy(
        budgets=REFUSE_ALL,
        routes=(PolicyRoute("/admin/*", enabled=False), PolicyRoute("/caught", budgets=[])),
    )
    client = TestClient(build(policy))
    disabled = client.get("/admin/info", headers={"x-tenant-id": "acme"}).json()
    assert (disabled["tenant"], disabled["route"]) == (None, None)  # no tenant read, no route's settings
    assert client.get("/info").json()["route"] is None
    # No budget on /caught: the call is sent (and fails to connect: nobody listens there).
    with pytest.raises(openai.APIConnectionError):
        client.get("/caught")


def test_routes_set_the_scopes_cache_and_routing(engine: llmbudget.Engine) -> None:
    async def settings(request: Request) -> JSONResponse:
        current = llmbudget.current_scope()
        assert current is not None
        return JSONResponse({"cache": current.cache, "routing": current.routing})

    policy = Policy(routes=[PolicyRoute("/chat/fast", cache=False, routing="small"),
                            PolicyRoute("/chat/*", routing=False)])
    engine.routing = llmbudget.Routing(tiers={"smal": "gpt-4.1-nano", "large": None}, weak="smal")
    with pytest.raises(ConfigError, match=r"routes\[0\] \('/chat/fast'\): routing = 'small' names no tier; "
                                          r"the tiers are \['large', 'smal'\]"):
        LLMBudgetMiddleware(Starlette(), policy=policy, install=False)  # at start-up: it served requests unrouted
    engine.routing = llmbudget.Routing(tiers={"small": "gpt-4.1-nano", "large": None})
    client = TestClient(build(policy, routes=[Route("/chat/fast", settings), Route("/chat/plain", settings),
                                              Route("/other", settings)]))
    assert client.get("/chat/fast").json() == {"cache": False, "routing": "small"}
    assert client.get("/chat/plain").json() == {"cache": None, "routing": False}
    assert client.get("/other").json() == {"cache": None, "routing": None}


def test_a_middleware_added_twice_serves_each_request_once(engine: llmbudget.Engine, llm_server: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    # every x-llmbudget-* header came twice, and one request logged two lines under two request ids
    client_llm = openai.OpenAI(base_url=llm_server, api_key="sk-test")

    async def chat(request: Request) -> JSONResponse:
        ask(client_llm, 3)
        return JSONResponse({})

    app = build(Policy(headers=True), routes=[Route("/chat", chat)],
                middleware=[Middleware(LLMBudgetMiddleware, policy=Policy(headers=True))])
    with caplog.at_level("INFO", logger="llmbudget.middleware"):
        answer = TestClient(app).get("/chat")
    assert answer.headers.get_list("x-llmbudget-calls") == ["1"]
    assert sum("passes requests through" in r.getMessage() for r in caplog.records) == 1
    assert len({r.getMessage().split()[0] for r in caplog.records if "calls" in r.getMessage()}) <= 1


def test_spend_headers_are_opt_in(engine: llmbudget.Engine, llm_server: str) -> None:
    client_llm = openai.OpenAI(base_url=llm_server, api_key="sk-test")

    async def chat(request: Request) -> JSONResponse:
        answer = ask(client_llm, 3)
        return JSONResponse({"prompt": answer.usage.prompt_tokens, "completion": answer.usage.completion_tokens})

    routes = [Route("/chat", chat)]
    quiet = TestClient(build(Policy(), routes=routes)).get("/chat")
    assert not [h for h in quiet.headers if h.startswith("x-llmbudget") or h == "x-request-id"]
    shown = TestClient(build(Policy(headers=True), routes=routes)).get("/chat", headers={"x-request-id": "h-1"})
    usage = shown.json()
    assert shown.headers["x-request-id"] == "h-1"
    assert shown.headers["x-llmbudget-calls"] == "1"
    assert shown.headers["x-llmbudget-input-tokens"] == str(usage["prompt"])
    assert shown.headers["x-llmbudget-output-tokens"] == str(usage["completion"])
    cost = (usage["prompt"] * Decimal("0.15") + usage["completion"] * Decimal("0.6")) / 1_000_000
    assert Decimal(shown.headers["x-llmbudget-cost-usd"]) == cost
    assert shown.headers["x-llmbudget-cache-hits"] == shown.headers["x-llmbudget-capped"] == "0"
    assert shown.headers["x-llmbudget-saved-usd"] == shown.headers["x-llmbudget-routing-saved-usd"] == "0"


def test_the_routing_saving_header(engine: llmbudget.Engine, llm_server: str) -> None:
    engine.routing = Routing(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=1.0)
    client_llm = openai.OpenAI(base_url=llm_server, api_key="sk-test")

    async def chat(request: Request) -> JSONResponse:
        answer = client_llm.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}],
                                                    max_tokens=3)
        return JSONResponse({"prompt": answer.usage.prompt_tokens, "completion": answer.usage.completion_tokens})

    shown = TestClient(build(Policy(headers=True), routes=[Route("/chat", chat)])).get("/chat")
    usage = shown.json()
    gpt4o = (usage["prompt"] * Decimal("2.5") + usage["completion"] * Decimal("10")) / 1_000_000
    nano = (usage["prompt"] * Decimal("0.1") + usage["completion"] * Decimal("0.4")) / 1_000_000
    assert shown.headers["x-llmbudget-routed"] == "1"
    assert Decimal(shown.headers["x-llmbudget-routing-saved-usd"]) == gpt4o - nano


def test_paths_never_routed_are_the_apps_own(engine: llmbudget.Engine, llm_server: str) -> None:
    # routing's never globs were matched against the API's path (/v1/chat/completions): /admin/* was routed
    engine.routing = Routing(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=1.0, never=["/admin/*"])
    client_llm = openai.OpenAI(base_url=llm_server, api_key="sk-test")

    async def chat(request: Request) -> JSONResponse:
        answer = client_llm.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}],
                                                    max_tokens=3)
        return JSONResponse({"model": answer.model})

    records: list = []
    engine.add_observer(records.append)
    client = TestClient(build(Policy(headers=True), routes=[Route("/admin/report", chat), Route("/chat", chat)]))
    assert client.get("/admin/report").headers["x-llmbudget-routed"] == "0"
    assert client.get("/chat").headers["x-llmbudget-routed"] == "1"
    assert [r.routed for r in records] == [False, True] and records[0].routing["reason"] == "path is never routed"


def test_metrics_route(engine: llmbudget.Engine) -> None:
    policy = Policy(trust_tenant_header=True, budgets=REFUSE_ALL, metrics=MetricsPolicy(path="/metrics"))
    client = TestClient(build(policy))
    client.get("/refused", headers={"x-tenant-id": "acme"})
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert 'llmbudget_refusals_total{budget="request",tenant="acme"} 1.0' in response.text
    assert client.post("/metrics").status_code == 405
    assert TestClient(build(Policy(metrics=True))).get("/metrics").status_code == 404  # no route unless asked


def test_install_and_the_policys_engine(engine: llmbudget.Engine) -> None:
    llmbudget.uninstall()
    TestClient(build(Policy(), install=False)).get("/info")
    assert not llmbudget.installed()
    own = llmbudget.Engine(default_tenant="nobody")
    TestClient(build(Policy(engine=own))).get("/info")
    assert llmbudget.installed() and llmbudget.get_engine() is own


def test_start_up_checks(engine: llmbudget.Engine, caplog) -> None:
    llmbudget.set_engine(llmbudget.Engine(budgets=[llmbudget.Budget(1, per="tenant", period="day")]))
    with pytest.raises(ConfigError, match="share one counter"):
        LLMBudgetMiddleware(build(), policy=Policy(budgets=[llmbudget.Budget(2, per="tenant", period="day")]))
    llmbudget.set_engine(engine)
    with pytest.raises(TypeError, match="policy must be"):
        LLMBudgetMiddleware(build(), policy={"budgets": []})  # type: ignore[arg-type]


def test_request_id_filter_and_request_logs(engine: llmbudget.Engine, caplog) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(RequestIdFilter())
    app_log = logging.getLogger("tests.app")
    app_log.addHandler(handler)
    app_log.setLevel(logging.INFO)

    async def logs(request: Request) -> PlainTextResponse:
        app_log.info("inside")
        return PlainTextResponse("ok")

    try:
        TestClient(build(Policy(trust_tenant_header=True), routes=[Route("/logs", logs)])).get(
            "/logs", headers={"x-request-id": "log-1", "x-tenant-id": "acme"})
        app_log.info("outside")
    finally:
        app_log.removeHandler(handler)
    assert [(r.getMessage(), r.request_id, r.tenant) for r in records] == [  # type: ignore[attr-defined]
        ("inside", "log-1", "acme"), ("outside", "-", "-")]


def test_lifespan_and_other_scope_types_pass_through(engine: llmbudget.Engine) -> None:
    events: list[str] = []

    async def lifespan(app: Starlette) -> Any:
        events.append("startup")
        yield
        events.append("shutdown")

    app = Starlette(routes=[Route("/info", lambda r: JSONResponse(scope_info()))],
                    lifespan=asynccontextmanager(lifespan),
                    middleware=[Middleware(LLMBudgetMiddleware, policy=Policy(trust_tenant_header=True))])
    with TestClient(app) as client:
        assert client.get("/info", headers={"x-tenant-id": "a"}).json()["tenant"] == "a"
    assert events == ["startup", "shutdown"]


def test_routes_and_metrics_are_matched_within_the_app_under_a_root_path(engine: llmbudget.Engine) -> None:
    """Under uvicorn's --root-path (or a Mount) ASGI puts the root path in ``path`` too: a route ("/refused")
    never matched, so its budget did not apply, and the metrics path answered 404."""
    policy = Policy(budgets=[], routes=(PolicyRoute("/refused", budgets=REFUSE_ALL),),
                    metrics=MetricsPolicy(path="/metrics"))
    client = TestClient(build(policy), root_path="/api")
    assert client.get("/api/refused").status_code == 402
    assert client.get("/api/metrics").status_code == 200
    assert client.get("/api/info").json()["route"] is None


def test_the_metrics_head_says_the_length_of_its_get(engine: llmbudget.Engine) -> None:
    client = TestClient(build(Policy(metrics=MetricsPolicy(path="/metrics"))))
    length = len(client.get("/metrics").content)
    assert length > 0 and client.head("/metrics").headers["content-length"] == str(length)


def test_spend_headers_leave_the_apps_own_request_id_alone(engine: llmbudget.Engine) -> None:
    async def own_id(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok", headers={"x-request-id": "app-1"})

    app = Starlette(routes=[Route("/own", own_id)],
                    middleware=[Middleware(LLMBudgetMiddleware, policy=Policy(headers=True))])
    response = TestClient(app).get("/own")
    assert response.headers.get_list("x-request-id") == ["app-1"] and response.headers["x-llmbudget-calls"] == "0"


@pytest.mark.parametrize("returned", [b"acme", "acme"])
def test_a_tenant_callable_may_return_bytes(engine: llmbudget.Engine, returned: Any) -> None:
    client = TestClient(build(Policy(tenant=lambda scope: returned)))
    assert client.get("/info").json()["tenant"] == "acme"


@pytest.mark.parametrize(("returned", "tenant"), [(42, "42"), (0, "0"), (True, None), (3.0, None)])
def test_a_tenant_callable_may_return_an_int_id_but_not_a_bool_or_float(engine: llmbudget.Engine, returned: Any,
                                                                       tenant: str | None) -> None:
    """README says so: a user's id names the tenant by its digits; True and 3.0 are no names (the default)."""
    client = TestClient(build(Policy(tenant=lambda scope: returned)))
    assert client.get("/info").json()["tenant"] == tenant


def test_a_tenant_callable_returning_bytes_that_are_not_utf8_is_refused_not_the_default_tenant(
        engine: llmbudget.Engine) -> None:
    client = TestClient(build(Policy(tenant=lambda scope: b"\xffacme")))
    response = client.get("/info")
    assert response.status_code == 400 and response.headers["x-llmbudget-refused"] == "tenant"
    assert response.json()["reason"] == "invalid_utf8" and response.json()["source"] == "callable"


def test_an_async_tenant_callable_is_refused_at_start_up() -> None:
    """It was never awaited: the coroutine's repr became the tenant (shared by unrelated requests)."""
    async def tenant(scope: Any) -> str:
        return "acme"

    with pytest.raises(ConfigError, match="not async"):
        Policy(tenant=tenant)


def test_a_tenant_callable_returning_something_else_counts_for_the_default_tenant(
        engine: llmbudget.Engine, caplog: pytest.LogCaptureFixture) -> None:
    client = TestClient(build(Policy(tenant=lambda scope: object())))
    assert client.get("/info").json()["tenant"] is None
    assert "expected the tenant's name" in caplog.text


def test_a_user_whose_is_authenticated_is_a_method_is_read_by_calling_it(engine: llmbudget.Engine) -> None:
    """The method object was true: every anonymous request was refused (400 unnamed_user)."""
    class Anonymous:
        def is_authenticated(self) -> bool:
            return False

    class Named:
        identity = "globex"

        def is_authenticated(self) -> bool:
            return True

    for user, tenant in ((Anonymous(), None), (Named(), "globex")):
        class Auth(AuthenticationBackend):
            async def authenticate(self, conn: HTTPConnection, user: Any = user) -> Any:
                return AuthCredentials(["authenticated"]), user

        client = TestClient(build(Policy(), middleware=[Middleware(AuthenticationMiddleware, backend=Auth())]))
        response = client.get("/info")
        assert response.status_code == 200 and response.json()["tenant"] == tenant


def test_spend_headers_are_added_beside_header_names_an_app_sends_as_str(engine: llmbudget.Engine) -> None:
    """ASGI wants bytes, but some apps send str names (and some servers take them): reading them must not fail
    the request."""
    import asyncio

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [("content-type", "text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/x", "raw_path": b"/x", "query_string": b"", "headers": [],
             "client": ("127.0.0.1", 1), "server": ("test", 80), "scheme": "http", "http_version": "1.1",
             "asgi": {"version": "3.0"}, "root_path": ""}
    asyncio.run(LLMBudgetMiddleware(app, policy=Policy(headers=True), install=False)(scope, receive, send))
    names = [name for name, _ in sent[0]["headers"]]
    assert sent[0]["status"] == 200 and names[0] == "content-type" and b"x-llmbudget-calls" in names


def test_routes_and_routings_never_globs_read_repeated_slashes_both_ways(engine: llmbudget.Engine) -> None:
    """werkzeug serves //secret/chat as /secret/chat (the route /secret/*'s budgets were skipped, and routing's
    never globs sent it to the small tier); Starlette and Django serve a path as it came (a client's //admin/x
    reached the app's catch-all route with no budget, read as the disabled route /admin/*)."""
    from llmbudget.calls import Call
    from llmbudget.scope import app_path

    tiny, wide = llmbudget.Budget("0.0000001", per="request"), llmbudget.Budget("1", per="request")
    policy = Policy(budgets=[tiny], routes=[PolicyRoute("/admin/*", enabled=False),
                                            PolicyRoute("/secret/*", budgets=[wide]), PolicyRoute("/open/*", budgets=[])])
    assert not policy.for_path("/admin/x").enabled
    assert policy.for_path("//admin/x").enabled and policy.for_path("//admin/x").budgets == (tiny,)
    assert policy.for_path("//secret/chat").route == "/secret/*"  # werkzeug's reading: its budgets
    assert set(policy.for_path("//secret/chat").budgets) == {tiny, wide}  # and the path's as it came
    assert policy.for_path("//open/chat").budgets == (tiny,)
    assert policy.for_path("/secret//chat").budgets == (wide,)  # both readings pick /secret/*

    routing = Routing(tiers={"small": "gpt-4.1-nano", "large": None}, threshold=1.0, never=["/secret/*", "//raw/*"])
    call = Call(endpoint="chat.completions", model="gpt-4o", stream=False, base_url="https://api.openai.com/v1",
                body={"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]})
    reasons = [routing.decide(call, path=path).reason for path in ("//secret/chat", "//raw/x", "/chat")]
    assert reasons[:2] == ["path is never routed"] * 2 and reasons[2] != "path is never routed"

    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(app_path.get())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    TestClient(LLMBudgetMiddleware(inner, policy=Policy(), install=False)).get("/secret//chat")
    assert seen == ["/secret//chat"]  # as it came: routing's never globs read it both ways


def test_a_catch_all_route_serving_a_disabled_routes_path_with_repeated_slashes_keeps_its_budgets(
        engine: llmbudget.Engine, llm_server: str) -> None:
    llm = openai.OpenAI(base_url=llm_server, api_key="sk-test", max_retries=0)

    async def admin(request: Request) -> PlainTextResponse:
        return PlainTextResponse("admin page")

    def anything(request: Request) -> PlainTextResponse:
        llm.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
        return PlainTextResponse("served")

    policy = Policy(budgets=[llmbudget.Budget("0.0000001", per="request")], routes=[PolicyRoute("/admin/*", enabled=False)])
    client = TestClient(Starlette(routes=[Route("/admin/{x}", admin), Route("/{p:path}", anything)],
                                  middleware=[Middleware(LLMBudgetMiddleware, policy=policy)]))
    assert client.get("/admin/x").text == "admin page"
    assert client.get("/chat").status_code == 402
    assert client.get("http://testserver//admin/x").status_code == 402  # the catch-all served it, unbudgeted


def test_an_apps_headers_given_as_a_one_shot_iterable_are_kept(engine: llmbudget.Engine) -> None:
    """ASGI takes any iterable of headers, a generator too: read twice for the spend headers, the app's own were
    lost (its content-type, its cookie) with headers=True."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = ((k, v) for k, v in [(b"content-type", b"text/plain"), (b"set-cookie", b"session=abc")])
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"hi"})

    client = TestClient(LLMBudgetMiddleware(app, policy=Policy(headers=True)))
    response = client.get("/")
    assert response.text == "hi" and response.headers["set-cookie"] == "session=abc"
    assert response.headers["content-type"] == "text/plain" and response.headers["x-llmbudget-calls"] == "0"
