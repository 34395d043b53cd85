"""Measure the semantic tier's hit decision on labeled question pairs."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..textfiles import utf8_lines
from .store import DEFAULT_MIN_COSINE
from .templates import DEFAULT_MAX_SEMANTIC_CHARS, TemplateGuard

if TYPE_CHECKING:
    from .reranker import RewordReranker
    from .verifier import Verifier

__all__ = ["DUPLICATE_SHARES", "PRECISION_TARGETS", "auc", "eval_pairs", "load_pairs", "pair_metrics", "recall_at_precision"]

logger = logging.getLogger("llmbudget.cache")

PRECISION_TARGETS: tuple[str, ...] = ("0.8", "0.9", "0.95")


#: Other names a pair file's fields go by (Quora's and GPTCache's, MRPC's, similar sets'): read as a, b, duplicate.
_FIELD_NAMES: dict[str, tuple[str, ...]] = {
    "a": ("a", "question1", "q1", "sentence1", "text1", "origin", "query"),
    "b": ("b", "question2", "q2", "sentence2", "text2", "similar", "paraphrase"),
    "duplicate": ("duplicate", "is_duplicate", "label"),
}
_LABELS = {"1": True, "0": False, "true": True, "false": False, "1.0": True, "0.0": False}


def _pair_row(row: Any) -> dict[str, Any]:
    """A line's object as ``{"a", "b", "duplicate": bool, ...}``, or a ``ValueError`` saying which field is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"a JSON object, not {type(row).__name__}")
    out = dict(row)
    for field, names in _FIELD_NAMES.items():
        present = [n for n in names if n in row]
        if len(present) > 1:
            raise ValueError(f"both {present[0]!r} and {present[1]!r}: which is the {field!r} field?")
        name = present[0] if present else None
        if name is None:
            raise ValueError(f"no {field!r} field (nor {', '.join(repr(n) for n in names[1:])}); it has "
                             f"{', '.join(repr(k) for k in list(row)[:8])}")
        value = row[name]
        if field == "duplicate":
            label = _LABELS.get(value.strip().lower()) if isinstance(value, str) else (
                bool(value) if isinstance(value, (bool, int, float)) and value in (0, 1) else None)
            if label is None:
                raise ValueError(f"{name!r} is {value!r}; expected true or false (or 1 / 0)")
            value = label
        elif not isinstance(value, str):
            raise ValueError(f"{name!r} is {type(value).__name__}, not a string")
        else:
            try:
                value.encode("utf-8")  # a lone surrogate ("\ud800") is not text a model can read
            except UnicodeEncodeError:
                raise ValueError(f"{name!r} is not valid Unicode (a lone surrogate)") from None
        out[field] = value
    return out


