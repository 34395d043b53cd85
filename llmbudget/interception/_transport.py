"""Transports that wrap a real httpx/httpx2 transport, built once per library.

httpx2 (openai >= 3) and httpx (openai 2.x) share one API, so the classes are
made by :func:`build` from the library module; ``httpx2.py`` and ``httpx.py``
hold one set each. Nothing here decides anything: the pipeline does.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import concurrent.futures.thread  # (imported now: tiktoken imports it, which fails in a settle at exit)
import contextlib
import contextvars
import functools
import gc
import json
import logging
import math
import os
import queue
import socket
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote_plus

from ..cache.worker import set_caller
from ..defer import LINE_UNREAD
from ..ledger.budgets import BudgetStoreUnavailable, WouldWait, no_wait
from ..pipeline import DRAIN_BYTES, DRAIN_S, Attempt, UnreadableRequest, get_engine
from ..providers import Adapter
from ..scope import app_path

log = logging.getLogger("llmbudget.interception")
_T = TypeVar("_T")

_REFUSAL_HEADERS = {
    "content-type": "application/json",
    "x-should-retry": "false",
    "x-llmbudget-refused": "budget",
}


class Transports:
    """The wrapping transport and stream classes for one HTTP library."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.Sync, self.Async = _build(module)

    def wrap(self, transport: Any, *, explicit: bool = False, async_: bool | None = None) -> Any:
        """``transport`` behind llmbudget (already wrapped transports are returned as they are).

        ``async_``: whether the client it serves is async. A transport may be both (``MockTransport``
        subclasses both bases): given the client's kind, a sync client's gets the sync wrapper; it got
        the async one, and every request of that client failed. None: judged from the transport alone.
        """
        if isinstance(transport, (self.Sync, self.Async)):
            return transport
        if async_ is None:
            async_ = isinstance(transport, self.module.AsyncBaseTransport)
        return (self.Async if async_ else self.Sync)(transport, explicit=explicit)


def _begin(request: Any, body: bytes, wanted: tuple[Adapter, str]
           ) -> Attempt | tuple[int, dict[str, str], bytes] | None:
    """The call's Attempt; None to pass it through untouched; or the response that refuses it (a body a budget
    applies to, which llmbudget cannot read)."""
    try:
        adapter, path = wanted
        return get_engine().begin(url=str(request.url), path=path, headers=request.headers, body=body, adapter=adapter)
    except UnreadableRequest as exc:
        log.warning("llmbudget: refused an LLM call whose JSON body cannot be read (%s): a budget applies, and the "
                    "call could be neither priced nor held against it", exc)
        message = (f"llmbudget cannot read this request's JSON body ({exc}), so it can neither price it nor hold it "
                   "against the budget that applies to it; the call was not sent")
        return 400, {**_REFUSAL_HEADERS, "x-llmbudget-refused": "unreadable-request"}, json.dumps(
            {"error": {"message": message, "type": "invalid_request_error", "code": "llmbudget_unreadable_request"}}
        ).encode()
    except Exception:
        log.exception("llmbudget: could not read an LLM request; it passes through untouched")
        return None


def _refusal_or_none(attempt: Attempt) -> Any:
    """None to go ahead, else the response that refuses: 402 over a budget, 503 when a
    fail-closed budget store is unreachable."""
    try:
        refusal = attempt.reserve()
    except WouldWait:  # on the event loop, the SQLite budget file is busy: the caller reserves in a thread
        raise
    except BudgetStoreUnavailable as exc:
        attempt.release()
        return _unavailable(exc)
    except Exception as exc:
        attempt.release()
        if not _fails_closed(attempt):
            log.exception("llmbudget: budget reservation failed; the call goes ahead unbudgeted")
            return None
        # a fail-closed budget refuses whatever made its store fail, as it does when the store is unreachable
        log.exception("llmbudget: budget reservation failed; the call is refused (on_unavailable='closed')")
        return _unavailable(BudgetStoreUnavailable(
            f"llmbudget could not use its budget store ({type(exc).__name__}: {exc}); budgeted calls are refused "
            "until it can (on_unavailable='closed')", store=type(attempt.engine.budget_store).__name__))
    return (402, _REFUSAL_HEADERS, refusal.to_json()) if refusal is not None else None


def _unavailable(exc: BudgetStoreUnavailable) -> tuple[int, dict[str, str], bytes]:
    """The 503 that answers a call a fail-closed budget refuses while its store fails."""
    headers = {**_REFUSAL_HEADERS, "x-llmbudget-refused": "budget-store-unavailable",
               "retry-after": str(max(1, round(exc.retry_after)))}
    return exc.status_code, headers, exc.to_json()


def _fails_closed(attempt: Attempt) -> bool:
    try:
        return attempt.fails_closed()
    except Exception:  # noqa: BLE001 - the budgets cannot even be listed: the call goes ahead, as before
        return False


def _wanted(request: Any, explicit: bool) -> tuple[Adapter, str] | None:
    """The adapter and URL path of an LLM call to intercept; None passes it through."""
    try:
        url = request.url
        path = url.path
        adapter = get_engine().wanted(request.method, url.host, path, request.headers, explicit=explicit)
        if adapter is None and request.method == "POST":  # the hop of a call a 307 or 308 sent to any path
            adapter = request.extensions.get(_REDIRECTED)
        if adapter is None:
            return None
    except Exception:
        log.exception("llmbudget: could not classify a request; it passes through untouched")
        return None
    return adapter, path  # (a body labelled other than JSON too: Engine.begin reads it, as lax servers do)


