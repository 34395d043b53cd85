"""ASGI and WSGI middleware: one llmbudget scope per request, budgets, HTTP 402 refusals, headers, metrics.

``LLMBudgetMiddleware`` is pure ASGI (Starlette, FastAPI): the scope is a context
variable set around the whole app call, so it reaches async endpoints, sync
endpoints run in the thread pool, streamed bodies and background tasks.
``LLMBudgetWSGIMiddleware`` (Flask, Django) runs each request in a copy of the
caller's context: the scope stays set while the server iterates the body and
can never leak into the next request a worker thread serves.

A budget refusal the app does not catch becomes an RFC 9457 problem document
with status 402; anything else the app raises passes through untouched. A
request whose tenant is ambiguous or malformed (two tenant headers, invalid
UTF-8, over 128 characters, control characters) is refused with a 400 problem
before the app sees it, never counted for the shared default tenant.

Who names the tenant, first match wins: ``Policy(tenant=callable)``; the
authenticated user; the ``tenant_header``, only when ``trust_tenant_header``
trusts it (``True``, or the peer is one of the listed proxies).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import importlib
import inspect
import ipaddress
import json
import logging
import math
import re
import sys
import time
import uuid
import weakref
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
)
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from http import HTTPStatus
from types import FrameType
from typing import TYPE_CHECKING, Any

from .config import (
    ConfigError,
    MetricsPolicy,
    Policy,
    Route,
    RoutePolicy,
    check_route_tiers,
    request_path,
)
from .interception.install import install as _install
from .ledger.budgets import Refusal
from .pipeline import Engine, engine_configured, get_engine, set_engine
from .refusals import budget_refusal
from .scope import Scope, app_path, current_scope
from .scope import scope as _llm_scope
from .textfiles import shown

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = [
    "LLMBudgetDjangoMiddleware",
    "LLMBudgetMiddleware",
    "LLMBudgetWSGIMiddleware",
    "MetricsPolicy",
    "Policy",
    "RequestIdFilter",
    "Route",
    "current_route",
]

log = logging.getLogger("llmbudget.middleware")

ASGIMessage = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], ASGIReceive, ASGISend], Awaitable[None]]
StartResponse = Callable[..., Callable[[bytes], Any]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_route: contextvars.ContextVar[RoutePolicy | None] = contextvars.ContextVar("llmbudget_route", default=None)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_MAX_TENANT = 128
_PROBLEM_TITLE = "LLM budget exceeded"
_TENANT_PROBLEM_TYPE = "urn:llmbudget:invalid-tenant"


def current_route() -> RoutePolicy | None:
    """The route settings of the request being served, if the middleware is serving one."""
    return _route.get()


class RequestIdFilter(logging.Filter):
    """Gives every log record ``request_id`` and ``tenant`` from the current scope (``-`` outside one).

    ``handler.addFilter(RequestIdFilter())``, then use ``%(request_id)s`` in the format.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        current = current_scope()
        if not hasattr(record, "request_id"):
            record.request_id = current.request_id if current is not None else "-"
        if not hasattr(record, "tenant"):
            record.tenant = (current.tenant or "-") if current is not None else "-"
        return True


# -- shared by both faces -------------------------------------------------------------------------


#: The body of the 500 Starlette's ServerErrorMiddleware sends for an uncaught exception (not in debug mode).
_STARLETTE_500 = b"Internal Server Error"


@dataclass(frozen=True, slots=True)
class _StoreOutage:
    """A call a fail-closed budget refused because its store was unavailable (the interception's 503, which the
    SDK raises as ``openai.InternalServerError``): uncaught, it is answered with a 503 and its ``retry-after``,
    as a budget's refusal is with the 402, not left to become the app's 500."""

    detail: str
    retry_after: int


def _store_outage(exc: BaseException) -> _StoreOutage | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if response is None or headers is None or headers.get("x-llmbudget-refused") != "budget-store-unavailable":
        return None
    try:
        retry_after = max(1, int(headers.get("retry-after", "1")))
    except ValueError:
        retry_after = 1
    try:
        detail = str(response.json()["error"]["message"])
    except Exception:  # noqa: BLE001 - the header says what it is: the message is a nicety
        detail = "llmbudget could not use its budget store; budgeted calls are refused until it can"
    return _StoreOutage(detail, retry_after)


def _find_refusal(exc: BaseException) -> Refusal | _StoreOutage | None:
    """The budget refusal (or store outage) ``exc`` is, or that every exception of an exception group is."""
    refusal = budget_refusal(exc) or _store_outage(exc)
    if refusal is not None:
        return refusal
    inner = getattr(exc, "exceptions", None)
    if "ExceptionGroup" in type(exc).__name__ and isinstance(inner, tuple) and inner:
        found = [_find_refusal(e) for e in inner]
        if all(r is not None for r in found):  # a budget's refusal first, whatever the order (a fixed answer)
            return next((r for r in found if isinstance(r, Refusal)), found[0])
    return None


class _TenantRefused(Exception):
    """The request names its tenant in a way that cannot be trusted or used: answer 400."""

    def __init__(self, reason: str, source: str, detail: str, header: str | None = None) -> None:
        super().__init__(detail)
        self.reason, self.source, self.detail, self.header = reason, source, detail, header


#: The user of a request that is authenticated but names no one (blank, None, or unreadable): refused where the user
#: would name the tenant (as ``REMOTE_USER`` too, which the Django middleware sets).
_UNNAMED = "\x00llmbudget: unnamed user"


def _source_name(source: str, header: str | None) -> str:
    return {"header": f"the {header} header", "user": "the authenticated user's identity",
            "callable": "the policy's tenant callable"}[source]


def _clean_tenant(value: Any, source: str, header: str | None = None) -> str | None:
    """``value`` (a header's stripped of the spaces around it); None when blank; refused when too long or not
    printable. A user's or the callable's name is kept as it is: ``" acme"`` is another user than ``"acme"``, and
    trimming it made the two one tenant, sharing a cache and budgets."""
    if value is None:
        return None
    try:
        text = str(value)
    except ValueError:  # an int of more digits than Python writes out (4,300): too long for any name
        if not isinstance(value, int):
            raise
        raise _TenantRefused("too_long", source, f"The tenant named by {_source_name(source, header)} is an "
                             f"integer of {value.bit_length()} bits; at most {_MAX_TENANT} characters are "
                             "allowed.", header) from None
    if not text.strip(" "):  # spaces only: str.strip() would also drop \x1c-\x1f, \x85 and U+2028 unseen
        return None
    if source == "header":  # the spaces around a header's value are not part of it (HTTP's optional whitespace)
        text = text.strip(" ")
    if len(text) > _MAX_TENANT:
        raise _TenantRefused("too_long", source, f"The tenant named by {_source_name(source, header)} is "
                             f"{len(text)} characters long; at most {_MAX_TENANT} are allowed.", header)
    if not text.isprintable():
        raise _TenantRefused("not_printable", source, f"The tenant named by {_source_name(source, header)} "
                             "contains control or other non-printable characters.", header)
    return text