def read_pair_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The JSONL lines ``{"a": str, "b": str, "duplicate": bool, ...}`` of ``path`` (blank lines skipped), checked:
    a line that is not such an object, or whose texts are not valid Unicode, is a ``ValueError`` naming it and the
    field. Quora's names (``question1``, ``question2``, ``is_duplicate``) and a few others' are read too, and a
    label may be ``1`` / ``0`` or ``"true"`` / ``"1"``."""
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(utf8_lines(path), 1):
        if not line.strip():
            continue
        try:
            rows.append(_pair_row(json.loads(line)))
        except (ValueError, RecursionError) as exc:  # json's own errors are ValueErrors too
            why = "nested too deep" if isinstance(exc, RecursionError) else exc
            raise ValueError(f'{path}:{number}: expected {{"a": str, "b": str, "duplicate": bool}}: {why}') from None
    if not rows:
        raise ValueError(f'{path}: no pairs; expected JSON lines {{"a": str, "b": str, "duplicate": bool}}')
    return rows


def load_pairs(path: str | os.PathLike[str]) -> list[tuple[str, str, bool]]:
    """The pairs of :func:`read_pair_rows` as ``(a, b, duplicate)``."""
    return [(row["a"], row["b"], row["duplicate"]) for row in read_pair_rows(path)]


def auc(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); 0.5 when one class is missing."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return 0.5
    order = np.argsort(s, kind="mergesort")
    _, inverse, counts = np.unique(s[order], return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = ((ends - counts + 1 + ends) / 2.0)[inverse]
    return float((ranks[y].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def _negative_weight(labels: np.ndarray, duplicate_share: float | None) -> float:
    """Weight of each non-duplicate so that duplicates make up ``duplicate_share`` of the weighted pairs."""
    if duplicate_share is None:
        return 1.0
    if not 0.0 < duplicate_share < 1.0:
        raise ValueError(f"duplicate_share must be between 0 and 1, not {duplicate_share!r}")
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return 1.0
    return positives * (1.0 - duplicate_share) / (duplicate_share * negatives)


#: The score of a pair the store never scores (the length limit, the template guard, the cosine floor): no
#: threshold makes it a hit (a 0.0 did, at threshold 0, and gave recall 1.0 where nothing could ever hit).
_NEVER = float("-inf")


def _curve(labels: np.ndarray, scores: np.ndarray, negative_weight: float = 1.0
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and threshold at every distinct score, highest threshold first (never at
    :data:`_NEVER`: those pairs are no hit at any threshold)."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order].astype(np.float64)
    cut = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # last index of each run of equal scores
    cut = cut[s[cut] != _NEVER]
    tp = np.cumsum(y)[cut]
    fp = (cut + 1) - tp
    total = max(float(y.sum()), 1.0)
    return tp / (tp + negative_weight * fp), tp / total, s[cut]


def recall_at_precision(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray, target: float,
                        *, duplicate_share: float | None = None) -> float:
    """Highest recall of any threshold whose precision is at least ``target`` (0.0 if none).

    ``duplicate_share``: judge precision as if duplicates were that share of the
    pairs (non-duplicates reweighted), the expected figure of a resampled set.
    """
    y = np.asarray(labels, dtype=bool)
    precision, recall, _ = _curve(y, np.asarray(scores, dtype=np.float64), _negative_weight(y, duplicate_share))
    ok = precision >= target
    return float(recall[ok].max()) if ok.any() else 0.0


def pair_metrics(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray, threshold: float,
                 *, duplicate_share: float | None = None) -> dict[str, Any]:
    """AUC, recall at precision 0.8/0.9/0.95 and precision/recall of ``score >= threshold``.

    Precision is 1.0 when no pair reaches the threshold (no wrong hits). With
    ``duplicate_share``, precisions are those expected if duplicates made up
    that share of the pairs (non-duplicates reweighted); recall and AUC do not
    depend on it.
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    weight = _negative_weight(y, duplicate_share)
    hits = s >= threshold
    true_hits = int((hits & y).sum())
    wrong_hits = int((hits & ~y).sum())
    return {
        "pairs": len(y),
        "auc": auc(y, s),
        "recall_at_precision": {
            t: recall_at_precision(y, s, float(t), duplicate_share=duplicate_share) for t in PRECISION_TARGETS
        },
        "default": {
            "threshold": float(threshold),
            "precision": true_hits / (true_hits + weight * wrong_hits) if hits.any() else 1.0,
            "recall": true_hits / int(y.sum()) if y.any() else 0.0,
        },
    }


def _semantic_candidate(a: str, b: str, max_chars: int | None, guard: TemplateGuard | None) -> bool:
    """True when the store would score ``b`` as a candidate for ``a`` (length limit and template guard)."""
    if max_chars is not None and max(len(a), len(b)) > max_chars:
        return False
    return guard is None or not guard.conflict(b, a)


#: Duplicate shares ``eval_pairs`` also reports figures at (QQP's natural share, nearly and exactly balanced).
DUPLICATE_SHARES: tuple[float, ...] = (0.37, 0.45, 0.5)


def _cosine(u: np.ndarray, v: np.ndarray) -> float:
    return float(u @ v / max(float(np.linalg.norm(u) * np.linalg.norm(v)), 1e-12))


