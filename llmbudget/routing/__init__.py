"""Request-complexity routing: tiers, cheap features, a small shipped model, offline evaluation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .tiers import Decision, Routing, Tier

if TYPE_CHECKING:
    from .classifier import Router, load_weights
    from .evaluate import eval_router
    from .features import FEATURE_NAMES, extract, feature_dict

__all__ = ["FEATURE_NAMES", "Decision", "Router", "Routing", "Tier", "eval_router", "extract", "feature_dict",
           "load_weights"]

_LAZY = {"Router": "classifier", "load_weights": "classifier", "eval_router": "evaluate",
         "FEATURE_NAMES": "features", "extract": "features", "feature_dict": "features"}


def __getattr__(name: str) -> Any:
    """The model, its features and the evaluation load numpy: import them when first asked for."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