def _own(tenant: str, source: str, header: str | None = None) -> str:
    """``tenant``, refused when it is the default tenant's name: a user or a header naming it would share the
    budgets and the cache of every request that names no tenant (the tenant callable may name it)."""
    if tenant == get_engine().default_tenant:
        raise _TenantRefused("reserved", source, f"The tenant named by {_source_name(source, header)} is "
                             f"{tenant!r}, the name of the default tenant that requests naming no tenant share; "
                             "it cannot be a user's or a header's.", header)
    return tenant


def _header_tenant(values: list[bytes], header: str) -> str | None:
    """The one tenant the (trusted) header names: refused when sent twice, as a list, or not UTF-8."""
    if len(values) > 1 or any(b"," in value for value in values):
        raise _TenantRefused("duplicate", "header", f"The request names more than one tenant in the {header} "
                             "header (sent twice, or a comma-separated list); send exactly one.", header)
    if not values:
        return None
    try:
        text = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise _TenantRefused("invalid_utf8", "header", f"The {header} header is not valid UTF-8.", header) from None
    return _clean_tenant(text, "header", header)


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat().replace("+00:00", "Z")


def _usd(amount: Decimal) -> str:
    return format(amount.normalize(), "f") if amount else "0"


@dataclass(frozen=True, slots=True)
class _Problem:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class _Core:
    """What the ASGI and WSGI faces share: start-up, tenants, problems, headers, logs, metrics."""

    def __init__(self, policy: Policy | None, *, install: bool) -> None:
        if policy is not None and not isinstance(policy, Policy):
            raise TypeError(f"policy must be an llmbudget Policy (Policy(...) or Policy.from_file(...)), got {policy!r}")
        # no policy given: the file LLMBUDGET_POLICY names, else the nearest one (as Django's middleware and the
        # pytest plugin find theirs); a policy file next to the app was silently ignored
        self.policy = policy if policy is not None else _discovered()
        if self.policy.engine is not None:
            set_engine(self.policy.engine)
        engine = get_engine()
        _check_overlap(self.policy, engine)
        _check_route_tiers(self.policy, engine)
        _check_downgrade(self.policy, engine)
        if install:
            _install()
        from .tokens import warm_up

        warm_up()  # the encodings load at start-up, in a thread, not on the event loop of the first requests
        settings = self.policy.metrics_policy
        self.metrics: Metrics | None = None
        self.metrics_path: str | None = None
        if settings.enabled:
            from .metrics import Metrics

            self.metrics = Metrics(max_tenants=settings.max_tenants, tenants=settings.tenants,
                                   max_models=settings.max_models)
            self.metrics.attach(engine)
            self.metrics_path = settings.path
        trust = self.policy.trust_tenant_header
        self._trust_all = trust is True
        self._trusted = tuple(ipaddress.ip_network(n) for n in trust) if isinstance(trust, tuple) else ()
        self._warned_untrusted = False
        self._warned_nested = False

    # -- per request ----------------------------------------------------------------------------

    def nested(self, request: MutableMapping[str, Any]) -> bool:
        """True when an outer llmbudget middleware serves this request (an ASGI scope or WSGI environ it marked):
        this one passes it through, with a warning once, so nothing is counted, logged or headed twice."""
        if request.get(_SERVED) is None:
            request[_SERVED] = True
            return False
        if not self._warned_nested:
            self._warned_nested = True
            log.warning("llmbudget: a middleware inside another llmbudget middleware passes requests through; add "
                        "it once")
        return True

    def tenant(self, request: Mapping[str, Any], header_values: list[bytes], user: str | None,
               peer: str | None) -> str | None:
        """The request's tenant (None: the engine's default); raises :class:`_TenantRefused`."""
        finder = self.policy.tenant
        if finder is not None:
            try:
                value = finder(request)
                if isinstance(value, bytes):  # a header read from the ASGI scope as it is
                    try:
                        value = value.decode("utf-8")
                    except UnicodeDecodeError:  # refused as a header's: not the default tenant, shared by all
                        raise _TenantRefused("invalid_utf8", "callable", "The tenant named by the policy's tenant "
                                             "callable is bytes that are not valid UTF-8.") from None
                if not isinstance(value, (str, int, type(None))) or isinstance(value, bool):  # (True is no name)
                    if inspect.iscoroutine(value):
                        value.close()  # never awaited: closed, not left to warn
                    raise TypeError(f"it returned {type(value).__name__}; expected the tenant's name (a str, or an int id) or None")
                if isinstance(value, str) and type(value) is not str:  # a subclass: its own __str__, read here
                    value = str(value)
                elif isinstance(value, int) and type(value) is not int:  # (an int subclass's own __str__ too)
                    value = int(value)
            except _TenantRefused:
                raise
            except Exception:
                log.exception("llmbudget: the tenant callable failed; the request counts for the default tenant")
                return None
            return _clean_tenant(value, "callable")
        if user == _UNNAMED:  # authenticated without a usable name: neither the header nor the default names it
            raise _TenantRefused("unnamed_user", "user", "The request is authenticated, but neither the user's "
                                 "identity nor its display_name could be read (or both are blank), so its tenant "
                                 "cannot be named.")
        header = self.policy.tenant_header
        from_header: str | None = None
        if header is not None and header_values:
            if self.header_trusted(peer):
                # Checked even when a user outranks it: two values mean a client got past the proxy.
                from_header = _header_tenant(header_values, header)
            else:
                self.untrusted_header(header, peer)
        from_user = _clean_tenant(user, "user")
        if from_user is not None:
            return _own(from_user, "user")
        return _own(from_header, "header", header) if from_header is not None else None

    def header_trusted(self, peer: str | None) -> bool:
        """Whether the tenant header of a request from ``peer`` (the direct client's address) is trusted."""
        if self._trust_all:
            return True
        if not self._trusted or not isinstance(peer, str) or not peer:
            return False
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)
        return any(address in net or (mapped is not None and mapped in net) for net in self._trusted)

    def untrusted_header(self, header: str, peer: str | None) -> None:
        if self._warned_untrusted:
            log.debug("llmbudget: ignored the untrusted %s header of a request from %s", header, peer or "-")
            return
        self._warned_untrusted = True
        log.warning(
            "llmbudget: ignoring the %s header of a request from %s: the policy does not trust it "
            "(trust_tenant_header is %s), so the request counts for its authenticated user or the default "
            "tenant. If only your gateway can set this header, set trust_tenant_header = true, or list the "
            "gateway's addresses. (Said once; later ones are logged at DEBUG.)",
            header, peer or "an unknown address",
            "false" if not self.policy.trust_tenant_header else "a list that does not include it",
        )

    def tenant_problem(self, refused: _TenantRefused, request_id: str, method: str, path: str) -> _Problem:
        """The 400 answer for a request whose tenant cannot be used (RFC 9457 problem+json)."""
        log.warning("request %s %s %s refused with 400: %s", request_id, method, shown(path), refused.detail,
                    extra={"request_id": request_id, "tenant": "-"})
        body = {
            "type": _TENANT_PROBLEM_TYPE,
            "title": "Invalid tenant",
            "status": 400,
            "detail": refused.detail,
            "reason": refused.reason,
            "source": refused.source,
            **({"header": refused.header} if refused.header else {}),
            "request_id": request_id,
        }
        headers = [
            ("content-type", "application/problem+json"),
            ("cache-control", "no-store"),
            ("x-llmbudget-refused", "tenant"),
        ]
        return _Problem(400, headers, json.dumps(body).encode())

    @staticmethod
    def request_id(value: str | None) -> str:
        if value is not None and _REQUEST_ID.fullmatch(value):
            return value
        return uuid.uuid4().hex

    def problem(self, refusal: Refusal | _StoreOutage, scope: Scope, *, route: RoutePolicy | None = None
                ) -> _Problem:
        """The 402 answer for an uncaught budget refusal (RFC 9457 problem+json); the 503 for a store outage."""
        if isinstance(refusal, _StoreOutage):  # (its cause, hosts and paths included, goes to the log only)
            outage = {"type": "urn:llmbudget:budget-store-unavailable", "title": "LLM budget store unavailable",
                      "status": 503, "detail": "The service cannot check its LLM budgets right now; try again "
                      f"in {refusal.retry_after} s.", "request_id": scope.request_id}
            return _Problem(503, [("content-type", "application/problem+json"), ("cache-control", "no-store"),
                                  ("x-llmbudget-refused", "budget-store-unavailable"),
                                  ("retry-after", str(refusal.retry_after))], json.dumps(outage).encode())
        data = refusal.to_dict()
        who = f" of tenant {refusal.tenant!r}" if refusal.per == "tenant" and refusal.tenant else ""
        period = f" per {refusal.period}" if refusal.period else ""
        resets = _iso(refusal.resets_at)
        detail = (
            f"The {refusal.per} budget {refusal.budget!r}{who} (${_usd(refusal.limit_usd)}{period}) has "
            f"${_usd(refusal.remaining_usd)} left; the next LLM call could cost up to "
            f"${_usd(refusal.estimated_cost_usd)}." + (f" It resets at {resets}." if resets else "")
        )
        body = {
            "type": self.policy.problem_type,
            "title": _PROBLEM_TITLE,
            "status": 402,
            "detail": detail,
            **data,
            "resets_at": resets,
            "request_id": scope.request_id,
        }
        headers = [
            ("content-type", "application/problem+json"),
            ("cache-control", "no-store"),
            ("x-llmbudget-refused", "budget"),
        ]
        if refusal.resets_at is not None:
            headers.append(("retry-after", str(max(1, math.ceil(refusal.resets_at - time.time())))))
        if route is not None and route.headers:
            headers.extend(self.spend_headers(scope))
        return _Problem(402, headers, json.dumps(body).encode())

    @staticmethod
    def spend_headers(scope: Scope, present: Iterable[str] = ()) -> list[tuple[str, str]]:
        """What the request spent so far, as ``x-llmbudget-*`` headers (opt-in), and the request id unless the
        app's response has one already (``present``: its header names, lower case)."""
        snapshot = scope.totals.snapshot()
        records = list(scope.totals.records)
        calls, cost, saved = snapshot.calls, snapshot.cost_usd, snapshot.saved_usd
        input_tokens, output_tokens = snapshot.input_tokens, snapshot.output_tokens
        own = [] if "x-request-id" in present else [("x-request-id", scope.request_id)]
        return [
            *own,
            ("x-llmbudget-calls", str(calls)),
            ("x-llmbudget-cost-usd", _usd(cost)),
            ("x-llmbudget-saved-usd", _usd(saved)),
            ("x-llmbudget-routing-saved-usd", _usd(snapshot.routing_saved_usd)),
            ("x-llmbudget-input-tokens", str(input_tokens)),
            ("x-llmbudget-output-tokens", str(output_tokens)),
            ("x-llmbudget-cache-hits", str(sum(r.from_cache for r in records))),
            ("x-llmbudget-routed", str(sum(r.routed for r in records))),
            ("x-llmbudget-capped", str(sum(r.capped for r in records))),
        ]

    def refused(self, refusal: Refusal | _StoreOutage, scope: Scope, *, answered: bool) -> None:
        extra = {"request_id": scope.request_id, "tenant": scope.tenant or "-"}
        if isinstance(refusal, _StoreOutage):
            log.warning("request %s: an LLM call was refused while the budget store is unavailable (%s); %s",
                        scope.request_id, refusal.detail, "answering 503" if answered else "the response had started",
                        extra=extra)
            if self.metrics is not None:
                self.metrics.store_outage(scope.tenant)
            return
        if answered:
            log.warning("request %s: budget %r refused an LLM call the app did not catch; answering 402",
                        scope.request_id, refusal.budget, extra=extra)
        else:
            log.warning("request %s: budget %r refused an LLM call after the response started; it cannot "
                        "become a 402", scope.request_id, refusal.budget, extra=extra)
        if self.metrics is not None:
            self.metrics.refusal(refusal)

    def finished(self, scope: Scope, method: str, path: str, status: int | None, started: float) -> None:
        totals = scope.totals
        level = logging.INFO if totals.calls else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "request %s %s %s tenant=%s status=%s: %d LLM call(s), %d tokens, $%s in %.3fs",
                    scope.request_id, method, shown(path), scope.tenant or "-", status if status is not None else "-",
                    totals.calls, totals.tokens, _usd(totals.cost_usd), time.perf_counter() - started,
                    extra={"request_id": scope.request_id, "tenant": scope.tenant or "-"})

    def metrics_answer(self, method: str) -> tuple[int, list[tuple[str, str]], bytes]:
        assert self.metrics is not None
        if method not in ("GET", "HEAD"):
            return 405, [("allow", "GET, HEAD"), ("content-type", "text/plain")], b"method not allowed\n"
        body, content_type = self.metrics.render()
        # HEAD: GET's headers (its content-length too), no body
        return 200, [("content-type", content_type), ("cache-control", "no-store"),
                     ("content-length", str(len(body)))], b"" if method == "HEAD" else body


