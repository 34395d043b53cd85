"""The scope of a request or a test: who is spending, under which budgets, and the running totals.

Set per inbound request by the middleware and per test by the pytest plugin;
set by hand with :func:`scope`. It is a context variable: it follows asyncio
tasks; threads started inside it get it through ``contextvars.copy_context()``.
"""

from __future__ import annotations

import contextvars
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .calls import Counters, SpendRecord
from .ledger.budgets import Budget, MemoryBudgetStore, budget_list

__all__ = ["Scope", "Totals", "scope", "current_scope"]


@dataclass
class Totals(Counters):
    """Running totals of a scope, with its records (thread-safe)."""

    records: list[SpendRecord] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, record: SpendRecord) -> None:
        with self._lock:
            self.add_record(record)
            self.records.append(record)

    def snapshot(self) -> Counters:
        """A consistent copy of the counters (without the records)."""
        with self._lock:
            copy = Counters()
            copy.merge(self)
            return copy


@dataclass(eq=False)
class Scope:
    """Who spends (tenant, request, test), the budgets that apply and what was spent so far."""

    tenant: str | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    test_id: str | None = None
    budgets: tuple[Budget, ...] = ()
    parent: Scope | None = None
    #: False turns the cache off for calls in this scope (None: as the enclosing scope says).
    cache: bool | None = None
    #: False turns routing off; a tier name forces that tier (None: as the enclosing scope says).
    routing: bool | str | None = None
    #: What a call over a budget does: "refuse", "downgrade" (to ``downgrade_to`` or the
    #: cheapest routing tier) or "cap" (its output to what is left, if at least
    #: ``cap_min_output_tokens``); None: as the enclosing scope says, else refuse.
    on_budget: str | None = None
    downgrade_to: str | None = None
    cap_min_output_tokens: int | None = None
    #: A length directive for calls in this scope (an ``llmbudget.output.Output``); False: none, whatever
    #: the engine or a tier says; None: as the enclosing scope says.
    output: Any = None
    #: "flex" or "batch": the scope's OpenAI calls are deferred (see ``llmbudget.defer``); None: as the
    #: enclosing scope says.
    defer: str | None = None
    #: Budget refusals of calls made in this scope (caught by the app or not).
    refusals: list[Any] = field(default_factory=list)
    totals: Totals = field(default_factory=Totals)
    #: Per-request budgets count in memory, in the scope itself (see :attr:`store`; made on first use: most
    #: scopes, one per served request, hold no per-request budget).
    _store: MemoryBudgetStore | None = field(default=None, repr=False, init=False)
    #: A disabled route's scope (the middleware's): its calls name no tenant, so they pass the cache, routing and
    #: directives by; a scope inside it that names a tenant does not inherit that.
    passing_by: bool = field(default=False, repr=False)
    #: The settings (cache, routing, output, defer) this scope was given, not inherited.
    given: frozenset[str] = field(default=frozenset(), repr=False)

    @property
    def store(self) -> MemoryBudgetStore:
        """Where this scope's per-request budgets count."""
        store = self._store
        if store is None:
            with _store_lock:
                if self._store is None:
                    self._store = MemoryBudgetStore()
                store = self._store
        return store

    @store.setter
    def store(self, store: MemoryBudgetStore) -> None:
        self._store = store

    def add(self, record: SpendRecord) -> None:
        node: Scope | None = self
        while node is not None:
            node.totals.add(record)
            node = node.parent


_store_lock = threading.Lock()  # a scope's calls in threads of their own make its store once
_current: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("llmbudget_scope", default=None)
#: The path of the app's request being served (set by the middleware): what routing's ``never`` globs match.
app_path: contextvars.ContextVar[str] = contextvars.ContextVar("llmbudget_app_path", default="")


def current_scope() -> Scope | None:
    """The scope of the running request or test, if any."""
    return _current.get()


def _passing_by(scope: Scope | None) -> bool:
    """Whether ``scope`` is inside a disabled route's scope."""
    while scope is not None:
        if scope.passing_by:
            return True
        scope = scope.parent
    return False


def _set_by_app(scope: Scope | None, name: str) -> Any:
    """The setting ``name`` as the nearest of the app's own scopes around a disabled route's set it, or None."""
    while scope is not None and not scope.passing_by:
        if name in scope.given:
            return getattr(scope, name)
        scope = scope.parent
    return None


