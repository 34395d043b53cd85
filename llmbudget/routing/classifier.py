"""The request-complexity router: a small logistic model over cheap request features.

``Router().score(body)`` is the probability-like score, in [0, 1], that a
request needs the strong model; requests scoring at or above
``Router().threshold`` go to the strong tier.  The weights ship with the
package (``router_weights.json``, written by ``ci/train/train_router.py``).
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from llmbudget.routing.features import FEATURE_NAMES, extract_with_words

__all__ = ["WEIGHTS_FORMAT", "Router", "load_weights"]

_NO_HITS: frozenset[bytes] = frozenset()

#: The ``format`` tag of a weights file this module can read.
WEIGHTS_FORMAT = "llmbudget-router/1"


def load_weights(source: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read router weights: the shipped file (``None``), a path, or an already-parsed mapping."""
    if source is None:
        text = resources.files("llmbudget.routing").joinpath("router_weights.json").read_text(encoding="utf-8")
        doc: Any = json.loads(text)
    elif isinstance(source, Mapping):
        doc = dict(source)
    else:
        doc = json.loads(Path(source).read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("format") != WEIGHTS_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(
            f"router weights have format {found!r}, expected {WEIGHTS_FORMAT!r}; "
            "regenerate them with ci/train/train_router.py"
        )
    return doc


class Router:
    """Scores how much a request needs the strong model, from shipped or given weights."""

    __slots__ = ("threshold", "_bias", "_weights", "_centre", "_names", "_words", "_word_keys")

    def __init__(
        self, weights: str | Path | Mapping[str, Any] | None = None, *, threshold: float | None = None
    ) -> None:
        doc = load_weights(weights)
        names = list(doc["features"])
        unknown = [n for n in names if n not in FEATURE_NAMES]
        if unknown:
            raise ValueError(f"router weights use features this version does not compute: {unknown}")
        by_name = {
            n: (float(c), float(m), float(s)) for n, c, m, s in zip(names, doc["coef"], doc["mean"], doc["scale"])
        }
        # fold the standardisation into the weights: z = bias + sum(w_i * x_i)
        self._weights = [by_name[n][0] / by_name[n][2] if n in by_name else 0.0 for n in FEATURE_NAMES]
        self._centre = [by_name[n][1] if n in by_name else 0.0 for n in FEATURE_NAMES]
        self._bias = float(doc["intercept"]) - sum(map(operator.mul, self._weights, self._centre))
        self._names = FEATURE_NAMES
        self._words = {w.encode("utf-8"): float(v) for w, v in dict(doc.get("words") or {}).items()}
        self._word_keys = frozenset(self._words)
        self.threshold = float(doc.get("threshold", 0.5) if threshold is None else threshold)

    def _logit(self, body: Any) -> tuple[float, list[float], frozenset[bytes] | set[bytes]]:
        x, words = extract_with_words(body)
        z = self._bias + sum(map(operator.mul, self._weights, x))
        hits = words & self._word_keys if self._word_keys else _NO_HITS
        for w in hits:
            z += self._words[w]
        return z, x, hits

    def score(self, body: Any) -> float:
        """Score in [0, 1]: higher means the request more likely needs the strong model."""
        z = self._logit(body)[0]
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def needs_strong(self, body: Any) -> bool:
        """Whether ``score(body)`` reaches the threshold."""
        return self.score(body) >= self.threshold

    def explain(self, body: Any, *, top: int = 5) -> list[tuple[str, float]]:
        """The ``top`` largest contributions to the score's log-odds, relative to a typical request."""
        _, x, hits = self._logit(body)
        parts = [
            (name, w * (v - c))
            for name, w, v, c in zip(self._names, self._weights, x, self._centre)
            if w and v != c
        ]
        parts.extend((f"word:{w.decode('utf-8', 'replace')}", self._words[w]) for w in hits)
        parts.sort(key=lambda item: (-abs(item[1]), item[0]))
        return [(name, round(value, 4)) for name, value in parts[: max(top, 0)]]

    def __repr__(self) -> str:
        return f"Router(threshold={self.threshold:.4f}, features={len(self._names)}, words={len(self._words)})"