def _discovered() -> Policy:
    """:meth:`Policy.discover`, less its engine where the app configured one itself (``configure(...)``): the app's
    budgets and ledger are kept, and a warning says the file's engine keys are not applied."""
    found = Policy.discover()
    if found.engine is not None and engine_configured():
        log.warning("llmbudget: the app configured its engine (llmbudget.configure), so the engine keys of the policy "
                    "file found (prices, ledger, budget_store, cache, routing...) are not applied; pass "
                    "policy=Policy.from_file(...) to use them instead")
        found = dataclasses.replace(found, engine=None)
    return found


#: The key an llmbudget middleware marks the ASGI scope or WSGI environ it serves with.
_SERVED = "llmbudget.served"


def _check_route_tiers(policy: Policy, engine: Engine) -> None:
    """A route that forces a routing tier names one the engine's routing has (else every request it serves
    logged an error and went out unrouted, or, without routing, nothing said the route did nothing)."""
    check_route_tiers(policy, engine.routing)
    for index, route in enumerate(policy.routes):
        if isinstance(route.routing, str) and engine.routing is None:  # the app may still configure routing later
            log.warning("llmbudget: routes[%d] (%r): routing = %r forces a tier, but the engine has no routing (yet): "
                        "without it the route routes nothing", index, route.path, route.routing)


