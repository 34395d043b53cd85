"""The pipeline every intercepted call goes through, written once for sync and async transports.

The transports do the I/O; this module decides. For one request:
``Engine.begin`` parses it (a non-LLM or unreadable request gets ``None``: pass
it through untouched) and returns an :class:`Attempt`; ``Attempt.reserve``
holds the worst case against every budget in scope (or returns a
:class:`~llmbudget.ledger.Refusal`); the transport sends and feeds the response
bytes to ``Attempt.feed`` as they pass; ``Attempt.finish`` prices the usage the
provider reported (or an estimate for a cut stream), settles the
reservations and records the attempt.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import itertools
import json
import logging
import os
import re
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ParamSpec
from urllib.parse import parse_qsl, urlencode, urlsplit

from . import tokens
from .breakpoints import Breakpoints, cache_write_ttls
from .calls import MAX_TOKENS, Call, SpendRecord, Usage
from .caps import apply_cap, has_limit, plain_model, reasoning_model, suited, thinks
from .defer import Batcher
from .encodings import Decoder, codings, decoder_for
from .ledger.budgets import (
    Budget,
    BudgetStore,
    BudgetStoreUnavailable,
    MemoryBudgetStore,
    Refusal,
    Reservation,
    WouldWait,
    budget_list,
)
from .ledger.records import Ledger, MemoryLedger
from .output import Output, apply_directive, schema_cap, wants_json
from .prefix import PrefixWatch
from .pricing import DEFERRED_TIERS, PriceLike, Pricing
from .providers import Adapter, ResponseState, adapter_for_path
from .providers._base import (
    WEB_SEARCH_RESULT_TOKENS,
    _count,
    filled_usage,
    output_as_reported,
    tool_arguments,
)
from .scope import Scope, current_scope

if TYPE_CHECKING:
    from .cache.cache import Cache, CacheLookup
    from .routing.tiers import Routing

__all__ = ["Engine", "Attempt", "configure", "get_engine", "set_engine"]

log = logging.getLogger("llmbudget.pipeline")
#: The head of an error object a provider sends instead of an answer: OpenAI's ``{"error": ...}``, Anthropic's
#: ``{"type": "error", ...}`` (any spacing).
_ERROR_OBJECT = re.compile(rb'\s*\{\s*"(?:error"|type"\s*:\s*"error")').match
#: Set by ``llmbudget replay`` for a recorded line the app streamed (replayed as one JSON answer): the call is
#: judged as the stream it was, never probed for log-probabilities nor escalated, as live.
REPLAYED_STREAM: contextvars.ContextVar[bool] = contextvars.ContextVar("llmbudget_replayed_stream", default=False)

#: What llmbudget adds to a request by itself that a server may refuse, with the words by which a refusal (HTTP
#: 400) names it: the cascade's log-probabilities, a stream's usage option, a length directive's system message
#: (o1-mini takes none, nor do some self-hosted chat templates), the flex tier (where the model has none). The
#: call is then sent again without it, and the (base URL, model) that refused it is sent none from then on.
ADDITIONS: dict[str, tuple[bytes, ...]] = {
    "probe": (b"logprob",),
    "usage_option": (b"stream_options",),
    # (not a bare "system": "rejected as a result of our safety system" is no refusal of the directive)
    "directive": (b"'system'", b'"system"', b"system role", b"system message", b"system prompt", b"role: system",
                  b"'developer'", b'"developer"', b"developer role", b"developer message", b"].role"),
    "flex": (b"service_tier", b"flex ", b"'flex'", b'"flex"'),
}
_REFUSED_NOTE = {
    "probe": "refuses log-probabilities: the cascade cannot judge its answers, which stand as they are",
    "usage_option": "refuses stream_options: its streams, which report no usage then, are priced from the text they "
                    "stream (its hidden reasoning is not in it)",
    "directive": "refuses the length directive's system message: its calls go without the directive",
    "flex": "refuses the flex service tier: its deferred calls go at the standard tier",
}

#: Set by ``llmbudget replay`` around its own calls, which recorded traffic answers: nobody's spend, so not shown to
#: :func:`watch_every_engine`'s observers (the app's own calls, in its other threads, still are).
SIMULATED: contextvars.ContextVar[bool] = contextvars.ContextVar("llmbudget_simulated", default=False)

#: The ``SpendRecord.sequence`` of the call this thread or task is making (its first attempt's: an SDK's retry of
#: it is the same call, begun when it began).
_CALL_SEQUENCE: contextvars.ContextVar[tuple[int, tuple[str, int] | None]] = contextvars.ContextVar(
    "llmbudget_call_sequence", default=(0, None))

#: Responses larger than this are passed through without being read for usage.
MAX_BODY_BYTES = 64 * 1024 * 1024
#: The largest ``input_estimate_margin`` taken: a larger pad (or infinity, or NaN) would price no reservation.
MAX_INPUT_ESTIMATE_MARGIN = 100
#: Of a body over MAX_BODY_BYTES, this many first and last bytes are kept: the provider's usage is at its end
#: (OpenAI, Anthropic's output count) or its start (a JSON body that puts ``usage`` first, Anthropic's input count).
_TAIL_BYTES = 1 << 16
Observer = Callable[[SpendRecord], None]


def _check_part(name: str, value: object, methods: tuple[str, ...], expected: str) -> None:
    """A part given to :class:`Engine` that is not what it takes is a TypeError now, not a failure on every
    call (a budget store that cannot reserve would let every call through unbudgeted). A string in
    particular: a policy file takes a path or a URL; in Python the object is built by its class."""
    if value is None or (not isinstance(value, type) and all(callable(getattr(value, m, None)) for m in methods)):
        return
    hint = " (a path or URL is what a policy file takes; in Python, build the object)" if isinstance(
        value, (str, os.PathLike)) else ""
    raise TypeError(f"Engine({name}=...) must be {expected}, got {value!r}{hint}")


#: The fields of an answer (chat, completions, Responses, Messages), as a body that is not whole JSON shows them.
_ANSWER_SHAPE = re.compile(rb'"(?:choices|output|content|usage)"\s*:|"object"\s*:\s*"(?:chat\.completion|text_completion'
                           rb'|response)"|"type"\s*:\s*"message"')


class UnreadableRequest(ValueError):
    """An LLM call whose JSON body llmbudget cannot read (nested past Python's recursion limit, an integer of more
    than 4,300 digits, bytes that are not UTF-8) while a budget applies: refused (HTTP 400), since it could be
    neither priced nor held against the budget. Without a budget such a body passes through untouched."""


class Engine:
    """The configuration calls are judged by: prices, budgets, where records go.

    Keyword-only options:

    - ``prices``: price overrides (see :class:`~llmbudget.pricing.Pricing`), or ``pricing``: a ready Pricing.
    - ``budgets``: budgets for every call (per request, tenant or globally; see :class:`Budget`).
    - ``ledger``: where records go (default: in memory); ``budget_store``: where tenant and
      global counters live (default: in memory; use a SQLite store for several processes).
    - ``hosts``: hosts whose LLM API paths (OpenAI's, Anthropic's ``/v1/messages``) are intercepted
      from any client (requests the openai and anthropic SDKs make are recognised on every host).
    - ``default_max_output_tokens``: the output assumed when reserving for a request that sets no cap.
    - ``default_tenant``: the tenant of calls made outside any scope that names one.
    - ``cache``: a :class:`~llmbudget.cache.Cache` answering repeated questions (default: none).
    - ``routing``: a :class:`~llmbudget.routing.Routing` sending requests to the cheapest tier that will do.
    - ``prompt_cache_keys``: give OpenAI requests that lack one a ``prompt_cache_key`` (stable per
      tenant and system prompt), so repeated prefixes land on the provider's prompt cache.
    - ``prefix_watch``: note where each request's stable prefix (tools, system, earlier turns) first
      differs from near-identical earlier ones, so reports can say why a provider's prompt cache misses
      (see ``llmbudget.prefix``).
    - ``breakpoints``: ``"auto"`` adds an Anthropic cache breakpoint to Messages requests without one
      whose stable prefix this tenant sent before within the cache's lifetime (see
      ``llmbudget.breakpoints``); ``"off"`` (the default) never does.
    - ``output``: a length directive (:class:`~llmbudget.output.Output`) for every call that does not say
      how long to answer; routes and tiers may set their own.
    - ``batcher``: a :class:`~llmbudget.defer.Batcher` for ``llmbudget.defer("batch")`` calls (how long
      it gathers calls, how often it polls, the folder that keeps jobs across restarts).
    - ``input_estimate_margin``: reservations count the estimated input tokens times this
      (plus 8), since a server's chat template or tokenizer may count more than tiktoken.
    """

    def __init__(
        self,
        *,
        prices: Mapping[str, PriceLike] | None = None,
        pricing: Pricing | None = None,
        budgets: Sequence[Budget] = (),
        ledger: Ledger | None = None,
        budget_store: BudgetStore | None = None,
        hosts: Iterable[str] = ("api.openai.com", "api.anthropic.com"),
        default_max_output_tokens: int = 4096,
        default_tenant: str = "default",
        cache: Cache | None = None,
        routing: Routing | None = None,
        prompt_cache_keys: bool = True,
        input_estimate_margin: float = 1.25,
        prefix_watch: bool = True,
        breakpoints: str = "off",
        output: Output | None = None,
        batcher: Batcher | None = None,
    ) -> None:
        if pricing is not None and prices is not None:
            raise TypeError("pass either prices= (overrides) or pricing= (a Pricing), not both")
        if not 0 < default_max_output_tokens <= MAX_TOKENS:
            raise ValueError(f"default_max_output_tokens must be a positive number of tokens up to {MAX_TOKENS:,}, "
                             f"got {default_max_output_tokens!r}")
        _check_part("pricing", pricing, ("cost",), "a llmbudget.Pricing")
        _check_part("ledger", ledger, ("add",),
                    "a Ledger: llmbudget.ledger.SQLiteLedger(path) or RedisLedger(url)")
        _check_part("budget_store", budget_store, ("reserve", "settle"),
                    "a BudgetStore: llmbudget.ledger.SQLiteBudgetStore(path) or RedisBudgetStore(url)")
        _check_part("cache", cache, ("lookup", "save"), 'a llmbudget.Cache: llmbudget.Cache(path) or Cache("redis://...")')
        _check_part("routing", routing, ("decide",), "a llmbudget.Routing")
        _check_part("batcher", batcher, ("submit",), "a llmbudget.defer.Batcher")
        self.pricing = pricing if pricing is not None else Pricing(prices)
        self.budgets = budget_list(budgets, "budgets")
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()
        self.budget_store: BudgetStore = budget_store if budget_store is not None else MemoryBudgetStore()
        self.hosts = frozenset(host.lower() for host in hosts)
        self.default_max_output_tokens = default_max_output_tokens
        if not isinstance(default_tenant, str) or not default_tenant:
            raise ValueError(f"default_tenant must be a non-empty string, got {default_tenant!r}")
        self.default_tenant = default_tenant
        self.cache = cache
        self.routing = routing
        self.prompt_cache_keys = prompt_cache_keys
        self.prefix_watch = PrefixWatch() if prefix_watch else None
        if breakpoints not in ("off", "auto"):
            raise ValueError(f'breakpoints must be "off" or "auto", got {breakpoints!r}')
        self.breakpoints = Breakpoints(self.pricing) if breakpoints == "auto" else None
        self.output = Output.of(output, "Engine(output=...)")
        self._batcher = batcher
        if not 1 <= input_estimate_margin <= MAX_INPUT_ESTIMATE_MARGIN:  # NaN fails this too
            raise ValueError(f"input_estimate_margin must be a number from 1 to {MAX_INPUT_ESTIMATE_MARGIN} (it pads "
                             f"estimates, never shrinks them), got {input_estimate_margin!r}")
        self.input_estimate_margin = input_estimate_margin
        #: Base URLs that billed a call at the priority tier it did not ask for (an OpenAI project whose default
        #: tier is priority): their calls that name no tier are reserved at the priority price from then on.
        self.priority_by_default: set[str] = set()
        #: Per addition of :data:`ADDITIONS`, the (base URL, model) that answered it with HTTP 400 and the same
        #: call without it with an answer: their calls are sent without it from then on.
        self.refused_additions: dict[str, set[tuple[str, str]]] = {name: set() for name in ADDITIONS}
        self._unreadable_warned = False
        self._refusal_observers: tuple[Callable[[Refusal, Scope | None], None], ...] = ()
        self._observers: tuple[Observer, ...] = ()
        self._observers_lock = threading.Lock()
        #: What periodic budgets read the time from (a replay fixes it, so its whole file is one period).
        self.clock: Callable[[], float] = time.time

    @property
    def batcher(self) -> Batcher:
        """What runs ``llmbudget.defer("batch")`` calls as Batch API jobs (made with defaults on first use)."""
        if self._batcher is None:
            self._batcher = Batcher()
        return self._batcher

    @property
    def blocking(self) -> bool:
        """Whether recording or budgeting a call may wait on the network (a Redis store): the async
        transport then runs that work in a worker thread, off the event loop. SQLite stores and ledgers
        never wait there (see :func:`llmbudget.ledger.budgets.no_wait`); cache work follows its own rule
        (``Cache.quick``)."""
        return any(getattr(part, "blocking", True) for part in (self.ledger, self.budget_store))

    # -- observers (the pytest plugin, metrics) ------------------------------------------------

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(record)`` for every settled attempt, whatever scope it ran in."""
        with self._observers_lock:
            self._observers = (*self._observers, observer)

    def remove_observer(self, observer: Observer) -> None:
        with self._observers_lock:
            self._observers = tuple(o for o in self._observers if o != observer)

    def add_refusal_observer(self, observer: Callable[[Refusal, Scope | None], None]) -> None:
        """Call ``observer(refusal, scope)`` whenever a budget refuses a call (caught by the app or not)."""
        with self._observers_lock:
            self._refusal_observers = (*self._refusal_observers, observer)

    def remove_refusal_observer(self, observer: Callable[[Refusal, Scope | None], None]) -> None:
        with self._observers_lock:
            self._refusal_observers = tuple(o for o in self._refusal_observers if o != observer)

    def refused(self, refusal: Refusal, scope: Scope | None) -> None:
        """Tell the scope and the refusal observers about a refusal. Never raises."""
        if scope is not None:
            scope.refusals.append(refusal)
        for observer in self._refusal_observers:
            try:
                observer(refusal, scope)
            except Exception:
                log.exception("llmbudget: a refusal observer failed")

    # -- the pipeline ---------------------------------------------------------------------------

    def wants(self, method: str, host: str, path: str, headers: Mapping[str, str], *, explicit: bool) -> bool:
        """Whether a request is an LLM call to intercept (cheap: no body is read)."""
        return self.wanted(method, host, path, headers, explicit=explicit) is not None

    def wanted(self, method: str, host: str, path: str, headers: Mapping[str, str], *,
               explicit: bool) -> Adapter | None:
        """The adapter of an LLM call to intercept (see :meth:`wants`), else None."""
        if method != "POST":
            return None
        found = adapter_for_path(path)
        unpriced = _unpriced_endpoint(path) if found is None else None
        if found is None and unpriced is None:
            return None
        user_agent = headers.get("user-agent", "")
        if explicit or host.lower() in self.hosts or "x-stainless-lang" in headers or \
                user_agent.startswith(("OpenAI/", "AsyncOpenAI/", "Anthropic/", "AsyncAnthropic/")):
            if found is not None:
                return found[0]
            self.pricing.warn_unpriced_endpoint(unpriced or path)
        return None

    def begin(self, *, url: str, path: str, headers: Mapping[str, str], body: bytes,
              adapter: Adapter | None = None) -> Attempt | None:
        """An Attempt for an LLM request, or None when the body is not a JSON object (pass it through).

        ``adapter``: the one :meth:`wanted` found for ``path``, if known.
        """
        if adapter is None:
            found = adapter_for_path(path)
            if found is None:
                return None
            adapter = found[0]
        try:
            data = _json_body(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            content_type = headers.get("content-type", "")
            if self._budgeted() and (not content_type or "json" in content_type.lower()):
                # sent, it could be neither priced nor held against the budget (a body labelled otherwise, a
                # form's, is not one of these calls: it passes through)
                raise UnreadableRequest(f"{type(exc).__name__}: {str(exc)[:200]}") from None
            if not self._unreadable_warned:  # (once: the app's own calls, each failing or billed alike)
                self._unreadable_warned = True
                log.warning("llmbudget: an LLM call to %s whose body cannot be read as JSON (%s) went out unpriced "
                            "and unrecorded (no budget applies to it; under one it is refused); later ones are not "
                            "logged", path, type(exc).__name__)
            return None
        if not isinstance(data, dict):
            return None
        base_url = url.split("?", 1)[0].rstrip("/")
        base_url = base_url[: -len(adapter.path)] if base_url.endswith(adapter.path) else base_url
        call = adapter.parse(data, base_url)
        retry = headers.get("x-stainless-retry-count", "0")
        attempt = Attempt(self, current_scope(), adapter, call, attempt=int(retry) if retry.isdigit() else 0,
                          size=len(body))
        attempt.begun_with((url, hash(body)))
        # what changes the answer the same body gets (its cache keys name it): Anthropic's beta features, and the
        # URL's query (Azure's api-version, a gateway's options), less what may hold a credential
        beta = headers.get("anthropic-beta", "") if adapter.endpoint == "messages" else ""
        attempt.answer_variant = "\n".join(part for part in (beta, _answer_query(url)) if part)
        return attempt

    def _budgeted(self) -> bool:
        """Whether a budget (the engine's, or a scope's this call runs in) applies to a call made now."""
        if self.budgets:
            return True
        node = current_scope()
        while node is not None:
            if node.budgets:
                return True
            node = node.parent
        return False

    def record(self, record: SpendRecord, scope: Scope | None) -> None:
        """Keep a settled record: ledger, scope totals, observers (this engine's, and those of every engine: see
        :func:`watch_every_engine`). Never raises."""
        watchers = () if SIMULATED.get() else _WATCHERS
        for sink in (self.ledger.add, scope.add if scope is not None else None, *self._observers, *watchers):
            if sink is None:
                continue
            try:
                sink(record)
            except Exception:
                log.exception("llmbudget: recording a spend record failed in %r", sink)


@dataclass(slots=True)
class _Hold:
    store: BudgetStore
    reservation: Reservation


def _edge_usage(text: str, *, last: bool) -> dict[str, Any] | None:
    """The last (or first) ``"usage": {...}`` object in ``text`` that parses."""
    at = text.rfind('"usage"') if last else text.find('"usage"')
    while at >= 0:
        start = text.find("{", at)
        if start >= 0 and not text[at + 7:start].strip(" \t\r\n:"):
            try:
                raw, _ = _scan_json(text, start)
            except (StopIteration, ValueError, RecursionError):
                raw = None
            if isinstance(raw, dict):
                return raw
        at = text.rfind('"usage"', 0, at) if last else text.find('"usage"', at + 7)
    return None


class Attempt:
    """One try of one LLM call, from reservation to record."""

    def __init__(self, engine: Engine, scope: Scope | None, adapter: Adapter, call: Call, *, attempt: int = 0,
                 size: int = 0) -> None:
        self.engine = engine
        self.scope = scope
        self.adapter = adapter
        self.call = call
        self.attempt = attempt
        #: Bytes of the request body as the app sent it.
        self.size = size
        self.started = time.perf_counter()
        self.time = time.time()
        #: Where the call began in this process's order of calls (``SpendRecord.sequence``; a clock may be frozen or
        #: patched in tests, this order never is). See :meth:`begun_with` and :meth:`continues`.
        self.sequence = next(_SEQUENCE)
        self._request: tuple[str, int] | None = None
        self.status: int | None = None
        #: The connection took the request's body to its last byte: the provider has the request whole.
        self.sent = False
        self.state = ResponseState()
        self.record: SpendRecord | None = None
        self._holds: list[_Hold] = []
        self._buffer = bytearray()
        self._overflow = False
        self._tail: bytearray | None = None  # the end of a body too large to keep whole
        self._head = b""  # and its start
        self._overflow_events = 0  # SSE events of such a body (a stream's chunks carry about a token each)
        self._decoder: Decoder | None = None
        self._encoding = ""
        self._undecodable: str | None = None  # the content-encoding a body did not decode from
        self._broken_events = 0  # stream events that are not JSON
        self._unstreamed = False  # a JSON answer to a streamed request (the app's SDK read no event from it)
        self._unparsed = False  # events labelled JSON, to a request not streamed (the app's SDK raised on them)
        self._unread_coding: str | None = None  # a content coding llmbudget decodes and httpx does not (x-gzip)
        self._sse = False
        self._json_body = False
        self._events: list[Any] = []
        self._json: Any = None
        self._lookup: CacheLookup | None = None
        self.model_requested = call.model
        #: The body as the app wrote it (its own output limit, which llmbudget's caps never raise).
        self.app_body = call.body
        self.base_url_requested = call.base_url
        self.routing: dict[str, Any] | None = None
        self.routed = False
        self.capped = False
        #: The body or base URL changed (routing, caps, keys, a budget downgrade): send the rewritten request.
        self.rewritten = False
        #: A tier this attempt must use whatever the router says (an escalation), and why.
        self.force_tier: str | None = None
        self.escalated_from: str | None = None
        #: A weak-tier answer that escalation or the cascade must judge goes into the cache only once it
        #: passed (the transport sets this): a rejected answer must never be served to the next caller.
        self.judged = False
        #: Routing moved the app's ``max_tokens`` to a reasoning model's ``max_completion_tokens``.
        self.limit_moved = False
        #: An escalation's retry whose refusal by a budget leaves the app the weak answer: not reported as a
        #: budget refusal (the app got an answer).
        self.has_fallback = False
        #: The environment variable of the key a tier on another host is sent (``Tier.api_key_env``).
        self.tier_key_env: str | None = None
        #: On an escalation's retry: the weak attempt's cost plus the saving its record claimed, which
        #: this record's ``routing_saved_usd`` takes back (net, the request's routing saved minus the weak cost).
        self.routing_offset_usd: Decimal | None = None
        #: The cascade judges this weak-tier answer by its log-probabilities (see ``llmbudget.routing.confidence``).
        self.cascade = False
        #: What of :data:`ADDITIONS` llmbudget added to this request, and what it is sent without (a call sent
        #: again without what its server refused).
        self.added: set[str] = set()
        self.without: frozenset[str] = frozenset()
        #: What the request's headers change of its answer (``anthropic-beta``): part of its cache keys.
        self.answer_variant = ""
        self._unshown = bytearray()  # (usage_added: the start of an event not yet passed on whole)
        self._scanned = 0  # (of it, the bytes already read for the blank line that ends an event)
        self._line_start = True  # (whether the byte at _scanned starts a line)
        self._after_cr = False  # (the last event passed on ended with a CR, whose LF may come next)
        self._taken_out = False  # (that event was taken out)
        self._event_stream = False  # (the answer is labelled as events)
        #: llmbudget added an Anthropic cache breakpoint ([prefix_cache] breakpoints = "auto").
        self.breakpoint = False
        #: The length directive or schema cap applied (``record.output``), if any.
        self.output: dict[str, Any] | None = None
        #: "flex" or "batch" when the scope defers this call (``llmbudget.defer``); see ``defer_mode``.
        self.defer_mode: str | None = None
        #: Settle the holds at what they held, whatever the record's cost: a batched call whose job ran (and is
        #: billed) though its answer could not be read (``llmbudget batches --resume`` records it later).
        self.charge_holds = False
        self.record_holds = False  # and record it at that (a batched call whose result line did not read)
        self._lock = threading.Lock()

    # -- before sending ------------------------------------------------------------------------

    def _budgets(self) -> list[tuple[Budget, Scope | None]]:
        # The engine's budgets belong to the outermost scope (the HTTP request under the middleware): a scope
        # nested in it for one block (cache=False, defer) must not start a per-request budget over.
        root = self.scope
        while root is not None and root.parent is not None:
            root = root.parent
        found: list[tuple[Budget, Scope | None]] = [(b, root) for b in self.engine.budgets]
        node = self.scope
        while node is not None:
            found.extend((b, node) for b in node.budgets)
            node = node.parent
        return found

    def estimate_input_tokens(self) -> int:
        return self.adapter.estimate_input_tokens(self.call.body, self.call.model)

    def worst_case_usd(self) -> Decimal:
        """Estimated input plus the most output the request allows, at the model's prices."""
        return self.engine.pricing.cost(self.worst_usage(), model=self.call.model, base_url=self.call.base_url).usd

    def worst_usage(self, max_output: int | None = None) -> Usage:
        """The usage :meth:`worst_case_usd` prices: estimated input (see :meth:`_worst_input`) and the most output
        (``max_output`` tokens over all answers: by default what the request allows)."""
        if max_output is None:
            max_output = self.call.max_output_tokens
        if max_output is None:  # the default limit, once per answer the request asks for
            max_output = self.engine.default_max_output_tokens * self.adapter.answers(self.call.body)
        audio_in, audio_out = self.adapter.audio(self.call.body)
        # all of the output may be audio, at the audio rate
        usage = self._worst_input(audio_in, output=max_output, audio_output=max_output if audio_out else 0)
        # an advisor tool's inferences on their own model, each reading the whole transcript: the input with what
        # its tools add, and the executor's output
        advisors = self.adapter.advisors(self.call.body, usage.input_tokens + max_output)
        return usage.replace(others=advisors) if advisors else usage

    def _worst_input(self, audio_tokens: int | None = None, *, output: int = 0, audio_output: int = 0) -> Usage:
        """The estimated input (with the margin), priced as dearly as the call may be: a Messages call with
        breakpoints (its own, or llmbudget's) may write all of it to the prompt cache, at 1.25x the input
        price (2x for a one-hour write); deferred work at its own price, ``service_tier: "priority"`` at its
        (higher) one; every web search the request allows, with its results as input; its audio at the audio
        rate (``audio_tokens``: the adapter's estimate, where the caller has it already); what web fetch tools
        may add to the input."""
        searches = self.adapter.web_searches(self.call.body)
        if audio_tokens is None:
            audio_tokens = self.adapter.audio(self.call.body)[0]
        audio = int(audio_tokens * self.engine.input_estimate_margin)
        padded = int(self.estimate_input_tokens() * self.engine.input_estimate_margin) + 8 + audio
        ttls = cache_write_ttls(self.call.body) if self.call.endpoint == "messages" else set()
        asked = self.call.body.get("service_tier")
        # flex only where it exists (OpenAI's API): another host ignores service_tier and bills its standard rate
        deferred = self.defer_mode if self.defer_mode == "batch" or _openai(self.call.base_url) else None
        tier = deferred or ("priority" if asked == "priority" or (
            asked in (None, "auto") and self.call.base_url in self.engine.priority_by_default) else None)
        if self.call.endpoint == "messages" and self.call.body.get("speed") == "fast":
            tier = "fast"  # Anthropic's fast mode: its own (higher) price
        # search results are input, never written to the prompt cache
        fetched = self.adapter.fetched_tokens(self.call.body)
        files, containers = self.adapter.tool_uses(self.call.body)
        return Usage(input_tokens=padded + searches * WEB_SEARCH_RESULT_TOKENS + fetched, estimated=True,
                     cache_write_tokens=padded if ttls else 0, cache_write_1h_tokens=padded if "1h" in ttls else 0,
                     service_tier=tier, web_searches=searches, input_audio_tokens=audio,
                     preview_searches=searches if self.adapter.preview_searches(self.call.body) else 0,
                     file_searches=files, code_containers=containers, output_tokens=output,
                     output_audio_tokens=audio_output)

    def reserve(self) -> Refusal | None:
        """Hold the worst case against every budget in scope; a Refusal if one would overflow.

        Over a budget, the scope's ``on_budget`` may first cap the output to what is
        left or downgrade the model; the request is then rewritten (see :attr:`rewritten`).
        """
        refusal = self._reserve_once()
        if refusal is None:
            return None
        mode = self._scope_setting("on_budget") or "refuse"
        if mode == "cap" and self._cap_to(refusal):
            refusal = self._reserve_once() or None
        elif mode == "downgrade" and self._downgrade():
            refusal = self._reserve_once() or None
        if refusal is not None and not self.has_fallback:
            self.engine.refused(refusal, self.scope)
        return refusal

    def _scope_setting(self, name: str) -> Any:
        node = self.scope
        while node is not None:
            value = getattr(node, name)
            if value is not None:
                return value
            node = node.parent
        return None

    def _cap_to(self, refusal: Refusal) -> bool:
        """Cap the output so the worst case fits what the refusing budget has left."""
        pricing, call = self.engine.pricing, self.call
        # the worst case is linear in the output allowed (an advisor reads it too): priced with none and a million
        input_cost = pricing.cost(self.worst_usage(0), model=call.model, base_url=call.base_url).usd
        per_token = pricing.cost(self.worst_usage(1_000_000), model=call.model, base_url=call.base_url).usd - input_cost
        if per_token <= 0:
            return False
        if self.escalated_from is not None:  # a capped retry would be cut: the app keeps the paid weak answer
            return False
        answers = self.adapter.answers(call.body)  # the cap is per answer; the budget pays for all of them
        affordable = int((refusal.remaining_usd - input_cost) * 1_000_000 / per_token) // answers
        minimum = self._scope_setting("cap_min_output_tokens") or 16
        current = (call.max_output_tokens or self.engine.default_max_output_tokens * answers) // answers
        if affordable < minimum or affordable >= current or _may_reason(call.endpoint, call.body, call.base_url):
            return False
        body, changed = apply_cap(call.endpoint, call.body, call.model, affordable)
        if changed:
            self.call = self.adapter.parse(body, call.base_url)
            self.capped = self.rewritten = True
        return changed

    def _downgrade(self) -> bool:
        """Send the call to ``downgrade_to`` or the routing tier with the cheapest output."""
        if self.escalated_from is not None:  # the weak answer was paid for already: the app keeps it
            return False
        target = self._scope_setting("downgrade_to")
        routing = self.engine.routing
        # where the app sent it, with its own key: downgrade_to, or a tier without a base_url of its own
        endpoint, base_url, key_env = self.call.endpoint, self.base_url_requested, None
        if target is None and routing is not None:  # the cheapest tier, where it lives (a self-hosted model...)
            from .routing.tiers import elsewhere, keeps_state

            options = []
            for tier in routing.tiers.values():
                model, url = tier.model_for(endpoint), tier.base_url_for(endpoint) or base_url
                if not model or (keeps_state(self.call.body, endpoint) and elsewhere(url, base_url)):
                    continue  # no model for this API, or a stored call another host does not hold
                if url == base_url and _deployment(url):
                    continue  # an Azure deployment runs the model its URL names: the body's is not what runs
                cost = self.engine.pricing.cost(Usage(output_tokens=1_000_000), model=model, base_url=url).usd
                options.append((cost, model, url, tier.api_key_env if url != base_url else None))
            if options:
                _, target, base_url, key_env = min(options, key=lambda option: option[0])
        if not target or (target == self.call.model and base_url == self.call.base_url) \
                or (base_url == self.base_url_requested and _deployment(base_url)):
            return False  # (an Azure deployment runs its own model: a body naming another one is not downgraded)
        if endpoint == "messages" and not target.lower().startswith("claude"):
            return False  # never send an Anthropic request to another provider's model
        self.call = self.adapter.parse(suited(endpoint, {**self.call.body, "model": target}, target), base_url)
        self.tier_key_env = key_env
        self.routed = self.rewritten = True
        self.routing = {**(self.routing or {}), "tier": "downgrade", "reason": "over budget: downgraded"}
        return True

    def _reserve_once(self) -> Refusal | None:
        budgets = self._budgets()
        if not budgets:
            return None
        amount = self.worst_case_usd()
        tenant = self.tenant
        now = self.engine.clock()
        groups: dict[int, tuple[BudgetStore, dict[str, Any]]] = {}
        for budget, owner in budgets:
            if budget.per == "request":
                store: BudgetStore = owner.store if owner is not None else MemoryBudgetStore()
            else:
                store = self.engine.budget_store
            # a per-request budget counts in the scope that set it, under that scope's request id
            bucket = budget.bucket(tenant=tenant, request_id=owner.request_id if owner is not None else "-", now=now)
            buckets = groups.setdefault(id(store), (store, {}))[1]
            # Two budgets of one kind share one counter: count it once, under the lower limit.
            if bucket.key not in buckets or bucket.limit < buckets[bucket.key].limit:
                buckets[bucket.key] = bucket
        # A call sent as a line of a Batch API job is held until the job can have ended, not for the store's
        # usual TTL (600 s by default), which would lapse while the job runs.
        hold = {"ttl": self.engine.batcher.hold_seconds} if self.defer_mode == "batch" else {}
        for store, buckets in groups.values():
            try:
                result = store.reserve(list(buckets.values()), amount, tenant=tenant, **hold)
            except (BudgetStoreUnavailable, WouldWait):
                self.release()  # drop the holds already taken in other stores
                raise
            if isinstance(result, Refusal):
                self.release()
                return result
            self._holds.append(_Hold(store, result))
        return None

    def fails_closed(self) -> bool:
        """Whether a budget in scope is fail-closed (its own ``on_unavailable``, else its store's): a store error
        of any kind then refuses the call instead of letting it go ahead unbudgeted."""
        for budget, _owner in self._budgets():
            if budget.per == "request":
                continue  # counted in memory
            store_mode = getattr(self.engine.budget_store, "on_unavailable", "open")
            if (budget.on_unavailable or store_mode) == "closed":
                return True
        return False

    def release(self) -> None:
        """Drop every hold without charging (the call was not sent or failed before it was)."""
        self._settle_holds(Decimal(0))

    def _settle_holds(self, actual: Decimal | None) -> None:
        """Settle every hold at ``actual`` (None: each at what it held)."""
        holds, self._holds = self._holds, []
        for hold in holds:
            try:
                hold.store.settle(hold.reservation, hold.reservation.amount if actual is None else actual)
            except Exception:
                log.exception("llmbudget: settling a budget reservation failed")

    # -- the cache -----------------------------------------------------------------------------

    @property
    def tenant(self) -> str:
        return (self.scope.tenant if self.scope else None) or self.engine.default_tenant

    def lookup_cache(self, *, semantic: bool = True) -> tuple[bytes, str] | None:
        """A cached answer for this call (body, content type), recorded as a hit; None on a miss.

        ``semantic=False``: the exact tier only; :meth:`cache_pending` then says what the semantic tier is to
        be asked, and :meth:`resolve_cache` takes its answer (the cache's worker process)."""
        cache = self.engine.cache
        if cache is None or (self.scope is not None and self.scope.cache is False):
            return None
        return self._cached(lambda: cache.lookup(self.call, tenant=self.tenant, model=self._answer_model(),
                                                 semantic=semantic, variant=self.answer_variant))

    def cache_pending(self) -> tuple[str, str] | None:
        """(partition, text) when the exact tier missed and the semantic tier is still to be asked."""
        return self._lookup.pending if self._lookup is not None else None

    def resolve_cache(self, found: Any) -> tuple[bytes, str] | None:
        """:meth:`lookup_cache` finished with what the semantic tier found elsewhere (a ``Hit``, or None)."""
        cache, lookup = self.engine.cache, self._lookup
        if cache is None or lookup is None:
            return None
        pending = lookup.pending
        try:
            return self._cached(lambda: cache.resolve(lookup, found, model=self._answer_model()))
        except WouldWait:  # inside no_wait(): the caller resolves it again where it may wait
            lookup.pending, lookup.stored, lookup.tier, lookup.score, lookup.entry_id = pending, None, None, None, None
            self._lookup = lookup
            raise

    def _cached(self, look: Callable[[], CacheLookup]) -> tuple[bytes, str] | None:
        try:
            lookup = self._lookup = look()
            if not lookup.hit:
                return None
            from .cache.answers import render, stored_usage

            assert lookup.stored is not None
            answer = render(lookup.stored, self.call)
        except WouldWait:  # inside no_wait(): the caller looks up again where it may wait
            self._lookup = None
            raise
        except Exception:
            log.exception("llmbudget: cache lookup failed; the call goes to the provider")
            self._lookup = None
            return None
        self._record_hit(lookup, stored_usage(lookup.stored))
        return answer

    def _answer_model(self) -> str | None:
        """The model a cached answer must come from: the one the app asked for where routing may not change it
        (no routing, or ``routing=False`` in scope), the forced tier's under ``routing="<tier>"`` and on an
        escalation's retry (the strong tier's: never another small-tier answer); None (any) where the router
        decides, which may send this very call to the small tier."""
        routing = self.engine.routing
        setting = self.scope.routing if self.scope is not None else None
        if routing is None or setting is False:
            return self.call.model
        forced = self._forced_tier()
        if forced is not None:
            tier = routing.tiers.get(forced)
            return (tier.model_for(self.call.endpoint) if tier is not None else None) or self.call.model
        return None

    def begun_with(self, request: tuple[str, int]) -> None:
        """``request`` (its URL and body's hash) is what this attempt sends: an SDK's retry of the very request this
        thread or task sent last (``x-stainless-retry-count`` above 0, the same URL and body) is that call, begun
        when it began; anything else begins now."""
        self._request = request
        sequence, last = _CALL_SEQUENCE.get()
        if self.attempt and last == request:
            self.sequence = sequence
        else:
            _CALL_SEQUENCE.set((self.sequence, request))

    def continues(self, earlier: Attempt) -> None:
        """This attempt sends ``earlier``'s call again (an escalation, a resend without the probe): it began when
        that call began, and so does an SDK's retry of it."""
        self.sequence = earlier.sequence
        if self._request is not None:
            _CALL_SEQUENCE.set((self.sequence, self._request))

    def _forced_tier(self) -> str | None:
        """The tier this call must go to: an escalation's (the strong one), or the scope's ``routing="<tier>"``."""
        setting = self.scope.routing if self.scope is not None else None
        return self.force_tier or (setting if isinstance(setting, str) else None)

    def _record_hit(self, lookup: CacheLookup, raw_usage: dict[str, Any] | None) -> None:
        found = self.adapter.reported_usage(raw_usage) if raw_usage is not None else None
        if found is not None:
            usage = found
        else:
            usage = Usage(input_tokens=self.estimate_input_tokens(), estimated=True)
        # whatever the server sent as the model, the hit is still served
        model = self.engine.pricing.answering_model((lookup.stored or {}).get("model"), self.call.model,
                                                    self.call.base_url)
        try:
            saved = self.engine.pricing.cost(usage, model=model, base_url=self.call.base_url).usd
        except Exception:  # noqa: BLE001 - what a hit saved is a report's figure: never the reason a call fails
            log.exception("llmbudget: pricing a cache hit failed; it is recorded as saving $0")
            saved = Decimal(0)
        self.status = 200
        with self._lock:
            record = self._record(usage=Usage(), cost=Decimal(0), source="cache", estimated=False, error=None)
            record.from_cache, record.saved_usd = True, saved
            record.model_answered = model
            record.cache_tier, record.cache_score = lookup.tier, lookup.score
            if self.escalated_from is not None and self.engine.routing is not None:
                # an escalation answered by the strong tier's stored answer: the record says why, and takes back
                # the weak call's saving as a retry sent upstream would
                record.routing = {"tier": self.engine.routing.strong, "reason": self._escalated_reason()}
            self._net_of_the_weak_call(record)
            self.record = record
        self.engine.record(record, self.scope)

    # -- routing, caps, prompt cache keys ---------------------------------------------------------

    def shape_output(self) -> bool:
        """Add the scope's (a route's) or the engine's length directive, before the cache is consulted, so the
        cache keys on the request as sent; True when the body changed. Never raises."""
        scope_output = self.scope.output if self.scope is not None else None
        output = scope_output if scope_output is not None else self.engine.output
        if not output or self._unreadable_model():
            return False
        try:
            return self._direct(output, "route" if scope_output is not None else "policy")
        except Exception:
            log.exception("llmbudget: adding a length directive failed; the request goes as the app wrote it")
            return False

    def _direct(self, output: Output, source: str) -> bool:
        body = self._directed(self.call.body, output, source)
        if body is None:
            return False
        self.call = self.adapter.parse(body, self.call.base_url)
        self.rewritten = True
        return True

    def _directed(self, body: dict[str, Any], output: Output, source: str,
                  base_url: str | None = None) -> dict[str, Any] | None:
        """``body`` with ``output``'s directive and its cap (noted in ``self.output``), or None when it gets none;
        ``base_url``: where the call goes (a tier's), if not where the app sent it."""
        endpoint = self.call.endpoint
        if not self._may_add("directive", base_url or self.call.base_url, body):
            return None
        cap = output.cap_for(endpoint, body, body.get("model"))  # in the request's own language (before the directive)
        applied = apply_directive(endpoint, body, output)
        if applied is None:
            return None
        body, where = applied
        self.added.add("directive")
        capped = False
        if self.escalated_from is None and not _may_think(endpoint, body, base_url or self.call.base_url):
            # (a retry on the strong tier is not cut where the weak one was)
            body, capped = apply_cap(endpoint, body, body.get("model"), cap)
        self.capped = self.capped or capped
        self.output = {"directive": output.text, "max_words": output.max_words, "cap": cap if capped else None,
                       "source": source, "in": where}
        return body

    def _unreadable_model(self) -> bool:
        """The body names its model with something other than a string (null included): it goes as the app wrote
        it, neither routed, capped, directed nor keyed, for the server to refuse (as it would without llmbudget)."""
        body = self.call.body
        return isinstance(body, dict) and not isinstance(body.get("model", ""), str)

    def plan(self, path: str = "") -> bool:
        """Route, cap and key the request; True when its body or base URL changed."""
        if self._unreadable_model():
            return False
        try:
            return self._plan(path)
        except Exception:
            log.exception("llmbudget: routing or capping failed; the request goes as the app wrote it")
            return False

    def _plan(self, path: str) -> bool:
        call, engine, scope = self.call, self.engine, self.scope
        body = call.body
        base_url = call.base_url
        routing = engine.routing
        setting = scope.routing if scope is not None else None
        from .routing.tiers import fine_tuned

        if routing is not None and setting is not False and not fine_tuned(call.model):
            # (no tier stands in for a fine-tune: it keeps its model and its host, as if routing were off)
            forced = self._forced_tier()
            decision = routing.decide(call, path=path, forced=forced)
            reason = self._escalated_reason() if self.escalated_from else decision.reason
            chosen, tier = decision.tier, routing.tiers[decision.tier]
            model, tier_url = tier.model_for(call.endpoint), tier.base_url_for(call.endpoint)
            if chosen != routing.strong and not model and not tier_url:
                # a tier with no model for this API (an OpenAI-only tier and a Messages call, or the reverse): the
                # call keeps its model, so it is the strong tier's, with neither this tier's cap nor its checks
                reason = f"{reason}; tier {chosen!r} has no model for {call.endpoint}"
                chosen, tier = routing.strong, routing.tiers[routing.strong]
                model, tier_url = tier.model_for(call.endpoint), tier.base_url_for(call.endpoint)
            # an Azure deployment answers with the model its URL names, whatever the body says: rewriting the
            # body's model would only make the reservation and the record name another model than runs
            kept = not tier_url and _deployment(base_url)
            if chosen != routing.strong and kept:
                reason = f"{reason}; an Azure deployment's URL names the model that answers"
                chosen, tier = routing.strong, routing.tiers[routing.strong]
                model, tier_url = tier.model_for(call.endpoint), tier.base_url_for(call.endpoint)
                kept = not tier_url
            self.routing = {"tier": chosen, "score": decision.score, "threshold": decision.threshold,
                            "reason": reason, "features": [list(f) for f in decision.features]}
            if kept:  # the app's body as it wrote it, nor a tier's cap or directive (its model is not known)
                model = None
            if model and model != call.model:
                if thinks(call.endpoint, {**body, "model": model}, model) and (self.output or {}).get("cap"):
                    # a directive's cap would bound the reasoning model's thinking too: the app's own limit instead
                    limits = self.adapter.limit_fields
                    body = {k: v for k, v in body.items() if k not in limits}
                    body.update({k: v for k, v in self.app_body.items() if k in limits})
                    self.output = {**(self.output or {}), "cap": None}
                    self.capped = False
                # without the parameters that model refuses (max_tokens and sampling on a reasoning model...)
                body = suited(call.endpoint, {**body, "model": model}, model)
                # the app's max_tokens, now a reasoning model's max_completion_tokens, bounds its reasoning too:
                # an answer it cuts was cut because of routing (escalation retries it)
                self.limit_moved = "max_tokens" in call.body and "max_completion_tokens" in body \
                    and "max_completion_tokens" not in call.body
                self.routed = True
            if tier_url and tier_url != base_url:
                base_url, self.tier_key_env = tier_url, tier.api_key_env
                self.routed = True
            if tier.max_output_tokens and not _may_reason(call.endpoint, body, base_url):
                body, tier_capped = apply_cap(call.endpoint, body, body.get("model"), tier.max_output_tokens)
                self.capped = self.capped or tier_capped
            if tier.output is not None and not kept and self.output is None and (scope is None
                                                                                 or scope.output is not False):
                body = self._directed(body, tier.output, f"tier {chosen}", base_url) or body
            if (routing.min_confidence is not None and chosen == routing.weak and forced is None and not kept
                    and call.endpoint == "chat.completions" and not thinks(call.endpoint, body, body.get("model"))
                    and not REPLAYED_STREAM.get() and self._may_add("probe", base_url, body)):
                from .routing.confidence import probe

                probed = probe(body)
                if probed is not None:
                    body, self.cascade = probed, True
                    self.added.add("probe")
                elif body.get("logprobs") and not body.get("stream"):  # the app asked for them: read, keep
                    self.cascade = True
            log.debug("llmbudget route: tier=%s score=%s threshold=%s reason=%s features=%s",
                      decision.tier, decision.score, decision.threshold, decision.reason, decision.features)
        if (call.endpoint == "chat.completions" and _asks_stream(body.get("stream"))
                and (reasoning_model(body.get("model")) or _unknown_model(base_url)) and not REPLAYED_STREAM.get()
                and self._may_add("usage_option", base_url, body)):
            # its reasoning tokens are billed as output but never streamed: without the usage the server reports
            # when asked, the stream was priced from its visible text, a fraction of the bill (an Azure
            # deployment's name says nothing of its model: an o3-mini deployment named "classifier")
            options = body.get("stream_options")
            if options is None or (isinstance(options, dict) and options.get("include_usage") in (None, False)):
                body = {**body, "stream_options": {**(options or {}), "include_usage": True}}
                self.added.add("usage_option")
        if (engine.prompt_cache_keys and "prompt_cache_key" not in body
                and call.endpoint in ("chat.completions", "responses") and _openai(base_url)):
            body = {**body, "prompt_cache_key": self._prompt_cache_key(body)}
        deferral = scope.defer if scope is not None else None
        if deferral == "flex" and call.endpoint in ("chat.completions", "responses") and "service_tier" not in body \
                and self._may_add("flex", base_url, body):
            body = {**body, "service_tier": "flex"}
            self.defer_mode = "flex"
            self.added.add("flex")
        elif deferral == "batch" and call.endpoint in _BATCHED and not call.stream and not _deployment(base_url):
            # sent as a line of a Batch API job (see the transport); an Azure deployment's call is sent as usual
            # (Azure's batch jobs live elsewhere, under another API and key header)
            self.defer_mode = "batch"
        bound = schema_cap(body) if self.escalated_from is None and not _may_think(
            call.endpoint, body, base_url) else None
        if bound is not None and bound > engine.default_max_output_tokens and not has_limit(
                call.endpoint, body, body.get("model")):
            # a request without a limit gets one only below what an uncapped call reserves: a schema's long strings
            # made 38,446 tokens, over gpt-4o-mini's 16,384, and the API refused the call the app wrote
            bound = None
        if bound is not None:
            body, capped = apply_cap(call.endpoint, body, body.get("model"), bound)
            if capped:
                self.capped = True
                self.output = {**(self.output or {}), "schema_cap": bound}
        if engine.breakpoints is not None and call.endpoint == "messages":
            marked = engine.breakpoints.apply(body, tenant=self.tenant, model=body.get("model"), base_url=base_url,
                                              retry=self.attempt > 0)
            if marked is not None:
                body, self.breakpoint = marked, True
        if body is call.body and base_url == call.base_url:
            return False
        self.call = self.adapter.parse(body, base_url)
        self.rewritten = True
        return True

    def retry_failed(self) -> bool:
        """Whether this retry of a weak answer (``has_fallback``: not of a tier's failure, which left none) got no
        answer that serves the app better (an error, HTTP 429 or 5xx): the app is then given the weak answer,
        whose saving stands."""
        return self.has_fallback and (self.status is None or self.status == 429 or self.status >= 500)

    def _net_of_the_weak_call(self, record: SpendRecord) -> None:
        """An escalation's retry takes back the weak call's cost and claimed saving (the request's routing saving is
        net), unless the app is given the weak answer after all (:meth:`retry_failed`)."""
        if self.routing_offset_usd is not None and not self.retry_failed():
            record.routing_saved_usd -= self.routing_offset_usd

    def _escalated_reason(self) -> str:
        return f"escalated: the weak tier's answer was {self.escalated_from}"

    def may_escalate(self) -> bool:
        """Whether the answer must be checked before the app sees it (weak tier, escalation or a cascade on)."""
        routing = self.engine.routing
        return (routing is not None and (routing.escalate or routing.min_confidence is not None)
                and not self.call.stream and not REPLAYED_STREAM.get() and self._forced_tier() is None
                and not self.call.body.get("background")  # a queued job has no answer to judge yet
                and self.routing is not None and self.routing.get("tier") == routing.weak)

    @property
    def probed(self) -> bool:
        """The cascade's probe asked for log-probabilities the app did not: they are taken out before it sees them."""
        return "probe" in self.added

    @property
    def usage_added(self) -> bool:
        """A stream of a model whose reasoning is hidden, for which llmbudget asked the usage (``stream_options``
        ``include_usage``) that the app did not: the usage's own event is taken out before the app sees it."""
        return "usage_option" in self.added

    def _may_add(self, name: str, base_url: str, body: Mapping[str, Any]) -> bool:
        """Whether this request may get the addition ``name`` (see :data:`ADDITIONS`)."""
        return name not in self.without and \
            (base_url, body.get("model") or "") not in self.engine.refused_additions[name]

    def addition_refused(self) -> bool:
        """Whether the server answered with HTTP 400 a request to which llmbudget added what the app did not ask
        for (:data:`ADDITIONS`). The call is then sent again without it, if the error names it."""
        return bool(self.added) and self.status == 400

    def refused_additions(self, error: bytes) -> set[str]:
        """What of this request's additions a refusal's ``error`` body names."""
        lowered = error.lower()
        return {name for name in self.added if any(word in lowered for word in ADDITIONS[name])}

    def tier_failed(self, *, unreachable: bool = False) -> bool:
        """Whether the tier routing (or a budget's downgrade) sent this call to failed it where the app's own
        request might not have: it refused the call as rewritten (HTTP 400, 404 or 422: a model it does not
        serve, a parameter it does not take; 403 for a model the app's project has no access to), or it lives on
        another host and could not be reached
        (``unreachable``), refused the tier's key (401, 403) or failed (5xx). The call then goes to the strong
        tier, whatever ``escalate`` says, since routing must never be the reason a call fails."""
        routing = self.engine.routing
        if (routing is None or not self.routed or self.force_tier is not None or self.routing is None
                or self.routing.get("tier") == routing.strong):
            return False
        elsewhere = self.call.base_url != self.base_url_requested
        if unreachable:
            return elsewhere
        status = self.status
        moved = self.call.model != self.model_requested  # a 403 for another model: no access to it (model_not_found)
        return status in (400, 404, 422) or (status == 403 and moved) or (
            elsewhere and status is not None and (status in (401, 403) or status >= 500))

    def tier_api_key(self) -> str | None:
        """The key sent to a tier on another host in place of the app's (None: none is sent)."""
        return os.environ.get(self.tier_key_env) or None if self.tier_key_env else None

    def escalation_reason(self) -> str | None:
        """Why a settled weak-tier answer should be retried on the strong tier, or None."""
        if self.status != 200 or self.record is None:
            return None
        routing = self.engine.routing
        confidence = (self.routing or {}).get("confidence")
        if (routing is not None and routing.min_confidence is not None and isinstance(confidence, float)
                and confidence < routing.min_confidence):
            return f"unsure (confidence {confidence:.3f} < {routing.min_confidence:g})"
        if routing is not None and not routing.escalate:  # a cascade alone judges confidence only
            return None
        if (self.capped or self.limit_moved) and "length" in self.state.finish_reasons:
            return "cut by an output cap"
        if self.state.refused:  # chat's message.refusal, a Responses refusal part, Anthropic's stop_reason
            return "refused"
        if wants_json(self.call.body) and not self._valid_json():  # response_format, text.format, output_format
            return "invalid JSON"
        return None

    def _valid_json(self) -> bool:
        """Whether every answer (each choice of an ``n`` > 1 chat call) is valid JSON; a tool call answers without
        the JSON text, and is not judged by it."""
        if self.state.tool_calls:
            return True
        answers = self.state.answers if self.state.answers else [self._output_text()]
        for text in answers:
            try:
                json.loads(text)
            except (ValueError, RecursionError):  # RecursionError: nested too deep for json to read
                return False
        return True

    def unprobed_body(self) -> bytes | None:
        """The answer as the app asked for it (without the cascade's log-probabilities), or None when unchanged."""
        if not self.probed or not isinstance(self._json, dict):
            return None
        from .routing.confidence import without_logprobs

        return json.dumps(without_logprobs(self._json), separators=(",", ":"), ensure_ascii=False).encode()

    def _prompt_cache_key(self, body: dict[str, Any]) -> str:
        import hashlib

        # The prompt's head: its instructions, tools and leading system / developer messages. A system message
        # after the first turn (retrieved context, the time) is not the prefix: with it, the key changed per call.
        prefix: list[Any] = [self.tenant, body.get("instructions"), body.get("tools")]
        turns = body.get("messages") if isinstance(body.get("messages"), list) else body.get("input")
        for message in turns if isinstance(turns, list) else ():
            if not isinstance(message, dict) or message.get("role") not in ("system", "developer"):
                break
            prefix.append(message.get("content"))
        digest = hashlib.blake2b(json.dumps(prefix, sort_keys=True, default=str).encode(), digest_size=12)
        return f"llmbudget-{digest.hexdigest()}"

    @property
    def redirected(self) -> bool:
        """Whether the server answered with a redirect (3xx): the client sends the call again where it points."""
        return self.status is not None and 300 <= self.status < 400

    def request_bytes(self) -> bytes:
        """The body to send after :meth:`plan` changed it."""
        text = json.dumps(self.call.body, separators=(",", ":"), ensure_ascii=False)
        try:
            return text.encode()
        except UnicodeEncodeError:  # a lone surrogate the app's body escaped (valid JSON): escaped again
            return json.dumps(self.call.body, separators=(",", ":")).encode()

    # -- the response --------------------------------------------------------------------------

    def start_response(self, status: int, headers: Mapping[str, str]) -> None:
        self.status = status
        tier = (self.call.base_url, self.call.model or "")
        for name in sorted(self.without) if status < 400 else ():
            refused = self.engine.refused_additions[name]
            if tier not in refused:
                log.warning("llmbudget: %s at %s %s", tier[1], tier[0], _REFUSED_NOTE[name])
                refused.add(tier)
        # events or JSON: as the request asked or the label says, until the body's first bytes say which it is
        # (see _parse: a body mislabelled by a gateway went unread, a billed call settled at ~$0)
        label = headers.get("content-type", "").lower()  # (a media type's case does not matter)
        asked = _asks_stream(self.call.body.get("stream"))
        self._sse = asked or "text/event-stream" in label
        self._json_body = "json" in label
        # a stream the SDK reads as events whatever its label (none, text/plain): edited as events, or the app
        # got the usage chunk llmbudget asked for (no choices: chunk.choices[0] raised IndexError)
        self._event_stream = "text/event-stream" in label or (asked and not self._json_body)
        applied = codings(headers.get("content-encoding", ""))  # ("gzip, gzip", "identity, br": several, or none)
        self._encoding = ", ".join(applied)
        self._decoder = decoder_for(self._encoding) if applied else None  # (None: read as it comes, as httpx does)
        self._unread_coding = "x-gzip" if "x-gzip" in applied else None  # (read for what was billed; not by httpx)

    def feed(self, chunk: bytes) -> None:
        """Take a chunk of the raw body as it passes to the app. Never raises."""
        if (self._overflow and self._tail is None) or self.status is None or self.status >= 400:
            return
        if self._decoder is None:
            self._take(chunk)
            return
        try:
            for piece in self._decoder(chunk):  # bounded pieces: a small body may expand to gigabytes
                self._take(piece)
                if self._overflow and self._tail is None:
                    return
        except Exception:  # noqa: BLE001 - zlib's, brotli's or zstd's error: a body the app cannot read either
            self._overflow, self._tail = True, None
            self._undecodable = self._encoding

    def edits_events(self) -> bool:
        """Whether the app sees this answer's events without those llmbudget asked for (:meth:`shown`): its
        length then is not the server's."""
        return self.usage_added and self._event_stream and self._decoder is None and self.status == 200

    def awaits_usage(self) -> bool:
        """Whether this stream's answer is over (each choice's ``finish_reason``; a Responses answer's
        ``output_text.done``, no output item begun after it) while the usage the server sends after it has not
        come, nor the stream's end: a stream the app closes there is read on for it (:meth:`usage_came`), since
        the answer was generated, and its hidden reasoning billed, in full (settled from the text seen, a reasoning
        model's call was charged 1/1,400 of its bill). Read from the body's bytes (its events are parsed when it
        is settled)."""
        if self.record is not None or self.status is None or not 200 <= self.status < 300 or not self._sse:
            return False
        body = self._buffer
        if self._overflow or not body or self.usage_came():
            return False
        if self.call.endpoint == "responses":
            at = body.rfind(b'"response.output_text.done"')
            return at >= 0 and body.find(b'"response.output_item.added"', at) < 0
        if self.call.endpoint not in ("chat.completions", "completions"):
            return False
        return len(_FINISHED.findall(body)) >= (_count(self.call.body.get("n")) or 1)

    def usage_came(self) -> bool:
        """Whether this stream's body holds its usage, or its end (``[DONE]``, a Responses stream's last event)."""
        body = self._buffer
        return bool(_USAGE_OBJECT.search(body) or _RESPONSE_ENDED.search(body) or _STREAM_DONE.search(body))

    def pass_on(self, chunk: bytes) -> bytes:
        """:meth:`feed` the chunk; what of it the app sees (:meth:`shown`)."""
        self.feed(chunk)
        return self.shown(chunk)

    def shown(self, chunk: bytes) -> bytes:
        """What of ``chunk`` the app sees: all of it, unless llmbudget asked a stream's usage for the app
        (:attr:`usage_added`). The event that carries it (no choices, the usage) is then taken out, and the
        ``"usage": null`` the others carry with it; the events are passed on whole, the start of one held until
        the blank line that ends it (:meth:`shown_rest` gives what is held at the end). A body that is not
        labelled as events, has a content coding (it was asked for none) or is an error is passed on as it
        came."""
        if not self.edits_events():
            return chunk
        held = self._unshown
        held += chunk
        events: list[bytes] = []
        start, line_start, at = 0, self._line_start, self._scanned
        if self._after_cr and held:
            self._after_cr = False
            if held[:1] == b"\n":  # the LF of the CR that ended the last event (a CRLF): its own, no empty line
                if not self._taken_out:  # (of an event taken out: it goes too)
                    events.append(b"\n")
                start, at, line_start = 1, 1, True
        for end in _LINE_END.finditer(held, at):
            last_cr = end.group() == b"\r" and end.end() == len(held)  # a LF may follow it in the next chunk
            if line_start and end.start() == at:  # an empty line (a CR or a CRLF alike): it ends the event
                event = bytes(held[start:end.end()])
                shown = _shown_event(event)
                events.append(shown)
                start = end.end()
                self._after_cr, self._taken_out = last_cr, not shown
            elif last_cr:  # whether it ends its line alone is not known yet
                break
            at, line_start = end.end(), True
        else:
            at = len(held)
        if at > 0 and held[at - 1:at] not in (b"\r", b"\n"):  # mid-line: no empty line can begin there
            line_start = False
        self._scanned, self._line_start = at - start, line_start
        del held[:start]
        return b"".join(events)

    def shown_rest(self) -> bytes:
        """What :meth:`shown` held at the stream's end (an event without its blank line)."""
        rest, self._unshown, self._scanned, self._after_cr = bytes(self._unshown), bytearray(), 0, False
        return _shown_event(rest) if rest else b""

    def _take(self, data: bytes) -> None:
        """Keep a decoded piece of the body: all of it up to ``MAX_BODY_BYTES``, then its head and end."""
        if self._tail is not None:  # too large already: keep only its end, where the usage is
            self._overflow_events += data.count(b"\ndata:") + (data.startswith(b"data:") and self._tail.endswith(b"\n"))
            self._tail += data
            del self._tail[:-_TAIL_BYTES]
            return
        if len(self._buffer) + len(data) > MAX_BODY_BYTES:
            self._overflow = True
            head = bytes(self._buffer[:_TAIL_BYTES])
            self._head = head + data[: _TAIL_BYTES - len(head)]
            self._read_as(_sniffed(self._head))  # (as _parse reads a body it keeps)
            self._overflow_events = self._buffer.count(b"\ndata:") + data.count(b"\ndata:") + 1  # + the first
            self._tail = bytearray(self._buffer[-_TAIL_BYTES:]) + data
            del self._tail[:-_TAIL_BYTES]
            self._buffer.clear()
            return
        self._buffer += data

    def _tail_ended(self) -> bool:
        """Whether the end of a body too large to keep is a stream's end: ``[DONE]`` (OpenAI chat),
        ``message_stop`` (Anthropic), ``response.completed`` (Responses)."""
        end = bytes(self._tail or b"")[-4096:]
        return self._sse and (end.rstrip().endswith(b"data: [DONE]") or b'"message_stop"' in end
                              or b'"response.completed"' in end)

    def _usage_from_tail(self) -> Usage | None:
        """The provider's usage in a body too large to keep: the first ``"usage": {...}`` of its start updated
        by the last of its end, as the adapter merges a stream's (Anthropic reports the input in
        ``message_start``, the output in the last ``message_delta``; OpenAI's usage comes last)."""
        if not self._tail:
            return None
        head = _edge_usage(self._head.decode("utf-8", "replace"), last=False) if self._head else None
        tail = _edge_usage(self._tail.decode("utf-8", "replace"), last=True)
        if head is None and tail is None:
            return None
        return self.adapter.reported_usage({**(head or {}), **{k: v for k, v in (tail or {}).items() if v is not None}})

    def _read_as(self, looks: str | None) -> None:
        """Read the body as what its first bytes say (``looks``: see :func:`_sniffed`), whatever was asked for or
        labelled: that is what was billed; and note what the app got of it: a streamed request's SDK reads no
        event from JSON or from bytes that are neither (a queued background job is charged its worst case), and
        another's raises on events labelled as JSON."""
        if looks is not None:
            self._sse = looks == "events"
        asked = _asks_stream(self.call.body.get("stream"))
        self._unstreamed = asked and looks != "events" and not (looks == "json" and self._queued_job())
        self._unparsed = looks == "events" and not asked and self._json_body

    def _queued_job(self) -> bool:
        """A background Responses job answered as queued (the JSON of its start): it runs on, read or not."""
        return self._background() and _QUEUED.search(bytes((self._head or self._buffer)[:4096])) is not None

    def _parse(self) -> None:
        if self._overflow or not self._buffer:
            return
        self._read_as(_sniffed(self._buffer))
        if not self._sse:
            try:  # as the SDK reads it (httpx's json(): json.loads of the bytes, a BOM or UTF-16 detected)
                self._json = _json_body(self._buffer)
            except (ValueError, RecursionError):
                return
            self.adapter.read_json(self._json, self.state)
            return
        text = self._buffer.decode("utf-8", "replace")
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")  # CR alone ends a line too (SSE)
        payloads, joined = _sse_payloads(text, self.state)
        cut = not text.endswith("\n\n")  # the last event is unfinished (a stream closed early): not a broken one
        try:  # one parse per 512 events (a long stream's, read in a worker thread, lets the event loop in between
            # parses: one parse of 30,000 events held the GIL for a tenth of a second); event by event only if
            # one of them is broken
            if len(payloads) <= _EVENTS_PER_PARSE:
                events = _json_loads("[" + joined + "]")
            else:
                events = []
                for start in range(0, len(payloads), _EVENTS_PER_PARSE):
                    events.extend(_json_loads("[" + ",".join(payloads[start:start + _EVENTS_PER_PARSE]) + "]"))
        except (ValueError, RecursionError):
            events = []
            for index, payload in enumerate(payloads):
                try:
                    events.append(json.loads(payload))
                except (ValueError, RecursionError):
                    if not (cut and index == len(payloads) - 1):
                        self._broken_events += 1  # the SDK raised on it: the app got no whole answer
                    continue
        self._events = events
        self.adapter.read_stream(events, self.state)

    def _body_error(self) -> str | None:
        """What went wrong in a 2xx answer, as the app saw it: a body that does not decode from its
        content-encoding, an ``error`` object instead of an answer, or an error event in a stream."""
        if self._undecodable is not None:
            return f"the response body is not valid {self._undecodable} (the app could not read it either)"
        if self._broken_events:
            return (f"{self._broken_events} event(s) of the stream are not valid JSON (the app's SDK could not read "
                    "them either)")
        found = [self._json] if not self._sse else self._events
        for item in found:
            if isinstance(item, dict) and item.get("type") == "response.failed" and isinstance(item.get("response"),
                                                                                               dict):
                item = item["response"]  # a Responses stream that failed: its response carries the error
            if isinstance(item, dict) and (item.get("type") == "error" or item.get("error")):
                detail = item.get("error") if isinstance(item.get("error"), dict) else item
                message = detail.get("message") if isinstance(detail, dict) else None
                what = "an error event in the stream" if self._sse else "an error object instead of an answer"
                return f"the server answered {what}" + (f": {str(message)[:200]}" if message else "")
        if self._unstreamed:
            return "the server answered a streamed request with no event (in JSON, or neither): the app's SDK read none"
        if self._unread_coding:
            return (f"the response is sent with {self._unread_coding}, which the app's HTTP client does not decode: "
                    "it could not read the answer")
        if self._unparsed:
            return ("the server answered with a stream's events labelled as JSON: the app's SDK could not read them "
                    "(it raised on the body)")
        return None

    def _output_text(self) -> str:
        if not self._sse:
            return self.state.text
        parts = self.state.stream_parts
        return "".join(parts) if parts is not None else self.adapter.stream_text(self._events)

    def _billed_text(self) -> str:
        """The output a stream's estimate counts: the answer's text and what the provider bills beside it
        (reasoning, thinking, tool-call arguments)."""
        return self._output_text() + "".join(self.state.hidden_parts)

    def finish(self, *, complete: bool, error: BaseException | None = None, store: bool = True) -> SpendRecord | None:
        """Price, settle and record this attempt (once; later calls return the same record), then keep a
        whole answer in the cache; ``store=False`` leaves that to the caller (:meth:`stores_answer`)."""
        if self.record is not None:  # set once, under the lock: a stream's close() after its end
            return self.record
        with self._lock:
            if self.record is not None or (error is None and self.status is None and not complete):
                return self.record
            try:
                record = self._build_record(complete=complete, error=error)
            except Exception:
                log.exception("llmbudget: settling a call failed; it is recorded as an estimate")
                record = self._fallback_record(error)
            self.record = record
        # a batched call whose job ran but whose answer could not be read: charged what it held, as a lapsed hold is
        self._settle_holds(None if self.charge_holds else record.cost_usd)
        if not self.redirected:  # a redirect the client follows is not a call: the next hop records it
            self.engine.record(record, self.scope)
        if store and self.stores_answer(complete=complete, error=error):
            self.store_answer()
        return record

    @property
    def answer_bytes(self) -> int:
        """How much of the answer's body this attempt holds (a body too large to keep whole holds its end)."""
        return len(self._buffer)

    def stores_answer(self, *, complete: bool, error: BaseException | None = None) -> bool:
        """Whether the finished attempt's answer goes into the cache: the one heavy part of finishing
        (its prompt is embedded), which :meth:`store_answer` does."""
        cache, lookup = self.engine.cache, self._lookup
        if cache is None or lookup is None or lookup.hit or not lookup.keys.cacheable:
            return False
        if not self.judged and self.may_escalate():  # the transport stores it once it passed the checks
            return False
        if self.routing is not None and self.routing.get("tier") == "downgrade":
            return False  # a budget's downgrade answers this call, not the next one without that budget's pressure
        # The SDK closes a stream once it read [DONE]: that is a whole answer too.
        if error is not None or self.status != 200 or self._overflow or not (complete or self.state.done):
            return False
        if self.record is not None and self.record.error:  # an error the app got too (a broken stream event...)
            return False
        if self._sse != self.call.stream:  # not the form asked for (events to a call not streamed: the app got
            return False  # their text), which a hit, given in the form asked for, would not reproduce
        from .cache.answers import storable

        try:
            return storable(self.call, body=None if self._sse else self._json,
                            events=self._events if self._sse else None) is not None
        except Exception:  # store_answer() says what is wrong with it
            return True

    def store_answer(self) -> None:
        """Keep the answer in the cache, once :meth:`stores_answer` said it goes there. Never raises, but for
        :class:`~llmbudget.ledger.budgets.WouldWait` inside ``no_wait()``."""
        cache, lookup = self.engine.cache, self._lookup
        if cache is None or lookup is None:
            return
        try:  # Cache.save checks again what may be kept: it is also called on its own
            cache.save(lookup, self.call, tenant=self.tenant, model=self.state.model,
                       body=None if self._sse else self._json, events=self._events if self._sse else None)
        except WouldWait:  # inside no_wait(): the caller stores it where it may wait
            raise
        except Exception:
            log.exception("llmbudget: storing an answer in the cache failed")

    def _build_record(self, *, complete: bool, error: BaseException | None) -> SpendRecord:
        call, state = self.call, self.state
        answered = self.status is not None and self.status < 300  # not an error, nor a redirect the client follows
        if error is not None and answered:
            return self._cut_record(error)
        failed = error is not None or not answered
        estimated = False
        problem: str | None = None
        if failed:
            usage = Usage()
            if self.record_holds:  # its batch job ran it (billed), and its result is lost for good
                usage, estimated = self.worst_usage().replace(estimated=True), True
            elif error is not None and self.status is None and not (self.call.stream and not self._background()) and (
                    _timed_out_waiting(error) or (self.sent and _cancelled(error))):
                # Sent whole, then no answer within the client's timeout, or the caller stopped waiting (a task
                # cancelled by asyncio.wait_for or a client gone, a thread interrupted): the provider goes on and
                # bills the answer nobody waits for. Charged its worst case (what its reservation held), never its
                # input alone (60 such calls spent 4x a tenant's budget). A stream is not: it stops generating
                # when its reader goes.
                usage, estimated = self.worst_usage().replace(estimated=True), True
            elif error is not None and not _never_sent(error):
                # It may have reached the provider: pay for what was sent.
                usage = Usage(input_tokens=self.estimate_input_tokens(), estimated=True)
                estimated = True
        else:
            self._parse()
            problem = self._body_error()
            if problem is not None and not (state.done and state.usage is not None) and not (
                    self._tail is not None and self._usage_from_tail() is not None):  # (too large to keep: its end)
                # the app got this error too: what the server reported, at least what was seen
                return self._estimated_record(self._seen_usage(), problem)
            # (a response that failed with its final usage, as a Responses one does: priced as reported)
            if self._json is None and not self._overflow and complete and not (self._sse and self._buffer):
                # the app's JSON decoding fails on this body too (an empty one with a JSON type as well, whatever
                # the 2xx status), or it got an empty answer (the SDK returns "" for an empty body of another
                # type, a stream with no event for an empty stream): record that, with the input it paid for
                input_only = Usage(input_tokens=self.estimate_input_tokens(), estimated=True)
                if self._buffer or (self._json_body and not self._sse):
                    return self._estimated_record(self._unreadable_usage(input_only), "the response body is not "
                                                  "valid JSON (the app could not read it either)")
                return self._estimated_record(input_only, f"HTTP {self.status} with an empty body: the app got no "
                                              "answer")
            usage_seen = state.usage
            if usage_seen is None and self.call.body.get("background") and not self._sse and \
                    set(state.finish_reasons) & {"queued", "in_progress"}:
                # a Responses job queued to run in the background: its usage comes later, with a retrieve this
                # process may never make. Charged its worst case (what its reservation held), never ~$0.
                usage_seen, estimated = self.worst_usage(), True
            if usage_seen is None and self._tail is not None and (complete or self._tail_ended()):
                # (the SDK closes a stream once it read its end, before the body is read to its last byte)
                usage_seen = self._usage_from_tail()
                complete = usage_seen is not None
            if usage_seen is not None and (complete or state.done) and not state.usage_final:
                # Anthropic's placeholder (1 output token) and no final count: the output seen, estimated
                usage, estimated = self._seen_usage(), True
            elif usage_seen is not None and (complete or state.done):
                usage = self._filled(usage_seen)
                estimated = estimated or usage.estimated
            else:  # what the server reported of its input, if it did; read in part, as a cut answer is
                usage, estimated = (self._seen_usage() if complete or state.done else self._cut_usage()), True
                if self._tail is not None and self._sse:  # too large to read: about a token per chunk
                    usage = usage.replace(output_tokens=max(usage.output_tokens, self._overflow_events - 2))
            per_call = self.adapter.searches_per_call(self.call.body)  # (a chat search model's, reported nowhere)
            if usage.web_searches < per_call:
                usage = usage.replace(web_searches=per_call, preview_searches=per_call)
            if state.service_tier and usage.service_tier is None:
                usage = usage.replace(service_tier=state.service_tier)
            if usage.service_tier == "priority" and self.call.body.get("service_tier") in (None, "auto"):
                self.engine.priority_by_default.add(call.base_url)  # the project's default tier (see _worst_input)
            if self.defer_mode == "batch" or (self.defer_mode == "flex" and usage.service_tier is None
                                              and _openai(call.base_url)):
                # the server did not say: as asked (flex only where it exists: another host that ignores
                # service_tier bills the standard rate, and was recorded at half of it)
                usage = usage.replace(service_tier=self.defer_mode)
            if self.cascade and self.routing is not None:
                from .routing.confidence import answer_confidence

                confidence = answer_confidence(self._json)
                self.routing = {**self.routing, "confidence": None if confidence is None else round(confidence, 4)}
        model = self._priced_model()
        billed = usage.total_tokens or usage.web_searches or usage.file_searches or usage.code_containers
        priced = self.engine.pricing.cost(usage, model=model, base_url=call.base_url) if billed else None
        record = self._record(
            usage=usage,
            cost=priced.usd if priced else Decimal(0),
            source=priced.source if priced else "none",
            estimated=estimated,  # the tokens; an unknown model's fallback price says so in price_source
            error=_describe(error, self.status) if failed else problem,
        )
        if priced is not None:
            record.prompt_cache_saved_usd = self.engine.pricing.prompt_cache_saving(usage, model=model,
                                                                                   base_url=self.call.base_url)
        requested = self.model_requested
        if priced is not None and priced.known and requested and requested != model and self.routed:
            # at the base URL the app asked for: a tier elsewhere (self-hosted) is priced at its own host
            as_requested = self.engine.pricing.cost(usage, model=requested, base_url=self.base_url_requested)
            if as_requested.known:  # < 0 when the tier's model costs more than the one asked for
                record.routing_saved_usd = as_requested.usd - priced.usd
        self._net_of_the_weak_call(record)
        if priced is not None and priced.known and usage.service_tier in DEFERRED_TIERS:
            record.deferred = usage.service_tier
            standard = self.engine.pricing.cost(usage.replace(service_tier=None), model=model, base_url=call.base_url)
            record.deferred_saved_usd = max(standard.usd - priced.usd, Decimal(0))
        return record

    def _estimated_record(self, usage: Usage, error: str) -> SpendRecord:
        priced = self.engine.pricing.cost(usage, model=self._priced_model(), base_url=self.call.base_url)
        return self._record(usage=usage, cost=priced.usd, source=priced.source, estimated=True, error=error)

    def _priced_model(self) -> str | None:
        return self.engine.pricing.answering_model(self.state.model, self.call.model, self.call.base_url)

    def _cut_record(self, error: BaseException) -> SpendRecord:
        """A response that started (2xx) and then failed mid-body: the input and the output seen so far, estimated,
        with the error the app got."""
        self._parse()
        return self._estimated_record(self._cut_usage(), _describe(error, self.status))

    def _cut_usage(self) -> Usage:
        """An answer (2xx) not read to its end: a stream's, what the server reported and the output seen (it stops
        generating when the client goes), unless its model reasons out of sight (its worst case); a whole
        (non-streamed) one was generated and billed in full before its first byte was sent, so unless its usage
        was read, its worst case (what its reservation held)."""
        if self.state.usage is None and (self._whole_answer_coming() or self._background()):
            # (a Responses job run in the background goes on whoever reads its stream)
            return self.worst_usage().replace(estimated=True)
        if not (self.state.usage is not None and self.state.usage_final) and self._hidden_reasoning():
            # what it reasoned before the reader went is billed, and none of it was seen: charged from the text
            # streamed, an o4-mini stream cut while it reasoned was charged its input alone, 1/8,500 of its bill
            return self.worst_usage().replace(estimated=True)
        return self._seen_usage()

    def _hidden_reasoning(self) -> bool:
        """A stream whose model reasons out of sight: an OpenAI reasoning model's (o-series, gpt-5), never
        streamed, and Claude's extended thinking, streamed summarised and billed whole."""
        if not self._sse:
            return False
        if self.call.endpoint == "messages":
            return thinks("messages", self.call.body, self.call.model)
        body = self.call.body
        reasoning = body.get("reasoning")
        effort = reasoning.get("effort") if isinstance(reasoning, dict) else body.get("reasoning_effort")
        return (self.call.endpoint in ("chat.completions", "responses") and reasoning_model(self.call.model)
                and effort != "none")  # (gpt-5.1's none: no reasoning)

    def _background(self) -> bool:
        """A Responses job run in the background: it goes on whoever reads its stream."""
        return self.call.endpoint == "responses" and bool(self.call.body.get("background"))

    def _unreadable_usage(self, input_only: Usage) -> Usage:
        """A body that is not JSON the app can read: a whole answer's (JSON with an answer's fields) was generated
        and billed all the same, so the usage it names (its last ``"usage": {...}`` that parses: a proxy's stray
        comma, a Content-Length short of the body), else its worst case (what its reservation held); anything
        else, its input."""
        start = bytes(self._buffer[:256])
        if not (self._whole_answer_coming() and _sniffed(start) == "json" and _ANSWER_SHAPE.search(self._buffer)):
            return input_only  # (not JSON, or another's shape: a gateway's own error, HTML labelled JSON)
        found = _edge_usage(self._buffer.decode("utf-8", "replace"), last=True)
        reported = self.adapter.reported_usage(found) if found is not None else None
        if reported is not None and reported.total_tokens:
            return reported.replace(estimated=True)
        return self.worst_usage().replace(estimated=True)

    def _whole_answer_coming(self) -> bool:
        """The response under way is a whole generated answer: a 200 with a JSON body (not a stream's events,
        however labelled; not an ``error`` object) to a call that generates one (not an embedding)."""
        start = bytes((self._head or self._buffer)[:256])  # (the body's start: kept apart once it is too large)
        looks = _sniffed(start)
        # JSON, however labelled and whatever was asked (a stream asked for and answered in JSON was generated
        # whole too); a body that says neither, by its label and what was asked
        whole = looks == "json" if looks is not None else (self._json_body and not self._sse)
        return (self.status == 200 and whole and self.call.endpoint != "embeddings"
                and not _ERROR_OBJECT(start[:128]))

    def _filled(self, usage: Usage) -> Usage:
        """The usage the server reported, with what it left out estimated (:func:`filled_usage`)."""
        return filled_usage(usage, input_estimate=self.estimate_input_tokens, model=self.call.model,
                            output_text=lambda: self._billed_text() or tool_arguments(self._json),
                            reported_output_stands=output_as_reported(self.call.body))

    def _seen_usage(self) -> Usage:
        """An answer that failed after it started: the usage the server reported (its input; Anthropic's
        ``message_start`` reports 1 output token) with at least the output seen so far, estimated; or both
        estimated when it reported none."""
        output = tokens.estimate_output_tokens(self._billed_text(), model=self.call.model)
        seen = self.state.usage
        if seen is not None and seen.input_tokens:
            usage = seen.replace(output_tokens=max(seen.output_tokens, output), estimated=True)
        else:
            usage = Usage(input_tokens=self.estimate_input_tokens(), output_tokens=output, estimated=True)
        if not usage.others and self.state.advisor_uses and not (seen is not None and seen.input_tokens
                                                                    and self.state.usage_final):
            # an advisor's inferences are reported with the final usage alone: each one the answer began, at the
            # most it may bill, reading the transcript so far
            usage = usage.replace(others=self.adapter.advisors(
                self.call.body, usage.input_tokens + usage.output_tokens, uses=self.state.advisor_uses))
        return usage

    def _fallback_record(self, error: BaseException | None) -> SpendRecord:
        """The record of a call whose record could not be built: charged its worst case (what it held), never a
        silent $0, unless even that cannot be priced."""
        try:
            # what a call the server answered may cost; one it refused or never answered costs nothing
            cost = self.worst_case_usd() if self.status is not None and self.status < 400 else Decimal(0)
        except Exception:  # noqa: BLE001 - the record is written whatever happens
            log.exception("llmbudget: pricing the worst case of a call that failed to settle failed; charged $0")
            cost = Decimal(0)
        return self._record(usage=Usage(estimated=True), cost=cost, source="none", estimated=True,
                            error=_describe(error, self.status))

    def _record(self, *, usage: Usage, cost: Decimal, source: str, estimated: bool, error: str | None) -> SpendRecord:
        scope = self.scope
        watch = self.engine.prefix_watch
        prefix = watch.observe(self.call.endpoint, self.call.model, self.call.body) \
            if watch is not None and source != "cache" else None
        if self.breakpoint:
            prefix = {**(prefix or {}), "breakpoint": "auto"}
        output = self.output
        if source != "cache" and self.status == 200 and wants_json(self.call.body):
            verdict = "cut" if "length" in self.state.finish_reasons else "valid"
            if verdict == "valid" and not self._valid_json():
                verdict = "invalid"
            output = {**(output or {}), "json": verdict}
        return SpendRecord(
            time=self.time,
            endpoint=self.call.endpoint,
            base_url=self.call.base_url,
            model_requested=self.model_requested,
            model_sent=self.call.model,
            model_answered=self.state.model,
            usage=usage,
            cost_usd=cost,
            latency_s=time.perf_counter() - self.started,
            tenant=(scope.tenant if scope else None) or self.engine.default_tenant,
            request_id=scope.request_id if scope else None,
            test_id=scope.test_id if scope else None,
            status=self.status,
            attempt=self.attempt,
            price_source=source,
            estimated=estimated,
            error=error,
            routed=self.routed,
            capped=self.capped,
            routing=self.routing,
            truncated_by_cap=self.capped and "length" in self.state.finish_reasons,
            prefix=prefix,
            output=output,
            sequence=self.sequence,
        )


#: Endpoints the Batch API runs.
_BATCHED = frozenset({"chat.completions", "responses", "embeddings", "completions", "messages"})

# set by JSONDecoder.__init__ (the C scanner when there is one); typeshed does not declare it
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _json_loads(text: str) -> Any:
    """``json.loads(text)``: the same scanner, without the wrapper's steps that are no-ops for an object or array."""
    if text[:1] not in ("{", "["):
        return json.loads(text)
    try:
        value, end = _scan_json(text, 0)
    except StopIteration as exc:
        raise json.JSONDecodeError("Expecting value", text, exc.value) from None
    if end != len(text) and text[end:].strip(" \t\n\r"):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


_EVENT_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")
_QUEUED = re.compile(rb'"status"\s*:\s*"(queued|in_progress)"')


def _asks_stream(value: Any) -> bool:
    """Whether a request's ``stream`` asks for one, as lax servers read it: true, and "true" or 1 too (never
    "false", which is a truthy string)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return value is True or (type(value) is int and value == 1)


_LINE_END = re.compile(rb"\r\n|\r|\n")
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]').search
_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,')


#: How much of a stream closed after its answer's end is read on for its usage (:meth:`Attempt.awaits_usage`), and
#: for how long at most.
DRAIN_BYTES = 1 << 20
DRAIN_S = 2.0
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"[^"]')  # (not "": a server that writes it on every chunk)
_STREAM_DONE = re.compile(rb'(?:^|[\r\n])data:\s*\[DONE\]')
_RESPONSE_ENDED = re.compile(rb'"response\.(?:completed|incomplete|failed)"')


def _shown_event(event: bytes) -> bytes:
    """An event of a stream whose usage llmbudget asked for the app: none for the usage's own, else the event
    without the ``"usage": null`` the server adds to each chunk then (its SDK object's ``to_json()`` would show
    it)."""
    if b'"usage"' not in event:
        return event
    if _usage_only(event):
        return b""
    return _USAGE_NULL.sub(b"", event)


def _usage_only(event: bytes) -> bool:
    """Whether an event is a chat stream's usage chunk (``"choices": []`` and its ``usage``), which the server
    sends when asked ``stream_options.include_usage``."""
    if not _NO_CHOICES(event):
        return False
    data = b"".join(line[5:] for line in event.splitlines() if line.startswith(b"data:"))
    try:
        chunk = json.loads(data)
    except ValueError:
        return False
    return isinstance(chunk, dict) and chunk.get("choices") == [] and isinstance(chunk.get("usage"), dict)


def _sniffed(body: bytes | bytearray) -> str | None:
    """What a response body is by its first bytes (a UTF-8 byte-order mark and blank space skipped): "json" (an
    object or array), "events" (a server-sent event's field or comment), or None (neither: its label decides)."""
    start = bytes(body[:256]).removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if start[:1] in (b"{", b"["):
        return "json"
    return "events" if start.startswith(_EVENT_FIELDS) else None


def _json_body(body: bytes | bytearray) -> Any:
    """``json.loads(body)``: a body opening with ``{`` then a non-NUL byte is the UTF-8 that json.loads would
    detect; anything else (UTF-16 or 32, a BOM...) goes to json.loads itself."""
    if body[:1] == b"{" and body[1:2] != b"\x00":
        return _json_loads(body.decode("utf-8", "surrogatepass"))
    return json.loads(body)


_EVENTS_PER_PARSE = 512


def _sse_payloads(text: str, state: ResponseState) -> tuple[list[str], str]:
    """The ``data:`` payloads of a stream's events, alone and joined by commas; ``[DONE]`` marks ``state`` done."""
    if text.startswith("data: ") and text.endswith("\n\n"):
        # The usual shape, one ``data: `` line per event, takes one split; any other newline, the long way.
        payloads = text[6:-2].split("\n\ndata: ")
        done = "[DONE]" in payloads
        if done or "" in payloads:
            payloads = [payload for payload in payloads if payload and payload != "[DONE]"]
        joined = ",".join(payloads)
        if "\n" not in joined:
            state.done = state.done or done
            return payloads, joined
    payloads = []
    for block in text.split("\n\n"):
        if block.startswith("data: ") and "\n" not in block:
            payload = block[6:]
        else:
            payload = "\n".join(line[6:] if line[5:6] == " " else line[5:]  # (one space goes, as the SDKs read it)
                                for line in block.split("\n") if line.startswith("data:"))  # (not U+2028)
        if payload == "[DONE]":
            state.done = True
        elif payload:
            payloads.append(payload)
    return payloads, ",".join(payloads)


# Provider endpoints that bill but that llmbudget has no adapter for: images, audio, an app's own Batch API jobs
# (batches made with llmbudget.defer("batch") are priced), fine-tuning, video, Assistants and evals runs,
# Anthropic's legacy completions, and Claude on Bedrock and Vertex (the anthropic SDK's AnthropicBedrock and
# AnthropicVertex name the model in the path). Their calls pass through, said once.
_UNPRICED_ENDPOINTS = ("/images/generations", "/images/edits", "/images/variations", "/audio/speech",
                       "/audio/transcriptions", "/audio/translations", "/batches", "/fine_tuning/jobs", "/videos",
                       "/realtime/sessions", "/realtime/client_secrets", "/runs", "/v1/complete", "/invoke",
                       "/invoke-with-response-stream", ":rawPredict", ":streamRawPredict")


_INTERNAL: contextvars.ContextVar[bool] = contextvars.ContextVar("llmbudget_internal_requests", default=False)


@contextlib.contextmanager
def internal_requests() -> Iterator[None]:
    """llmbudget's own requests in this context (the batcher's files and batches): not warned about."""
    token = _INTERNAL.set(True)
    try:
        yield
    finally:
        _INTERNAL.reset(token)


def _unpriced_endpoint(path: str) -> str | None:
    """The billed endpoint without an adapter that ``path`` ends with, if any (none for llmbudget's own)."""
    if _INTERNAL.get():
        return None
    path = path.rstrip("/")
    return next((tail for tail in _UNPRICED_ENDPOINTS if path.endswith(tail)), None)


def _never_sent(error: BaseException) -> bool:
    """Connection failures never reached the provider: nothing to pay."""
    name = type(error).__name__
    return name in ("ConnectError", "ConnectTimeout", "PoolTimeout", "UnsupportedProtocol", "ProxyError")


def _timed_out_waiting(error: BaseException) -> bool:
    """A read timeout before any response: the request was sent whole and the provider is working on it."""
    return type(error).__name__ == "ReadTimeout"


def _deployment(base_url: str) -> bool:
    """An Azure OpenAI deployment's URL: the deployment named in it answers, whatever model the body names."""
    return "/openai/deployments/" in base_url


def _unknown_model(base_url: str) -> bool:
    """A host where the request's model is a deployment's name (Azure OpenAI, its deployment URLs and its v1
    API): what model runs is not known from the request, and it may reason, which llmbudget's own caps would
    cut (an o3-mini deployment named "classifier")."""
    if _deployment(base_url):
        return True
    return _host(base_url).endswith((".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com"))


def _openai(base_url: str) -> bool:
    """Whether ``base_url`` is OpenAI's own API host, regional ones too (``eu.api.openai.com``), not one whose name
    or path only holds "api.openai.com" (``https://api.openai.com.evil.example``, ``https://proxy.example/api.openai.com``)."""
    host = _host(base_url)
    return host == "api.openai.com" or host.endswith(".api.openai.com")


def _host(base_url: str) -> str:
    """The host of ``base_url`` ("" for a URL that does not parse)."""
    try:
        return (urlsplit(base_url).hostname or "").rstrip(".")
    except ValueError:
        return ""


#: Query parameters that may hold a credential or change with each signed URL (Azure SAS fields, expiries): never
#: part of a cache key; nor is one a part of whose name says so (:func:`_secret_param`).
_SECRET_PARAMS = frozenset(("code", "expires", "sv", "se", "st", "sp", "sr", "ss", "srt", "spr", "skoid", "sktid",
                            "skt", "ske", "sks", "skv", "sdd", "sip"))
_SECRET_PARTS = frozenset(("key", "apikey", "token", "secret", "sig", "signature", "auth", "credential",
                           "credentials", "session", "jwt", "password", "passwd", "amz", "goog"))


def _secret_param(name: str) -> bool:
    """Whether query parameter ``name`` may hold a credential: one of :data:`_SECRET_PARAMS`, or a part of its
    name (split at ``-``, ``_``, ``.`` and camel case: ``api-key``, ``auth_token``, ``apiToken``,
    ``X-Goog-Signature``) one of :data:`_SECRET_PARTS` (not "author", "keywords" or "design")."""
    parts = re.split(r"[-_.]|(?<=[a-z0-9])(?=[A-Z])", name)
    return name.lower() in _SECRET_PARAMS or any(part.lower() in _SECRET_PARTS for part in parts)


def _answer_query(url: str) -> str:
    """The query of ``url`` sorted, without the parameters that may hold a credential ("" for none)."""
    query = url.split("?", 1)[1] if "?" in url else ""
    if not query:
        return ""
    kept = sorted((name, value) for name, value in parse_qsl(query, keep_blank_values=True) if not _secret_param(name))
    return urlencode(kept)


def _may_reason(endpoint: str, body: Mapping[str, Any], base_url: str) -> bool:
    """Whether the model the request goes to reasons (a limit bounds its thinking too), or is not known from the
    request (an Azure deployment's): a cap the policy sets (a tier's ``max_output_tokens``, a budget's) is not
    added to such a call."""
    return thinks(endpoint, body, body.get("model")) or _unknown_model(base_url)


def _may_think(endpoint: str, body: Mapping[str, Any], base_url: str) -> bool:
    """:func:`_may_reason`, or the model is not known not to reason (``caps.plain_model``: a self-hosted
    reasoning model's name): no cap of llmbudget's own making (a schema's bounds, a length directive's) is added
    to such a call; capped, a reasoning model spent it thinking and the app got no answer (no JSON for a
    schema)."""
    return _may_reason(endpoint, body, base_url) or not plain_model(body.get("model"))


def _cancelled(error: BaseException) -> bool:
    """The caller stopped waiting: its task was cancelled (asyncio's or trio's cancellation), or its thread was
    interrupted (``KeyboardInterrupt``, a worker's ``SystemExit``, ``gevent.Timeout``): none is an ``Exception``."""
    return not isinstance(error, Exception)


def _describe(error: BaseException | None, status: int | None) -> str:
    if error is not None:
        return f"{type(error).__name__}: {error}"[:500]
    return f"HTTP {status}" if status is not None else "no response"


_engine = Engine()
_INITIAL = _engine
_engine_lock = threading.Lock()


#: The order calls start in, in this process (``SpendRecord.sequence``); see :func:`next_sequence`.
_SEQUENCE = itertools.count(1)


def next_sequence() -> int:
    """A number above every call's ``SpendRecord.sequence`` so far and below every later one's."""
    return next(_SEQUENCE)


#: Observers of every engine's records, whichever engine is current (see :func:`watch_every_engine`).
_WATCHERS: tuple[Observer, ...] = ()
_WATCHERS_LOCK = threading.Lock()


def watch_every_engine(observer: Observer) -> None:
    """Call ``observer`` with every settled record of every engine, the current one or any other: what the pytest
    plugin measures with, since an app under test may :func:`configure` an engine of its own at any time."""
    global _WATCHERS
    with _WATCHERS_LOCK:
        _WATCHERS = (*_WATCHERS, observer)


def unwatch_every_engine(observer: Observer) -> None:
    """Stop calling ``observer`` (see :func:`watch_every_engine`)."""
    global _WATCHERS
    with _WATCHERS_LOCK:
        _WATCHERS = tuple(o for o in _WATCHERS if o is not observer)


def engine_configured() -> bool:
    """Whether the app made an engine current (:func:`configure`, :func:`set_engine`, a policy with engine keys)."""
    return _engine is not _INITIAL


def get_engine() -> Engine:
    """The engine calls are judged by (set with :func:`configure`)."""
    return _engine


def set_engine(engine: Engine) -> Engine:
    """Make ``engine`` the current one; returns the previous one."""
    global _engine
    with _engine_lock:
        previous, _engine = _engine, engine
    return previous


_P = ParamSpec("_P")


def _keywords_of(build: Callable[_P, Engine]) -> Callable[[Callable[..., Engine]], Callable[_P, Engine]]:
    """Give the decorated function ``build``'s parameters: for type checkers (its type) and for ``help()`` and
    ``inspect.signature`` (its ``__signature__``)."""
    def typed(function: Callable[..., Engine]) -> Callable[_P, Engine]:
        signature = inspect.signature(build)
        function.__signature__ = signature.replace(return_annotation="Engine")  # type: ignore[attr-defined]
        return function

    return typed


#: The engine the last :func:`configure` made, and the keywords it was given.
_configured: tuple[weakref.ref[Engine], frozenset[str]] | None = None


@_keywords_of(Engine)
def configure(**options: Any) -> Engine:
    """Build an :class:`Engine` from keyword options (those of ``Engine(...)``, typed alike) and make it current.
    Returns it. It takes the whole configuration: what an earlier call set and this one does not pass is gone (a
    warning names it)."""
    global _configured, _engine
    engine = Engine(**options)
    with _engine_lock:  # (two threads configuring at once: each compares with the engine it replaced)
        previous, _engine = _engine, engine
        earlier, _configured = _configured, (weakref.ref(engine), frozenset(options))
    if earlier is not None and earlier[0]() is previous:
        dropped = sorted(earlier[1] - options.keys())
        if dropped:
            warnings.warn(
                f"llmbudget.configure() replaced the engine an earlier configure() made: its {', '.join(dropped)} "
                "no longer apply (configure takes the whole configuration: pass every option in one call)",
                UserWarning, stacklevel=2)
    return engine
