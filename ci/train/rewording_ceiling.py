"""How far can the cache's scores go on a rewording replay? An upper bound, fitted on the replay itself.

For every lookup of a PAIRS.jsonl replay (every ``a`` stored, every ``b`` looked up, as
``llmbudget eval cache --mode replay`` does), takes the candidate the store would score (the nearest
stored question by WordLlama cosine, at or above the reranker's 0.5 floor, not refused by the template
guard) and prints:

- how often that candidate is the pair's own question (``retrieval``): what no better score can raise;
- the best recall at precision >= ``--precision`` that each score reaches at any threshold (the verifier,
  the reranker, MiniLM's cosine with the shipped adapter on the first 32 and 256 tokens);
- the same for a logistic regression over all of them fitted on this very replay (in-sample: an upper
  bound for any reweighting of these scores, not a figure a shipped model could claim).

Needs the ``reranker`` extra (MiniLM's weights). About 8 minutes for 1,300 pairs on 2 busy cores (MiniLM on
256 tokens is most of it)::

    python ci/train/rewording_ceiling.py REPLAY.jsonl [--precision 0.95]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from llmbudget.cache.minilm import MiniLMEmbedder
from llmbudget.cache.reranker import RewordReranker
from llmbudget.cache.templates import TemplateGuard, same_text

SCORES = ("verifier", "reranker", "minilm_32", "minilm_256", "wordllama")


def candidates(pairs: list[dict]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per lookup with a candidate: its scores (rows of SCORES) and whether it is right; duplicates and how
    many of them have their own question as the candidate."""
    reranker, guard = RewordReranker(), TemplateGuard()
    long = MiniLMEmbedder(layers=6, max_tokens=256, adapter=reranker.minilm.adapter)
    stored, asked = [str(p["a"]) for p in pairs], [str(p["b"]) for p in pairs]

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    wa, wb = unit(reranker.embedder.embed(stored)), unit(reranker.embedder.embed(asked))
    ma, mb = reranker.minilm.embed(stored), reranker.minilm.embed(asked)
    la, lb = long.embed(stored), long.embed(asked)
    cosines = wb @ wa.T
    rows, right, retrieved = [], [], 0
    for i, pair in enumerate(pairs):
        j = int(np.argmax(cosines[i]))
        own = j == i or same_text(stored[j], stored[i])
        retrieved += bool(pair["duplicate"]) and own
        if cosines[i, j] < reranker.min_cosine or guard.conflict(asked[i], stored[j]):
            continue
        rows.append([float(reranker.verifier.score(asked[i], wb[i], stored[j], wa[j])),
                     float(reranker.score_many(asked[i], wb[i], [stored[j]], wa[j][None, :])[0]),
                     float(mb[i] @ ma[j]), float(lb[i] @ la[j]), float(cosines[i, j])])
        right.append((bool(pair["duplicate"]) and own) or same_text(stored[j], asked[i]))
    duplicates = sum(bool(p["duplicate"]) for p in pairs)
    return np.asarray(rows), np.asarray(right), duplicates, retrieved


def best_recall(score: np.ndarray, right: np.ndarray, duplicates: int, precision: float) -> tuple[float, float]:
    """The highest recall at precision >= ``precision`` over every threshold, and that threshold."""
    order = np.argsort(-score, kind="stable")
    hits = np.cumsum(right[order])
    reached = hits / np.arange(1, len(order) + 1) >= precision
    if not reached.any():
        return 0.0, float("nan")
    k = int(np.flatnonzero(reached)[np.argmax(hits[reached])])
    return float(hits[k] / duplicates), float(score[order][k])


def fitted(x: np.ndarray, right: np.ndarray, steps: int = 3000) -> np.ndarray:
    """In-sample logistic regression scores over standardised scores (plain gradient descent)."""
    z = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-9)
    z = np.hstack([z, np.ones((len(z), 1))])
    w = np.zeros(z.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-z @ w))
        w -= 0.5 * z.T @ (p - right) / len(z)
    return z @ w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", help="a replay's PAIRS.jsonl")
    parser.add_argument("--precision", type=float, default=0.95)
    args = parser.parse_args(argv)
    with open(args.pairs, encoding="utf-8") as f:
        pairs = [json.loads(line) for line in f if line.strip()]
    x, right, duplicates, retrieved = candidates(pairs)
    print(f"{len(pairs)} lookups, {duplicates} duplicates; the nearest stored question is the pair's own for "
          f"{retrieved / duplicates:.3f} of the duplicates (retrieval)")
    print(f"best recall at precision >= {args.precision}:")
    for name, score in [*zip(SCORES, x.T, strict=True), ("all of them, fitted on this replay", fitted(x, right))]:
        recall, threshold = best_recall(score, right, duplicates, args.precision)
        print(f"  {name:36s} {recall:.3f} (at {threshold:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
