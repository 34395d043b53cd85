"""Spend records and budgets, with memory and SQLite backends."""

from __future__ import annotations

from .budgets import Bucket, Budget, BudgetStore, MemoryBudgetStore, Refusal, Reservation, SQLiteBudgetStore
from .records import Ledger, MemoryLedger, SQLiteLedger

__all__ = [
    "Bucket",
    "Budget",
    "BudgetStore",
    "Ledger",
    "MemoryBudgetStore",
    "MemoryLedger",
    "Refusal",
    "Reservation",
    "SQLiteBudgetStore",
    "SQLiteLedger",
]
