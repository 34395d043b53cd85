"""LLMBudgetWSGIMiddleware around a Django WSGI application: spend per tenant, 402s, Django's own 500s."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from werkzeug.test import Client

import llmbudget
from llmbudget.middleware import LLMBudgetWSGIMiddleware, Policy

django = pytest.importorskip("django")  # in the test extra; importorskip only for the openai-2 environment
from django.conf import settings  # noqa: E402
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

BASE_URL = {"url": "http://127.0.0.1:9/v1"}  # the view's server; a test points it at the local LLM server


def client() -> openai.OpenAI:
    return openai.OpenAI(base_url=BASE_URL["url"], api_key="sk-test", max_retries=0)


def answer(request: HttpRequest) -> JsonResponse:
    reply = client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8, temperature=0
    )
    current = llmbudget.current_scope()
    return JsonResponse({"answer": reply.choices[0].message.content, "tenant": current and current.tenant})


def boom(request: HttpRequest) -> JsonResponse:
    raise RuntimeError("an ordinary bug")


def streamed(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[str]:
        yield "tenant "
        current = llmbudget.current_scope()  # read while Django streams the body, after the view returned
        yield str(current and current.tenant)

    return StreamingHttpResponse(chunks())


def streamed_async(request: HttpRequest) -> StreamingHttpResponse:
    async def chunks() -> AsyncIterator[str]:
        yield "tenant "
        current = llmbudget.current_scope()  # read while Django streams the body, after the view returned
        reply = await openai.AsyncOpenAI(base_url=BASE_URL["url"], api_key="sk-test", max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8, temperature=0)
        yield f"{current and current.tenant} {bool(reply.choices[0].message.content)}"

    return StreamingHttpResponse(chunks())


def streamed_cleanup(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[str | bytes]:
        try:
            yield "part 1\n"
            for _ in range(3):  # what no compression shrinks: each part goes out as it comes
                yield os.urandom(1 << 16)
        finally:  # the app's cleanup, also when the client went before the end: three calls
            for _ in range(3):
                try:
                    client().chat.completions.create(model="gpt-4o-mini", max_tokens=8, temperature=0,
                                                     messages=[{"role": "user", "content": "Say hi"}])
                except openai.APIStatusError:
                    pass

    return StreamingHttpResponse(chunks())


def streamed_tagged(request: HttpRequest) -> StreamingHttpResponse:
    response = streamed_cleanup(request)
    response["ETag"] = '"v1"'
    return response


urlpatterns = [path("answer", answer), path("boom", boom), path("streamed", streamed),
               path("streamed_async", streamed_async), path("streamed_cleanup", streamed_cleanup),
               path("streamed_tagged", streamed_tagged)]


def django_app(policy: Policy) -> Client:
    """A Django project configured in this process (once), its WSGI application wrapped as ``wsgi.py`` would."""
    if not settings.configured:
        settings.configure(
            DEBUG=False, SECRET_KEY="llmbudget-test", ALLOWED_HOSTS=["*"], ROOT_URLCONF=sys.modules[__name__],
            MIDDLEWARE=[], INSTALLED_APPS=[], LOGGING_CONFIG=None,
        )
        django.setup()
    from django.core.wsgi import get_wsgi_application

    return Client(LLMBudgetWSGIMiddleware(get_wsgi_application(), policy=policy))


@pytest.fixture
def server(llm_server: str) -> Any:
    BASE_URL["url"] = llm_server
    yield llm_server
    BASE_URL["url"] = "http://127.0.0.1:9/v1"


def test_django_calls_are_priced_for_the_requests_tenant(
    engine: llmbudget.Engine, records: list[llmbudget.SpendRecord], server: str
) -> None:
    app = django_app(Policy(trust_tenant_header=True, headers=True))
    response = app.get("/answer", headers={"x-tenant-id": "acme", "x-request-id": "d-1"})
    assert response.status_code == 200, response.get_data()
    assert response.json["tenant"] == "acme" and response.json["answer"]
    assert [(r.tenant, r.request_id, r.status) for r in records] == [("acme", "d-1", 200)]
    assert records[0].cost_usd > 0 and records[0].usage.output_tokens > 0
    assert response.headers["x-llmbudget-calls"] == "1"


def test_django_uncaught_refusals_become_402_and_other_errors_stay_500(
    engine: llmbudget.Engine, records: list[llmbudget.SpendRecord], caplog: pytest.LogCaptureFixture
) -> None:
    app = django_app(Policy(trust_tenant_header=True, budgets=[llmbudget.Budget("0")]))
    with caplog.at_level(logging.INFO):
        refused = app.get("/answer", headers={"x-tenant-id": "acme"})
    assert refused.status_code == 402, refused.get_data()
    # an expected outcome: one WARNING line, no "Internal Server Error" traceback from django.request
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    assert sum("refused an LLM call" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING) == 1
    assert refused.headers["content-type"] == "application/problem+json"
    assert (refused.json["budget"], refused.json["tenant"]) == ("request", "acme")
    assert records == []  # refused before anything was sent
    broken = app.get("/boom")
    assert broken.status_code == 500  # Django's own answer to a bug, untouched
    assert broken.headers["content-type"] != "application/problem+json"


def test_the_django_middleware_class_serves_djangos_own_test_client(
    engine: llmbudget.Engine, records: list[llmbudget.SpendRecord], server: str
) -> None:
    """Set up in wsgi.py only, django.test.Client (and LiveServerTestCase) bypassed llmbudget: no tenant, no
    budget, no 402. As a MIDDLEWARE entry the same policy holds there too."""
    django_app(Policy())  # configures Django once in this process
    from django.test import Client as DjangoClient
    from django.test.utils import override_settings

    middleware = ["llmbudget.middleware.LLMBudgetDjangoMiddleware"]
    policy = Policy(trust_tenant_header=True, headers=True)
    with override_settings(MIDDLEWARE=middleware, LLMBUDGET_POLICY=policy):
        answered = DjangoClient().get("/answer", headers={"x-tenant-id": "acme", "x-request-id": "d-2"})
    assert answered.status_code == 200 and answered.json()["tenant"] == "acme"
    assert answered["x-llmbudget-calls"] == "1"
    assert [(r.tenant, r.request_id, r.status) for r in records] == [("acme", "d-2", 200)]
    with override_settings(MIDDLEWARE=middleware, LLMBUDGET_POLICY=policy):
        streamed = DjangoClient().get("/streamed", headers={"x-tenant-id": "acme"})
        assert b"".join(streamed.streaming_content) == b"tenant acme"

    refusing = Policy(trust_tenant_header=True, budgets=[llmbudget.Budget("0")])
    with override_settings(MIDDLEWARE=middleware, LLMBUDGET_POLICY=refusing):
        refused = DjangoClient().get("/answer", headers={"x-tenant-id": "acme"})
        broken = DjangoClient(raise_request_exception=False).get("/boom")
    assert refused.status_code == 402 and refused["content-type"] == "application/problem+json"
    assert (refused.json()["budget"], refused.json()["tenant"]) == ("request", "acme")
    assert broken.status_code == 500 and broken["content-type"] != "application/problem+json"
    assert len(records) == 1  # the refused call was never sent

    with override_settings(MIDDLEWARE=middleware, LLMBUDGET_POLICY="not a policy"), \
            pytest.raises(TypeError, match="LLMBUDGET_POLICY"):
        DjangoClient().get("/answer")


class _DjangoUser:
    is_authenticated = True

    def __init__(self, name: Any) -> None:
        self.name = name

    def get_username(self) -> Any:
        if isinstance(self.name, Exception):
            raise self.name
        return self.name


def _tenant_middleware(policy: Policy, seen: list[Any] | None = None) -> tuple[Any, list[Any]]:
    """The Django middleware with ``policy`` around a view that notes each request's tenant in ``seen``."""
    django_app(Policy())  # configures Django once in this process
    from django.test.utils import override_settings

    from llmbudget.middleware import LLMBudgetDjangoMiddleware

    noted: list[Any] = [] if seen is None else seen

    def view(request: Any) -> JsonResponse:
        current = llmbudget.current_scope()
        noted.append(current and current.tenant)
        return JsonResponse({})

    with override_settings(LLMBUDGET_POLICY=policy):
        return LLMBudgetDjangoMiddleware(view), noted