def _check_downgrade(policy: Policy, engine: Engine) -> None:
    """Warn of ``on_budget = "downgrade"`` with nothing to downgrade to: such calls are refused as with "refuse"."""
    for where, setting in (("the policy", policy), *((f"route {r.path!r}", r) for r in policy.routes)):
        target = getattr(setting, "downgrade_to", None) or policy.downgrade_to
        if getattr(setting, "on_budget", None) == "downgrade" and not target and engine.routing is None:
            log.warning("llmbudget: %s downgrades calls over budget, but has no downgrade_to and the engine no "
                        "routing tiers: they are refused instead", where)


def _check_overlap(policy: Policy, engine: Engine) -> None:
    """Engine budgets and policy budgets of one kind would share (and double-charge) one counter."""
    kinds = {(b.per, b.period) for b in engine.budgets}
    for budgets in (policy.budgets, *(r.budgets for r in policy.routes if r.budgets is not None)):
        for budget in budgets:
            if (budget.per, budget.period) in kinds:
                raise ConfigError(
                    f"the policy's budget {budget.name!r} and one of the engine's budgets are both per "
                    f"{budget.per}{' per ' + budget.period if budget.period else ''}: they would share one counter; "
                    "keep it in one place (the policy's budgets, or Engine(budgets=...))"
                )


# -- ASGI -----------------------------------------------------------------------------------------


def _raw(value: Any) -> bytes:
    """A header's name or value as the bytes ASGI promises (a server that passes ``str`` instead: its latin-1
    bytes, as the server would have sent them; the middleware must not be what fails such a request)."""
    return value.encode("latin-1", "replace") if isinstance(value, str) else bytes(value)


def _asgi_header(scope: Mapping[str, Any], name: str | None) -> str | None:
    if name is None:
        return None
    key = name.encode("latin-1")
    for header, value in scope.get("headers") or ():
        if _raw(header).lower() == key:
            return _raw(value).decode("latin-1")
    return None


def _asgi_header_values(scope: Mapping[str, Any], name: str | None) -> list[bytes]:
    """Every value of header ``name``, raw bytes, in order."""
    if name is None:
        return []
    key = name.encode("latin-1")
    return [_raw(value) for header, value in scope.get("headers") or () if _raw(header).lower() == key]


def _asgi_peer(scope: Mapping[str, Any]) -> str | None:
    client = scope.get("client")
    try:
        return str(client[0]) if client else None
    except (TypeError, IndexError, KeyError):
        return None


def _route_path(scope: Mapping[str, Any]) -> str:
    """The path within the app, as its routes see it: without the ``root_path`` it is mounted or served under
    (uvicorn's ``--root-path``, a Starlette ``Mount``), which ASGI servers and frameworks put in ``path`` too."""
    path = scope.get("path", "")
    root = scope.get("root_path", "")
    if not isinstance(path, str):
        return ""
    if isinstance(root, str) and root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):] or "/"
    return path


def _asgi_user(scope: Mapping[str, Any]) -> str | None:
    """The authenticated user's ``identity``, else its ``display_name``; None for an anonymous request.

    A user that says it is authenticated but whose name cannot be read (neither attribute exists, both
    are blank, or reading them raises) is :data:`_UNNAMED`, refused unless the policy's tenant callable names
    the tenant: the tenant header must not name it instead.
    """
    user = scope.get("user")
    if user is None:
        return None
    try:
        authenticated = getattr(user, "is_authenticated", False)
        if callable(authenticated):  # a method in some frameworks (and Django before 1.10)
            authenticated = authenticated()
        if not authenticated:
            return None
    except Exception:
        log.debug("llmbudget: could not read whether the user is authenticated", exc_info=True)
        return None
    for attribute in ("identity", "display_name"):
        try:
            value = getattr(user, attribute)
        except Exception:  # NotImplementedError (Starlette's BaseUser), AttributeError, or the app's own
            log.debug("llmbudget: could not read the authenticated user's %s", attribute, exc_info=True)
            continue
        if isinstance(value, (bytes, bytearray)):  # read as UTF-8, as a header's are (str() made "b'globex'")
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                continue
        name = _named(value)
        if name != _UNNAMED:  # a blank or unwritable identity names no one: the display_name may
            return name
    return _UNNAMED  # refused where the user would name the tenant (not where the policy's tenant callable does)


def _named(value: Any) -> str:
    """``value`` as a user's name, or :data:`_UNNAMED` when it names no one (None, blank, or its ``str()``
    fails, such as an int of more digits than Python writes out)."""
    try:
        text = None if value is None else str(value)
    except Exception:  # noqa: BLE001 - the app's own user object: a name it cannot give is no name
        return _UNNAMED
    return text if text is not None and text.strip(" ") else _UNNAMED


def _django_user(request: Any) -> str | None:
    """The name of the request's authenticated Django user (``get_username()``); None for an anonymous request;
    :data:`_UNNAMED` for an authenticated user without a usable name (None, blank, or ``get_username`` raised):
    neither the tenant header nor the default tenant may stand in for it."""
    user: Any = getattr(request, "user", None)
    if not getattr(user, "is_authenticated", False):
        return None
    try:
        name = user.get_username()
    except Exception:
        log.debug("llmbudget: could not read the authenticated Django user's name", exc_info=True)
        return _UNNAMED
    return _named(name)


def _built_by_starlette() -> bool:
    """Whether the middleware being made is made by Starlette's (or FastAPI's) ``build_middleware_stack``, which
    ``add_middleware`` leaves to the server's first event (a subclass's ``__init__`` and its helpers may stand
    between)."""
    frame: FrameType | None = sys._getframe(2)  # (this function's caller is __init__; it runs on errors only)
    while frame is not None:
        if frame.f_code.co_name == "build_middleware_stack":
            return True
        frame = frame.f_back
    return False


