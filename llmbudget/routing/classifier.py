"""The request-complexity router: a small logistic model over cheap request features.

``Router().score(body)`` is the probability-like score, in [0, 1], that a
request needs the strong model; requests scoring at or above
``Router().threshold`` go to the strong tier.  The weights ship with the
package (``router_weights.json``, written by ``ci/train/train_router.py``).

The log-odds are a linear function of the hand features plus, when the weights
carry an ``embedding`` block, one term linear in the prompt's WordLlama vector
(``llmbudget.routing.embedding``): ``direction . vector + offset``, centred so
that it is 0 on average over the training prompts.  When the WordLlama files
cannot be loaded the term is left out (a warning says so once) and the router
still works on the hand features alone.
"""

from __future__ import annotations

import json
import logging
import math
import operator
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from llmbudget.routing.embedding import VECTORS_NAME, PromptVectors
from llmbudget.routing.features import FEATURE_NAMES, extract_with_text

__all__ = ["WEIGHTS_FORMAT", "Router", "load_weights"]

logger = logging.getLogger("llmbudget.routing")

_NO_HITS: frozenset[bytes] = frozenset()
_VECTORS = PromptVectors()  # shared by every Router: one word cache per process
_VECTORS_BROKEN: list[str] = []  # why the vectors could not load, once known

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


def _vectors() -> PromptVectors | None:
    """The shared prompt vectors, loaded; ``None`` (with one warning) when WordLlama cannot load."""
    if _VECTORS_BROKEN:
        return None
    try:
        _VECTORS.load()
    except Exception as exc:  # ImportError, FileNotFoundError, a broken wheel: route on hand features
        _VECTORS_BROKEN.append(repr(exc))
        logger.warning(
            "router: the WordLlama prompt vectors could not be loaded (%r); routing on the hand "
            "features alone. Install or repair the 'wordllama' package to restore the embedding term.",
            exc,
        )
        return None
    return _VECTORS


class Router:
    """Scores how much a request needs the strong model, from shipped or given weights."""

    __slots__ = (
        "threshold", "_bias", "_weights", "_centre", "_names", "_words", "_word_keys", "_direction", "_offset"
    )

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
        self._direction: np.ndarray | None = None
        self._offset = 0.0
        embedding = doc.get("embedding")
        if embedding:
            if embedding.get("vectors") != VECTORS_NAME:
                raise ValueError(
                    f"router weights were trained on prompt vectors {embedding.get('vectors')!r}; this version "
                    f"computes {VECTORS_NAME!r}; regenerate them with ci/train/train_router.py"
                )
            direction = np.asarray(embedding["direction"], dtype=np.float32)
            if direction.shape != (PromptVectors.dim,):
                raise ValueError(
                    f"router embedding direction has shape {direction.shape}, expected ({PromptVectors.dim},)"
                )
            self._direction = direction
            self._offset = float(embedding["offset"])
        self.threshold = float(doc.get("threshold", 0.5) if threshold is None else threshold)

    def _embedding_term(self, text: str) -> float:
        if self._direction is None or not text:
            return 0.0
        vectors = _vectors()
        if vectors is None:
            return 0.0
        try:
            v = vectors.vector(text)
        except Exception:  # a routing feature must never break a request
            return 0.0
        return 0.0 if v is None else float(v @ self._direction) + self._offset

    def _logit(self, body: Any) -> tuple[float, list[float], frozenset[bytes] | set[bytes], float]:
        x, words, text = extract_with_text(body)
        z = self._bias + sum(map(operator.mul, self._weights, x))
        hits = words & self._word_keys if self._word_keys else _NO_HITS
        for w in hits:
            z += self._words[w]
        e = self._embedding_term(text)
        return z + e, x, hits, e

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
        """The ``top`` largest contributions to the score's log-odds, relative to a typical request.

        Hand features are named as in ``FEATURE_NAMES``; the prompt vector's whole
        contribution is one ``"embedding"`` term.
        """
        _, x, hits, e = self._logit(body)
        parts = [
            (name, w * (v - c))
            for name, w, v, c in zip(self._names, self._weights, x, self._centre)
            if w and v != c
        ]
        parts.extend((f"word:{w.decode('utf-8', 'replace')}", self._words[w]) for w in hits)
        if e:
            parts.append(("embedding", e))
        parts.sort(key=lambda item: (-abs(item[1]), item[0]))
        return [(name, round(value, 4)) for name, value in parts[: max(top, 0)]]

    def __repr__(self) -> str:
        return (
            f"Router(threshold={self.threshold:.4f}, features={len(self._names)}, words={len(self._words)}, "
            f"embedding={'on' if self._direction is not None else 'off'})"
        )