#: The key, in a request's ``extensions``, of the adapter of the LLM call a 307 or 308 answered: httpx builds the
#: hop it follows with the app's request's extensions (a rewritten request shares that dict), so the hop is read as
#: that call whatever its path is named (a gateway's own route), and no other request is.
_REDIRECTED = "llmbudget.redirected_call"


def _started(attempt: Attempt, response: Any, request: Any) -> None:
    try:
        attempt.start_response(response.status_code, response.headers)
        if response.status_code in (307, 308):
            request.extensions[_REDIRECTED] = attempt.adapter
    except Exception:
        log.exception("llmbudget: could not read response headers")


def _prepare(httpx: ModuleType, request: Any, attempt: Attempt) -> tuple[Any, Any]:
    """Route, cap and reserve; the request to send (rewritten if anything changed) or a refusal body."""
    original_base = attempt.call.base_url
    attempt.plan(app_path.get())  # the app's request path (the middleware's), which routing's never globs name
    return _reserved(httpx, request, attempt, original_base)


def _reserved(httpx: ModuleType, request: Any, attempt: Attempt, original_base: str) -> tuple[Any, Any]:
    """:func:`_prepare` once the call is planned: reserve, then the request to send or a refusal body."""
    refusal = _refusal_or_none(attempt)
    if refusal is not None or not attempt.rewritten:
        return request, refusal
    url = str(request.url)
    headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "content-length"]
    if attempt.usage_added:  # the usage's event is taken out of the events: they must come as they are
        headers = [(k, v) for k, v in headers if k.lower() != "accept-encoding"] + [("accept-encoding", "identity")]
    if attempt.call.base_url != original_base and url.startswith(original_base):
        tier_base, _, tier_query = attempt.call.base_url.partition("?")  # a tier's own query (Azure's api-version)
        url = tier_base + url[len(original_base):]
        path, _, query = url.partition("?")
        if _origin(httpx.URL(url)) == _origin(request.url):
            if tier_query:  # the app's pairs as it wrote them, less the keys the tier sets, then the tier's
                tier_keys = {key for key, _ in parse_qsl(tier_query, keep_blank_values=True)}
                kept = [pair for pair in query.split("&")
                        if pair and unquote_plus(pair.partition("=")[0]) not in tier_keys]
                url = f"{path}?{'&'.join([*kept, tier_query])}"
        else:  # another host: never the app's credentials
            # (nor its Host header: the new URL's is used; nor its query string, which may hold a key:
            # Azure API Management's subscription-key), only the tier's own query
            url = path + (f"?{tier_query}" if tier_query else "")
            headers = [(k, v) for k, v in headers if _goes_elsewhere(k)]
            key = attempt.tier_api_key()
            if key:
                headers.append(("authorization", f"Bearer {key}"))
    rewritten = httpx.Request(request.method, url, headers=headers, content=attempt.request_bytes())
    rewritten.extensions = request.extensions  # the app's own dict (httpx copies one given): see _REDIRECTED
    return rewritten, None


#: The headers a request sent to a tier on another host keeps: what describes the request and the SDK, never
#: a credential (the provider's key, a gateway's such as ``helicone-auth`` or ``x-portkey-api-key``, cookies,
#: the organisation or project), whatever its name: any other header the app or its SDK set is left out.
_KEPT_ELSEWHERE = frozenset({"content-type", "accept", "accept-encoding", "accept-language", "user-agent",
                             "idempotency-key", "openai-beta", "traceparent", "tracestate", "x-request-id"})


def _goes_elsewhere(name: str) -> bool:
    lowered = name.lower()
    return lowered in _KEPT_ELSEWHERE or lowered.startswith("x-stainless-")


def _origin(url: Any) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _refused(response: Any) -> bool:
    """Whether ``response`` is llmbudget's own refusal (a budget's 402, a fail-closed store's 503)."""
    return "x-llmbudget-refused" in response.headers


def _open(httpx: ModuleType, request: Any, attempt: Attempt, path: str, *, semantic: bool = True) -> tuple[Any, Any]:
    """(the request to send, None), or (None, the response that answers it: a cache hit or a refusal).

    ``semantic=False``: the exact tier only; (None, None) when the cache's worker is to be asked next
    (:meth:`Attempt.cache_pending`), and :func:`_resolved` then goes on."""
    attempt.shape_output()
    cached = attempt.lookup_cache(semantic=semantic)
    if cached is not None:
        return None, _cached_response(httpx, cached)
    if attempt.cache_pending() is not None:
        return None, None
    return _answered(httpx, *_prepare(httpx, request, attempt))


def _resolved(httpx: ModuleType, request: Any, attempt: Attempt, found: Any) -> tuple[Any, Any]:
    """:func:`_open` after the cache's worker answered the semantic tier (``found``: a hit, or None)."""
    cached = attempt.resolve_cache(found)
    if cached is not None:
        return None, _cached_response(httpx, cached)
    return _answered(httpx, *_prepare(httpx, request, attempt))


def _answered(httpx: ModuleType, request: Any, refusal: Any) -> tuple[Any, Any]:
    if refusal is not None:
        status, headers, body = refusal
        return None, httpx.Response(status, headers=headers, content=body)
    return request, None