@pytest.mark.parametrize("name", ["", "   ", None, RuntimeError("the user table is down")])
def test_django_an_authenticated_user_without_a_name_is_refused_never_named_by_the_header(
        engine: llmbudget.Engine, name: Any) -> None:
    """get_username() returning "" let the trusted header name the tenant, None counted every such user as one
    tenant 'None', and raising answered 500 from the middleware itself: each is the 400 unnamed_user ASGI gives."""
    from django.test import RequestFactory

    middleware, seen = _tenant_middleware(Policy(trust_tenant_header=True))
    request = RequestFactory().get("/answer", headers={"x-tenant-id": "acme"})
    request.user = _DjangoUser(name)
    response = middleware(request)
    assert response.status_code == 400 and seen == []
    assert json.loads(response.content)["reason"] == "unnamed_user"
    request.user = _DjangoUser("globex")  # a named user outranks the header
    assert middleware(request).status_code == 200 and seen == ["globex"]
    by_callable, _ = _tenant_middleware(Policy(tenant=lambda environ: "acme"), seen)
    request.user = _DjangoUser(name)  # the policy's callable names the tenant: the user's name is not needed
    assert by_callable(request).status_code == 200 and seen[-1] == "acme"


def test_django_users_are_named_as_django_has_them(engine: llmbudget.Engine) -> None:
    """request.user's name went through REMOTE_USER, whose text is read back as the UTF-8 bytes a server decoded
    as latin-1: users "Ãª" and "ê" were one tenant "ê", with one cache and one budget."""
    from django.test import RequestFactory

    middleware, seen = _tenant_middleware(Policy())
    for name in ("ê", "Ãª", "bob@Ã©xample.com", "bob@éxample.com"):
        request = RequestFactory().get("/answer")
        request.user = _DjangoUser(name)
        assert middleware(request).status_code == 200
    assert seen == ["ê", "Ãª", "bob@Ã©xample.com", "bob@éxample.com"]
    request = RequestFactory().get("/answer", REMOTE_USER="")  # IIS and CGI gateways send it empty: no one
    request.user = _DjangoUser("alice")
    assert middleware(request).status_code == 200 and seen[-1] == "alice"
    # a REMOTE_USER the server set is still bytes it decoded as latin-1: read as their UTF-8 text
    request = RequestFactory().get("/answer", REMOTE_USER="jos\xc3\xa9")
    request.user = _DjangoUser("ignored")
    assert middleware(request).status_code == 200 and seen[-1] == "josé"