async def _fail_start(error: ConfigError, scope: MutableMapping[str, Any], receive: ASGIReceive,
                      send: ASGISend) -> None:
    """Fail the server's start-up with ``error`` (a lifespan event), or raise it (a request)."""
    if scope["type"] != "lifespan":
        raise error
    message = await receive()
    if message.get("type") == "lifespan.startup":  # (the server logs the message)
        await send({"type": "lifespan.startup.failed", "message": f"llmbudget: {error}"})
    elif message.get("type") == "lifespan.shutdown":
        await send({"type": "lifespan.shutdown.complete"})


class LLMBudgetMiddleware(_Core):
    """Pure ASGI middleware: ``app.add_middleware(LLMBudgetMiddleware, policy=Policy(...))``.

    Keyword-only options: ``policy`` (default: :meth:`Policy.discover`: the file ``LLMBUDGET_POLICY`` names, else
    the nearest ``llmbudget.toml`` or ``[tool.llmbudget]`` from the working folder up, else defaults) and ``install``
    (default True: put every openai client of the process behind llmbudget).
    """

    #: The policy error of a middleware built inside a running server (see ``__init__``), raised as it serves.
    _failed: ConfigError | None = None
    #: Whether the warning that authentication runs inside this middleware was given (once per middleware).
    _user_order_warned = False

    def _warn_user_order(self, scope: Mapping[str, Any]) -> None:
        """The app set ``scope["user"]`` after this middleware read the tenant: an authentication middleware
        added inside it (Starlette and FastAPI run the last one added first). Its users were never read, so they
        all counted for the header's tenant or the default one, sharing a cache: say so, once."""
        if self.policy.tenant is not None or _asgi_user(scope) is None:
            return  # the callable names the tenant, or no one was authenticated
        self._user_order_warned = True
        log.warning("llmbudget: the request's authenticated user was set after LLMBudgetMiddleware read its tenant: "
                    "an authentication middleware runs inside it, so its users are not told apart (they count for "
                    "the tenant header's tenant or the default one, and share its cache and budgets). Add "
                    "LLMBudgetMiddleware before the authentication middleware (app.add_middleware: last added runs "
                    "first), or name the tenant with Policy(tenant=...)")

    def __init__(self, app: ASGIApp, *, policy: Policy | None = None, install: bool = True) -> None:
        self.app = app
        try:
            super().__init__(policy, install=install)
        except ConfigError as exc:
            if not _built_by_starlette():
                raise
            # Built by Starlette's add_middleware at the server's first event: raised here, uvicorn's default
            # lifespan mode ("auto") read it as "lifespan unsupported", said "Application startup complete" and
            # every request got a 500. Start-up fails instead, with the error.
            self._failed = exc

    async def __call__(self, scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if self._failed is not None:
            await _fail_start(self._failed, scope, receive, send)
            return
        kind = scope["type"]
        if kind not in ("http", "websocket") or self.nested(scope):
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)  # (routes and routing's never globs read it with and without repeated slashes)
        if self.metrics_path is not None and request_path(path) == self.metrics_path and kind == "http":
            await _asgi_answer(send, *self.metrics_answer(scope.get("method", "GET")))
            return
        route = self.policy.for_path(path)
        if not route.enabled:
            with _pass_by():
                await self.app(scope, receive, send)
            return
        request_id = self.request_id(_asgi_header(scope, self.policy.request_id_header))
        try:
            tenant = self.tenant(scope, _asgi_header_values(scope, self.policy.tenant_header), _asgi_user(scope),
                                 _asgi_peer(scope))
        except _TenantRefused as refused:
            problem = self.tenant_problem(refused, request_id, scope.get("method", "WS"), path)
            if kind == "http":
                await _asgi_answer(send, problem.status, problem.headers, problem.body)
            else:  # a websocket: refuse the handshake (servers answer 403), with the reason
                message = await receive()
                if message.get("type") == "websocket.connect":
                    await send({"type": "websocket.close", "code": 1008, "reason": refused.detail[:120]})
            return
        started_at = time.perf_counter()
        status: int | None = None
        response_started = False
        had_user = "user" in scope
        with _llm_scope(tenant=tenant, request_id=request_id, budgets=route.budgets, cache=route.cache,
                        routing=route.routing, output=route.output, defer=route.defer, on_budget=route.on_budget,
                        downgrade_to=route.downgrade_to, cap_min_output_tokens=route.cap_min_output_tokens) as current:
            token = _route.set(route)
            path_token = app_path.set(path)

            # Starlette's ServerErrorMiddleware (inside the app when this middleware wraps it from outside)
            # answers an uncaught refusal with its plain 500 "Internal Server Error" from inside its ``except``
            # block, then raises it again: that 500 is answered with the 402 (or 503) instead. Its start is held
            # until its body shows it is that one; any other 500 (an app's own handler, a debug page, a refusal
            # the app caught) goes out as the app sends it.
            answered: Refusal | _StoreOutage | None = None
            held: tuple[ASGIMessage, Refusal | _StoreOutage] | None = None

            async def answer(refusal: Refusal | _StoreOutage) -> None:
                """The 402 (or 503) problem, sent instead of the app's answer."""
                nonlocal status, response_started
                self.refused(refusal, current, answered=True)
                problem = self.problem(refusal, current, route=route)
                status, response_started = problem.status, True
                await _asgi_answer(send, problem.status, problem.headers, problem.body)

            async def send_wrapper(message: ASGIMessage) -> None:
                nonlocal answered, held
                if answered is not None:
                    return
                if held is not None:
                    start, refusal = held
                    held = None
                    if message["type"] == "http.response.body" and not message.get("more_body", False) \
                            and message.get("body") == _STARLETTE_500:
                        answered = refusal
                        await answer(refusal)
                        return
                    await forward(start)
                elif message["type"] == "http.response.start" and message.get("status") == 500 \
                        and not response_started:
                    handling = sys.exc_info()[1]  # what the code sending this 500 is handling, if anything
                    found = _find_refusal(handling) if handling is not None else None
                    if found is not None:
                        held = (message, found)
                        return
                await forward(message)

            async def forward(message: ASGIMessage) -> None:
                nonlocal status, response_started
                if message["type"] == "http.response.start":
                    response_started = True
                    status = message.get("status")
                    if route.headers:
                        # read once: the headers may come as any iterable, a generator too (ASGI allows it)
                        own = list(message.get("headers", ()))
                        present = {(k.decode("latin-1") if isinstance(k, (bytes, bytearray)) else str(k)).lower()
                                   for k, _ in own}  # str names, as some apps send, too
                        extra = [(k.encode("latin-1"), v.encode("latin-1"))
                                 for k, v in self.spend_headers(current, present)]
                        message = {**message, "headers": [*own, *extra]}
                elif message["type"] == "websocket.accept":
                    response_started = True
                await send(message)

            try:
                await self.app(scope, receive, send_wrapper)
                if held is not None:  # a start with no body after it: the app's own, sent as it was
                    await forward(held[0])
            except BaseException as exc:
                refusal = _find_refusal(exc)
                if refusal is None:
                    raise
                if answered is not None:  # Starlette's 500 for it: answered with the 402 already
                    return
                if response_started or kind != "http":
                    self.refused(refusal, current, answered=False)
                    raise
                await answer(refusal)
            finally:
                app_path.reset(path_token)
                _route.reset(token)
                self.finished(current, scope.get("method", "WS"), path, status, started_at)
                if not had_user and "user" in scope and not self._user_order_warned:
                    self._warn_user_order(scope)


