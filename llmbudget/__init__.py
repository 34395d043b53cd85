"""llmbudget: cut what an app spends on LLM APIs without changing what its users see."""

from __future__ import annotations

from .cache import Cache
from .calls import SpendRecord, Usage
from .config import ConfigError, Policy
from .defer import Batcher, defer
from .interception import async_http_client, http_client, install, installed, uninstall
from .ledger import Budget, MemoryBudgetStore, MemoryLedger, Refusal, SQLiteBudgetStore, SQLiteLedger
from .pipeline import Engine, configure, get_engine, set_engine
from .pricing import Price, Pricing, UnknownModelError, UnpricedModelWarning
from .middleware import LLMBudgetMiddleware, LLMBudgetWSGIMiddleware
from .output import Output
from .refusals import budget_refusal
from .routing.tiers import Routing, Tier
from .scope import Scope, current_scope, scope

__version__ = "0.1.0"

__all__ = [
    "Batcher",
    "Budget",
    "Cache",
    "ConfigError",
    "LLMBudgetMiddleware",
    "LLMBudgetWSGIMiddleware",
    "Policy",
    "Routing",
    "Tier",
    "Engine",
    "MemoryBudgetStore",
    "MemoryLedger",
    "Output",
    "Price",
    "Pricing",
    "Refusal",
    "SQLiteBudgetStore",
    "SQLiteLedger",
    "Scope",
    "SpendRecord",
    "UnknownModelError",
    "UnpricedModelWarning",
    "Usage",
    "async_http_client",
    "budget_refusal",
    "configure",
    "current_scope",
    "defer",
    "get_engine",
    "http_client",
    "install",
    "installed",
    "scope",
    "set_engine",
    "uninstall",
]