def test_an_async_streamed_responses_generator_runs_in_the_requests_scope_under_asgi(
    engine: llmbudget.Engine, records: list[llmbudget.SpendRecord], server: str
) -> None:
    """Under ASGI Django reads an async StreamingHttpResponse after the middleware returned: its calls counted
    for (and read the cache of) the default tenant, so one tenant was served another's answer."""
    import asyncio

    django_app(Policy())  # configures Django once in this process
    from django.test import AsyncClient
    from django.test.utils import override_settings

    llmbudget.install()
    middleware = ["llmbudget.middleware.LLMBudgetDjangoMiddleware"]

    async def body(tenant: str) -> bytes:
        response = await AsyncClient().get("/streamed_async", headers={"x-tenant-id": tenant})
        return b"".join([chunk async for chunk in response.streaming_content])

    with override_settings(MIDDLEWARE=middleware, LLMBUDGET_POLICY=Policy(trust_tenant_header=True)):
        assert asyncio.run(body("acme")) == b"tenant acme True"
        assert asyncio.run(body("globex")) == b"tenant globex True"
    assert [r.tenant for r in records] == ["acme", "globex"]


def test_a_django_streamed_responses_cleanup_and_end_run_in_the_requests_scope(
    engine: llmbudget.Engine, records: list[llmbudget.SpendRecord], server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Django closed an abandoned StreamingHttpResponse's generator outside the request's scope: its cleanup's
    calls went through every budget of the request, counted for the default tenant. And the request's log line
    was written before the body streamed (0 calls), and headers=True gave no x-request-id."""
    django_app(Policy())
    from django.test import Client as DjangoClient
    from django.test.utils import override_settings

    one_call = records and records[0].cost_usd  # (none yet: a budget that fits one call is measured below)
    assert not one_call
    policy = Policy(trust_tenant_header=True, headers=True)
    with override_settings(MIDDLEWARE=["llmbudget.middleware.LLMBudgetDjangoMiddleware"], LLMBUDGET_POLICY=policy):
        DjangoClient().get("/answer", headers={"x-tenant-id": "probe"})
    fits_one = records[0].cost_usd * 3 / 2
    records.clear()
    policy = Policy(trust_tenant_header=True, headers=True, budgets=[llmbudget.Budget(fits_one)])
    with override_settings(MIDDLEWARE=["llmbudget.middleware.LLMBudgetDjangoMiddleware"], LLMBUDGET_POLICY=policy), \
            caplog.at_level(logging.INFO, logger="llmbudget"):
        response = DjangoClient().get("/streamed_cleanup", headers={"x-tenant-id": "acme", "x-request-id": "dj-9"})
        assert response["x-request-id"] == "dj-9"
        chunks = iter(response.streaming_content)
        assert next(chunks) == b"part 1\n"
        response.close()  # the client went: Django closes the response, the generator's cleanup runs
    assert [(r.tenant, r.request_id) for r in records] == [("acme", "dj-9")]  # one fits; two refused
    lines = [r.getMessage() for r in caplog.records if r.name == "llmbudget.middleware" and "dj-9" in r.getMessage()]
    assert len(lines) == 1 and "1 LLM call(s)" in lines[0]


def test_a_django_streamed_response_ends_its_request_whatever_wraps_or_replaces_it(
    engine: llmbudget.Engine, records: list[llmbudget.SpendRecord], server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An inner middleware wrapping the stream (GZip) left the app's generator to Django's close, outside the
    request's scope; and a response Django drops unclosed (ConditionalGetMiddleware's 304) never ended its
    request: no log line."""
    import gc

    django_app(Policy())
    from django.test import Client as DjangoClient
    from django.test.utils import override_settings

    ours = "llmbudget.middleware.LLMBudgetDjangoMiddleware"
    with override_settings(MIDDLEWARE=[ours], LLMBUDGET_POLICY=Policy(trust_tenant_header=True)):
        DjangoClient().get("/answer", headers={"x-tenant-id": "probe"})
    fits_one = records[0].cost_usd * 3 / 2
    records.clear()
    policy = Policy(trust_tenant_header=True, budgets=[llmbudget.Budget(fits_one)])
    with override_settings(MIDDLEWARE=[ours, "django.middleware.gzip.GZipMiddleware"], LLMBUDGET_POLICY=policy):
        response = DjangoClient().get("/streamed_cleanup", headers={"x-tenant-id": "acme",
                                                                     "accept-encoding": "gzip"})
        chunks = iter(response.streaming_content)
        next(chunks), next(chunks), next(chunks)  # gzip's header, then the app's first parts
        response.close()
    assert [r.tenant for r in records] == ["acme"]  # in scope: one fits, two refused
    records.clear()
    with override_settings(MIDDLEWARE=["django.middleware.http.ConditionalGetMiddleware", ours],
                           LLMBUDGET_POLICY=Policy(trust_tenant_header=True)), \
            caplog.at_level(logging.DEBUG, logger="llmbudget.middleware"):
        unchanged = DjangoClient().get("/streamed_tagged", headers={"x-tenant-id": "acme", "x-request-id": "dj-304",
                                                                     "if-none-match": '"v1"'})
        assert unchanged.status_code == 304
        gc.collect()
    assert [r for r in caplog.records if "dj-304" in r.getMessage()]  # the request ended: its line was written
