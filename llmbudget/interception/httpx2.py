"""llmbudget's transports for httpx2 (the HTTP library of openai >= 3)."""

from __future__ import annotations

import httpx2 as _httpx2

from ._transport import Transports

transports = Transports(_httpx2)
LLMBudgetTransport = transports.Sync
AsyncLLMBudgetTransport = transports.Async

__all__ = ["LLMBudgetTransport", "AsyncLLMBudgetTransport", "transports"]