def _check_scope_arguments(*, tenant: Any, request_id: Any, test_id: Any, cache: Any, routing: Any,
                           downgrade_to: Any, cap_min_output_tokens: Any) -> None:
    """Refuse what :func:`scope` would misread later: a budget that is not a :class:`Budget` left its calls
    unbudgeted, an empty tenant put them in the shared default tenant."""
    for name, value in (("tenant", tenant), ("request_id", request_id), ("test_id", test_id),
                        ("downgrade_to", downgrade_to)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"scope({name}={value!r}): expected a non-empty string or None")
        if value == "":
            raise ValueError(f"scope({name}=''): expected a non-empty string or None")
    if cache is not None and not isinstance(cache, bool):
        raise ValueError(f"scope(cache={cache!r}): expected True, False or None")
    if (routing is not None and not isinstance(routing, (bool, str))) or routing == "":
        raise ValueError(f"scope(routing={routing!r}): expected True, False, a tier name or None")
    if cap_min_output_tokens is not None and (isinstance(cap_min_output_tokens, bool)
                                              or not isinstance(cap_min_output_tokens, int)
                                              or cap_min_output_tokens < 1):
        raise ValueError(f"scope(cap_min_output_tokens={cap_min_output_tokens!r}): expected a whole number >= 1")


@contextmanager
def scope(
    *,
    tenant: str | None = None,
    request_id: str | None = None,
    budgets: Sequence[Budget] = (),
    test_id: str | None = None,
    cache: bool | None = None,
    routing: bool | str | None = None,
    on_budget: str | None = None,
    downgrade_to: str | None = None,
    cap_min_output_tokens: int | None = None,
    output: Any = None,
    defer: str | None = None,
) -> Iterator[Scope]:
    """Run a block as one scope: its calls count for ``tenant`` and are held to ``budgets``.

    A nested scope inherits the tenant, the request id and the test of the enclosing one, and
    its spending also counts in the enclosing scope's totals. ``cache=False``
    keeps the block's calls away from the cache; ``routing=False`` keeps their
    model, ``routing="large"`` forces that tier. ``on_budget`` says what a call
    over a budget does (see :class:`Scope`). ``output``: a length directive
    (``llmbudget.Output(max_words=120)`` or ``{"max_words": 120}``) for the block's
    calls; ``False`` turns directives off.
    """
    budgets = budget_list(budgets, "scope(budgets=...)")
    _check_scope_arguments(tenant=tenant, request_id=request_id, test_id=test_id, cache=cache,
                           routing=routing, downgrade_to=downgrade_to, cap_min_output_tokens=cap_min_output_tokens)
    if on_budget not in (None, "refuse", "downgrade", "cap"):
        raise ValueError(f"on_budget={on_budget!r}: expected 'refuse', 'downgrade' or 'cap'")
    if defer not in (None, "flex", "batch"):
        raise ValueError(f"defer={defer!r}: expected 'flex' or 'batch'")
    if output is not None and output is not False:
        from .output import Output

        output = Output.of(output, "scope(output=...)")
    parent = _current.get()
    given = {"cache": cache, "routing": routing, "output": output, "defer": defer}
    # a disabled route's settings are for calls that name no tenant: a scope naming one inside it keeps only what
    # the app's own scopes set
    escapes = tenant is not None and _passing_by(parent)

    def inherited(name: str) -> Any:
        if given[name] is not None:
            return given[name]
        if escapes:
            return _set_by_app(parent, name)
        return getattr(parent, name) if parent else None

    new = Scope(
        tenant=tenant if tenant is not None else (parent.tenant if parent else None),
        request_id=request_id or (parent.request_id if parent else uuid.uuid4().hex),
        test_id=test_id if test_id is not None else (parent.test_id if parent else None),
        budgets=tuple(budgets),
        parent=parent,
        cache=inherited("cache"),
        routing=inherited("routing"),
        on_budget=on_budget or (parent.on_budget if parent else None),
        downgrade_to=downgrade_to or (parent.downgrade_to if parent else None),
        cap_min_output_tokens=cap_min_output_tokens or (parent.cap_min_output_tokens if parent else None),
        output=inherited("output"),
        defer=inherited("defer"),
        given=frozenset(name for name, value in given.items() if value is not None),
    )
    token = _current.set(new)
    try:
        yield new
    finally:
        _current.reset(token)