async def _open_async(httpx: ModuleType, request: Any, attempt: Attempt, path: str) -> tuple[Any, Any]:
    """:func:`_open` for the async transport: on the event loop when quick (see :func:`_quick`; the cache
    lookup too when the cache is, see :func:`_cache_work`); when a SQLite budget file turns out busy
    there, the reservation waits for it in a worker thread."""
    if not _quick(attempt):
        client = _worker_client(attempt)
        if client is None:
            return await _in_thread(attempt, _open, httpx, request, attempt, path)
        # a large body, or a blocking store: its work in a thread, and the semantic tier, if it is asked, in the
        # worker (then a second thread job)
        opened = await _in_thread(attempt, _open, httpx, request, attempt, path, semantic=False)
        pending = attempt.cache_pending()
        if opened[0] is not None or opened[1] is not None or pending is None:
            return opened
        return await _in_thread(attempt, _resolved, httpx, request, attempt, await client.search(*pending))
    attempt.shape_output()
    if attempt.engine.cache is not None:
        cached = await _lookup(attempt)
        if cached is not None:
            return None, _cached_response(httpx, cached)
    original_base = attempt.call.base_url
    try:
        with no_wait():
            return _answered(httpx, *_prepare(httpx, request, attempt))
    except WouldWait:
        pass
    return _answered(httpx, *await _in_thread(attempt, _reserved, httpx, request, attempt, original_base))


def _batched(request: Any, attempt: Attempt, path: str) -> concurrent.futures.Future[tuple[int, bytes]]:
    """Queue a deferred call as a line of a Batch API job (``llmbudget.defer("batch")``)."""
    scope = attempt.scope
    return attempt.engine.batcher.submit(url=str(request.url), path=path, headers=dict(request.headers.items()),
                            body=attempt.call.body, tenant=attempt.tenant,
                            request_id=scope.request_id if scope is not None else None)


def _ran(attempt: Attempt, done: concurrent.futures.Future[tuple[int, bytes]]) -> None:
    """Tell ``attempt`` whether its batched call ran though it failed (``Future.job_ran``, see ``defer``): then its
    holds are charged whole, and where no ``--resume`` will record it (its result line did not read), so is its
    record."""
    ran = getattr(done, "job_ran", None)
    attempt.charge_holds = bool(ran)
    attempt.record_holds = ran == LINE_UNREAD


def _settle_orphan(attempt: Attempt, done: concurrent.futures.Future[tuple[int, bytes]]) -> None:
    """The answer of a batched call whose caller gave up: its line ran (and is billed), so it settles and is
    recorded as if it had been read; its hold is kept until then."""
    try:
        status, content = done.result()
        _ran(attempt, done)
        attempt.start_response(status, {"content-type": "application/json"})
        attempt.feed(content)
        attempt.finish(complete=True)
    except Exception:  # noqa: BLE001 - a callback of the batcher's thread: never raise there
        log.exception("llmbudget: settling a batched call whose caller gave up failed")
        attempt.finish(complete=False)


def _batch_response(httpx: ModuleType, request: Any, status: int, content: bytes) -> Any:
    """The answer a batch job gave one call, as if its server had sent it."""
    headers = {"content-type": "application/json", "x-llmbudget-deferred": "batch"}
    if status >= 400:  # a failed, expired or unreadable line: the SDK must not send it again by itself
        headers["x-should-retry"] = "false"
    return httpx.Response(status, headers=headers, content=content, request=request)


def _escalation(request: Any, weak: Attempt, reason: str | None, wanted: tuple[Adapter, str]) -> Attempt | None:
    """A new attempt of the same request on the strong tier, when the weak tier's answer failed a check or
    the tier refused the request (``reason``; None: no escalation)."""
    routing = weak.engine.routing
    if reason is None or routing is None:
        return None
    retry = _begin(request, request.content, wanted)
    if not isinstance(retry, Attempt):  # (read once already: never refused for that)
        return None
    retry.force_tier = routing.strong
    retry.escalated_from = reason
    retry.continues(weak)  # the same call, begun when the weak attempt began
    if weak.record is not None:  # routing paid for the weak answer too: the retry's record takes its saving back
        retry.routing_offset_usd = weak.record.cost_usd + weak.record.routing_saved_usd
    log.info("llmbudget: escalating to tier %r: the %r tier's answer was %s", routing.strong, routing.weak, reason)
    return retry


def _failure_reason(attempt: Attempt, error: BaseException | None = None) -> str | None:
    """Why a tier's failure of a routed call (:meth:`Attempt.tier_failed`) sends it to the strong tier, or None."""
    if error is not None:
        return f"no answer ({type(error).__name__})" if attempt.tier_failed(unreachable=True) else None
    return f"HTTP {attempt.status} from the tier" if attempt.tier_failed() else None


def _kept_weak(attempt: Attempt, why: str = "a budget refused it") -> None:
    log.warning("llmbudget: the escalation of a weak-tier answer that was %s failed (%s); the app gets that "
                "answer (it was paid for)", attempt.escalated_from, why)


def _error_body(read: Callable[[], bytes]) -> bytes:
    """An error answer's body, or b"" when it cannot be read (cut, not in its encoding): the status alone decides."""
    try:
        return read()
    except Exception:  # noqa: BLE001 - whatever reading it raised, routing must not be why the call fails
        return b""


async def _error_body_async(read: Callable[[], Awaitable[bytes]]) -> bytes:
    try:
        return await read()
    except Exception:  # noqa: BLE001 - as _error_body
        return b""


def _without_addition(request: Any, attempt: Attempt, wanted: tuple[Adapter, str], error: bytes) -> Attempt | None:
    """The same call again without what llmbudget added to it, after its server refused it
    (:meth:`Attempt.addition_refused`) with an ``error`` that names it (``pipeline.ADDITIONS``: the cascade's
    log-probabilities, a stream's ``stream_options``, a length directive's system message, the flex tier; a 400
    for another reason, a prompt too long, goes on as any refusal does)."""
    refused = attempt.refused_additions(error)
    if not refused:
        return None
    retry = _begin(request, request.content, wanted)
    if not isinstance(retry, Attempt):
        return None
    retry.without = attempt.without | refused
    # an escalation's (or a failed tier's) retry stays one: the same tier, its reason, the saving it takes back
    retry.force_tier, retry.escalated_from = attempt.force_tier, attempt.escalated_from
    retry.routing_offset_usd = attempt.routing_offset_usd
    retry.continues(attempt)
    return retry


