"""Spend records and budgets, with memory, SQLite and Redis backends."""

from __future__ import annotations

from .budgets import (
    Bucket,
    Budget,
    BudgetStore,
    MemoryBudgetStore,
    Refusal,
    Reservation,
    SQLiteBudgetStore,
)
from .records import Ledger, MemoryLedger, SQLiteLedger
from .redis import BudgetStoreUnavailable, RedisBudgetStore, RedisLedger

__all__ = [
    "Bucket",
    "Budget",
    "BudgetStore",
    "BudgetStoreUnavailable",
    "Ledger",
    "MemoryBudgetStore",
    "MemoryLedger",
    "RedisBudgetStore",
    "RedisLedger",
    "Refusal",
    "Reservation",
    "SQLiteBudgetStore",
    "SQLiteLedger",
]
