"""llmbudget's transports for httpx (the HTTP library of openai 2.x)."""

from __future__ import annotations

import httpx as _httpx

from ._transport import Transports

transports = Transports(_httpx)
LLMBudgetTransport = transports.Sync
AsyncLLMBudgetTransport = transports.Async

__all__ = ["LLMBudgetTransport", "AsyncLLMBudgetTransport", "transports"]
