"""The semantic cache: exact and semantic tiers, safe by default, with a measured verifier."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cache import Cache, CacheLookup
from .keys import CacheKeys, cache_keys

if TYPE_CHECKING:
    from .embedders import Embedder, OpenAIEmbedder, SentenceTransformerEmbedder, WordLlamaEmbedder

__all__ = [
    "Cache",
    "CacheKeys",
    "CacheLookup",
    "Embedder",
    "OpenAIEmbedder",
    "SentenceTransformerEmbedder",
    "WordLlamaEmbedder",
    "cache_keys",
]

_LAZY = {"Embedder", "OpenAIEmbedder", "SentenceTransformerEmbedder", "WordLlamaEmbedder"}


def __getattr__(name: str) -> Any:
    """Embedders load numpy: import them only when asked for."""
    if name in _LAZY:
        from . import embedders

        return getattr(embedders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