_EXECUTOR: concurrent.futures.ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()


def _executor_after_fork() -> None:
    """In a child just forked: the parent's pool has no threads here (and counts an idle one, so a job queued
    on it would wait forever); the child makes its own, under a new lock."""
    global _EXECUTOR, _EXECUTOR_LOCK
    _EXECUTOR, _EXECUTOR_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_executor_after_fork)


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="llmbudget")
        return _EXECUTOR


# Request bodies up to this size are worked on on the event loop when nothing there may wait: counting
# their tokens takes under a millisecond, less than the SDK's own building of the request.
_QUICK_BODY_BYTES = 8 * 1024
# Answers up to this size are stored in a quick cache on the event loop (storing one serialises it).
_QUICK_ANSWER_BYTES = 64 * 1024


def _quick(attempt: Attempt) -> bool:
    """Whether the call's work may run on the event loop (inside ``no_wait()``).

    Redis stores wait on the network, and a large prompt takes milliseconds to count: on the event loop,
    they would stall every other request of an async server. The rest is tens of microseconds (a SQLite
    budget store or ledger never waits there), and a thread hop costs more than it saves: on a busy
    2-core server, up to twice the CPU per call, in GIL hand-offs. Cache work has its own rule
    (:func:`_cache_work`)."""
    return attempt.size <= _QUICK_BODY_BYTES and not attempt.engine.blocking


async def _cache_work(attempt: Attempt, work: Callable[[], _T], *, quick: bool) -> _T:
    """A cache lookup or store: on the event loop inside ``no_wait()`` when the call is ``quick`` and the
    cache is (``Cache.quick``: a local store with the bundled embedder and verifier, where a short text
    costs a fraction of a millisecond, measured in README's "Performance"); in a worker thread otherwise,
    or as soon as it would wait (the database or index busy, a partition to load, an index to build or
    save, a purge due): it is then done again there, from the start (nothing was changed)."""
    cache = attempt.engine.cache
    if quick and cache is not None and getattr(cache, "quick", False):
        try:
            with no_wait():
                return work()
        except WouldWait:
            pass
    return await _in_thread(attempt, work)


def _worker_client(attempt: Attempt) -> Any:
    """The cache worker's connection for this event loop (remembered in the call's context, for the answer's
    embedding handed over from a worker thread), or None: no worker, or none connected to this loop."""
    worker = getattr(attempt.engine.cache, "worker", None)
    client = worker.client() if worker is not None else None  # (never raises)
    if client is not None:
        set_caller(client)
    return client


async def _lookup(attempt: Attempt, *, quick: bool = True) -> tuple[bytes, str] | None:
    """The cache lookup of an async call: with a cache worker connected to this event loop, the exact tier
    here and the semantic tier in the worker; else all of it here. Here: as :func:`_cache_work` says."""
    client = _worker_client(attempt)
    if client is None:
        return await _cache_work(attempt, attempt.lookup_cache, quick=quick)
    cached = await _cache_work(attempt, functools.partial(attempt.lookup_cache, semantic=False), quick=quick)
    pending = attempt.cache_pending()
    if cached is not None or pending is None:
        return cached
    found = await client.search(*pending)
    return await _cache_work(attempt, functools.partial(attempt.resolve_cache, found), quick=quick)


async def _finish(attempt: Attempt, *, complete: bool, error: BaseException | None = None) -> None:
    """``attempt.finish()``: settling and recording on the event loop when quick, else in a worker thread
    (counting a large prompt's tokens, or a Redis settle, would stall every other request); storing the answer
    in the cache (if it goes there) as :func:`_cache_work` says. ``error``: the call failed (the upstream
    unreachable, a reset or a timeout mid-body); a cancelled one finishes at once, since a thread hop may
    itself be cancelled (trio) before it runs. A long answer (over 64 KiB: a stream of thousands of events) is
    read in a worker thread too: parsing it whole took up to a second of the event loop."""
    if not _quick(attempt) or attempt.answer_bytes > _QUICK_ANSWER_BYTES:
        if error is not None and not isinstance(error, Exception):
            attempt.finish(complete=complete, error=error)
        else:
            await _in_thread(attempt, attempt.finish, complete=complete, error=error)
        return
    with no_wait():
        attempt.finish(complete=complete, error=error, store=False)
    await _store(attempt, complete=complete, error=error)


async def _store(attempt: Attempt, *, complete: bool = True, error: BaseException | None = None) -> None:
    """Store a finished attempt's answer in the cache if it goes there (:meth:`Attempt.stores_answer`)."""
    if attempt.stores_answer(complete=complete, error=error):
        await _cache_work(attempt, attempt.store_answer,
                          quick=_quick(attempt) and attempt.answer_bytes <= _QUICK_ANSWER_BYTES)


