"""LLMBudgetWSGIMiddleware in process: scope for the whole body, 402s (Flask too), pass-through."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from flask import Flask, Response
from werkzeug.test import Client

import llmbudget
from llmbudget.middleware import LLMBudgetWSGIMiddleware, MetricsPolicy, Policy, current_route

HI = [{"role": "user", "content": "Say hi"}]
REFUSE_ALL = [llmbudget.Budget("0")]


def ask() -> None:
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=4)


def tenant_now() -> str:
    current = llmbudget.current_scope()
    return str(current.tenant if current else None)


class Body:
    """A response iterable that reports the scope it is iterated and closed in."""

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def __iter__(self) -> Iterator[bytes]:
        self.seen.append("iter " + tenant_now())
        yield tenant_now().encode()
        self.seen.append("next " + tenant_now())
        yield b"!"

    def close(self) -> None:
        self.seen.append("close " + tenant_now())


def test_the_scope_lasts_until_close_and_never_leaks_into_the_thread(engine: llmbudget.Engine) -> None:
    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Body:
        start_response("200 OK", [("content-type", "text/plain")])
        return Body(seen)

    wrapped = LLMBudgetWSGIMiddleware(app, policy=Policy(trust_tenant_header=True))
    body = wrapped({"PATH_INFO": "/", "REQUEST_METHOD": "GET", "HTTP_X_TENANT_ID": "acme"}, lambda *a: None)
    assert llmbudget.current_scope() is None  # set in the request's own context only
    assert list(body) == [b"acme", b"!"]
    body.close()  # type: ignore[attr-defined]
    body.close()  # type: ignore[attr-defined]  # idempotent
    assert seen == ["iter acme", "next acme", "close acme"]
    assert llmbudget.current_scope() is None and current_route() is None


def test_requests_on_one_thread_never_see_each_others_scope(engine: llmbudget.Engine) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [])
        return [tenant_now().encode()]

    client = Client(LLMBudgetWSGIMiddleware(app, policy=Policy(trust_tenant_header=True)))
    results: list[bytes] = []

    def serve_many() -> None:  # one thread, many requests, half of them without a tenant
        for i in range(20):
            headers = {"x-tenant-id": f"t{i}"} if i % 2 == 0 else {}
            results.append(client.get("/", headers=headers).get_data())

    worker = threading.Thread(target=serve_many)
    worker.start()
    worker.join()
    assert results == [f"t{i}".encode() if i % 2 == 0 else b"None" for i in range(20)]


def test_plain_wsgi_refusals_become_402(engine: llmbudget.Engine) -> None:
    def before_start(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        ask()
        return []

    def after_start(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [])
        ask()
        return []

    def generator_before_start(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        # PEP 3333 allows it: the app runs (and calls start_response) when the server asks for the first chunk;
        # a refusal there was a 500
        ask()
        start_response("200 OK", [])
        yield b"never"

    def generator_after_start(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        ask()
        yield b"never"

    for app in (before_start, after_start, generator_before_start, generator_after_start):
        policy = Policy(trust_tenant_header=True, budgets=REFUSE_ALL)
        status, headers, body = call(LLMBudgetWSGIMiddleware(app, policy=policy),
                                     HTTP_X_TENANT_ID="acme", HTTP_X_REQUEST_ID="w-1")
        problem = json.loads(body)
        assert status == "402 Payment Required"
        assert headers["content-type"] == "application/problem+json"
        assert (problem["budget"], problem["tenant"], problem["request_id"]) == ("request", "acme", "w-1")
        assert int(headers["content-length"]) == len(body)


def call(app: Any, **environ: Any) -> tuple[str, dict[str, str], bytes]:
    """Call a WSGI app as PEP 3333 says a server does (werkzeug's test client re-raises any exc_info)."""
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
        if started and exc_info is None:
            raise AssertionError("start_response called twice without exc_info")
        started[:] = [status, {k.lower(): v for k, v in headers}]
        return lambda data: None

    result = app({"PATH_INFO": "/", "REQUEST_METHOD": "GET", **environ}, start_response)
    try:
        body = b"".join(result)
    finally:
        result.close()
    return started[0], started[1], body


def test_a_refusal_while_the_body_is_iterated_is_raised_and_logged(engine: llmbudget.Engine, caplog) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"started"
        ask()

    body = LLMBudgetWSGIMiddleware(app, policy=Policy(budgets=REFUSE_ALL))(
        {"PATH_INFO": "/", "REQUEST_METHOD": "GET"}, lambda *a: None)
    iterator = iter(body)
    assert next(iterator) == b"started"
    with caplog.at_level(logging.WARNING, "llmbudget.middleware"), pytest.raises(openai.APIStatusError):
        next(iterator)
    body.close()  # type: ignore[attr-defined]
    assert "after the response started" in caplog.text


def flask_app(policy: Policy) -> Flask:
    app = Flask("llmbudget-test")

    @app.get("/refused")
    def refused() -> str:
        ask()
        return "never"

    @app.get("/caught")
    def caught() -> dict[str, Any]:
        try:
            ask()
        except openai.APIStatusError as exc:
            refusal = llmbudget.budget_refusal(exc)
            assert refusal is not None
            return {"fallback": refusal.budget}
        return {}

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("an ordinary bug")

    @app.get("/stream")
    def stream() -> Response:
        def body() -> Iterator[str]:
            yield tenant_now()
            yield "|" + tenant_now()

        return Response(body())

    app.wsgi_app = LLMBudgetWSGIMiddleware(app.wsgi_app, policy=policy)  # type: ignore[method-assign]
    return app


@pytest.mark.parametrize("propagate", [False, True])
def test_flask_uncaught_refusals_become_402_whether_or_not_flask_propagates(
    engine: llmbudget.Engine, propagate: bool
) -> None:
    app = flask_app(Policy(trust_tenant_header=True, budgets=REFUSE_ALL))
    app.config["PROPAGATE_EXCEPTIONS"] = propagate
    client = app.test_client()
    response = client.get("/refused", headers={"x-tenant-id": "acme"})
    assert response.status_code == 402 and response.json["tenant"] == "acme"
    assert client.get("/caught").json == {"fallback": "request"}
    if propagate:
        with pytest.raises(RuntimeError, match="an ordinary bug"):
            client.get("/boom")
    else:
        assert client.get("/boom").status_code == 500  # Flask's own 500, untouched


def test_flask_streams_tenants_headers_and_metrics(engine: llmbudget.Engine) -> None:
    def from_environ(environ: Any) -> str | None:
        return environ.get("HTTP_X_ORG")

    policy = Policy(tenant=from_environ, headers=True, metrics=MetricsPolicy(path="/metrics"), budgets=REFUSE_ALL)
    client = flask_app(policy).test_client()
    streamed = client.get("/stream", headers={"x-org": "blue", "x-request-id": "s-1"})
    assert streamed.get_data() == b"blue|blue"
    assert streamed.headers["x-request-id"] == "s-1" and streamed.headers["x-llmbudget-calls"] == "0"
    client.get("/refused", headers={"x-org": "blue"})
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'llmbudget_refusals_total{budget="request",tenant="blue"} 1.0' in metrics.get_data(as_text=True)
    assert client.post("/metrics").status_code == 405


def test_remote_user_outranks_the_tenant_header(engine: llmbudget.Engine) -> None:
    # More on who may name the tenant, and on refusals, in test_tenants.py.
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [])
        return [tenant_now().encode()]

    client = Client(LLMBudgetWSGIMiddleware(app, policy=Policy(trust_tenant_header=True)))
    assert client.get("/", environ_overrides={"REMOTE_USER": "alice"}).get_data() == b"alice"
    assert client.get("/", headers={"x-tenant-id": "acme"},
                      environ_overrides={"REMOTE_USER": "alice"}).get_data() == b"alice"
    assert client.get("/", headers={"x-tenant-id": "acme"}).get_data() == b"acme"
    untrusted = Client(LLMBudgetWSGIMiddleware(app, policy=Policy()))
    assert untrusted.get("/", headers={"x-tenant-id": "acme"}).get_data() == b"None"
    # a server sets REMOTE_USER from bytes, as latin-1 (PEP 3333): read as UTF-8, as a header is ("josÃ©" before)
    for remote_user in ("josé".encode().decode("latin-1"), "josé"):  # a server's; a WSGI middleware's own str
        named = client.get("/", environ_overrides={"REMOTE_USER": remote_user}).get_data().decode()
        assert named == "josé"