def eval_pairs(
    path: str | os.PathLike[str],
    *,
    verifier: Verifier | RewordReranker | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    duplicate_shares: Sequence[float] = DUPLICATE_SHARES,
    max_semantic_chars: int | None = DEFAULT_MAX_SEMANTIC_CHARS,
    template_guard: TemplateGuard | None = TemplateGuard(),
) -> dict[str, Any]:
    """Score every pair of a JSONL file as the semantic tier decides a hit, with its metrics.

    Each pair runs ``verifier.score(a, embed(a), b, embed(b))`` with a cold text
    cache, the call the cache store makes for a candidate; ``score_p50_ms`` and
    ``score_p99_ms`` time that whole step per pair, WordLlama embedding of both
    texts included. As in the store, a pair with a text longer than
    ``max_semantic_chars`` (``None``: no limit), or that ``template_guard``
    refuses (``None``: no guard), scores -inf (a hit at no threshold) without being embedded or scored; so does a pair
    below the store's WordLlama floor (0.6 for the bundled verifier; a second stage's ``verifier.min_cosine``,
    :class:`RewordReranker`'s) or with an empty text (no vector: never searched). The threshold is ``verifier.threshold`` (default: the shipped
    verifier and ``DEFAULT_THRESHOLD``). Returns ``pairs``, ``auc``,
    ``recall_at_precision`` ("0.8", "0.9", "0.95"), ``default`` (threshold,
    precision, recall), ``score_p50_ms`` and ``score_p99_ms``, and ``by_duplicate_share``:
    for each share in ``duplicate_shares``, ``recall_at_precision`` and
    ``default`` as they would be if duplicates made up that share of the pairs
    (recall at a fixed precision depends strongly on it). ``progress(done,
    total)`` is called every 500 pairs.
    """
    # the store's floor: a second stage's own (it sees candidates above it only), the bundled verifier's default
    floor: float | None = DEFAULT_MIN_COSINE if verifier is None else getattr(verifier, "min_cosine", None)
    if verifier is None:
        from .verifier import default_verifier

        verifier = default_verifier()
    pairs = load_pairs(path)
    embedder = verifier.embedder
    embedder.embed(["warm up"])
    scores = np.empty(len(pairs), dtype=np.float64)
    elapsed = np.empty(len(pairs), dtype=np.float64)
    for i, (a, b, _) in enumerate(pairs):
        verifier.clear_cache()
        start = time.perf_counter()
        if _semantic_candidate(a, b, max_semantic_chars, template_guard):
            vectors = embedder.embed([a, b])
            if not (np.any(vectors[0]) and np.any(vectors[1])):
                scores[i] = _NEVER  # an empty text has no vector: the store neither stores nor searches one
            elif floor is not None and _cosine(vectors[0], vectors[1]) < floor:
                scores[i] = _NEVER  # below the candidates' WordLlama floor: the store never scores it
            else:
                scores[i] = verifier.score(a, vectors[0], b, vectors[1])
        else:
            scores[i] = _NEVER  # the length limit or the template guard: never a candidate
        elapsed[i] = time.perf_counter() - start
        if progress is not None and (i + 1) % 500 == 0:
            progress(i + 1, len(pairs))
    if progress is not None:
        progress(len(pairs), len(pairs))
    labels = [p[2] for p in pairs]
    result = pair_metrics(labels, scores, verifier.threshold)
    result["score_p50_ms"] = float(np.percentile(elapsed, 50) * 1e3) if len(pairs) else 0.0
    result["score_p99_ms"] = float(np.percentile(elapsed, 99) * 1e3) if len(pairs) else 0.0
    result["by_duplicate_share"] = {
        f"{share:g}": {k: v for k, v in pair_metrics(labels, scores, verifier.threshold, duplicate_share=share).items()
                       if k in ("recall_at_precision", "default")}
        for share in duplicate_shares
    }
    logger.debug("eval_pairs %s: %s", path, result)
    return result