async def _in_thread(attempt: Attempt, work: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """``work(...)`` in a worker thread, in this context. It always runs to its end, even when the
    caller is cancelled (what it reserved is then released)."""
    context = contextvars.copy_context()
    job = functools.partial(context.run, work, *args, **kwargs)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # another event loop (trio): anyio's worker threads
        import anyio.to_thread  # httpx's and httpx2's own dependency

        return await anyio.to_thread.run_sync(job)
    future = loop.run_in_executor(_executor(), job)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        # The caller gave up; the work finishes in its thread, and what it reserved is released.
        future.add_done_callback(lambda _: _executor().submit(attempt.release))
        raise


def _settle_dropped(attempt: Attempt) -> None:
    try:
        attempt.finish(complete=False)
    except Exception:  # pragma: no cover - finish never raises; garbage collection must not see it if it did
        log.exception("llmbudget: settling a response nobody read failed")


# Responses nobody read nor closed, waiting for the settling thread. The SDKs' streams are reference cycles, so the
# cyclic garbage collector finalizes them (and closes their responses), at whatever allocation it meets, and that
# may be inside one of llmbudget's own locks (a budget store's, a ledger's): settling there deadlocked the thread.
# A collection only puts the call here (a SimpleQueue's put takes no lock code below it may hold).
_DROPPED: queue.SimpleQueue[Attempt] = queue.SimpleQueue()
_settler: threading.Thread | None = None
_SETTLER_LOCK = threading.Lock()
_settling: Attempt | None = None  # the call the settling thread is on
_UNREAD: dict[int, weakref.finalize[Any, Any]] = {}  # each response's finalizer, by id() of its call, till it runs
_collector: int | None = None  # the thread a garbage collection runs in


def _collection(phase: str, info: dict[str, int]) -> None:
    global _collector
    _collector = threading.get_ident() if phase == "start" else None


gc.callbacks.append(_collection)


def _drained(attempt: Attempt, chunks: Iterator[bytes] | None, wake: Callable[[], None]) -> bool:
    """Read on a stream the app closed after its answer's end, for the usage the server sends after it
    (:meth:`Attempt.awaits_usage`), up to ``DRAIN_BYTES`` and ``DRAIN_S``; True when it came, or the stream's end.
    The reads run in a thread of their own, one at a time as asked, so that a server that sends nothing more
    holds the app's ``close()`` for ``DRAIN_S`` at most, not for the client's read timeout (600 s with the
    SDK's); then ``wake()`` ends the read it waits in (the connection shut down), and the thread with it. Never
    in a garbage collection."""
    if chunks is None or _collector == threading.get_ident() or not attempt.awaits_usage():
        return False
    asks: queue.SimpleQueue[bool] = queue.SimpleQueue()
    got: queue.SimpleQueue[bytes | BaseException | None] = queue.SimpleQueue()

    def reader() -> None:
        while asks.get():
            try:
                got.put(next(chunks, None))
            except BaseException as exc:  # noqa: BLE001 - handed to the closing thread, which settles
                got.put(exc)
                return

    threading.Thread(target=reader, name="llmbudget-drain", daemon=True).start()
    deadline, read = time.monotonic() + DRAIN_S, 0
    try:
        while True:
            asks.put(True)
            try:
                chunk = got.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:  # nothing more in time: settled from what was read
                wake()
                return False
            if chunk is None:  # the stream's end
                return True
            if isinstance(chunk, BaseException):
                return False
            read += len(chunk)
            if (ended := _read_on(attempt, chunk, read)) is not None:
                return ended
    finally:
        asks.put(False)


def _read_on(attempt: Attempt, chunk: bytes, read: int) -> bool | None:
    """Take a chunk a stream was read on for (:func:`_drained`), ``read`` bytes so far: None to read on, else
    whether its usage came."""
    attempt.feed(chunk)
    if not attempt.awaits_usage():
        return attempt.usage_came()
    return False if read > DRAIN_BYTES else None


async def _drained_async(attempt: Attempt, chunks: AsyncIterator[bytes] | None) -> bool:
    """:func:`_drained` for an async stream, under asyncio (a trio app's is settled from what was read)."""
    if chunks is None or not attempt.awaits_usage():
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    try:  # not in a scope already cancelled (a client gone): a read cut there left httpcore's pool a closed
        import anyio  # connection (anyio comes with httpx)

        if anyio.current_effective_deadline() == -math.inf:
            return False
    except Exception:  # noqa: BLE001 - a task anyio does not know: read on
        pass

    async def rest() -> bool:
        read = 0
        async for chunk in chunks:
            read += len(chunk)
            if (ended := _read_on(attempt, chunk, read)) is not None:
                return ended
        return True

    try:
        return await asyncio.wait_for(rest(), DRAIN_S)
    except Exception:  # noqa: BLE001 - out of time too: settled from what was read (a cancel goes on up)
        return False


def _settle_later(attempt: Attempt) -> bool:
    """Hand ``attempt``'s settle to the settling thread when this thread runs a garbage collection (the code it
    interrupted may hold the locks settling takes); False: settle it now (also where no settling thread could
    be started: at interpreter shutdown). True too when it is settled already: most responses are, when their
    stream goes."""
    if attempt.record is not None:  # settled already (read to its end, or closed): nothing to hand over
        return True
    if _collector != threading.get_ident() or _settler is None:
        return False
    _DROPPED.put(attempt)
    return True


def _dropped(attempt: Attempt) -> None:
    """The finalizer of a response nobody read nor closed (run by a collection, by the last reference's owner
    letting it go, or at exit)."""
    _UNREAD.pop(id(attempt), None)
    if not _settle_later(attempt):
        _settle_dropped(attempt)


def _settle_each_dropped() -> None:
    global _settling
    while True:
        _settling = _DROPPED.get()
        _settle_dropped(_settling)
        _settling = None


def _settle_dropped_at_exit() -> None:
    """Before the ledgers write what they hold at exit (their hooks run after this one): settle the responses
    still unread (weakref's own exit hook may run after the ledgers'), what waits for the settling thread (a
    daemon: it may never run again), and let the one it is on end (for at most 5 s)."""
    enabled = gc.isenabled()
    gc.disable()  # no collection inside these settles' locks
    try:
        for finalizer in list(_UNREAD.values()):
            finalizer()  # (once: weakref's hook does not run it again)
        while True:
            try:
                attempt = _DROPPED.get_nowait()
            except queue.Empty:
                break
            _settle_dropped(attempt)
    finally:
        if enabled:
            gc.enable()
    deadline = time.monotonic() + 5.0
    while _settling is not None and time.monotonic() < deadline:
        time.sleep(0.005)


atexit.register(_settle_dropped_at_exit)


def _settler_after_fork() -> None:
    """In a child just forked: a queue of its own (the parent settles what it had queued) and no thread yet."""
    global _DROPPED, _settler, _SETTLER_LOCK, _settling
    _DROPPED, _settler, _SETTLER_LOCK, _settling = queue.SimpleQueue(), None, threading.Lock(), None
    _UNREAD.clear()  # (the parent's responses: weakref's own exit hook still runs their finalizers, as before)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_settler_after_fork)


def _settle_when_dropped(stream: Any, attempt: Attempt) -> None:
    """A response the app never reads nor closes still settles: its hold is released and its record written
    (an estimate) when the stream object is garbage-collected, not when the reservation's TTL runs out."""
    global _settler
    if _settler is None:
        with _SETTLER_LOCK:
            if _settler is None:
                settler = threading.Thread(target=_settle_each_dropped, name="llmbudget-dropped", daemon=True)
                try:
                    settler.start()
                except RuntimeError:  # at interpreter shutdown (Python 3.12 refuses new threads): settled inline
                    pass
                else:
                    _settler = settler
    _UNREAD[id(attempt)] = weakref.finalize(stream, _dropped, attempt)


_BODY_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding"})


def _unprobed(httpx: ModuleType, response: Any, attempt: Attempt) -> Any:
    """The read weak-tier response as the app asked for it: without the cascade's log-probabilities."""
    body = attempt.unprobed_body()
    if body is None:
        return response
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _BODY_HEADERS]
    return httpx.Response(response.status_code, headers=headers, content=body, extensions=response.extensions)