def test_disabled_routes_and_install(engine: llmbudget.Engine) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [])
        return [tenant_now().encode()]

    llmbudget.uninstall()
    policy = Policy(trust_tenant_header=True, routes=[llmbudget.config.Route("/health*", enabled=False)])

    def settings(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [])
        current = llmbudget.current_scope()
        assert current is not None
        return [repr((current.cache, current.routing)).encode()]

    routes = [llmbudget.config.Route("/*", cache=False, routing="large")]
    engine.routing = llmbudget.Routing(tiers={"small": "gpt-4.1-nano", "large": None})
    routed = Client(LLMBudgetWSGIMiddleware(settings, policy=Policy(routes=routes), install=False))
    assert routed.get("/x").get_data() == b"(False, 'large')"
    client = Client(LLMBudgetWSGIMiddleware(app, policy=policy, install=False))
    assert not llmbudget.installed()
    assert client.get("/healthz", headers={"x-tenant-id": "acme"}).get_data() == b"None"
    assert client.get("/other", headers={"x-tenant-id": "acme"}).get_data() == b"acme"
    LLMBudgetWSGIMiddleware(app)
    assert llmbudget.installed()


def test_flask_logs_a_refusal_as_one_warning_not_an_error_traceback(
    engine: llmbudget.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    app = flask_app(Policy(trust_tenant_header=True, budgets=REFUSE_ALL))
    client = app.test_client()
    with caplog.at_level(logging.INFO):
        assert client.get("/refused", headers={"x-tenant-id": "acme"}).status_code == 402
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "refused an LLM call" in r.getMessage()]
    assert len(warnings) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert client.get("/boom").status_code == 500
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)  # a real bug still logs its traceback


