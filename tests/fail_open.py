"""A fail-open budget store's process killed with a call in flight, for tests of every store."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal

from llmbudget.ledger.budgets import Budget, BudgetStore, Refusal, Reservation

#: ``python -c HOLD_AND_DIE.format(store=...) ARG``: a process that makes a fail-open hold of $0.20 against
#: :func:`bucket` and is SIGKILLed with it (an OOM kill, a worker timeout), its call at the provider.
HOLD_AND_DIE = """
import os, signal, sys, time
from decimal import Decimal
from llmbudget.ledger import RedisBudgetStore, SQLiteBudgetStore
from llmbudget.ledger.budgets import Budget, Reservation
store = {store}
bucket = Budget("1", per="global", period="day").bucket(tenant="t", request_id="r", now=time.time())
held = store.reserve([bucket], Decimal("0.2"))
assert isinstance(held, Reservation), held
os.kill(os.getpid(), signal.SIGKILL)
"""


def bucket() -> object:
    return Budget("1", per="global", period="day").bucket(tenant="t", request_id="r", now=time.time())


def assert_a_killed_hold_is_counted_and_charged(store: BudgetStore, child_store: str, arg: str,
                                                come_back: Callable[[], None],
                                                spent: Callable[[str], Decimal]) -> None:
    """While the store is down, a process killed with a hold leaves it counted by ``store`` (a process of the same
    host), and once the store answers (``come_back``), charged what it held: ``spent(key)`` is its $0.20 and
    ``store``'s own $0.05."""
    child = subprocess.run([sys.executable, "-c", HOLD_AND_DIE.format(store=child_store), arg],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    limit = bucket()
    # still down: 0.75 (the floor of a process that may spend open_share) + the 0.2 the killed one held + 0.1 > 1
    assert isinstance(store.reserve([limit], Decimal("0.1")), Refusal)  # type: ignore[list-item]
    served = store.reserve([limit], Decimal("0.05"))  # type: ignore[list-item]
    assert isinstance(served, Reservation)
    store.settle(served, Decimal("0.05"))
    come_back()
    assert isinstance(store.reserve([limit], Decimal("0.01")), Reservation)  # type: ignore[list-item]
    assert spent(limit.key) == Decimal("0.25")  # type: ignore[attr-defined]
