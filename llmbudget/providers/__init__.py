"""Provider adapters: one per wire format (OpenAI's four, Anthropic's Messages)."""

from __future__ import annotations

from ._base import Adapter, ResponseState
from .chat import ChatAdapter
from .completions import CompletionsAdapter
from .embeddings import EmbeddingsAdapter
from .messages import MessagesAdapter
from .responses import ResponsesAdapter, ResponsesCompactAdapter

__all__ = ["Adapter", "ResponseState", "ADAPTERS", "adapter_for_path", "adapter_for_endpoint"]

#: Longest path first: ``/chat/completions`` must win over ``/completions``.
ADAPTERS: tuple[Adapter, ...] = (ChatAdapter(), ResponsesCompactAdapter(), ResponsesAdapter(), EmbeddingsAdapter(),
                                 CompletionsAdapter(), MessagesAdapter())
_BY_ENDPOINT = {adapter.endpoint: adapter for adapter in ADAPTERS}


def adapter_for_path(path: str) -> tuple[Adapter, str] | None:
    """The adapter whose endpoint ``path`` ends with, and the path before it."""
    path = path.rstrip("/")
    for adapter in ADAPTERS:
        if path.endswith(adapter.path):
            if adapter.endpoint == "messages" and "/threads/" in path:  # OpenAI Assistants: not an LLM call
                continue
            return adapter, path[: -len(adapter.path)]
    return None


def adapter_for_endpoint(endpoint: str) -> Adapter:
    try:
        return _BY_ENDPOINT[endpoint]
    except KeyError:
        raise ValueError(
            f"unknown endpoint {endpoint!r}: expected one of {', '.join(_BY_ENDPOINT)}"
        ) from None