def test_a_thread_pool_takes_the_requests_scope_only_when_handed_it(engine: llmbudget.Engine) -> None:
    """README's recipe: a ThreadPoolExecutor does not copy context variables, so its calls ran outside the
    request's scope (default tenant, no request budget); copy_context().run in the request's thread hands it over."""
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with ThreadPoolExecutor(2) as pool:
            bare = pool.submit(tenant_now).result()
            handed = pool.submit(contextvars.copy_context().run, tenant_now).result()
            refused = pool.submit(contextvars.copy_context().run, ask).exception()
        start_response("200 OK", [])
        return [f"{bare} {handed} {type(refused).__name__}".encode()]

    status, _, body = call(LLMBudgetWSGIMiddleware(app, policy=Policy(trust_tenant_header=True,
                                                                      budgets=REFUSE_ALL)), HTTP_X_TENANT_ID="acme")
    assert status == "200 OK" and body == b"None acme APIStatusError"


def test_a_wsgi_middleware_added_twice_serves_each_request_once(engine: llmbudget.Engine) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [])
        return [tenant_now().encode()]

    inner = LLMBudgetWSGIMiddleware(app, policy=Policy(headers=True, trust_tenant_header=True), install=False)
    outer = LLMBudgetWSGIMiddleware(inner, policy=Policy(headers=True, trust_tenant_header=True), install=False)
    answer = Client(outer).get("/x", headers={"x-tenant-id": "acme"})
    assert answer.get_data() == b"acme" and answer.headers.getlist("x-llmbudget-calls") == ["0"]


def test_a_disabled_routes_file_wrapper_reaches_the_server_as_it_made_it(engine: llmbudget.Engine) -> None:
    """A server may send a file wrapper's file with sendfile only when it gets back the very object its
    ``wsgi.file_wrapper`` made (uWSGI's is a function, not a class): a disabled route returns it untouched."""
    import io

    made: list[Any] = []

    def file_wrapper(handle: Any, size: int = 8192) -> Any:  # uWSGI's is a function
        made.append(iter(lambda: handle.read(size), b""))
        return made[-1]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"static bytes"))

    policy = Policy(routes=[llmbudget.config.Route("/static/*", enabled=False)])
    middleware = LLMBudgetWSGIMiddleware(app, policy=policy, install=False)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/static/a.css", "wsgi.file_wrapper": file_wrapper}
    result = middleware(environ, lambda status, headers, exc_info=None: None)
    assert made and result is made[0] and b"".join(result) == b"static bytes"
    # the server's own wrapper again, which servers check the answer against (gunicorn: isinstance, a 500 else)
    assert environ["wsgi.file_wrapper"] is file_wrapper


def test_route_globs_match_a_wsgi_path_as_the_utf8_text_it_carries(engine: llmbudget.Engine) -> None:
    """PEP 3333's PATH_INFO is the path's UTF-8 bytes decoded as latin-1 (/rÃ©sumÃ©/x): a route naming /résumé/*
    never matched under WSGI, and its budgets were skipped (ASGI gives the text)."""
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        route = current_route()
        start_response("200 OK", [])
        return [str(None if route is None else route.route).encode()]

    client = Client(LLMBudgetWSGIMiddleware(app, policy=Policy(routes=[llmbudget.config.Route("/résumé/*")]),
                                            install=False))
    assert client.get("/résumé/x").get_data() == "/résumé/*".encode()
    assert client.get("/other").get_data() == b"None"