async def _asgi_answer(send: ASGISend, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    if not any(k.lower() == "content-length" for k, _ in headers):
        raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


# -- WSGI -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _WSGIRequest:
    """One request's state, in the request's own context."""

    route: RoutePolicy
    scope: Scope | None = None
    refusal: Refusal | _StoreOutage | None = None
    status: int | None = None
    replaced: bool = False


_wsgi_request: contextvars.ContextVar[_WSGIRequest | None] = contextvars.ContextVar(
    "llmbudget_wsgi_request", default=None
)
_frameworks_connected: set[str] = set()


class _RefusalTraceback(logging.Filter):
    """Drops a framework's ERROR traceback for an uncaught budget refusal: the middleware answers it with a 402
    and logs one WARNING line itself (an expected outcome, not a crash). Every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None or not _framework_traceback(record):  # the app's own logs pass, whatever they carry
            return True
        return _find_refusal(error) is None


def _framework_traceback(record: logging.LogRecord) -> bool:
    """Whether ``record`` is Flask's or Django's own log line for an uncaught exception (a 500)."""
    message = record.msg if isinstance(record.msg, str) else ""
    return message.startswith("Exception on ") or (record.name == "django.request"
                                                   and getattr(record, "status_code", None) == 500)


_REFUSAL_TRACEBACK = _RefusalTraceback()


def _quiet(logger: Any) -> None:
    """Put the refusal filter on a framework's logger (once)."""
    if isinstance(logger, logging.Logger) and _REFUSAL_TRACEBACK not in logger.filters:
        logger.addFilter(_REFUSAL_TRACEBACK)


def _on_request_exception(sender: Any, exception: BaseException | None = None, **extra: Any) -> None:
    """Flask and Django turn uncaught exceptions into 500s themselves: note a refusal so the middleware answers 402.

    Flask passes the exception; Django sends the signal while handling it, so it is in ``sys.exc_info()``.
    """
    state = _wsgi_request.get()
    if state is None:
        return
    if exception is None:
        exception = sys.exc_info()[1]
    if exception is not None:
        refusal = _find_refusal(exception)
        if refusal is not None:
            state.refusal = refusal
            _quiet(getattr(sender, "logger", None))  # Flask logs the traceback after this signal, on app.logger


def _connect_frameworks() -> None:
    """Listen to the "request raised" signal of Flask and Django, when the app uses them."""
    for framework, module in (("flask", "flask"), ("django", "django.core.signals")):
        if framework in _frameworks_connected or framework not in sys.modules:
            continue
        try:
            signal = importlib.import_module(module).got_request_exception
        except (ImportError, AttributeError):  # pragma: no cover - a module of that name that is not the framework
            continue
        signal.connect(_on_request_exception, weak=False)
        if framework == "django":
            _quiet(logging.getLogger("django.request"))  # Django logs "Internal Server Error" there
        _frameworks_connected.add(framework)


def _status_code(status: str) -> int | None:
    try:
        return int(status.split(" ", 1)[0])
    except ValueError:
        return None


class _Body:
    """The app's response iterable, iterated and closed inside the request's context."""

    def __init__(self, context: contextvars.Context, iterable: Iterable[bytes],
                 on_error: Callable[[BaseException], None], finish: Callable[[], None],
                 recover: Callable[[BaseException], list[bytes] | None] | None = None) -> None:
        self._context = context
        self._iterable = iterable
        self._iterator: Iterator[bytes] | None = None
        self._on_error = on_error
        self._finish = finish
        self._recover = recover
        self._sent = False
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            if self._iterator is None:
                self._iterator = self._context.run(iter, self._iterable)
            chunk: bytes = self._context.run(next, self._iterator)
        except StopIteration:
            raise
        except BaseException as exc:
            # A generator app runs only now: a refusal before its first chunk can still be answered 402
            replacement = None if self._sent or self._recover is None else self._recover(exc)
            if replacement is None:
                self._on_error(exc)
                raise
            self._iterator = iter(replacement)
            chunk = next(self._iterator)
        self._sent = self._sent or bool(chunk)
        return chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                self._context.run(close)
        finally:
            self._finish()


def _wsgi_text(value: str) -> str:
    """An environ string a server set from bytes (PEP 3333: decoded as latin-1), as the UTF-8 text they carry, as
    tenant headers are read (a ``REMOTE_USER`` of ``josé`` became ``josÃ©``); as it is where it is not such a
    string (Python code set it, with characters past latin-1) or its bytes are not UTF-8: a WSGI middleware's own
    text (``"josé"``, which PEP 3333 cannot tell from the latin-1 bytes ``jos\\xe9``), or a server whose users'
    names are latin-1. Refusing those would break both. The two readings meet where a middleware sets text:
    its user ``"josÃ©"`` is read as ``"josé"`` (README says to give such users to the tenant callable)."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _environ_header(environ: Mapping[str, Any], name: str | None) -> str | None:
    if name is None:
        return None
    value = environ.get("HTTP_" + name.upper().replace("-", "_"))
    return value if isinstance(value, str) else None


def _environ_header_values(environ: Mapping[str, Any], name: str | None) -> list[bytes]:
    """Header ``name`` as raw bytes (WSGI servers join repeated headers with commas; PEP 3333 strings are latin-1)."""
    value = _environ_header(environ, name)
    if value is None:
        return []
    try:
        return [value.encode("latin-1")]
    except UnicodeEncodeError:  # a server that decoded the bytes itself
        return [value.encode("utf-8", "surrogateescape")]


@contextlib.contextmanager
def _pass_by() -> Iterator[Scope]:
    """A disabled route's scope: no tenant read, no budgets, and its calls pass the cache, the router and
    directives by (outside any scope they would all share the default tenant's cache partition, whoever made
    them)."""
    with _llm_scope(cache=False, routing=False, output=False) as passing:
        passing.passing_by = True
        yield passing


def _passing_by() -> contextvars.Context:
    """Run in a throwaway copy of the caller's context: a snapshot with a disabled route's scope set."""
    with _pass_by():
        return contextvars.copy_context()


def _request_context(route: RoutePolicy, state: _WSGIRequest, path: str, **options: Any
                     ) -> tuple[Scope, contextvars.Context]:
    """Run in a throwaway copy of the caller's context: a snapshot with the request's scope set.

    The scope is entered and left here, so nothing stays suspended; the
    snapshot is all the request runs in and is dropped with it, which is why
    no scope can leak into the next request a thread serves.
    """
    _route.set(route)
    app_path.set(path)
    with _llm_scope(**options) as current:
        state.scope = current
        _wsgi_request.set(state)
        return current, contextvars.copy_context()


class LLMBudgetWSGIMiddleware(_Core):
    """WSGI middleware: ``app.wsgi_app = LLMBudgetWSGIMiddleware(app.wsgi_app, policy=Policy(...))``.

    Keyword-only options: ``policy`` (default: :meth:`Policy.discover`: the file ``LLMBUDGET_POLICY`` names, else
    the nearest ``llmbudget.toml`` or ``[tool.llmbudget]`` from the working folder up, else defaults) and ``install``
    (default True: put every openai client of the process behind llmbudget).
    """

    def __init__(self, app: WSGIApp, *, policy: Policy | None = None, install: bool = True) -> None:
        super().__init__(policy, install=install)
        self.app = app
        _connect_frameworks()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self.nested(environ):
            return self.app(environ, start_response)
        raw_path = environ.get("PATH_INFO")  # the UTF-8 path's bytes as latin-1 (PEP 3333); ASGI gives the text
        path = _wsgi_text(raw_path) if isinstance(raw_path, str) and raw_path else "/"
        method = environ.get("REQUEST_METHOD", "GET")
        if self.metrics_path is not None and request_path(path) == self.metrics_path:
            status, headers, body = self.metrics_answer(method)
            length = [] if any(k == "content-length" for k, _ in headers) else [("content-length", str(len(body)))]
            start_response(f"{status} {'OK' if status == 200 else 'Method Not Allowed'}", [*headers, *length])
            return [body]
        route = self.policy.for_path(path)
        if not route.enabled:
            context = contextvars.copy_context().run(_passing_by)
            wrapped: list[Any] = []
            file_wrapper = environ.get("wsgi.file_wrapper")
            if callable(file_wrapper):  # what it returns is what the server may send with sendfile (uWSGI: by identity)
                def recorded(*args: Any, **kwargs: Any) -> Any:
                    wrapped.append(file_wrapper(*args, **kwargs))
                    return wrapped[-1]

                environ["wsgi.file_wrapper"] = recorded
            try:
                result = context.run(self.app, environ, start_response)
            finally:
                if callable(file_wrapper):  # the server's own again: it checks what comes back against it
                    environ["wsgi.file_wrapper"] = file_wrapper
            if isinstance(result, (list, tuple)) or any(result is w for w in wrapped):
                return result  # nothing left to run: as it is (a file wrapper keeps the server's sendfile)
            return _Body(context, result, lambda exc: None, lambda: None)
        started_at = time.perf_counter()
        request_id = self.request_id(_environ_header(environ, self.policy.request_id_header))
        remote_user = environ.get("REMOTE_USER")
        # a blank one (spaces) names no one, as a blank ASGI identity: refused, never read past to the header;
        # bytes (a server against PEP 3333) are read as UTF-8, or name no one
        if isinstance(remote_user, (bytes, bytearray)):
            try:
                user = _named(bytes(remote_user).decode("utf-8")) if remote_user else None
            except UnicodeDecodeError:
                user = _UNNAMED
        else:
            user = _named(_wsgi_text(remote_user)) if isinstance(remote_user, str) and remote_user else None
        if not user and isinstance(environ.get(_DJANGO_USER), str):  # (an empty REMOTE_USER names no one)
            user = environ[_DJANGO_USER]  # Python text as Django has it: not bytes a server decoded as latin-1
        try:
            tenant = self.tenant(environ, _environ_header_values(environ, self.policy.tenant_header), user,
                                 environ.get("REMOTE_ADDR"))
        except _TenantRefused as refused:
            problem = self.tenant_problem(refused, request_id, method, path)
            start_response("400 Bad Request", [*problem.headers, ("content-length", str(len(problem.body)))])
            return [problem.body]
        state = _WSGIRequest(route=route)
        current, context = contextvars.copy_context().run(
            _request_context, route, state, path, tenant=tenant, request_id=request_id, budgets=route.budgets,
            cache=route.cache, routing=route.routing, output=route.output, defer=route.defer,
            on_budget=route.on_budget,
            downgrade_to=route.downgrade_to, cap_min_output_tokens=route.cap_min_output_tokens,
        )
        counted: list[Refusal | _StoreOutage] = []
        problem_body: list[bytes] = []

        def note(refusal: Refusal | _StoreOutage, *, answered: bool) -> None:
            if not any(r is refusal for r in counted):
                counted.append(refusal)
                self.refused(refusal, current, answered=answered)

        def finish() -> None:
            self.finished(current, method, path, state.status, started_at)

        def on_error(exc: BaseException) -> None:
            refusal = _find_refusal(exc)
            if refusal is not None:
                note(refusal, answered=False)

        def answer_problem(refusal: Refusal | _StoreOutage, exc_info: Any = None) -> None:
            note(refusal, answered=True)
            problem = self.problem(refusal, current, route=route)
            # exc_info only when the app already started a response (else servers may re-raise it).
            exc_info = exc_info if state.status is not None else None
            state.replaced, state.status = True, problem.status
            problem_body.append(problem.body)
            start_response(f"{problem.status} {HTTPStatus(problem.status).phrase}",
                           [*problem.headers, ("content-length", str(len(problem.body)))],
                           exc_info)

        def wrapped_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if state.refusal is not None and status.startswith("5") and not state.replaced:
                # The framework turned an uncaught refusal into a 500 (Flask and Django do): answer 402 instead.
                answer_problem(state.refusal, exc_info)
                return lambda data: None
            if state.replaced:
                return lambda data: None
            state.status = _status_code(status)
            if route.headers:
                headers = [*headers, *self.spend_headers(current, {k.lower() for k, _ in headers})]
            return start_response(status, headers, exc_info)

        try:
            result = context.run(self.app, environ, wrapped_start_response)
        except BaseException as exc:
            refusal = _find_refusal(exc)
            if refusal is None or state.replaced:
                finish()
                raise
            try:
                answer_problem(refusal, sys.exc_info())
            except BaseException:
                finish()
                raise
            return _Body(context, problem_body, on_error, finish)
        if state.replaced:
            close = getattr(result, "close", None)
            try:
                if close is not None:
                    context.run(close)
            except Exception:
                log.exception("llmbudget: closing the replaced 500 response failed")
            result = problem_body

        def recover(exc: BaseException) -> list[bytes] | None:
            """The 402 a refusal raised by a generator app before its first chunk becomes, or None."""
            refusal = _find_refusal(exc)
            if refusal is None or state.replaced:
                return None
            answer_problem(refusal, (type(exc), exc, exc.__traceback__))
            return problem_body

        return _Body(context, result, on_error, finish, recover)


_DJANGO_REQUEST = "llmbudget.django_request"
_DJANGO_RESPONSE = "llmbudget.django_response"
_DJANGO_CONTEXT = "llmbudget.django_context"
_DJANGO_USER = "llmbudget.django_user"  # request.user's name, as Django has it


class _InContext:
    """A streamed response's chunks read inside ``context`` (the request's scope), and ``closers`` (the app's
    generator's ``close``, then the request's end: its log line, its budgets' settling) run in it too when
    Django closes the response, read to its end or not: run by Django outside it, a generator's cleanup
    (``finally``) made calls outside every budget of the request."""

    def __init__(self, context: contextvars.Context, chunks: Iterable[Any], closers: list[Callable[[], Any]]) -> None:
        self._context = context
        self._iterator = context.run(iter, chunks)
        self._closers = closers
        # a response Django drops unclosed (a 304 ConditionalGetMiddleware made instead, an outer middleware's
        # error): the request still ends once it is collected (ending twice does nothing)
        if closers:
            weakref.finalize(self, context.run, closers[-1])

    def __iter__(self) -> _InContext:
        return self

    def __next__(self) -> Any:
        return self._context.run(next, self._iterator)

    def close(self) -> None:
        closers, self._closers = self._closers, []
        try:
            for closer in closers[:-1]:
                try:
                    self._context.run(closer)
                except Exception:  # noqa: BLE001 - the app's: logged, and the request still ends
                    log.exception("llmbudget: closing a streamed response failed")
        finally:
            if closers:
                self._context.run(closers[-1])


async def _in_context_async(context: contextvars.Context, chunks: AsyncIterable[Any]) -> AsyncIterator[Any]:
    """``chunks`` read inside ``context`` (an async streamed response's generator, which Django under ASGI reads
    after the request's scope ended: each step runs as a task in that context)."""
    iterator = chunks.__aiter__()

    async def step() -> Any:
        return await iterator.__anext__()

    async def close() -> None:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()

    def in_context(work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        # the same context every step: what the generator sets lasts
        return asyncio.get_running_loop().create_task(work, context=context)

    try:
        while True:
            try:
                yield await in_context(step())
            except StopAsyncIteration:
                return
    finally:
        await in_context(close())


class LLMBudgetDjangoMiddleware:
    """Django middleware: ``MIDDLEWARE = [..., "llmbudget.middleware.LLMBudgetDjangoMiddleware"]``.

    The same as :class:`LLMBudgetWSGIMiddleware` around the project's WSGI application, from inside Django:
    ``django.test.Client`` and ``LiveServerTestCase`` (which never load ``wsgi.py``) see the budgets and 402s
    too, and, placed after ``AuthenticationMiddleware``, ``request.user`` names the tenant (as ``REMOTE_USER``
    does). The policy is ``settings.LLMBUDGET_POLICY`` (a :class:`Policy`), else :meth:`Policy.discover`'s.
    Synchronous (Django adapts it for async views); a ``StreamingHttpResponse``'s (sync) generator runs in the
    request's scope too, and so does an async one's under ASGI.
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        settings = importlib.import_module("django.conf").settings
        policy = getattr(settings, "LLMBUDGET_POLICY", None)
        if policy is not None and not isinstance(policy, Policy):
            raise TypeError(f"settings.LLMBUDGET_POLICY is {type(policy).__name__}; expected a llmbudget Policy")
        self.get_response = get_response
        self._wsgi = LLMBudgetWSGIMiddleware(self._respond, policy=policy or _discovered())

    def process_exception(self, request: Any, exception: Exception) -> Any:
        """A view's uncaught budget refusal: answered here (as the 402, by the WSGI layer), not raised on to
        Django's handler, which would log it as a 500 and make its test client raise it."""
        refusal = _find_refusal(exception)
        state = _wsgi_request.get()
        if refusal is None or state is None:
            return None
        state.refusal = refusal
        return importlib.import_module("django.http").HttpResponse(status=500)  # replaced by the 402

    def _respond(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        response = self.get_response(environ[_DJANGO_REQUEST])  # inside the request's scope
        environ[_DJANGO_RESPONSE] = response
        environ[_DJANGO_CONTEXT] = contextvars.copy_context()
        start_response(f"{response.status_code} {response.reason_phrase}", list(response.items()))
        return []

    def __call__(self, request: Any) -> Any:
        environ = dict(request.META)
        if not environ.get("REMOTE_USER"):
            user = _django_user(request)
            if user is not None:
                # apart from REMOTE_USER, whose text is read back as the UTF-8 bytes a server decoded as latin-1:
                # "Ãª" became "ê", and two users shared one tenant, its cache and its budgets
                environ[_DJANGO_USER] = user
        environ[_DJANGO_REQUEST] = request
        started: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
            started.update(status=status, headers=headers)
            return lambda data: None

        body = self._wsgi(environ, start_response)
        end = getattr(body, "close", None) or (lambda: None)  # the request's end: its log line, its settling
        try:
            content = b"".join(body)  # the 402's problem, or nothing (the app's response is kept whole)
        except BaseException:
            end()
            raise
        response = environ.pop(_DJANGO_RESPONSE, None)  # (held by the request's end, it would never be collected)
        code = _status_code(started.get("status", ""))
        if response is None or code != response.status_code:  # answered by the middleware: a 402, a 400, metrics
            end()
            answer = importlib.import_module("django.http").HttpResponse(content, status=code or 500)
            for name, value in started.get("headers", []):
                answer[name] = value
            return answer
        for name, value in started.get("headers", []):  # the spend headers (headers=True), and x-request-id
            if name.lower().startswith("x-llmbudget-") or (name.lower() == "x-request-id" and name not in response):
                response[name] = value
        if getattr(response, "streaming", False) and not getattr(response, "is_async", False):
            # streamed after this returns: its generator runs in the request's scope, and so does its close (the
            # generator's cleanup) and the request's end, once Django closes the response
            closers = getattr(response, "_resource_closers", None)
            taken: list[Callable[[], Any]] = []
            if isinstance(closers, list):  # Django would run them outside the scope: the app's generator's, an
                taken, closers[:] = list(closers), []  # inner middleware's (GZip's), a file's
            response.streaming_content = _InContext(environ[_DJANGO_CONTEXT], response.streaming_content,
                                                    [*taken, end])
            return response
        end()
        if getattr(response, "streaming", False):  # an async generator, which Django under ASGI reads
            response.streaming_content = _in_context_async(environ[_DJANGO_CONTEXT], response.streaming_content)
        return response