def _cached_response(httpx: ModuleType, cached: tuple[bytes, str]) -> Any:
    """A hit's response, with a request id of its own as a provider's carries one (the SDKs' ``_request_id``):
    ``x-request-id`` (OpenAI's) and ``request-id`` (Anthropic's), each ``llmbudget-cache-...``."""
    body, content_type = cached
    ident = f"llmbudget-cache-{uuid.uuid4().hex}"
    return httpx.Response(200, headers={"content-type": content_type, "x-request-id": ident, "request-id": ident},
                          content=body)


def _build(httpx: ModuleType) -> tuple[type, type]:
    # no answer came (a tier on another host that could not be reached or dropped the connection): a routed call
    # goes to the strong tier (see Attempt.tier_failed); any other call's error is the app's. Not after waiting out
    # the app's own timeout for an answer (or a pooled connection): the strong tier's would double it.
    _NO_ANSWER = httpx.TransportError
    _WAITED = (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)
    class SyncStream(httpx.SyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, inner: Any, attempt: Attempt, extensions: Any = None) -> None:
            self._inner = inner
            self._attempt = attempt
            self._chunks: Iterator[bytes] | None = None  # the inner stream's, as the app's reading left it
            self._extensions = extensions  # the response's (httpcore's network stream: its socket)
            _settle_when_dropped(self, attempt)

        def _wake(self) -> None:
            """End a read of this response blocked in another thread (closing a socket does not wake it):
            its connection is shut down."""
            extensions = self._extensions if isinstance(self._extensions, dict) else {}
            if extensions.get("http_version", b"HTTP/1.1") != b"HTTP/1.1":  # an HTTP/2 connection carries others'
                return
            network = extensions.get("network_stream")
            with contextlib.suppress(Exception):
                sock = network.get_extra_info("socket") if network is not None else None
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)

        def __iter__(self) -> Iterator[bytes]:
            attempt = self._attempt
            if self._chunks is None:
                self._chunks = iter(self._inner)
            try:
                for chunk in self._chunks:
                    shown = attempt.pass_on(chunk)
                    if shown:
                        yield shown
                if rest := attempt.shown_rest():
                    yield rest
            except Exception as exc:  # a reset or a timeout mid-body: the app gets it too, so does the record
                attempt.finish(complete=False, error=exc)
                raise
            attempt.finish(complete=True)

        def close(self) -> None:
            complete = False
            try:
                try:
                    complete = _drained(self._attempt, self._chunks, self._wake)
                finally:
                    self._inner.close()
            finally:
                if not _settle_later(self._attempt):  # (a collection closes a stream the app dropped half read)
                    self._attempt.finish(complete=complete)

    class AsyncStream(httpx.AsyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, inner: Any, attempt: Attempt) -> None:
            self._inner = inner
            self._attempt = attempt
            self._chunks: AsyncIterator[bytes] | None = None  # the inner stream's, as the app's reading left it
            _settle_when_dropped(self, attempt)

        async def __aiter__(self) -> AsyncIterator[bytes]:
            attempt = self._attempt
            if self._chunks is None:
                self._chunks = aiter(self._inner)
            try:
                async for chunk in self._chunks:
                    shown = attempt.pass_on(chunk)
                    if shown:
                        yield shown
                if rest := attempt.shown_rest():
                    yield rest
            except Exception as exc:  # a reset or a timeout mid-body: the app gets it too, so does the record
                await _finish(attempt, complete=False, error=exc)
                raise
            await _finish(attempt, complete=True)

        async def aclose(self) -> None:
            complete = False
            try:
                try:
                    complete = await _drained_async(self._attempt, self._chunks)
                finally:  # (cancelled while it read on: an anyio scope's cancel, a client gone)
                    await self._inner.aclose()
            finally:
                if self._attempt.record is None:  # read to its end, it is settled already: no thread hop
                    await _finish(self._attempt, complete=complete)

    class SentBody(httpx.SyncByteStream, httpx.AsyncByteStream):  # type: ignore[name-defined,misc]
        """A request body that notes, once the connection has taken its last byte, that the provider has the
        request whole (:attr:`Attempt.sent`): a call cancelled after that is billed upstream all the same."""

        def __init__(self, inner: Any, attempt: Attempt) -> None:
            self._inner = inner
            self._attempt = attempt

        def __iter__(self) -> Iterator[bytes]:
            self._attempt.sent = False  # sent again (a connection lost, a transport's own retry): not whole yet
            yield from self._inner
            self._attempt.sent = True

        async def __aiter__(self) -> AsyncIterator[bytes]:
            self._attempt.sent = False
            async for chunk in self._inner:
                yield chunk
            self._attempt.sent = True

        def close(self) -> None:
            self._inner.close()

        async def aclose(self) -> None:
            await self._inner.aclose()

    def _watch_sending(request: Any, attempt: Attempt) -> None:
        if isinstance(request.stream, (httpx.SyncByteStream, httpx.AsyncByteStream)):
            request.stream = SentBody(request.stream, attempt)

    def _wrap_response(response: Any, stream: Any, attempt: Attempt) -> Any:
        headers = response.headers
        if attempt.edits_events() and "content-length" in headers:  # the app gets fewer bytes than were sent
            headers = [(k, v) for k, v in headers.multi_items() if k.lower() != "content-length"]
        elif not hasattr(response, "_content"):  # not read yet: the client reads it through ``stream``
            response.stream = stream
            return response
        return httpx.Response(
            status_code=response.status_code,
            headers=headers,
            stream=stream,
            extensions=response.extensions,
        )

    class SyncTransport(httpx.BaseTransport):  # type: ignore[name-defined,misc]
        """Puts every LLM call through llmbudget, then through ``inner``."""

        def __init__(self, inner: Any = None, *, explicit: bool = True) -> None:
            self.inner = inner if inner is not None else httpx.HTTPTransport()
            self.explicit = explicit

        def handle_request(self, request: Any) -> Any:
            wanted = _wanted(request, self.explicit)
            if wanted is None:
                return self.inner.handle_request(request)
            attempt = _begin(request, request.read(), wanted)
            if attempt is None:
                return self.inner.handle_request(request)
            if isinstance(attempt, tuple):  # refused
                return _answered(httpx, request, attempt)[1]
            path = wanted[1]
            try:
                attempt, response = self._sent(request, attempt, wanted)
            except _NO_ANSWER as exc:  # a tier on another host that gave no answer: the strong tier's turn
                retry = None if isinstance(exc, _WAITED) else _escalation(
                    request, attempt, _failure_reason(attempt, exc), wanted)
                if retry is None:
                    raise
                return self._sent(request, retry, wanted)[1]
            retry = _escalation(request, attempt, _failure_reason(attempt), wanted)
            if retry is not None:  # a 4xx or 5xx: nothing to keep, not even when the retry is refused
                response.close()
                return self._sent(request, retry, wanted)[1]
            if not (attempt.may_escalate() and attempt.status == 200):
                return response
            response.read()  # settles the weak tier's attempt
            retry = _escalation(request, attempt, attempt.escalation_reason(), wanted)
            if retry is None:
                attempt.judged = True  # it passed: it may be cached now
                if attempt.stores_answer(complete=True):
                    attempt.store_answer()
                return _unprobed(httpx, response, attempt)
            retry.has_fallback = True
            sent, answer = _open(httpx, request, retry, path)
            if answer is not None and _refused(answer):
                _kept_weak(retry)
                return _unprobed(httpx, response, attempt)
            if answer is None:
                try:
                    answer = self._send(sent, retry, path)
                except Exception as exc:  # noqa: BLE001 - the strong tier failed: the weak answer is kept
                    _kept_weak(retry, type(exc).__name__)
                    return _unprobed(httpx, response, attempt)
                if retry.retry_failed():
                    answer.close()
                    _kept_weak(retry, f"HTTP {answer.status_code}")
                    return _unprobed(httpx, response, attempt)
            response.close()
            return answer

        def _sent(self, request: Any, attempt: Attempt, wanted: tuple[Adapter, str]) -> tuple[Attempt, Any]:
            """The attempt and its response; sent again without what llmbudget added, where the server refused
            it (:func:`_without_addition`)."""
            response = self._through(request, attempt, wanted[1])
            if attempt.addition_refused():
                plain = _without_addition(request, attempt, wanted, _error_body(response.read))
                if plain is not None:  # the server takes no log-probabilities, or no stream_options
                    response.close()
                    attempt, response = plain, self._through(request, plain, wanted[1])
            return attempt, response

        def _through(self, request: Any, attempt: Attempt, path: str) -> Any:
            request, answer = _open(httpx, request, attempt, path)
            if answer is not None:
                return answer
            return self._send(request, attempt, path)

        def _send(self, request: Any, attempt: Attempt, path: str) -> Any:
            pending = None
            try:
                if attempt.defer_mode == "batch":
                    pending = _batched(request, attempt, path)
                    status, content = pending.result()
                    _ran(attempt, pending)
                    response = _batch_response(httpx, request, status, content)
                else:
                    _watch_sending(request, attempt)
                    response = self.inner.handle_request(request)
            except BaseException as exc:
                if pending is not None and not pending.done():
                    # the caller was interrupted (KeyboardInterrupt, a worker's SystemExit): its line runs all the
                    # same, and is billed: settled and recorded once the job answers, its hold kept until then
                    pending.add_done_callback(functools.partial(_settle_orphan, attempt))
                    raise
                attempt.finish(complete=False, error=exc)
                raise
            _started(attempt, response, request)
            return _wrap_response(response, SyncStream(response.stream, attempt, response.extensions), attempt)

        def close(self) -> None:
            self.inner.close()

        def __enter__(self) -> Any:
            self.inner.__enter__()
            return self

        def __exit__(self, *args: Any) -> None:
            self.inner.__exit__(*args)

    class AsyncTransport(httpx.AsyncBaseTransport):  # type: ignore[name-defined,misc]
        """Puts every LLM call through llmbudget, then through ``inner``."""

        def __init__(self, inner: Any = None, *, explicit: bool = True) -> None:
            self.inner = inner if inner is not None else httpx.AsyncHTTPTransport()
            self.explicit = explicit

        async def handle_async_request(self, request: Any) -> Any:
            wanted = _wanted(request, self.explicit)
            if wanted is None:
                return await self.inner.handle_async_request(request)
            attempt = _begin(request, await request.aread(), wanted)
            if attempt is None:
                return await self.inner.handle_async_request(request)
            if isinstance(attempt, tuple):  # refused
                return _answered(httpx, request, attempt)[1]
            path = wanted[1]
            try:
                attempt, response = await self._sent(request, attempt, wanted)
            except _NO_ANSWER as exc:  # a tier on another host that gave no answer: the strong tier's turn
                retry = None if isinstance(exc, _WAITED) else _escalation(
                    request, attempt, _failure_reason(attempt, exc), wanted)
                if retry is None:
                    raise
                return (await self._sent(request, retry, wanted))[1]
            retry = _escalation(request, attempt, _failure_reason(attempt), wanted)
            if retry is not None:  # a 4xx or 5xx: nothing to keep, not even when the retry is refused
                await response.aclose()
                return (await self._sent(request, retry, wanted))[1]
            if not (attempt.may_escalate() and attempt.status == 200):
                return response
            await response.aread()  # settles the weak tier's attempt
            retry = _escalation(request, attempt, attempt.escalation_reason(), wanted)
            if retry is None:
                attempt.judged = True  # it passed: it may be cached now
                await _store(attempt)
                return _unprobed(httpx, response, attempt)
            retry.has_fallback = True
            sent, answer = await _open_async(httpx, request, retry, path)
            if answer is not None and _refused(answer):
                _kept_weak(retry)
                return _unprobed(httpx, response, attempt)
            if answer is None:
                try:
                    answer = await self._send(sent, retry, path)
                except Exception as exc:  # noqa: BLE001 - the strong tier failed: the weak answer is kept
                    _kept_weak(retry, type(exc).__name__)
                    return _unprobed(httpx, response, attempt)
                if retry.retry_failed():
                    await answer.aclose()
                    _kept_weak(retry, f"HTTP {answer.status_code}")
                    return _unprobed(httpx, response, attempt)
            await response.aclose()
            return answer

        async def _sent(self, request: Any, attempt: Attempt, wanted: tuple[Adapter, str]) -> tuple[Attempt, Any]:
            """The attempt and its response; sent again without what llmbudget added, where the server refused
            it (:func:`_without_addition`)."""
            response = await self._through(request, attempt, wanted[1])
            if attempt.addition_refused():
                plain = _without_addition(request, attempt, wanted, await _error_body_async(response.aread))
                if plain is not None:  # the server takes no log-probabilities, or no stream_options
                    await response.aclose()
                    attempt, response = plain, await self._through(request, plain, wanted[1])
            return attempt, response

        async def _through(self, request: Any, attempt: Attempt, path: str) -> Any:
            request, answer = await _open_async(httpx, request, attempt, path)
            if answer is not None:
                return answer
            return await self._send(request, attempt, path)

        async def _send(self, request: Any, attempt: Attempt, path: str) -> Any:
            try:
                if attempt.defer_mode == "batch":
                    pending = _batched(request, attempt, path)
                    try:  # shielded: a caller that gives up does not take its line out of the job
                        status, content = await asyncio.shield(asyncio.wrap_future(pending))
                    except asyncio.CancelledError:
                        pending.add_done_callback(functools.partial(_settle_orphan, attempt))
                        raise
                    _ran(attempt, pending)
                    response = _batch_response(httpx, request, status, content)
                else:
                    _watch_sending(request, attempt)
                    response = await self.inner.handle_async_request(request)
            except BaseException as exc:
                if not (attempt.defer_mode == "batch" and isinstance(exc, asyncio.CancelledError)):
                    await _finish(attempt, complete=False, error=exc)  # (a batched one settles when answered)
                raise
            _started(attempt, response, request)
            return _wrap_response(response, AsyncStream(response.stream, attempt), attempt)

        async def aclose(self) -> None:
            await self.inner.aclose()

        async def __aenter__(self) -> Any:
            await self.inner.__aenter__()
            return self

        async def __aexit__(self, *args: Any) -> None:
            await self.inner.__aexit__(*args)

    SyncTransport.__qualname__ = SyncTransport.__name__ = "LLMBudgetTransport"
    AsyncTransport.__qualname__ = AsyncTransport.__name__ = "AsyncLLMBudgetTransport"
    SyncTransport.__module__ = AsyncTransport.__module__ = f"llmbudget.interception.{httpx.__name__}"
    return SyncTransport, AsyncTransport
