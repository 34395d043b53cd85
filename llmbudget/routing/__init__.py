"""Request-complexity routing: cheap features, a small shipped model, offline evaluation."""

from __future__ import annotations

from .classifier import Router, load_weights
from .evaluate import eval_router
from .features import FEATURE_NAMES, extract, feature_dict

__all__ = ["FEATURE_NAMES", "Router", "eval_router", "extract", "feature_dict", "load_weights"]
