"""``llmbudget.scope`` refuses arguments it would misread later, when the block starts."""

from __future__ import annotations

from decimal import Decimal

import pytest

import llmbudget
from llmbudget import Budget


@pytest.mark.parametrize("arguments, error, message", [
    # A budget that is not a Budget failed at the first call's reservation, which then went ahead unbudgeted.
    ({"budgets": [5]}, TypeError, "item 0 is 5, not a Budget"),
    ({"budgets": [Budget("1"), "0.05"]}, TypeError, "item 1 is '0.05', not a Budget"),
    ({"budgets": Budget("0.05")}, TypeError, "expected a list of Budget"),
    ({"budgets": "0.05"}, TypeError, "expected a list of Budget"),
    # An empty tenant put the block's calls in the engine's shared default tenant.
    ({"tenant": ""}, ValueError, "scope(tenant=''): expected a non-empty string"),
    ({"tenant": 42}, TypeError, "scope(tenant=42)"),
    ({"request_id": b"r1"}, TypeError, "scope(request_id=b'r1')"),
    ({"test_id": ""}, ValueError, "scope(test_id='')"),
    ({"downgrade_to": ""}, ValueError, "scope(downgrade_to='')"),
    ({"cache": "no"}, ValueError, "scope(cache='no'): expected True, False or None"),
    ({"routing": ""}, ValueError, "scope(routing='')"),
    ({"routing": 1.0}, ValueError, "scope(routing=1.0)"),
    ({"cap_min_output_tokens": 0}, ValueError, "scope(cap_min_output_tokens=0)"),
    ({"cap_min_output_tokens": True}, ValueError, "scope(cap_min_output_tokens=True)"),
])
def test_a_scope_refuses_what_it_would_misread(arguments, error, message):
    with pytest.raises(error) as caught, llmbudget.scope(**arguments):
        pass
    assert message in str(caught.value)


def test_good_arguments_are_kept(engine):
    budgets = (Budget("0.05"), Budget("5", per="tenant", period="day"))
    with llmbudget.scope(tenant="acme", request_id="r-1", test_id="t::1", budgets=list(budgets), cache=False,
                         routing="large", downgrade_to="gpt-4o-mini", cap_min_output_tokens=8) as outer:
        assert (outer.tenant, outer.request_id, outer.budgets, outer.cache, outer.routing) == (
            "acme", "r-1", budgets, False, "large")
        with llmbudget.scope(budgets=(b for b in [Budget(Decimal("0.01"))]), routing=False) as inner:
            assert inner.tenant == "acme" and inner.budgets == (Budget("0.01"),) and inner.routing is False
            # the request's own id, as its records and logs say (a new random one hid them from the request)
            assert inner.request_id == "r-1"
            with llmbudget.defer("flex"):
                assert llmbudget.current_scope().request_id == "r-1"
        with llmbudget.scope(request_id="r-2") as named:
            assert named.request_id == "r-2"
    with llmbudget.scope() as alone, llmbudget.scope() as nested:
        assert len(alone.request_id) == 32 and nested.request_id == alone.request_id


@pytest.mark.parametrize("arguments, error, message", [
    ({"default_tenant": ""}, ValueError, "default_tenant must be a non-empty string, got ''"),
    ({"default_tenant": 5}, ValueError, "default_tenant must be a non-empty string, got 5"),
    ({"budgets": "0.05"}, TypeError, "budgets must be a list of llmbudget.Budget, got '0.05'"),
    ({"budgets": Budget("1")}, TypeError, "budgets must be a list of llmbudget.Budget"),
])
def test_an_engine_refuses_what_it_would_misread(arguments, error, message):
    with pytest.raises(error) as caught:
        llmbudget.Engine(**arguments)
    assert message in str(caught.value)


def test_a_tenant_named_inside_a_disabled_routes_scope_keeps_what_the_apps_own_scopes_set(engine) -> None:
    """A disabled route's scope keeps its calls (which name no tenant) away from the cache and the router; a
    scope naming a tenant inside it starts from what the app's own scopes set, never from that rule, and never
    loses the app's own settings (it lost them all when a scope stood between)."""
    with llmbudget.scope(cache=False, routing=False, output=False) as route:
        route.passing_by = True  # as the middleware makes it
        with llmbudget.scope(tenant="acme") as direct:
            assert (direct.cache, direct.routing, direct.output) == (None, None, None)
        with llmbudget.scope(budgets=[Budget("1")]) as middle, llmbudget.scope(tenant="acme") as inner:
            assert middle.cache is False and inner.cache is None and inner.routing is None
        with llmbudget.scope(routing="large"), llmbudget.defer("flex"), llmbudget.scope(tenant="acme") as own:
            assert (own.routing, own.defer, own.cache) == ("large", "flex", None)


def test_a_scopes_per_request_store_is_made_once_on_first_use_and_may_be_set() -> None:
    """Most served requests' scopes hold no per-request budget: the store is made when one is first counted, once
    for all of the scope's threads, and an app may still give a scope its own."""
    import threading

    from llmbudget.ledger.budgets import MemoryBudgetStore

    with llmbudget.scope() as scope:
        assert scope._store is None  # nothing made for a scope that counts no per-request budget
        seen: list[MemoryBudgetStore] = []
        barrier = threading.Barrier(6)

        def take() -> None:
            barrier.wait()
            seen.append(scope.store)

        threads = [threading.Thread(target=take) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len({id(store) for store in seen}) == 1 and scope.store is seen[0]
        own = MemoryBudgetStore()
        scope.store = own
        assert scope.store is own
